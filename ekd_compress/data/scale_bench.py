"""Data preparation and one epoch of training-batch loading on a large generated corpus.

`run_scale_bench(n)` writes n synthetic utterances (random (T, F) features stored once in
lhotse's chunked lilcom storage, a short random transcript each) and their lazy manifest
(data preparation), then runs one shuffled epoch of the real training loader
(`make_loader` + `AsrDataset`) over the lazy manifest. It does both at n and at a fraction
of n (default n/10) and records wall time and peak resident memory (RSS) of each phase,
so one can see whether memory stays flat as the corpus grows. `lazy=False` loads the
same manifest eagerly instead (the small-corpus path: every cut in memory, features cached
after first use), for comparison.

Each phase runs in a fresh process by default (`isolate=True`), so each peak is that
phase's own: `ru_maxrss` only ever grows within a process. Nothing in a phase holds the
corpus: features and cuts are written one at a time and read back through the lazy
manifest; the epoch's completeness is checked by a count and an order-free checksum of
the cut ids instead of a set of them.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
FRAME_SHIFT_S = 0.01  # 10 ms frames: 100 frames per second of audio
FLAT_KB_PER_UTTERANCE = 1.0  # peak memory growth per extra utterance still called flat


def rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux: `VmHWM` of /proc/self/status, the high-water mark of this program's own memory.
    `ru_maxrss` is not used there: it carries over fork and exec, so a benchmark child
    started by a large parent would report the parent's peak. Elsewhere `ru_maxrss`
    (KiB). At least `rss_mb()`.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) / 1024, rss_mb())
    except (OSError, IndexError, ValueError):
        pass
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_mb())


def id_checksum(ids) -> int:
    """Order-free checksum of cut ids (sum of CRC-32s mod 2**64): equal sums, same multiset (w.h.p.)."""
    return sum(zlib.crc32(i.encode()) for i in ids) % 2**64


def prepare_corpus(
    n: int, out_dir: Path, min_seconds: float = 1.0, max_seconds: float = 2.0, num_mel_bins: int = 80,
    seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Write n utterances: features (lilcom chunks) and a lazy-readable manifest.

    Utterance i lasts U(min_seconds, max_seconds) s, i.e. 100 frames/s of (T, num_mel_bins)
    random float32 features. Returns {manifest, features, cuts, audio_hours, seconds,
    disk_mb, checksum, baseline_rss_mb, peak_rss_mb}.
    """
    import numpy as np
    from lhotse import CutSet, Features, LilcomChunkyWriter, MonoCut, SupervisionSegment
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"n={n}: the corpus needs at least one utterance")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"utterance lengths {min_seconds}..{max_seconds} s: need 0 < min_seconds <= max_seconds")
    base = rss_mb()
    out_dir = Path(out_dir)
    manifest, storage = out_dir / "cuts.jsonl.gz", out_dir / "feats"
    _remove(out_dir)  # an earlier run's corpus
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list(ALPHABET))
    audio_s, checksum = 0.0, 0
    start = time.perf_counter()
    with LilcomChunkyWriter(storage) as writer, CutSet.open_writer(manifest) as cut_writer:
        for i in tqdm(range(n), desc=f"prepare {n}", unit="utt", disable=not progress, mininterval=1.0):
            frames = int(rng.integers(round(min_seconds * 100), round(max_seconds * 100) + 1))
            duration = frames * FRAME_SHIFT_S
            uid = f"utt{i:08d}"
            key = writer.write(uid, rng.standard_normal((frames, num_mel_bins), dtype=np.float32))
            feats = Features(
                type="synthetic", num_frames=frames, num_features=num_mel_bins, frame_shift=FRAME_SHIFT_S,
                sampling_rate=16000, start=0.0, duration=duration, storage_type=writer.name,
                storage_path=writer.storage_path, storage_key=key,
            )
            words = [
                "".join(letters[rng.integers(0, len(letters), int(rng.integers(2, 7)))])
                for _ in range(int(rng.integers(1, 4)))
            ]
            sup = SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=duration, text=" ".join(words))
            cut_writer.write(MonoCut(id=uid, start=0.0, duration=duration, channel=0, features=feats, supervisions=[sup]))
            audio_s += duration
            checksum = (checksum + zlib.crc32(uid.encode())) % 2**64
    seconds = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return {"manifest": str(manifest), "features": str(storage), "cuts": n, "audio_hours": audio_s / 3600,
            "seconds": seconds, "disk_mb": disk / 2**20, "checksum": checksum,
            "baseline_rss_mb": base, "peak_rss_mb": peak_rss_mb()}


def _remove(out_dir: Path) -> None:
    """Delete a corpus prepare_corpus wrote (its manifest and feature storage), nothing else."""
    (out_dir / "cuts.jsonl.gz").unlink(missing_ok=True)
    for p in out_dir.glob("feats*"):
        p.unlink()
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def load_epoch(
    manifest: Path, max_duration: float = 120.0, num_workers: int = 0, seed: int = 0, world_size: int = 1,
    rank: int = 0, total: int | None = None, progress: bool = True, lazy: bool = True,
) -> dict[str, Any]:
    """One shuffled epoch of training batches over the manifest (lazy, or eager with the
    feature cache when not lazy): make_loader + AsrDataset.

    The loader is the one `distill` trains with (max_duration seconds of audio per batch,
    duration buckets, features padded to (B, T, F) tensors with targets). Returns
    {cuts, batches, frames, audio_hours, seconds, checksum, lazy, feature_cache,
    baseline_rss_mb, peak_rss_mb, peak_rss_workers_mb}.
    """
    import numpy as np
    from lhotse import CutSet
    from tqdm import tqdm

    from ekd_compress.contract.features import FeatureSpec
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.data import AsrDataset, make_loader

    base = rss_mb()
    cuts = CutSet.from_jsonl_lazy(manifest) if lazy else CutSet.from_file(manifest).to_eager()
    first = next(iter(cuts), None)
    if first is None or not first.has_features:
        raise ValueError(f"{manifest} is empty or its cuts carry no stored features; write it with prepare_corpus")
    spec = FeatureSpec(num_mel_bins=first.num_features)
    dataset = AsrDataset(TokenTable.build_chars([ALPHABET]), spec, subsampling=4)
    start = time.perf_counter()
    loader = make_loader(cuts, dataset, max_duration, shuffle=True, seed=seed, num_workers=num_workers,
                         world_size=world_size, rank=rank)
    n_cuts = n_batches = frames = 0
    audio_s, checksum = 0.0, 0
    with tqdm(total=total, desc="load epoch", unit="utt", disable=not progress, mininterval=1.0) as bar:
        for batch in loader:
            b = len(batch["ids"])
            n_cuts += b
            n_batches += 1
            frames += int(batch["lengths"].sum())
            audio_s += float(np.sum(batch["durations"]))
            checksum = (checksum + id_checksum(batch["ids"])) % 2**64
            bar.update(b)
    seconds = time.perf_counter() - start
    return {"cuts": n_cuts, "batches": n_batches, "frames": frames, "audio_hours": audio_s / 3600,
            "seconds": seconds, "checksum": checksum, "lazy": cuts.is_lazy, "feature_cache": dataset.caches_features,
            "baseline_rss_mb": base, "peak_rss_mb": peak_rss_mb(),
            "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


_CHILD = ("import json, sys; from ekd_compress.data import scale_bench as m; "
          "args, kwargs = json.loads(sys.argv[2]); out = getattr(m, sys.argv[1])(*args, **kwargs); "
          "open(sys.argv[3], 'w').write(json.dumps(out))")


def _call(isolate: bool, fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """fn(*args, **kwargs) of this module, in a fresh Python process when isolate (its peak RSS is its own).

    Arguments travel as JSON (paths as strings); the child's progress bars go to stderr.
    """
    if not isolate:
        return fn(*args, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        call = json.dumps([[str(a) if isinstance(a, Path) else a for a in args], kwargs])
        proc = subprocess.run([sys.executable, "-c", _CHILD, fn.__name__, call, str(result)], stdout=subprocess.DEVNULL,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{fn.__name__} failed in its benchmark process (exit code {proc.returncode}); "
                               "its error is printed above; rerun with isolate=False (--in-process) to debug")
        return json.loads(result.read_text())


def measure(n: int, work_dir: Path, isolate: bool = True, max_duration: float = 120.0, num_workers: int = 0,
            min_seconds: float = 1.0, max_seconds: float = 2.0, seed: int = 0, lazy: bool = True,
            progress: bool = True) -> dict[str, Any]:
    """Prepare n utterances under work_dir/n{n}, then load one epoch of them: {n, prepare, load, complete}."""
    out_dir = Path(work_dir) / f"n{n}"
    prep = _call(isolate, prepare_corpus, n, out_dir, min_seconds=min_seconds, max_seconds=max_seconds, seed=seed,
                 progress=progress)
    load = _call(isolate, load_epoch, prep["manifest"], max_duration=max_duration, num_workers=num_workers,
                 seed=seed, total=n, progress=progress, lazy=lazy)
    complete = load["cuts"] == n and load["checksum"] == prep["checksum"]
    return {"n": n, "prepare": prep, "load": load, "complete": complete}


def run_scale_bench(
    n: int = 100_000, work_dir: Path = Path("/tmp/ekd_scale_bench"), fraction: float = 0.1, isolate: bool = True,
    keep: bool = False, out: Path | None = None, progress: bool = True, **kwargs: Any,
) -> dict[str, Any]:
    """Measure at round(n * fraction) and at n utterances; write JSON to `out` (default work_dir/scale_bench.json).

    kwargs go to `measure` (max_duration, num_workers, min_seconds, max_seconds, seed, lazy).
    The generated corpora are deleted afterwards unless keep. Returns {runs, growth_mb,
    kb_per_extra_utterance, flat, complete, isolate, json}: growth_mb is the load phase's
    peak RSS at n minus that at the smaller size; flat means under FLAT_KB_PER_UTTERANCE
    per extra utterance (a feature cache alone holds 4 bytes x 80 bins x 100 frames/s =
    32 kB per second of audio). Peaks are only comparable with isolate.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction}: the comparison size is a share of n, within (0, 1), e.g. 0.1")
    small = max(1, round(n * fraction))
    work_dir = Path(work_dir)
    runs = []
    try:
        for size in (small, n):
            runs.append(measure(size, work_dir, isolate=isolate, progress=progress, **kwargs))
    finally:
        if not keep:
            for size in (small, n):
                _remove(work_dir / f"n{size}")
    growth = runs[1]["load"]["peak_rss_mb"] - runs[0]["load"]["peak_rss_mb"]
    per_utt = growth * 1024 / max(n - small, 1)
    result = {"runs": runs, "growth_mb": growth, "kb_per_extra_utterance": per_utt,
              "flat": per_utt < FLAT_KB_PER_UTTERANCE, "complete": all(r["complete"] for r in runs), "isolate": isolate}
    out = Path(out) if out else work_dir / "scale_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    result["json"] = str(out)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The runs as a plain-text table (times in s, memory in MiB)."""
    head = (f"{'utterances':>10} {'loader':>6} {'audio h':>8} {'prep s':>8} {'prep utt/s':>10} {'prep peak':>9} {'disk MB':>8} "
            f"{'load s':>8} {'load utt/s':>10} {'batches':>8} {'load base':>9} {'load peak':>9} {'complete':>8}")
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        p, ld = r["prepare"], r["load"]
        lines.append(
            f"{r['n']:>10} {'lazy' if ld['lazy'] else 'eager':>6} {p['audio_hours']:>8.1f} {p['seconds']:>8.1f} {r['n'] / p['seconds']:>10.0f} "
            f"{p['peak_rss_mb']:>9.0f} {p['disk_mb']:>8.0f} {ld['seconds']:>8.1f} {ld['cuts'] / ld['seconds']:>10.0f} "
            f"{ld['batches']:>8} {ld['baseline_rss_mb']:>9.0f} {ld['peak_rss_mb']:>9.0f} {r['complete']!s:>8}")
    small, large = result["runs"][0]["n"], result["runs"][-1]["n"]
    lines.append(f"load-phase peak memory {small} -> {large} utterances: {result['growth_mb']:+.0f} MiB, "
                 f"{result['kb_per_extra_utterance']:.2f} kB per extra utterance "
                 f"({'flat' if result['flat'] else 'NOT flat'}: threshold {FLAT_KB_PER_UTTERANCE:g} kB)")
    return "\n".join(lines)
