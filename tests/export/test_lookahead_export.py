"""Models with lookahead (a TDNN, a delayed LSTM) through the exporter: the ONNX window, the bundle contract, and
onnxruntime streaming (export/ort_stream.py, used by verify, INT8 and bench) equal to forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd_compress.export.onnx_export import export_streaming_onnx
from ekd_compress.export.ort_stream import OrtStreamer, pad_to_chunks, windows
from ekd_compress.models import build_model

pytest.importorskip("onnxruntime")


def test_windows_start_a_chunk_apart_and_end_with_the_lookahead() -> None:
    feats = np.arange(10, dtype=np.float32)[:, None]  # 10 frames, 1 bin
    padded = pad_to_chunks(feats, chunk_frames=4, lookahead_frames=3)  # 3 chunks + 3 frames
    assert padded.shape == (15, 1) and padded[10:].sum() == 0
    wins = windows(padded, 4, 3)
    assert [w[:, 0].tolist() for w in wins] == [[0, 1, 2, 3, 4, 5, 6], [4, 5, 6, 7, 8, 9, 0], [8, 9, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("arch", ["tdnn", "lstm"])
@torch.no_grad()
def test_lookahead_model_exports_and_streams_like_forward(tmp_path, arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 20, 7, hidden=24, layers=4 if arch == "tdnn" else 2, lookahead=3, chunk_frames=16).eval()
    model.set_normalization(torch.randn(20), torch.rand(20) + 0.5)
    io = export_streaming_onnx(model, tmp_path / "model.onnx")
    assert io["inputs"]["chunk"]["shape"] == ["B", 16 + 12, 20]
    assert io["streaming"]["lookahead_frames"] == 12 and io["streaming"]["output_frames_per_chunk"] == 4
    runner = OrtStreamer(tmp_path / "model.onnx", {"streaming": io["streaming"], "states": io["states"]})
    feats = [np.random.default_rng(i).standard_normal((n, 20)).astype(np.float32) for i, n in enumerate([37, 70])]
    for batch_size in (1, 2):
        outs = runner.run_utterances(feats, batch_size=batch_size)
        for f, out in zip(feats, outs):
            ref, n = model(torch.from_numpy(f)[None], torch.tensor([f.shape[0]]))
            assert out.shape[0] == -(-f.shape[0] // 16) * 4  # whole chunks, the padding included
            np.testing.assert_allclose(out[: int(n[0])], ref[0].numpy(), atol=1e-4)


@torch.no_grad()
def test_mixed_lookahead_ensemble_exports_and_streams_like_forward(tmp_path) -> None:
    from ekd_compress.ensemble.fusion import FusedEnsemble

    torch.manual_seed(0)
    tdnn = build_model("tdnn", 20, 7, hidden=24, layers=4, lookahead=2, chunk_frames=16).eval()
    gru = build_model("gru", 20, 7, hidden=16, layers=1, chunk_frames=16).eval()
    ens = FusedEnsemble([tdnn, gru], [1.0, 1.0]).eval()
    io = export_streaming_onnx(ens, tmp_path / "model.onnx")
    assert io["inputs"]["chunk"]["shape"] == ["B", 16 + 8, 20] and io["streaming"]["lookahead_frames"] == 8
    runner = OrtStreamer(tmp_path / "model.onnx", {"streaming": io["streaming"], "states": io["states"]})
    f = np.random.default_rng(3).standard_normal((50, 20)).astype(np.float32)
    out = runner.run_utterances([f])[0]
    ref, n = ens(torch.from_numpy(f)[None], torch.tensor([50]))
    np.testing.assert_allclose(out[: int(n[0])], ref[0].numpy(), atol=1e-4)


def test_windows_refuse_features_not_padded_for_the_lookahead() -> None:
    with pytest.raises(ValueError, match=r"16 frames are not n \* 8 \+ 3"):
        windows(np.zeros((16, 2), np.float32), 8, 3)
