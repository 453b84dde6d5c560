"""Switchboard-1 (LDC97S62) and eval2000 (LDC2002S09 + LDC2002T43) as lhotse CutSets.

A thin wrapper over lhotse's recipes (:func:`lhotse.recipes.prepare_switchboard`,
:func:`lhotse.recipes.prepare_eval2000`) that checks the layout first and says
what is missing, normalises transcripts with the ``swbd`` normaliser
(:mod:`ekd_compress.data.text`), splits off a dev set of held-out
conversations and labels the eval2000 subsets.

Expected layout (as released by LDC)::

    swbd_root/                      LDC97S62, any depth below: sw0NNNN.sph (2 channels, 8 kHz)
    swb_ms98_transcriptions/        ISIP MS98 word alignments (switchboard_word_alignments.tar.gz),
        NN/NNNN/swNNNN{A,B}-ms98-a-trans.text     in swbd_root, next to it, or transcripts_dir=
    eval2000_root/
        LDC2002S09/hub5e_00/english/{en,sw}_NNNN.sph
        LDC2002T43/reference/english/{en,sw}_NNNN.txt

MS98 transcript lines are ``swNNNNA-ms98-a-0001 <start> <end> <words...>``
(seconds); eval2000 lines are ``<start> <end> A: <words...>`` after ``#``
header lines.  ``.sph`` files are read with ``sph2pipe`` when installed and
with libsndfile otherwise (:mod:`ekd_compress.data.sphere`).
"""

from __future__ import annotations

import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest
from lhotse.recipes import prepare_eval2000, prepare_switchboard
from lhotse.utils import fastcopy, safe_extract

from ekd_compress.data.report import DataError, DataReport
from ekd_compress.data.sphere import enable_sphere_fallback
from ekd_compress.data.text import get_normalizer

__all__ = ["prepare_switchboard_corpus", "load_switchboard_cuts", "SWBD_SPLITS"]

logger = logging.getLogger(__name__)
Pathlike = Union[str, Path]

SWBD_TRANSCRIPTS = "swb_ms98_transcriptions"
SWBD_TRANSCRIPTS_TAR = "switchboard_word_alignments.tar.gz"
EVAL2000_AUDIO = Path("LDC2002S09") / "hub5e_00" / "english"
EVAL2000_TEXT = Path("LDC2002T43") / "reference" / "english"
#: Names of the CutSets returned by :func:`prepare_switchboard_corpus`.
SWBD_SPLITS = ("train", "dev", "eval2000", "eval2000_swbd", "eval2000_callhome")


def _layout_error(path: Path, problem: str, fix: str) -> DataError:
    return DataError(path, None, problem, fix, reason="missing_file")


def _find_transcripts(swbd_root: Path, transcripts_dir: Optional[Path], work_dir: Path) -> Path:
    if transcripts_dir is not None:
        candidates = [transcripts_dir]
    else:
        candidates = [swbd_root / SWBD_TRANSCRIPTS, swbd_root.parent / SWBD_TRANSCRIPTS,
                      swbd_root / SWBD_TRANSCRIPTS_TAR, swbd_root.parent / SWBD_TRANSCRIPTS_TAR]
    for c in candidates:
        if c.is_dir() and any(c.rglob("*trans.text")):
            return c
        if c.is_file() and c.name.endswith((".tar.gz", ".tgz", ".tar")):
            target = work_dir / "transcripts"
            if not (target / SWBD_TRANSCRIPTS).is_dir():
                target.mkdir(parents=True, exist_ok=True)
                with tarfile.open(c) as tar:
                    safe_extract(tar, path=target)
            found = target / SWBD_TRANSCRIPTS
            return found if found.is_dir() else target
    raise _layout_error(candidates[0], "Switchboard MS98 transcripts not found (tried "
                        + ", ".join(map(str, candidates)) + ")",
                        f"unpack {SWBD_TRANSCRIPTS_TAR} so that {SWBD_TRANSCRIPTS}/NN/NNNN/swNNNNA-ms98-a-trans.text "
                        f"exist, or pass transcripts_dir=")


def _check_switchboard(swbd_root: Path, transcripts: Path) -> List[Path]:
    if not swbd_root.is_dir():
        raise _layout_error(swbd_root, "Switchboard directory not found",
                            "pass the LDC97S62 directory (containing swb1_d*/data/sw0NNNN.sph)")
    audio = sorted(swbd_root.rglob("*.sph"))
    if not audio:
        raise _layout_error(swbd_root, "no .sph files below the Switchboard directory",
                            "pass the LDC97S62 directory (containing swb1_d*/data/sw0NNNN.sph)")
    have = {p.name.split("-")[0] for p in transcripts.rglob("*trans.text")}
    missing = [f"{a.name} needs {a.stem.replace('sw0', 'sw')}{side}-ms98-a-trans.text"
               for a in audio for side in "AB" if f"{a.stem.replace('sw0', 'sw')}{side}" not in have]
    if missing:
        raise _layout_error(transcripts, f"{len(missing)} transcript file(s) missing, e.g. " + "; ".join(missing[:3]),
                            "use the complete MS98 transcripts, or remove the audio files without transcripts")
    return audio


def _check_eval2000(root: Path) -> None:
    for sub, what in ((EVAL2000_AUDIO, "{en,sw}_NNNN.sph"), (EVAL2000_TEXT, "{en,sw}_NNNN.txt")):
        if not (root / sub).is_dir():
            raise _layout_error(root / sub, "eval2000 directory not found",
                                f"eval2000_root must contain {EVAL2000_AUDIO}/ and {EVAL2000_TEXT}/ ({what} files)")
    audio = {p.stem for p in (root / EVAL2000_AUDIO).rglob("*.sph")}
    text = {p.stem for p in (root / EVAL2000_TEXT).rglob("*.txt")}
    if not audio:
        raise _layout_error(root / EVAL2000_AUDIO, "no .sph files", "expected {en,sw}_NNNN.sph (LDC2002S09)")
    if audio - text:
        raise _layout_error(root / EVAL2000_TEXT, f"no transcript for {sorted(audio - text)[:5]}",
                            "add the matching NAME.txt files from LDC2002T43/reference/english")


def _normalise(sups: SupervisionSet, normalize: Callable[[str], str], report: DataReport,
               subset: Optional[Callable[[str], str]] = None) -> SupervisionSet:
    kept, empty = [], 0
    for s in sups:
        text = " ".join(normalize(s.text or "").split())
        if not text:
            empty += 1
            report.note("empty_transcript", f"{s.recording_id}: segment {s.id} ({s.start:.2f} s) has no words "
                                            f"after normalisation (raw: {s.text!r}); dropped")
            continue
        custom = dict(s.custom or {})
        if subset is not None:
            custom["subset"] = subset(s.recording_id)
        speaker = s.speaker
        if subset is None and s.channel in (0, 1):  # the recipe labels both sides "A"
            speaker = f"{s.recording_id}{'AB'[s.channel]}"
        kept.append(fastcopy(s, text=text, custom=custom or None, speaker=speaker))
    report.count(Counter(empty_transcript=empty))
    return SupervisionSet.from_segments(kept)


def _cuts(recordings: RecordingSet, sups: SupervisionSet, sampling_rate: Optional[int], report: DataReport) -> CutSet:
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=sups).trim_to_supervisions(keep_overlapping=False)
    if sampling_rate is not None:
        cuts = cuts.resample(sampling_rate)
    cuts = cuts.to_eager()
    report.kept = len(cuts)
    report.kept_seconds = float(sum(c.duration for c in cuts))
    report.total = report.kept + report.num_dropped
    return cuts


def prepare_switchboard_corpus(
    swbd_root: Pathlike,
    eval2000_root: Optional[Pathlike],
    out_dir: Pathlike,
    *,
    transcripts_dir: Optional[Pathlike] = None,
    dev_fraction: float = 0.01,
    dev_conversations: Optional[Sequence[str]] = None,
    sampling_rate: Optional[int] = None,
    text_normalizer: Union[str, Callable[[str], str]] = "swbd",
) -> Dict[str, CutSet]:
    """Prepare Switchboard train/dev and eval2000 cuts (one per segment), normalised.

    :param swbd_root: the LDC97S62 directory (``.sph`` files anywhere below).
    :param eval2000_root: directory containing ``LDC2002S09/`` and
        ``LDC2002T43/``, or ``None`` to skip eval2000.
    :param out_dir: lhotse manifests go to ``out_dir/manifests/``, cuts to
        ``out_dir/{split}_cuts.jsonl.gz``, drop reports to ``out_dir/{split}_report.txt``.
    :param transcripts_dir: the ``swb_ms98_transcriptions`` directory or its
        ``.tar.gz``; by default looked for in and next to ``swbd_root``.
    :param dev_fraction: fraction of conversations (the last ones by id, at
        least one when there are two or more) held out as ``dev``.
    :param dev_conversations: explicit dev conversation ids (``sw02001``...),
        overriding ``dev_fraction``.
    :param sampling_rate: resample cuts to this rate (Hz); native is 8000.
    :param text_normalizer: normaliser name or callable (default ``"swbd"``).
    :return: ``{"train", "dev"}`` and, with eval2000, ``{"eval2000",
        "eval2000_swbd", "eval2000_callhome"}``; eval2000 supervisions carry
        ``custom["subset"]`` = ``"swbd"`` (``sw_*``) or ``"callhome"`` (``en_*``).
    :raises DataError: when a directory or transcript is missing, naming the expected path.
    """
    enable_sphere_fallback()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    swbd_root = Path(swbd_root)
    if not swbd_root.is_dir():
        _check_switchboard(swbd_root, swbd_root)  # raises: names the missing directory
    transcripts = _find_transcripts(swbd_root, Path(transcripts_dir) if transcripts_dir else None, out)
    _check_switchboard(swbd_root, transcripts)
    if eval2000_root is not None:
        _check_eval2000(Path(eval2000_root))
    normalize = get_normalizer(text_normalizer) if isinstance(text_normalizer, str) else text_normalizer

    swbd = prepare_switchboard(swbd_root, transcripts_dir=transcripts, output_dir=out / "manifests",
                               absolute_paths=True)
    recs: RecordingSet = swbd["recordings"]
    conv = sorted(recs.ids)
    if dev_conversations is not None:
        dev_ids = set(dev_conversations)
        unknown = dev_ids - set(conv)
        if unknown:
            raise ValueError(f"dev_conversations not in Switchboard: {sorted(unknown)[:5]}; ids look like {conv[:2]}")
    else:
        n_dev = max(1, round(dev_fraction * len(conv))) if len(conv) >= 2 and dev_fraction > 0 else 0
        dev_ids = set(conv[len(conv) - n_dev:]) if n_dev else set()
    result: Dict[str, CutSet] = {}
    reports: Dict[str, DataReport] = {}
    for split, keep in (("train", lambda r: r not in dev_ids), ("dev", lambda r: r in dev_ids)):
        reports[split] = DataReport(source=f"switchboard {split}")
        sups = _normalise(swbd["supervisions"].filter(lambda s: keep(s.recording_id)), normalize, reports[split])
        result[split] = _cuts(recs.filter(lambda r: keep(r.id)), sups, sampling_rate, reports[split])

    if eval2000_root is not None:
        ev = prepare_eval2000(Path(eval2000_root), output_dir=out / "manifests", absolute_paths=True)
        reports["eval2000"] = DataReport(source="eval2000")
        sups = _normalise(ev["supervisions"], normalize, reports["eval2000"],
                          subset=lambda rid: "callhome" if rid.startswith("en") else "swbd")
        result["eval2000"] = _cuts(ev["recordings"], sups, sampling_rate, reports["eval2000"])
        for name in ("swbd", "callhome"):
            result[f"eval2000_{name}"] = result["eval2000"].filter(
                lambda c, n=name: c.supervisions[0].custom["subset"] == n).to_eager()
    for split, cuts in result.items():
        cuts.to_file(out / f"{split}_cuts.jsonl.gz")
        if split in reports:
            (out / f"{split}_report.txt").write_text(reports[split].summary() + "\n", encoding="utf-8")
            logger.info("%s", reports[split].summary())
    return result


def load_switchboard_cuts(out_dir: Pathlike) -> Dict[str, CutSet]:
    """Load the CutSets written by :func:`prepare_switchboard_corpus` (and enable ``.sph`` reading)."""
    enable_sphere_fallback()
    out = Path(out_dir)
    found = {s: out / f"{s}_cuts.jsonl.gz" for s in SWBD_SPLITS if (out / f"{s}_cuts.jsonl.gz").is_file()}
    if not found:
        raise _layout_error(out, "no *_cuts.jsonl.gz files", "run prepare_switchboard_corpus() into this directory")
    return {s: load_manifest(p) for s, p in found.items()}
