"""Trainings of one stage group at once (train.parallel_jobs): the runner's records keep the group's
order whatever finishes first, a failure is raised only after the others are recorded, and a tiny
distill trained in worker processes gives the same models, byte for byte, as one trained in turn."""
from __future__ import annotations

import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from ekd_compress.pipeline.parallel import job_threads
from ekd_compress.pipeline.stages import StageRunner
from ekd_compress.recipe import RecipeError, TrainConfig, load_recipe


def _stages(tmp_path, names):
    return [(name, f"key-{name}", tmp_path / "models" / name) for name in names]


def test_records_follow_the_group_order_when_the_last_finishes_first(tmp_path):
    lines: list[str] = []
    runner = StageRunner(tmp_path, lines.append, plan=["a", "b", "c"])
    release = {name: threading.Event() for name in "abc"}
    recorded: list[str] = []

    def work(name: str) -> dict:
        release[name].wait(5)
        if name == "c":  # c finishes first, then b, then a
            release["b"].set()
        if name == "b":
            release["a"].set()
        return {"model": name}

    with ThreadPoolExecutor(3) as pool:
        def submit(name: str) -> Future:
            future = pool.submit(work, name)
            if name == "c":
                release["c"].set()
            return future

        results = runner.run_concurrently(_stages(tmp_path, "abc"), submit, lambda n, r: recorded.append(n))
    assert list(results) == ["a", "b", "c"] and results["b"] == {"model": "b"}
    assert recorded == ["a", "b", "c"] and runner.ran == ["a", "b", "c"]
    done = [line.split()[1] for line in lines if line.startswith("[done]")]
    assert done == ["c", "b", "a"]  # the log says the order they really finished in
    for name in "abc":
        marker = json.loads((tmp_path / "stages" / f"{name}.json").read_text())
        assert marker["key"] == f"key-{name}" and marker["result"] == {"model": name}
        assert (tmp_path / "models" / name / ".stage_key").read_text() == f"key-{name}"


def test_a_done_stage_is_skipped_and_never_submitted(tmp_path):
    runner = StageRunner(tmp_path, lambda m: None)
    runner.run("a", "key-a", lambda: {"model": "old"})
    submitted: list[str] = []

    def submit(name: str) -> Future:
        submitted.append(name)
        future: Future = Future()
        future.set_result({"model": name})
        return future

    results = runner.run_concurrently(_stages(tmp_path, "ab"), submit)
    assert submitted == ["b"]
    assert results == {"a": {"model": "old"}, "b": {"model": "b"}} and runner.skipped == ["a"]


def test_a_failed_stage_is_raised_after_the_others_are_recorded(tmp_path):
    lines: list[str] = []
    runner = StageRunner(tmp_path, lines.append)
    recorded: list[str] = []

    def submit(name: str) -> Future:
        future: Future = Future()
        if name == "a":
            future.set_exception(RuntimeError("out of memory in a"))
        elif name == "c":
            raise FileNotFoundError("no teacher for c")  # its job could not even be made
        else:
            future.set_result({"model": name})
        return future

    with pytest.raises(RuntimeError, match="out of memory in a"):
        runner.run_concurrently(_stages(tmp_path, "abcd"), submit, lambda n, r: recorded.append(n))
    assert recorded == ["b", "d"]
    assert not (tmp_path / "stages" / "a.json").exists() and (tmp_path / "stages" / "d.json").exists()
    assert not (tmp_path / "stages" / "c.json").exists()
    assert any(line.startswith("[fail] a") and "RuntimeError: out of memory in a" in line for line in lines)
    assert any(line.startswith("[fail] c") and "FileNotFoundError: no teacher for c" in line for line in lines)


def test_each_job_gets_the_cores_shared_out_or_the_threads_set(monkeypatch):
    monkeypatch.setattr("ekd_compress.pipeline.parallel.cpu_cores", lambda: 8)
    assert job_threads(TrainConfig(), 2) == 4
    assert job_threads(TrainConfig(), 3) == 2
    assert job_threads(TrainConfig(), 16) == 1
    assert job_threads(TrainConfig(threads=3), 2) == 3


@pytest.mark.parametrize("setting, message", [
    (["train.parallel_jobs=0"], "train.parallel_jobs=0: a number of trainings run at once, >= 1"),
    (["member_train.parallel_jobs=-1"], "member_train.parallel_jobs=-1: a number of trainings"),
    (["train.parallel_jobs=2", "train.accelerator=gpu"], "on a GPU set parallel_jobs to 1"),
])
def test_bad_parallel_jobs_are_refused_by_name(setting, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe("recipes/demo.yaml", setting)


TINY = [
    "data.synthetic.hours=0.008", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.002",
    "train.epochs=1", "member_train.epochs=1", "train.max_duration=30", "distill.seeds=[0,1]", "distill.ks=[1]",
    "distill.refuse_below_threshold=false", "baseline.params={hidden: 16, layers: 1}",
    "members=[{name: lstm, arch: lstm, params: {hidden: 16, layers: 1}}, {name: tdnn, arch: tdnn, params: {hidden: 16, layers: 2}}]",
    # one thread in both runs: the same arithmetic, so the same weights
    "train.threads=1", "member_train.threads=1",
]
TRAINED = ("baseline", "baseline_s1", "lstm", "tdnn", "essence_k1", "control_baseline_teacher", "student_s1")


def test_a_distill_trained_in_parallel_equals_one_trained_in_turn(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from ekd_compress.pipeline.distill import run_distill

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parallel = ["train.parallel_jobs=2", "member_train.parallel_jobs=2", f"tracking.uri={uri}",
                "tracking.experiment=parallel-test"]
    lines: list[str] = []
    run_distill(load_recipe("recipes/demo.yaml", TINY), tmp_path / "turn", log=lambda m: None, tracking=False)
    run_distill(load_recipe("recipes/demo.yaml", TINY + parallel), tmp_path / "par", log=lines.append)

    assert sum(line.startswith("training up to 2 of") for line in lines) == 3  # baselines, members, first students
    # the workers' lines reach the caller's log
    assert any(line.startswith("  baseline_s1 epoch 1/1") for line in lines)
    assert any(line.startswith("control_baseline_teacher: best dev wer") for line in lines)
    for name in TRAINED:
        turn = torch.load(tmp_path / "turn" / "models" / name / "model.pt", weights_only=False)["state_dict"]
        par = torch.load(tmp_path / "par" / "models" / name / "model.pt", weights_only=False)["state_dict"]
        assert turn.keys() == par.keys() and all(torch.equal(turn[k], par[k]) for k in turn), name
    registry = json.loads((tmp_path / "par" / "models.json").read_text())
    assert registry == json.loads((tmp_path / "turn" / "models.json").read_text())

    # every worker's MLflow run is a child of the distill's parent run, which the workers left open
    parent = (tmp_path / "par" / "mlflow_run.txt").read_text()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("parallel-test").experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.data.params["name"] for run in children) == sorted(TRAINED)
    assert {run.info.status for run in children} == {"FINISHED"}
    assert client.get_run(parent).info.status == "FINISHED"

    # resumed, nothing trains again
    lines.clear()
    run_distill(load_recipe("recipes/demo.yaml", TINY + parallel), tmp_path / "par", log=lines.append)
    stages = json.loads((tmp_path / "par" / "stages" / "last_run.json").read_text())
    assert stages["ran"] == [] and not any(line.startswith("training up to") for line in lines)
