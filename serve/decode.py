"""The server's CTC decoders: the contract's greedy and prefix beam decoders, a KenLM beam
decoder, `make_decoder` to pick one, and word timings (numpy only).

Greedy and prefix beam search live in `ekd_compress.contract.ctc_decode` (shared with
evaluation, so the server writes the transcripts that were scored); this module adds

    dec = KenLMDecoder(tokens, "lm.arpa")   # lexicon-free beam search + token-level KenLM n-gram,
                                            # through flashlight-text (optional dependency)
    dec = make_decoder("greedy" | "beam", ...)

All share the incremental interface `CTCDecoder`: accept((T, V) log-probs, frame_offset),
hypothesis() -> [TokenHit], reset().

Token frames are output-frame indices from the start of the stream; `words_from_hits` turns
them into words with times in seconds: a word starts at its first token's frame and ends one
frame after its last token's frame (frame duration = subsampling x feature frame shift), and
its confidence is the mean posterior of its tokens at their emitting frames.

Token conventions (`ekd_compress.contract.tokens`): id BLANK_ID (0) is the blank; character
tables spell the word boundary SPACE (`|`), BPE tables mark word starts with BPE_MARK (`▁`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ekd_compress.contract.ctc_decode import (  # noqa: F401 (re-exported: the server's decoders)
    CTCDecoder,
    GreedyDecoder,
    PrefixBeamDecoder,
    TokenHit,
    check_chunk,
    ctc_prefix_beam_search,
)
from ekd_compress.contract.tokens import BLANK_ID, BPE_MARK, SPACE


@dataclass(frozen=True)
class Word:
    """One word (a phone for phone models) of a result, with times in seconds and a confidence."""

    word: str
    start: float  # seconds from the stream start
    end: float
    conf: float  # mean token posterior in [0, 1]

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3), "conf": round(self.conf, 4)}


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
                 blank: int = BLANK_ID, lm=None) -> None:
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
        lp = np.ascontiguousarray(check_chunk(log_probs))
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


def make_decoder(kind: str = "greedy", tokens: Sequence[str] | None = None, blank: int = BLANK_ID, beam: int = 8,
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
