"""Checkpoint averaging (`train.average_last`): the mean of the last N epochs' weights is the model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ekd_compress.train.averaging import LastEpochsAverage


class Tiny(torch.nn.Module):
    def __init__(self, w: float, steps: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.register_buffer("steps", torch.tensor(steps))  # an integer buffer
        with torch.no_grad():
            self.lin.weight.fill_(w)
            self.lin.bias.fill_(-w)


def test_mean_of_the_added_weights_golden():
    avg = LastEpochsAverage(n=3, max_epochs=3)
    for epoch, (w, steps) in enumerate([(1.0, 10), (2.0, 20), (6.0, 30)], start=1):
        avg.add(Tiny(w, steps), epoch)
    mean = avg.averaged()
    assert torch.equal(mean["lin.weight"], torch.full((1, 2), 3.0))  # (1 + 2 + 6) / 3
    assert torch.equal(mean["lin.bias"], torch.full((1,), -3.0))
    assert mean["steps"].item() == 30 and mean["steps"].dtype == torch.int64  # integer buffers: the last value
    assert mean["lin.weight"].dtype == torch.float32
    assert avg.epochs == [1, 2, 3] and avg.count == 3


def test_only_the_last_n_epochs_are_added_once_each():
    avg = LastEpochsAverage(n=2, max_epochs=5)
    module = SimpleNamespace(model=Tiny(0.0, 0))
    for epoch0 in [0, 1, 2, 3, 3, 4]:  # the repeated epoch 4 (0-based 3) counts once
        with torch.no_grad():
            module.model.lin.weight.fill_(float(epoch0))
        avg.on_train_epoch_end(SimpleNamespace(current_epoch=epoch0), module)
    assert avg.epochs == [4, 5]
    assert torch.equal(avg.averaged()["lin.weight"], torch.full((1, 2), 3.5))  # mean of 3 and 4


def test_the_running_mean_survives_a_checkpoint_round_trip():
    whole = LastEpochsAverage(n=3, max_epochs=3)
    first = LastEpochsAverage(n=3, max_epochs=3)
    for epoch, w in enumerate([1.0, 4.0], start=1):
        whole.add(Tiny(w, epoch), epoch)
        first.add(Tiny(w, epoch), epoch)
    resumed = LastEpochsAverage(n=3, max_epochs=3)
    resumed.load_state_dict(first.state_dict())
    whole.add(Tiny(7.0, 3), 3)
    resumed.add(Tiny(7.0, 3), 3)
    assert resumed.epochs == [1, 2, 3]
    for name, t in whole.averaged().items():
        assert torch.equal(resumed.averaged()[name], t), name


def test_no_epoch_added_is_an_error_and_bad_n_is_refused():
    with pytest.raises(RuntimeError, match="before epoch 9"):
        LastEpochsAverage(n=2, max_epochs=10).averaged()
    with pytest.raises(ValueError, match="n=0"):
        LastEpochsAverage(n=0, max_epochs=10)


def test_the_recipe_refuses_a_negative_window_and_allows_a_long_one():
    from ekd_compress.recipe import RecipeError, load_recipe

    assert load_recipe("demo", ["train.average_last=2"]).train.average_last == 2
    # fsdd averages 10 epochs; shortening training to 3 does not fail (the fit then averages only the last epoch)
    assert load_recipe("fsdd", ["train.epochs=3"]).train.average_last == 10
    assert LastEpochsAverage(n=10, max_epochs=3).first_epoch == 1
    with pytest.raises(RecipeError, match=r"train.average_last=-1 must be >= 0"):
        load_recipe("demo", ["train.average_last=-1"])


def test_the_window_is_at_most_the_last_quarter_of_training():
    """A recipe's window does not follow a shortened training back into its early epochs (FSDD, 10
    epochs: the mean of all 10 scored 29.8 % dev WER, of the last 2 13.8 %)."""
    from ekd_compress.pipeline.plan import train_key
    from ekd_compress.recipe import TrainConfig

    def window(n: int, epochs: int) -> int:
        return TrainConfig(average_last=n, epochs=epochs).averaging_window()

    assert window(10, 48) == 10 and window(10, 40) == 10 and window(10, 24) == 6
    assert window(10, 10) == 2 and window(10, 3) == 1 and window(2, 1) == 1
    assert window(0, 48) == 0  # off stays off
    # the stage key holds the window actually used: a short run made before the cut is trained again
    assert train_key(TrainConfig(average_last=10, epochs=48))["average_last"] == 10
    assert train_key(TrainConfig(average_last=10, epochs=10))["average_last"] == 2


def test_average_last_keeps_old_keys_and_changes_new_ones():
    from ekd_compress.pipeline.plan import train_key
    from ekd_compress.recipe import TrainConfig

    assert "average_last" not in train_key(TrainConfig())  # experiments from before averaging keep their keys
    assert train_key(TrainConfig(average_last=3, epochs=48))["average_last"] == 3


def test_a_fit_saves_the_mean_of_its_last_epochs(tmp_path, monkeypatch):
    """An 8-epoch fit with average_last=3: the window is cut to the last quarter of training (2
    epochs, said in the log), model.pt holds the mean of the weights after epochs 7 and 8 (recorded
    by a probe callback), and last.ckpt carries the running sum for a resume."""
    import lightning as L

    from ekd_compress.train.fit import fit_model, load_model
    from tests.tiny_fit import tiny_fit

    class Probe(L.Callback):
        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.weights.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    module, loaders, cfg = tiny_fit(epochs=8, average_last=3)
    probe, lines = Probe(), []
    import ekd_compress.train.fit as fit_mod

    original_trainer = L.Trainer
    monkeypatch.setattr(fit_mod.L, "Trainer", lambda *a, **kw: original_trainer(
        *a, **{**kw, "callbacks": [*kw["callbacks"], probe]}))
    threads = torch.get_num_threads()
    try:
        res = fit_model(module, *loaders, tmp_path / "m", cfg, seed=0, log=lines.append)
    finally:
        torch.set_num_threads(threads)  # fit_model sets the process's torch threads
    assert len(probe.weights) == 8
    model, meta = load_model(res.model_path)
    assert meta["averaged_epochs"] == [7, 8] and res.best_epoch == 8
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            want = (probe.weights[6][name].double() + probe.weights[7][name].double()) / 2
            assert torch.allclose(t.double(), want, atol=1e-6), name
    assert any("average_last=3 is more than a quarter of 8 epochs: averaging the last 2" in line for line in lines), lines
    assert any("mean of the weights after epochs 7-8 (2): dev_loss" in line for line in lines), lines
    assert res.best_score == pytest.approx(meta["best_score"]) and res.best_score > 0
    ckpt = torch.load(tmp_path / "m" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved = [v for k, v in ckpt["callbacks"].items() if "LastEpochsAverage" in k]
    assert len(saved) == 1 and saved[0]["epochs"] == [7, 8]
