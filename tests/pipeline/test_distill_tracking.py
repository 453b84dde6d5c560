"""A distill that fails is FAILED in MLflow; the experiment records where its run lives (issue 16)."""
from __future__ import annotations

import json

import pytest

from ekd_compress.tracking.uri import redact_uri


def test_failed_distill_marks_its_run_failed_and_records_the_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = load_recipe(None, ["data.corpus=fsdd", f"data.root={tmp_path / 'nowhere'}", f"tracking.uri={uri}",
                           "tracking.experiment=fail-test"])
    exp = tmp_path / "exp"
    with pytest.raises(Exception, match="does not exist"):
        run_distill(r, exp, log=lambda m: None)
    record = json.loads((exp / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == uri and record["experiment"] == "fail-test"
    assert (exp / "mlflow_run.txt").read_text() == record["run_id"]
    run = MlflowClient(tracking_uri=uri).get_run(record["run_id"])
    assert run.info.status == "FAILED"


def test_recorded_uri_never_holds_credentials():
    assert redact_uri("https://alice:s3cret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert redact_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert redact_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_a_copied_experiment_starts_its_own_run_and_the_original_keeps_its_own(tmp_path):
    pytest.importorskip("mlflow")
    import shutil

    from ekd_compress.pipeline.distill import run_distill
    from ekd_compress.recipe import load_recipe

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = load_recipe(None, ["data.corpus=fsdd", f"data.root={tmp_path / 'nowhere'}", f"tracking.uri={uri}",
                           "tracking.experiment=copy-test"])
    exp, copy = tmp_path / "exp", tmp_path / "copy"

    def run_id(folder):
        with pytest.raises(Exception, match="does not exist"):
            run_distill(r, folder, log=lambda m: None)
        record = json.loads((folder / "mlflow_run.json").read_text())
        assert record["exp_dir"] == str(folder.resolve())
        return record["run_id"]

    first = run_id(exp)
    shutil.copytree(exp, copy)
    assert run_id(copy) != first
    assert run_id(exp) == first  # in its own folder the experiment goes on logging to its run
