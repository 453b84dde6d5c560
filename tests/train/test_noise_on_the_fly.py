"""Training batches with noise mixed on the fly: each epoch a fresh rendition of the marked
cuts, the same one when an epoch is drawn again (resume), and the epoch reaches loader workers."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.utils import fastcopy

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.data.noise_pool import NoiseMixer, mark_for_mixing, write_noise_pool
from ekd_compress.train.data import AsrDataset, EpochTaggedSampler, make_loader

SR = 8000


@pytest.fixture
def cuts(tmp_path) -> CutSet:
    """Two tone cuts; "noisy" is marked for mixing from a white-noise pool at 5 dB."""
    rng = np.random.default_rng(0)
    pool = write_noise_pool(tmp_path / "pool", {"white": [rng.standard_normal(4000) * 0.1]}, SR)
    out = []
    for i, name in enumerate(("plain", "noisy")):
        path = tmp_path / "wav" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(0.8 * SR)) / SR
        sf.write(str(path), (0.2 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32), SR)
        cut = Recording.from_file(path, recording_id=name).to_cut()
        sup = SupervisionSegment(id=name, recording_id=name, start=0.0, duration=cut.duration, text="ab")
        out.append(fastcopy(cut, supervisions=[sup]))
    plain, noisy = out
    noisy = mark_for_mixing(CutSet.from_cuts([noisy]), tmp_path, pool, lambda c: "white", 5.0)[0]
    return CutSet.from_cuts([plain, noisy])


def epoch_features(loader, epoch: int) -> dict[str, np.ndarray]:
    loader.sampler.set_epoch(epoch)
    out = {}
    for batch in loader:
        for b, uid in enumerate(batch["ids"]):
            out[uid] = batch["feats"][b, : int(batch["lengths"][b])].numpy()
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_marked_cuts_get_fresh_noise_each_epoch(cuts, workers):
    spec = FeatureSpec(sample_rate=SR, num_mel_bins=20)
    ds = AsrDataset(TokenTable.build_chars(["ab"]), spec, noise=NoiseMixer(seed=7))
    loader = make_loader(cuts, ds, max_duration=10.0, shuffle=True, seed=0, num_workers=workers)
    assert isinstance(loader.sampler, EpochTaggedSampler)
    e0, e1, e0_again = (epoch_features(loader, e) for e in (0, 1, 0))
    np.testing.assert_array_equal(e0["plain"], e1["plain"])  # unmarked: as it is, every epoch
    assert np.abs(e0["noisy"] - e1["noisy"]).mean() > 0.1    # marked: another stretch of noise
    np.testing.assert_array_equal(e0["noisy"], e0_again["noisy"])  # same epoch, same rendition
    # what the loader's workers made is what the dataset makes for that epoch in this process
    np.testing.assert_allclose(e1["noisy"], ds.features(cuts["noisy"], 1), atol=1e-5)


def test_without_a_mixer_batches_are_plain_cut_sets(cuts):
    ds = AsrDataset(TokenTable.build_chars(["ab"]), FeatureSpec(sample_rate=SR, num_mel_bins=20))
    loader = make_loader(cuts, ds, max_duration=10.0, shuffle=True, seed=0)
    assert not isinstance(loader.sampler, EpochTaggedSampler)
    batch = next(iter(loader))
    assert sorted(batch["ids"]) == ["noisy", "plain"]  # the marked cut read as its recording, mark ignored
