"""A tiny end-to-end distill on synthetic speech: every stage, resume, invalidation, evaluate."""
import json

import pytest
from click.testing import CliRunner

from ekd_compress.cli.main import cli

TINY = [
    "data.synthetic.hours=0.008", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.002",
    "train.epochs=1", "train.max_duration=30", "distill.seeds=[0,1]", "distill.ks=[1,all]",
    "distill.refuse_below_threshold=false",  # one epoch cannot align members; the check is tested elsewhere
    "baseline.params={hidden: 16, layers: 1}",
    "members=[{name: lstm, arch: lstm, params: {hidden: 16, layers: 1}}, {name: tdnn, arch: tdnn, params: {hidden: 16, layers: 2}}, {name: tf, arch: transformer, params: {hidden: 16, layers: 1, heads: 2}}]",
]


def run(exp, *extra):
    args = ["distill", "recipes/demo.yaml", "--out", str(exp), "--no-mlflow"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((exp / "stages" / "last_run.json").read_text())


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp") / "demo"
    stages = run(exp)
    assert stages["skipped"] == []
    return exp


def test_every_stage_and_results(exp):
    results = json.loads((exp / "results.json").read_text())
    assert set(results["tests"]) == {"dev", "test"}
    names = {r["name"]: r for r in results["tests"]["test"]["models"]}
    expected = {"lstm", "tdnn", "tf", "ensemble", "baseline", "baseline_s1", "kd_all", "essence_k1",
                "control_baseline_teacher", "student", "student_s1"}
    assert expected <= set(names)
    assert names["ensemble"]["kind"] == "ensemble" and names["student"]["kind"] == "student"
    for row in names.values():
        assert {"wer", "sub", "del", "ins", "words", "rtf", "params"} <= set(row)
        assert row["words"] > 0 and row["rtf"] > 0
    assert names["student"]["params"] == names["baseline"]["params"]
    assert results["essence"]["bytes_per_frame"]["1"] == pytest.approx(4.0)
    assert set(results["coincidence"]) == {"lstm", "tdnn", "tf"}
    md = (exp / "results.md").read_text()
    assert "| student | student |" in md and "Seed spread" in md
    for plot in ("topk_mass.png", "wer_vs_k.png", "coincidence.png"):
        assert (exp / "plots" / plot).stat().st_size > 1000
    assert (exp / "recipe.yaml").exists() and (exp / "tokens.txt").exists()


def test_rerun_skips_everything(exp):
    stages = run(exp)
    assert stages["ran"] == []
    assert "baseline" in stages["skipped"] and "evaluate" in stages["skipped"]


def test_changed_lambda_reruns_only_students(exp):
    stages = run(exp, "distill.lam=0.3")
    assert {"data", "features", "baseline", "baseline_s1", "member_lstm", "ensemble", "essence"} <= set(stages["skipped"])
    assert {"kd_all", "essence_k1", "student_s1", "evaluate"} <= set(stages["ran"])


def test_evaluate_command_json(exp):
    data_dir = exp / "data" / "synthetic" / "test"
    result = CliRunner().invoke(cli, ["evaluate", str(exp), "--data", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["data"] == str(data_dir)
    kinds = {m["kind"] for m in out["models"]}
    assert kinds == {"member", "ensemble", "baseline", "kd", "student"}
    for m in out["models"]:
        assert set(m) >= {"name", "kind", "params", "wer", "sub", "del", "ins", "words", "rtf"}


def test_evaluate_rejects_non_experiment(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code != 0 and "recipe.yaml" in result.output


def test_changed_test_set_rescores_without_retraining(exp):
    stages = run(exp, "distill.lam=0.3", "data.synthetic.test_hours=0.003")
    assert {"data", "evaluate"} <= set(stages["ran"])
    assert {"baseline", "member_lstm", "kd_all", "student_s1"} <= set(stages["skipped"])


def test_on_the_fly_targets(tmp_path):
    exp = tmp_path / "fly"
    stages = run(exp, "distill.cache=fly", "distill.seeds=[0]", "distill.control=false", "members=[]")
    assert "essence" not in stages["ran"] and "essence_k1" in stages["ran"]
    assert not (exp / "essence").exists()
    names = {r["name"] for r in json.loads((exp / "results.json").read_text())["tests"]["dev"]["models"]}
    assert names == {"baseline", "essence_k1", "kd_all", "student"}
