"""Dilated TDNN (1-D CNN) streaming CTC model, causal or with a small fixed lookahead.

    feats (B, T, F) -> CausalStackFrontend -> (B, N, hidden), N = T // 4
      -> layers x [x + Dropout(GELU(LayerNorm(Conv1d_k,dilation(x))))]
      -> Linear -> (B, N, V)

A block's convolution spans (k-1)*d output frames: `right` of them after the output frame
(lookahead) and `context` = (k-1)*d - right before it.  With `lookahead` = 0 (the default)
every block is causal.  A lookahead of L output frames (40 ms each) is spread over the blocks
from the first, each taking at most half its span, so the model's output frame n sees input up
to frame n + L; `lookahead_frames` = 4 L input frames.

`forward` pads every block with `context` zero frames on the left and `right` on the right, after
setting every input frame past an utterance's length to zero and appending 4 L more (what a
stream's zero-padded last window holds); `forward_chunk` takes a window of chunk_frames + 4 L
input frames, keeps each block's last `context` inputs before the next chunk as its cache, and
recomputes the lookahead frames in the next call.  Both give the same log-probs.  Dilations cycle through `dilations`
(default 1, 2, 4, 8), so 6 causal layers of kernel 3 see 2 * (1+2+4+8+1+2) = 36 output frames
(1.44 s) of left context.  ~0.57M parameters at the defaults (80 bins, 30 tokens).
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


class DilatedConvBlock(nn.Module):
    """Residual dilated convolution over (B, N, C) frames: `context` frames of left context (the
    streaming state) and `right` frames of lookahead (0: causal)."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float, right: int = 0) -> None:
        super().__init__()
        span = (kernel - 1) * dilation
        if not 0 <= right <= span // 2:
            raise ValueError(f"right={right} is invalid for a block spanning {span} frames; use 0..{span // 2}")
        self.right = right  # output frames of lookahead
        self.context = span - right  # input frames of left context (>= 1, since span >= 1 and right <= span // 2)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def _branch(self, window: Tensor) -> Tensor:
        """window (B, context + N + right, C) -> residual branch (B, N, C)."""
        y = self.conv(window.transpose(1, 2))  # (B, C, context + N + right) -> (B, C, N)
        y = y.transpose(1, 2)  # (B, N, C)
        return self.drop(F.gelu(self.norm(y)))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, C) -> (B, N, C) with zero frames before the first and after the last."""
        window = F.pad(x, (0, 0, self.context, self.right))  # (B, context + N + right, C)
        return x + self._branch(window)

    def forward_chunk(self, x: Tensor, cache: Tensor, ahead: int = 0) -> tuple[Tensor, Tensor]:
        """x (B, Nc + ahead, C): Nc new frames then `ahead` (>= right) of lookahead, cache
        (B, context, C) -> (B, Nc + ahead - right, C), new cache (B, context, C): the `context`
        inputs before the next call's first new frame."""
        window = torch.cat([cache, x], dim=1)  # (B, context + Nc + ahead, C)
        n_new = x.shape[1] - ahead
        new_cache = window[:, n_new:n_new + self.context]
        out = self._branch(window)  # (B, Nc + ahead - right, C)
        return x[:, :out.shape[1]] + out, new_cache


def spread_lookahead(lookahead: int, spans: Sequence[int]) -> list[int]:
    """Output frames of lookahead per block: from the first block, each at most half its span.
    Raises ValueError if the blocks cannot hold `lookahead` frames."""
    rights, left = [], lookahead
    for span in spans:
        rights.append(min(left, span // 2))
        left -= rights[-1]
    if left:
        raise ValueError(f"lookahead={lookahead} is more than these blocks can look ahead "
                         f"({sum(s // 2 for s in spans)} output frames, half of each block's span); "
                         "lower the lookahead or add layers")
    return rights


@register_model("tdnn")
class TDNNCTC(StreamingCTCModel):
    """Causal frontend + residual dilated 1-D convolutions (causal, or with `lookahead` output
    frames of right context spread over the first blocks) + linear.

    State: [frontend_cache (B, 4, F), tdnn{i}_cache (B, (kernel-1)*dilation_i - right_i, hidden) for each
    layer i], right_i being block i's lookahead in output frames (0 when causal).
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
        lookahead: int = 0,
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
            chunk_frames: input frames consumed per forward_chunk call (multiple of 4; 32 = 320 ms).
            lookahead: output frames (40 ms each) the model may see ahead of each output frame
                (0: causal); adds 4 * lookahead input frames to every forward_chunk window.
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
        self.lookahead = check_int("lookahead", lookahead, 0, "set lookahead to 0 (causal) or a few output frames, e.g. 4")
        rights = spread_lookahead(self.lookahead, [(kernel - 1) * d for d in self.dilations])
        self.lookahead_frames = self.lookahead * self.subsampling
        self.blocks = nn.ModuleList(DilatedConvBlock(hidden, kernel, d, dropout, r) for d, r in zip(self.dilations, rights))
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
        """feats (B, T, F) normalised, lengths (B,) -> logits (B, T // 4, V), out_lengths (B,)."""
        n_out = feats.shape[1] // self.subsampling
        feats = self.pad_lookahead(feats, lengths)  # (B, T + 4L, F)
        x = self.drop(self.frontend(feats))  # (B, (T + 4L)//4, hidden)
        for block in self.blocks:
            x = block(x)  # (B, (T + 4L)//4, hidden)
        return self.out(x[:, :n_out]), self.output_lengths(lengths)

    def logits_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, window_frames, F) normalised, state -> logits (B, chunk_frames // 4, V), new state."""
        x, frontend_cache = self.frontend.forward_chunk(chunk, state[0], consumed=self.chunk_frames)
        x = self.drop(x)  # (B, (chunk_frames + 4L) // 4, hidden)
        new_state = [frontend_cache]
        ahead = self.lookahead
        for block, cache in zip(self.blocks, state[1:]):
            x, cache = block.forward_chunk(x, cache, ahead)  # (B, chunk_frames//4 + ahead - right, hidden)
            ahead -= block.right
            new_state.append(cache)
        return self.out(x), new_state
