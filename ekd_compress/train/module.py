"""The Lightning module that trains one streaming CTC model.

The objective is a weighted sum of losses registered by name (ekd_compress.losses.compose):
  {"ctc": 1}                      the baseline / guide: CTC on transcripts (Graves et al. 2006).
  {"ctc": 1, "guide_ce": beta}    ensemble members: + frame CE to the guide's forced alignment
                                  (Kurata & Audhkhasi 2019), keeping their spikes on the guide's frames.
  {"ctc": lam, "essence_kd": 1 - lam}  students: + T^2 * KL(essence || student) (arXiv 1906.10834),
                                  targets from the on-disk cache (batch["kd_ids"], batch["kd_probs"]) or
                                  computed on the fly from a frozen teacher (`EssenceTargets.teacher`);
                                  with `EssenceTargets.fade` the KD weight falls to 0 late in training.
Validation decodes greedily and logs the recipe's error rate `dev_<metric>` (`dev_wer`, `dev_cer`
or `dev_per`, percent; see ekd_compress.evaluate.error_rates), `dev_loss` (CTC) and `dev_blank`
(share of dev utterances decoded as empty, read by the convergence watchdog) per epoch.
Under data-parallel training each rank scores its share of the dev set; the per-utterance
results are gathered (an utterance lhotse repeated to even out the ranks counts once), so
every rank logs the same numbers and takes the same checkpoint and early-stopping decisions.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import lightning as L
import torch

from ekd_compress.contract.tokens import TokenTable
from ekd_compress.contract.ctc_decode import ctc_greedy_decode
from ekd_compress.evaluate.error_rates import METRICS, error_rate
from ekd_compress.features.specaug import SpecAugment
from ekd_compress.losses.compose import WeightedLoss, check_weights
from ekd_compress.losses.ctc import CTCLoss
from ekd_compress.losses.essence import check_kd_fade, kd_fade_factor
from ekd_compress.recipe import SpecAugmentConfig, TrainConfig

if TYPE_CHECKING:
    from ekd_compress.train.job import EssenceTargets

CTC_ONLY = {"ctc": 1.0}


class AsrModule(L.LightningModule):
    """`model` trained on the weighted losses `losses`; `essence` says how its essence targets
    are made (needed when "essence_kd" is among the losses)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokens: TokenTable,
        train_cfg: TrainConfig,
        specaug: SpecAugmentConfig,
        losses: Optional[dict[str, float]] = None,
        essence: Optional["EssenceTargets"] = None,
        steps_per_epoch: int = 1,
        metric: str = "wer",
    ) -> None:
        super().__init__()
        weights = check_weights(dict(losses or CTC_ONLY))
        if metric not in METRICS or (metric == "per") != (tokens.kind == "phone"):
            raise ValueError(f"metric {metric!r} does not fit {tokens.kind} tokens; phone tokens are scored on 'per', "
                             "character and BPE tokens on 'wer' or 'cer'")
        self.metric = metric
        if "essence_kd" in weights and essence is None:
            raise ValueError("the essence_kd loss needs essence targets (EssenceTargets: temperature, k, cache or teacher)")
        if essence is not None and essence.fade is not None:
            essence.fade = check_kd_fade(essence.fade)
        self.model = model
        self.tokens = tokens
        self.cfg = train_cfg
        self.essence = essence
        teacher = essence.teacher if essence is not None else None
        # a plain tuple, not a submodule: see `teacher`
        self._frozen_teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else ()
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.specaug = SpecAugment(specaug)
        self.ctc = CTCLoss()  # the dev loss
        # guide CE and KD are summed over frames and divided by B, like CTC, so beta and lam
        # weigh quantities on one per-utterance scale (a frame mean would shrink them ~T' times)
        options: dict[str, dict[str, Any]] = {"guide_ce": {"reduction": "utterance"}}
        if essence is not None:
            options["essence_kd"] = {"temperature": essence.temperature, "blank_weight": essence.blank_weight,
                                     "reduction": "utterance"}
        self.objective = WeightedLoss(weights, options)
        self._dev: dict[str, tuple[str, str, float]] = {}  # utt id -> (reference, hypothesis, CTC loss)

    @property
    def teacher(self) -> Optional[torch.nn.Module]:
        """The frozen teacher of distill.cache=fly, or None. It stays out of the module tree, so
        checkpoints hold only the student (they held the teacher's weights too, 2.3x the size on
        FSDD), Lightning's train() leaves it in eval mode, and `_teacher_targets` moves it to the
        batch's device itself."""
        return self._frozen_teacher[0] if self._frozen_teacher else None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, minus "teacher.*" entries: checkpoints written while the teacher was a
        submodule still resume."""
        kept = {name: t for name, t in state_dict.items() if not name.startswith("teacher.")}
        return super().load_state_dict(kept, strict=strict, assign=assign)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats = self.specaug(batch["feats"], batch["lengths"])
        log_probs, out_lengths = self.model(feats, batch["lengths"])
        if "essence_kd" in self.objective.weights and "kd_ids" not in batch:
            augmented = self.essence is not None and self.essence.teacher_view == "augmented"
            kd_ids, kd_probs = self._teacher_targets(feats if augmented else batch["feats"], batch["lengths"])
            batch = {**batch, "kd_ids": kd_ids, "kd_probs": kd_probs}
        scales = {}
        if "essence_kd" in self.objective.weights and self.essence is not None and self.essence.fade is not None:
            scales["essence_kd"] = kd_fade_factor(self.training_progress(), self.essence.fade)
        loss, parts = self.objective(log_probs, out_lengths, batch, scales)
        logs = {f"train_{self.objective.terms[name].log_name}": value for name, value in parts.items()}
        logs["train_loss"] = loss
        if scales:
            logs["kd_fade"] = scales["essence_kd"]
        B = len(batch["ids"])
        self.log_dict(logs, on_step=False, on_epoch=True, prog_bar=True, batch_size=B)
        return loss

    def training_progress(self) -> float:
        """Fraction of the planned optimiser steps (train.epochs x steps per epoch) done, 0..1."""
        return min(1.0, self.global_step / max(1, self.cfg.epochs * self.steps_per_epoch))

    @torch.no_grad()
    def _teacher_targets(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Essence targets of the frozen teacher (distill.cache=fly) on `feats` (B, T, F): the batch's
        clean features, or the student's SpecAugmented view of them (distill.teacher_view=augmented).
        Returns ids and probabilities, (B, T', K) each."""
        if self.teacher is None:
            raise ValueError("essence training needs cached targets or a teacher (distill.cache=fly)")
        from ekd_compress.ensemble.essence import select_essence

        teacher = self.teacher
        param = next(teacher.parameters(), None)
        if param is not None and param.device != feats.device:
            teacher.to(feats.device)
        t_log_probs, _ = teacher(feats, lengths)
        e = self.essence
        k = e.k if e.k is not None else t_log_probs.shape[-1]
        return select_essence(t_log_probs, k=k, temperature=e.temperature, mode=e.mode, top_p=e.top_p)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        log_probs, out_lengths = self.model(batch["feats"], batch["lengths"])
        losses = self.ctc.per_utterance(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
        hyps = ctc_greedy_decode(log_probs.detach().float().cpu().numpy(), out_lengths.detach().cpu().numpy())
        for uid, ids, ref, loss in zip(batch["ids"], hyps, batch["texts"], losses.tolist()):
            self._dev[uid] = (ref, self.tokens.decode(ids), loss)

    def on_validation_epoch_end(self) -> None:
        from ekd_compress.train.distributed import all_gather

        scored: dict[str, tuple[str, str, float]] = {}
        for part in all_gather(self._dev):  # [self._dev] outside a data-parallel job
            scored.update(part)
        self._dev = {}
        if not scored:
            return
        rows = [scored[u] for u in sorted(scored)]
        rate = error_rate(self.metric, [r for r, _, _ in rows], [h for _, h, _ in rows], self.tokens.lexicon).wer
        dev_loss = sum(loss for _, _, loss in rows) / len(rows)
        blank = sum(1 for _, hyp, _ in rows if not hyp.strip()) / len(rows)  # empty outputs: the blank plateau
        self.log(f"dev_{self.metric}", rate, prog_bar=True)
        self.log("dev_loss", dev_loss, prog_bar=True)
        self.log("dev_blank", blank)

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
