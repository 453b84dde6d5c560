"""The INT8 gate of `export --int8`: an INT8 model ships only when it pays.

Each candidate method (dynamic: weights INT8, activations quantized per call; static: QDQ,
per-channel weights, activation scales calibrated on training audio) is quantized and measured
against the fp32 graph on this machine (ekd_compress.export.quantize.measure_int8):

    accuracy  dev WER change <= `max_wer_increase` absolute points (default +0.3), each utterance
              streamed alone (batch 1), so the WER does not depend on how utterances are batched
    speed     median CPU time per chunk (batch 1, 1 thread) at least `min_speedup` x faster than
              fp32 (default 1.2x); CPU time, so other processes on the machine do not decide it

The passing candidate with the largest speedup becomes `model.int8.onnx`. When none passes, the
bundle keeps fp32 only (`files.int8` null) and `bundle.json` says why, per candidate:

    "int8": {"decision": "int8" | "fp32", "method": ..., "reason": "...",
             "gate": {"max_wer_increase", "min_speedup", "speed": ...},
             "calibration": {"on": "train" | "dev", "utterances": n},
             "candidates": [{"method", "wer_fp32", "wer_int8", "wer_increase", "speedup", ...,
                             "passed", "reasons": [...]}],
             + the chosen candidate's measurements (wer_fp32, wer_int8, wer_increase, speedup, ...)}

`require=True` turns a refusal into `Int8AccuracyError` / `Int8SpeedError` (export fails).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ekd_compress.export.quantize import (
    DEFAULT_MAX_WER_INCREASE, Int8AccuracyError, measure_int8, metric_name, quantize_int8,
)

DEFAULT_MIN_SPEEDUP = 1.2  # fp32 / INT8 median chunk CPU time


class Int8SpeedError(RuntimeError):
    """The INT8 model is not enough faster than fp32 on this machine to be worth shipping."""


def judge(candidate: dict[str, Any], max_wer_increase: float, min_speedup: float) -> list[str]:
    """The reasons a measured candidate fails the gate ([] = it passes)."""
    reasons = []
    inc, speed = candidate.get("wer_increase"), candidate.get("speedup")
    name, unit = metric_name(candidate)
    if inc is None:
        reasons.append(f"its {name} change could not be measured (the dev references hold no {unit})")
    elif inc > max_wer_increase + 1e-9:
        reasons.append(f"dev {name} {candidate['wer_fp32']:.2f} -> {candidate['wer_int8']:.2f} % "
                       f"({inc:+.2f} points > the allowed {max_wer_increase:+g})")
    if speed is None:
        reasons.append("its speed could not be measured")
    elif speed < min_speedup - 1e-9:
        reasons.append(f"{speed:.2f}x the speed of fp32 per chunk ({candidate['latency_ms_fp32']:.3f} vs "
                       f"{candidate['latency_ms_int8']:.3f} ms CPU, batch 1, 1 thread) < the required {min_speedup:g}x")
    return reasons


def choose(candidates: Sequence[dict[str, Any]], max_wer_increase: float,
           min_speedup: float) -> tuple[dict[str, Any] | None, str]:
    """(the passing candidate with the largest speedup or None, the reason in words); marks each
    candidate with "passed" and "reasons"."""
    for c in candidates:
        c["reasons"] = judge(c, max_wer_increase, min_speedup)
        c["passed"] = not c["reasons"]
    passing = [c for c in candidates if c["passed"]]
    if passing:
        best = max(passing, key=lambda c: c["speedup"])
        return best, (f"{best['method']} INT8 kept: {best['speedup']:.2f}x faster than fp32 per chunk "
                      f"(>= {min_speedup:g}x) at {best['wer_increase']:+.2f} {metric_name(best)[0]} points (<= {max_wer_increase:+g})")
    why = "; ".join(f"{c['method']}: " + ", ".join(c["reasons"]) for c in candidates)
    return None, f"fp32 kept, no INT8 model pays on this machine: {why}"


def int8_gate(staging: Path, onnx_file: str, int8_file: str, bundle: dict[str, Any], methods: Sequence[str],
              dev: Sequence[Any], calibration: Sequence[Any], calibration_on: str, tokens,
              max_wer_increase: float = DEFAULT_MAX_WER_INCREASE, min_speedup: float = DEFAULT_MIN_SPEEDUP,
              require: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantize with each method, measure, decide; leaves `staging/int8_file` only for a winner.

    Args:
        staging: the bundle directory being built (holds `onnx_file`).
        methods: "dynamic" and/or "static".
        dev: `Utterance`s the WERs are measured on; calibration: those static INT8 calibrates on.
        calibration_on: where the calibration utterances came from ("train", or "dev" without train audio).
    Returns the bundle's "int8" entry (see the module docstring); sets bundle["files"]["int8"].
    """
    from ekd_compress.export.onnx_export import copy_metadata

    candidates, files = [], {}
    for method in methods:
        path = staging / f"model.int8-{method}.onnx"
        log(f"quantizing to INT8 ({method}{', calibrated on ' + calibration_on if method == 'static' else ''})")
        quantize_int8(staging / onnx_file, path, bundle, method, calibration=calibration)
        copy_metadata(staging / onnx_file, path)
        rep = measure_int8(staging / onnx_file, path, bundle, dev, tokens, method)
        log(f"  {method}: dev {metric_name(rep)[0]} fp32 {_pct(rep['wer_fp32'])} -> int8 {_pct(rep['wer_int8'])}, "
            f"{rep['speedup']:.2f}x per chunk (CPU time, 1 thread)")
        candidates.append(rep)
        files[method] = path
    best, reason = choose(candidates, max_wer_increase, min_speedup)
    for method, path in files.items():
        if best is not None and method == best["method"]:
            path.rename(staging / int8_file)
        else:
            path.unlink(missing_ok=True)
    bundle["files"]["int8"] = int8_file if best is not None else None
    report = {**(best or {}), "decision": "int8" if best else "fp32", "method": best["method"] if best else None,
              "reason": reason, "gate": {"max_wer_increase": max_wer_increase, "min_speedup": min_speedup,
                                         "speed": "median CPU time per chunk, batch 1, 1 thread"},
              "calibration": {"on": calibration_on, "utterances": len(calibration)} if "static" in methods else None,
              "candidates": candidates}
    report.pop("passed", None)
    report.pop("reasons", None)
    log(f"  INT8 gate: {reason}")
    if best is None and require:
        accuracy = any(r.startswith("dev WER") or "WER change" in r for c in candidates for r in c["reasons"])
        raise (Int8AccuracyError if accuracy else Int8SpeedError)(
            f"{reason}. The INT8 model is refused: deploy the fp32 model.onnx, try another --int8-method, or relax "
            "--max-int8-wer-increase / --min-int8-speedup if this is acceptable")
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"
