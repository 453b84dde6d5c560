"""Convergence watchdog: stop a run stuck on the CTC blank plateau early, so it can be restarted.

CTC models trained from scratch can settle on the all-blank output (every frame blank,
every word deleted) and stay there for many epochs, or for good (Zeyer et al. 2021,
arXiv 2105.14849); on FSDD one TDNN seed in three did (dev WER 108 %), and another settled at
28 % while its siblings went on to 8 %. Waiting with early stopping wastes the run's whole
budget and then reports a failed model as a seed. The watchdog looks at the end of each
epoch listed in its checks [(epoch, max dev WER %), ...] at the dev metrics the module logged:

  dev_blank  share of dev utterances whose greedy output is empty (1.0 = all blank)
  dev_wer    dev WER, percent (or the recipe's metric, `dev_cer` / `dev_per`: `monitor`)

and raises `StalledRun` when dev_blank is 1.0 or dev_wer is above that epoch's bound. The caller
(`ekd_compress.train.job.train`) restarts the run with the next seed and records the
failed attempt in models.json, results.json/results.md and MLflow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning as L


@dataclass
class StalledAttempt:
    """One restarted attempt: its seed, the epoch it was judged at and its dev numbers."""
    seed: int
    epoch: int
    dev_wer: float      # percent
    dev_blank: float    # share of dev utterances decoded as empty, 0..1
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StalledRun(RuntimeError):
    """A run the watchdog stopped; `attempt` says why."""

    def __init__(self, attempt: StalledAttempt) -> None:
        super().__init__(f"seed {attempt.seed} stalled at epoch {attempt.epoch}: {attempt.reason}")
        self.attempt = attempt


def restart_seed(seed: int, attempt: int) -> int:
    """The seed of restart number `attempt` (0 = the run's own seed). Steps of 1000 keep
    restarts clear of the recipe's other seeds (0, 1, 2, ...)."""
    return seed + 1000 * attempt


class ConvergenceWatchdog(L.Callback):
    """Raise `StalledRun` at the end of each epoch in `checks` ({epoch: max dev WER %}) if the
    dev output is all blank or the dev WER is above the bound. Runs after validation
    (`on_train_epoch_end`).

    With `stop=False` (a run's last allowed seed: no restart is left) it raises nothing and keeps
    the first failed check in `failed`, so the run is kept but reported as not converged.
    """

    def __init__(self, checks: dict[int, float], seed: int, monitor: str = "dev_wer", stop: bool = True) -> None:
        if not checks or min(checks) < 1:
            raise ValueError(f"watchdog checks={checks}: give epochs >= 1 (no checks means no watchdog: do not add one)")
        self.checks, self.seed, self.monitor, self.stop = dict(checks), seed, monitor, stop
        self.failed: StalledAttempt | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.checks:
            return
        m = trainer.callback_metrics
        if self.monitor not in m or "dev_blank" not in m:
            return  # no validation ran this epoch: nothing to judge
        attempt = judge(float(m[self.monitor]), float(m["dev_blank"]), self.checks[epoch], self.seed, epoch,
                        label=self.monitor.removeprefix("dev_").upper())
        if attempt is not None and self.stop:
            raise StalledRun(attempt)
        if attempt is not None and self.failed is None:
            self.failed = attempt

    # the failed check travels in Lightning checkpoints, so a resumed fit still reports it
    def state_dict(self) -> dict[str, Any]:
        return {"failed": self.failed.to_dict() if self.failed is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        failed = state.get("failed")
        self.failed = StalledAttempt(**failed) if failed else None


def judge(dev_wer: float, dev_blank: float, max_wer: float, seed: int, epoch: int,
          label: str = "WER") -> StalledAttempt | None:
    """A StalledAttempt when the run failed the watchdog's test, else None. `dev_wer` is the
    recipe's error rate in percent (WER, CER or PER: `label`)."""
    if dev_blank >= 1.0:
        reason = "every dev utterance decodes to nothing (all-blank plateau)"
    elif dev_wer > max_wer:
        reason = f"dev {label} {dev_wer:.1f} % is above the watchdog bound {max_wer:g} % for epoch {epoch}"
    else:
        return None
    return StalledAttempt(seed=seed, epoch=epoch, dev_wer=dev_wer, dev_blank=dev_blank, reason=reason)
