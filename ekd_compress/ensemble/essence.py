"""Selecting the essence of a (fused) teacher distribution, and statistics of its mass.

Order of operations (arXiv 1906.10834, with the members fused first, see `fusion.py`):

    p_f = softmax(log p_ens,f / T)          temperature before selection
    E_f = top-k (or top-p) entries of p_f   the essence
    renormalise (or keep a rest bucket)

Modes of `select_essence`:
  renorm    the k most probable ids, probabilities divided by their sum (the paper);
            k = V is ordinary KD.
  residual  the k most probable ids plus one "rest" entry (id REST_ID = −2) holding
            1 − Σ top-k, so the target keeps the full distribution's total mass (K' = k + 1).
  top_p     the smallest set whose cumulative mass reaches `top_p`, at most K' ids,
            renormalised; padded to a fixed K' with id 0 and probability 0.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ekd_compress.contract.tokens import BLANK_ID
from ekd_compress.losses.essence import REST_ID

MODES = ("renorm", "residual", "top_p")


def _check_log_probs(log_probs: Tensor) -> int:
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 3:
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs).__name__
        raise ValueError(f"log_probs {shape} is not a (batch, frames, vocab) tensor; pass the teacher's log-probs")
    return log_probs.shape[-1]


def _check_k(name: str, k: object, V: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
        raise ValueError(f"{name}={k!r} is invalid for a vocabulary of {V}; use an integer in [1, {V}] "
                         f"({V} = all ids, ordinary KD)")
    return k


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid; use a number > 0 (1 = the teacher as is)")
    return float(temperature)


def tempered_probs(log_probs: Tensor, temperature: float) -> Tensor:
    """(B, T, V) log-probs -> softmax(log_probs / T) in float32 (B, T, V)."""
    return torch.softmax(log_probs.float() / _check_temperature(temperature), dim=-1)


@torch.no_grad()
def select_essence(
    log_probs: Tensor,
    k: int,
    temperature: float = 1.0,
    mode: str = "renorm",
    top_p: float = 0.95,
    max_k: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """Fused teacher log-probs (B, T, V) -> essence targets (ids (B, T, K') int64, probs (B, T, K') float32).

    Rows of probs sum to 1 (within float error). K' is k (renorm), k + 1 (residual: the
    last column is the rest bucket, id REST_ID = −2), or min(k, max_k) (top_p: `k` and
    `max_k` cap the set size; k = V with max_k None means uncapped, K' = V). In renorm
    and residual modes ids are sorted by decreasing probability; so are top_p's, with
    padding (id 0, probability 0) at the end. Padded frames are processed like any other
    (mask them with the lengths).
    """
    V = _check_log_probs(log_probs)
    k = _check_k("k", k, V)
    if mode not in MODES:
        raise ValueError(f"essence mode {mode!r} is unknown; use one of {MODES}")
    p = tempered_probs(log_probs, temperature)  # (B, T, V), temperature before selection
    if mode == "top_p":
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p!r} is invalid; use a cumulative probability in (0, 1], e.g. 0.95")
        K = min(k, _check_k("max_k", max_k, V)) if max_k is not None else k
        vals, ids = p.topk(K, dim=-1)  # (B, T, K) descending
        before = vals.cumsum(-1) - vals  # mass of the higher-ranked entries
        keep = before < top_p  # the smallest prefix whose mass reaches top_p (the first always kept)
        vals = vals * keep
        ids = ids * keep
        probs = vals / vals.sum(-1, keepdim=True).clamp(min=1e-30)
        return ids.long(), probs.float()
    vals, ids = p.topk(k, dim=-1)  # (B, T, k) descending
    if mode == "renorm":
        return ids.long(), (vals / vals.sum(-1, keepdim=True).clamp(min=1e-30)).float()
    rest = (1.0 - vals.sum(-1, keepdim=True)).clamp(min=0.0)  # (B, T, 1)
    probs = torch.cat([vals, rest], dim=-1)
    probs = probs / probs.sum(-1, keepdim=True)  # remove float drift
    ids = torch.cat([ids, torch.full_like(ids[..., :1], REST_ID)], dim=-1)
    return ids.long(), probs.float()


def _frame_mask(log_probs: Tensor, lengths: Tensor) -> Tensor:
    B, T, _ = log_probs.shape
    lengths = torch.as_tensor(lengths, device=log_probs.device)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths of shape {tuple(lengths.shape)} do not match a batch of {B}; "
                         "pass one output frame count per utterance")
    return torch.arange(T, device=log_probs.device)[None, :] < lengths[:, None]  # (B, T)


@torch.no_grad()
def cumulative_topk_mass(log_probs: Tensor, lengths: Tensor, temperature: float = 1.0,
                         max_k: Optional[int] = None) -> np.ndarray:
    """Average cumulative probability mass of the top-1..top-max_k ids over valid frames
    (Figure 1 of arXiv 1906.10834).

    log_probs (B, T, V), lengths (B,) valid output frames -> (max_k,) float64 array whose
    entry j is the mean over frames of Σ_{i ≤ j+1} p_(i) (p sorted descending, after
    temperature). Non-decreasing, and 1 at max_k = V. max_k None means V. No valid
    frame gives zeros.
    """
    V = _check_log_probs(log_probs)
    max_k = V if max_k is None else _check_k("max_k", max_k, V)
    mask = _frame_mask(log_probs, lengths)
    if not bool(mask.any()):
        return np.zeros(max_k)
    vals, _ = tempered_probs(log_probs, temperature).topk(max_k, dim=-1)  # (B, T, max_k)
    cum = vals.double().cumsum(-1)[mask]  # (N, max_k)
    return cum.mean(0).clamp(max=1.0).cpu().numpy()


@torch.no_grad()
def blank_argmax_share(log_probs: Tensor, lengths: Tensor, blank: int = BLANK_ID) -> float:
    """Share of valid frames (lengths (B,)) whose argmax over V is the blank; 0 if none are valid."""
    _check_log_probs(log_probs)
    mask = _frame_mask(log_probs, lengths)
    n = int(mask.sum())
    if n == 0:
        return 0.0
    return int(((log_probs.argmax(-1) == blank) & mask).sum()) / n
