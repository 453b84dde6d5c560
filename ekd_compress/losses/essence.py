"""Essence knowledge distillation (Li, Zhang, Zhao & Gong, "Essence Knowledge Distillation
for Speech Recognition", arXiv 1906.10834), adapted to CTC students.

The teacher's per-frame distribution is reduced to its *essence*: the top-k entries of
softmax(z/T), renormalised (or with a "rest" bucket, or a top-p set; see
`ekd_compress.ensemble.essence.select_essence`). The student is trained with

    L = λ · L_CTC + (1 − λ) · T² · KL(p_essence ‖ q_T)

`EssenceKDLoss` is the T²·KL term, `DistillationLoss` the whole student loss.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from ekd_compress.contract.tokens import BLANK_ID as BLANK
from ekd_compress.losses.compose import WeightedLoss, register_loss
from ekd_compress.losses.ctc import check_lengths

REST_ID = -2  # id of the residual "rest" bucket in sparse targets (cache: uint16 65535)
REDUCTIONS = ("frame", "utterance")


def _check_number(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value!r} is invalid; use a number in {bracket}{low}, {high}]")
    return float(value)


def check_kd_fade(fade: object) -> tuple[float, float]:
    """Validate a KD fade [start, end] (fractions of training, 0 <= start <= end <= 1) -> (start, end)."""
    ok = isinstance(fade, (list, tuple)) and len(fade) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fade)
    if not ok or not 0.0 <= fade[0] <= fade[1] <= 1.0:  # type: ignore[index]
        raise ValueError(f"kd_fade={fade!r} is invalid; use [start, end] with 0 <= start <= end <= 1, fractions "
                         "of training, e.g. [0.5, 0.8] (full KD for the first half, none in the last fifth)")
    return float(fade[0]), float(fade[1])  # type: ignore[index]


def kd_fade_factor(progress: float, fade: Optional[tuple[float, float]]) -> float:
    """The factor on the KD weight at `progress` (fraction of training steps done, 0..1):
    1 before fade[0], falling linearly to 0 at fade[1], 0 after; always 1 without a fade."""
    if fade is None:
        return 1.0
    start, end = fade
    if progress < start:
        return 1.0
    if progress >= end:
        return 0.0
    return 1.0 - (progress - start) / (end - start)


@register_loss("essence_kd")
class EssenceKDLoss(nn.Module):
    """T²-scaled KL divergence from sparse essence targets to the tempered student (arXiv 1906.10834).

        q_f       = softmax(z_f / T)                         student at frame f, z = its log-probs
        KL_f      = Σ_{j ∈ E_f, p_fj > 0} p_fj · (log p_fj − log q_f(id_fj))
        q_f(rest) = 1 − Σ_{j ∈ E_f, id_fj ≠ rest} q_f(id_fj)  (computed as a log-sum-exp over the
                                                               ids not selected, for stability)
        w_f       = m_f · (blank_weight if the teacher's top-1 id at f is blank else 1)
        L         = T² · Σ_f w_f · KL_f / D

    E_f are the K target entries of frame f (ids (B, T, K), probs (B, T, K), rows summing
    to 1), m_f = 1 for the frames f < out_lengths[b] and 0 for padding. Entries with
    probability 0 (top-p padding) contribute nothing; an entry with id `REST_ID` (−2)
    stands for all the ids *not* listed in that frame (residual mode; residual targets
    must not also carry padding entries). The teacher's top-1 is the listed non-rest id of
    highest probability.

    Normalisation D (`reduction`):
      "frame"      D = Σ_f w_f: a weighted mean KL per frame (default; a batch whose
                   weights are all 0 gives 0).
      "utterance"  D = B: KL summed over each utterance's frames, averaged over the batch,
                   the same normalisation as `CTCLoss`, so λ trades like for like.

    KL is over the target's support, so with k = V (renorm) this is ordinary KD
    (Hinton et al. 2015) and with k = 1 it is frame cross-entropy to the teacher's argmax.
    The T² factor keeps gradient magnitudes comparable across temperatures.
    """

    log_name = "kd"

    def __init__(self, temperature: float = 1.0, blank_weight: float = 1.0,
                 reduction: Literal["frame", "utterance"] = "frame", blank: int = BLANK) -> None:
        super().__init__()
        self.temperature = _check_number("temperature", temperature, 0.0, float("inf"), low_open=True)
        self.blank_weight = _check_number("blank_weight", blank_weight, 0.0, float("inf"))
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is unknown; use one of {REDUCTIONS}")
        self.reduction = reduction
        self.blank = blank

    def frame_kl(self, student_log_probs: Tensor, ids: Tensor, probs: Tensor) -> Tensor:
        """(B, T, V) student log-probs, (B, T, K) ids/probs -> (B, T) KL_f in nats (unweighted, no T²)."""
        log_q = torch.log_softmax(student_log_probs.float() / self.temperature, dim=-1)  # (B, T, V)
        ids = ids.long()
        p = probs.float()
        is_rest = ids == REST_ID
        gather_ids = ids.clamp(min=0)  # rest entries gather a dummy, replaced below
        log_q_sel = log_q.gather(-1, gather_ids)  # (B, T, K)
        if bool(is_rest.any()):
            hits = torch.zeros(log_q.shape, dtype=torch.int32, device=log_q.device)
            hits.scatter_add_(-1, gather_ids, (~is_rest).to(torch.int32))  # (B, T, V) (add: ids may repeat)
            listed = hits > 0  # ids named by a non-rest entry
            # finite fill (not -inf) keeps the gradient finite when every id is listed
            fill = torch.finfo(log_q.dtype).min
            log_rest = torch.logsumexp(log_q.masked_fill(listed, fill), dim=-1, keepdim=True)  # (B, T, 1)
            log_q_sel = torch.where(is_rest, log_rest.expand_as(log_q_sel), log_q_sel)
        positive = p > 0
        log_p = torch.log(torch.where(positive, p, torch.ones_like(p)))
        terms = torch.where(positive, p * (log_p - log_q_sel), torch.zeros_like(p))
        return terms.sum(-1)

    def frame_weights(self, out_lengths: Tensor, ids: Tensor, probs: Tensor) -> Tensor:
        """(B,) lengths, (B, T, K) targets -> (B, T) float weights w_f (mask × blank weight)."""
        B, T, _ = ids.shape
        mask = torch.arange(T, device=ids.device)[None, :] < out_lengths.to(ids.device)[:, None]
        w = mask.float()
        if self.blank_weight != 1.0:
            ranked = probs.float().masked_fill(ids == REST_ID, -1.0)
            top1 = ids.gather(-1, ranked.argmax(-1, keepdim=True)).squeeze(-1)  # (B, T)
            w = torch.where(top1 == self.blank, w * self.blank_weight, w)
        return w

    def batch_loss(self, log_probs: Tensor, out_lengths: Tensor, batch: dict) -> Tensor:
        """`forward` on a training batch's essence targets (batch["kd_ids"], batch["kd_probs"])."""
        return self(log_probs, out_lengths, batch["kd_ids"], batch["kd_probs"])

    def forward(self, student_log_probs: Tensor, out_lengths: Tensor, ids: Tensor, probs: Tensor) -> Tensor:
        """student_log_probs (B, T, V) log-softmax; out_lengths (B,) int64 valid frames;
        ids (B, T, K) int64 (REST_ID = rest bucket); probs (B, T, K) float -> scalar loss."""
        if student_log_probs.dim() != 3:
            raise ValueError(f"student log_probs of shape {tuple(student_log_probs.shape)} is not (B, T, V)")
        B, T, V = student_log_probs.shape
        if ids.dim() != 3 or ids.shape[:2] != (B, T) or probs.shape != ids.shape:
            raise ValueError(
                f"essence targets ids {tuple(ids.shape)} / probs {tuple(probs.shape)} do not match the student's "
                f"(B, T) = {(B, T)}: both must be (B, T, K) at the student's frame rate; if T differs the "
                "cache was made with another subsampling: re-run the 'essence' stage"
            )
        if ids.dtype.is_floating_point:
            raise ValueError(f"essence ids have dtype {ids.dtype}; pass integer token ids (torch.long)")
        check_lengths("out_lengths", out_lengths, B, T, "output frame")
        if ids.numel() and (int(ids.max()) >= V or bool(((ids < 0) & (ids != REST_ID)).any())):
            raise ValueError(f"essence ids hold values outside [0, {V}) other than the rest id {REST_ID}; "
                             "the targets were made with another token table: re-run the 'essence' stage")
        kl = self.frame_kl(student_log_probs, ids, probs)  # (B, T)
        w = self.frame_weights(out_lengths, ids, probs)
        total = (w * kl).sum()
        if self.reduction == "utterance":
            return self.temperature ** 2 * total / max(B, 1)
        weight = w.sum()
        if float(weight) == 0.0:  # every frame padded or blank-weighted to 0
            return total * 0.0
        return self.temperature ** 2 * total / weight


class DistillationLoss(WeightedLoss):
    """The student loss of essence KD (arXiv 1906.10834, with CTC as the hard-label loss):

        L = λ · L_CTC + (1 − λ) · T² · KL(p_essence ‖ q_T)

    the composition {"ctc": λ, "essence_kd": 1 − λ} of `CTCLoss` (per-utterance sum, batch
    mean, Graves et al. 2006) and `EssenceKDLoss` (T² included). λ = 1 is CTC only; λ = 0 is
    KD only. Returns (total, {"ctc": L_CTC, "kd": T²·KL}) so both parts can be logged.
    """

    def __init__(self, lam: float = 0.5, temperature: float = 1.0, blank_weight: float = 1.0,
                 reduction: Literal["frame", "utterance"] = "frame") -> None:
        lam = _check_number("lam", lam, 0.0, 1.0)
        super().__init__({"ctc": lam, "essence_kd": 1.0 - lam},
                         {"essence_kd": {"temperature": temperature, "blank_weight": blank_weight,
                                         "reduction": reduction}})
        self.lam = lam

    @property
    def ctc(self) -> nn.Module:
        return self.terms["ctc"]

    @property
    def kd(self) -> EssenceKDLoss:
        return self.terms["essence_kd"]

    def forward(  # type: ignore[override]
        self, log_probs: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
        kd_ids: Tensor, kd_probs: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """log_probs (B, T, V), out_lengths (B,), targets (B, S), target_lengths (B,),
        kd_ids / kd_probs (B, T, K) -> (scalar total, {"ctc": scalar, "kd": scalar})."""
        batch = {"targets": targets, "target_lengths": target_lengths, "kd_ids": kd_ids, "kd_probs": kd_probs}
        total, parts = super().forward(log_probs, out_lengths, batch)
        return total, {"ctc": parts["ctc"], "kd": parts["essence_kd"]}
