"""Kaldi data directories to lhotse :class:`~lhotse.CutSet`, checked line by line.

A Kaldi data directory holds plain-text tables, one ``<id> <value>`` per line:

``wav.scp``   ``<recording-id> <audio path>`` (absolute, or relative: see below)
``text``      ``<utterance-id> <transcript>``
``utt2spk``   ``<utterance-id> <speaker-id>``
``segments``  optional, ``<utterance-id> <recording-id> <start> <end>`` in
              seconds (``end`` may be ``-1``: the end of the recording).
              Without it every recording is one utterance with the same id.

:func:`load_kaldi_dir` turns such a directory into one cut per utterance.  Every
problem it finds is reported as ``"{file}:{line}: {problem}; {fix}"`` -- raised
as a :class:`~ekd_compress.data.report.DataError` with ``on_error="raise"``,
or counted in the returned :class:`~ekd_compress.data.report.DataReport` with
``on_error="skip"`` (the utterance is then left out).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from ekd_compress.data.report import DataError, DataReport, check_on_error, format_problem
from ekd_compress.data.text import get_normalizer

__all__ = ["DataError", "DataReport", "load_kaldi_dir", "read_kaldi_table", "write_kaldi_dir"]

Pathlike = Union[str, Path]

#: A segment may end this many seconds after its recording (it is then clipped).
SEGMENT_END_TOLERANCE = 0.05


@dataclass
class _Line:
    value: str
    line: int


@dataclass
class _Utt:
    rec: str
    start: float
    end: Optional[float]  # None: to the end of the recording
    file: Path
    line: int


class _Checker:
    """Raises or records problems; remembers which ids are bad and why."""

    def __init__(self, on_error: str, report: DataReport) -> None:
        self.on_error = on_error
        self.report = report
        self.bad: Dict[str, str] = {}  # utterance or recording id -> first reason

    def problem(
        self, file: Path, line: Optional[int], reason: str, problem: str, fix: str, ids: Iterable[str] = ()
    ) -> None:
        if self.on_error == "raise":
            raise DataError(file, line, problem, fix, reason=reason)
        self.report.note(reason, format_problem(file, line, problem, fix))
        for i in ids:
            self.bad.setdefault(i, reason)


def _read_table(path: Path, check: _Checker, seen: Set[str]) -> Dict[str, _Line]:
    """``<id> <rest of line>`` per non-blank line; duplicate ids are problems."""
    table: Dict[str, _Line] = {}
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            check.problem(path, lineno, "malformed_line", f"not valid UTF-8 ({e.reason})",
                          "re-encode the file as UTF-8")
            continue
        if not line:
            continue
        key, rest = (line.split(None, 1) + [""])[:2]
        rest = rest.strip()
        seen.add(key)
        if key in table:
            check.problem(path, lineno, "duplicate_id",
                          f"duplicate id {key!r} (first on line {table[key].line})",
                          "keep exactly one line per id", ids=[key])
            continue
        table[key] = _Line(rest, lineno)
    return table


def _resolve_audio(value: str, data_dir: Path, audio_root: Optional[Path]) -> Tuple[Optional[Path], List[Path]]:
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [data_dir / p] + ([audio_root / p] if audio_root else []) + [data_dir.parent / p]
    for c in candidates:
        if c.is_file():
            return c.resolve(), candidates
    return None, candidates


def _short_error(e: Exception) -> str:
    """The useful part of an audio-loading error (lhotse wraps every backend's message)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Exception #0" in ln), lines[0] if lines else type(e).__name__)
    detail = re.sub(r"^Exception #\d+ \(<class '[^']+'>\): (<class '[^']+'>: )?", "", detail)
    detail = re.sub(r"^Error opening '[^']*': ", "", detail)
    return detail[:300].rstrip(".")


def load_kaldi_dir(
    path: Pathlike,
    *,
    on_error: str = "raise",
    text_normalizer: Union[Callable[[str], str], str, None] = None,
    allowed_chars: Optional[Set[str]] = None,
    sampling_rate: Optional[int] = None,
    min_duration: float = 0.0,
    max_duration: float = math.inf,
    audio_root: Optional[Pathlike] = None,
    check_audio: bool = False,
) -> Tuple[CutSet, DataReport]:
    """Read a Kaldi data directory into a :class:`~lhotse.CutSet` of one cut per utterance.

    :param path: the directory holding ``wav.scp``, ``text``, ``utt2spk`` and
        optionally ``segments``.
    :param on_error: ``"raise"``: the first problem raises :class:`DataError`
        (``"{file}:{line}: {problem}; {fix}"``); ``"skip"``: the affected
        utterances are left out and counted in the report.
    :param text_normalizer: applied to every transcript; a callable or the
        name of a registered normaliser (:func:`~ekd_compress.data.text.get_normalizer`).
    :param allowed_chars: if given, every character of a normalised transcript
        other than the space must be in this set.
    :param sampling_rate: resample every cut to this rate (Hz).  When ``None``
        all recordings must share one rate.
    :param min_duration: utterances shorter than this (seconds) are dropped
        and counted (never an error).
    :param max_duration: utterances longer than this (seconds) are dropped and counted.
    :param audio_root: relative ``wav.scp`` paths are looked up relative to
        ``path``, then to ``audio_root``, then to ``path``'s parent directory.
    :param check_audio: decode every recording completely (slow) to catch
        corrupt audio that a valid header hides.
    :return: ``(cuts, report)``; cut ids are utterance ids, each cut carries one
        supervision with the normalised ``text`` and the ``speaker``.
    """
    check_on_error(on_error)
    normalize = get_normalizer(text_normalizer) if isinstance(text_normalizer, str) else text_normalizer
    data_dir = Path(path)
    root = Path(audio_root) if audio_root is not None else None
    if not data_dir.is_dir():
        raise DataError(data_dir, None, "no such directory",
                        "pass a Kaldi data directory containing wav.scp, text and utt2spk",
                        reason="missing_file")
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            raise DataError(data_dir / name, None, "missing file",
                            f"a Kaldi data directory needs wav.scp, text and utt2spk"
                            f"{' (use `<utt> <utt>` lines if speakers are unknown)' if name == 'utt2spk' else ''}",
                            reason="missing_file")
    report = DataReport(source=str(data_dir))
    check = _Checker(on_error, report)
    utt_ids: Set[str] = set()  # every utterance id mentioned anywhere
    wav_file, text_file, spk_file, seg_file = (data_dir / n for n in ("wav.scp", "text", "utt2spk", "segments"))
    has_segments = seg_file.is_file()

    rec_ids: Set[str] = set()
    wavs = _read_table(wav_file, check, rec_ids if has_segments else utt_ids)
    segs = _read_table(seg_file, check, utt_ids) if has_segments else {}
    texts = _read_table(text_file, check, utt_ids)
    spks = _read_table(spk_file, check, utt_ids)

    # ---- utterance list (from segments, or one per recording)
    utts: Dict[str, _Utt] = {}
    if has_segments:
        for utt, entry in segs.items():
            f = entry.value.split()
            try:
                rec, start, end = f[0], float(f[1]), float(f[2])
                ok = len(f) == 3 and start >= 0 and (end > start or end == -1)
            except (IndexError, ValueError):
                ok = False
            if not ok:
                check.problem(seg_file, entry.line, "malformed_line",
                              f"expected '<utterance-id> <recording-id> <start> <end>' with 0 <= start < end "
                              f"(seconds), got {utt} {entry.value!r}",
                              "fix the line (end may be -1 for the end of the recording)", ids=[utt])
                continue
            utts[utt] = _Utt(rec, start, None if end == -1 else end, seg_file, entry.line)
    else:
        for rec, entry in wavs.items():
            utts[rec] = _Utt(rec, 0.0, None, wav_file, entry.line)

    # ---- recordings
    recordings: Dict[str, Recording] = {}
    for rec, entry in wavs.items():
        ids = [rec] if not has_segments else [u for u, x in utts.items() if x.rec == rec] + [rec]
        if not entry.value:
            check.problem(wav_file, entry.line, "malformed_line",
                          f"expected '<recording-id> <audio path>', got only {rec!r}",
                          "add the audio path after the id", ids=ids)
            continue
        if entry.value.endswith("|"):
            check.problem(wav_file, entry.line, "piped_command",
                          f"recording {rec!r} is a shell command ({entry.value!r}), which is not supported",
                          "convert the audio to files first (e.g. `sph2pipe -f wav in.sph out.wav` "
                          "or `sox in out.wav`) and list their paths", ids=ids)
            continue
        audio, tried = _resolve_audio(entry.value, data_dir, root)
        if audio is None:
            check.problem(wav_file, entry.line, "missing_audio",
                          f"audio file {entry.value!r} of {rec!r} not found (tried {', '.join(map(str, tried))})",
                          "fix the path, or pass audio_root= for paths relative to the corpus root", ids=ids)
            continue
        try:
            recording = Recording.from_file(audio, recording_id=rec)
            if recording.num_samples <= 0:
                raise ValueError("the file contains no samples")
            if check_audio:
                recording.load_audio()
        except Exception as e:  # lhotse raises several types for unreadable audio
            check.problem(wav_file, entry.line, "corrupt_audio",
                          f"cannot read audio {str(audio)!r} of {rec!r}: {_short_error(e)}",
                          "re-create or re-download the file, or remove the line", ids=ids)
            continue
        recordings[rec] = recording

    if sampling_rate is None and recordings:
        rates = Counter(r.sampling_rate for r in recordings.values())
        ref, n_ref = rates.most_common(1)[0]
        for rec, r in list(recordings.items()):
            if r.sampling_rate != ref:
                ids = [rec] if not has_segments else [u for u, x in utts.items() if x.rec == rec] + [rec]
                check.problem(wav_file, wavs[rec].line, "mixed_sample_rate",
                              f"recording {rec!r} is {r.sampling_rate} Hz but {n_ref} of "
                              f"{len(recordings)} recordings are {ref} Hz",
                              f"pass sampling_rate={ref} (or another rate) to resample all audio to one rate",
                              ids=ids)
                del recordings[rec]

    # ---- utterances
    sups: List[SupervisionSegment] = []
    duration_drops: Counter = Counter()
    for utt, u in utts.items():
        if utt in check.bad:
            continue
        if u.rec not in wavs and u.rec not in check.bad:
            check.problem(seg_file, u.line, "unknown_recording",
                          f"segment {utt!r} refers to recording {u.rec!r}, which is not in {wav_file.name}",
                          "add the recording to wav.scp or remove the segment", ids=[utt])
            continue
        if u.rec in check.bad or u.rec not in recordings:
            check.bad.setdefault(utt, check.bad.get(u.rec, "corrupt_audio"))
            continue
        rec_dur = recordings[u.rec].duration
        end = rec_dur if u.end is None else u.end
        if u.start >= rec_dur or end > rec_dur + SEGMENT_END_TOLERANCE:
            check.problem(seg_file, u.line, "bad_segment",
                          f"segment {utt!r} spans {u.start:.3f}-{end:.3f} s but recording {u.rec!r} "
                          f"is {rec_dur:.3f} s long",
                          "correct the segment times or the audio", ids=[utt])
            continue
        end = min(end, rec_dur)
        if utt not in texts:
            check.problem(u.file, u.line, "missing_text", f"utterance {utt!r} has no line in text",
                          "add its transcript to text or remove the utterance", ids=[utt])
            continue
        if utt not in spks:
            check.problem(u.file, u.line, "missing_speaker", f"utterance {utt!r} has no line in utt2spk",
                          "add '<utterance-id> <speaker-id>' to utt2spk (the utterance id itself "
                          "if the speaker is unknown)", ids=[utt])
            continue
        spk = spks[utt].value.split()
        if len(spk) != 1:
            check.problem(spk_file, spks[utt].line, "malformed_line",
                          f"expected '<utterance-id> <speaker-id>', got {utt} {spks[utt].value!r}",
                          "give exactly one speaker id per line", ids=[utt])
            continue
        raw_text = texts[utt].value
        text = " ".join((normalize(raw_text) if normalize else raw_text).split())
        if not text:
            check.problem(text_file, texts[utt].line, "empty_transcript",
                          f"transcript of {utt!r} is empty{' after normalisation' if raw_text else ''} "
                          f"(raw: {raw_text!r})",
                          "fix the transcript or remove the utterance", ids=[utt])
            continue
        if allowed_chars is not None:
            bad_chars = sorted({c for c in text if c != " " and c not in allowed_chars})
            if bad_chars:
                check.problem(text_file, texts[utt].line, "bad_characters",
                              f"transcript of {utt!r} has characters outside allowed_chars: "
                              f"{' '.join(repr(c) for c in bad_chars)} (text: {text!r})",
                              "normalise the text (text_normalizer=) or extend allowed_chars", ids=[utt])
                continue
        dur = end - u.start
        for reason, off, limit, word, option in (
            ("too_short", dur < min_duration, min_duration, "shorter", "min_duration"),
            ("too_long", dur > max_duration, max_duration, "longer", "max_duration"),
        ):
            if off:
                duration_drops[reason] += 1
                report.note(reason, format_problem(
                    u.file, u.line, f"utterance {utt!r} is {dur:.3f} s, {word} than {option}={limit} s",
                    f"dropped by the duration filter; change {option} to keep it"))
                break
        else:
            sups.append(SupervisionSegment(id=utt, recording_id=u.rec, start=u.start, duration=end - u.start,
                                           channel=0, text=text, speaker=spk[0]))

    # ---- ids only in text / utt2spk
    for file, table in ((text_file, texts), (spk_file, spks)):
        for utt, entry in table.items():
            if utt not in utts and utt not in check.bad:
                where = "segments" if has_segments else "wav.scp"
                check.problem(file, entry.line, "no_audio_entry",
                              f"utterance {utt!r} has no entry in {where}",
                              f"add it to {where} or remove this line", ids=[utt])

    # ---- cuts
    used = {s.recording_id for s in sups}
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(r for k, r in recordings.items() if k in used),
        supervisions=SupervisionSet.from_segments(sups),
    ).trim_to_supervisions(keep_overlapping=False)
    if sampling_rate is not None:
        cuts = CutSet.from_cuts(c if c.sampling_rate == sampling_rate else c.resample(sampling_rate) for c in cuts)
    else:
        cuts = cuts.to_eager()

    reasons: Counter = Counter(check.bad[u] for u in utt_ids if u in check.bad)
    reasons.update(duration_drops)
    report.count(reasons)
    report.kept = len(cuts)
    report.kept_seconds = float(sum(c.duration for c in cuts))
    report.total = report.kept + report.num_dropped
    return cuts, report


def write_kaldi_dir(
    path: Pathlike,
    items: Iterable[Tuple[str, Pathlike, str, str]],
) -> Path:
    """Write a minimal Kaldi data directory (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``).

    :param path: directory to create (files in it are overwritten).
    :param items: ``(utterance_id, wav_path, text, speaker)`` tuples; every
        recording is one utterance with the same id.  ``wav_path`` is written
        as given: a relative path is read back relative to ``path``.
    :return: ``path`` as a :class:`~pathlib.Path`.
    :raises ValueError: on duplicate ids, ids or speakers with white space, or
        text or paths with line breaks (naming the offending item).
    """
    out = Path(path)
    rows: Dict[str, Tuple[str, str, str]] = {}
    for i, item in enumerate(items):
        utt, wav, text, spk = str(item[0]), str(item[1]), str(item[2]), str(item[3])
        if not utt or len(utt.split()) != 1 or not spk or len(spk.split()) != 1:
            raise ValueError(f"item {i}: utterance id {utt!r} and speaker {spk!r} must be non-empty "
                             f"and contain no white space")
        if "\n" in text or "\r" in text or "\n" in wav or not wav:
            raise ValueError(f"item {i} ({utt!r}): text and wav path must be one line each (and the path non-empty)")
        if utt in rows:
            raise ValueError(f"item {i}: duplicate utterance id {utt!r}; ids must be unique")
        rows[utt] = (wav, " ".join(text.split()), spk)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted(rows)
    spk2utt: Dict[str, List[str]] = {}
    for k in keys:
        spk2utt.setdefault(rows[k][2], []).append(k)
    (out / "wav.scp").write_text("".join(f"{k} {rows[k][0]}\n" for k in keys), encoding="utf-8")
    (out / "text").write_text("".join(f"{k} {rows[k][1]}\n" for k in keys), encoding="utf-8")
    (out / "utt2spk").write_text("".join(f"{k} {rows[k][2]}\n" for k in keys), encoding="utf-8")
    (out / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk2utt.items())),
                                 encoding="utf-8")
    return out


def read_kaldi_table(path: Pathlike) -> Dict[str, str]:
    """Read a two-column Kaldi table into ``{id: rest of line}`` (no checks; for tests and tools)."""
    out: Dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, _, rest = line.strip().partition(" ")
            out[key] = rest.strip()
    return out

