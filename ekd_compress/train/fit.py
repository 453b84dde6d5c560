"""Fit one model with Lightning's Trainer, and save / load the result.

`fit_model` trains with checkpoints in `out_dir/checkpoints` (resumes from `last.ckpt`
when one exists), selects the best epoch on dev WER (or dev loss) or, with
`train.average_last: N`, takes the mean of the weights of the last N epochs
(`train.averaging`), early-stops (and, with
`watchdog="stop"`, raises `train.watchdog.StalledRun` for a run stuck on the blank plateau; with
`watchdog="report"`, trains on and returns the failed check in `FitResult.stalled`), and
writes `out_dir/model.pt`: the selected weights plus what is needed to rebuild the
model (architecture, params, input dim, vocabulary size).

Crash safety: checkpoints, model.pt and fit.json are written to a temporary file and
renamed into place, so a process killed at any moment leaves either the old file or the
new one, never half of one; a re-run resumes from `last.ckpt`, and a fit that had
finished (fit.json says so) is not trained again.

In a torchrun job every rank trains (Lightning DDP, devices = processes per node); rank 0
writes the files, and all ranks check that they hold identical weights afterwards.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ekd_compress.atomic import write_atomic, write_json_atomic
from ekd_compress.recipe import TrainConfig
from ekd_compress.train.distributed import all_gather, barrier, dist_info


class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best on the monitored metric, plus last.ckpt) that prints one plain
    line per epoch once that epoch's checkpoints are on disk, so a log line "epoch N" means
    a re-run resumes after epoch N (and log files get lines, not progress bars)."""

    def __init__(self, name: str, log=print, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name, self._emit, self.start = name, log, time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after validation and its saves in Lightning 2
        super().on_train_epoch_end(trainer, pl_module)
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        parts = " ".join(f"{k}={m[k]:.3f}" for k in sorted(m) if k.startswith(("train_", "dev_")))
        self._emit(f"  {self.name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {parts} "
                   f"({time.time() - self.start:.0f} s)")


class RngState(L.Callback):
    """Saves the Python, NumPy and torch random states in each checkpoint and restores them
    on resume, so a run killed after epoch e and resumed draws the same augmentation and
    dropout masks in epoch e+1 as a run that was never interrupted."""

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
        return {"python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import random

        import numpy as np

        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])


class AtomicCheckpointIO(L.pytorch.plugins.io.TorchCheckpointIO):
    """Lightning checkpoints written to `NAME.tmp`, fsynced, then renamed over `NAME`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        write_atomic(Path(path), lambda f: torch.save(checkpoint, f))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order (equal digests = equal weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FitResult:
    model_path: Path
    best_score: float        # dev WER (percent) or dev loss, per select_on
    best_epoch: int
    epochs_run: int
    train_seconds: float     # wall time of the fit; after a resume, of the resumed part only
    stalled: Optional[dict[str, Any]] = None  # watchdog="report": the first check the run failed (StalledAttempt)


def resolve_device(cfg: TrainConfig) -> tuple[str, str]:
    """(accelerator, precision) for Lightning: bf16 autocast on CUDA, fp32 on CPU."""
    accel = cfg.accelerator
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    if accel == "gpu" and not torch.cuda.is_available():
        raise ValueError("train.accelerator=gpu but torch sees no CUDA GPU; use train.accelerator=cpu or auto")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if accel == "gpu" else "32-true"
    return accel, precision


def fit_model(
    module,  # AsrModule
    train_loader,
    dev_loader,
    out_dir: Path,
    cfg: TrainConfig,
    seed: int,
    logger: Any = None,
    extra_meta: Optional[dict[str, Any]] = None,
    log=print,
    watchdog: str = "off",
) -> FitResult:
    """Train `module`; `watchdog` ("off", "stop" or "report") is what the recipe's
    `train.watchdog` checks do: nothing, raise `StalledRun`, or note the failure in the result."""
    if watchdog not in ("off", "stop", "report"):
        raise ValueError(f"watchdog={watchdog!r}: use 'off', 'stop' or 'report'")
    from lightning.pytorch.callbacks import EarlyStopping

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    timing_file = out_dir / "fit.json"
    finished = _finished_fit(out_dir)
    if finished is not None:  # killed after training, before the stage was marked done
        model, meta = load_model(out_dir / "model.pt")
        module.model.load_state_dict(model.state_dict())
        log(f"  {name_of(out_dir, extra_meta)}: training had finished; kept {out_dir / 'model.pt'}")
        return FitResult(out_dir / "model.pt", float(meta["best_score"]), int(meta["best_epoch"]),
                         int(finished["epochs_run"]), float(finished["train_seconds"]), meta.get("watchdog_failed"))
    info = dist_info()
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning vs torch 2.13 noise
    L.seed_everything(seed, workers=True, verbose=False)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    monitor = f"dev_{cfg.select_on}"  # dev_wer | dev_cer | dev_per (logged by the module) | dev_loss
    stop = cfg.select_on if cfg.stop_on == "select" else cfg.stop_on  # WER sits at ~100 % while early models still learn
    stop_monitor = f"dev_{stop}"
    metric_key = f"dev_{getattr(module, 'metric', 'wer')}"
    name = name_of(out_dir, extra_meta)
    best_cb = EpochCheckpoint(name, log, dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_last=True)
    callbacks = [best_cb, EarlyStopping(monitor=stop_monitor, mode="min", patience=cfg.patience), RngState()]
    averager = None
    if cfg.average_last:
        from ekd_compress.train.averaging import LastEpochsAverage

        window = cfg.averaging_window()
        if window < cfg.average_last:
            log(f"  {name}: average_last={cfg.average_last} is more than a quarter of {cfg.epochs} epochs: averaging "
                f"the last {window} (a mean that reaches back into early training is a worse model)")
        averager = LastEpochsAverage(window, cfg.epochs)
        callbacks.append(averager)
    guard = None
    if watchdog != "off" and cfg.watchdog:
        from ekd_compress.train.watchdog import ConvergenceWatchdog

        guard = ConvergenceWatchdog({int(e): float(w) for e, w in cfg.watchdog}, seed, monitor=metric_key,
                                    stop=watchdog == "stop")
        callbacks.append(guard)
    accel, precision = resolve_device(cfg)
    distributed = {"devices": info.local_world_size, "num_nodes": info.num_nodes, "strategy": "ddp"} \
        if info.enabled else {"devices": 1}
    quiet_lightning()
    bar = progress_bar()
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=accel, precision=precision, callbacks=callbacks + ([bar] if bar else []),
        **distributed, plugins=[AtomicCheckpointIO()],
        logger=logger if logger is not None else False, gradient_clip_val=cfg.grad_clip,
        default_root_dir=str(out_dir), use_distributed_sampler=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=10, deterministic=False, enable_progress_bar=bar is not None,
    )
    last = ckpt_dir / "last.ckpt"
    if last.exists():
        set_sampler_epoch(train_loader, resumed_epoch(last))
    start = time.time()
    trainer.fit(module, train_loader, dev_loader, ckpt_path=str(last) if last.exists() else None)
    seconds = time.time() - start
    if info.enabled:
        check_same_weights(module.model, name)
    best_path = best_cb.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    best_score = float(best_cb.best_model_score) if best_cb.best_model_score is not None else float("nan")
    best_epoch, selected = int(state["epoch"]), {}
    if averager is not None:
        if averager.count:
            best_score, best_epoch, selected = _use_average(trainer, module, dev_loader, averager, monitor, best_score,
                                                            name, log)
        else:
            log(f"  {name}: training stopped at epoch {trainer.current_epoch}, before the averaging window "
                f"(epochs {averager.first_epoch}-{cfg.epochs}); kept the best epoch {best_epoch}")
    model_path = out_dir / "model.pt"
    stalled = guard.failed.to_dict() if guard is not None and guard.failed is not None else None
    if stalled:
        selected["watchdog_failed"] = stalled
    if info.is_main:
        save_model(module.model, model_path, {**(extra_meta or {}), "best_score": best_score, **selected,
                                              "select_on": cfg.select_on, "best_epoch": best_epoch})
        write_json_atomic(timing_file, {"train_seconds": seconds, "epochs_run": trainer.current_epoch,
                                        "complete": True, "world_size": info.world_size})
    barrier()
    return FitResult(model_path, best_score, best_epoch, trainer.current_epoch, seconds, stalled)


def _use_average(trainer, module, dev_loader, averager, monitor: str, single: float, name: str,
                 log) -> tuple[float, int, dict]:
    """Load the averaged weights into `module` and score them on dev -> (dev score, last averaged
    epoch, meta for model.pt). `single`, the best single epoch's dev score, is logged and kept beside it."""
    module.model.load_state_dict(averager.averaged())
    scores = trainer.validate(module, dev_loader, verbose=False)[0]
    score = float(scores[monitor])
    first, last = averager.epochs[0], averager.epochs[-1]
    log(f"  {name}: mean of the weights after epochs {first}-{last} ({averager.count}): {monitor} {score:.3f} "
        f"(best single epoch: {single:.3f}); the mean is the model")
    return score, last, {"averaged_epochs": list(averager.epochs), "best_single_epoch_score": single}


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners ("GPU available / TPU available", the "Tip: litlogger"
    advert): informational lines on every model of a run. Its warnings and errors still show."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def progress_bar():
    """A transient rich bar (cleared after each epoch) when stderr is a terminal; None in a log
    file or a pipe, where the one plain line per epoch (EpochCheckpoint) is the progress."""
    import os
    import sys

    if not sys.stderr.isatty() or os.environ.get("EKD_NO_PROGRESS_BAR") or dist_info().enabled:
        return None
    try:
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(leave=False)
    except (ImportError, ModuleNotFoundError):  # rich missing: lines only
        return None


def resumed_epoch(checkpoint: Path) -> int:
    """The epoch a fit resumed from `checkpoint` trains first (Lightning's processed-epoch count)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def set_sampler_epoch(loader, epoch: int) -> None:
    """Tell the loader's sampler the epoch before Lightning draws the first resumed batches.

    Lightning creates a resumed fit's first batch iterator before it sets the sampler's
    epoch, so without this a run resumed after epoch e replays epoch 0's batch order where
    an uninterrupted run draws epoch e+1's (lhotse shuffles by seed + epoch).
    """
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)


def name_of(out_dir: Path, extra_meta: Optional[dict[str, Any]]) -> str:
    return (extra_meta or {}).get("name", Path(out_dir).name)


def _finished_fit(out_dir: Path) -> Optional[dict[str, Any]]:
    """fit.json of a fit that completed and saved model.pt, else None."""
    timing_file = out_dir / "fit.json"
    if not (timing_file.exists() and (out_dir / "model.pt").exists()):
        return None
    done = json.loads(timing_file.read_text())
    return done if done.get("complete") else None


def check_same_weights(model: torch.nn.Module, name: str) -> None:
    """Raise unless every data-parallel rank holds bit-identical weights for `model`."""
    digests = all_gather(weights_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"{name}: the data-parallel ranks ended training with different weights "
                           f"(digests {digests}); DDP lost synchronisation, do not use this model")


def save_model(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Atomically write weights + rebuild info; `model.build_info` must hold arch/params/dims."""
    path = Path(path)
    blob = {"build": model.build_info, "meta": meta, "state_dict": model.state_dict()}
    write_atomic(path, lambda f: torch.save(blob, f))
    return path


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, meta)."""
    from ekd_compress.models import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; run `ekd-compress distill` to train it")
    # weights_only: a model file from someone else cannot run code when it is loaded
    blob = torch.load(path, map_location="cpu", weights_only=True)
    b = blob["build"]
    model = build_model(b["arch"], b["input_dim"], b["vocab_size"], **b["params"])
    model.build_info = b
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["meta"]


def build(arch: str, input_dim: int, vocab_size: int, params: dict[str, Any]) -> torch.nn.Module:
    """build_model + remember how, so save_model can record it."""
    from ekd_compress.models import build_model

    model = build_model(arch, input_dim, vocab_size, **params)
    model.build_info = {"arch": arch, "input_dim": input_dim, "vocab_size": vocab_size, "params": dict(params)}
    return model
