"""Quiet, useful progress: no Lightning banners, adverts or bars in a log; stage n/N, elapsed, ETA (issue 16)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from ekd_compress.pipeline.stages import StageRunner

ROOT = Path(__file__).resolve().parents[2]

FIT = textwrap.dedent("""
    import sys
    from ekd_compress.train.fit import fit_model
    from tests.tiny_fit import tiny_fit

    module, loaders, cfg = tiny_fit(epochs=2)
    fit_model(module, *loaders, sys.argv[1], cfg, seed=0, log=print)
""")


def test_a_fit_in_a_log_prints_epoch_lines_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FIT, str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for noise in ("GPU available", "TPU available", "litlogger", "Tip:", "it/s]", "\r"):
        assert noise not in out, f"{noise!r} in the output of a fit:\n{out[-2000:]}"
    assert len(re.findall(r"epoch \d/2", proc.stdout)) == 2, proc.stdout


def test_stage_lines_say_n_of_N_elapsed_and_eta(tmp_path):
    lines: list[str] = []
    runner = StageRunner(tmp_path, lines.append, plan=["data", "baseline", "member_a", "evaluate"])
    runner.run("data", "k1", lambda: {})
    runner.run("baseline", "k2", lambda: {})
    runner._seconds = {True: [60.0], False: [2.0]}  # as if baseline took a minute, data 2 s
    runner.run("member_a", "k3", lambda: {})
    assert re.match(r"\[run \] data  stage 1/4  elapsed \d+:\d\d  eta \?  \(key k1\)$", lines[0]), lines[0]
    assert "stage 2/4" in lines[1] and "eta ?" in lines[1], "no training stage has finished yet: no estimate"
    assert "stage 3/4" in lines[2] and "eta ~1:02" in lines[2], lines[2]  # one training stage (60 s) + evaluate (2 s)
    again = StageRunner(tmp_path, lines.append, plan=["data", "baseline", "member_a", "evaluate"])
    again.run("data", "k1", lambda: {})
    assert lines[-1] == "[skip] data  stage 1/4  (done, key k1)"


def test_planned_stages_match_a_run():
    from ekd_compress.pipeline.plan import expected_models, planned_stages
    from ekd_compress.recipe import load_recipe

    r = load_recipe("demo", ["distill.seeds=[0,1]"])
    plan = planned_stages(r)
    assert plan[:3] == ["data", "features", "baseline"] and plan[-1] == "evaluate"
    trained = {m for m in expected_models(r) if m not in ("ensemble", "student")}
    assert trained <= {p.removeprefix("member_") for p in plan}
    assert len(plan) == len(set(plan))


def test_the_plan_names_every_stage_and_model_once():
    from ekd_compress.pipeline.plan import expected_models, planned_stages
    from ekd_compress.recipe import load_recipe

    r = load_recipe("demo", ["distill.seeds=[0,3]", "distill.ks=[2,all]", "distill.student_sizes=[{name: s8, params: {hidden: 8}}]",
                             "distill.student_init=scratch"])  # demo.yaml's guide start: below
    assert planned_stages(r)[-4:] == ["control_baseline_teacher", "student_s3", "sweep_s8", "evaluate"]
    assert {"baseline_s3", "essence_k2", "kd_all", "student", "student_s3", "sweep_s8"} <= set(expected_models(r))
    seeded = load_recipe("demo", ["distill.seeds=[0,3]", "distill.student_sizes=[{name: s8}, {name: w2}]",
                                  "distill.sweep_seeds=2", "distill.student_init=scratch"])
    assert planned_stages(seeded)[-5:] == ["sweep_s8", "sweep_s8_s3", "sweep_w2", "sweep_w2_s3", "evaluate"]
    assert {"sweep_s8", "sweep_s8_s3", "sweep_w2_s3"} <= set(expected_models(seeded))
    # students that start from a model of their size: each size's CTC-only seeds train first
    warm = load_recipe("demo", ["distill.seeds=[0,3]", "distill.student_sizes=[{name: s8}, {name: w2}]",
                                "distill.sweep_seeds=2", "distill.student_init=guide"])
    assert planned_stages(warm)[-9:] == ["sweep_s8_ctc", "sweep_s8_ctc_s3", "sweep_w2_ctc", "sweep_w2_ctc_s3",
                                         "sweep_s8", "sweep_s8_s3", "sweep_w2", "sweep_w2_s3", "evaluate"]
    assert {"sweep_s8_ctc", "sweep_w2_ctc_s3"} <= set(expected_models(warm))
    fly = load_recipe("demo", ["distill.cache=fly"])
    assert "essence" not in planned_stages(fly) and "essence_control" not in planned_stages(fly)


def test_the_plan_with_a_second_round_of_guidance():
    from ekd_compress.pipeline.plan import expected_models, planned_stages
    from ekd_compress.recipe import load_recipe

    r = load_recipe("demo", ["distill.reguide=ensemble"])
    members = [m.name for m in r.members]
    plan = planned_stages(r)
    first, second = plan.index("ensemble"), plan.index("ensemble_r2")
    assert plan[first + 1] == "align_r2" and plan[second - 1] == "coincide_r2"
    assert plan[first + 2:second - 1] == [f"member_{m}_r2" for m in members]
    models = expected_models(r)
    # the second round is the teacher: its members are registered, the first round's are not
    assert {f"{m}_r2" for m in members} <= set(models) and not set(members) & set(models)
    assert models.count("ensemble") == 1
    assert len(plan) == len(set(plan))

