"""Free Spoken Digit Dataset (FSDD): isolated digits and connected digit strings.

FSDD is a folder ``recordings/{digit}_{speaker}_{index}.wav`` of 8 kHz mono
16-bit recordings of single English digits ("zero" .. "nine").  By the
dataset's convention indices 0-4 of every speaker and digit are the test set.

* :func:`scan_fsdd` lists the recordings (bad file names are reported);
* :func:`split_fsdd` picks subsets by index or by speaker;
* :func:`make_digit_strings` concatenates random recordings of one speaker
  with random pauses into connected digit strings ("three one four"), with
  optional additive noise, and writes them as WAVs plus a Kaldi directory;
* :func:`make_noise_pool` writes the noise to mix into strings on the fly;
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

__all__ = ["DIGIT_WORDS", "FsddRecording", "scan_fsdd", "split_fsdd", "make_digit_strings", "make_noise_pool",
           "babble_kind", "prepare_fsdd"]

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


class _StringMaker:
    """Digit strings of one speaker's recordings, and babble of the other speakers' strings."""

    def __init__(self, recordings: Sequence[FsddRecording], sampling_rate: int, min_digits: int = 2,
                 max_digits: int = 7, pause_range: Tuple[float, float] = (0.05, 0.3)) -> None:
        self.by_speaker: Dict[str, List[FsddRecording]] = {}
        for r in sorted(recordings, key=lambda r: (r.speaker, r.digit, r.index, str(r.path))):
            self.by_speaker.setdefault(r.speaker, []).append(r)
        self.speakers = sorted(self.by_speaker)
        self.sampling_rate, self.min_digits, self.max_digits = sampling_rate, min_digits, max_digits
        self.pause_range = pause_range
        self._audio: Dict[Path, np.ndarray] = {}

    def _load(self, r: FsddRecording) -> np.ndarray:
        if r.path not in self._audio:
            audio, sr = read_mono(r.path)
            self._audio[r.path] = resample(audio, sr, self.sampling_rate)
        return self._audio[r.path]

    def _pause(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(int(round(rng.uniform(*self.pause_range) * self.sampling_rate)), np.float32)

    def string(self, spk: str, rng: np.random.Generator) -> Tuple[np.ndarray, List[int]]:
        """(samples, digits): min_digits..max_digits random recordings of `spk` between random pauses."""
        n = int(rng.integers(self.min_digits, self.max_digits + 1))
        picks = [self.by_speaker[spk][int(i)] for i in rng.integers(0, len(self.by_speaker[spk]), size=n)]
        parts = []
        for r in picks:
            parts += [self._pause(rng), self._load(r)]
        parts.append(self._pause(rng))
        return np.concatenate(parts), [r.digit for r in picks]

    def babble(self, spk: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """3-5 digit strings of speakers other than `spk`, each tiled to `num_samples` and rolled."""
        others = [s for s in self.speakers if s != spk]
        if not others:
            raise ValueError("babble noise needs recordings of at least two speakers")
        bab = np.zeros(num_samples, np.float32)
        for _ in range(int(rng.integers(3, 6))):
            b, _ = self.string(others[int(rng.integers(len(others)))], rng)
            bab += np.roll(np.resize(b, num_samples), int(rng.integers(num_samples)))
        return bab


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
    maker = _StringMaker(recordings, sampling_rate, min_digits, max_digits, pause_range)
    if noise == "babble" and snr_db is not None and len(maker.speakers) < 2:
        raise ValueError("babble noise needs recordings of at least two speakers")
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_strings):
        # Content and noise use separate streams: the noise setting never changes the digits.
        rng, noise_rng = np.random.default_rng([seed, i]), np.random.default_rng([seed, i, 1])
        spk = maker.speakers[int(rng.integers(len(maker.speakers)))]
        audio, digits = maker.string(spk, rng)
        if snr_db is not None:
            nz = maker.babble(spk, len(audio), noise_rng) if noise == "babble" else \
                colored_noise(len(audio), noise, noise_rng)
            audio = add_noise(audio, nz, snr_db)
        utt = f"{spk}-{prefix}{i:06d}"
        write_pcm16(out / "wav" / f"{utt}.wav", limit_peak(audio), sampling_rate)
        items.append((utt, f"wav/{utt}.wav", " ".join(DIGIT_WORDS[d] for d in digits), spk))
    return write_kaldi_dir(out, items)


def babble_kind(speaker: str) -> str:
    """The noise-pool kind of babble that leaves `speaker` out (see :func:`make_noise_pool`)."""
    return f"babble_without_{speaker}"


def make_noise_pool(
    recordings: Sequence[FsddRecording],
    out_dir: Pathlike,
    noises: Iterable[str],
    *,
    clips: int = 8,
    seconds: float = 8.0,
    seed: int = 0,
    sampling_rate: int = 8000,
) -> Path:
    """Write a noise pool (``ekd_compress.data.noise_pool``) for mixing noise into digit strings on the fly.

    Colored noise kinds get ``clips`` clips of ``seconds`` each; ``"babble"`` gets that many per
    speaker, as kind ``babble_without_{speaker}`` (:func:`babble_kind`), made of the *other*
    speakers' strings as in :func:`make_digit_strings`. Same inputs and ``seed``, same files.
    """
    from ekd_compress.data.noise_pool import write_noise_pool

    noises = sorted(set(noises))
    unknown = [n for n in noises if n not in NOISE_TYPES]
    if unknown:
        raise ValueError(f"Unknown noise {unknown[0]!r}; valid: {', '.join(NOISE_TYPES)}")
    if clips < 1 or seconds <= 0:
        raise ValueError(f"need clips >= 1 and seconds > 0, got clips={clips}, seconds={seconds}")
    maker = _StringMaker(recordings, sampling_rate)
    n = int(round(seconds * sampling_rate))
    pool: Dict[str, List[np.ndarray]] = {}
    for k, noise in enumerate(noises):
        if noise == "babble":
            if len(maker.speakers) < 2:
                raise ValueError("babble noise needs recordings of at least two speakers")
            for j, spk in enumerate(maker.speakers):
                rngs = [np.random.default_rng([seed, k, j, i]) for i in range(clips)]
                pool[babble_kind(spk)] = [maker.babble(spk, n, rng) for rng in rngs]
        else:
            pool[noise] = [colored_noise(n, noise, np.random.default_rng([seed, k, i])) * 0.1 for i in range(clips)]
    return write_noise_pool(out_dir, pool, sampling_rate)


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
