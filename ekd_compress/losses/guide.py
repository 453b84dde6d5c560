"""Guided CTC training: frame cross-entropy to a guide model's forced alignment.

Independently trained CTC models emit their spikes on different frames, so averaging
their posteriors blurs them. Kurata & Audhkhasi ("Guiding CTC posterior spike timings for
improved posterior fusion and knowledge distillation", Interspeech 2019) train every
ensemble member with

    L_member = L_CTC + β · L_guide

where L_guide is the frame-level cross-entropy to the Viterbi (forced) alignment of one
reference model, the guide. `ctc_forced_align` makes that alignment; `GuideAlignmentLoss`
is L_guide.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from ekd_compress.contract.tokens import BLANK_ID
from ekd_compress.losses.compose import register_loss

IGNORE = -1
_FLOOR = -1e10  # finite stand-in for log(0) emissions, so unreachable and unlikely stay distinct


@register_loss("guide_ce")
class GuideAlignmentLoss(nn.Module):
    """Frame cross-entropy to the guide's forced alignment (Kurata & Audhkhasi, Interspeech 2019).

        L_guide = −(1/N) · Σ_{b,t : a_{b,t} ≠ −1} log p_b(a_{b,t} | x_b, t)

    with a_{b,t} the guide's frame label (blank 0 included) and N the number of valid
    (non-ignored) frames in the batch: a mean over frames, not utterances. Frames labelled
    −1 (padding, or utterances the guide could not align) are ignored; a batch with no
    valid frame gives 0. With reduction="utterance" the sum is divided by the batch size B
    instead of N, which puts the term on the same per-utterance scale as `CTCLoss`, so
    β weighs the two as comparable quantities.
    """

    log_name = "guide_ce"

    def __init__(self, ignore_index: int = IGNORE, reduction: str = "frame") -> None:
        super().__init__()
        if reduction not in ("frame", "utterance"):
            raise ValueError(f"reduction={reduction!r} is unknown; use 'frame' or 'utterance'")
        self.ignore_index = ignore_index
        self.reduction = reduction

    def batch_loss(self, log_probs: Tensor, out_lengths: Tensor, batch: dict) -> Tensor:
        """`forward` on a training batch's guide alignment (batch["align"]; padding is −1)."""
        return self(log_probs, batch["align"])

    def forward(self, log_probs: Tensor, align: Tensor) -> Tensor:
        """log_probs (B, T, V) log-softmax; align (B, T) int64 frame labels, −1 = ignore -> scalar (nats/frame)."""
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs of shape {tuple(log_probs.shape)} is not (batch, frames, vocab)")
        if align.shape != log_probs.shape[:2]:
            raise ValueError(
                f"guide alignment of shape {tuple(align.shape)} does not match the model's output frames "
                f"{tuple(log_probs.shape[:2])}; the alignment was made at another frame rate or is stale: "
                "re-run the 'align' stage with a guide of the same subsampling"
            )
        if align.dtype.is_floating_point:
            raise ValueError(f"align has dtype {align.dtype}; pass integer frame labels (torch.long)")
        V = log_probs.shape[-1]
        a = align.long().reshape(-1)
        valid = a != self.ignore_index
        if bool(((a < 0) & valid).any()) or bool(((a >= V) & valid).any()):
            bad = a[((a < 0) | (a >= V)) & valid][:5].tolist()
            raise ValueError(f"guide alignment holds labels {bad} outside [0, {V}) (and not the ignore "
                             f"value {self.ignore_index}); the alignment was made with another token table")
        total = F.nll_loss(log_probs.reshape(-1, V).float(), a, ignore_index=self.ignore_index, reduction="sum")
        if self.reduction == "utterance":
            return total / log_probs.shape[0]
        return total / valid.sum().clamp(min=1)


def _as_numpy(x: Union[Tensor, np.ndarray, list]) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def ctc_forced_align(log_probs: Union[Tensor, np.ndarray], targets: Union[Tensor, np.ndarray, list],
                     blank: int = BLANK_ID) -> np.ndarray:
    """Viterbi CTC forced alignment: the most likely frame path that collapses to `targets`.

    log_probs (T, V) log-probabilities of one utterance (tensor or array); targets (S,)
    token ids without blanks -> (T,) int64 frame labels, blank included.

    Dynamic programming over the 2S+1 states of the blank-extended label sequence
    [∅, y1, ∅, y2, …, yS, ∅], vectorised over states (one numpy step per frame, so a few
    ms for T = 400, S = 50). A state may stay, advance by one, or skip the blank between
    two *different* tokens; the path ends in the last token or the final blank.

    Raises ValueError when T < S + R (R = number of adjacent repeated tokens, each of
    which needs a blank between them): no path exists.
    """
    lp = _as_numpy(log_probs).astype(np.float64)
    y = _as_numpy(targets).astype(np.int64).reshape(-1)
    if lp.ndim != 2:
        raise ValueError(f"log_probs of shape {lp.shape} is not (frames, vocab); pass one utterance")
    T, V = lp.shape
    S = len(y)
    if S and (int(y.min()) < 0 or int(y.max()) >= V or bool((y == blank).any())):
        raise ValueError(f"targets {y.tolist()[:20]} hold ids outside [1, {V}) or the blank {blank}; "
                         "pass transcript token ids without blanks")
    repeats = int((y[1:] == y[:-1]).sum()) if S > 1 else 0
    if T < S + repeats:
        raise ValueError(
            f"cannot align {S} tokens ({repeats} adjacent repeats) to {T} frames: CTC needs at least "
            f"{S + repeats}; the utterance is too short for its transcript at this subsampling "
            "(drop it or use a model with less subsampling)"
        )
    if S == 0:
        return np.full(T, blank, dtype=np.int64)
    lp = np.maximum(np.nan_to_num(lp, nan=_FLOOR, neginf=_FLOOR), _FLOOR)

    L = 2 * S + 1
    ext = np.full(L, blank, dtype=np.int64)
    ext[1::2] = y  # [∅, y1, ∅, y2, ..., yS, ∅]
    skip = np.full(L, -np.inf)  # 0 where state s may come from s-2: a token differing from the one before
    skip[3::2] = np.where(y[1:] != y[:-1], 0.0, -np.inf)
    skip2 = skip[2:]
    emit = lp[:, ext]  # (T, L) log-prob of each state's label at each frame

    # forward pass: A[t, s] = best log-score of a path prefix ending in state s at frame t
    A = np.full((T, L), -np.inf)
    A[0, :2] = emit[0, :2]
    from_skip = np.empty(L - 2)
    for t in range(1, T):
        prev, cur = A[t - 1], A[t]
        cur[:] = prev  # stay
        np.maximum(cur[1:], prev[:-1], out=cur[1:])  # advance by one
        np.add(prev[:-2], skip2, out=from_skip)
        np.maximum(cur[2:], from_skip, out=cur[2:])  # skip a blank between different tokens
        cur += emit[t]

    # backtrack, recomputing each choice (ties prefer stay, then advance by one)
    s = L - 1 if A[T - 1, L - 1] >= A[T - 1, L - 2] else L - 2
    path = np.empty(T, dtype=np.int64)
    for t in range(T - 1, 0, -1):
        path[t] = ext[s]
        prev = A[t - 1]
        best, arg = prev[s], s
        if s >= 1 and prev[s - 1] > best:
            best, arg = prev[s - 1], s - 1
        if s >= 2 and prev[s - 2] + skip[s] > best:
            arg = s - 2
        s = arg
    path[0] = ext[s]
    return path
