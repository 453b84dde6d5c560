"""Tiny bundles for the serving tests, made here (the serving code itself never imports torch).

- `gru_bundle`: an untrained 1-layer GRU student (hidden 32) exported with torch.onnx, dynamic
  batch axis; its transcripts are arbitrary but deterministic (streaming vs offline, protocols).
- `energy_bundle`: a hand-written ONNX graph (onnx.helper, no torch) whose output depends only on
  loudness: per output frame, the mean log-mel energy e of its 4 input frames gives blank when
  e < 0 (silence), "a" when 0 <= e < 10 (a 440 Hz tone at 0.03-0.8), "b" when e >= 10
  (white noise above 0.001). Lets tests predict transcripts, endpoints and word times.
"""
from __future__ import annotations

import json
import math
import socket
import sys
import warnings
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ekd_compress.contract.features import FeatureSpec  # noqa: E402
from ekd_compress.contract.tokens import BLANK, BLANK_ID, SPACE  # noqa: E402

FEATURES = FeatureSpec().to_dict()  # 16 kHz, 80 mel bins, 25/10 ms frames
CHARS = [BLANK, SPACE, "a", "b", "c", "d", "e", "f", "g", "h"]


def bundle_json(name: str, states: list[dict], vocab: int, chunk_frames: int = 32, params: int = 0,
                arch: str = "gru") -> dict:
    outputs = {"log_probs": {"shape": ["B", chunk_frames // 4, "V"], "dtype": "float32"}}
    outputs.update({f"{s['name']}_out": {"shape": s["shape"], "dtype": s["dtype"]} for s in states})
    return {
        "format": "ekd-bundle/1",
        "model": {"name": name, "kind": "student", "arch": arch, "params": params, "members": None},
        "files": {"onnx": "model.onnx", "int8": None, "trt": None, "tokens": "tokens.txt"},
        "features": FEATURES,
        "streaming": {"chunk_frames": chunk_frames, "subsampling": 4, "output_frames_per_chunk": chunk_frames // 4,
                      "lookahead_frames": 0, "frame_shift_ms": 10.0},
        "inputs": {"chunk": {"shape": ["B", chunk_frames, 80], "dtype": "float32"}},
        "states": states,
        "outputs": outputs,
        "vocab_size": vocab, "blank_id": BLANK_ID, "token_kind": "char",
        "provenance": {"exp_dir": None, "recipe": None, "mlflow_run_id": None, "dev_wer": None,
                       "created": "2024-01-01T00:00:00", "ekd_compress_version": "0.1.0"},
        "verification": {"max_abs_logprob_diff": 0.0, "transcripts_identical": True, "utterances": 0},
        "int8": None, "trt": None,
    }


def write_tokens(path: Path, tokens: list[str]) -> None:
    path.write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))


def _export(model, out: Path, name: str, kind: str, arch: str, members=None) -> Path:
    """Write model.onnx, tokens.txt, bundle.json (+ torch_state.pt) for a streaming torch model.

    Uses the export package (export/onnx_export.py, ekd_compress/contract/bundle.py) when present, so the tests
    run against the real exporter; otherwise an equivalent torch.onnx.export call."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    try:
        from ekd_compress.contract.bundle import write_bundle
        from ekd_compress.export.onnx_export import export_streaming_onnx
    except ImportError:
        write_bundle = export_streaming_onnx = None
    if export_streaming_onnx is not None:
        spec = export_streaming_onnx(model, out / "model.onnx")
        st = spec["states"]
    else:
        names = [n for n, _ in model.state_spec()]

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, chunk, *states):
                lp, new = self.m.forward_chunk(chunk, list(states))
                return (lp, *new)

        states = model.initial_state(2)
        dyn = {"chunk": {0: "B"}, "log_probs": {0: "B"}}
        for n, shape in model.state_spec():
            dyn[n] = dyn[f"{n}_out"] = {list(shape).index("B"): "B"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Wrapper(model), (torch.zeros(2, model.window_frames, 80), *states),
                              str(out / "model.onnx"), dynamo=False, opset_version=17,
                              input_names=["chunk", *names],
                              output_names=["log_probs", *[f"{n}_out" for n in names]], dynamic_axes=dyn)
        dtypes = {torch.float32: "float32", torch.int64: "int64"}
        st = [{"name": n, "shape": list(shape), "dtype": dtypes[t.dtype]}
              for (n, shape), t in zip(model.state_spec(), states)]
    write_tokens(out / "tokens.txt", CHARS)
    meta = bundle_json(name, st, len(CHARS), model.chunk_frames, sum(p.numel() for p in model.parameters()), arch)
    meta["model"].update(kind=kind, members=members)
    if export_streaming_onnx is not None:  # the window (chunk + lookahead) the exporter wrote
        meta["inputs"] = spec["inputs"]
        meta["streaming"]["lookahead_frames"] = spec["streaming"]["lookahead_frames"]
    if write_bundle is not None:
        write_bundle(out, meta)
    else:
        (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    torch.save(model.state_dict(), out / "torch_state.pt")  # tests compare against the torch forward
    return out


def build_tiny(arch: str, seed: int = 0):
    import torch

    from ekd_compress.models import build_model

    torch.manual_seed(seed)
    params = {"gru": dict(hidden=32, layers=1), "lstm": dict(hidden=32, layers=1),
              "transformer": dict(hidden=32, layers=1, heads=2, ff_mult=2),
              "tdnn": dict(hidden=32, layers=4, lookahead=3)}[arch]  # a TDNN with 120 ms of lookahead
    return build_model(arch, 80, len(CHARS), **params).eval()


def build_tiny_ensemble():
    from ekd_compress.ensemble.fusion import FusedEnsemble

    return FusedEnsemble([build_tiny("gru", 1), build_tiny("lstm", 2), build_tiny("transformer", 3)]).eval()


def make_gru_bundle(out: Path, seed: int = 0) -> Path:
    """An untrained 1-layer GRU student, hidden 32."""
    return _export(build_tiny("gru", seed), out, "tiny-gru", "student", "gru")


def make_lookahead_bundle(out: Path) -> Path:
    """An untrained 4-layer TDNN, hidden 32, that sees 3 output frames (12 input frames) ahead."""
    return _export(build_tiny("tdnn"), out, "tiny-tdnn-lookahead", "student", "tdnn")


def make_ensemble_bundle(out: Path) -> Path:
    """An untrained GRU + LSTM + chunked-transformer ensemble in one graph (states m0.*, m1.*, m2.*;
    the transformer's `count` state is int64)."""
    return _export(build_tiny_ensemble(), out, "tiny-ensemble", "ensemble", "ensemble",
                   members=["gru", "lstm", "transformer"])


def make_energy_bundle(out: Path, chunk_frames: int = 32) -> Path:
    """ONNX graph: log_probs from loudness (see module docstring); states frontend_cache, count."""
    import onnx
    from onnx import TensorProto, helper

    V = len(CHARS)
    W = np.zeros(V, np.float32)
    b = np.full(V, -100.0, np.float32)
    W[0], b[0] = 0.0, 0.0  # blank
    W[2], b[2] = 1.0, 0.0  # "a": e
    W[3], b[3] = 2.0, -10.0  # "b": 2e - 10 (beats "a" above 10)
    W, b = W * 5, b * 5  # peakier posteriors
    n_out = chunk_frames // 4
    nodes = [
        helper.make_node("ReduceMean", ["chunk"], ["e"], axes=[2], keepdims=0),  # (B, T)
        helper.make_node("Reshape", ["e", "shape"], ["e4"]),  # (B, T/4, 4)
        helper.make_node("ReduceMean", ["e4"], ["e_out"], axes=[2], keepdims=1),  # (B, T/4, 1)
        helper.make_node("Mul", ["e_out", "W"], ["wx"]),  # (B, T/4, V)
        helper.make_node("Add", ["wx", "b"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
        helper.make_node("Slice", ["chunk", "starts", "ends", "axes"], ["frontend_cache_out"]),
        helper.make_node("Add", ["count", "one"], ["count_out"]),
    ]
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [3], [0, n_out, 4]),
        helper.make_tensor("W", TensorProto.FLOAT, [V], W.tolist()),
        helper.make_tensor("b", TensorProto.FLOAT, [V], b.tolist()),
        helper.make_tensor("starts", TensorProto.INT64, [1], [chunk_frames - 4]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [chunk_frames]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
    ]
    graph = helper.make_graph(
        nodes, "energy", [
            helper.make_tensor_value_info("chunk", TensorProto.FLOAT, ["B", chunk_frames, 80]),
            helper.make_tensor_value_info("frontend_cache", TensorProto.FLOAT, ["B", 4, 80]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["B"]),
        ], [
            helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["B", n_out, V]),
            helper.make_tensor_value_info("frontend_cache_out", TensorProto.FLOAT, ["B", 4, 80]),
            helper.make_tensor_value_info("count_out", TensorProto.INT64, ["B"]),
        ], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    write_tokens(out / "tokens.txt", CHARS)
    st = [{"name": "frontend_cache", "shape": ["B", 4, 80], "dtype": "float32"},
          {"name": "count", "shape": ["B"], "dtype": "int64"}]
    (out / "bundle.json").write_text(json.dumps(bundle_json("energy", st, V, chunk_frames, 0, "energy"), indent=2))
    return out


def make_heavy_bundle(out: Path, chunk_frames: int = 16, width: int = 1024, repeats: int = 64) -> Path:
    """The energy bundle (same transcripts) plus dead weight: every chunk also runs `repeats`
    (B, chunk_frames, width) x (width, width) products, added to the logits times zero, so a
    stream costs about 2 * chunk_frames * width^2 * repeats FLOPs per chunk (2.1 GFLOP at the
    defaults) and real time breaks at a few streams on any CPU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    make_energy_bundle(out, chunk_frames)
    model = onnx.load(str(out / "model.onnx"))
    g = model.graph
    rng = np.random.default_rng(0)
    g.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((80, width)) / 9).astype(np.float32), "heavy_in"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32), "heavy_w"),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ])
    logits = next(n for n in g.node if n.op_type == "Add" and n.output[0] == "logits")
    logits.output[0] = "logits_light"
    nodes = [helper.make_node("MatMul", ["chunk", "heavy_in"], ["h0"])]  # (B, T, width)
    for i in range(repeats):
        nodes += [helper.make_node("MatMul", [f"h{i}", "heavy_w"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("ReduceMean", [f"h{repeats}"], ["hm"], axes=[1, 2], keepdims=1),  # (B, 1, 1)
              helper.make_node("Mul", ["hm", "zero"], ["hz"]),
              helper.make_node("Add", ["logits_light", "hz"], ["logits"])]
    at = list(g.node).index(logits) + 1
    for k, node in enumerate(nodes):
        g.node.insert(at + k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    meta = json.loads((out / "bundle.json").read_text())
    meta["model"].update(name="heavy", flops_per_audio_second=2.0 * chunk_frames * width * width * repeats
                         / (chunk_frames * 0.01))
    (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    return out


# ----------------------------------------------------------------------------- audio helpers
def tone(seconds: float, amp: float = 0.3, sr: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def silence(seconds: float, sr: int = 16000) -> np.ndarray:
    return np.zeros(int(round(seconds * sr)), np.float32)


def noise(seconds: float, amp: float = 0.1, sr: int = 16000, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


def to_pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def write_wav(path: Path, x: np.ndarray, sr: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(to_pcm16(x))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
