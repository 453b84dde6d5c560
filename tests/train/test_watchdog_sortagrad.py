"""The convergence watchdog (a stalled run is restarted with the next seed and recorded) and
SortaGrad (the first epoch shortest-first)."""
import json

import pytest
from click.testing import CliRunner

from ekd_compress.train.watchdog import judge, restart_seed


def test_judge_golden():
    assert judge(40.0, 0.0, 95.0, seed=3, epoch=4) is None
    blank = judge(100.0, 1.0, 95.0, seed=3, epoch=4)
    assert blank is not None and "all-blank" in blank.reason and blank.seed == 3 and blank.epoch == 4
    high = judge(96.0, 0.2, 95.0, seed=0, epoch=2)
    assert high is not None and "above the watchdog bound 95 % for epoch 2" in high.reason
    assert judge(95.0, 0.99, 95.0, seed=0, epoch=2) is None  # at the threshold and not all blank: keeps going
    per = judge(50.0, 0.1, 40.0, seed=0, epoch=3, label="PER")  # a phone recipe's watchdog reads dev PER
    assert per is not None and per.reason.startswith("dev PER 50.0 % is above the watchdog bound 40 %")
    assert [restart_seed(2, a) for a in range(3)] == [2, 1002, 2002]


def test_the_last_seed_is_judged_not_stopped_and_its_failure_survives_a_checkpoint():
    from types import SimpleNamespace

    from ekd_compress.train.watchdog import ConvergenceWatchdog, StalledRun

    def epoch_end(dog, epoch, wer):
        trainer = SimpleNamespace(current_epoch=epoch - 1, callback_metrics={"dev_wer": wer, "dev_blank": 0.0})
        dog.on_train_epoch_end(trainer, None)

    with pytest.raises(StalledRun):
        epoch_end(ConvergenceWatchdog({2: 30.0}, seed=5), 2, 40.0)
    dog = ConvergenceWatchdog({2: 30.0, 4: 20.0}, seed=5, stop=False)
    epoch_end(dog, 1, 90.0)  # not a checked epoch
    assert dog.failed is None
    epoch_end(dog, 2, 40.0)
    epoch_end(dog, 4, 25.0)  # the first failure is the one kept
    assert dog.failed.epoch == 2 and dog.failed.seed == 5 and "above the watchdog bound 30 %" in dog.failed.reason
    resumed = ConvergenceWatchdog({2: 30.0, 4: 20.0}, seed=5, stop=False)
    resumed.load_state_dict(dog.state_dict())
    assert resumed.failed == dog.failed


def test_a_stalled_run_is_restarted_and_recorded(tmp_path, monkeypatch):
    """A bound of -1 % makes every run fail the watchdog: each model restarts once with the
    next seed, whose run (the last one allowed) is kept but reported as not converged; the
    restart and the failure show in models.json, results and MLflow."""
    from ekd_compress.cli.main import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tmp_path / "exp"
    sets = ["data.synthetic.hours=0.01", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.002",
            "train.epochs=2", "train.max_duration=30", "distill.seeds=[0]", "distill.ks=[1]", "members=[]",
            "distill.control=false", "baseline.params={hidden: 16, layers: 1}",
            "train.watchdog=[[1,-1]]", "train.max_restarts=1"]
    args = ["distill", "recipes/demo.yaml", "--out", str(exp)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "WATCHDOG baseline: seed 0 stalled at epoch 1" in result.output
    registry = {e["name"]: e for e in json.loads((exp / "models.json").read_text())}
    assert registry["baseline"]["seed"] == 1000                  # the restart's seed trained the model
    assert [a["seed"] for a in registry["baseline"]["restarts"]] == [0]
    results = json.loads((exp / "results.json").read_text())
    assert results["restarts"]["baseline"][0]["epoch"] == 1
    assert set(results["restarts"]) == {"baseline", "essence_k1"}
    assert "baseline: seed 0 stopped at epoch 1" in (exp / "results.md").read_text()
    # the restart (the last seed allowed) fails the bound too: kept, and reported as not converged
    assert registry["baseline"]["unconverged"]["seed"] == 1000 and registry["baseline"]["unconverged"]["epoch"] == 1
    assert set(results["unconverged"]) == {"baseline", "essence_k1"}
    assert "WATCHDOG baseline: seed 1000 also failed the watchdog" in result.output
    assert "converged with seed" not in result.output
    assert "- baseline: seed 1000 at epoch 1" in (exp / "results.md").read_text()
    # the stalled attempt's MLflow child run ended FAILED, tagged with the reason
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("ekd-compress").experiment_id
    failed = client.search_runs([exp_id], "tags.watchdog = 'stalled'")
    assert {r.info.run_name for r in failed} == {"baseline", "essence_k1"}
    assert all(r.info.status == "FAILED" for r in failed)
    kept = client.search_runs([exp_id], "tags.watchdog = 'not_converged'")
    assert {r.info.run_name for r in kept} == {"baseline", "essence_k1"}
    # a re-run resumes: nothing is trained again and the record stays
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and "WATCHDOG" not in again.output
    assert json.loads((exp / "results.json").read_text())["restarts"] == results["restarts"]


def test_sortagrad_first_epoch_is_shortest_first():
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    from ekd_compress.train.data import SortaGradSampler, make_loader

    cuts = CutSet.from_cuts(dummy_cut(i, duration=0.5 + (i * 7 % 40) / 10) for i in range(60))

    class Durations:
        def __getitem__(self, batch):
            return [c.duration for c in batch]

    loader = make_loader(cuts, Durations(), max_duration=6.0, shuffle=True, seed=1, sortagrad=True)
    assert isinstance(loader.sampler, SortaGradSampler)
    first = [d for batch in loader for d in batch]
    assert first == sorted(first) and len(first) == 60
    loader.sampler.set_epoch(1)
    second = [d for batch in loader for d in batch]
    assert sorted(second) == first and second != first       # later epochs: every cut, shuffled
    plain = make_loader(cuts, Durations(), max_duration=6.0, shuffle=True, seed=1)
    assert not isinstance(plain.sampler, SortaGradSampler)
