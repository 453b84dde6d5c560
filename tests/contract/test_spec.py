"""The torch-free spec: tokens round trip, fbank offline == online, no torch import."""
import subprocess
import sys

import numpy as np
import pytest

from ekd_compress.contract.features import FeatureSpec, OnlineFeatures, compute_fbank
from ekd_compress.contract.tokens import BLANK, TokenTable


def test_char_tokens_round_trip(tmp_path):
    table = TokenTable.build_chars(["hello world", "it's fine"])
    assert table.tokens[0] == BLANK and table.tokens[1] == "|"
    ids = table.encode("it's  hello")
    assert 0 not in ids
    assert table.decode(ids) == "it's hello"
    loaded = TokenTable.load(table.save(tmp_path / "tokens.txt"))
    assert loaded.tokens == table.tokens and loaded.kind == "char"
    with pytest.raises(ValueError, match="'z'"):
        table.encode("zoo")


def test_bpe_tokens_round_trip(tmp_path):
    texts = ["the cat sat on the mat", "a dog ate the bone", "cats and dogs sat down"] * 20
    table = TokenTable.build_bpe(texts, vocab_size=40, out_dir=tmp_path)
    assert table.kind == "bpe" and table.tokens[0] == BLANK
    ids = table.encode("the cat ate the bone")
    assert table.decode(ids) == "the cat ate the bone"
    loaded = TokenTable.load(table.save(tmp_path / "tokens.txt"))
    assert loaded.kind == "bpe" and loaded.decode(ids) == "the cat ate the bone"


def test_tokens_file_errors(tmp_path):
    p = tmp_path / "tokens.txt"
    p.write_text("<blk> 0\na 2\n")
    with pytest.raises(ValueError, match="tokens.txt:2"):
        TokenTable.load(p)


def test_fbank_online_equals_offline():
    spec = FeatureSpec(sample_rate=8000, num_mel_bins=40)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(8000 * 2)).astype(np.float32)
    offline = compute_fbank(audio, spec)
    assert offline.shape == (200, 40)
    online, parts = OnlineFeatures(spec), []
    for start in range(0, len(audio), 777):  # odd piece sizes
        online.accept(audio[start:start + 777])
        parts.append(online.pop())
    online.finish()
    parts.append(online.pop())
    np.testing.assert_allclose(np.concatenate(parts), offline, atol=1e-5)


def test_online_fbank_releases_frames_it_handed_out():
    """A long stream must not keep every frame it ever computed (kaldi-native-fbank holds them
    until told to drop them): after pop(), the extractor no longer has the old frames, and the
    frames that follow are unchanged."""
    spec = FeatureSpec(sample_rate=8000, num_mel_bins=40)
    audio = (0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32)
    online = OnlineFeatures(spec)
    online.accept(audio[:4000])
    first = online.pop()
    assert first.shape[0] > 0
    with pytest.raises(Exception, match="already removed"):
        online._fbank.get_frame(0)
    online.accept(audio[4000:])
    online.finish()
    rest = online.pop()
    np.testing.assert_allclose(np.concatenate([first, rest]), compute_fbank(audio, spec), atol=1e-5)


def test_feature_spec_validation_and_hash():
    with pytest.raises(ValueError, match="sample_rate"):
        FeatureSpec(sample_rate=0)
    assert FeatureSpec().hash() == FeatureSpec().hash() != FeatureSpec(num_mel_bins=40).hash()
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()) == FeatureSpec()
    with pytest.raises(ValueError, match="unknown"):
        FeatureSpec.from_dict({"bins": 3})


def test_spec_and_cli_help_import_no_torch():
    code = "import sys, ekd_compress.contract, ekd_compress.cli.main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
