"""CTC decoding in numpy, shared by training/evaluation (offline) and the server (streaming).

Inputs are per-frame natural-log posteriors (`log_softmax` output): (T, V) for one
utterance or (B, T, V) for a batch, T output frames and V tokens, blank id `BLANK_ID` (0).
Greedy decoding only needs scores that share the argmax, so raw logits work too; beam
search needs real log-probabilities. Callers holding torch tensors convert them first
(`t.detach().float().cpu().numpy()`): this module never imports torch.

Offline (whole utterances):

    ctc_greedy_decode(log_probs, lengths)   # (B, T, V) + valid frames -> token ids per utterance
    ctc_prefix_beam_search(log_probs, beam) # (T, V) -> token ids of the most probable labelling

Incremental (the server feeds one chunk at a time and may ask for the best hypothesis,
a partial result, at any point, or reset at an endpoint, a final result):

    dec = GreedyDecoder()                  # best path: argmax, collapse repeats, drop blanks
    dec = PrefixBeamDecoder(beam=8)        # CTC prefix beam search (no LM)
    dec.accept(log_probs_chunk, frame_offset)   # (T, V), absolute output-frame index of row 0
    hits = dec.hypothesis()                # [TokenHit(id, frame, logprob)] of the best path
    dec.reset()                            # new segment (keeps repeat-collapse context)

The offline functions run the same code as the incremental decoders, so a transcript scored
in evaluation is the transcript the server writes for the same posteriors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ekd_compress.contract.tokens import BLANK_ID

NEG_INF = -math.inf

__all__ = ["CTCDecoder", "GreedyDecoder", "PrefixBeamDecoder", "TokenHit", "check_chunk", "ctc_greedy_decode",
           "ctc_prefix_beam_search"]


@dataclass(frozen=True)
class TokenHit:
    """One emitted token: id, output frame index (from stream start), its log-posterior there."""

    id: int
    frame: int
    logprob: float


class CTCDecoder(Protocol):
    """What the server needs of a decoder (greedy, prefix beam, KenLM in ekd_compress.serve.decode)."""

    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None: ...

    def hypothesis(self) -> list[TokenHit]: ...

    def reset(self) -> None: ...


def _emitted(best: np.ndarray, prev: int, blank: int) -> np.ndarray:
    """Frames where the best path emits a token: (T,) argmax ids -> indices t with
    best[t] != best[t-1] (best[-1] := prev, the frame before) and best[t] != blank."""
    before = np.concatenate([[prev], best[:-1]])
    return np.nonzero((best != before) & (best != blank))[0]


def ctc_greedy_decode(
    log_probs: np.ndarray,
    lengths: np.ndarray | Sequence[int] | int | None = None,
    blank: int = BLANK_ID,
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks.

    Args:
        log_probs: (B, T, V) or (T, V) scores per frame (log-probs or logits), a numpy array
            (anything `np.asarray` takes; convert GPU or bf16 tensors first).
        lengths: valid frames per utterance, shape (B,); None = all T frames.
            With a (T, V) input, a single length (int or 1-element sequence).
        blank: the blank token id.

    Returns:
        One list of token ids per utterance (a single list inside a list for (T, V)).
    """
    scores = np.asarray(log_probs)
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ValueError(f"log_probs must have shape (B, T, V) or (T, V), got {tuple(scores.shape)}")
    batch, frames, _ = scores.shape
    if lengths is None:
        lens = np.full(batch, frames, dtype=np.int64)
    else:
        lens = np.atleast_1d(np.asarray(lengths)).astype(np.int64).reshape(-1)
    if lens.shape[0] != batch:
        raise ValueError(f"lengths has {lens.shape[0]} entries for a batch of {batch}; pass one length per utterance")
    if (lens < 0).any() or (lens > frames).any():
        raise ValueError(f"lengths {lens.tolist()} must lie in [0, {frames}] (the T axis of log_probs)")
    best = scores.argmax(axis=-1)  # (B, T)
    out: list[list[int]] = []
    for b in range(batch):
        path = best[b, : lens[b]]
        out.append([int(path[t]) for t in _emitted(path, blank, blank)])
    return out


def check_chunk(log_probs: np.ndarray) -> np.ndarray:
    """A decoder's input chunk as (T, V) float32; ValueError for any other rank."""
    lp = np.asarray(log_probs, dtype=np.float32)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (frames, vocab), got shape {lp.shape}")
    return lp


class GreedyDecoder:
    """Best-path decoding, incremental: the last frame's argmax is kept across chunks (and
    segments) so a token spanning a chunk boundary is emitted once."""

    def __init__(self, blank: int = BLANK_ID) -> None:
        self.blank = blank
        self._prev = blank
        self._hits: list[TokenHit] = []

    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None:
        """log_probs: (T, V) float32 natural-log posteriors; frame_offset: absolute frame of row 0."""
        lp = check_chunk(log_probs)
        if lp.shape[0] == 0:
            return
        best = lp.argmax(axis=-1)  # (T,)
        for t in _emitted(best, self._prev, self.blank):
            self._hits.append(TokenHit(int(best[t]), frame_offset + int(t), float(lp[t, best[t]])))
        self._prev = int(best[-1])

    def hypothesis(self) -> list[TokenHit]:
        return list(self._hits)

    def reset(self) -> None:
        self._hits = []


class PrefixBeamDecoder:
    """CTC prefix beam search (Hannun et al. 2014, arXiv:1408.2873) in the log domain,
    incremental over chunks.

    Each prefix keeps log P(prefix, ending in blank) and log P(prefix, ending in non-blank),
    so alignments that collapse to the same text are summed (greedy decoding follows the
    single best path). Per frame only the `token_beam` most likely tokens (and those within
    `prune` nats of the best) are tried as extensions; the blank is always scored. On `reset`
    the best prefix's last token is kept as context, so a token spanning the cut is not
    emitted twice.
    """

    def __init__(self, beam: int = 8, token_beam: int | None = None, prune: float = 10.0,
                 blank: int = BLANK_ID) -> None:
        if beam < 1:
            raise ValueError(f"beam={beam}: use 1 or more")
        self.beam = beam
        self.token_beam = token_beam or beam
        self.prune = prune
        self.blank = blank
        self._context: int | None = None
        self._beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}
        self._hits: dict[tuple[int, ...], tuple[TokenHit, ...]] = {(): ()}

    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None:
        """log_probs: (T, V) natural-log posteriors (float32 precision); frame_offset: frame of row 0."""
        lp = check_chunk(log_probs).astype(np.float64)
        lae = np.logaddexp
        for t in range(lp.shape[0]):
            row = lp[t]
            k = min(self.token_beam, row.shape[0])
            cands = np.argpartition(-row, k - 1)[:k]
            cands = [int(c) for c in cands if c != self.blank and row[c] >= row.max() - self.prune]
            nxt: dict[tuple[int, ...], list[float]] = {}
            hits = self._hits
            new_hits: dict[tuple[int, ...], tuple[TokenHit, ...]] = {}

            def slot(prefix: tuple[int, ...]) -> list[float]:
                if prefix not in nxt:
                    nxt[prefix] = [NEG_INF, NEG_INF]
                return nxt[prefix]

            for prefix, (pb, pnb) in self._beams.items():
                total = lae(pb, pnb)
                s = slot(prefix)
                s[0] = lae(s[0], total + row[self.blank])
                new_hits.setdefault(prefix, hits[prefix])
                last = prefix[-1] if prefix else self._context
                for c in cands:
                    p = row[c]
                    ext = prefix + (c,)
                    if c == last:
                        s[1] = lae(s[1], pnb + p)  # repeat collapses into the same prefix
                        e = slot(ext)
                        e[1] = lae(e[1], pb + p)  # blank in between: a new token
                    else:
                        e = slot(ext)
                        e[1] = lae(e[1], total + p)
                    if ext not in new_hits:
                        new_hits[ext] = hits.get(ext) or hits[prefix] + (TokenHit(c, frame_offset + t, float(p)),)
            ranked = sorted(nxt.items(), key=lambda kv: lae(kv[1][0], kv[1][1]), reverse=True)[: self.beam]
            self._beams = {p: v for p, v in ranked}
            self._hits = {p: new_hits[p] for p in self._beams}

    def _best(self) -> tuple[int, ...]:
        return max(self._beams, key=lambda p: np.logaddexp(*self._beams[p]))

    def hypothesis(self) -> list[TokenHit]:
        return list(self._hits[self._best()])

    def reset(self) -> None:
        best = self._best()
        pb, pnb = self._beams[best]
        total = np.logaddexp(pb, pnb)
        if best:
            self._context = best[-1]
        self._beams = {(): [pb - total, pnb - total]}  # keep blank/non-blank split for the context token
        self._hits = {(): ()}


def ctc_prefix_beam_search(log_probs: np.ndarray, beam: int = 8, blank: int = BLANK_ID) -> list[int]:
    """One utterance, (T, V) natural-log posteriors (padding frames trimmed) -> token ids of
    the most probable labelling found by prefix beam search (`PrefixBeamDecoder`, no LM)."""
    lp = np.asarray(log_probs)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must have shape (T, V) for one utterance, got {tuple(lp.shape)}; loop over the batch")
    dec = PrefixBeamDecoder(beam=beam, blank=blank)
    dec.accept(lp, 0)
    return [h.id for h in dec.hypothesis()]
