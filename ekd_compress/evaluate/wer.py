"""Word error rate with its error counts, computed by jiwer's word-level alignment.

WER (percent) = 100 * (substitutions + deletions + insertions) / reference words.

Texts are compared as whitespace-separated words; normalise them first (casing,
punctuation, fillers -- see `ekd_compress.evaluate.swbd` for Switchboard rules).

Empty texts: an empty hypothesis counts every reference word as a deletion. An empty
reference is counted, not refused (as sclite does): every hypothesis word is an
insertion. A set whose references hold no words at all has an undefined WER, reported
as NaN with `words == 0`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class WerResult:
    """Error counts of a scored set; `wer` is derived from them.

    Attributes:
        sub, del_, ins: substituted, deleted and inserted words.
        hits: reference words matched exactly.
        words: reference words (hits + sub + del_).
        sentences: utterances scored.
        sentence_errors: utterances with at least one error.
    """

    sub: int = 0
    del_: int = 0
    ins: int = 0
    hits: int = 0
    words: int = 0
    sentences: int = 0
    sentence_errors: int = 0

    @property
    def errors(self) -> int:
        """sub + del + ins, in words."""
        return self.sub + self.del_ + self.ins

    @property
    def wer(self) -> float:
        """Word error rate in percent; NaN when there are no reference words."""
        if self.words == 0:
            return math.nan
        return 100.0 * self.errors / self.words

    @property
    def ser(self) -> float:
        """Sentence error rate in percent; NaN for an empty set."""
        if self.sentences == 0:
            return math.nan
        return 100.0 * self.sentence_errors / self.sentences

    def to_dict(self) -> dict[str, float | int]:
        """{"wer": percent, "sub", "del", "ins", "words"} -- the keys written to reports."""
        return {"wer": self.wer, "sub": self.sub, "del": self.del_, "ins": self.ins, "words": self.words}

    def merge(self, other: "WerResult") -> "WerResult":
        """Counts of both sets together (the WER of the union, not an average of WERs)."""
        return WerResult(
            sub=self.sub + other.sub,
            del_=self.del_ + other.del_,
            ins=self.ins + other.ins,
            hits=self.hits + other.hits,
            words=self.words + other.words,
            sentences=self.sentences + other.sentences,
            sentence_errors=self.sentence_errors + other.sentence_errors,
        )

    __add__ = merge

    def __str__(self) -> str:
        return (
            f"WER {self.wer:.2f}% [{self.errors} / {self.words}, {self.ins} ins, {self.del_} del, {self.sub} sub]"
            f" over {self.sentences} utterances"
        )


def merge_wer(results: Iterable[WerResult]) -> WerResult:
    """Sum the counts of several results (e.g. per-shard scoring) into one."""
    total = WerResult()
    for r in results:
        total = total.merge(r)
    return total


def _check_texts(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be lists of strings, one per utterance; wrap a single text in a list")
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses; pass one hypothesis per reference, in the same order")
    for name, texts in (("refs", refs), ("hyps", hyps)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] is {type(t).__name__} ({t!r}); pass text, e.g. decode token ids with TokenTable.decode first")


def compute_wer(refs: Sequence[str], hyps: Sequence[str]) -> WerResult:
    """Score hypotheses against references (one string per utterance, same order).

    Empty references are counted (hypothesis words become insertions); see the
    module docstring. Words are split on whitespace; no other normalisation.
    """
    return _score(refs, hyps, by_utterance=False)[0]


def compute_wer_by_utterance(refs: Sequence[str], hyps: Sequence[str]) -> tuple[WerResult, list[tuple[int, int]]]:
    """`compute_wer`'s result and, from the same alignment, (errors, reference words) of every
    utterance in order: the counts it sums, kept apart so that a scored set can be resampled by
    utterance (ekd_compress.evaluate.bootstrap)."""
    return _score(refs, hyps, by_utterance=True)


def _score(refs: Sequence[str], hyps: Sequence[str], by_utterance: bool) -> tuple[WerResult, list[tuple[int, int]]]:
    """One alignment of the set -> (its counts, per-utterance (errors, words) or [] unless `by_utterance`)."""
    _check_texts(refs, hyps)
    ref_words = [r.split() for r in refs]
    hyp_words = [h.split() for h in hyps]
    sub = dele = ins = hits = sent_err = 0
    # jiwer 3 refuses empty references, so score those here: all hypothesis words are insertions
    keep = [i for i, r in enumerate(ref_words) if r]
    pairs: list = [(len(hyp_words[i]), 0) if not r else None for i, r in enumerate(ref_words)] if by_utterance else []
    for i, r in enumerate(ref_words):
        if not r:
            ins += len(hyp_words[i])
            sent_err += bool(hyp_words[i])
    if keep:
        import jiwer

        out = jiwer.process_words(
            [" ".join(ref_words[i]) for i in keep],
            [" ".join(hyp_words[i]) for i in keep],
        )
        sub += out.substitutions
        dele += out.deletions
        ins += out.insertions
        hits += out.hits
        sent_err += sum(1 for chunks in out.alignments if any(c.type != "equal" for c in chunks))
        # an empty hypothesis yields no alignment chunk in some jiwer versions; count it here
        sent_err += sum(1 for j, chunks in enumerate(out.alignments) if not chunks and ref_words[keep[j]])
        if by_utterance:
            for i, chunks in zip(keep, out.alignments):
                pairs[i] = (_chunk_errors(chunks) if chunks else len(ref_words[i]), len(ref_words[i]))
    words = sum(len(r) for r in ref_words)
    if hits + sub + dele != words:  # pragma: no cover - guards against a jiwer behaviour change
        raise RuntimeError(f"jiwer counts do not add up: hits {hits} + sub {sub} + del {dele} != {words} reference words")
    result = WerResult(sub=sub, del_=dele, ins=ins, hits=hits, words=words, sentences=len(refs), sentence_errors=sent_err)
    return result, pairs


def _chunk_errors(chunks) -> int:
    """Errors in one utterance's jiwer alignment: one per substituted, deleted or inserted word."""
    errors = 0
    for c in chunks:
        if c.type == "insert":
            errors += c.hyp_end_idx - c.hyp_start_idx
        elif c.type != "equal":  # substitute, delete: one error per reference word
            errors += c.ref_end_idx - c.ref_start_idx
    return errors
