"""FLOPs per second of audio of a streaming model, counted on its `forward_chunk` path.

What is counted: the matrix products, at 2 FLOPs per multiply-add (the usual convention,
so a matrix-vector product of an (m, n) weight is 2·m·n FLOPs):

    nn.Linear                     2 · rows · in · out
    nn.Conv1d                     2 · B · out_len · out_ch · (in_ch / groups) · kernel
    nn.GRU / nn.LSTM / nn.RNN     per step and layer 2 · gates · hidden · (layer_in + hidden),
                                  gates = 3 (GRU), 4 (LSTM), 1 (RNN)
    ChunkAttention (transformer)  its q / kv / proj Linears (above) plus the two attention
                                  products, scores = q·kᵀ and scores·v: 2 · 2 · B · C · W · dim

Not counted: biases, norms, activations, softmax, fusion, feature extraction (fbank): a few
per cent of the products at these sizes, and not matrix work a BLAS kernel speeds up. This is
what the model must compute at the least, so FLOPs / (the machine's matmul FLOP/s) is the
RTF floor that `ekd_compress.serve.bench` compares measured RTFs against.

The count is for batch 1 in the steady state: `forward_chunk` runs `warm_chunks` chunks from
the initial state (so every cache, e.g. a transformer's left context, is full) and the last
chunk is counted; one chunk is `chunk_frames · frame_shift_ms` of audio.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ekd_compress.models.base import window_frames

_GATES = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}


@dataclass
class FlopCount:
    """Steady-state streaming FLOPs of one model (batch 1)."""
    flops_per_chunk: float          # FLOPs of one forward_chunk call
    chunk_seconds: float            # audio per chunk, s
    by_module: dict[str, float] = field(default_factory=dict)  # module type -> FLOPs per chunk

    @property
    def flops_per_second(self) -> float:
        """FLOPs per second of audio."""
        return self.flops_per_chunk / self.chunk_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"flops_per_chunk": self.flops_per_chunk, "chunk_seconds": self.chunk_seconds,
                "flops_per_audio_second": self.flops_per_second, "by_module": dict(self.by_module)}


def _rnn_flops(module: nn.RNNBase, steps: int, batch: int) -> float:
    gates = next(g for cls, g in _GATES.items() if isinstance(module, cls))
    h = module.hidden_size
    total = 0.0
    for layer in range(module.num_layers):
        layer_in = module.input_size if layer == 0 else h * (2 if module.bidirectional else 1)
        total += 2.0 * gates * h * (layer_in + h) * steps * batch * (2 if module.bidirectional else 1)
    return total


def _module_flops(module: nn.Module, inputs: tuple, output: Any) -> float:
    """FLOPs of one call of a counted module type (0 for the others)."""
    from ekd_compress.models.transformer import ChunkAttention

    if isinstance(module, nn.Linear):
        rows = inputs[0].numel() // module.in_features
        return 2.0 * rows * module.in_features * module.out_features
    if isinstance(module, nn.Conv1d):
        out = output  # (B, out_ch, L_out)
        k = module.kernel_size[0]
        return 2.0 * out.shape[0] * out.shape[2] * module.out_channels * (module.in_channels // module.groups) * k
    if isinstance(module, nn.RNNBase):
        x = inputs[0]  # (B, N, in) when batch_first, else (N, B, in)
        steps, batch = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
        return _rnn_flops(module, steps, batch)
    if isinstance(module, ChunkAttention):
        x, kv = inputs[0], inputs[1]  # x (B, N, C, dim), kv (B, N, W, 2*dim)
        B, N, C, D = x.shape
        W = kv.shape[2]
        return 2.0 * 2.0 * B * N * C * W * D  # q·kᵀ and scores·v (its Linears are counted as Linears)
    return 0.0


def count_chunk_flops(model: nn.Module, warm_chunks: int = 4, frame_shift_ms: float = 10.0) -> FlopCount:
    """Steady-state FLOPs of `model.forward_chunk` for one stream (see the module docstring).

    Args:
        model: a streaming CTC model or a `FusedEnsemble` (forward_chunk / initial_state).
        warm_chunks: chunks run before the counted one (fills the caches).
        frame_shift_ms: feature frame shift, ms (chunk audio = chunk_frames · frame_shift_ms).

    Each call is fed the model's whole window (`window_frames`: chunk + lookahead) and counted
    per chunk of new audio.
    """
    window = window_frames(model)  # raises, naming the model, when it cannot stream
    chunk_frames = int(model.chunk_frames)
    if warm_chunks < 0:
        raise ValueError(f"warm_chunks={warm_chunks}: give 0 or more chunks to run before counting")
    counted: dict[str, float] = {}
    active = [False]

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if active[0]:
            flops = _module_flops(module, inputs, output)
            if flops:
                name = type(module).__name__
                counted[name] = counted.get(name, 0.0) + flops

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = model.initial_state(1)
            gen = torch.Generator().manual_seed(0)
            for i in range(warm_chunks + 1):
                active[0] = i == warm_chunks
                chunk = torch.randn(1, window, model.input_dim, generator=gen)
                _, state = model.forward_chunk(chunk, state)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return FlopCount(sum(counted.values()), chunk_frames * frame_shift_ms / 1000.0, counted)
