"""The paired bootstrap over utterances: per-utterance counts, resampled rates, intervals, the verdict's use."""
import random

import numpy as np
import pytest

from ekd_compress.evaluate.bootstrap import bootstrap_rates, interval, utterance_counts
from ekd_compress.evaluate.error_rates import score_texts
from ekd_compress.evaluate.wer import compute_wer, compute_wer_by_utterance
from ekd_compress.pipeline.verdict import verdict, verdict_markdown


def test_per_utterance_errors_by_hand_and_they_sum_to_the_set():
    refs = ["a b c", "a b", "", "x y z w", "a"]
    hyps = ["a x c d", "", "q", "x z w", "a"]
    # sub b->x + ins d; 2 deletions; 1 insertion on an empty reference; 1 deletion (y); none
    assert compute_wer_by_utterance(refs, hyps)[1] == [(2, 3), (2, 2), (1, 0), (1, 4), (0, 1)]
    rng = random.Random(0)
    vocab = "one two three four five".split()
    refs = [" ".join(rng.choices(vocab, k=rng.randint(0, 6))) for _ in range(200)]
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(0, 6))) for _ in range(200)]
    total, pairs = compute_wer_by_utterance(refs, hyps)
    assert total == compute_wer(refs, hyps)
    assert sum(e for e, _ in pairs) == total.errors and sum(n for _, n in pairs) == total.words


def test_score_texts_keeps_per_utterance_counts_of_each_measure():
    row = score_texts(["the cat", "a"], ["the bat", ""])
    assert row["utterances"] == {"wer": [[1, 2], [1, 1]], "cer": [[1, 6], [1, 1]]}


def row(name: str, kind: str, errors: list[int], units: list[int], ids=None) -> dict:
    ids = ids or [f"u{i:03d}" for i in range(len(errors))]
    return {"name": name, "kind": kind, "wer": 100.0 * sum(errors) / sum(units),
            "utterances": {"ids": ids, "wer": [[e, n] for e, n in zip(errors, units)]}}


def test_draws_are_paired_and_deterministic():
    units = [5] * 40
    a = row("a", "baseline", [1, 0] * 20, units)
    same = row("b", "baseline", [1, 0] * 20, units)
    r1 = bootstrap_rates([a, same], "wer", resamples=300, seed=1)
    r2 = bootstrap_rates([a, same], "wer", resamples=300, seed=1)
    assert np.array_equal(r1["a"], r2["a"])
    assert np.array_equal(r1["a"], r1["b"]), "the same draws for every model: identical models give ratio 1 always"
    assert r1["a"].std() > 0, "the draws must vary the set"
    assert r1["a"].mean() == pytest.approx(a["wer"], rel=0.05)


def test_rows_are_matched_by_utterance_id_not_order():
    units = [3, 4, 5]
    a = row("a", "baseline", [1, 2, 0], units, ids=["x", "y", "z"])
    b = row("b", "baseline", [0, 2, 1], [5, 4, 3], ids=["z", "y", "x"])  # a's errors in another order
    r = bootstrap_rates([a, b], "wer", resamples=50)
    assert np.allclose(r["a"], r["b"])


def test_no_interval_without_counts_or_on_different_sets():
    a = row("a", "baseline", [1, 0], [3, 3])
    assert bootstrap_rates([a, {"name": "old", "kind": "student", "wer": 5.0}], "wer") is None
    assert bootstrap_rates([a, row("b", "student", [1, 0], [3, 3], ids=["p", "q"])], "wer") is None
    assert bootstrap_rates([a, row("b", "student", [1, 0], [3, 4])], "wer") is None  # other references
    assert utterance_counts([a], "cer") is None  # no counts of that measure


def test_interval_is_the_central_percentile_range():
    assert interval(np.arange(1001.0)) == pytest.approx((25.0, 975.0))
    assert interval(np.arange(1001.0), level=0.5) == pytest.approx((250.0, 750.0))
    with pytest.raises(ValueError, match="level"):
        interval(np.arange(3.0), level=1.0)


def verdict_rows(student_errors: list[int], baseline_errors: list[int], units: list[int]) -> list[dict]:
    return [row("baseline", "baseline", baseline_errors, units), row("student", "student", student_errors, units)]


def test_verdict_says_whether_the_set_decides_a_claim():
    units = [4] * 300
    clear = verdict_rows([0] * 280 + [1] * 20, [1] * 150 + [0] * 150, units)  # 20 against 150 errors
    v = {r["claim"]: r for r in verdict(clear, None)}["student vs baseline (seed mean)"]
    assert v["ratio"] == pytest.approx(20 / 150) and v["met"]
    lo, hi = v["ci95"]
    assert lo <= v["ratio"] <= hi < 0.6 and v["decided"] == "met"
    close = verdict_rows([1] * 10 + [0] * 290, [0] * 100 + [1] * 11 + [0] * 189, units)  # 10 against 11 errors,
    v = {r["claim"]: r for r in verdict(close, None)}["student vs baseline (best seed)"]          # elsewhere
    assert v["met"] and v["ci95"][0] < 1.0 < v["ci95"][1] and v["decided"] == "undecided"
    nested = verdict_rows([1] * 10 + [0] * 290, [1] * 11 + [0] * 289, units)  # the same 10 errors and one more:
    v = {r["claim"]: r for r in verdict(nested, None)}["student vs baseline (best seed)"]  # never worse in a draw
    assert v["ci95"][1] <= 1.0 and v["decided"] == "met"
    far = verdict_rows([1] * 150 + [0] * 150, [1] * 20 + [0] * 280, units)
    v = {r["claim"]: r for r in verdict(far, None)}["student vs baseline (best seed)"]
    assert not v["met"] and v["ci95"][0] > 1.0 and v["decided"] == "not met"


def test_rows_without_counts_keep_the_old_verdict_and_say_n_a():
    plain = [{"name": "baseline", "kind": "baseline", "wer": 10.0}, {"name": "student", "kind": "student", "wer": 5.0}]
    v = verdict(plain, None)
    assert v and all(r["ci95"] is None and r["decided"] is None and r["decides_at"] is None for r in v)
    md = verdict_markdown({"tests": {"test": {"models": plain}}})
    assert "| student vs baseline (seed mean) | 5.00 | 10.00 | 0.500 | <= 0.6 | yes | n/a | n/a | n/a |" in md


def test_a_larger_scale_draws_a_larger_set_and_narrows_the_spread():
    units = [5] * 60
    a = row("a", "baseline", [1, 0, 2] * 20, units)
    one, four = (bootstrap_rates([a], "wer", resamples=2000, seed=3, scale=s)["a"] for s in (1, 4))
    assert one.mean() == pytest.approx(a["wer"], rel=0.03) and four.mean() == pytest.approx(a["wer"], rel=0.03)
    assert four.std() == pytest.approx(one.std() / 2, rel=0.15), "4x the utterances: half the spread"
    with pytest.raises(ValueError, match="scale=0"):
        bootstrap_rates([a], "wer", scale=0)


def test_verdict_sizes_the_set_that_would_decide_an_undecided_claim():
    units = [4] * 300
    claim = "student vs baseline (best seed)"
    # 20 against 30 errors on different utterances: 0.667, undecided on this set, decided on a larger one
    mid = verdict_rows([1] * 20 + [0] * 280, [0] * 100 + [1] * 30 + [0] * 170, units)
    v = {r["claim"]: r for r in verdict(mid, None)}[claim]
    assert v["decided"] == "undecided" and v["decides_at"]["decided"] == "met"
    scale = v["decides_at"]["scale"]
    assert scale in (2, 4, 8, 16), scale
    for s, decided in ((scale // 2, False), (scale, True)):  # the first size whose interval lies under the target
        drawn = bootstrap_rates(mid, "wer", scale=s)
        assert (interval(drawn["student"] / drawn["baseline"])[1] <= 1.0) == decided, s
    assert f"| {scale}× (met) |" in verdict_markdown({"tests": {"test": {"models": mid}}})
    # 10 against 11: a ratio this near its target stays undecided even on 64 x the set
    close = verdict_rows([1] * 10 + [0] * 290, [0] * 100 + [1] * 11 + [0] * 189, units)
    v = {r["claim"]: r for r in verdict(close, None)}[claim]
    assert v["decides_at"] == {"scale": None, "decided": "undecided"}
    assert "| undecided | > 64× |" in verdict_markdown({"tests": {"test": {"models": close}}})
    # decided on the set itself: scale 1, written as "this set"
    far = verdict_rows([1] * 150 + [0] * 150, [1] * 20 + [0] * 280, units)
    v = {r["claim"]: r for r in verdict(far, None)}[claim]
    assert v["decides_at"] == {"scale": 1, "decided": "not met"}
    assert "| not met | this set |" in verdict_markdown({"tests": {"test": {"models": far}}})
