"""Hard-label CTC loss (the `λ·CTC` half of the student loss, and the whole baseline loss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ekd_compress.contract.tokens import BLANK_ID as BLANK
from ekd_compress.losses.compose import register_loss


def check_lengths(name: str, lengths: Tensor, batch: int, maximum: int, unit: str) -> None:
    """Raise a ValueError unless `lengths` is a (batch,) integer tensor with values in [0, maximum]."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} of shape {tuple(lengths.shape)} does not match a batch of {batch}; "
                         f"pass one {unit} count per utterance, shape ({batch},)")
    if lengths.dtype.is_floating_point:
        raise ValueError(f"{name} has dtype {lengths.dtype}; pass integer {unit} counts (torch.long)")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > maximum):
        raise ValueError(f"{name}={lengths.tolist()} holds values outside [0, {maximum}]; "
                         f"each must count the valid {unit}s of a padded tensor with {maximum} of them")


@register_loss("ctc")
class CTCLoss(nn.Module):
    """Connectionist temporal classification on the transcripts (Graves et al., ICML 2006).

        L_CTC = (1/B) · Σ_b −log Σ_{π ∈ B⁻¹(y_b)} Π_t p_b(π_t | x_b)

    where B⁻¹(y) is the set of frame paths that collapse (merge repeats, drop blanks) to
    the token sequence y. Blank is id 0.

    Normalisation: the negative log-likelihood is summed per utterance and averaged over
    the B utterances of the batch (torch's `reduction="sum"` divided by B). Unlike
    torch's `reduction="mean"` it is *not* divided by target lengths, so a long utterance
    counts more than a short one, as in ESPnet/WeNet. Infeasible utterances (more
    tokens plus repeats than frames) give an infinite loss, which `zero_infinity=True`
    turns into zero (and zero gradient) instead of a NaN that would ruin the batch.
    """

    log_name = "ctc"

    def __init__(self, blank: int = BLANK) -> None:
        super().__init__()
        self.blank = blank

    def batch_loss(self, log_probs: Tensor, out_lengths: Tensor, batch: dict) -> Tensor:
        """`forward` on a training batch's transcripts (batch["targets"], batch["target_lengths"])."""
        return self(log_probs, out_lengths, batch["targets"], batch["target_lengths"])

    def forward(self, log_probs: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """log_probs (B, T, V) log-softmax over V; out_lengths (B,) int64 valid frames;
        targets (B, S) int64 token ids, padded (any value past target_lengths);
        target_lengths (B,) int64 -> scalar loss (nats per utterance, batch mean)."""
        losses = self.per_utterance(log_probs, out_lengths, targets, target_lengths)
        return losses.sum() / max(1, losses.shape[0]) if losses.numel() else log_probs.sum() * 0.0

    def per_utterance(self, log_probs: Tensor, out_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """Same inputs as `forward` -> (B,) negative log-likelihood of each utterance (nats)."""
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs of shape {tuple(log_probs.shape)} is not (batch, frames, vocab); "
                             "pass the model's (B, T, V) log-probabilities")
        B, T, _ = log_probs.shape
        if targets.dim() != 2 or targets.shape[0] != B:
            raise ValueError(f"targets of shape {tuple(targets.shape)} do not match a batch of {B}; "
                             f"pass padded token ids of shape ({B}, S)")
        check_lengths("out_lengths", out_lengths, B, T, "output frame")
        check_lengths("target_lengths", target_lengths, B, targets.shape[1], "target token")
        if B == 0:
            return log_probs.new_zeros(0)
        lp = log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs
        return F.ctc_loss(
            lp.transpose(0, 1),  # (T, B, V): torch wants time first
            targets.long(),
            out_lengths.long(),
            target_lengths.long(),
            blank=self.blank,
            reduction="none",
            zero_infinity=True,
        )
