"""The Lightning module that trains one streaming CTC model.

Three objectives, chosen by `mode`:
  ctc     : CTC on transcripts (the baseline / guide).
  guided  : CTC + beta * frame CE to the guide's forced alignment (Kurata & Audhkhasi 2019),
            keeping ensemble members' spikes on the guide's frames.
  essence : lam * CTC + (1 - lam) * T^2 * KL(essence || student) (arXiv 1906.10834),
            targets from the on-disk cache (batch["kd_ids"], batch["kd_probs"]) or computed
            on the fly from a frozen teacher.
Validation decodes greedily and logs `dev_wer` (percent) and `dev_loss` (CTC) per epoch.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch

from ekd_compress.evaluate.decode import ctc_greedy_decode
from ekd_compress.evaluate.wer import compute_wer
from ekd_compress.features.specaug import SpecAugment
from ekd_compress.losses.ctc import CTCLoss
from ekd_compress.losses.essence import EssenceKDLoss
from ekd_compress.losses.guide import GuideAlignmentLoss
from ekd_compress.recipe import DistillConfig, SpecAugmentConfig, TrainConfig
from ekd_compress.spec.tokens import TokenTable

MODES = ("ctc", "guided", "essence")


class AsrModule(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        tokens: TokenTable,
        train_cfg: TrainConfig,
        specaug: SpecAugmentConfig,
        mode: str = "ctc",
        beta: float = 0.0,
        distill: Optional[DistillConfig] = None,
        k: Optional[int] = None,
        teacher: Optional[torch.nn.Module] = None,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"training mode {mode!r} is unknown; use one of {MODES}")
        if mode == "essence" and distill is None:
            raise ValueError("mode='essence' needs the distill settings")
        self.model = model
        self.tokens = tokens
        self.cfg = train_cfg
        self.mode = mode
        self.beta = beta
        self.distill = distill
        self.k = k
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.specaug = SpecAugment(specaug)
        self.ctc = CTCLoss()
        # guide CE and KD are summed over frames and divided by B, like CTC, so beta and lam
        # weigh quantities on one per-utterance scale (a frame mean would shrink them ~T' times)
        self.guide_loss = GuideAlignmentLoss(reduction="utterance")
        if distill is not None:
            self.kd_loss = EssenceKDLoss(
                temperature=distill.temperature, blank_weight=distill.blank_weight, reduction="utterance"
            )
        self._refs: list[str] = []
        self._hyps: list[str] = []
        self._dev_loss: list[tuple[float, int]] = []

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats = self.specaug(batch["feats"], batch["lengths"])
        log_probs, out_lengths = self.model(feats, batch["lengths"])
        ctc = self.ctc(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
        logs = {"train_ctc": ctc}
        if self.mode == "ctc":
            loss = ctc
        elif self.mode == "guided":
            guide = self.guide_loss(log_probs, batch["align"])
            loss = ctc + self.beta * guide
            logs["train_guide_ce"] = guide
        else:
            kd_ids, kd_probs = self._essence_targets(batch)
            kd = self.kd_loss(log_probs, out_lengths, kd_ids, kd_probs)
            lam = self.distill.lam
            loss = lam * ctc + (1.0 - lam) * kd
            logs["train_kd"] = kd
        logs["train_loss"] = loss
        B = len(batch["ids"])
        self.log_dict(logs, on_step=False, on_epoch=True, prog_bar=True, batch_size=B)
        return loss

    @torch.no_grad()
    def _essence_targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "kd_ids" in batch:
            return batch["kd_ids"], batch["kd_probs"]
        if self.teacher is None:
            raise ValueError("essence training needs cached targets or a teacher (distill.cache=fly)")
        from ekd_compress.ensemble.essence import select_essence

        t_log_probs, _ = self.teacher(batch["feats"], batch["lengths"])  # clean features
        d = self.distill
        k = self.k if self.k is not None else t_log_probs.shape[-1]
        return select_essence(t_log_probs, k=k, temperature=d.temperature, mode=d.mode, top_p=d.top_p)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        log_probs, out_lengths = self.model(batch["feats"], batch["lengths"])
        loss = self.ctc(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
        self._dev_loss.append((float(loss), len(batch["ids"])))
        for ids, ref in zip(ctc_greedy_decode(log_probs, out_lengths), batch["texts"]):
            self._hyps.append(self.tokens.decode(ids))
            self._refs.append(ref)

    def on_validation_epoch_end(self) -> None:
        if not self._refs:
            return
        wer = compute_wer(self._refs, self._hyps).wer
        n = sum(b for _, b in self._dev_loss)
        dev_loss = sum(l * b for l, b in self._dev_loss) / max(1, n)
        self.log("dev_wer", wer, prog_bar=True)
        self.log("dev_loss", dev_loss, prog_bar=True)
        self._refs, self._hyps, self._dev_loss = [], [], []

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = max(1, int(self.cfg.warmup_epochs * self.steps_per_epoch))
        total = max(warmup + 1, self.cfg.epochs * self.steps_per_epoch)

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 5%
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
