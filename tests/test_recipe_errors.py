"""User-facing recipe errors: one line naming the key, the bad value and the fix, before any stage runs."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from ekd_compress.cli.main import cli
from ekd_compress.recipe import RecipeError, load_recipe


def _error_lines(output: str) -> list[str]:
    return [line for line in output.strip().splitlines() if line.strip()]


@pytest.mark.parametrize("override, expect", [
    ("train.epochs=three", ["--set train.epochs=three", "'three'", "an integer", "train.epochs=10"]),
    ("distill.lam=half", ["--set distill.lam=half", "'half'", "a number"]),
    ("train.sortagrad=maybe", ["--set train.sortagrad=maybe", "true or false"]),
])
def test_bad_set_value_names_its_key(override, expect):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_bad_value_in_the_file_names_key_and_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochs": "ten"}}))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert f"train.epochs in {p}" in str(e.value) and "'ten'" in str(e.value)


def test_unknown_architecture_and_params_refused_at_load():
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["baseline.arch=conformer"])
    assert "baseline.arch='conformer'" in str(e.value) and "'gru'" in str(e.value) and "registry.py" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(None, ["baseline.params={hiden: 3}"])
    assert "hiden" in str(e.value) and "hidden" in str(e.value)


def test_distill_refuses_unknown_architecture_before_any_stage(tmp_path):
    exp = tmp_path / "exp"
    r = CliRunner().invoke(cli, ["distill", "demo", "--out", str(exp), "--no-mlflow", "--set", "baseline.arch=conformer"])
    assert r.exit_code == 1
    lines = _error_lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("Error: baseline.arch='conformer'"), r.output
    assert not exp.exists(), "no stage may run (nor the experiment directory be made) for a recipe that cannot run"


def test_distill_bad_set_value_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["distill", "demo", "--out", str(tmp_path / "e"), "--set", "train.epochs=three"])
    assert r.exit_code == 1 and len(_error_lines(r.output)) == 1 and "train.epochs" in r.output, r.output


def test_bad_kd_fade_refused_at_load_naming_the_key():
    with pytest.raises(RecipeError, match=r"^distill.kd_fade: kd_fade=\[0.9, 0.2\] is invalid; use \[start, end\]"):
        load_recipe(None, ["distill.kd_fade=[0.9, 0.2]"])
    assert load_recipe(None, ["distill.kd_fade=[0.5, 0.8]"]).distill.kd_fade == [0.5, 0.8]
    assert load_recipe(None).distill.kd_fade is None
