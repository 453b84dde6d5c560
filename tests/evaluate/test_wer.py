import math

import pytest

from ekd_compress.evaluate import WerResult, compute_wer, merge_wer


def test_counts_sub_and_ins():
    r = compute_wer(["a b c d"], ["a x c d e"])
    assert (r.sub, r.del_, r.ins, r.hits, r.words) == (1, 0, 1, 3, 4)
    assert r.wer == pytest.approx(50.0)
    assert r.to_dict() == {"wer": pytest.approx(50.0), "sub": 1, "del": 0, "ins": 1, "words": 4}
    assert list(r.to_dict()) == ["wer", "sub", "del", "ins", "words"]


def test_deletions_and_empty_hypothesis():
    r = compute_wer(["a b c", "d e"], ["a c", ""])
    assert (r.sub, r.del_, r.ins, r.words, r.sentences, r.sentence_errors) == (0, 3, 0, 5, 2, 2)
    assert r.wer == pytest.approx(60.0)


def test_empty_reference_counts_insertions():
    r = compute_wer(["", "a"], ["x y", "a"])
    assert (r.ins, r.words, r.hits, r.sentence_errors) == (2, 1, 1, 1)
    assert r.wer == pytest.approx(200.0)


def test_no_reference_words_is_nan():
    assert math.isnan(compute_wer([""], [""]).wer)
    assert math.isnan(compute_wer([], []).wer)


def test_whitespace_is_ignored():
    r = compute_wer(["  a   b "], ["a b"])
    assert r.errors == 0 and r.words == 2


def test_merge_sums_counts():
    a = compute_wer(["a b c d"], ["a x c d e"])
    b = compute_wer(["p q"], ["p"])
    m = a.merge(b)
    assert (m.sub, m.del_, m.ins, m.words, m.sentences) == (1, 1, 1, 6, 2)
    assert m == merge_wer([a, b]) == a + b
    assert m.wer == pytest.approx(50.0)
    assert merge_wer([]) == WerResult()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        compute_wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of strings"):
        compute_wer("a b", "a b")
    with pytest.raises(TypeError, match=r"hyps\[0\]"):
        compute_wer(["a"], [[1, 2]])
