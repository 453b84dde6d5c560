"""INT8 models with onnxruntime quantization, with their dev-set WER cost measured.

    dynamic   weights INT8 ahead of time, activations quantized on the fly per call
              (`quantize_dynamic`; no calibration data; the usual choice for CPU RNN/linear models)
    static    weights and activations INT8 with scales calibrated on dev features
              (`quantize_static`, QDQ format, symmetric INT8 activations: also what TensorRT's
              explicit quantization reads). Calibration streams dev utterances through the fp32
              model so the state inputs see realistic values.

`measure_int8` decodes the dev set through the onnxruntime chunk loop with the fp32 and the
INT8 model (greedy CTC), each utterance streamed alone: dynamic INT8 picks one activation scale
per call over the whole batch, so scoring utterances in batches would make its WER depend on
which utterances share a batch. It times chunks on one thread for both models, by CPU time
(median; the wall-clock medians are reported too). export/int8_gate.py decides whether the INT8
model ships; `check_int8` fails loudly when WER rises by more than the allowed absolute amount:
peers shipped INT8 models with doubled WER unnoticed.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ekd_compress.export.ort_stream import OrtStreamer, utterance_windows
from ekd_compress.export.verify import Utterance

METHODS = ("dynamic", "static")
DEFAULT_MAX_WER_INCREASE = 0.3  # absolute WER points (the export gate's, export/int8_gate.py)


class Int8AccuracyError(RuntimeError):
    """The INT8 model loses more accuracy than allowed."""


@contextmanager
def _prepared(src: Path | str) -> Iterator[str]:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation) into a
    temporary file; the original model when pre-processing fails. Quiets the quantizer's
    root-logger advice while inside."""
    from onnxruntime.quantization import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = str(Path(tmp) / "prepared.onnx")
            try:
                quant_pre_process(str(src), prepared)
            except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
                prepared = str(src)
            yield prepared
    finally:
        root.setLevel(level)


def quantize_dynamic_int8(src: Path | str, dst: Path | str) -> Path:
    """fp32 ONNX -> dynamically quantized INT8 ONNX (weights int8, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _prepared(src) as prepared:
        quantize_dynamic(prepared, str(dst), weight_type=QuantType.QInt8, per_channel=False)
    return Path(dst)


class ChunkCalibrationReader:
    """onnxruntime CalibrationDataReader: the (chunk, states) feeds of streaming `utterances`
    through the fp32 model, at most `max_chunks` of them."""

    def __init__(self, fp32_path: Path | str, bundle: dict[str, Any], utterances: Sequence[Utterance],
                 max_chunks: int = 512) -> None:
        runner = OrtStreamer(fp32_path, bundle, threads=None)
        self.feeds: list[dict[str, np.ndarray]] = []
        for utt in utterances:
            states = runner.zero_states(1)
            for chunk in utterance_windows(utt.feats, runner.chunk_frames, runner.lookahead_frames):
                self.feeds.append(runner.feeds(chunk, states))
                _, states = runner.step(chunk, states)
                if len(self.feeds) >= max_chunks:
                    break
            if len(self.feeds) >= max_chunks:
                break
        self._iter = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


def quantize_static_int8(src: Path | str, dst: Path | str, bundle: dict[str, Any],
                         calibration: Sequence[Utterance], max_chunks: int = 512) -> Path:
    """fp32 ONNX -> statically quantized INT8 ONNX (QDQ), calibrated on `calibration` utterances."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static INT8 quantization needs calibration utterances; the dev set is empty")
    inner = ChunkCalibrationReader(src, bundle, calibration, max_chunks)

    class _Reader(CalibrationDataReader):  # the base class is an ABC; delegate to ours
        def get_next(self):
            return inner.get_next()

    with _prepared(src) as prepared:
        quantize_static(
            prepared, str(dst), _Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],  # the weight-heavy ops; norms and RNN cells stay fp32
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return Path(dst)


def quantize_int8(src: Path | str, dst: Path | str, bundle: dict[str, Any], method: str = "dynamic",
                  calibration: Sequence[Utterance] = ()) -> Path:
    """Dispatch to `quantize_dynamic_int8` or `quantize_static_int8`."""
    if method == "dynamic":
        return quantize_dynamic_int8(src, dst)
    if method == "static":
        return quantize_static_int8(src, dst, bundle, calibration)
    raise ValueError(f"INT8 method {method!r} is unknown; use one of {METHODS}")


# ------------------------------------------------------------------------------- measuring
def onnx_hyps(runner: OrtStreamer, utterances: Sequence[Utterance], tokens) -> list[str]:
    """Greedy CTC transcripts over the ONNX chunk loop, each utterance streamed alone (batch 1),
    so an utterance's transcript never depends on the others (dynamic INT8 scales per call)."""
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode

    outs = runner.run_utterances([u.feats for u in utterances], batch_size=1)
    return [tokens.decode(ctc_greedy_decode(lp[: u.feats.shape[0] // runner.subsampling])[0])
            for lp, u in zip(outs, utterances)]


def onnx_wer(runner: OrtStreamer, utterances: Sequence[Utterance], tokens) -> float | None:
    """Dev error rate (percent) of greedy CTC over the ONNX chunk loop, batch 1: WER, or PER for a phone
    model (`int8_metric`); None when the refs hold no words."""
    from ekd_compress.evaluate.error_rates import error_rate

    wer = error_rate(int8_metric(tokens), [u.text for u in utterances], onnx_hyps(runner, utterances, tokens),
                     tokens.lexicon).wer
    return None if math.isnan(wer) else float(wer)


def int8_metric(tokens) -> str:
    """The error rate the INT8 check compares: "per" for phone models, else "wer"."""
    return "per" if tokens.kind == "phone" else "wer"


def chunk_latencies_ms(runners: dict[str, Any], feats: np.ndarray, n_chunks: int = 200,
                       warmup: int = 10, clock: str = "wall") -> dict[str, np.ndarray]:
    """Per-chunk compute time (ms) of several streaming steppers on the same chunks, interleaved.

    Args:
        runners: name -> object with `zero_states(batch)` and `step(chunk, states)` (batch 1).
        feats: (T, F) features cycled through chunk by chunk (states carried across).
        n_chunks: timed chunks per runner, after `warmup` untimed ones.
        clock: "wall" (perf_counter) or "cpu" (this thread's CPU time: right for onnxruntime on
            one intra-op thread, which computes on the calling thread; not inflated by other processes).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r}: use 'wall' or 'cpu'")
    now = time.perf_counter if clock == "wall" else time.thread_time
    shapes = {name: (r.chunk_frames, r.lookahead_frames) for name, r in runners.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"runners stream different (chunk, lookahead) frames {shapes}; the per-chunk times are "
                         "only comparable on one window: time models with equal chunks and lookaheads together")
    chunk_frames, lookahead = next(iter(shapes.values()))
    chunks = utterance_windows(feats, chunk_frames, lookahead)
    states = {name: r.zero_states(1) for name, r in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + n_chunks):
        chunk = chunks[i % len(chunks)]
        if i % len(chunks) == 0:
            states = {name: r.zero_states(1) for name, r in runners.items()}
        for name, r in runners.items():
            start = now()
            _, states[name] = r.step(chunk, states[name])
            if i >= warmup:
                times[name].append((now() - start) * 1000.0)
    return {name: np.asarray(t) for name, t in times.items()}


def measure_int8(fp32_path: Path | str, int8_path: Path | str, bundle: dict[str, Any],
                 utterances: Sequence[Utterance], tokens, method: str, latency_chunks: int = 300) -> dict[str, Any]:
    """WER of fp32 vs INT8 through the ONNX chunk loop (batch 1), and the INT8 speedup per chunk (one thread).

    Returns {wer_fp32, wer_int8, wer_increase, speedup, method, latency_ms_fp32, latency_ms_int8
    (median CPU ms per chunk, batch 1, one thread; speedup is their ratio), wall_ms_fp32,
    wall_ms_int8 (the same by wall clock), utterances}, metric (wer or per: for a phone model the wer_* fields hold phone error rates)}.
    """
    fp32 = OrtStreamer(fp32_path, bundle, threads=1)
    int8 = OrtStreamer(int8_path, bundle, threads=1)
    wer_fp32 = onnx_wer(fp32, utterances, tokens)
    wer_int8 = onnx_wer(int8, utterances, tokens)
    longest = max(utterances, key=lambda u: u.feats.shape[0]).feats
    runners = {"fp32": fp32, "int8": int8}
    cpu = chunk_latencies_ms(runners, longest, n_chunks=latency_chunks, clock="cpu")
    wall = chunk_latencies_ms(runners, longest, n_chunks=latency_chunks // 3, clock="wall")
    p50_fp32, p50_int8 = float(np.median(cpu["fp32"])), float(np.median(cpu["int8"]))
    increase = None if wer_fp32 is None or wer_int8 is None else wer_int8 - wer_fp32
    return {
        "wer_fp32": wer_fp32, "wer_int8": wer_int8, "wer_increase": increase,
        "speedup": p50_fp32 / p50_int8 if p50_int8 > 0 else None, "method": method,
        "latency_ms_fp32": p50_fp32, "latency_ms_int8": p50_int8,
        "wall_ms_fp32": float(np.median(wall["fp32"])), "wall_ms_int8": float(np.median(wall["int8"])),
        "utterances": len(utterances),
        "metric": int8_metric(tokens),
    }


def metric_name(candidate: dict[str, Any]) -> tuple[str, str]:
    """The error rate a measured candidate was judged on and what it counts: ("WER", "words"), or
    ("PER", "phones") for phone models (the fields keep the name wer_* for every metric)."""
    name = str(candidate.get("metric") or "wer").upper()
    return name, {"PER": "phones", "CER": "characters"}.get(name, "words")


def check_int8(report: dict[str, Any], max_wer_increase: float = DEFAULT_MAX_WER_INCREASE) -> None:
    """Raise `Int8AccuracyError` when the INT8 WER exceeds the fp32 WER by more than `max_wer_increase` points."""
    increase = report.get("wer_increase")
    name, unit = metric_name(report)
    if increase is None:
        raise Int8AccuracyError(
            f"the INT8 {name} change could not be measured (the dev references hold no {unit}); "
            "give the experiment a dev set with transcripts, or export without --int8"
        )
    if increase > max_wer_increase:
        raise Int8AccuracyError(
            f"INT8 ({report['method']}) changes dev {name} from {report['wer_fp32']:.2f}% to {report['wer_int8']:.2f}% "
            f"({increase:+.2f} points), above the allowed {max_wer_increase:+g}. The INT8 model is refused: "
            "try --int8-method static (calibrated), deploy the fp32 model.onnx, or raise "
            "--max-int8-wer-increase if this loss is acceptable."
        )
