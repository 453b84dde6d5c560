"""Weight averaging over the last epochs of a fit (`train.average_last`).

With a schedule that decays the learning rate to zero, the weights at the end of the last few
epochs sit around one optimum. Their uniform mean does not depend on which single epoch happened
to score best on a small dev set (checkpoint averaging, as ESPnet and icefall do it; here a
running mean, so only one extra copy of the weights is kept). On FSDD it scored better than the
best-epoch choice on a dev set that took no part in the choice, most of all for the students
(RESULTS.md).

    avg = LastEpochsAverage(n=10, max_epochs=48)     # a Lightning callback
    trainer = L.Trainer(callbacks=[avg, ...]); trainer.fit(...)
    if avg.count:
        module.model.load_state_dict(avg.averaged())  # mean of the weights after epochs 39..48

Floating-point tensors (parameters and buffers) are averaged; integer buffers (such as a
BatchNorm's batch counter) take their last value. The running sum is part of the callback's
state, so it is saved in every Lightning checkpoint and a resumed fit continues the same mean.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch


class LastEpochsAverage(L.Callback):
    """Accumulates `pl_module.model`'s weights at the end of each of the last `n` of `max_epochs`
    training epochs (1-based epochs max_epochs - n + 1 .. max_epochs).

    Runs in `on_train_epoch_end`, which Lightning calls before the checkpoint callbacks of the
    same hook save, so a checkpoint of epoch e holds the sum up to and including epoch e.
    """

    def __init__(self, n: int, max_epochs: int) -> None:
        if n < 1:
            raise ValueError(f"average over n={n} epochs: use 1 or more (train.average_last=0 switches it off)")
        self.n = int(n)
        self.first_epoch = max(1, int(max_epochs) - self.n + 1)  # 1-based
        self.epochs: list[int] = []  # 1-based epochs in the mean
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    def add(self, model: torch.nn.Module, epoch: int) -> None:
        """Add `model`'s current weights (after 1-based `epoch`) to the mean."""
        for name, t in model.state_dict().items():
            t = t.detach()
            self._dtypes[name] = t.dtype
            if t.is_floating_point():
                t64 = t.to(device="cpu", dtype=torch.float64)
                self._sum[name] = self._sum[name] + t64 if name in self._sum else t64.clone()
            else:
                self._sum[name] = t.to("cpu").clone()  # integer buffers: the last value
        self.epochs.append(int(epoch))

    @property
    def count(self) -> int:
        """Epochs in the mean so far."""
        return len(self.epochs)

    def averaged(self) -> dict[str, torch.Tensor]:
        """The mean weights as a state dict (each tensor in the dtype `model.state_dict()` had);
        raises when no epoch was added (the fit stopped before the averaging window)."""
        if not self.count:
            raise RuntimeError(f"no epoch was averaged: the fit ended before epoch {self.first_epoch}, "
                               "the first of the averaging window")
        return {name: (s / self.count).to(self._dtypes[name]) if s.is_floating_point() else s.clone()
                for name, s in self._sum.items()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch >= self.first_epoch and epoch not in self.epochs:
            self.add(pl_module.model, epoch)

    # the running mean travels in Lightning checkpoints (plain types and tensors: weights_only loads)
    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "first_epoch": self.first_epoch, "epochs": list(self.epochs),
                "sum": dict(self._sum), "dtypes": {k: str(v).removeprefix("torch.") for k, v in self._dtypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self._sum = dict(state["sum"])
        self._dtypes = {k: getattr(torch, v) for k, v in state["dtypes"].items()}
