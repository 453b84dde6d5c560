"""The verdict table: ratios computed from scored rows, targets, the split it is read on."""
import pytest

from ekd_compress.pipeline.verdict import TARGETS, verdict, verdict_markdown, verdict_split


def rows(**wers):
    kinds = {"gru": "member", "lstm": "member", "ensemble": "ensemble", "baseline": "baseline",
             "baseline_s1": "baseline", "student": "student", "student_s1": "student", "essence_k1": "student",
             "kd_all": "kd", "control_baseline_teacher": "kd"}
    return [{"name": n, "kind": kinds[n], "wer": w} for n, w in wers.items()]


SCORES = rows(gru=10.0, lstm=8.0, ensemble=6.0, baseline=10.0, baseline_s1=14.0, student=4.0, student_s1=5.0,
              essence_k1=4.0, kd_all=5.0, control_baseline_teacher=6.0)


def test_ratios_and_targets_by_hand():
    v = {r["claim"]: r for r in verdict(SCORES, "1")}
    assert v["ensemble vs best member"]["ratio"] == pytest.approx(6 / 8)            # 0.75 <= 0.85
    assert v["ensemble vs best member"]["met"]
    assert v["student vs ensemble"]["ratio"] == pytest.approx(4.5 / 6)              # 0.75 <= 0.8
    assert v["student vs baseline (seed mean)"]["ratio"] == pytest.approx(4.5 / 12)
    assert v["student vs baseline (best seed)"]["ratio"] == pytest.approx(4.5 / 10)
    assert v["student vs control"]["ratio"] == pytest.approx(4.5 / 6)               # 0.75 <= 0.9
    assert v["best essence k vs KD-all"]["ratio"] == pytest.approx(4 / 5)
    assert all(r["met"] for r in v.values())
    assert {r["target"] for r in v.values()} <= set(TARGETS.values())


def test_a_claim_that_fails_is_marked_and_missing_models_are_left_out():
    worse = rows(gru=10.0, ensemble=9.0, baseline=10.0, student=9.5)
    v = {r["claim"]: r for r in verdict(worse, "all")}
    assert not v["ensemble vs best member"]["met"]  # 0.9 > 0.85
    assert not v["student vs ensemble"]["met"]
    assert "student vs control" not in v and "best essence k vs KD-all" not in v  # no control, no essence k


def test_when_dev_chose_kd_all_the_best_essence_k_on_dev_is_judged():
    test = rows(essence_k1=4.0, kd_all=5.0) + [{"name": "essence_k2", "kind": "student", "wer": 3.0}]
    dev = rows(essence_k1=6.0, kd_all=5.5) + [{"name": "essence_k2", "kind": "student", "wer": 7.0}]
    v = {r["claim"]: r for r in verdict(test, "all", dev)}
    assert v["best essence k vs KD-all"]["wer"] == 4.0  # k = 1 is best on dev, whatever test says


def test_verdict_is_read_on_the_test_split_and_says_so():
    assert verdict_split({"dev": {}, "test": {}, "test_noisy10db": {}}) == "test"
    assert verdict_split({"dev": {}, "dev_noisy10db": {}}) == "dev"
    results = {"tests": {"dev": {"models": SCORES}, "test": {"models": SCORES}, "test_noisy10db": {"models": SCORES}},
               "chosen_k": "1",
               "restarts": {"baseline_s1": [{"seed": 1, "epoch": 4, "dev_wer": 100.0, "dev_blank": 1.0,
                                              "reason": "all blank"}]}}
    md = verdict_markdown(results)
    assert "Verdict on `test`:" in md and "Verdict on `test_noisy10db`" in md and "Verdict on `dev`" not in md
    assert "| student vs ensemble | 4.50 | 6.00 | 0.750 | <= 0.8 | yes |" in md
    assert "baseline_s1: seed 1 stopped at epoch 4" in md
    assert md.endswith("\n\n"), "without a blank line the next paragraph would join the list (or a table's rows)"
    del results["restarts"]
    assert verdict_markdown(results).endswith("|\n\n")


def test_a_recipes_targets_replace_the_defaults_they_name():
    targets = {"ensemble vs best member": 1.0, "student vs baseline (seed mean)": 0.9}
    worse = rows(gru=10.0, ensemble=9.0, baseline=10.0, student=8.5)
    v = {r["claim"]: r for r in verdict(worse, "all", targets=targets)}
    assert v["ensemble vs best member"]["target"] == 1.0 and v["ensemble vs best member"]["met"]  # 0.9 <= 1.0
    assert v["student vs baseline (seed mean)"]["target"] == 0.9 and v["student vs baseline (seed mean)"]["met"]
    assert v["student vs ensemble"]["target"] == TARGETS["student vs ensemble"]  # not named: the default
    assert not verdict(worse, "all")[0]["met"]  # the same numbers against the default 0.85
    results = {"tests": {"test": {"models": worse}}, "chosen_k": "all", "verdict_targets": targets}
    assert "| ensemble vs best member | 9.00 | 10.00 | 0.900 | <= 1 | yes |" in verdict_markdown(results)


@pytest.mark.parametrize("override, expect", [
    ("distill.verdict_targets={student beats all: 1.0}", "unknown claim 'student beats all'"),
    ("distill.verdict_targets={student vs control: 0}", "a ratio > 0"),
])
def test_a_bad_target_is_refused_at_load(override, expect):
    from ekd_compress.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=expect):
        load_recipe(None, [override])


def test_the_phone_recipe_and_the_demo_judge_their_issues_targets():
    from ekd_compress.recipe import load_recipe

    targets = load_recipe("recipes/speechocean762.yaml").distill.verdict_targets
    assert targets == {"ensemble vs best member": 1.0, "student vs ensemble": 1.0,
                       "student vs baseline (seed mean)": 0.9, "student vs control": 1.0}
    assert load_recipe("recipes/demo.yaml").distill.verdict_targets == {
        "ensemble vs best member": 1.0, "student vs baseline (seed mean)": 1.0}
    assert load_recipe("recipes/fsdd.yaml").distill.verdict_targets == {}  # FSDD's are the defaults
