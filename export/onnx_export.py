"""Streaming ONNX export: `forward_chunk` with the model state as explicit graph inputs/outputs.

Graph I/O (one model, or a FusedEnsemble: members and fusion in one graph):

    inputs   chunk (B, window_frames, F) float32 (chunk_frames + the model's lookahead_frames),
             then every state of `model.state_spec()`
             in order, under its own name (ensemble states are named `m{i}.NAME`)
    outputs  log_probs (B, chunk_frames // subsampling, V) float32 (log_softmax over V),
             then NAME + "_out" per state: the state to feed with the next chunk

B is a dynamic axis (at its position in each state shape, marked "B" in `state_spec`;
RNN states have it second). The window length is fixed at `window_frames`: every
architecture here is exported for the chunk size it was trained with (the transformer
attends within whole chunks, so its chunk length is part of the model), and a runtime
zero-pads the last window of an utterance. The initial state is zeros of the documented
shapes and dtypes (the transformer's `count` is int64).

Exported with the TorchScript exporter (`dynamo=False`, opset 17) from a module in eval
mode; onnxscript (needed by the dynamo exporter) is not a dependency.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ekd_compress.contract.bundle import DTYPES
from ekd_compress.models.base import window_frames

OPSET = 17

_DTYPE_NAMES = {getattr(torch, name): name for name in DTYPES}  # torch dtype -> its bundle.json name


class StreamingChunkModule(nn.Module):
    """`forward_chunk` with the state as separate positional inputs and outputs (traceable)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, chunk: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """chunk (B, window_frames, F), *state -> (log_probs (B, C_out, V), *new_state)."""
        log_probs, new_state = self.model.forward_chunk(chunk, list(state))
        return (log_probs, *new_state)


def io_spec(model: nn.Module) -> dict[str, Any]:
    """The bundle's `inputs`, `states`, `outputs` and `streaming` entries for a streaming model."""
    spec = model.state_spec()
    initial = model.initial_state(1)
    if len(initial) != len(spec):
        raise ValueError(f"{type(model).__name__}.initial_state gives {len(initial)} tensors but state_spec "
                         f"names {len(spec)}; fix the model's state_spec")
    states = []
    for (name, shape), tensor in zip(spec, initial):
        shape = list(shape)
        if shape.count("B") != 1:
            raise ValueError(f"state {name!r} has shape {shape}; exactly one axis must be the batch marker \"B\"")
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"state {name!r} has dtype {tensor.dtype}; export supports {list(_DTYPE_NAMES.values())}")
        states.append({"name": name, "shape": shape, "dtype": _DTYPE_NAMES[tensor.dtype]})
    chunk_frames, subsampling = int(model.chunk_frames), int(model.subsampling)
    lookahead = window_frames(model) - chunk_frames
    c_out = chunk_frames // subsampling
    outputs: dict[str, Any] = {"log_probs": {"shape": ["B", c_out, "V"], "dtype": "float32"}}
    outputs.update({f"{s['name']}_out": {"shape": s["shape"], "dtype": s["dtype"]} for s in states})
    return {
        "inputs": {"chunk": {"shape": ["B", chunk_frames + lookahead, int(model.input_dim)], "dtype": "float32"}},
        "states": states,
        "outputs": outputs,
        "streaming": {"chunk_frames": chunk_frames, "subsampling": subsampling,
                      "output_frames_per_chunk": c_out, "lookahead_frames": lookahead},
    }


def _check_streamable(model: nn.Module) -> None:
    for attr in ("forward_chunk", "state_spec", "initial_state"):
        if not callable(getattr(model, attr, None)):
            raise ValueError(f"{type(model).__name__} has no {attr}(); only streaming CTC models "
                             "(ekd_compress.models) and FusedEnsemble can be exported")
    if getattr(model, "chunk_frames", None) is None:
        raise ValueError("the model has no fixed chunk_frames (ensemble members with different chunk sizes?); "
                         "rebuild the members with one chunk_frames")


@torch.no_grad()
def export_streaming_onnx(model: nn.Module, path: Path | str, metadata: dict[str, Any] | None = None,
                          opset: int = OPSET) -> dict[str, Any]:
    """Write `model.forward_chunk` as a streaming ONNX graph to `path`.

    Args:
        model: a StreamingCTCModel or FusedEnsemble (exported in eval mode; its mode is restored).
        path: the .onnx file to write.
        metadata: extra ONNX metadata_props; values that are not strings are stored as JSON.
        opset: ONNX opset (17).

    Returns:
        `io_spec(model)`: the inputs/states/outputs/streaming description that the graph keeps.
    """
    import onnx

    _check_streamable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = io_spec(model)
    names = [s["name"] for s in spec["states"]]
    dynamic_axes: dict[str, dict[int, str]] = {"chunk": {0: "B"}, "log_probs": {0: "B"}}
    for s in spec["states"]:
        axis = s["shape"].index("B")
        dynamic_axes[s["name"]] = {axis: "B"}
        dynamic_axes[f"{s['name']}_out"] = {axis: "B"}
    was_training = model.training
    model.eval()
    try:
        # a batch of 2 while tracing keeps B symbolic; zeros are a valid state
        state = model.initial_state(2)
        chunk = torch.zeros(2, window_frames(model), model.input_dim)
        _, new_state = model.forward_chunk(chunk, state)
        for s, before, after in zip(spec["states"], state, new_state):
            if before.shape != after.shape or before.dtype != after.dtype:
                raise ValueError(f"forward_chunk changes state {s['name']!r} from {tuple(before.shape)} {before.dtype} "
                                 f"to {tuple(after.shape)} {after.dtype}; streaming state must keep its shape")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
            torch.onnx.export(
                StreamingChunkModule(model), (chunk, *state), str(path),
                input_names=["chunk", *names], output_names=["log_probs", *[f"{n}_out" for n in names]],
                dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    set_metadata(proto, metadata or {})
    proto.doc_string = "ekd-compress streaming CTC model: chunk + states -> log_probs + next states (see bundle.json)"
    onnx.save(proto, str(path))
    return spec


def set_metadata(proto, metadata: dict[str, Any]) -> None:
    """Set ONNX metadata_props on a ModelProto in place (non-string values as JSON)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False)
        if key in existing:
            existing[key].value = text
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, text


def copy_metadata(src: Path | str, dst: Path | str) -> None:
    """Copy the metadata_props of the ONNX file `src` into `dst` (e.g. fp32 -> int8 model)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    set_metadata(proto, meta)
    onnx.save(proto, str(dst))


def read_metadata(path: Path | str) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded."""
    import onnx

    out: dict[str, Any] = {}
    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
