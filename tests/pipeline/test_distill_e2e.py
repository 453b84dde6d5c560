"""A tiny end-to-end distill on synthetic speech: every stage, resume, invalidation, evaluate;
that the students were really distilled (the KD term is in their loss), and that the cached
essence targets are the selected essence of the fused members."""
import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ekd_compress.cli.main import cli

TINY = [
    "data.synthetic.hours=0.008", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.002",
    "train.epochs=1", "train.max_duration=30", "distill.seeds=[0,1]", "distill.ks=[1,all]",
    "distill.refuse_below_threshold=false",  # one epoch cannot align members; the check is tested elsewhere
    "distill.student_init=scratch",  # demo.yaml starts its students from the guide; a test below switches that on
    "baseline.params={hidden: 16, layers: 1}",
    "members=[{name: lstm, arch: lstm, params: {hidden: 16, layers: 1}}, {name: tdnn, arch: tdnn, params: {hidden: 16, layers: 2}}, {name: tf, arch: transformer, params: {hidden: 16, layers: 1, heads: 2}}]",
]


# the shared experiment: unequal fusion weights and T = 2, so the cache check below sees both
EXP_SETTINGS = ["distill.fusion_tune=none", "distill.fusion_weights=[1, 2, 5]", "distill.temperature=2"]
ESSENCE_STUDENTS = ("essence_k1", "kd_all", "control_baseline_teacher", "student_s1")


def run_with_output(exp, *extra):
    args = ["distill", "recipes/demo.yaml", "--out", str(exp), "--no-mlflow", "--resume"]  # later runs change it
    for item in [*TINY, *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((exp / "stages" / "last_run.json").read_text()), result.output


def run(exp, *extra):
    return run_with_output(exp, *extra)[0]


@dataclass
class FirstRun:
    exp: Path
    output: str  # everything the first distill printed (one line per training epoch among it)
    lam: float  # distill.lam of that run (later tests re-run the experiment with another one)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    exp = tmp_path_factory.mktemp("exp") / "demo"
    from ekd_compress.recipe import load_recipe

    stages, output = run_with_output(exp, *EXP_SETTINGS)
    assert stages["skipped"] == []
    return FirstRun(exp, output, load_recipe(exp / "recipe.yaml").distill.lam)


@pytest.fixture(scope="module")
def exp(first_run) -> Path:
    return first_run.exp


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
    source = "kd_all" if results["chosen_k"] == "all" else f"essence_k{results['chosen_k']}"
    assert f"| student (= {source}) | student |" in md and "Seed spread" in md and "What the rows are" in md
    for plot in ("topk_mass.png", "wer_vs_k.png", "coincidence.png", "model_wer.png", "verdict.png"):
        assert (exp / "plots" / plot).stat().st_size > 1000
        assert f"plots/{plot}" in md
    assert (exp / "recipe.yaml").exists() and (exp / "tokens.txt").exists()
    test_rows = {r["name"]: r for r in results["tests"]["test"]["models"]}
    for row in test_rows.values():  # per-utterance counts that add up to the row's own
        pairs = row["utterances"]["wer"]
        assert len(pairs) == len(row["utterances"]["ids"]) > 1
        assert sum(e for e, _ in pairs) == row["sub"] + row["del"] + row["ins"] and sum(n for _, n in pairs) == row["words"]
    for claim in results["verdict"]["test"]:
        low, high = claim["ci95"]
        assert low <= high and claim["decided"] in ("met", "not met", "undecided"), claim


def test_rerun_skips_everything(exp):
    stages = run(exp, *EXP_SETTINGS)
    assert stages["ran"] == []
    assert "baseline" in stages["skipped"] and "evaluate" in stages["skipped"]


def test_size_sweep_trains_only_its_students_and_draws_the_compression_curve(exp, tmp_path):
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(exp, copy)  # the shared experiment stays as the other tests expect it; the copy reads its own files
    sweep = "distill.student_sizes=[{name: s8, params: {hidden: 8}}, {name: w24, params: {hidden: 24, layers: 2}}]"
    settings = [*EXP_SETTINGS, sweep, "distill.compression_rtf_seconds=2", "distill.sweep_seeds=2"]
    stages = run(copy, *settings)
    assert set(stages["ran"]) == {"sweep_s8", "sweep_s8_s1", "sweep_w24", "sweep_w24_s1", "evaluate"}
    results = json.loads((copy / "results.json").read_text())
    rows = {r["name"]: r for r in results["compression"]["rows"]}
    assert {"sweep_s8", "sweep_s8_s1", "sweep_w24", "ensemble", "kd_all", "baseline", "lstm"} <= set(rows)
    # each size, and the chosen student with its seeds, is judged by its seed mean
    groups = {g["name"]: g for g in results["compression"]["students"]}
    assert groups["sweep_s8"]["models"] == ["sweep_s8", "sweep_s8_s1"]
    assert groups["sweep_s8"]["wers"] == [rows["sweep_s8"]["wer"]["test"], rows["sweep_s8_s1"]["wer"]["test"]]
    chosen = json.loads((copy / "models.json").read_text())
    chosen = next(e["same_as"] for e in chosen if e["name"] == "student")
    assert groups["student"]["models"] == [chosen, "student_s1"]
    assert "student" not in rows  # the registry's alias of the chosen k's model is not a point of its own
    assert rows["sweep_s8"]["params"] < rows["kd_all"]["params"] < rows["sweep_w24"]["params"]
    flops = {n: r["flops_per_audio_second"] for n, r in rows.items()}
    assert flops["sweep_s8"] < flops["kd_all"] < flops["sweep_w24"] < flops["ensemble"]
    assert all(r["rtf_onnx"] > 0 and r["wer"]["test"] is not None for r in rows.values())
    assert results["compression"]["split"] == "test" and results["compression"]["pareto_flops"]
    assert (copy / "plots" / "compression.png").stat().st_size > 10_000
    md = (copy / "results.md").read_text()
    assert "## Compression" in md and "| sweep_s8 | 2 |" in md and "- `sweep_NAME`: a student of another size" in md
    assert "- `sweep_NAME`" not in (exp / "results.md").read_text()  # the legend names the sweep's rows only with one
    assert run(copy, *settings)["ran"] == []  # resumable


def test_a_second_round_of_guidance_becomes_the_teacher_and_can_be_undone(exp, tmp_path):
    import shutil

    from ekd_compress.experiment import load_any, read_registry
    from ekd_compress.losses.guide import ctc_forced_align
    from ekd_compress.pipeline.context import Context, Features
    from ekd_compress.pipeline.teacher import model_outputs
    from ekd_compress.recipe import load_recipe

    copy = tmp_path / "reguide"
    shutil.copytree(exp, copy)
    stages, output = run_with_output(copy, *EXP_SETTINGS, "distill.reguide=ensemble")
    second = {"align_r2", "member_lstm_r2", "member_tdnn_r2", "member_tf_r2", "coincide_r2", "ensemble_r2"}
    assert second <= set(stages["ran"])
    assert {"essence", "essence_k1", "kd_all", "student_s1", "evaluate"} <= set(stages["ran"])  # a new teacher
    assert {"baseline", "member_lstm", "ensemble", "essence_control", "control_baseline_teacher"} <= set(stages["skipped"])
    assert "guided by the first ensemble instead of baseline" in output

    # the second round's members follow the first ensemble's forced alignment
    ctx = Context(load_recipe(copy / "recipe.yaml"), copy)
    ctx.features = Features.from_json(json.loads((copy / "stages" / "features.json").read_text())["result"])
    batch, log_probs, out_lengths = next(model_outputs(ctx, load_any(copy / "models" / "ensemble.json"), ctx.cuts("train")))
    T, n = int(out_lengths[0]), int(batch["target_lengths"][0])
    expected = ctc_forced_align(log_probs[0, :T].numpy(), batch["targets"][0, :n].numpy())
    assert np.array_equal(np.load(copy / "align" / "train_r2.npz")[batch["ids"][0]], expected)

    # ... and are the registry's members; "ensemble" (the teacher, exported and benched as such) is their fusion
    registry = {e["name"]: e for e in read_registry(copy)}
    assert {"lstm_r2", "tdnn_r2", "tf_r2"} <= set(registry) and not {"lstm", "tdnn", "tf"} & set(registry)
    assert registry["ensemble"]["path"] == "models/ensemble_r2.json"
    fused = json.loads((copy / "models" / "ensemble_r2.json").read_text())["members"]
    assert fused == ["lstm_r2/model.pt", "tdnn_r2/model.pt", "tf_r2/model.pt"]
    results = json.loads((copy / "results.json").read_text())
    assert results["ensemble"]["path"].endswith("ensemble_r2.json")
    assert results["first_round_ensemble"]["path"].endswith("models/ensemble.json")
    rows = {r["name"]: r["kind"] for r in results["tests"]["test"]["models"]}
    assert rows["tf_r2"] == "member" and "tf" not in rows
    assert "Second round of guidance" in (copy / "results.md").read_text()

    # switched off again: the first round is the teacher once more, nothing of it retrained
    stages = run(copy, *EXP_SETTINGS)
    assert not {"member_lstm", "ensemble", "member_lstm_r2"} & set(stages["ran"]) and "kd_all" in stages["ran"]
    registry = {e["name"]: e for e in read_registry(copy)}
    assert {"lstm", "tdnn", "tf"} <= set(registry) and not {"lstm_r2", "tdnn_r2", "tf_r2"} & set(registry)
    assert registry["ensemble"]["path"] == "models/ensemble.json"
    assert "first_round_ensemble" not in json.loads((copy / "results.json").read_text())
    assert "Second round of guidance" not in (copy / "results.md").read_text()


def test_reguide_by_the_best_member_aligns_with_it(exp, tmp_path):
    import shutil

    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    copy = tmp_path / "best"
    shutil.copytree(exp, copy)
    recipe = load_recipe(copy / "recipe.yaml", ["distill.reguide=best_member"])
    lines: list[str] = []
    run_distill(recipe, copy, log=lines.append, tracking=False, stop_after="ensemble")
    member_dev = {m: json.loads((copy / "stages" / f"member_{m}.json").read_text())["result"]["best_dev"]
                  for m in ("lstm", "tdnn", "tf")}
    best = min(member_dev, key=member_dev.get)
    assert any(f"guided by {best}, the best member on dev" in line for line in lines), lines
    assert (copy / "stages" / "ensemble_r2.json").exists()


def test_a_members_own_learning_rate_retrains_only_that_member(exp, tmp_path):
    import shutil

    import yaml

    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    copy = tmp_path / "member_lr"
    shutil.copytree(exp, copy)
    members = yaml.safe_load(TINY[-1].split("=", 1)[1])
    members[1]["lr"] = 3e-4  # the tdnn member
    recipe = load_recipe(copy / "recipe.yaml", [f"members={json.dumps(members)}"])
    lines: list[str] = []
    run_distill(recipe, copy, log=lines.append, tracking=False, stop_after="ensemble")
    stages = json.loads((copy / "stages" / "last_run.json").read_text())
    assert "member_tdnn" in stages["ran"] and {"member_lstm", "member_tf", "baseline"} <= set(stages["skipped"])
    first_lr = torch.load(copy / "models" / "tdnn" / "checkpoints" / "last.ckpt", weights_only=False)
    assert first_lr["lr_schedulers"][0]["base_lrs"] == [3e-4]  # trained with its own peak LR
    key = {e: json.loads((e / "stages" / "member_tdnn.json").read_text())["key"] for e in (exp, copy)}
    assert key[exp] != key[copy]  # members without an lr (lstm, tf) kept the keys they had before the field existed


def test_fusion_search_pools_the_named_dev_sets(exp, tmp_path, monkeypatch):
    """distill.fusion_on: forward selection scores the utterances of every named dev set together. Here the second set
    is a copy of dev, so the pooled search must see twice dev's utterances and pick dev's own weights (every error and
    every word counted twice). A set the experiment does not score is an error naming the ones it does."""
    import shutil

    import ekd_compress.ensemble.tune as tune
    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    seen: list[int] = []
    real = tune.forward_select

    def counting(member_log_probs, refs, decode, **kw):
        seen.append(len(refs))
        return real(member_log_probs, refs, decode, **kw)

    monkeypatch.setattr(tune, "forward_select", counting)
    select = ["distill.fusion_tune=select", "distill.fusion_weights=null"]
    ensembles = {}
    for name, on in (("dev", "[dev]"), ("pooled", "[dev, dev_copy]")):
        copy = tmp_path / name
        shutil.copytree(exp, copy)
        stage = copy / "stages" / "features.json"
        features = json.loads(stage.read_text())
        features["result"]["test_dev_copy"] = features["result"]["dev"]  # the experiment scores a copy of dev too
        stage.write_text(json.dumps(features))
        recipe = load_recipe(copy / "recipe.yaml", [*select, f"distill.fusion_on={on}"])
        run_distill(recipe, copy, log=lambda line: None, tracking=False, stop_after="ensemble")
        stages = json.loads((copy / "stages" / "last_run.json").read_text())
        assert "ensemble" in stages["ran"] and {"member_lstm", "member_tdnn", "member_tf"} <= set(stages["skipped"])
        ensembles[name] = json.loads((copy / "stages" / "ensemble.json").read_text())
    dev_utterances = sum(1 for _ in gzip.open(features["result"]["dev"], "rt"))
    assert seen == [dev_utterances, 2 * dev_utterances]
    dev, pooled = (ensembles[n]["result"] for n in ("dev", "pooled"))
    assert (dev["tuned_on"], pooled["tuned_on"]) == ("dev", "dev + dev_copy")
    assert pooled["weights"] == dev["weights"] and pooled["dev_wer"] == pytest.approx(dev["dev_wer"])
    # the pooled search has a key of its own (the dev-only one is the key ensembles had before fusion_on existed:
    # the committed recipes resume without a stage to run, RESULTS.md)
    assert ensembles["pooled"]["key"] != ensembles["dev"]["key"]
    recipe = load_recipe(tmp_path / "dev" / "recipe.yaml", [*select, "distill.fusion_on=[dev, dev_noisy10db]"])
    with pytest.raises(ValueError, match=r"'dev_noisy10db', which this experiment does not score.*\['dev', 'dev_copy'\]"):
        run_distill(recipe, tmp_path / "dev", log=lambda line: None, tracking=False)
    # ... and in a new experiment it says so right after the features, before any model trains
    with pytest.raises(ValueError, match=r"'dev_noisy10db', which this experiment does not score.*\['dev'\]"):
        run_distill(recipe, tmp_path / "new", log=lambda line: None, tracking=False)
    assert (tmp_path / "new" / "stages" / "features.json").exists()
    assert not (tmp_path / "new" / "models").exists() or not any((tmp_path / "new" / "models").iterdir())


def test_students_can_start_from_the_guides_weights(exp, tmp_path, monkeypatch):
    import shutil

    import ekd_compress.train.job as job_module
    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    copy = tmp_path / "init_guide"
    shutil.copytree(exp, copy)
    started: list[tuple[dict, Path]] = []
    real = job_module.load_initial_weights

    def recording(model, path):
        real(model, path)
        started.append((model.build_info["params"], Path(path)))

    monkeypatch.setattr(job_module, "load_initial_weights", recording)
    sweep = ["distill.student_sizes=[{name: s8, params: {hidden: 8}}]", "distill.sweep_seeds=2",
             "distill.compression_rtf_seconds=1"]
    recipe = load_recipe(copy / "recipe.yaml", ["distill.student_init=guide", *sweep])
    run_distill(recipe, copy, log=lambda line: None, tracking=False)
    stages = json.loads((copy / "stages" / "last_run.json").read_text())
    # the students' keys changed; the size of the sweep trains two CTC-only seeds, then its students
    assert set(stages["ran"]) == {*ESSENCE_STUDENTS, "sweep_s8_ctc", "sweep_s8_ctc_s1", "sweep_s8", "sweep_s8_s1",
                                  "evaluate"}
    assert {"baseline", "baseline_s1", "member_lstm", "ensemble", "essence"} <= set(stages["skipped"])
    results = json.loads((copy / "results.json").read_text())
    guide = copy / "models" / results["guide"] / "model.pt"
    ctc_dev = {n: json.loads((copy / "stages" / f"{n}.json").read_text())["result"]["best_dev"]
               for n in ("sweep_s8_ctc", "sweep_s8_ctc_s1")}
    start = copy / "models" / min(ctc_dev, key=ctc_dev.get) / "model.pt"
    # each student of the student's size from the guide; the sweep's from the best CTC-only model of their size on dev
    assert started == [({"hidden": 16, "layers": 1}, guide)] * len(ESSENCE_STUDENTS) + [({"hidden": 8, "layers": 1},
                                                                                        start)] * 2
    rows = {r["name"]: r for r in results["tests"]["test"]["models"]}
    assert rows["sweep_s8_ctc"]["kind"] == "baseline" and rows["sweep_s8_ctc"]["params"] == rows["sweep_s8"]["params"]
    # ... which are points of the curve, but neither baseline seeds of the verdict nor students of a size
    claim = next(c for c in results["verdict"]["test"] if c["claim"] == "student vs baseline (seed mean)")
    assert claim["vs"] == pytest.approx((rows["baseline"]["wer"] + rows["baseline_s1"]["wer"]) / 2)
    assert {g["name"] for g in results["compression"]["students"]} >= {"sweep_s8"}
    assert not any("_ctc" in n for g in results["compression"]["students"] for n in g["models"])
    started.clear()
    assert run(copy, *EXP_SETTINGS, "distill.student_init=guide", *sweep)["ran"] == [] and started == []  # resumable


def test_lr_find_on_an_experiment(exp, tmp_path):
    import shutil

    copy = tmp_path / "lr"
    shutil.copytree(exp, copy)
    result = CliRunner().invoke(cli, ["lr-find", str(copy), "--model", "baseline", "--model", "tf", "--steps", "12",
                                      "--lr-min", "1e-4", "--lr-max", "1e-1"])
    assert result.exit_code == 0, result.output
    for name in ("baseline", "tf"):
        res = json.loads((copy / "lr_range" / f"{name}.json").read_text())
        assert 0 < len(res["lrs"]) <= 12 and res["lrs"][0] == pytest.approx(1e-4)
        assert res["peak_lr_range"] == pytest.approx([res["min_loss_lr"] / 10, res["min_loss_lr"]])
        assert res["min_loss_lr"] in res["lrs"] and res["recipe_lr"] > 0
        assert f"{name} (" in result.output and "a peak lr between" in result.output
    assert (copy / "plots" / "lr_range.png").stat().st_size > 10_000
    bad = CliRunner().invoke(cli, ["lr-find", str(copy), "--model", "gru"])
    assert bad.exit_code != 0 and "'gru' is not a model of" in bad.output and "'baseline', 'lstm'" in bad.output
    bare = tmp_path / "bare"
    (bare / "stages").mkdir(parents=True)
    shutil.copy(copy / "recipe.yaml", bare / "recipe.yaml")
    missing = CliRunner().invoke(cli, ["lr-find", str(bare)])
    assert missing.exit_code != 0 and "no 'features' stage yet" in missing.output


def test_changed_lambda_reruns_only_students(exp):
    stages = run(exp, *EXP_SETTINGS, "distill.lam=0.3")
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
    assert out["metric"] == "wer"  # the recipe's primary measure (data.metric, default wer)
    for m in out["models"]:
        assert set(m) >= {"name", "kind", "params", "wer", "sub", "del", "ins", "words", "rtf"}
        assert m["cer"] is not None and m["cer_counts"]["units"] > 0 and "per" not in m  # characters, no phones
    # the experiment's verdict on these rows: its chosen k and dev rows, intervals included (distill scored
    # stored, lossy-compressed features, evaluate computes them exactly: compare the claims, not the digits)
    from ekd_compress.pipeline.verdict import verdict

    results = json.loads((exp / "results.json").read_text())
    assert results["verdict_targets"] == {"ensemble vs best member": 1.0, "student vs baseline (seed mean)": 1.0}
    assert out["verdict"] == verdict(out["models"], results["chosen_k"], results["tests"]["dev"]["models"],
                                     targets=results["verdict_targets"])  # the demo recipe's own targets
    assert [r["claim"] for r in out["verdict"]] == [r["claim"] for r in results["verdict"]["test"]]
    assert all(r["ci95"] and r["decided"] for r in out["verdict"])
    shown = CliRunner().invoke(cli, ["evaluate", str(exp), "--data", str(data_dir)])
    assert f"Verdict on `{data_dir}`" in shown.output and "| student vs ensemble |" in shown.output
    some = CliRunner().invoke(cli, ["evaluate", str(exp), "--data", str(data_dir), "--json", "--model", "baseline"])
    assert "verdict" not in json.loads(some.output.strip().splitlines()[-1]), "one model cannot judge a claim"


def test_evaluate_rejects_non_experiment(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code != 0 and "recipe.yaml" in result.output


def test_changed_test_set_rescores_without_retraining(exp):
    stages = run(exp, *EXP_SETTINGS, "distill.lam=0.3", "data.synthetic.test_hours=0.003")
    assert {"data", "evaluate"} <= set(stages["ran"])
    assert {"baseline", "member_lstm", "kd_all", "student_s1"} <= set(stages["skipped"])


@pytest.mark.filterwarnings("error:.*in eval mode at the start of training")  # the frozen teacher is in eval mode on purpose: no warning
def test_on_the_fly_targets(tmp_path):
    exp = tmp_path / "fly"
    stages = run(exp, "distill.cache=fly", "distill.seeds=[0]", "distill.control=false", "members=[]")
    assert "essence" not in stages["ran"] and "essence_k1" in stages["ran"]
    assert not (exp / "essence").exists()
    names = {r["name"] for r in json.loads((exp / "results.json").read_text())["tests"]["dev"]["models"]}
    assert names == {"baseline", "essence_k1", "kd_all", "student"}
    checkpoint = torch.load(exp / "models" / "kd_all" / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    assert checkpoint["state_dict"] and all(k.startswith("model.") for k in checkpoint["state_dict"]), \
        "a fly-mode student's checkpoint holds weights besides the student's (the teacher's?)"


# ------------------------------------------------------------------ was anything distilled?
def epoch_metrics(output: str, name: str) -> dict[str, float]:
    """The metrics of model `name`'s last logged training epoch ("  NAME epoch 1/1 k=v ... (N s)")."""
    lines = re.findall(rf"^\s+{re.escape(name)} epoch \d+/\d+ (.*) \(\d+ s\)$", output, flags=re.M)
    assert lines, f"no epoch line for {name!r} in the distill output"
    return {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", lines[-1])}


@pytest.mark.parametrize("name", ESSENCE_STUDENTS)
def test_students_are_trained_on_lambda_ctc_plus_kd(first_run, name):
    """Each distilled student logged a finite, positive KD term, and its training loss is
    lam * CTC + (1 - lam) * KD (epoch means of a linear combination; 3 printed decimals)."""
    lam = first_run.lam
    assert 0.0 < lam < 1.0, "the check needs both parts of the loss weighted"
    m = epoch_metrics(first_run.output, name)
    assert "train_kd" in m, f"{name} logged no KD term: {m}"
    assert math.isfinite(m["train_kd"]) and m["train_kd"] > 0, f"{name}: KD term {m['train_kd']}"
    want = lam * m["train_ctc"] + (1.0 - lam) * m["train_kd"]
    assert m["train_loss"] == pytest.approx(want, abs=2e-3), (
        f"{name}: train_loss {m['train_loss']} != {lam} * CTC {m['train_ctc']} + {1 - lam} * KD {m['train_kd']}")
    assert abs(m["train_loss"] - m["train_ctc"]) > 0.01, f"{name} was trained on CTC alone"


def test_baseline_is_ctc_only_and_differs_from_the_student(first_run):
    from ekd_compress.train.fit import load_model

    m = epoch_metrics(first_run.output, "baseline")
    assert "train_kd" not in m and m["train_loss"] == pytest.approx(m["train_ctc"], abs=1e-3)
    baseline = load_model(first_run.exp / "models" / "baseline" / "model.pt")[0].state_dict()
    student = load_model(first_run.exp / "models" / "kd_all" / "model.pt")[0].state_dict()
    assert baseline.keys() == student.keys(), "the student has the baseline's architecture"
    gap = max((baseline[k].float() - student[k].float()).abs().max().item() for k in baseline)
    assert gap > 1e-6, "the KD student is identical to the CTC-only baseline"


# ------------------------------------------------------- cached targets == essence of the fused members
def fused_teacher_probs(exp: Path, feats: np.ndarray) -> np.ndarray:
    """Σ_i w_i · softmax(member_i(feats)) computed here from the members' files -> (T', V)."""
    from ekd_compress.train.fit import load_model

    spec = json.loads((exp / "models" / "ensemble.json").read_text())
    weights = np.asarray(spec["weights"] or [1.0] * len(spec["members"]), dtype=np.float64)
    weights = weights / weights.sum()
    x = torch.from_numpy(feats)[None]
    fused = 0.0
    for w, member in zip(weights, spec["members"]):
        model = load_model(exp / "models" / member)[0].eval()
        with torch.no_grad():
            log_probs, _ = model(x, torch.tensor([feats.shape[0]]))
        fused = fused + w * log_probs[0].double().exp().numpy()
    return fused


def test_cached_targets_are_the_essence_of_the_fused_members(exp):
    """One training utterance, end to end: features as stored -> every member -> weighted fusion
    -> temperature -> top-k renorm, by hand, against what the 'essence' stage cached (fp16)."""
    from ekd_compress.ensemble.cache import EssenceCache
    from ekd_compress.experiment import load_cuts
    from ekd_compress.features.fbank import feature_spec, load_features
    from ekd_compress.recipe import load_recipe

    recipe = load_recipe(exp / "recipe.yaml")
    d = recipe.distill
    assert d.mode == "renorm" and d.temperature == 2.0 and d.fusion_weights == [1, 2, 5], "the settings under test"
    assert json.loads((exp / "models" / "ensemble.json").read_text())["weights"] is not None
    cut = next(iter(load_cuts(exp / "features" / "train_cuts.jsonl.gz")))
    feats = load_features(cut, feature_spec(recipe.features, recipe.data.sample_rate))
    p = fused_teacher_probs(exp, feats)  # (T', V)
    tempered = p ** (1.0 / d.temperature)
    tempered /= tempered.sum(-1, keepdims=True)
    V = p.shape[1]
    for label, k in (("k1", 1), ("all", V)):
        meta = json.loads((exp / "essence" / "teacher" / label / "index.json").read_text())
        cache = EssenceCache.open(exp / "essence" / "teacher" / label, feature_hash=meta["feature_hash"],
                                  teacher_hash=meta["teacher_hash"], selection=meta["selection"])
        ids, probs = cache.read(cut.id, expected_frames=p.shape[0])
        assert ids.shape == probs.shape == (p.shape[0], k), f"{label}: cached shape {ids.shape}"
        if k == 1:
            np.testing.assert_array_equal(ids[:, 0], p.argmax(-1), err_msg="k=1: cached id is not the fused argmax")
            np.testing.assert_allclose(probs[:, 0], 1.0, atol=1e-3)
        else:
            dense = np.zeros_like(tempered)
            np.put_along_axis(dense, ids, probs, axis=-1)
            np.testing.assert_allclose(dense, tempered, atol=2e-3, rtol=0,
                                       err_msg="k=all: cached targets are not softmax(log p_ens / T)")
