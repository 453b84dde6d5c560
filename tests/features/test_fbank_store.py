"""Stored lhotse features equal the serving code's fbank; SpecAugment only in training."""
import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from ekd_compress.features.fbank import load_features, store_features
from ekd_compress.features.specaug import SpecAugment
from ekd_compress.recipe import SpecAugmentConfig
from ekd_compress.contract.features import FeatureSpec, compute_fbank


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


def _mask_layout(out: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One utterance (T, F) before/after SpecAugment -> (changed (T, F) bool, masked bins (F,) bool,
    masked frames (T,) bool): a bin is masked when it changed in every frame, a frame when it
    changed in every bin."""
    changed = out != feats
    return changed, changed.all(dim=0), changed.all(dim=1)


def test_specaugment_masks_in_training_only():
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=5, time_masks=2, time_width=10)
    aug = SpecAugment(cfg)
    feats = torch.randn(2, 100, 40)
    lengths = torch.tensor([100, 60])
    before = feats.clone()
    aug.train()
    torch.manual_seed(0)
    out = aug(feats, lengths)
    assert torch.equal(feats, before), "SpecAugment must not modify its input in place"
    assert out.shape == feats.shape and not torch.equal(out, feats), "training mode must mask something"
    for b, n in enumerate(lengths.tolist()):
        changed, bins, frames = _mask_layout(out[b], feats[b])
        assert changed.any(), f"utterance {b} was not masked"
        # every changed value lies in a whole masked band or a whole masked span...
        assert torch.equal(changed, bins[None, :] | frames[:, None]), f"utterance {b}: masks are not bands/spans"
        # ...and is set to the utterance's mean over its valid frames
        mean = feats[b, :n].mean()
        torch.testing.assert_close(out[b][changed], mean.expand(int(changed.sum())), rtol=0, atol=1e-6)
        assert int(bins.sum()) <= cfg.freq_masks * cfg.freq_width, f"utterance {b}: {int(bins.sum())} bins masked"
        max_span = min(cfg.time_width, int(0.2 * n))
        assert int(frames.sum()) <= cfg.time_masks * max_span, f"utterance {b}: {int(frames.sum())} frames masked"
        assert not frames[n:].any(), f"utterance {b}: time masks reach into the padding past frame {n}"
    aug.eval()
    assert torch.equal(aug(feats, lengths), feats), "eval mode must return the features unchanged"
    off = SpecAugment(SpecAugmentConfig(enabled=False)).train()
    assert torch.equal(off(feats, lengths), feats), "enabled=False must return the features unchanged"
