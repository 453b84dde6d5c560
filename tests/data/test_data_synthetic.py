"""Synthetic espeak-ng corpus: voices, vocabulary, determinism, sizes (about 20 s of audio)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ekd_compress.data import (SentenceSampler, available_voices, espeak_synthesize, load_kaldi_dir,
                               make_synthetic_corpus, read_kaldi_table, split_voices)

SECOND = 1 / 3600  # hours


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    dirs = make_synthetic_corpus(out, hours=12 * SECOND, dev_hours=4 * SECOND, test_hours=4 * SECOND, seed=7,
                                 sampling_rate=16000)
    return out, dirs


def test_espeak_is_deterministic_across_calls():
    a, sr = espeak_synthesize("the quick brown fox", "en-us+f2", rate=160, pitch=40, seed=1)
    espeak_synthesize("something else in between", "en-gb-scotland+klatt", rate=200)
    b, _ = espeak_synthesize("the quick brown fox", "en-us+f2", rate=160, pitch=40, seed=1)
    assert sr == 22050 and len(a) > sr // 2
    assert np.array_equal(a, b)
    assert 0.05 < np.abs(a).max() <= 1.0
    fast, _ = espeak_synthesize("the quick brown fox", "en-us+f2", rate=300, pitch=40, seed=1)
    assert len(fast) < len(a)
    with pytest.raises(ValueError, match="variant"):
        espeak_synthesize("x", "en+nosuchvariant")
    with pytest.raises(ValueError, match="no voice"):
        espeak_synthesize("x", "zz-nonexistent")


def test_voices_and_vocabulary():
    voices = available_voices()
    assert len(voices) >= 20
    split = split_voices()
    train, dev, test = (set(split[k]) for k in ("train", "dev", "test"))
    assert train and dev and test and not (train & dev) and not (train & test) and not (dev & test)
    assert split == split_voices(), "the voice split is fixed"
    assert len(split_voices(n_train=5)["train"]) == 5
    sampler = SentenceSampler()
    assert len(sampler.vocabulary) >= 1000
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = sampler.sample(rng).split()
        assert 3 <= len(words) <= 12 and set(words) <= sampler.vocabulary


def test_corpus_layout_and_contents(corpus):
    out, dirs = corpus
    assert set(dirs) == {"train", "dev", "test"}
    vocab = SentenceSampler().vocabulary
    speakers = {}
    for split, d in dirs.items():
        cuts, report = load_kaldi_dir(d, allowed_chars=set("abcdefghijklmnopqrstuvwxyz'"))
        assert report.num_dropped == 0 and len(cuts) >= 1
        target = {"train": 12, "dev": 4, "test": 4}[split]
        assert target <= report.kept_seconds < target + 15
        assert all(c.sampling_rate == 16000 for c in cuts)
        for c in cuts:
            words = c.supervisions[0].text.split()
            assert 3 <= len(words) <= 12 and set(words) <= vocab
        speakers[split] = set(read_kaldi_table(d / "utt2spk").values())
        assert set(read_kaldi_table(d / "utt2info")) == set(cuts.ids)
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]
    info = json.loads((out / "info.json").read_text())
    assert set(info["voices"]["test"]).isdisjoint(info["voices"]["train"])
    wav = next((dirs["train"] / "wav").iterdir())
    meta = sf.info(str(wav))
    assert meta.samplerate == 16000 and meta.channels == 1 and meta.subtype == "PCM_16"


def test_same_seed_identical_other_seed_different(corpus, tmp_path):
    out, _ = corpus
    make_synthetic_corpus(tmp_path / "b", hours=12 * SECOND, dev_hours=4 * SECOND, test_hours=4 * SECOND, seed=7,
                          sampling_rate=16000)
    assert digest(tmp_path / "b") == digest(out)
    make_synthetic_corpus(tmp_path / "c", hours=4 * SECOND, dev_hours=0, test_hours=0, seed=8,
                          snr_db_range=None, reverb=False, sampling_rate=8000)
    assert not (tmp_path / "c" / "dev").exists()
    assert (tmp_path / "c" / "train" / "text").read_text() != (out / "train" / "text").read_text()
    assert "noise=" not in (tmp_path / "c" / "train" / "utt2info").read_text()
    cuts, _ = load_kaldi_dir(tmp_path / "c" / "train")
    assert all(c.sampling_rate == 8000 for c in cuts)
