"""Word, character and phone error rates: one edit-distance scorer, three kinds of unit.

All three are `compute_wer` (jiwer's alignment) over different units, in percent:

  wer  words of the normalised text (split on white space)
  cer  characters of the normalised text, spaces excluded: `"ab c"` is scored as `a b c`
  per  phones. Reference phones are the lexicon's first pronunciation of each reference
       word (the training target, see `ekd_compress.contract.lexicon`); the hypothesis of a
       phone model is already a phone string (`"HH AH L OW"`). A reference word missing
       from the lexicon contributes no phones and is counted in `oov_words`.

A phone model writes phones, not words, so its WER and CER are undefined: `score_texts`
returns them as None (JSON null) rather than a number that compares phones with letters.
`METRICS` names the measures a recipe may choose as its primary one (`data.metric`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ekd_compress.evaluate.wer import WerResult, compute_wer, compute_wer_by_utterance
from ekd_compress.contract.lexicon import Lexicon

METRICS = ("wer", "cer", "per")
LABELS = {"wer": "WER", "cer": "CER", "per": "PER"}


def char_units(text: str) -> str:
    """`"ab c"` -> `"a b c"`: each character one unit for `compute_wer`, spaces dropped."""
    return " ".join(text.replace(" ", ""))


def phone_reference(texts: Sequence[str], lexicon: Lexicon) -> tuple[list[str], int]:
    """Reference words -> (phone strings of their first pronunciations, out-of-lexicon word count)."""
    out, oov = [], 0
    for t in texts:
        phones, missing = lexicon.transcribe(t)
        out.append(" ".join(phones))
        oov += len(missing)
    return out, oov


def units_for(metric: str, refs: Sequence[str], hyps: Sequence[str],
              lexicon: Optional[Lexicon] = None) -> tuple[list[str], list[str], int]:
    """(reference units, hypothesis units, out-of-lexicon reference words) for `metric`.

    Units are space-separated strings, one per utterance, ready for `compute_wer`. For
    "per" the hypotheses must already be phone strings and `lexicon` is required.
    """
    if metric == "wer":
        return list(refs), list(hyps), 0
    if metric == "cer":
        return [char_units(r) for r in refs], [char_units(h) for h in hyps], 0
    if metric == "per":
        if lexicon is None:
            raise ValueError("the phone error rate needs a lexicon (a phone model's lexicon.txt)")
        ref_phones, oov = phone_reference(refs, lexicon)
        return ref_phones, list(hyps), oov
    raise ValueError(f"metric {metric!r} is unknown; use one of {list(METRICS)}")


def error_rate(metric: str, refs: Sequence[str], hyps: Sequence[str], lexicon: Optional[Lexicon] = None) -> WerResult:
    """Counts of `metric` ("wer", "cer" or "per"); `.wer` of the result is that rate in percent."""
    r, h, _ = units_for(metric, refs, hyps, lexicon)
    return compute_wer(r, h)


def _counts(res: WerResult) -> dict[str, Any]:
    return {"sub": res.sub, "del": res.del_, "ins": res.ins, "units": res.words}


def _rate(res: WerResult) -> Optional[float]:
    return None if res.words == 0 else res.wer


def available_metrics(token_kind: str) -> tuple[str, ...]:
    """The error rates a model with this token kind can be scored on."""
    return ("per",) if token_kind == "phone" else ("wer", "cer")


def score_texts(refs: Sequence[str], hyps: Sequence[str], token_kind: str = "char",
                lexicon: Optional[Lexicon] = None) -> dict[str, Any]:
    """One model's scored set -> the fields of its `evaluate --json` row.

    Always: `wer`, `sub`, `del`, `ins`, `words` (word level; None for phone models) and
    `cer` with `cer_counts` {sub, del, ins, units} (None for phone models). Phone models
    add `per` with `per_counts` {sub, del, ins, units, oov_words}. Rates in percent.
    `utterances` holds, per measure the row has, one [errors, reference units] pair per
    utterance in input order (the resampling unit of ekd_compress.evaluate.bootstrap).
    """
    row: dict[str, Any] = {"wer": None, "sub": None, "del": None, "ins": None, "words": None,
                           "cer": None, "cer_counts": None}
    if token_kind == "phone":
        r, h, oov = units_for("per", refs, hyps, lexicon)
        res, per_utt = compute_wer_by_utterance(r, h)
        row.update(per=_rate(res), per_counts={**_counts(res), "oov_words": oov}, utterances={"per": _lists(per_utt)})
        return row
    words, word_utt = compute_wer_by_utterance(refs, hyps)
    row.update(words.to_dict())
    chars, char_utt = compute_wer_by_utterance(*units_for("cer", refs, hyps)[:2])
    row.update(cer=_rate(chars), cer_counts=_counts(chars))
    row["utterances"] = {"wer": _lists(word_utt), "cer": _lists(char_utt)}
    return row


def _lists(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """[(errors, units), ...] -> [[errors, units], ...], as JSON keeps them."""
    return [[e, n] for e, n in pairs]


def metric_of(row: dict[str, Any], metric: str) -> Optional[float]:
    """A row's value of `metric` (percent), None when the model cannot be scored on it."""
    value = row.get(metric)
    return None if value is None else float(value)


def metric_counts(row: dict[str, Any], metric: str) -> Optional[tuple[int, int, int]]:
    """(sub, del, ins) of `metric` in a row, or None."""
    if metric == "wer":
        return None if row.get("sub") is None else (row["sub"], row["del"], row["ins"])
    c = row.get(f"{metric}_counts")
    return None if not c else (c["sub"], c["del"], c["ins"])
