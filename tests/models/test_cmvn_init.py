"""Global CMVN (training statistics, applied inside the model, so the exported graph applies
them too) and the initialisations: LSTM forget-gate bias, label-prior output bias."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ekd_compress.models import build_model
from tests.streaming import stream

F_BINS, VOCAB = 6, 5


def normalised_model(arch: str, params: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(arch, F_BINS, VOCAB, chunk_frames=8, **params).eval()
    mean = torch.linspace(-3.0, 4.0, F_BINS)
    std = torch.linspace(0.5, 3.0, F_BINS)
    model.set_normalization(mean, std)
    return model, mean, std


def test_feature_stats_golden(tmp_path):
    from ekd_compress.pipeline.teacher import feature_stats

    frames = [np.array([[1.0, 2.0], [3.0, 6.0]], np.float32), np.array([[5.0, 10.0]], np.float32)]
    cuts = [SimpleNamespace(feats=f) for f in frames]
    spec = SimpleNamespace(num_mel_bins=2)
    import ekd_compress.features.fbank as fbank

    orig = fbank.load_features
    fbank.load_features = lambda cut, spec: cut.feats
    try:
        path = feature_stats(cuts, spec, tmp_path / "cmvn.npz")
    finally:
        fbank.load_features = orig
    with np.load(path) as z:
        # bin 0: 1, 3, 5 -> mean 3, population std sqrt(8/3); bin 1: 2, 6, 10 -> mean 6, std sqrt(32/3)
        np.testing.assert_allclose(z["mean"], [3.0, 6.0], rtol=1e-6)
        np.testing.assert_allclose(z["std"], [np.sqrt(8 / 3), np.sqrt(32 / 3)], rtol=1e-6)
        assert int(z["frames"]) == 3


@pytest.mark.parametrize("arch,params", [("tdnn", {"hidden": 8, "layers": 2}), ("gru", {"hidden": 8, "layers": 1}),
                                         ("lstm", {"hidden": 8, "layers": 1}),
                                         ("transformer", {"hidden": 8, "layers": 1, "heads": 2})])
def test_cmvn_is_applied_identically_in_full_and_streaming_paths(arch, params):
    model, mean, std = normalised_model(arch, params)
    feats = torch.randn(1, 24, F_BINS) * 3 + 2
    full, _ = model(feats, torch.tensor([24]))
    # golden: the same weights without normalisation, fed (x - mean) / std by hand
    plain, _, _ = normalised_model(arch, params)
    plain.load_state_dict(model.state_dict())
    plain.feat_mean.zero_()
    plain.feat_scale.fill_(1.0)
    by_hand, _ = plain((feats - mean) / std, torch.tensor([24]))
    torch.testing.assert_close(full, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stream(model, feats), full, atol=1e-4, rtol=1e-4)


def test_cmvn_survives_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from ekd_compress.export.onnx_export import export_streaming_onnx
    from ekd_compress.export.ort_stream import OrtStreamer

    model, _, _ = normalised_model("tdnn", {"hidden": 8, "layers": 2})
    spec = export_streaming_onnx(model, tmp_path / "model.onnx")
    feats = (torch.randn(24, F_BINS) * 3 + 2).numpy().astype(np.float32)
    onnx_out = OrtStreamer(tmp_path / "model.onnx", spec).run_utterances([feats])[0][:6]
    torch_out, _ = model(torch.from_numpy(feats)[None], torch.tensor([24]))
    np.testing.assert_allclose(onnx_out, torch_out[0].detach().numpy(), atol=1e-4)
    # the stats are in the graph: a model without them gives other outputs
    model.feat_mean.zero_()
    model.feat_scale.fill_(1.0)
    assert not np.allclose(model(torch.from_numpy(feats)[None], torch.tensor([24]))[0][0].detach().numpy(),
                           onnx_out, atol=1e-3)


def test_lstm_forget_gate_bias_is_one():
    model = build_model("lstm", F_BINS, VOCAB, hidden=4, layers=2)
    for layer in range(2):
        b = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        torch.testing.assert_close(b[4:8], torch.ones(4))  # gates i, f, g, o: f is the second block
    gru = build_model("gru", F_BINS, VOCAB, hidden=4, layers=1)
    assert not torch.allclose(gru.rnn.bias_ih_l0[4:8] + gru.rnn.bias_hh_l0[4:8], torch.ones(4))


def test_label_prior_golden_and_output_bias():
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.job import label_prior

    tokens = TokenTable.build_chars(["ab"])  # blank, then the characters
    cut = SimpleNamespace(supervisions=[SimpleNamespace(text="ab")], duration=1.0)
    prior = label_prior([cut], tokens, frame_shift_ms=10.0, subsampling=4)
    # 100 input frames -> 25 output frames: 'a' and 'b' one each, blank the other 23
    expected = np.zeros(len(tokens), np.float32)
    expected[0] = 23
    expected[tokens.encode("a")[0]] = 1
    expected[tokens.encode("b")[0]] = 1
    np.testing.assert_allclose(prior, expected / 25, rtol=1e-6)
    model = build_model("tdnn", F_BINS, len(tokens), hidden=4, layers=1).eval()
    model.set_output_prior(torch.from_numpy(prior))
    with torch.no_grad():
        model.out.weight.zero_()
    log_probs, _ = model(torch.randn(1, 8, F_BINS), torch.tensor([8]))
    # with the weights at zero the output is the prior itself (zero-count tokens at the 1e-6 floor)
    floor = np.maximum(prior, 1e-6)
    np.testing.assert_allclose(log_probs[0, 0].detach().exp().numpy(), floor / floor.sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="prior of shape"):
        model.set_output_prior(torch.ones(3))


def test_a_model_starts_from_another_models_weights_only_if_built_alike(tmp_path):
    from ekd_compress.train.fit import build, save_model
    from ekd_compress.train.job import load_initial_weights

    torch.manual_seed(0)
    source = build("tdnn", 8, 5, {"hidden": 16, "layers": 2})
    source.set_normalization(torch.full((8,), 3.0), torch.full((8,), 2.0))
    path = save_model(source, tmp_path / "model.pt", {"name": "baseline"})
    torch.manual_seed(1)
    target = build("tdnn", 8, 5, {"hidden": 16, "layers": 2})
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_initial_weights(target, path)
    after, expected = target.state_dict(), source.state_dict()
    assert all(torch.equal(after[k], expected[k]) for k in expected)  # CMVN statistics included
    assert any(not torch.equal(before[k], expected[k]) for k in expected)  # and they were not equal before
    wider = build("tdnn", 8, 5, {"hidden": 32, "layers": 2})
    with pytest.raises(ValueError, match=r"init_from=.*model.pt: that model was built as .*'hidden': 16"):
        load_initial_weights(wider, path)
    with pytest.raises(FileNotFoundError, match="init_from=.*missing.pt: no such model file"):
        load_initial_weights(target, tmp_path / "missing.pt")
