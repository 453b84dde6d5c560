"""Character and phone error rates against values worked out by hand."""
from __future__ import annotations

import pytest

from ekd_compress.evaluate.error_rates import char_units, error_rate, metric_counts, score_texts
from ekd_compress.contract.lexicon import Lexicon


@pytest.fixture
def lexicon():
    lex = Lexicon()
    for word, phones in [("the", "DH AH"), ("cat", "K AE T"), ("sat", "S AE T"), ("a", "AH"), ("a", "EY")]:
        lex.add(word.upper(), phones.split())
    return lex


def test_cer_excludes_spaces():
    assert char_units("ab c") == "a b c"
    # "the cat" vs "the bat": 6 characters (t h e c a t), one substitution -> 1/6
    res = error_rate("cer", ["the cat"], ["the bat"])
    assert (res.sub, res.del_, res.ins, res.words) == (1, 0, 0, 6)
    assert res.wer == pytest.approx(100 / 6)
    # a missing space is no character error, but two word errors (ab c -> abc: 1 sub + 1 del of 2 words)
    assert error_rate("cer", ["ab c"], ["abc"]).wer == 0.0
    assert error_rate("wer", ["ab c"], ["abc"]).wer == 100.0
    # "hello" vs "helo wor" (h e l o w o r): h e l match, l -> o substituted, w inserted, o matches,
    # r inserted: 3 edits over 5 reference characters (1 deletion + 3 insertions would be 4, not minimal)
    res = error_rate("cer", ["hello"], ["helo wor"])
    assert (res.sub, res.del_, res.ins) == (1, 0, 2) and res.wer == pytest.approx(60.0)


def test_per_against_the_first_pronunciation(lexicon):
    # reference "the cat sat" -> DH AH K AE T S AE T (8 phones)
    # hypothesis DH K AE D S AE T IY: AH deleted, T -> D substituted, IY inserted -> 3 / 8
    res = error_rate("per", ["the cat sat"], ["DH K AE D S AE T IY"], lexicon)
    assert (res.sub, res.del_, res.ins, res.words) == (1, 1, 1, 8)
    assert res.wer == pytest.approx(37.5)
    # "a" has two pronunciations; the reference uses the first (AH), so EY is a substitution
    assert error_rate("per", ["a cat"], ["EY K AE T"], lexicon).wer == pytest.approx(25.0)
    with pytest.raises(ValueError, match="needs a lexicon"):
        error_rate("per", ["the"], ["DH AH"])


def test_score_texts_rows_for_char_and_phone_models(lexicon):
    row = score_texts(["the cat", "a"], ["the bat", "a"])
    assert row["wer"] == pytest.approx(100 / 3) and (row["sub"], row["del"], row["ins"], row["words"]) == (1, 0, 0, 3)
    assert row["cer"] == pytest.approx(100 / 7) and row["cer_counts"] == {"sub": 1, "del": 0, "ins": 0, "units": 7}
    assert "per" not in row and metric_counts(row, "cer") == (1, 0, 0)
    # a phone model writes no words: WER and CER are null, PER is scored, unknown reference words counted
    row = score_texts(["the cat", "the dog"], ["DH AH K AE T", "DH AH D AO G"], "phone", lexicon)
    assert row["wer"] is None and row["cer"] is None and row["sub"] is None
    # refs DH AH K AE T | DH AH (dog unknown): hyp 2 adds D AO G -> 3 insertions over 7 phones
    assert row["per"] == pytest.approx(300 / 7)
    assert row["per_counts"] == {"sub": 0, "del": 0, "ins": 3, "units": 7, "oov_words": 1}
    assert metric_counts(row, "per") == (0, 0, 3) and metric_counts(row, "wer") is None
    assert row["utterances"] == {"per": [[0, 5], [3, 2]]}  # per utterance, phones: what the verdict resamples
