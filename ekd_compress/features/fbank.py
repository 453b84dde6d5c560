"""kaldi-native-fbank as a lhotse feature extractor, plus feature storage for CutSets.

The extractor computes exactly what `ekd_compress.contract.features.compute_fbank` (and so
the streaming server) computes, so training and serving features cannot drift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from lhotse import CutSet
from lhotse.features.base import FeatureExtractor, register_extractor

from ekd_compress.recipe import FeatureConfig
from ekd_compress.contract.features import FeatureSpec, compute_fbank


@register_extractor
class KnfFbank(FeatureExtractor):
    """lhotse extractor backed by kaldi-native-fbank (same code path as serving)."""

    name = "knf-fbank"
    config_type = FeatureSpec  # the torch-free spec itself: one definition of the settings

    @property
    def spec(self) -> FeatureSpec:
        return self.config

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        if sampling_rate != self.spec.sample_rate:
            raise ValueError(
                f"audio at {sampling_rate} Hz but the feature spec expects {self.spec.sample_rate} Hz; "
                "resample the cuts first (data.sample_rate)"
            )
        return compute_fbank(np.asarray(samples, dtype=np.float32).reshape(-1), self.spec)

    @property
    def frame_shift(self) -> float:
        return self.config.frame_shift_ms / 1000.0

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_mel_bins


def feature_spec(cfg: FeatureConfig, sample_rate: int) -> FeatureSpec:
    """The torch-free spec that a recipe's feature section describes."""
    return FeatureSpec(
        sample_rate=sample_rate, num_mel_bins=cfg.num_mel_bins, frame_length_ms=cfg.frame_length_ms,
        frame_shift_ms=cfg.frame_shift_ms, dither=cfg.dither,
    )


def store_features(cuts: CutSet, spec: FeatureSpec, storage_dir: Path, num_jobs: int = 1) -> CutSet:
    """Compute fbank for every cut once and store it (lilcom-compressed chunks)."""
    from lhotse import LilcomChunkyWriter

    extractor = KnfFbank(spec)
    Path(storage_dir).parent.mkdir(parents=True, exist_ok=True)
    return cuts.compute_and_store_features(
        extractor, storage_path=str(storage_dir), num_jobs=num_jobs, storage_type=LilcomChunkyWriter,
        progress_bar=True,
    )


def load_features(cut, spec: FeatureSpec) -> np.ndarray:
    """(frames, F) float32 for one cut: stored features when present, else computed now."""
    if cut.has_features:
        return cut.load_features().astype(np.float32)
    audio = cut.load_audio().reshape(-1)
    return compute_fbank(audio, spec)
