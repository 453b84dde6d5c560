"""SpecAugment (Park et al., Interspeech 2019): frequency and time masking.

Applied to the student and the guided members in training only; teachers see clean features
when they produce targets (the guide's §2), unless a recipe asks for `distill.teacher_view:
augmented` (on-the-fly targets on the student's own masked view).
"""
from __future__ import annotations

import torch

from ekd_compress.recipe import SpecAugmentConfig


class SpecAugment(torch.nn.Module):
    """Masks `freq_masks` bands of up to `freq_width` bins and `time_masks` spans of up
    to `time_width` frames (never more than 20% of an utterance) with zeros-to-mean.

    forward(feats (B, T, F), lengths (B,)) -> feats (B, T, F); identity in eval mode.
    """

    def __init__(self, cfg: SpecAugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.cfg.enabled:
            return feats
        feats = feats.clone()
        B, T, F = feats.shape
        for b in range(B):
            n = int(lengths[b])
            mean = feats[b, :n].mean()
            for _ in range(self.cfg.freq_masks):
                w = int(torch.randint(0, self.cfg.freq_width + 1, ()))
                f0 = int(torch.randint(0, max(1, F - w), ()))
                feats[b, :, f0:f0 + w] = mean
            max_w = min(self.cfg.time_width, int(0.2 * n))
            for _ in range(self.cfg.time_masks):
                w = int(torch.randint(0, max_w + 1, ()))
                t0 = int(torch.randint(0, max(1, n - w), ()))
                feats[b, t0:t0 + w, :] = mean
        return feats
