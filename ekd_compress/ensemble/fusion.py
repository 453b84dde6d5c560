"""Probability-domain fusion of CTC ensemble members, and an ensemble that acts as one model.

The teacher of essence KD is the (weighted) average of its members' frame posteriors:

    p_ens(v | x, t) = Σ_i w_i · p_i(v | x, t),    w_i ≥ 0, Σ_i w_i = 1

Full distributions are fused first; temperature and top-k selection come after
(`ekd_compress.ensemble.essence`). Fusion is only meaningful when the members' spikes
coincide (train them guided, see `ekd_compress.losses.guide`, and check with
`ekd_compress.ensemble.coincidence`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from ekd_compress.models.base import window_frames


def normalise_weights(weights: Optional[Sequence[float]], n: int) -> list[float]:
    """`n` member weights -> the same divided by their sum (None -> uniform 1/n)."""
    if n < 1:
        raise ValueError("an ensemble needs at least one member; pass a non-empty list")
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} fusion weights for {n} members; give one weight per member "
                         "(or none for a uniform average)")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"fusion weights {weights} must be finite and >= 0; "
                         "use e.g. [1, 1, 2] to count the third member twice")
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"fusion weights {weights} are all zero; give at least one member a positive weight")
    return [w / total for w in weights]


def fuse_posteriors(log_probs: Sequence[Tensor], weights: Optional[Sequence[float]] = None) -> Tensor:
    """Members' log-probabilities, each (B, T, V) -> log of their weighted probability average (B, T, V).

    log p_ens = logsumexp_i (log w_i + log p_i), computed in float32 at least; weights are
    normalised to sum 1 (None: uniform). A zero-weight member contributes nothing.
    """
    log_probs = list(log_probs)
    w = normalise_weights(weights, len(log_probs))
    shapes = [tuple(int(d) for d in lp.shape) for lp in log_probs]  # ints, also while tracing
    if any(len(s) != 3 for s in shapes) or len(set(shapes)) != 1:
        raise ValueError(
            f"members' log_probs have shapes {shapes}; fusion needs equal (batch, frames, vocab): "
            "use members with the same subsampling and token table, fed the same batch"
        )
    dtype = torch.promote_types(log_probs[0].dtype, torch.float32)
    stacked = torch.stack([lp.to(dtype) for lp in log_probs])  # (N, B, T, V)
    log_w = torch.tensor([math.log(x) if x > 0 else -math.inf for x in w], dtype=dtype, device=stacked.device)
    return torch.logsumexp(stacked + log_w.view(-1, 1, 1, 1), dim=0)


def _same(members: Sequence[nn.Module], attr: str, fix: str) -> Optional[int]:
    values = [getattr(m, attr, None) for m in members]
    if len(set(values)) != 1:
        raise ValueError(f"ensemble members differ in {attr}: {values}; {fix}")
    return values[0]


class FusedEnsemble(nn.Module):
    """N streaming CTC models fused in the probability domain, with the interface of one model.

    forward(feats, lengths) -> (fused log_probs (B, T', V), out_lengths (B,))
    initial_state / forward_chunk / state_spec: the members' states concatenated in member
    order (state names prefixed `m{i}.`), so the ensemble can be exported and streamed
    like a single model. Members must share `subsampling` and vocab; streaming also needs
equal `chunk_frames` (`chunk_frames` is None, and the streaming methods raise, otherwise).
    The ensemble's window is its longest member's (the largest `lookahead_frames`); each member
    gets the first `window_frames` of its own.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        members = list(members)
        self.weights = normalise_weights(weights, len(members))
        self.members = nn.ModuleList(members)
        self.subsampling = _same(members, "subsampling", "fuse only models with the same frame rate")
        chunks = [getattr(m, "chunk_frames", None) for m in members]
        # offline fusion works with any chunk sizes; streaming (forward_chunk) needs them equal
        self.member_chunk_frames = chunks
        self.chunk_frames = chunks[0] if len(set(chunks)) == 1 else None
        self.lookahead_frames = max(int(getattr(m, "lookahead_frames", 0)) for m in members)
        self.vocab_size = _same(members, "vocab_size", "train every member with the same tokens.txt")
        self.input_dim = _same(members, "input_dim", "use the same feature config for every member")

    @property
    def window_frames(self) -> int:
        """Input frames fed per `forward_chunk` call: the chunk, then the longest member lookahead."""
        self._check_streamable()
        return self.chunk_frames + self.lookahead_frames

    @property
    def chunk_out_frames(self) -> int:
        """Output frames produced per `forward_chunk` call."""
        self._check_streamable()
        return self.chunk_frames // self.subsampling

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Input frame counts (B,) -> output frame counts (B,) (the members', which agree)."""
        return torch.div(lengths, self.subsampling, rounding_mode="floor")

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) int64 -> fused log_probs (B, T', V) float32, out_lengths (B,) int64."""
        outs = [m(feats, lengths) for m in self.members]
        out_lengths = outs[0][1]
        for i, (lp, ol) in enumerate(outs[1:], start=1):
            if lp.shape[:2] != outs[0][0].shape[:2] or not torch.equal(ol, out_lengths):
                raise ValueError(
                    f"member {i} emits {tuple(lp.shape[:2])} frames (lengths {ol.tolist()}) but member 0 emits "
                    f"{tuple(outs[0][0].shape[:2])} (lengths {out_lengths.tolist()}); members must share "
                    "their subsampling and frame arithmetic to be fused"
                )
        return fuse_posteriors([lp for lp, _ in outs], self.weights), out_lengths

    # --------------------------------------------------------------------------- streaming
    def _check_streamable(self) -> None:
        if self.chunk_frames is None:
            raise ValueError(
                f"ensemble members have chunk_frames {self.member_chunk_frames}; streaming the ensemble needs "
                "them equal: rebuild the members with one chunk_frames (a multiple of the subsampling)"
            )

    def _state_counts(self) -> list[int]:
        return [len(m.state_spec()) for m in self.members]

    def state_spec(self) -> list[tuple[str, tuple]]:
        """Every member's (name, shape) state entries in member order, names prefixed `m{i}.`."""
        self._check_streamable()
        return [(f"m{i}.{name}", tuple(shape)) for i, m in enumerate(self.members) for name, shape in m.state_spec()]

    def initial_state(self, batch_size: int) -> list[Tensor]:
        """The members' initial states for `batch_size` streams, flattened in `state_spec` order."""
        self._check_streamable()
        return [s for m in self.members for s in m.initial_state(batch_size)]

    def split_state(self, state: Sequence[Tensor]) -> list[list[Tensor]]:
        """Flat ensemble state -> one list per member."""
        counts = self._state_counts()
        if len(state) != sum(counts):
            raise ValueError(f"ensemble state has {len(state)} tensors but its members expect {sum(counts)} "
                             f"({counts} per member); start from ensemble.initial_state(batch_size)")
        out, start = [], 0
        for n in counts:
            out.append(list(state[start:start + n]))
            start += n
        return out

    def forward_chunk(self, chunk: Tensor, state: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """chunk (B, window_frames, F), flat state ->
        fused log_probs (B, chunk_frames // subsampling, V), new flat state."""
        if chunk.dim() != 3 or chunk.shape[1] != self.window_frames:
            raise ValueError(f"ensemble chunk of shape {tuple(chunk.shape)}: pass (batch, {self.window_frames}, "
                             f"{self.input_dim}) ({self.chunk_frames} new frames + {self.lookahead_frames} of the "
                             "longest member lookahead); each member is given its own part of it")
        log_probs, new_state = [], []
        for m, s in zip(self.members, self.split_state(state)):
            lp, ns = m.forward_chunk(chunk[:, :window_frames(m)], s)
            log_probs.append(lp)
            new_state.extend(ns)
        return fuse_posteriors(log_probs, self.weights), new_state
