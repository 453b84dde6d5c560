"""Recipe loading: typed values, overrides, environment, and errors that list valid keys."""
import dataclasses

import pytest
import yaml

from ekd_compress.recipe import Recipe, RecipeError, load_recipe, save_recipe


def write(tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_values(tmp_path):
    p = write(tmp_path, {"name": "x", "train": {"epochs": 3}, "members": [{"name": "t", "arch": "tdnn", "params": {"hidden": 32}}]})
    r = load_recipe(p)
    assert isinstance(r, Recipe)
    assert r.train.epochs == 3 and r.train.lr == Recipe().train.lr
    assert r.members[0].arch == "tdnn" and r.members[0].params == {"hidden": 32}
    assert r.out_dir == "exp/x"  # interpolation of ${name}


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, {"train": {"epoch": 3}})
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert "train.epoch" in str(e.value) and "epochs" in str(e.value)


def test_overrides(tmp_path):
    p = write(tmp_path, {"name": "x"})
    r = load_recipe(p, ["distill.lam=0.3", "distill.ks=[1,3]", "data.fsdd.n_train=7"])
    assert r.distill.lam == 0.3 and r.distill.ks == [1, 3] and r.data.fsdd.n_train == 7
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(p, ["distill.lam"])
    with pytest.raises(RecipeError, match="Integer"):
        load_recipe(p, ["train.epochs=abc"])


def test_invalid_choices_and_ranges(tmp_path):
    p = write(tmp_path, {"name": "x"})
    with pytest.raises(RecipeError, match="distill.mode"):
        load_recipe(p, ["distill.mode=topk"])
    with pytest.raises(RecipeError, match="lam"):
        load_recipe(p, ["distill.lam=1.5"])
    with pytest.raises(RecipeError, match="ks"):
        load_recipe(p, ["distill.ks=[0]"])
    with pytest.raises(RecipeError, match=r"distill.student_init='baseline' is not one of \['scratch', 'guide'\]"):
        load_recipe(p, ["distill.student_init=baseline"])


def test_env_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EKD_DATA", "/corpora")
    r = load_recipe(write(tmp_path, {"name": "x"}))
    assert r.data.root == "/corpora" and r.data.fsdd.root == "/corpora/fsdd"


def test_safe_yaml_refuses_code_tags(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_saved_recipe_round_trips(tmp_path):
    r = load_recipe(write(tmp_path, {"name": "x", "distill": {"ks": [1, "all"]}}), ["train.epochs=2"])
    out = save_recipe(r, tmp_path / "exp" / "recipe.yaml")
    assert load_recipe(out) == r


def test_missing_recipe(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_cross_field_checks(tmp_path):
    p = write(tmp_path, {"name": "x", "members": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(RecipeError, match="student_k"):
        load_recipe(p, ["distill.student_k=3"])
    with pytest.raises(RecipeError, match="distill.cache=fly"):
        load_recipe(p, ["distill.teacher_view=augmented"])  # the disk cache holds clean-feature targets only
    assert load_recipe(p, ["distill.teacher_view=augmented", "distill.cache=fly"]).distill.teacher_view == "augmented"
    with pytest.raises(RecipeError, match="teacher_view"):
        load_recipe(p, ["distill.teacher_view=noisy"])
    with pytest.raises(RecipeError, match="fusion_weights"):
        load_recipe(p, ["distill.fusion_weights=[1.0]"])
    with pytest.raises(RecipeError, match="coincidence_threshold"):
        load_recipe(p, ["distill.coincidence_threshold=2"])
    with pytest.raises(RecipeError, match="fusion_tune='best'"):
        load_recipe(p, ["distill.fusion_tune=best"])
    with pytest.raises(RecipeError, match="fusion_weights=null"):
        load_recipe(p, ["distill.fusion_tune=dev", "distill.fusion_weights=[1,1]"])
    with pytest.raises(RecipeError, match="fusion_grid=0.3"):
        load_recipe(p, ["distill.fusion_grid=0.3"])
    assert load_recipe(p, ["distill.fusion_tune=dev"]).distill.fusion_tune == "dev"
    pooled = ["distill.fusion_tune=select", "distill.fusion_on=[dev, dev_noisy10db]"]
    assert load_recipe(p, pooled).distill.fusion_on == ["dev", "dev_noisy10db"]
    with pytest.raises(RecipeError, match="fusion_tune=none searches nothing"):  # the option would do nothing
        load_recipe(p, [*pooled, "distill.fusion_tune=none"])
    for bad in ("[dev, test]", "[test_noisy10db]", "[]", "[dev, dev]"):  # never a test split; each set once
        with pytest.raises(RecipeError, match=r"distill.fusion_on="):
            load_recipe(p, [f"distill.fusion_on={bad}"])
    # the guide pinned by name (run O's is baseline_s1): seeds added later cannot move it
    seeds = "distill.seeds=[0, 1, 2]"
    assert load_recipe(p, [seeds, "distill.guide=baseline_s1"]).distill.guide == "baseline_s1"
    with pytest.raises(RecipeError, match=r"guide='baseline_s3'.*\['baseline', 'baseline_s1', 'baseline_s2'\]"):
        load_recipe(p, [seeds, "distill.guide=baseline_s3"])  # no such seed in the recipe
    assert load_recipe(p, ["distill.reguide=best_member"]).distill.reguide == "best_member"
    with pytest.raises(RecipeError, match=r"distill.reguide='first'.*'ensemble'"):
        load_recipe(p, ["distill.reguide=first"])
    with pytest.raises(RecipeError, match="has none"):
        load_recipe(p, ["distill.reguide=ensemble", "members=[]"])
    clash = write(tmp_path, {"name": "x", "members": [{"name": "a"}, {"name": "a_r2"}]})
    with pytest.raises(RecipeError, match=r"\['a_r2'\] would share a name"):
        load_recipe(clash, ["distill.reguide=ensemble"])
    with pytest.raises(RecipeError, match="reserved"):
        load_recipe(write(tmp_path, {"members": [{"name": "student"}]}))
    p = write(tmp_path, {"name": "x", "members": [{"name": "a"}, {"name": "b", "lr": 4e-4}]})
    assert [m.lr for m in load_recipe(p).members] == [None, 4e-4]  # a member's own peak LR; None: member_train.lr
    with pytest.raises(RecipeError, match=r"member 'b': lr=0.0 must be > 0"):
        load_recipe(p, ["members=[{name: a}, {name: b, lr: 0}]"])
    with pytest.raises(RecipeError, match=r"baseline.lr=0.001: .* train.lr"):
        load_recipe(p, ["baseline.lr=1e-3"])
    sizes = "distill.student_sizes=[{name: s8, params: {hidden: 8}}]"
    assert load_recipe(p, ["distill.seeds=[0,1]", sizes, "distill.sweep_seeds=2"]).distill.sweep_seeds == 2
    with pytest.raises(RecipeError, match=r"sweep_seeds=3: .* 1 to 2 \(distill.seeds=\[0, 1\]\)"):
        load_recipe(p, ["distill.seeds=[0,1]", sizes, "distill.sweep_seeds=3"])
    with pytest.raises(RecipeError, match="sweep_seeds=0"):
        load_recipe(p, [sizes, "distill.sweep_seeds=0"])
    with pytest.raises(RecipeError, match=r"'s8_s1' ends like a seed's model .* e.g. s8w1"):  # sweep_s8's seed 1
        load_recipe(p, ["distill.student_sizes=[{name: s8}, {name: s8_s1}]"])
    with pytest.raises(RecipeError, match=r"'s8_ctc' ends like a size's CTC-only start .* does not end in _ctc"):  # sweep_s8's
        load_recipe(p, ["distill.student_sizes=[{name: s8}, {name: s8_ctc}]"])


def test_a_setting_for_a_null_member_or_student_section_starts_from_train():
    # member_train: null means "as train"; one setting given for it must not reset the rest to the defaults
    r = load_recipe("recipes/demo.yaml", ["member_train.parallel_jobs=3", "train.epochs=7"])
    assert r.member_train is not None and r.member_train.parallel_jobs == 3
    assert dataclasses.replace(r.member_train, parallel_jobs=r.train.parallel_jobs) == r.train
    assert r.member_train.epochs == 7 and r.student_train is None
    # a section the recipe sets keeps its own values
    fsdd = load_recipe("recipes/fsdd.yaml", ["member_train.parallel_jobs=1", "train.epochs=7"])
    assert fsdd.member_train.epochs == 48 and fsdd.member_train.parallel_jobs == 1
