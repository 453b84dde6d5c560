"""Incremental CTC decoders for streaming (numpy only), plus word timings.

Every decoder takes log-probabilities one chunk at a time and can be asked for its current
best hypothesis at any point (a partial result) or reset at an endpoint (a final result):

    dec = GreedyDecoder(blank=0)          # best path: argmax, collapse repeats, drop blanks
    dec = PrefixBeamDecoder(beam=8)       # CTC prefix beam search (no LM)
    dec = KenLMDecoder(tokens, "lm.arpa") # lexicon-free beam search + token-level KenLM n-gram,
                                          # through flashlight-text (optional dependency)
    dec.accept(log_probs_chunk, frame_offset)   # (T, V) natural-log posteriors, absolute frame index
    hits = dec.hypothesis()                     # [TokenHit(id, frame, logprob)] of the best path
    dec.reset()                                 # start a new segment (keeps repeat-collapse context)

Token frames are output-frame indices from the start of the stream; `words_from_hits` turns
them into words with times in seconds: a word starts at its first token's frame and ends one
frame after its last token's frame (frame duration = subsampling x feature frame shift), and
its confidence is the mean posterior of its tokens at their emitting frames.

Conventions (shared with `ekd_compress.contract.tokens`): id 0 is the blank; character tables spell
the word boundary `|`, BPE tables mark word starts with `▁`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

BPE_MARK = "\u2581"
SPACE = "|"
NEG_INF = -math.inf


@dataclass(frozen=True)
class TokenHit:
    """One emitted token: id, output frame index (from stream start), its log-posterior there."""

    id: int
    frame: int
    logprob: float


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the stream start
    end: float
    conf: float  # mean token posterior in [0, 1]

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3), "conf": round(self.conf, 4)}


class CTCDecoder(Protocol):
    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None: ...

    def hypothesis(self) -> list[TokenHit]: ...

    def reset(self) -> None: ...


def _check_chunk(log_probs: np.ndarray) -> np.ndarray:
    lp = np.asarray(log_probs, dtype=np.float32)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (frames, vocab), got shape {lp.shape}")
    return lp


class GreedyDecoder:
    """Best-path decoding, incremental: the last frame's argmax is kept across chunks (and
    segments) so a token spanning a chunk boundary is emitted once."""

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank
        self._prev = blank
        self._hits: list[TokenHit] = []

    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None:
        lp = _check_chunk(log_probs)
        if lp.shape[0] == 0:
            return
        best = lp.argmax(axis=-1)  # (T,)
        prev = np.concatenate([[self._prev], best[:-1]])
        for t in np.nonzero((best != prev) & (best != self.blank))[0]:
            self._hits.append(TokenHit(int(best[t]), frame_offset + int(t), float(lp[t, best[t]])))
        self._prev = int(best[-1])

    def hypothesis(self) -> list[TokenHit]:
        return list(self._hits)

    def reset(self) -> None:
        self._hits = []


class PrefixBeamDecoder:
    """CTC prefix beam search (Hannun et al. 2014) in the log domain, incremental over chunks.

    Each prefix keeps log P(prefix, ending in blank) and log P(prefix, ending in non-blank).
    Per frame only the `token_beam` most likely tokens (and those within `prune` nats of the
    best) are tried. On `reset` the best prefix's last token is kept as context, so a token
    spanning the cut is not emitted twice.
    """

    def __init__(self, beam: int = 8, token_beam: int | None = None, prune: float = 10.0, blank: int = 0) -> None:
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
        lp = _check_chunk(log_probs).astype(np.float64)
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


class DecoderUnavailable(RuntimeError):
    """An optional decoding dependency (flashlight-text with KenLM) is not installed."""


def flashlight_available() -> bool:
    try:
        import flashlight.lib.text.decoder.kenlm  # noqa: F401
    except ImportError:
        return False
    return True


class KenLMDecoder:
    """Lexicon-free CTC beam search with a token-level KenLM n-gram (ARPA or binary), via
    flashlight-text's `LexiconFreeDecoder` (decode_begin / decode_step / get_best_hypothesis).

    The LM's vocabulary is the token table (characters with `|` between words, or BPE pieces);
    `|` (or the blank for BPE tables) is the decoder's silence token.
    """

    def __init__(self, tokens: Sequence[str], lm_path: str | Path | None = None, lm_weight: float = 0.5,
                 word_score: float = 0.0, beam: int = 16, token_beam: int | None = None, beam_threshold: float = 25.0,
                 blank: int = 0, lm=None) -> None:
        """lm: a model from `load_kenlm` shared by many decoders (else lm_path is loaded here)."""
        from flashlight.lib.text.decoder import CriterionType, LexiconFreeDecoder, LexiconFreeDecoderOptions

        self.blank = blank
        self.vocab = len(tokens)
        if lm is None:
            if lm_path is None:
                raise ValueError("pass lm_path (or a model from load_kenlm as lm=)")
            lm = load_kenlm(tokens, lm_path)
        self._lm = lm
        sil = list(tokens).index(SPACE) if SPACE in tokens else blank
        opts = LexiconFreeDecoderOptions(
            beam_size=beam, beam_size_token=token_beam or len(tokens), beam_threshold=beam_threshold,
            lm_weight=lm_weight, sil_score=word_score, log_add=False, criterion_type=CriterionType.CTC,
        )
        self._dec = LexiconFreeDecoder(opts, self._lm, sil, blank, [])
        self._lp: list[np.ndarray] = []  # this segment's log-probs (confidences)
        self._offset = 0  # absolute frame of the segment's first frame
        self._frames = 0
        self._dec.decode_begin()

    def accept(self, log_probs: np.ndarray, frame_offset: int) -> None:
        lp = np.ascontiguousarray(_check_chunk(log_probs))
        if lp.shape[1] != self.vocab:
            raise ValueError(f"log_probs have {lp.shape[1]} classes, the token table {self.vocab}")
        if self._frames == 0:
            self._offset = frame_offset
        if lp.shape[0]:
            self._dec.decode_step(lp.ctypes.data, lp.shape[0], lp.shape[1])
            self._lp.append(lp)
            self._frames += lp.shape[0]

    def hypothesis(self) -> list[TokenHit]:
        if not self._frames:
            return []
        path = list(self._dec.get_best_hypothesis().tokens)[1: 1 + self._frames]  # [0] is the start state
        lp = np.concatenate(self._lp)
        hits, prev = [], self.blank
        for t, tok in enumerate(path):
            if tok != prev and tok != self.blank and tok >= 0:
                hits.append(TokenHit(int(tok), self._offset + t, float(lp[t, tok])))
            prev = tok
        return hits

    def reset(self) -> None:
        self._dec.decode_end()
        self._dec.decode_begin()
        self._lp, self._frames = [], 0


def load_kenlm(tokens: Sequence[str], lm_path: str | Path):
    """Load a token-level KenLM model (ARPA or binary) for `KenLMDecoder`; raises `DecoderUnavailable`
    without flashlight-text."""
    try:
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError as e:
        raise DecoderUnavailable(
            f"KenLM decoding needs flashlight-text with KenLM ({e}); `pip install flashlight-text`, or decode without --lm"
        ) from None
    lm_path = Path(lm_path)
    if not lm_path.is_file():
        raise FileNotFoundError(f"KenLM model {lm_path} does not exist; pass an ARPA or KenLM binary file")
    return KenLM(str(lm_path), Dictionary(list(tokens)))


def make_decoder(kind: str = "greedy", tokens: Sequence[str] | None = None, blank: int = 0, beam: int = 8,
                 lm_path: str | Path | None = None, lm_weight: float = 0.5, word_score: float = 0.0,
                 lm=None) -> CTCDecoder:
    """'greedy' | 'beam' (prefix beam search; with lm / lm_path, KenLM through flashlight-text)."""
    if kind == "greedy":
        if lm is not None or lm_path is not None:
            raise ValueError("a language model needs the beam decoder (decoder='beam')")
        return GreedyDecoder(blank)
    if kind == "beam":
        if lm is not None or lm_path is not None:
            if tokens is None:
                raise ValueError("KenLM decoding needs the token list")
            return KenLMDecoder(tokens, lm_path, lm_weight=lm_weight, word_score=word_score, beam=beam, blank=blank,
                                lm=lm)
        return PrefixBeamDecoder(beam=beam, blank=blank)
    raise ValueError(f"decoder {kind!r} is unknown; use 'greedy' or 'beam'")


# ----------------------------------------------------------------------------- offline helpers
def ctc_greedy(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """(T, V) -> token ids of the best path."""
    dec = GreedyDecoder(blank)
    dec.accept(log_probs, 0)
    return [h.id for h in dec.hypothesis()]


def ctc_prefix_beam_search(log_probs: np.ndarray, beam: int = 8, blank: int = 0) -> list[int]:
    """(T, V) -> token ids of the most probable labelling found by prefix beam search."""
    dec = PrefixBeamDecoder(beam=beam, blank=blank)
    dec.accept(log_probs, 0)
    return [h.id for h in dec.hypothesis()]


# ----------------------------------------------------------------------------- words
def words_from_hits(hits: Iterable[TokenHit], tokens: Sequence[str], frame_seconds: float,
                    kind: str = "char") -> list[Word]:
    """Group token hits into words. char: `|` separates words; bpe: `▁` starts a word; phone:
    each phone is its own entry (a phone model writes no words)."""
    words: list[Word] = []
    cur: list[TokenHit] = []
    text: list[str] = []

    def close() -> None:
        if cur and "".join(text):
            conf = float(np.mean([math.exp(h.logprob) for h in cur]))
            words.append(Word("".join(text), cur[0].frame * frame_seconds, (cur[-1].frame + 1) * frame_seconds, conf))
        cur.clear()
        text.clear()

    for h in hits:
        piece = tokens[h.id]
        if kind == "phone":
            close()
            cur.append(h)
            text.append(piece)
            close()
        elif kind == "bpe":
            if piece.startswith(BPE_MARK):
                close()
                piece = piece[len(BPE_MARK):]
            if piece:
                cur.append(h)
                text.append(piece)
        elif piece == SPACE:
            close()
        else:
            cur.append(h)
            text.append(piece)
    close()
    return words
