"""Chunked-attention transformer streaming CTC model.

    feats (B, T, F) -> CausalStackFrontend -> (B, N, hidden), N = T // 4
      -> layers x pre-LN [self-attention over a chunk window, feed-forward] -> LayerNorm -> Linear -> (B, N, V)

Output frames are grouped into chunks of C = chunk_frames // 4.  A query in chunk n attends
to every frame of chunks n - left_chunks .. n: its own chunk (including later frames of it)
plus a fixed left context of L = left_chunks * C frames.  So the model waits for a whole chunk
(latency chunk_frames * 10 ms) but never looks past it, and streaming is exact:

  forward        pads the keys/values with L zero frames on the left and cuts one window of
                 W = L + C frames per chunk (unfold); padded and out-of-utterance keys are masked.
  forward_chunk  keeps the last L key/value frames of every layer in a fixed-size cache and a
                 (B,) count of output frames seen, which masks the zero cache of the first chunks.

Positions are a learned per-head bias on the relative offset (query - key) inside the window,
identical in both paths; the causal frontend adds local order.  ~0.88M parameters at the
defaults (80 bins, 30 tokens).
"""
from __future__ import annotations

import math

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


class ChunkAttention(nn.Module):
    """Multi-head attention of chunk queries over their windows, with relative-offset bias."""

    def __init__(self, dim: int, heads: int, chunk: int, left: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        window = left + chunk
        # offset (query - key) of query c in a chunk and key w in its window ranges over
        # [-(chunk-1), left + chunk - 1]; shift it to a table index in [0, window + chunk - 2].
        c = torch.arange(chunk)[:, None]
        w = torch.arange(window)[None, :]
        self.register_buffer("rel_index", c - w + left + chunk - 1, persistent=False)  # (C, W)
        self.rel_bias = nn.Parameter(torch.zeros(heads, window + chunk - 1))

    def forward(self, x: Tensor, kv: Tensor, key_valid: Tensor) -> Tensor:
        """x (B, N, C, dim) queries' input per chunk, kv (B, N, W, 2*dim) from `self.kv`,
        key_valid (B, N, W) bool -> (B, N, C, dim)."""
        B, N, C, D = x.shape
        W = kv.shape[2]
        H, Dh = self.heads, self.head_dim
        q = self.q(x).reshape(B, N, C, H, Dh).permute(0, 3, 1, 2, 4)  # (B, H, N, C, Dh)
        kv = kv.reshape(B, N, W, 2, H, Dh).permute(3, 0, 4, 1, 2, 5)  # (2, B, H, N, W, Dh)
        k, v = kv[0], kv[1]  # (B, H, N, W, Dh) each
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)  # (B, H, N, C, W)
        bias = self.rel_bias[:, self.rel_index]  # (H, C, W)
        scores = scores + bias[None, :, None]  # (1, H, 1, C, W) broadcast
        mask = ~key_valid[:, None, :, None, :]  # (B, 1, N, 1, W)
        # a finite minimum (not -inf) keeps fully masked rows of padded queries NaN-free
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        y = scores.softmax(dim=-1) @ v  # (B, H, N, C, Dh)
        y = y.permute(0, 2, 3, 1, 4).reshape(B, N, C, D)  # (B, N, C, H*Dh)
        return self.proj(y)


class ChunkTransformerLayer(nn.Module):
    """Pre-LN block: x + Attn(LN(x)); x + FF(LN(x)).  Streaming cache: the last `left` key/value frames."""

    def __init__(self, dim: int, heads: int, ff_dim: int, chunk: int, left: int, dropout: float) -> None:
        super().__init__()
        self.chunk, self.left = chunk, left
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = ChunkAttention(dim, heads, chunk, left)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        """x (B, N*C, dim) whole padded utterances, key_valid (B, N, W) -> (B, N*C, dim)."""
        B, T, D = x.shape
        C, L = self.chunk, self.left
        h = self.norm_attn(x)
        kv = F.pad(self.attn.kv(h), (0, 0, L, 0))  # (B, L + N*C, 2D): zero left context
        kv = kv.unfold(1, L + C, C).transpose(2, 3)  # (B, N, 2D, W) -> (B, N, W, 2D): one window per chunk
        y = self.attn(h.reshape(B, T // C, C, D), kv, key_valid)  # (B, N, C, D)
        x = x + self.drop(y.reshape(B, T, D))  # (B, N*C, D)
        return x + self.drop(self.ff(self.norm_ff(x)))

    def forward_chunk(self, x: Tensor, cache: Tensor, key_valid: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, dim), cache (B, L, 2*dim), key_valid (B, W) -> (B, C, dim), new cache (B, L, 2*dim)."""
        h = self.norm_attn(x)
        kv = torch.cat([cache, self.attn.kv(h)], dim=1)  # (B, W, 2D)
        y = self.attn(h.unsqueeze(1), kv.unsqueeze(1), key_valid.unsqueeze(1))  # (B, 1, C, D)
        x = x + self.drop(y.squeeze(1))  # (B, C, D)
        x = x + self.drop(self.ff(self.norm_ff(x)))
        return x, kv[:, kv.shape[1] - self.left:]  # last L frames (empty when left_chunks=0)


@register_model("transformer")
class ChunkTransformerCTC(StreamingCTCModel):
    """Causal frontend + chunked-attention transformer encoder + linear.

    State: [frontend_cache (B, 4, F),
            attn_cache (layers, B, left_chunks * C, 2 * hidden): keys and values of the last L frames,
            count (B,) int64: output frames processed so far].
    """

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        hidden: int = 128,
        layers: int = 4,
        heads: int = 4,
        ff_mult: int = 4,
        left_chunks: int = 2,
        dropout: float = 0.1,
        chunk_frames: int = 32,
    ) -> None:
        """
        Args:
            input_dim: fbank bins F.
            vocab_size: V, blank id 0 included.
            hidden: model width (divisible by heads).
            layers: transformer blocks.
            heads: attention heads.
            ff_mult: feed-forward width = ff_mult * hidden.
            left_chunks: chunks of left context each chunk attends to (0 = within-chunk only).
            dropout: residual, feed-forward and frontend dropout (training only).
            chunk_frames: input frames per chunk (multiple of 4; 32 = 8 output frames = 320 ms).
                Also the attention chunk, so training and streaming use the same one.
        """
        super().__init__(input_dim, vocab_size, chunk_frames)
        self.hidden = check_int("hidden", hidden, 1, "set hidden to a positive size, e.g. 128")
        self.layers = check_int("layers", layers, 1, "set layers to 1 or more")
        check_int("heads", heads, 1, "set heads to 1 or more")
        if hidden % heads != 0:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}; pick e.g. heads=4 with hidden=128")
        check_int("ff_mult", ff_mult, 1, "set ff_mult to 1 or more, e.g. 4")
        self.left_chunks = check_int("left_chunks", left_chunks, 0, "set left_chunks to 0 or more, e.g. 2")
        dropout = check_dropout(dropout)
        self.chunk = self.chunk_out_frames  # C output frames per attention chunk
        self.cache_len = left_chunks * self.chunk  # L
        self.frontend = CausalStackFrontend(input_dim, hidden, self.subsampling)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ChunkTransformerLayer(hidden, heads, ff_mult * hidden, self.chunk, self.cache_len, dropout)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def state_spec(self) -> StateSpec:
        return [
            ("frontend_cache", ("B", self.subsampling, self.input_dim)),
            ("attn_cache", (self.layers, "B", self.cache_len, 2 * self.hidden)),
            ("count", ("B",)),
        ]

    def initial_state(self, batch_size: int) -> list[Tensor]:
        """Zeros; `count` is int64 (it masks the cache until the cache holds real frames)."""
        frontend_cache, attn_cache, count = super().initial_state(batch_size)
        return [frontend_cache, attn_cache, count.long()]

    def logits(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> logits (B, T // 4, V), out_lengths (B,)."""
        out_lengths = self.output_lengths(lengths)
        x = self.drop(self.frontend(feats))  # (B, N0, hidden), N0 = T // 4
        B, N0, _ = x.shape
        C, L = self.chunk, self.cache_len
        n_chunks = -(-N0 // C)
        x = F.pad(x, (0, 0, 0, n_chunks * C - N0))  # (B, N*C, hidden): pad to whole chunks
        # absolute output frame of every key slot in the left-padded sequence: -L .. N*C - 1
        pos = torch.arange(-L, n_chunks * C, device=x.device)  # (L + N*C,)
        valid = (pos[None, :] >= 0) & (pos[None, :] < out_lengths[:, None].to(x.device))  # (B, L + N*C)
        key_valid = valid.unfold(1, L + C, C)  # (B, N, W)
        for block in self.blocks:
            x = block(x, key_valid)  # (B, N*C, hidden)
        return self.out(self.norm(x[:, :N0])), out_lengths

    def logits_chunk(self, chunk: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, chunk_frames, F), [frontend_cache, attn_cache, count] ->
        logits (B, C, V), new state."""
        frontend_cache, attn_cache, count = state
        x, frontend_cache = self.frontend.forward_chunk(chunk, frontend_cache)  # (B, C, hidden)
        x = self.drop(x)
        C, L = self.chunk, self.cache_len
        # absolute output frame of each window slot: count - L .. count + C - 1; the cache slots
        # before the utterance start (negative) hold zeros and are masked
        pos = count[:, None] - L + torch.arange(L + C, device=x.device)[None, :]  # (B, W)
        key_valid = pos >= 0  # (B, W)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block.forward_chunk(x, attn_cache[i], key_valid)  # (B, C, hidden), (B, L, 2*hidden)
            new_caches.append(cache)
        new_state = [frontend_cache, torch.stack(new_caches, dim=0), count + C]  # attn_cache (layers, B, L, 2*hidden)
        return self.out(self.norm(x)), new_state
