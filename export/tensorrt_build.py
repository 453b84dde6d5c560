"""TensorRT engine (`model.plan`) from the bundle's streaming ONNX, with the TensorRT Python API.

    check_trt_available()          -> (tensorrt module, GPU name), or TrtUnavailable naming what is missing
    build_engine(onnx, plan, bundle, precision="fp16")  -> the bundle's `trt` report

The network comes from TensorRT's ONNX parser; one optimization profile covers the
streaming shapes: `chunk` (B, window_frames, F) (chunk + lookahead) and every state with its "B" axis at
min/opt/max batch (1 / opt_batch / max_batch), all other axes fixed.

Precision, for TensorRT 10.x and 11.x alike:

    fp32   the fp32 ONNX as is
    fp16   10.x: BuilderFlag.FP16 on the fp32 network (weak typing).
           11.x removed the precision flags (networks are strongly typed), so the ONNX is
           first converted to fp16 with fp32 inputs/outputs (onnxruntime's float16 converter).
    int8   explicit quantization: the QDQ model of `quantize.quantize_static_int8`
           (calibrated on dev features) is parsed; 10.x also sets INT8 + FP16 flags, 11.x
           needs none. TensorRT's implicit INT8 calibrators are gone in 11.x and not used.

An engine is valid only for the GPU model and TensorRT version it was built with; both are
recorded in bundle.json. Install: `pip install 'ekd-compress[trt]'` on a machine with an
NVIDIA GPU and driver.
"""
from __future__ import annotations

import ctypes
import importlib
import sys
from pathlib import Path
from typing import Any

from ekd_compress.contract.bundle import state_shape

PRECISIONS = ("fp16", "int8", "fp32")
INSTALL_HINT = ("install it on a machine with an NVIDIA GPU and driver: pip install 'ekd-compress[trt]' "
                "(TensorRT 10.x or 11.x); or export without --trt (the ONNX and INT8 models run on any CPU)")


class TrtUnavailable(RuntimeError):
    """TensorRT export is impossible here: no CUDA GPU, or no (usable) tensorrt package."""


class TrtBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine."""


def cuda_gpus() -> list[str]:
    """Names of the CUDA GPUs the NVIDIA driver reports (empty without driver or GPU); no torch needed."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so", "libcuda.dylib")
    cuda = None
    for name in names:
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if cuda is None:
        return []
    try:
        if cuda.cuInit(0) != 0:
            return []
        count = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        out = []
        for i in range(count.value):
            device = ctypes.c_int(0)
            buf = ctypes.create_string_buffer(256)
            if cuda.cuDeviceGet(ctypes.byref(device), i) == 0 and cuda.cuDeviceGetName(buf, 256, device) == 0:
                out.append(buf.value.decode(errors="replace"))
            else:
                out.append(f"CUDA device {i}")
        return out
    except (AttributeError, OSError):
        return []


def check_trt_available() -> tuple[Any, str]:
    """Return (the tensorrt module, the name of GPU 0), or raise `TrtUnavailable` saying what is missing."""
    missing = []
    gpus = cuda_gpus()
    if not gpus:
        missing.append("no CUDA GPU (the NVIDIA driver's libcuda is absent or reports no device)")
    trt = None
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        missing.append("the tensorrt Python package is not installed" if "tensorrt" in str(e)
                       else f"the tensorrt package does not import ({e})")
    except Exception as e:  # noqa: BLE001 - a broken CUDA/TensorRT install raises anything
        missing.append(f"the tensorrt package does not import ({type(e).__name__}: {e})")
    if trt is not None:
        major = _major(trt)
        if major < 10:
            missing.append(f"tensorrt {trt.__version__} is too old (10.x or 11.x is needed)")
    if missing:
        raise TrtUnavailable("TensorRT export (--trt) is not possible on this machine: " + "; ".join(missing)
                             + ". To build a TensorRT engine, " + INSTALL_HINT + ".")
    return trt, gpus[0]


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def profile_shapes(bundle: dict[str, Any], min_batch: int, opt_batch: int, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """Input name -> {"min", "opt", "max"} concrete shapes for the optimization profile."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"TensorRT batch range min={min_batch} opt={opt_batch} max={max_batch}: need 1 <= min <= opt <= max")
    entries = {"chunk": bundle["inputs"]["chunk"]["shape"], **{s["name"]: s["shape"] for s in bundle["states"]}}
    return {name: {k: list(state_shape(shape, b)) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}
            for name, shape in entries.items()}


def to_fp16_onnx(src: Path, dst: Path) -> Path:
    """fp32 ONNX -> fp16 weights and compute, fp32 inputs/outputs (for strongly typed TensorRT 11.x)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def build_engine(onnx_path: Path | str, plan_path: Path | str, bundle: dict[str, Any], precision: str = "fp16",
                 int8_onnx: Path | str | None = None, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 16,
                 workspace_gib: float = 2.0, log=print) -> dict[str, Any]:
    """Build and serialize a TensorRT engine for the streaming model.

    Args:
        onnx_path: the bundle's fp32 model.onnx.
        plan_path: where to write the serialized engine (model.plan).
        bundle: the bundle.json object (input/state shapes).
        precision: "fp16", "int8" (needs `int8_onnx`, a QDQ model) or "fp32".
        min_batch, opt_batch, max_batch: the profile's batch range (streams per call).
        workspace_gib: builder workspace memory limit.

    Returns:
        The bundle's `trt` report: {precision, tensorrt_version, gpu, profiles, strongly_typed, built_from}.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision {precision!r} is unknown; use one of {PRECISIONS}")
    trt, gpu = check_trt_available()
    major = _major(trt)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    source = onnx_path
    if precision == "int8":
        if int8_onnx is None:
            raise ValueError("TensorRT int8 needs a QDQ-quantized ONNX (quantize.quantize_static_int8)")
        source = Path(int8_onnx)
    elif precision == "fp16" and major >= 11:
        source = to_fp16_onnx(onnx_path, plan_path.with_name("model.fp16.onnx"))

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (10.x), strongly typed (11.x): both the default
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtBuildError(f"TensorRT {trt.__version__} cannot parse {source.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if major < 11:  # weak typing: precision flags (removed in 11.x)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    shapes = profile_shapes(bundle, min_batch, opt_batch, max_batch)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise TrtBuildError(f"the ONNX input {name!r} is not in bundle.json; re-export the bundle")
        profile.set_shape(name, shapes[name]["min"], shapes[name]["opt"], shapes[name]["max"])
    config.add_optimization_profile(profile)

    log(f"TensorRT {trt.__version__}: building a {precision} engine for {gpu} (batch {min_batch}..{max_batch})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"TensorRT {trt.__version__} failed to build the {precision} engine from {source.name}; "
                            "its log above names the layer (try --fp16 or a smaller --trt max batch)")
    with open(plan_path, "wb") as f:
        f.write(serialized)
    if source != onnx_path and source.name == "model.fp16.onnx":
        source.unlink(missing_ok=True)  # intermediate only; the bundle keeps fp32 and INT8 models
    return {
        "precision": precision,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "profiles": [{"batch": {"min": min_batch, "opt": opt_batch, "max": max_batch}, "shapes": shapes}],
        "strongly_typed": major >= 11,
        "built_from": "model.int8.onnx (QDQ)" if precision == "int8" else onnx_path.name,
    }
