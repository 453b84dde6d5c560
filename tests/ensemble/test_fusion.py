"""fuse_posteriors by hand, and FusedEnsemble with two tiny streaming models."""
import math

import pytest
import torch
from torch import nn

from ekd_compress.ensemble.fusion import FusedEnsemble, fuse_posteriors
from tests.streaming import stream as _stream


def lp(rows):
    return torch.tensor([rows]).log()  # (1, T, V)


def test_uniform_and_weighted_average_by_hand():
    a, b = lp([[0.5, 0.5]]), lp([[0.9, 0.1]])
    assert fuse_posteriors([a, b]).exp().tolist()[0][0] == pytest.approx([0.7, 0.3])
    assert fuse_posteriors([a, b], [3, 1]).exp().tolist()[0][0] == pytest.approx([0.6, 0.4])
    assert fuse_posteriors([a, b], [0, 2]).exp().tolist()[0][0] == pytest.approx([0.9, 0.1])
    out = fuse_posteriors([a, b], [1, 1])
    assert out[0, 0, 1].item() == pytest.approx(math.log(0.3), rel=1e-6)


@pytest.mark.parametrize("weights, match", [([1, -1], ">= 0"), ([0, 0], "all zero"), ([1], "one weight per member"),
                                            ([float("nan"), 1], "finite")])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        fuse_posteriors([lp([[0.5, 0.5]]), lp([[0.9, 0.1]])], weights)


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(1, 1, 2\).*\(1, 2, 2\)"):
        fuse_posteriors([lp([[0.5, 0.5]]), lp([[0.5, 0.5], [0.2, 0.8]])])


class Accumulator(nn.Module):
    """Dummy streaming CTC model: frame pairs -> linear -> causal running sum. State: the sum (B, V)."""

    subsampling, chunk_frames, input_dim, vocab_size = 2, 4, 3, 4

    def __init__(self, seed: int, chunk_frames: int = 4, subsampling: int = 2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.chunk_frames, self.subsampling = chunk_frames, subsampling
        self.lin = nn.Linear(subsampling * 3, 4)

    def _z(self, x):
        B, T, F = x.shape
        n = T // self.subsampling
        return self.lin(x[:, : n * self.subsampling].reshape(B, n, self.subsampling * F))

    def forward(self, feats, lengths):
        return self._z(feats).cumsum(1).log_softmax(-1), lengths // self.subsampling

    def state_spec(self):
        return [("acc", ("B", 4))]

    def initial_state(self, batch):
        return [torch.zeros(batch, 4)]

    def forward_chunk(self, chunk, state):
        h = state[0][:, None] + self._z(chunk).cumsum(1)
        return h.log_softmax(-1), [h[:, -1]]


class Differ(Accumulator):
    """Dummy with two state tensors: the previous frame (B, 1, F) and a frame counter (B, 1)."""

    def _d(self, x, prev):
        return x - torch.cat([prev, x[:, :-1]], dim=1)

    def forward(self, feats, lengths):
        d = self._d(feats, torch.zeros_like(feats[:, :1]))
        pos = torch.arange(d.shape[1] // 2, dtype=torch.float32)[None, :, None]
        return (self._z(d) + 0.1 * pos).log_softmax(-1), lengths // 2

    def state_spec(self):
        return [("prev", ("B", 1, 3)), ("count", ("B", 1))]

    def initial_state(self, batch):
        return [torch.zeros(batch, 1, 3), torch.zeros(batch, 1)]

    def forward_chunk(self, chunk, state):
        prev, count = state
        n = chunk.shape[1] // 2
        pos = (count + torch.arange(n, dtype=torch.float32)[None])[..., None]
        out = self._z(self._d(chunk, prev)) + 0.1 * pos
        return out.log_softmax(-1), [chunk[:, -1:], count + n]


def test_forward_fuses_members():
    a, b = Accumulator(0), Differ(1)
    ens = FusedEnsemble([a, b], [1, 3])
    feats, lengths = torch.randn(2, 12, 3), torch.tensor([12, 8])
    out, out_len = ens(feats, lengths)
    want = (0.25 * a(feats, lengths)[0].exp() + 0.75 * b(feats, lengths)[0].exp()).log()
    assert torch.allclose(out, want, atol=1e-6) and out_len.tolist() == [6, 4]
    assert ens.subsampling == 2 and ens.chunk_frames == 4 and ens.vocab_size == 4


def test_streaming_matches_forward_and_state_is_flat():
    ens = FusedEnsemble([Accumulator(0), Differ(1)])
    assert ens.state_spec() == [("m0.acc", ("B", 4)), ("m1.prev", ("B", 1, 3)), ("m1.count", ("B", 1))]
    feats = torch.randn(2, 12, 3)
    full, _ = ens(feats, torch.tensor([12, 12]))
    state = ens.initial_state(2)
    assert [tuple(s.shape) for s in state] == [(2, 4), (2, 1, 3), (2, 1)]
    outs = []
    for start in range(0, 12, ens.chunk_frames):
        out, state = ens.forward_chunk(feats[:, start:start + 4], state)
        outs.append(out)
    assert len(state) == 3
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="initial_state"):
        ens.forward_chunk(feats[:, :4], state[:2])


def test_member_mismatches():
    with pytest.raises(ValueError, match="subsampling"):
        FusedEnsemble([Accumulator(0), Accumulator(1, chunk_frames=8, subsampling=4)])
    ens = FusedEnsemble([Accumulator(0), Accumulator(1, chunk_frames=8)])
    out, _ = ens(torch.randn(1, 8, 3), torch.tensor([8]))  # offline fusion still works
    assert out.shape == (1, 4, 4) and ens.chunk_frames is None
    with pytest.raises(ValueError, match="chunk_frames"):
        ens.initial_state(1)


# ------------------------------------------------------------------ unequal fusion weights
WEIGHTS = [1.0, 4.0]  # normalised to 0.2 / 0.8


def _real_members(seed: int = 0) -> list[nn.Module]:
    """Two tiny real architectures (TDNN, GRU), perturbed so their posteriors differ clearly."""
    from ekd_compress.models import build_model

    torch.manual_seed(seed)
    members = [build_model("tdnn", 6, 5, hidden=8, layers=2, chunk_frames=8),
               build_model("gru", 6, 5, hidden=8, layers=1, chunk_frames=8)]
    with torch.no_grad():
        for m in members:
            for p in m.parameters():
                p.add_(0.5 * torch.randn_like(p))
    return [m.eval() for m in members]


def test_weighted_streaming_matches_weighted_forward():
    """With unequal weights, forward_chunk fuses with the same weights as forward; equal
    weights give a clearly different teacher (so the weights are really used)."""
    a, b = Accumulator(0), Differ(1)
    weighted, equal = FusedEnsemble([a, b], WEIGHTS), FusedEnsemble([a, b])
    feats = torch.randn(2, 12, 3)
    lengths = torch.tensor([12, 12])
    full, _ = weighted(feats, lengths)
    by_hand = (0.2 * a(feats, lengths)[0].exp() + 0.8 * b(feats, lengths)[0].exp()).log()
    assert torch.allclose(full, by_hand, atol=1e-6), "forward does not fuse with weights 0.2 / 0.8"
    streamed = _stream(weighted, feats)
    gap = (streamed - full).abs().max().item()
    assert gap < 1e-5, f"weighted ensemble: streamed and full forward differ by {gap:.3g}"
    equal_full, equal_streamed = equal(feats, lengths)[0], _stream(equal, feats)
    assert (equal_full - full).abs().max() > 1e-2, "equal and 0.2/0.8 weights must give different teachers"
    assert (equal_streamed - streamed).abs().max() > 1e-2, "streaming ignores the fusion weights"


def test_weighted_real_members_stream_and_export_like_forward(tmp_path):
    """TDNN + GRU fused 0.2 / 0.8: the streamed PyTorch ensemble and the exported ONNX graph
    (run here with onnxruntime, not through the exporter's own report) match forward."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ekd_compress.export.onnx_export import export_streaming_onnx

    ens = FusedEnsemble(_real_members(), WEIGHTS).eval()
    feats = torch.randn(2, 32, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = ens(feats, torch.tensor([32, 32]))
        equal, _ = FusedEnsemble(list(ens.members)).eval()(feats, torch.tensor([32, 32]))
        streamed = _stream(ens, feats)
    assert (equal - full).abs().max() > 1e-2, "the example needs members whose weighting matters"
    assert (streamed - full).abs().max() < 1e-5, "weighted ensemble: streamed != forward"

    spec = export_streaming_onnx(ens, tmp_path / "ensemble.onnx")
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    names = [s["name"] for s in spec["states"]]
    states = [s.numpy() for s in ens.initial_state(2)]
    outs = []
    for start in range(0, 32, ens.chunk_frames):
        chunk = feats[:, start:start + ens.chunk_frames].numpy()
        log_probs, *states = session.run(None, {"chunk": chunk, **dict(zip(names, states))})
        outs.append(torch.from_numpy(log_probs))
    onnx_out = torch.cat(outs, dim=1)
    gap = (onnx_out - full).abs().max().item()
    assert gap < 1e-4, f"exported 0.2/0.8 ensemble differs from forward by {gap:.3g}"
    assert (onnx_out - equal).abs().max() > 1e-2, "the exported ensemble fuses with equal weights"
