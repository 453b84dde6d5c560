"""Fusion weights chosen on held-out data: a grid search over the weight simplex.

Every weight vector whose entries are multiples of `step` and sum to 1 is tried (66
vectors for three members at step 0.1); each fuses the members' posteriors in the
probability domain (`fuse_posteriors`), decodes greedily and is scored by WER against the
references. The lowest WER wins; ties go to the more even weights (higher entropy), so
equal weights win whenever they are as good. The data the weights are tuned on (dev)
also selects checkpoints; only held-out test sets measure the tuned ensemble fairly.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ekd_compress.ensemble.fusion import fuse_posteriors


@dataclass
class WeightSearch:
    weights: list[float]
    wer: float                          # percent, of the chosen weights
    uniform_wer: float                  # percent, equal weights
    tried: list[tuple[list[float], float]]  # every (weights, WER %) in the grid


def simplex_grid(n: int, step: float) -> list[list[float]]:
    """All n-vectors of non-negative multiples of `step` that sum to 1."""
    units = round(1.0 / step)
    if n < 1 or units < 1 or abs(units * step - 1.0) > 1e-6:
        raise ValueError(f"step={step} must divide 1 (e.g. 0.1 or 0.25) and n={n} must be >= 1")
    grid = []
    for cuts in itertools.combinations(range(units + n - 1), n - 1):  # stars and bars
        counts, prev = [], -1
        for c in (*cuts, units + n - 1):
            counts.append(c - prev - 1)
            prev = c
        grid.append([k / units for k in counts])
    return grid


def _entropy(w: Sequence[float]) -> float:
    return -sum(x * math.log(x) for x in w if x > 0)


def search_weights(member_log_probs: Sequence[Sequence[torch.Tensor]], refs: Sequence[str], decode,
                   step: float = 0.1) -> WeightSearch:
    """member_log_probs[m][u]: member m's (T_u, V) log-probabilities for utterance u;
    refs[u]: its reference text; decode((T, V) log-probs) -> hypothesis text."""
    from ekd_compress.evaluate.wer import compute_wer

    n = len(member_log_probs)
    if n < 1 or any(len(m) != len(refs) for m in member_log_probs):
        raise ValueError(f"need one list of per-utterance log-probs per member, each with {len(refs)} entries")

    def wer_of(w: Sequence[float]) -> float:
        hyps = [decode(fuse_posteriors([m[u][None] for m in member_log_probs], w)[0]) for u in range(len(refs))]
        return compute_wer(refs, hyps).wer

    tried = [(w, wer_of(w)) for w in simplex_grid(n, step)]
    best_w, best_wer = min(tried, key=lambda t: (round(t[1], 9), -_entropy(t[0])))
    return WeightSearch(best_w, best_wer, wer_of([1.0 / n] * n), tried)
