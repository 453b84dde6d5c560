"""The machine's own arithmetic limit: single-thread float32 matrix-product rate (GFLOP/s).

`ekd_compress.serve.bench` measures it once per run and compares every bundle's measured RTF with its
FLOP floor, `flops_per_audio_second / matmul_flops_per_second`: the RTF the model would have
if it did nothing but its matrix products at the machine's best one-thread rate. The gap
(measured / floor) is what the rest costs: feature extraction, onnxruntime's per-call and
per-op overhead, small matrices that run far below the peak rate, decoding and the server.

The rate is measured with onnxruntime (MLAS, the kernels that run the bundles) on a MatMul
graph built with `onnx` when that is installed; otherwise (the torch-free serve image has
no `onnx`) with numpy's BLAS in a subprocess pinned to one thread. 2 FLOPs per multiply-add.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

PEAK_SHAPE = (512, 512, 512)  # (M, K, N): large enough to run at the kernel's peak
CHUNK_SHAPE = (8, 384, 128)   # (M, K, N): one chunk of 8 output frames through a 128-wide layer
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _time_rate(run, flops: float, min_seconds: float) -> tuple[float, float]:
    """Best-of-5 FLOP/s of `run()` per CPU second of this thread and per wall second (each sample
    repeats it for at least min_seconds / 5 of CPU time). The CPU-time rate is the machine's: other
    processes sharing the cores lower the wall-clock rate, not it."""
    run()  # warm-up
    best_cpu = best_wall = 0.0
    for _ in range(5):
        n, c0, t0 = 0, time.thread_time(), time.perf_counter()
        while True:
            run()
            n += 1
            cpu = time.thread_time() - c0
            if cpu >= min_seconds / 5:
                break
        best_cpu = max(best_cpu, n * flops / cpu)
        best_wall = max(best_wall, n * flops / (time.perf_counter() - t0))
    return best_cpu, best_wall


def _ort_matmul_rate(shape: tuple[int, int, int], min_seconds: float) -> tuple[float, float]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m, k, n = shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((m, k), dtype=np.float32), "b": rng.standard_normal((k, n), dtype=np.float32)}
    return _time_rate(lambda: sess.run(None, feeds), 2.0 * m * k * n, min_seconds)


_NUMPY_CODE = """
import json, sys, time
import numpy as np
m, k, n, min_s = json.loads(sys.argv[1])
a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
a @ b
cpu_best = wall_best = 0.0
for _ in range(5):
    reps, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.process_time() - c0 < min_s / 5:
        a @ b
        reps += 1
    cpu_best = max(cpu_best, reps * 2.0 * m * k * n / (time.process_time() - c0))
    wall_best = max(wall_best, reps * 2.0 * m * k * n / (time.perf_counter() - t0))
print(json.dumps([cpu_best, wall_best]))
"""


def _numpy_matmul_rate(shape: tuple[int, int, int], min_seconds: float) -> tuple[float, float]:
    env = dict(os.environ, **{k: "1" for k in _THREAD_ENV})  # BLAS reads these when it loads: a fresh process
    out = subprocess.run([sys.executable, "-c", _NUMPY_CODE, json.dumps([*shape, min_seconds])], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    cpu, wall = json.loads(out.stdout.strip().splitlines()[-1])
    return float(cpu), float(wall)


def matmul_rate(min_seconds: float = 1.0) -> dict[str, Any]:
    """Single-thread float32 GEMM rate per CPU second: {"gflops" (at PEAK_SHAPE), "gflops_chunk" (at
    CHUNK_SHAPE), "gflops_wall" (PEAK_SHAPE per wall second), "engine", "peak_shape", "chunk_shape"}.
    Takes about 2 x min_seconds of CPU time."""
    try:
        import onnx  # noqa: F401

        engine, rate = "onnxruntime (MLAS), 1 thread", _ort_matmul_rate
    except ImportError:
        engine, rate = "numpy BLAS, 1 thread", _numpy_matmul_rate
    peak_cpu, peak_wall = rate(PEAK_SHAPE, min_seconds)
    chunk_cpu, _ = rate(CHUNK_SHAPE, min_seconds)
    return {"gflops": peak_cpu / 1e9, "gflops_chunk": chunk_cpu / 1e9, "gflops_wall": peak_wall / 1e9,
            "engine": engine, "peak_shape": list(PEAK_SHAPE), "chunk_shape": list(CHUNK_SHAPE)}


def rtf_floor(flops_per_audio_second: float | None, gflops: float | None) -> float | None:
    """The RTF of doing only the model's matrix products at `gflops` GFLOP/s (None if unknown)."""
    if not flops_per_audio_second or not gflops:
        return None
    return flops_per_audio_second / (gflops * 1e9)
