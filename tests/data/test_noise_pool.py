"""Noise mixed on the fly: the pool, the mixer's renditions, the cut marks and their paths."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording

from ekd_compress.data.noise_pool import (NOISE_MIX, NoiseMixer, NoisePool, mark_for_mixing, noise_mix_of, unmarked,
                                          write_noise_pool)
from ekd_compress.experiment import load_cuts, save_cuts

SR = 8000


def clean_cut(folder: Path, name: str = "u1", seconds: float = 1.0) -> MonoCut:
    """A quiet tone (peak 0.1: mixing at >= 0 dB never needs peak limiting) as folder/wav/NAME.wav and its cut."""
    t = np.arange(int(seconds * SR)) / SR
    path = folder / "wav" / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, subtype="FLOAT")
    return Recording.from_file(path, recording_id=name).to_cut()


@pytest.fixture
def pool(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_noise_pool(tmp_path / "pool", {"hiss": [rng.standard_normal(3000) * 0.1 for _ in range(3)],
                                                "hum": [0.1 * np.sin(np.arange(500) * 0.3)]}, SR)


def test_pool_draws_wrap_and_repeat(pool):
    p = NoisePool(pool, SR)
    assert p.kinds() == ["hiss", "hum"] and len(p.clips("hiss")) == 3
    a = p.draw("hiss", 7000, np.random.default_rng(5))
    assert a.shape == (7000,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, p.draw("hiss", 7000, np.random.default_rng(5)))
    assert not np.allclose(a, p.draw("hiss", 7000, np.random.default_rng(6)))
    hum = p.draw("hum", 1200, np.random.default_rng(1))  # a 500-sample clip wrapped around
    np.testing.assert_allclose(hum[:500], hum[500:1000])


def test_pool_errors_name_the_problem(pool, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no clips of kind 'babble'.*\['hiss', 'hum'\]"):
        NoisePool(pool, SR).clips("babble")
    with pytest.raises(ValueError, match="at 8000 Hz, the training audio at 16000 Hz"):
        NoisePool(pool, 16000).clips("hum")
    with pytest.raises(ValueError, match="at least one clip"):
        write_noise_pool(tmp_path / "p2", {"empty": []}, SR)


def test_mixer_renditions_are_fresh_per_epoch_and_repeatable(pool, tmp_path):
    cut = mark_for_mixing(CutSet.from_cuts([clean_cut(tmp_path / "clean")]), tmp_path / "clean", pool,
                          lambda c: "hiss", snr_db=6.0)[0]
    clean = sf.read(str(tmp_path / "clean" / "wav" / "u1.wav"), dtype="float32")[0]
    mixer = NoiseMixer(seed=3)
    e0, e1 = mixer.audio(cut, 0), mixer.audio(cut, 1)
    np.testing.assert_array_equal(e0, NoiseMixer(seed=3).audio(cut, 0))  # same (seed, epoch, cut): resumable
    assert not np.allclose(e0, e1) and not np.allclose(e0, NoiseMixer(seed=4).audio(cut, 0))
    for mixed in (e0, e1):
        noise = mixed - clean
        snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert snr == pytest.approx(6.0, abs=0.01)
    # the draw follows the utterance id, so a repeated cut (ID_dup1) can be given its source id
    np.testing.assert_array_equal(mixer.audio(cut.with_id("u1_dup1"), 0, "u1"), e0)
    with pytest.raises(ValueError, match="no custom"):
        mixer.audio(clean_cut(tmp_path / "c2", "u2"), 0)


def test_marks_need_the_clean_twin_and_unmarked_drops_them(pool, tmp_path):
    cuts = CutSet.from_cuts([clean_cut(tmp_path / "noisy", "u9")])
    with pytest.raises(FileNotFoundError, match="no clean audio .*u9.wav for the noisy cut u9"):
        mark_for_mixing(cuts, tmp_path / "missing", pool, lambda c: "hiss", 5.0)
    marked = mark_for_mixing(cuts, tmp_path / "noisy", pool, lambda c: "hum", 5.0)[0]
    assert noise_mix_of(marked)["kind"] == "hum" and noise_mix_of(marked)["snr_db"] == 5.0
    assert noise_mix_of(unmarked(marked)) is None and noise_mix_of(cuts[0]) is None


def test_manifest_keeps_paths_relative_and_the_experiment_can_move(pool, tmp_path):
    exp = tmp_path / "exp"
    shutil.move(str(pool), exp / "data" / "pool")
    cut = clean_cut(exp / "data" / "clean")
    marked = mark_for_mixing(CutSet.from_cuts([cut]), exp / "data" / "clean", exp / "data" / "pool",
                             lambda c: "hiss", 10.0)
    manifest = save_cuts(marked, exp / "features" / "train_cuts.jsonl.gz", exp)
    stored = json.loads(gzip.open(manifest, "rt").readline())["custom"][NOISE_MIX]
    assert stored["clean"] == "../data/clean/wav/u1.wav" and stored["pool"] == "../data/pool"
    expected = NoiseMixer(1).audio(load_cuts(manifest)[0], 2)
    moved = tmp_path / "elsewhere"
    shutil.move(str(exp), moved)
    back = load_cuts(moved / "features" / "train_cuts.jsonl.gz")[0]
    assert noise_mix_of(back)["clean"] == str(moved / "data" / "clean" / "wav" / "u1.wav")
    np.testing.assert_array_equal(NoiseMixer(1).audio(back, 2), expected)
