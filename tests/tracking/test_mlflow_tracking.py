"""MLflow tracking against a real sqlite store in a temporary directory (one per module)."""
import pytest

from ekd_compress.tracking import NullTracker, Tracker, TrackingError, flatten_params

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_flatten_params():
    flat = flatten_params({"model": {"dim": 256, "layers": [1, 2]}, "lr": 1e-3, "none": None, "long": "x" * 7000})
    assert flat["model.dim"] == "256"
    assert flat["model.layers"] == "[1, 2]"
    assert flat["lr"] == "0.001"
    assert flat["none"] == "None"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")
    with pytest.raises(TrackingError, match="shorten"):
        flatten_params({"k" * 300: 1})


def test_keys_mlflow_refuses_are_made_safe_and_log(uri, client):
    flat = flatten_params({"distill": {"verdict_targets": {"student vs baseline (seed mean)": 0.9}}})
    assert flat == {"distill.verdict_targets.student vs baseline _seed mean_": "0.9"}
    run_id = Tracker(uri, "ekd-keys").start_parent("keys", params={"t": {"a (b)": 1}})
    assert client.get_run(run_id).data.params == {"t.a _b_": "1"}


def test_parent_child_params_metrics_artifacts(uri, client, tmp_path):
    tracker = Tracker(uri, "ekd-test")
    parent_id = tracker.start_parent("pipeline", params={"data": {"corpus": "swbd"}, "seed": 7}, tags={"recipe": "t"})
    report = tmp_path / "report.json"
    report.write_text("{}")
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    with tracker.child("teacher-0", params={"model": {"dim": 64}}) as child:
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker.log_artifact(report)
        child_id = child.run_id
    tracker.log_metrics({"final_wer": 12.5})
    tracker.log_artifacts(folder, "plots")
    tracker.end()

    parent = client.get_run(parent_id)
    assert parent.data.params == {"data.corpus": "swbd", "seed": "7"}
    assert parent.data.tags["recipe"] == "t"
    assert parent.data.metrics["final_wer"] == 12.5
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent_id, "plots")] == ["plots/a.txt"]

    run = client.get_run(child_id)
    assert run.data.params == {"model.dim": "64"}
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.info.run_name == "teacher-0"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(child_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [a.path for a in client.list_artifacts(child_id)] == ["report.json"]


def test_failed_child_and_resume(uri, client):
    tracker = Tracker(uri, "ekd-test", check=False)
    parent_id = tracker.start_parent("resumable", params={"a": 1})
    with pytest.raises(RuntimeError):
        with tracker.child("stage") as child:
            failed_id = child.run_id
            raise RuntimeError("stage crashed")
    assert client.get_run(failed_id).info.status == "FAILED"
    tracker.end("KILLED")

    again = Tracker(uri, "ekd-test", check=False)
    assert again.start_parent("resumable", params={"a": 1, "b": 2}, run_id=parent_id) == parent_id
    assert client.get_run(parent_id).info.status == "RUNNING"
    again.log_metrics({"m": 3.0}, step=1)
    again.end()
    run = client.get_run(parent_id)
    assert run.data.params == {"a": "1", "b": "2"} and run.data.metrics["m"] == 3.0

    third = Tracker(uri, "ekd-test", check=False)
    with pytest.raises(TrackingError, match="a: '1' -> '5'"):
        third.start_parent("resumable", params={"a": 5}, run_id=parent_id)
    with pytest.raises(TrackingError, match="no-such-run"):
        Tracker(uri, "ekd-test", check=False).start_parent("x", run_id="no-such-run")


def test_lightning_logger_writes_into_child(uri, client):
    tracker = Tracker(uri, "ekd-test", check=False)
    tracker.start_parent("with-lightning")
    with tracker.child("student") as child:
        logger = tracker.lightning_logger(child.run_id)
        assert logger.run_id == child.run_id
        logger.log_metrics({"val_loss": 0.25}, step=4)
    tracker.end()
    history = client.get_metric_history(child.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(4, 0.25)]


def test_null_tracker_same_api(tmp_path):
    tracker = NullTracker("ignored", "ignored")
    assert tracker.start_parent("x", params={"a": {"b": 1}}) == ""
    with tracker.child("c", params={"d": 2}) as run:
        run.log_metrics({"loss": 1.0}, step=1)
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_artifact(tmp_path / "missing.txt")
    assert tracker.lightning_logger() is None
    tracker.end()


def test_changed_params_leave_the_old_run_and_a_new_parent_can_start(uri, client):
    """What distill does when the recipe changed: resuming the old parent fails on its
    immutable params, so it starts a new parent with the same tracker."""
    first = Tracker(uri, "ekd-test", check=False)
    old_id = first.start_parent("changed", params={"lam": 0.5})
    first.end()
    tracker = Tracker(uri, "ekd-test", check=False)
    with pytest.raises(TrackingError, match="lam: '0.5' -> '0.8'"):
        tracker.start_parent("changed", params={"lam": 0.8}, run_id=old_id)
    assert client.get_run(old_id).info.status == "FINISHED"  # restored, not left RUNNING
    new_id = tracker.start_parent("changed", params={"lam": 0.8})
    assert new_id != old_id and tracker.parent.run_id == new_id
    tracker.end()
    assert client.get_run(new_id).data.params == {"lam": "0.8"}
    assert client.get_run(old_id).data.params == {"lam": "0.5"}
