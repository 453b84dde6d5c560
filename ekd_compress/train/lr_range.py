"""The learning-rate range test (Smith 2017, "Cyclical learning rates"): a model's peak LR, measured.

`lr_range_test` trains a fresh model, built, initialised and fed exactly as `train` would (the
job's architecture, seed, global CMVN, output-prior start, losses, SpecAugment, batches), for
`steps` AdamW steps while the learning rate rises geometrically from `lr_min` to `lr_max`
(batches shuffled from the first step: no SortaGrad). It records the training loss (the job's
weighted losses, divided by the batch's target tokens so that batches of long and short strings
compare) at every step, smooths it
with an exponential moving average (bias-corrected), and stops early once the smoothed loss is
`diverge` times its minimum or not finite.

From the smoothed curve L(lr):
    min_loss_lr   the LR at the lowest smoothed loss: past it, steps are too large to help
    peak_lr_range (min_loss_lr / 10, min_loss_lr): where a peak LR that a schedule warms up to
                  and decays from belongs. The usual rule of thumb takes the low end (a decade
                  below where the loss stops falling). On FSDD, under the recipes' warm-up and
                  48-epoch cosine decay (AdamW), the low end trained worse: a GRU member ended
                  behind, a transformer member stalled on every seed, and the recipes' 2e-3 sits
                  at 0.14-1.05x min_loss_lr of the four architectures (RESULTS.md, "Learning-rate
                  range test"). So the range is reported, not one number.
    steepest_lr   the LR where L falls fastest per decade of LR, at or before min_loss_lr and
                  after the first 10 % of steps (for reference: on CTC the first steps at any
                  LR fall fastest, as the output learns the blank's share, and then the loss
                  sits on the blank plateau; 200 steps on FSDD never left it, so the test
                  takes 1,000 by default)

The curve is a short, one-seed measurement: read it as "which decade", and let dev scores of
full trainings decide between neighbouring values (RESULTS.md, "learning rate range test").
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ekd_compress.train.job import TrainData, TrainJob


@dataclass
class LrRange:
    """One range test: the LR and training loss (per target token) of every step taken, the smoothed
    loss, and what was read from it (module docstring)."""
    name: str
    arch: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    min_loss_lr: float
    steepest_lr: float
    stopped: str                 # "end" (all steps) or why it stopped early
    seconds: float

    @property
    def peak_lr_range(self) -> tuple[float, float]:
        """Where a schedule's peak LR belongs (module docstring): a decade below min_loss_lr, up to it."""
        return self.min_loss_lr / 10, self.min_loss_lr

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "peak_lr_range": list(self.peak_lr_range)}


def lr_schedule(lr_min: float, lr_max: float, steps: int) -> np.ndarray:
    """(steps,) learning rates rising geometrically from lr_min to lr_max."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"lr_min={lr_min}, lr_max={lr_max}: need 0 < lr_min < lr_max, e.g. 1e-5 and 1e-1")
    if steps < 10:
        raise ValueError(f"steps={steps}: a range test needs at least 10 steps (e.g. 200)")
    return lr_min * (lr_max / lr_min) ** (np.arange(steps) / (steps - 1))


def smooth(losses: Sequence[float], beta: float = 0.9) -> np.ndarray:
    """Exponential moving average of `losses`, bias-corrected (the first value is the first loss)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(x)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def read_curve(lrs: Sequence[float], smoothed: Sequence[float]) -> tuple[float, float]:
    """(min_loss_lr, steepest_lr) of a smoothed range-test curve (module docstring)."""
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if len(lrs) != len(smoothed) or len(lrs) < 3:
        raise ValueError(f"a range-test curve needs at least 3 points of (lr, loss); "
                         f"got {len(lrs)} and {len(smoothed)}")
    lowest = int(np.nanargmin(smoothed))
    slope = np.gradient(smoothed, np.log10(lrs))  # loss change per decade of LR
    skip = min(len(lrs) // 10, lowest)  # the start-up transient
    steepest = skip + int(np.argmin(slope[skip:lowest + 1]))
    min_loss_lr, steepest_lr = float(lrs[lowest]), float(lrs[steepest])
    return min_loss_lr, steepest_lr


def lr_range_test(job: TrainJob, data: TrainData, lr_min: float = 1e-5, lr_max: float = 1.0, steps: int = 1000,
                  diverge: float = 4.0, beta: float = 0.9,
                  progress: Optional[Callable[[int, float, float], None]] = None) -> LrRange:
    """Run the range test on `job` (its losses, model and training settings; its LR and schedule
    are replaced by the test's), seeded with `job.seed`.

    Args:
        lr_min, lr_max: the first and last learning rate; `steps` optimiser steps between them.
        diverge: stop once the smoothed loss exceeds `diverge` x its minimum so far.
        progress: called after each step with (step, lr, loss).
    """
    import torch

    from ekd_compress.train.job import prepare_training

    schedule = lr_schedule(lr_min, lr_max, steps)
    # shuffled from the first step: SortaGrad's short-first epoch would make the loss climb with the length
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, sortagrad=False))
    prepared = prepare_training(job, data, job.seed)
    module, model = prepared.module, prepared.module.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(schedule[0]), weight_decay=job.train.weight_decay)
    lrs: list[float] = []
    losses: list[float] = []
    stopped, best, start = "end", math.inf, time.time()
    batches = iter(prepared.train_loader)
    for step, lr in enumerate(schedule):
        try:
            batch = next(batches)
        except StopIteration:  # another epoch of the same loader (reshuffled)
            batches = iter(prepared.train_loader)
            batch = next(batches)
        for group in opt.param_groups:
            group["lr"] = float(lr)
        feats = module.specaug(batch["feats"], batch["lengths"])
        log_probs, out_lengths = model(feats, batch["lengths"])
        loss, _ = module.objective(log_probs, out_lengths, batch, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
        opt.step()
        lrs.append(float(lr))
        # per target token: batches of longer strings have larger per-utterance losses
        losses.append(float(loss.detach()) * len(batch["ids"]) / max(1, int(batch["target_lengths"].sum())))
        if progress is not None:
            progress(step, float(lr), losses[-1])
        current = smooth(losses, beta)[-1]
        if not math.isfinite(current):
            stopped = f"the loss is not finite at lr {lr:.2e}"
            break
        best = min(best, current)
        if current > diverge * best:
            stopped = f"diverged at lr {lr:.2e} (smoothed loss {current:.1f} > {diverge:g} x its minimum {best:.1f})"
            break
    smoothed = smooth(losses, beta)
    finite = np.isfinite(smoothed)
    min_loss_lr, steepest_lr = read_curve(np.asarray(lrs)[finite], smoothed[finite])
    return LrRange(job.name, job.arch, lrs, losses, smoothed.tolist(), min_loss_lr, steepest_lr, stopped,
                   time.time() - start)

