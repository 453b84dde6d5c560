"""Per-chunk latency on one CPU thread: PyTorch forward_chunk vs ONNX fp32 vs ONNX INT8.

    from ekd_compress.export.bench_latency import bench, format_table
    print(format_table(bench("exp/demo/bundles/student", chunks=300)))   # or an experiment dir + model=

BUNDLE_OR_EXP is a bundle directory, or an experiment directory whose EXP/bundles/MODEL is
used (exported first, with INT8, when missing). Without an INT8 model in the bundle, a
dynamic INT8 model is made in a temporary directory. The PyTorch model is loaded from the
experiment named in the bundle's provenance (skipped if that is gone).

All backends run batch 1, one intra-op thread, on the same chunks of a dev utterance (or
random features), interleaved chunk by chunk so that machine load affects them alike; the
state is carried from chunk to chunk as in streaming. Reported: p50/p95 ms per chunk, each
p50 as a ratio to PyTorch's, and the real-time factor (p50 / chunk duration).
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class TorchStepper:
    """PyTorch `forward_chunk` with the same zero_states/step interface as OrtStreamer."""

    def __init__(self, model) -> None:
        from ekd_compress.models.base import window_frames

        self.model = model.eval()
        self.chunk_frames = int(model.chunk_frames)
        self.lookahead_frames = window_frames(model) - self.chunk_frames

    def zero_states(self, batch: int):
        return self.model.initial_state(batch)

    def step(self, chunk: np.ndarray, states):
        import torch

        with torch.inference_mode():
            log_probs, new_states = self.model.forward_chunk(torch.from_numpy(chunk), states)
        return log_probs, new_states


def _bundle_dir(path: Path, model: str, log) -> Path:
    if (path / "bundle.json").is_file():
        return path
    if not (path / "models.json").is_file():
        raise SystemExit(f"{path} is neither a bundle (bundle.json) nor an experiment directory (models.json)")
    from ekd_compress.export.api import resolve_model_entry

    name = resolve_model_entry(path, model)["name"]
    bundle_dir = path / "bundles" / name
    if not (bundle_dir / "bundle.json").is_file():
        from ekd_compress.export.api import export_bundle

        log(f"no bundle at {bundle_dir}: exporting {name} (with INT8) first")
        export_bundle(path, model=name, int8=True, int8_method="dynamic", max_int8_wer_increase=float("inf"),
                      min_int8_speedup=0.0, log=log)
    return bundle_dir


def _torch_model(bundle: dict[str, Any]):
    prov = bundle["provenance"]
    exp_dir, model_path = prov.get("exp_dir"), prov.get("model_path")
    if not exp_dir or not model_path or not (Path(exp_dir) / model_path).exists():
        return None
    from ekd_compress.experiment import load_any

    return load_any(Path(exp_dir) / model_path)


def _features(bundle: dict[str, Any]) -> tuple[np.ndarray, str]:
    exp_dir = bundle["provenance"].get("exp_dir")
    if exp_dir and (Path(exp_dir) / "features" / "dev_cuts.jsonl.gz").exists():
        try:
            from ekd_compress.contract.features import FeatureSpec
            from ekd_compress.export.api import load_dev_utterances

            utts = load_dev_utterances(Path(exp_dir), FeatureSpec.from_dict(bundle["features"]), 8)
            longest = max(utts, key=lambda u: u.feats.shape[0])
            return longest.feats, f"dev utterance {longest.id} ({longest.feats.shape[0]} frames)"
        except Exception:  # noqa: BLE001 - fall back to random features
            pass
    rng = np.random.default_rng(0)
    return rng.standard_normal((400, bundle["features"]["num_mel_bins"])).astype(np.float32), "random features"


def bench(path: Path, model: str = "student", chunks: int = 300, warmup: int = 20, log=print) -> dict[str, Any]:
    """Measure and return {"rows": [{backend, p50_ms, p95_ms, ratio_to_pytorch, rtf}], ...}."""
    import onnxruntime as ort

    from ekd_compress.contract.bundle import read_bundle
    from ekd_compress.export.ort_stream import OrtStreamer
    from ekd_compress.export.quantize import chunk_latencies_ms, quantize_dynamic_int8

    bundle_dir = _bundle_dir(Path(path), model, log)
    bundle = read_bundle(bundle_dir)
    runners: dict[str, Any] = {}
    net = _torch_model(bundle)
    if net is not None:
        import torch

        torch.set_num_threads(1)
        runners["pytorch"] = TorchStepper(net)
    else:
        log("PyTorch model not found (experiment moved?): PyTorch row skipped")
    runners["onnx_fp32"] = OrtStreamer(bundle_dir / bundle["files"]["onnx"], bundle, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        int8_note = None
        if bundle["files"]["int8"]:
            int8_path = bundle_dir / bundle["files"]["int8"]
            int8_note = bundle["int8"]["method"]
        else:
            int8_path = quantize_dynamic_int8(bundle_dir / bundle["files"]["onnx"], Path(tmp) / "model.int8.onnx")
            int8_note = "dynamic (made for this benchmark)"
        runners["onnx_int8"] = OrtStreamer(int8_path, bundle, threads=1)
        feats, feats_note = _features(bundle)
        times = chunk_latencies_ms(runners, feats, n_chunks=chunks, warmup=warmup)
    chunk_ms = bundle["streaming"]["chunk_frames"] * bundle["streaming"]["frame_shift_ms"]
    base = float(np.median(times["pytorch"])) if "pytorch" in times else None
    rows = []
    for name, t in times.items():
        p50, p95 = float(np.percentile(t, 50)), float(np.percentile(t, 95))
        rows.append({"backend": name, "p50_ms": p50, "p95_ms": p95,
                     "ratio_to_pytorch": p50 / base if base else None, "rtf": p50 / chunk_ms})
    m = bundle["model"]
    return {
        "bundle": str(bundle_dir), "model": m["name"], "arch": m["arch"], "members": m["members"], "params": m["params"],
        "chunk_ms": chunk_ms, "chunks": chunks, "features": feats_note, "int8": int8_note, "rows": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "python": platform.python_version(),
                    "threads": 1},
    }


def format_table(result: dict[str, Any]) -> str:
    what = result["arch"] + (f" of {'+'.join(result['members'])}" if result["members"] else "")
    lines = [
        f"{result['model']} ({what}, {result['params']} parameters): {result['chunks']} chunks of "
        f"{result['chunk_ms']:.0f} ms, batch 1, 1 thread, {result['features']}; int8 = {result['int8']}",
        f"{'backend':<10} {'p50 ms':>8} {'p95 ms':>8} {'p50 / pytorch':>14} {'RTF':>8}",
    ]
    for r in result["rows"]:
        ratio = "" if r["ratio_to_pytorch"] is None else f"{r['ratio_to_pytorch']:.2f}"
        lines.append(f"{r['backend']:<10} {r['p50_ms']:8.3f} {r['p95_ms']:8.3f} {ratio:>14} {r['rtf']:8.4f}")
    m = result["machine"]
    lines.append(f"machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}, onnxruntime {m['onnxruntime']}")
    return "\n".join(lines)
