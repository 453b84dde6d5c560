"""Stored lhotse features equal the serving code's fbank; SpecAugment only in training."""
import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from ekd_compress.features.fbank import load_features, store_features
from ekd_compress.features.specaug import SpecAugment
from ekd_compress.recipe import SpecAugmentConfig
from ekd_compress.spec.features import FeatureSpec, compute_fbank


def tiny_cuts(tmp_path, sr=8000):
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i in range(2):
        audio = (0.2 * np.sin(np.arange(sr) * (0.05 + 0.02 * i)) + 0.01 * rng.standard_normal(sr)).astype(np.float32)
        path = tmp_path / f"u{i}.wav"
        sf.write(path, audio, sr, subtype="PCM_16")
        recs.append(Recording.from_file(path, recording_id=f"u{i}"))
        sups.append(SupervisionSegment(id=f"u{i}", recording_id=f"u{i}", start=0, duration=recs[-1].duration, text="a"))
    return CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recs), supervisions=SupervisionSet.from_segments(sups)
    ).trim_to_supervisions().to_eager()


def test_stored_features_match_serving_fbank(tmp_path):
    spec = FeatureSpec(sample_rate=8000, num_mel_bins=40)
    cuts = tiny_cuts(tmp_path)
    stored = store_features(cuts, spec, tmp_path / "feats" / "train")
    for cut in stored:
        direct = compute_fbank(cut.load_audio().reshape(-1), spec)
        from_store = load_features(cut, spec)
        assert from_store.shape == direct.shape == (100, 40)
        np.testing.assert_allclose(from_store, direct, atol=0.1)  # lilcom is lossy, ~1e-2
    on_the_fly = load_features(next(iter(cuts)), spec)  # no stored features: computed now
    assert on_the_fly.shape == (100, 40)


def test_specaugment_masks_in_training_only():
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=5, time_masks=2, time_width=10))
    feats = torch.randn(2, 100, 40)
    lengths = torch.tensor([100, 60])
    aug.train()
    torch.manual_seed(0)
    out = aug(feats, lengths)
    assert out.shape == feats.shape and not torch.equal(out, feats)
    assert torch.equal(feats, feats.clone())  # input untouched
    aug.eval()
    assert torch.equal(aug(feats, lengths), feats)
