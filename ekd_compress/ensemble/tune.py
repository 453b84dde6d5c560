"""Fusion weights chosen on held-out data: a grid search over the weight simplex, or
forward selection with replacement (`forward_select`, below).

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


@dataclass
class ForwardSelection:
    """Result of `forward_select`: fusion weights over all members (0 for dropped/unpicked ones)."""
    weights: list[float]
    wer: float                      # percent, dev WER of the selected ensemble
    uniform_wer: float              # percent, equal weights over every member
    member_wers: list[float]        # percent, each member alone
    dropped: list[int]              # members above drop_ratio x the best member's WER
    picks: list[int]                # member index added in each round (with replacement)
    round_wers: list[float]         # dev WER after each round


def forward_select(member_log_probs: Sequence[Sequence[torch.Tensor]], refs: Sequence[str], decode,
                   rounds: int = 12, drop_ratio: float = 1.5) -> ForwardSelection:
    """Ensemble selection with replacement (Caruana et al., ICML 2004) on held-out data.

    Members whose own WER is above `drop_ratio` x the best member's are dropped first (weak
    members hurt an average). Selection starts from the best member; each round adds the
    member (repeats allowed) whose addition gives the lowest WER of the probability-domain
    average; the weights are the pick counts of the best round (the earliest on ties), so
    selection stops gaining where Caruana's curve peaks. Arguments as for `search_weights`.
    """
    from ekd_compress.evaluate.wer import compute_wer

    n = len(member_log_probs)
    if n < 1 or any(len(m) != len(refs) for m in member_log_probs):
        raise ValueError(f"need one list of per-utterance log-probs per member, each with {len(refs)} entries")
    if rounds < 1 or drop_ratio < 1.0:
        raise ValueError(f"rounds={rounds} must be >= 1 and drop_ratio={drop_ratio} >= 1")

    def wer_of(w: Sequence[float]) -> float:
        hyps = [decode(fuse_posteriors([m[u][None] for m in member_log_probs], w)[0]) for u in range(len(refs))]
        return compute_wer(refs, hyps).wer

    alone = [wer_of([1.0 if j == i else 0.0 for j in range(n)]) for i in range(n)]
    best_alone = min(alone)
    kept = [i for i in range(n) if alone[i] <= drop_ratio * best_alone]
    dropped = [i for i in range(n) if i not in kept]
    counts = [0] * n
    first = min(kept, key=lambda i: alone[i])
    counts[first] = 1
    picks, round_wers = [first], [alone[first]]
    best_counts, best_wer = list(counts), alone[first]
    for _ in range(rounds - 1):
        trials = []
        for i in kept:
            c = list(counts)
            c[i] += 1
            trials.append((wer_of(c), alone[i], i, c))
        wer, _, i, counts = min(trials, key=lambda t: (round(t[0], 9), t[1]))
        picks.append(i)
        round_wers.append(wer)
        if wer < best_wer - 1e-9:
            best_counts, best_wer = list(counts), wer
    total = sum(best_counts)
    return ForwardSelection([c / total for c in best_counts], best_wer, wer_of([1.0 / n] * n), alone, dropped,
                            picks, round_wers)
