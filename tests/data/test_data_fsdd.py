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
