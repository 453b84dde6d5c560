"""Free Spoken Digit Dataset (FSDD): isolated digits and connected digit strings.

FSDD is a folder ``recordings/{digit}_{speaker}_{index}.wav`` of 8 kHz mono
16-bit recordings of single English digits ("zero" .. "nine").  By the
dataset's convention indices 0-4 of every speaker and digit are the test set.

* :func:`scan_fsdd` lists the recordings (bad file names are reported);
* :func:`split_fsdd` picks subsets by index or by speaker;
* :func:`make_digit_strings` concatenates random recordings of one speaker
  with random pauses into connected digit strings ("three one four"), with
  optional additive noise, and writes them as WAVs plus a Kaldi directory;
* :func:`prepare_fsdd` does all of it for train/dev (and optionally test).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ekd_compress.data.augment import NOISE_COLORS, add_noise, colored_noise, limit_peak, read_mono, resample, write_pcm16
from ekd_compress.data.kaldi import write_kaldi_dir
from ekd_compress.data.report import DataError, check_on_error

__all__ = ["DIGIT_WORDS", "FsddRecording", "scan_fsdd", "split_fsdd", "make_digit_strings", "prepare_fsdd"]

logger = logging.getLogger(__name__)
Pathlike = Union[str, Path]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOISE_TYPES = NOISE_COLORS + ("babble",)
_NAME = re.compile(r"^([0-9])_([A-Za-z0-9]+)_([0-9]+)\.wav$")


class FsddRecording(NamedTuple):
    """One FSDD file: ``path``, spoken ``digit`` (0-9), ``speaker`` name, take ``index``."""

    path: Path
    digit: int
    speaker: str
    index: int


def scan_fsdd(root: Pathlike, *, on_error: str = "raise") -> List[FsddRecording]:
    """List the recordings of an FSDD checkout, sorted by (speaker, digit, index).

    :param root: the FSDD repository (containing ``recordings/``) or the
        ``recordings`` folder itself.
    :param on_error: a file whose name is not ``{digit}_{speaker}_{index}.wav``
        raises :class:`DataError` (``"raise"``) or is logged and left out
        (``"skip"``).  Hidden files (``.*``) are ignored.
    """
    check_on_error(on_error)
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise DataError(root, None, "no such directory",
                        "pass the FSDD folder containing recordings/{digit}_{speaker}_{index}.wav",
                        reason="missing_file")
    out: List[FsddRecording] = []
    bad: List[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        m = _NAME.match(p.name)
        if m is None:
            if on_error == "raise":
                raise DataError(p, None, "file name does not match {digit}_{speaker}_{index}.wav",
                                "rename or remove the file, or pass on_error='skip'", reason="malformed_line")
            bad.append(p.name)
            continue
        out.append(FsddRecording(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if bad:
        logger.warning("%s: skipped %d file(s) not named {digit}_{speaker}_{index}.wav, e.g. %s",
                       folder, len(bad), ", ".join(bad[:5]))
    if not out:
        raise DataError(folder, None, "no FSDD recordings found",
                        "expected files named like 3_jackson_12.wav in this folder", reason="missing_file")
    return sorted(out, key=lambda r: (r.speaker, r.digit, r.index))


def split_fsdd(
    recordings: Sequence[FsddRecording],
    *,
    by: str = "index",
    train_indices: Iterable[int] = range(10, 50),
    dev_indices: Iterable[int] = range(5, 10),
    test_indices: Iterable[int] = range(0, 5),
    dev_speakers: Sequence[str] = (),
    test_speakers: Sequence[str] = (),
) -> Dict[str, List[FsddRecording]]:
    """Split recordings into ``{"train", "dev", "test"}``.

    :param by: ``"index"``: by take index (the FSDD convention: 0-4 test);
        recordings whose index is in no set are left out.  ``"speaker"``: the
        speakers in ``dev_speakers`` / ``test_speakers`` form dev / test, all
        others train (``*_indices`` are ignored).
    """
    if by == "index":
        sets = {"train": set(train_indices), "dev": set(dev_indices), "test": set(test_indices)}
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            if sets[a] & sets[b]:
                raise ValueError(f"{a}_indices and {b}_indices overlap: {sorted(sets[a] & sets[b])}")
        return {k: [r for r in recordings if r.index in s] for k, s in sets.items()}
    if by == "speaker":
        speakers = sorted({r.speaker for r in recordings})
        dev, test = set(dev_speakers), set(test_speakers)
        unknown = (dev | test) - set(speakers)
        if unknown or not (dev or test) or dev & test:
            raise ValueError(f"by='speaker' needs disjoint dev_speakers/test_speakers from {speakers}; "
                             f"got dev={sorted(dev)} test={sorted(test)}")
        return {"train": [r for r in recordings if r.speaker not in dev | test],
                "dev": [r for r in recordings if r.speaker in dev],
                "test": [r for r in recordings if r.speaker in test]}
    raise ValueError(f"by must be 'index' or 'speaker', got {by!r}")


def make_digit_strings(
    recordings: Sequence[FsddRecording],
    out_dir: Pathlike,
    *,
    n_strings: int,
    min_digits: int = 2,
    max_digits: int = 7,
    pause_range: Tuple[float, float] = (0.05, 0.3),
    seed: int = 0,
    snr_db: Optional[float] = None,
    noise: str = "white",
    sampling_rate: int = 8000,
    prefix: str = "fsdd",
) -> Path:
    """Build connected digit strings and write them as WAVs plus a Kaldi directory.

    Each string takes one speaker (uniformly among the speakers present), then
    ``n`` digits (``min_digits <= n <= max_digits``) as random recordings of
    that speaker, joined with silences drawn uniformly from ``pause_range``
    (seconds; also before the first and after the last digit).  Same inputs
    and ``seed`` give identical files, and string ``i`` has the same digits and
    speaker whatever ``snr_db``/``noise`` are (separate random streams).

    :param snr_db: if given, add ``noise`` at this SNR (dB, over the whole string).
    :param noise: ``"white"``, ``"pink"``, ``"brown"`` or ``"babble"`` (3-5
        overlapping digit strings of *other* speakers).
    :param sampling_rate: output rate, Hz (FSDD itself is 8000 Hz).
    :param prefix: utterance ids are ``{speaker}-{prefix}{i:06d}``.
    :return: ``out_dir`` holding ``wav/*.wav``, ``wav.scp`` (relative paths),
        ``text`` (e.g. ``three one four``), ``utt2spk`` and ``spk2utt``.
    """
    if not recordings:
        raise ValueError("make_digit_strings needs at least one recording")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if not 0 <= pause_range[0] <= pause_range[1]:
        raise ValueError(f"pause_range must be (low, high) seconds with 0 <= low <= high, got {pause_range}")
    if noise not in NOISE_TYPES:
        raise ValueError(f"Unknown noise {noise!r}; valid: {', '.join(NOISE_TYPES)}")
    by_speaker: Dict[str, List[FsddRecording]] = {}
    for r in sorted(recordings, key=lambda r: (r.speaker, r.digit, r.index, str(r.path))):
        by_speaker.setdefault(r.speaker, []).append(r)
    speakers = sorted(by_speaker)
    if noise == "babble" and snr_db is not None and len(speakers) < 2:
        raise ValueError("babble noise needs recordings of at least two speakers")
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    cache: Dict[Path, np.ndarray] = {}

    def load(r: FsddRecording) -> np.ndarray:
        if r.path not in cache:
            audio, sr = read_mono(r.path)
            cache[r.path] = resample(audio, sr, sampling_rate)
        return cache[r.path]

    def string(spk: str, rng: np.random.Generator) -> Tuple[np.ndarray, List[int]]:
        n = int(rng.integers(min_digits, max_digits + 1))
        picks = [by_speaker[spk][int(i)] for i in rng.integers(0, len(by_speaker[spk]), size=n)]
        parts = []
        for r in picks:
            parts.append(np.zeros(int(round(rng.uniform(*pause_range) * sampling_rate)), np.float32))
            parts.append(load(r))
        parts.append(np.zeros(int(round(rng.uniform(*pause_range) * sampling_rate)), np.float32))
        return np.concatenate(parts), [r.digit for r in picks]

    items = []
    for i in range(n_strings):
        # Content and noise use separate streams: the noise setting never changes the digits.
        rng, noise_rng = np.random.default_rng([seed, i]), np.random.default_rng([seed, i, 1])
        spk = speakers[int(rng.integers(len(speakers)))]
        audio, digits = string(spk, rng)
        if snr_db is not None:
            if noise == "babble":
                others = [s for s in speakers if s != spk]
                bab = np.zeros_like(audio)
                for _ in range(int(noise_rng.integers(3, 6))):
                    b, _ = string(others[int(noise_rng.integers(len(others)))], noise_rng)
                    b = np.roll(np.resize(b, len(audio)), int(noise_rng.integers(len(audio))))
                    bab += b
                nz = bab
            else:
                nz = colored_noise(len(audio), noise, noise_rng)
            audio = add_noise(audio, nz, snr_db)
        utt = f"{spk}-{prefix}{i:06d}"
        write_pcm16(out / "wav" / f"{utt}.wav", limit_peak(audio), sampling_rate)
        items.append((utt, f"wav/{utt}.wav", " ".join(DIGIT_WORDS[d] for d in digits), spk))
    return write_kaldi_dir(out, items)


def _isolated_dir(recordings: Sequence[FsddRecording], out_dir: Path) -> Path:
    items = [(f"{r.speaker}-{r.digit}-{r.index:03d}", str(r.path.resolve()), DIGIT_WORDS[r.digit], r.speaker)
             for r in recordings]
    return write_kaldi_dir(out_dir, items)


def _subseed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def prepare_fsdd(
    root: Pathlike,
    out_dir: Pathlike,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_dev: int = 200,
    n_test: int = 0,
    train_indices: Iterable[int] = range(10, 50),
    dev_indices: Iterable[int] = range(5, 10),
    test_indices: Iterable[int] = range(0, 5),
    snr_db: Optional[float] = None,
    noise: str = "white",
    sampling_rate: int = 8000,
    min_digits: int = 2,
    max_digits: int = 7,
    isolated: bool = False,
) -> Dict[str, Path]:
    """Make Kaldi directories of FSDD digit strings: ``out_dir/{train,dev[,test]}``.

    Train strings use recordings with index in ``train_indices`` (10-49), dev
    strings ``dev_indices`` (5-9), test strings (only if ``n_test > 0``)
    ``test_indices`` (0-4), so no recording is shared between splits.  With
    ``isolated=True`` also ``{split}_isolated`` directories of the single
    digits (one utterance per original file, 8 kHz, absolute paths).

    :return: ``{split name: directory}``.
    """
    recs = scan_fsdd(root)
    splits = split_fsdd(recs, by="index", train_indices=train_indices, dev_indices=dev_indices,
                        test_indices=test_indices)
    out = Path(out_dir)
    wanted = {"train": n_train, "dev": n_dev, "test": n_test}
    dirs: Dict[str, Path] = {}
    for k, (name, n) in enumerate(wanted.items()):
        if n <= 0:
            continue
        if not splits[name]:
            raise DataError(root, None, f"no recordings with the {name} indices",
                            f"check {name}_indices against the file names in recordings/", reason="missing_file")
        dirs[name] = make_digit_strings(
            splits[name], out / name, n_strings=n, min_digits=min_digits, max_digits=max_digits,
            seed=_subseed(seed, k), snr_db=snr_db, noise=noise, sampling_rate=sampling_rate, prefix=name)
        if isolated:
            dirs[f"{name}_isolated"] = _isolated_dir(splits[name], out / f"{name}_isolated")
    return dirs
