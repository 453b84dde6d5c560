"""An independent, textbook offline CTC prefix beam search (no pruning besides the beam):
the reference the shared incremental decoder (ekd_compress.contract.ctc_decode) is checked
against. It was evaluate/decode.py's implementation before the decoders were merged."""
from __future__ import annotations

import numpy as np


def prefix_beam_search(log_probs: np.ndarray, beam: int = 8, blank: int = 0) -> list[int]:
    """CTC prefix beam search without a language model, for one utterance.

    Keeps, per prefix, the log-probability of all alignments ending in blank (p_b) and
    ending in the last token (p_nb), so alignments that collapse to the same text are
    summed -- unlike greedy decoding, which follows the single best path.

    Args:
        log_probs: (T, V) natural-log probabilities (e.g. `log_softmax` output);
            trim padding frames before calling.
        beam: prefixes kept after each frame (>= 1). Tokens per frame are also pruned
            to the `beam` most likely ones.
        blank: the blank token id.

    Returns:
        Token ids of the most probable prefix (no blanks).
    """
    lp = np.asarray(log_probs).astype(np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must have shape (T, V) for one utterance, got {tuple(lp.shape)}; loop over the batch")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    neg_inf = -np.inf
    logaddexp = np.logaddexp
    # prefix (tuple of ids) -> [log p_blank, log p_nonblank]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, neg_inf]}
    n_tokens = lp.shape[1]
    top_k = min(beam, n_tokens)
    for t in range(lp.shape[0]):
        frame = lp[t]
        candidates = np.argpartition(-frame, top_k - 1)[:top_k] if top_k < n_tokens else np.arange(n_tokens)
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], idx: int, value: float) -> None:
            entry = nxt.setdefault(prefix, [neg_inf, neg_inf])
            entry[idx] = logaddexp(entry[idx], value)

        for prefix, (p_b, p_nb) in beams.items():
            p_total = logaddexp(p_b, p_nb)
            last = prefix[-1] if prefix else None
            for c in candidates:
                c = int(c)
                p = frame[c]
                if c == blank:
                    add(prefix, 0, p_total + p)
                elif c == last:
                    # repeat without a blank in between collapses into the same prefix;
                    # after a blank it starts a new token
                    add(prefix, 1, p_nb + p)
                    add(prefix + (c,), 1, p_b + p)
                else:
                    add(prefix + (c,), 1, p_total + p)
        ranked = sorted(nxt.items(), key=lambda kv: logaddexp(kv[1][0], kv[1][1]), reverse=True)
        beams = dict(ranked[:beam])
    best = max(beams.items(), key=lambda kv: logaddexp(kv[1][0], kv[1][1]))[0]
    return list(best)
