"""Recipes by name from any directory, `recipe show/list`, and the experiment-folder guard (issue 16)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ekd_compress.cli.main import cli
from ekd_compress.recipe import RecipeError, load_recipe, save_recipe
from ekd_compress.recipe_files import check_out_dir, find_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_recipe_by_name_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EKD_RECIPES", raising=False)
    assert find_recipe("demo") == ROOT / "recipes" / "demo.yaml"
    assert find_recipe("fsdd.yaml") == ROOT / "recipes" / "fsdd.yaml"
    assert load_recipe("demo").name == "demo"
    with pytest.raises(RecipeError) as e:
        find_recipe("demoo")
    assert "demoo" in str(e.value) and "demo, fsdd" in str(e.value)


def test_own_recipe_folder_comes_first(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "demo.yaml").write_text(yaml.safe_dump({"name": "my-demo"}))
    monkeypatch.setenv("EKD_RECIPES", str(mine))
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == "my-demo"


def test_recipe_show_prints_the_resolved_recipe_in_a_subprocess(tmp_path):
    """From a directory without recipes/, by name, with an override: the YAML distill would run."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "ekd_compress", "recipe", "show", "fsdd", "--set", "train.epochs=3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["name"] == "fsdd" and shown["train"]["epochs"] == 3 and shown["data"]["sample_rate"] == 8000
    assert shown["data"]["fsdd"]["root"] == "data/fsdd", "interpolations are resolved"


def test_recipe_show_keys_and_list():
    r = CliRunner().invoke(cli, ["recipe", "show", "demo", "--keys"])
    assert r.exit_code == 0, r.output
    lines = {line.split(" = ")[0].strip(): line for line in r.output.splitlines()}
    assert "train.epochs" in lines and "(int)" in lines["train.epochs"]
    assert "distill.temperature" in lines and "data.fsdd.root" in lines
    r = CliRunner().invoke(cli, ["recipe", "list"])
    assert r.exit_code == 0 and {"demo", "fsdd"} <= {line.split()[0] for line in r.output.splitlines()}


def test_out_dir_guard(tmp_path):
    exp = tmp_path / "exp"
    r = load_recipe("demo")
    assert check_out_dir(r, exp) == "new"
    exp.mkdir()
    save_recipe(r, exp / "recipe.yaml")
    assert check_out_dir(r, exp) == "resume", "the same recipe resumes (an interrupted run)"
    runtime = load_recipe("demo", ["train.threads=1", "tracking.enabled=false"])
    assert check_out_dir(runtime, exp) == "resume", "how fast or where tracked is not a different recipe"
    changed = load_recipe("demo", ["train.epochs=3"])
    with pytest.raises(RecipeError) as e:
        check_out_dir(changed, exp)
    msg = str(e.value)
    assert "train.epochs" in msg and "--out" in msg and "--resume" in msg and "--fresh" in msg
    assert check_out_dir(changed, exp, resume=True) == "update"
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(RecipeError, match="not an experiment directory"):
        check_out_dir(r, other)


def test_distill_refuses_to_replace_a_different_run(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    save_recipe(load_recipe("demo"), exp / "recipe.yaml")
    r = CliRunner().invoke(cli, ["distill", "demo", "--out", str(exp), "--no-mlflow", "--set", "train.epochs=1"])
    assert r.exit_code == 1 and "holds a run of a different recipe" in r.output, r.output
    assert sorted(p.name for p in exp.iterdir()) == ["recipe.yaml"], "nothing ran"
