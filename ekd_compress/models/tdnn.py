"""Causal dilated TDNN (1-D CNN) streaming CTC model.

    feats (B, T, F) -> CausalStackFrontend -> (B, N, hidden), N = T // 4
      -> layers x [x + Dropout(GELU(LayerNorm(CausalConv1d_k,dilation(x))))]
      -> Linear -> (B, N, V)

Each convolution looks only backwards: output frame n sees layer inputs n - (k-1)*d .. n.
`forward` left-pads every layer with (k-1)*d zero frames; `forward_chunk` keeps the last
(k-1)*d layer inputs of the previous chunk instead, which is the same computation.
Dilations cycle through `dilations` (default 1, 2, 4, 8), so 6 layers of kernel 3 see
2 * (1+2+4+8+1+2) = 36 output frames (1.44 s) of left context.  ~0.57M parameters at the
defaults (80 bins, 30 tokens).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ekd_compress.models.base import (
    CausalStackFrontend,
    StateSpec,
    StreamingCTCModel,
    check_dropout,
    check_int,
)
from ekd_compress.models.registry import register_model


class CausalConvBlock(nn.Module):
    """Residual causal dilated convolution over (B, N, C) frames; state = last (kernel-1)*dilation inputs."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.context = (kernel - 1) * dilation  # input frames of left context
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def _branch(self, window: Tensor) -> Tensor:
        """window (B, context + N, C): left context then N frames -> residual branch (B, N, C)."""
        y = self.conv(window.transpose(1, 2))  # (B, C, context + N) -> (B, C, N)
        y = y.transpose(1, 2)  # (B, N, C)
        return self.drop(F.gelu(self.norm(y)))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> (B, N, C) with zero left context."""
        window = F.pad(x, (0, 0, self.context, 0))  # (B, context + N, C)
        return x + self._branch(window)

    def forward_chunk(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, Nc, C), cache (B, context, C) -> (B, Nc, C), new cache (B, context, C)."""
        window = torch.cat([cache, x], dim=1)  # (B, context + Nc, C)
        new_cache = window[:, -self.context:]  # last `context` frames (context >= 1 since kernel >= 2)
        return x + self._branch(window), new_cache


@register_model("tdnn")
class TDNNCTC(StreamingCTCModel):
    """Causal frontend + residual dilated causal 1-D convolutions + linear.

    State: [frontend_cache (B, 4, F), tdnn{i}_cache (B, (kernel-1)*dilation_i, hidden) for each layer i].
    """

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        hidden: int = 160,
        layers: int = 6,
        kernel: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.1,
        chunk_frames: int = 32,
    ) -> None:
        """
        Args:
            input_dim: fbank bins F.
            vocab_size: V, blank id 0 included.
            hidden: channels of every convolution.
            layers: number of residual conv blocks.
            kernel: taps per convolution (>= 2).
            dilations: dilation of block i is dilations[i % len(dilations)] (output frames).
            dropout: after the frontend and in every block (training only).
            chunk_frames: input frames per forward_chunk call (multiple of 4; 32 = 320 ms).
        """
        super().__init__(input_dim, vocab_size, chunk_frames)
        self.hidden = check_int("hidden", hidden, 1, "set hidden to a positive size, e.g. 160")
        self.layers = check_int("layers", layers, 1, "set layers to 1 or more")
        self.kernel = check_int("kernel", kernel, 2, "set kernel to 2 or more taps, e.g. 3")
        dilations = list(dilations) if isinstance(dilations, (list, tuple)) else [dilations]
        if not dilations:
            raise ValueError("dilations=[] is invalid; give at least one dilation, e.g. [1, 2, 4, 8]")
        for d in dilations:
            check_int("dilations", d, 1, f"every dilation must be an integer >= 1, got {dilations}")
        dropout = check_dropout(dropout)
        self.dilations = [dilations[i % len(dilations)] for i in range(layers)]
        self.frontend = CausalStackFrontend(input_dim, hidden, self.subsampling)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalConvBlock(hidden, kernel, d, dropout) for d in self.dilations)
        self.out = nn.Linear(hidden, vocab_size)

    @property
    def receptive_field(self) -> int:
        """Output frames of left context seen by the last layer (excluding the frontend)."""
        return sum(block.context for block in self.blocks)

    def state_spec(self) -> StateSpec:
        spec: StateSpec = [("frontend_cache", ("B", self.subsampling, self.input_dim))]
        spec += [(f"tdnn{i}_cache", ("B", block.context, self.hidden)) for i, block in enumerate(self.blocks)]
        return spec

    def logits(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> logits (B, T // 4, V), out_lengths (B,)."""
        x = self.drop(self.frontend(feats))  # (B, T//4, hidden)
        for block in self.blocks:
            x = block(x)  # (B, T//4, hidden)
        return self.out(x), self.output_lengths(lengths)

    def logits_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, chunk_frames, F), state -> logits (B, chunk_frames // 4, V), new state."""
        x, frontend_cache = self.frontend.forward_chunk(chunk, state[0])  # (B, chunk_frames//4, hidden)
        x = self.drop(x)
        new_state = [frontend_cache]
        for block, cache in zip(self.blocks, state[1:]):
            x, cache = block.forward_chunk(x, cache)  # (B, chunk_frames//4, hidden)
            new_state.append(cache)
        return self.out(x), new_state
