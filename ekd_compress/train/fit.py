"""Fit one model with Lightning's Trainer, and save / load the result.

`fit_model` trains with checkpoints in `out_dir/checkpoints` (resumes from `last.ckpt`
when one exists), selects the best epoch on dev WER (or dev loss), early-stops, and
writes `out_dir/model.pt`: the selected weights plus what is needed to rebuild the
model (architecture, params, input dim, vocabulary size).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from ekd_compress.recipe import TrainConfig


class EpochLine(L.Callback):
    """One plain line per epoch (readable in log files, where progress bars are not)."""

    def __init__(self, name: str, log=print) -> None:
        self.name, self._emit, self.start = name, log, time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after validation in Lightning 2
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        parts = " ".join(f"{k}={m[k]:.3f}" for k in sorted(m) if k.startswith(("train_", "dev_")))
        self._emit(f"  {self.name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {parts} "
                 f"({time.time() - self.start:.0f} s)")


@dataclass
class FitResult:
    model_path: Path
    best_score: float        # dev WER (percent) or dev loss, per select_on
    best_epoch: int
    epochs_run: int
    train_seconds: float


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
) -> FitResult:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning vs torch 2.13 noise
    L.seed_everything(seed, workers=True, verbose=False)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    monitor = "dev_wer" if cfg.select_on == "wer" else "dev_loss"
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_last=True)
    name = (extra_meta or {}).get("name", out_dir.name)
    callbacks = [best_cb, EarlyStopping(monitor=monitor, mode="min", patience=cfg.patience), EpochLine(name, log)]
    accel, precision = resolve_device(cfg)
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=accel, devices=1, precision=precision, callbacks=callbacks,
        logger=logger if logger is not None else False, gradient_clip_val=cfg.grad_clip,
        default_root_dir=str(out_dir), use_distributed_sampler=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=10, deterministic=False,
    )
    last = ckpt_dir / "last.ckpt"
    start = time.time()
    trainer.fit(module, train_loader, dev_loader, ckpt_path=str(last) if last.exists() else None)
    seconds = time.time() - start
    best_path = best_cb.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    best_score = float(best_cb.best_model_score) if best_cb.best_model_score is not None else float("nan")
    model_path = save_model(
        module.model, out_dir / "model.pt",
        {**(extra_meta or {}), "best_score": best_score, "select_on": cfg.select_on, "best_epoch": int(state["epoch"])},
    )
    timing_file = out_dir / "fit.json"
    previous = json.loads(timing_file.read_text()) if timing_file.exists() else {"train_seconds": 0.0}
    total_seconds = previous["train_seconds"] + seconds  # accumulates across resumes
    timing_file.write_text(json.dumps({"train_seconds": total_seconds, "epochs_run": trainer.current_epoch}))
    return FitResult(model_path, best_score, int(state["epoch"]), trainer.current_epoch, total_seconds)


def save_model(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Atomically write weights + rebuild info; `model.build_info` must hold arch/params/dims."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"build": model.build_info, "meta": meta, "state_dict": model.state_dict()}
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, meta)."""
    from ekd_compress.models import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; run `ekd-compress distill` to train it")
    blob = torch.load(path, map_location="cpu", weights_only=False)
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
