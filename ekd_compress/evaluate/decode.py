"""CTC decoding: greedy (best path) and prefix beam search, and token ids -> text.

Conventions shared with `ekd_compress.contract.tokens`: id 0 is the CTC blank; character
tables spell the word boundary as `|` (configurable); BPE tables use sentencepiece
pieces whose word starts are marked `▁` (U+2581).

Inputs are per-frame log-probabilities (natural log, e.g. `log_softmax` output) of
shape (B, T, V) or (T, V), T frames and V tokens. Greedy decoding only needs scores
that share the argmax with the log-probs, so raw logits work too; beam search needs
real log-probabilities.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

BLANK_ID = 0
BPE_MARK = "\u2581"  # ▁

ArrayLike = Union["torch.Tensor", np.ndarray]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Tensor (any device/dtype) or array -> numpy array, without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch.Tensor
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def ctc_greedy_decode(
    log_probs: ArrayLike,
    lengths: ArrayLike | Sequence[int] | None = None,
    blank: int = BLANK_ID,
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks.

    Args:
        log_probs: (B, T, V) or (T, V) scores per frame (log-probs or logits).
        lengths: valid frames per utterance, shape (B,); None = all T frames.
            With a (T, V) input, a single length (int or 1-element sequence).
        blank: the blank token id (0 in this project).

    Returns:
        One list of token ids per utterance (a single list inside a list for (T, V)).
    """
    scores = _to_numpy(log_probs)
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ValueError(f"log_probs must have shape (B, T, V) or (T, V), got {tuple(scores.shape)}")
    batch, frames, _ = scores.shape
    if lengths is None:
        lens = np.full(batch, frames, dtype=np.int64)
    else:
        lens = np.atleast_1d(_to_numpy(lengths)).astype(np.int64).reshape(-1)
    if lens.shape[0] != batch:
        raise ValueError(f"lengths has {lens.shape[0]} entries for a batch of {batch}; pass one length per utterance")
    if (lens < 0).any() or (lens > frames).any():
        raise ValueError(f"lengths {lens.tolist()} must lie in [0, {frames}] (the T axis of log_probs)")
    best = scores.argmax(axis=-1)  # (B, T)
    out: list[list[int]] = []
    for b in range(batch):
        path = best[b, : lens[b]]
        if path.size == 0:
            out.append([])
            continue
        keep = np.ones(path.shape[0], dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        collapsed = path[keep]
        out.append([int(i) for i in collapsed if i != blank])
    return out


def ctc_prefix_beam_search(log_probs: ArrayLike, beam: int = 8, blank: int = BLANK_ID) -> list[int]:
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
    lp = _to_numpy(log_probs).astype(np.float64)
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


def ids_to_text(
    ids: Iterable[int],
    tokens: Sequence[str],
    space: str = "|",
    kind: str | None = None,
) -> str:
    """Token ids -> text, for character or sentencepiece BPE token tables.

    Args:
        ids: decoded token ids (blanks, id 0, are skipped if present).
        tokens: the token table, `tokens[i]` is the string of id i.
        space: word-boundary token of character tables (`|`; a literal " " token
            always counts as a space too).
        kind: "char", "bpe" or "phone" (phones joined by spaces); None = "bpe" when any
            table token starts with `▁`, else "char".

    Returns:
        Words separated by single spaces, no leading/trailing space.
    """
    if kind is None:
        kind = "bpe" if any(t.startswith(BPE_MARK) for t in tokens) else "char"
    if kind not in ("char", "bpe", "phone"):
        raise ValueError(f"token kind {kind!r} is unknown; use 'char', 'bpe', 'phone' or None (auto)")
    pieces: list[str] = []
    for i in ids:
        i = int(i)
        if i == BLANK_ID:
            continue
        if not 0 <= i < len(tokens):
            raise ValueError(f"token id {i} is outside the token table (size {len(tokens)}); decode with the model's tokens.txt")
        pieces.append(tokens[i])
    if kind == "phone":
        return " ".join(pieces)
    if kind == "bpe":
        text = "".join(pieces).replace(BPE_MARK, " ")
    else:
        text = "".join(" " if p == space else p for p in pieces)
    return " ".join(text.split())
