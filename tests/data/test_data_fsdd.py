"""FSDD: scanning, splitting and connected digit strings, on a fake FSDD of pure tones.

Each fake recording is a 0.12 s tone whose frequency encodes (digit, speaker), so
the tests can decode a generated string back into its digits and speakers.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ekd_compress.data import (DIGIT_WORDS, DataError, load_kaldi_dir, make_digit_strings, prepare_fsdd,
                               read_kaldi_table, scan_fsdd, split_fsdd)
from ekd_compress.experiment import load_cuts

SPEAKERS = {"alice": 0.0, "bob": 80.0}
INDICES = (0, 5, 6, 10, 11)
SR = 8000


def freq(digit: int, speaker: str) -> float:
    return 300.0 + 200.0 * digit + SPEAKERS[speaker]


@pytest.fixture
def fsdd_root(tmp_path, write_wav) -> Path:
    root = tmp_path / "free-spoken-digit-dataset"
    for spk in SPEAKERS:
        for digit in range(10):
            for idx in INDICES:
                write_wav(root / "recordings" / f"{digit}_{spk}_{idx}.wav", 0.12, SR, freq(digit, spk))
    return root


def decode(path: Path) -> list[tuple[int, str]]:
    """(digit, speaker) of every tone in a clean generated string."""
    x, sr = sf.read(str(path))
    active = np.convolve(np.abs(x) > 1e-4, np.ones(100), mode="same") > 0  # bridge zero crossings
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    out = []
    for i, j in zip(edges[::2], edges[1::2]):
        seg = x[i:j]
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=1 << 15))
        f = np.argmax(spec) * sr / (1 << 15)
        out.append(min(((d, s) for d in range(10) for s in SPEAKERS), key=lambda ds: abs(freq(*ds) - f)))
    return out


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scan_and_bad_names(fsdd_root):
    recs = scan_fsdd(fsdd_root)
    assert len(recs) == 2 * 10 * len(INDICES)
    assert recs[0].speaker == "alice" and recs[0].digit == 0 and recs[0].index == 0
    assert scan_fsdd(fsdd_root / "recordings") == recs
    bad = fsdd_root / "recordings" / "three_bob_1.wav"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match=r"three_bob_1\.wav: file name does not match"):
        scan_fsdd(fsdd_root)
    assert scan_fsdd(fsdd_root, on_error="skip") == recs
    with pytest.raises(DataError, match="no such directory"):
        scan_fsdd(fsdd_root / "missing")


def test_split(fsdd_root):
    recs = scan_fsdd(fsdd_root)
    by_index = split_fsdd(recs)
    assert {r.index for r in by_index["train"]} == {10, 11}
    assert {r.index for r in by_index["dev"]} == {5, 6}
    assert {r.index for r in by_index["test"]} == {0}
    by_spk = split_fsdd(recs, by="speaker", dev_speakers=["bob"])
    assert {r.speaker for r in by_spk["train"]} == {"alice"} and {r.speaker for r in by_spk["dev"]} == {"bob"}
    with pytest.raises(ValueError, match="overlap"):
        split_fsdd(recs, train_indices=range(0, 10))
    with pytest.raises(ValueError, match="dev_speakers"):
        split_fsdd(recs, by="speaker", dev_speakers=["carol"])


def test_digit_strings_text_speaker_and_determinism(fsdd_root, tmp_path):
    recs = scan_fsdd(fsdd_root)
    out = make_digit_strings(recs, tmp_path / "a", n_strings=12, seed=3)
    again = make_digit_strings(recs, tmp_path / "b", n_strings=12, seed=3)
    other = make_digit_strings(recs, tmp_path / "c", n_strings=12, seed=4)
    assert digest(out) == digest(again)
    assert digest(out) != digest(other)
    text, spk, scp = (read_kaldi_table(out / f) for f in ("text", "utt2spk", "wav.scp"))
    assert len(text) == 12
    lengths = set()
    for utt, words in text.items():
        tones = decode(out / scp[utt])
        digits = [DIGIT_WORDS.index(w) for w in words.split()]
        assert 2 <= len(digits) <= 7
        lengths.add(len(digits))
        assert [d for d, _ in tones] == digits, utt
        assert {s for _, s in tones} == {spk[utt]}, "one speaker per string"
        assert utt.startswith(spk[utt] + "-")
    assert len(lengths) > 1
    cuts, report = load_kaldi_dir(out, allowed_chars=set("abcdefghijklmnopqrstuvwxyz"))
    assert report.kept == 12 and all(c.sampling_rate == SR for c in cuts)


def test_digit_strings_with_noise(fsdd_root, tmp_path):
    recs = scan_fsdd(fsdd_root)
    clean = make_digit_strings(recs, tmp_path / "clean", n_strings=3, seed=1)
    for noise in ("white", "pink", "babble"):
        noisy = make_digit_strings(recs, tmp_path / noise, n_strings=3, seed=1, snr_db=5.0, noise=noise)
        assert read_kaldi_table(noisy / "text") == read_kaldi_table(clean / "text")
        utt = sorted(read_kaldi_table(noisy / "text"))[0]
        x, _ = sf.read(str(noisy / "wav" / f"{utt}.wav"))
        c, _ = sf.read(str(clean / "wav" / f"{utt}.wav"))
        assert x.shape == c.shape and not np.allclose(x, c, atol=1e-3)
        if noise != "babble":
            assert np.mean(np.abs(x) < 1e-5) < 0.05  # the pauses are filled with noise
        assert digest(noisy) == digest(make_digit_strings(recs, tmp_path / (noise + "2"), n_strings=3, seed=1,
                                                          snr_db=5.0, noise=noise))
    with pytest.raises(ValueError, match="noise"):
        make_digit_strings(recs, tmp_path / "x", n_strings=1, snr_db=5.0, noise="purple")


def test_resampled_output(fsdd_root, tmp_path):
    out = make_digit_strings(scan_fsdd(fsdd_root), tmp_path / "s", n_strings=2, seed=0, sampling_rate=16000)
    utt = sorted(read_kaldi_table(out / "text"))[0]
    assert sf.info(str(out / "wav" / f"{utt}.wav")).samplerate == 16000


def test_prepare_fsdd(fsdd_root, tmp_path):
    dirs = prepare_fsdd(fsdd_root, tmp_path / "fsdd", seed=0, n_train=6, n_dev=3, isolated=True)
    assert set(dirs) == {"train", "dev", "train_isolated", "dev_isolated"}
    cuts, _ = load_kaldi_dir(dirs["train"])
    assert len(cuts) == 6
    iso, _ = load_kaldi_dir(dirs["dev_isolated"])
    assert len(iso) == 2 * 10 * 2  # indices 5 and 6
    assert {c.supervisions[0].text for c in iso} == set(DIGIT_WORDS)
    # train strings only use train indices (10, 11): decode speakers/digits and check against the isolated dir
    scp = read_kaldi_table(dirs["train_isolated"] / "wav.scp")
    assert all(Path(p).name.split("_")[2] in ("10.wav", "11.wav") for p in scp.values())


def test_noise_pool_babble_leaves_the_speaker_out(fsdd_root, tmp_path):
    from ekd_compress.data import fsdd

    recs = [r for r in scan_fsdd(fsdd_root) if r.index >= 10]
    pool = fsdd.make_noise_pool(recs, tmp_path / "pool", ["babble", "pink"], clips=2, seconds=1.5, seed=4)
    assert sorted(p.name for p in pool.iterdir()) == ["babble_without_alice", "babble_without_bob", "pink"]
    assert digest(pool) == digest(fsdd.make_noise_pool(recs, tmp_path / "again", ["pink", "babble"], clips=2,
                                                       seconds=1.5, seed=4))
    for spk, other in (("alice", "bob"), ("bob", "alice")):
        x, sr = sf.read(str(pool / fsdd.babble_kind(spk) / "000.wav"))
        assert len(x) == 12000 and sr == SR
        spec = np.abs(np.fft.rfft(x))
        hz = np.fft.rfftfreq(len(x), 1 / SR)
        energy = {s: sum(spec[np.abs(hz - freq(d, s)) < 15].sum() for d in range(10)) for s in SPEAKERS}
        # only the other speaker's digits (what falls on the speaker's own tones is leakage of the 0.12 s tones)
        assert energy[spk] < 0.2 * energy[other], (spk, energy)
    with pytest.raises(ValueError, match="purple"):
        fsdd.make_noise_pool(recs, tmp_path / "x", ["purple"])


def test_distill_data_stage_marks_noisy_strings_for_fresh_noise(fsdd_root, tmp_path):
    """data.fsdd.train_noise_fly: the noisy strings keep their fixed copy as recording and carry
    their clean twin (same digits), noise kind and SNR; the key changes only when it is on."""
    from ekd_compress.data.noise_pool import noise_mix_of
    from ekd_compress.pipeline.data_prep import prepare_data
    from ekd_compress.pipeline.plan import extra_data_key
    from ekd_compress.recipe import load_recipe

    sets = ["data.corpus=fsdd", f"data.fsdd.root={fsdd_root}", "data.fsdd.n_train=4", "data.fsdd.n_dev=2",
            "data.fsdd.train_indices=[10, 11]", "data.fsdd.dev_indices=[5, 6]", "data.fsdd.noisy_dev_snr_db=null",
            "data.fsdd.train_noise=[[10, white], [5, babble]]", "data.fsdd.train_noise_strings=3"]
    fixed = load_recipe(None, sets)
    fly = load_recipe(None, sets + ["data.fsdd.train_noise_fly=true"])
    assert extra_data_key(fixed) == [] and extra_data_key(fly) == [{"train_noise_fly": True}]
    lines: list[str] = []
    out = prepare_data(fly, tmp_path / "exp", log=lines.append)
    cuts = load_cuts(Path(out["train"]))
    marked = [c for c in cuts if noise_mix_of(c) is not None]
    assert len(cuts) == 10 and len(marked) == 6
    for c in marked:
        mix = noise_mix_of(c)
        spk = c.supervisions[0].speaker
        assert mix["kind"] == ("white" if "white" in c.id else f"babble_without_{spk}")
        assert mix["snr_db"] == (10.0 if "white" in c.id else 5.0)
        clean, noisy = sf.read(mix["clean"])[0], c.load_audio()[0]
        assert clean.shape == noisy.shape and not np.allclose(clean, noisy, atol=1e-3)
        assert [d for d, _ in decode(Path(mix["clean"]))] == [DIGIT_WORDS.index(w) for w in c.supervisions[0].text.split()]
        assert (Path(mix["pool"]) / mix["kind"]).is_dir()
    assert sum("get fresh" in line for line in lines) == 2
    plain = load_cuts(Path(prepare_data(fixed, tmp_path / "exp2", log=lambda s: None)["train"]))
    assert [c.id for c in plain] == [c.id for c in cuts] and all(noise_mix_of(c) is None for c in plain)
