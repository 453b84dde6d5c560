"""How sure is a comparison of error rates? The paired bootstrap over utterances.

A scored set is a sample of utterances. Drawing that many utterances from it with replacement,
again and again, and re-computing every model's error rate on each draw shows how much the
rates, and any ratio of them, would move on another sample of the same kind of speech (Bisani
and Ney 2004, "Bootstrap estimates for confidence intervals in ASR performance evaluation").
Every model is re-scored on the *same* draws, so what two models get wrong together cancels in
their ratio: the paired bootstrap, which is what comparing models on one test set calls for.

    rates = bootstrap_rates(rows, "wer", resamples=1000, seed=0)  # {name: (1000,) WER % per draw}
    lo, hi = interval(rates["student"] / rates["baseline"])       # 95 % interval of the ratio

This covers the test set's sampling noise only. Training noise (another seed, another run) is
what the seed spreads in results.md show; neither includes the other.

Rows are `evaluate --json` model rows with an `utterances` field ({"ids", measure: [[errors,
units], ...]}), written by ekd_compress.evaluate.scoring. Results written before that field
existed, and Switchboard scoring (GLM-normalised counts), have none: `bootstrap_rates` then
returns None and the verdict shows no interval.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

RESAMPLES = 1000


def utterance_counts(rows: Sequence[dict[str, Any]], metric: str) -> Optional[tuple[list[str], np.ndarray, np.ndarray]]:
    """(model names, errors (M, N), reference units (N,)) of `metric` over the N utterances every row
    was scored on, or None when a row has no per-utterance counts of `metric` or the rows disagree
    on the utterances or their reference lengths (they were not scored on the same set)."""
    names, errors, ids, units = [], [], None, None
    for row in rows:
        utts = row.get("utterances") or {}
        pairs = utts.get(metric)
        if pairs is None or "ids" not in utts:
            return None
        order = np.argsort(np.asarray(utts["ids"]), kind="stable")
        row_ids = [utts["ids"][i] for i in order]
        counts = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)[order]
        if ids is None:
            ids, units = row_ids, counts[:, 1]
        elif row_ids != ids or not np.array_equal(counts[:, 1], units):
            return None
        names.append(row["name"])
        errors.append(counts[:, 0])
    if ids is None or not len(ids) or units.sum() == 0:
        return None
    return names, np.stack(errors), units


def bootstrap_rates(rows: Sequence[dict[str, Any]], metric: str, resamples: int = RESAMPLES,
                    seed: int = 0, scale: int = 1) -> Optional[dict[str, np.ndarray]]:
    """Each row's error rate of `metric` (percent) on `resamples` draws of the set's utterances with
    replacement, the same draws for every row -> {name: (resamples,)}; None without per-utterance
    counts (see `utterance_counts`). Deterministic for a given `seed`.

    Each draw takes `scale` x N utterances from the N of the set: `scale` > 1 shows how the rates
    would spread on a set `scale` times larger whose utterances fail as this set's do (an
    extrapolation: it keeps the present error pattern, so it cannot say what another set's would be)."""
    counts = utterance_counts(rows, metric)
    if counts is None:
        return None
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: draw at least 1 (e.g. {RESAMPLES})")
    if scale < 1:
        raise ValueError(f"scale={scale}: draw at least the set's own size (scale 1)")
    names, errors, units = counts
    n = units.shape[0]
    draws = np.random.default_rng(seed).multinomial(scale * n, np.full(n, 1.0 / n), size=resamples)  # (R, N) counts
    drawn_units = draws @ units  # (R,)
    drawn_units = np.where(drawn_units > 0, drawn_units, 1)  # a draw of only empty references: rate 0, not NaN
    rates = 100.0 * (errors @ draws.T) / drawn_units  # (M, R)
    return dict(zip(names, rates))


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap `samples` (percentile method) -> (low, high);
    infinite or NaN draws (a zero denominator) sort to the ends."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: give a probability in (0, 1), e.g. 0.95")
    tail = 100.0 * (1.0 - level) / 2.0
    finite = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=np.inf)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
