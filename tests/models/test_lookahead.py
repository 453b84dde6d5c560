"""Models with lookahead (TDNN: right context; GRU / LSTM: an output delay): what each output
frame may see, and streaming them window by window."""
from __future__ import annotations

import pytest
import torch

from ekd_compress.models import build_model
from ekd_compress.models.tdnn import spread_lookahead
from tests.streaming import stream

F_DIM, VOCAB = 20, 9


ARCHS = ["tdnn", "gru", "lstm"]


def make(arch: str = "tdnn", **kwargs):
    torch.manual_seed(0)
    model = build_model(arch, F_DIM, VOCAB, hidden=24, **kwargs).eval()
    model.set_normalization(torch.randn(F_DIM), torch.rand(F_DIM) + 0.5)
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lookahead", [0, 2, 5])
@torch.no_grad()
def test_output_sees_exactly_its_lookahead(arch: str, lookahead: int) -> None:
    """Output frame n changes with input frame 4(n + L) + 3 (the last frame of the frontend
    group L ahead) and not with any later frame."""
    model = make(arch, lookahead=lookahead)
    assert model.lookahead_frames == 4 * lookahead and model.window_frames == model.chunk_frames + 4 * lookahead
    feats = torch.randn(1, 128, F_DIM)
    lengths = torch.tensor([128])
    base, _ = model(feats, lengths)
    n = 10
    last_seen = 4 * (n + lookahead) + 3
    seen, unseen = feats.clone(), feats.clone()
    seen[0, last_seen] += 5.0
    unseen[0, last_seen + 1:] += 5.0
    assert not torch.allclose(model(seen, lengths)[0][0, n], base[0, n])
    torch.testing.assert_close(model(unseen, lengths)[0][0, : n + 1], base[0, : n + 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_short_utterance_streams_like_its_forward_in_a_padded_batch(arch: str) -> None:
    """The last frames of a short utterance look past its end: forward (batch padding of any
    value) and a stream of it alone (zero-padded windows) agree there too."""
    model = make(arch, lookahead=4, chunk_frames=16)
    short_len = 16 * 2 + 5
    batch = torch.randn(2, 16 * 5, F_DIM) * 3.0
    full, out_lengths = model(batch, torch.tensor([batch.shape[1], short_len]))
    alone = torch.zeros(1, 16 * 3, F_DIM)
    alone[0, :short_len] = batch[1, :short_len]
    streamed = stream(model, alone)
    n = int(out_lengths[1])
    torch.testing.assert_close(streamed[0, :n], full[1, :n], atol=1e-5, rtol=0)


def test_lookahead_spread_and_limits() -> None:
    assert spread_lookahead(4, [2, 4, 8, 16]) == [1, 2, 1, 0]
    assert spread_lookahead(0, [2, 4]) == [0, 0]
    with pytest.raises(ValueError, match="lookahead=4 is more than these blocks can look ahead"):
        spread_lookahead(4, [2, 4])
    with pytest.raises(ValueError, match="lookahead=-1"):
        make(lookahead=-1)
    with pytest.raises(ValueError, match="lookahead=19"):
        make(lookahead=19, layers=6)
    with pytest.raises(ValueError, match="lookahead=-2"):
        make("lstm", lookahead=-2)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_chunk_without_its_lookahead_is_refused(arch: str) -> None:
    model = make(arch, lookahead=2)
    with pytest.raises(ValueError, match=r"pass \(batch, 40 \(32 new frames \+ 8 of lookahead\), 20\)"):
        model.forward_chunk(torch.zeros(1, 32, F_DIM), model.initial_state(1))


@torch.no_grad()
def test_ensemble_of_a_lookahead_and_a_causal_member_streams_like_forward() -> None:
    """The ensemble's window is its longest member's; the causal GRU must get only the first
    chunk_frames of it (a window sliced from the wrong end, or not at all, changes its output)."""
    from ekd_compress.ensemble.fusion import FusedEnsemble

    tdnn = make(lookahead=3, chunk_frames=16)
    torch.manual_seed(1)
    gru = build_model("gru", F_DIM, VOCAB, hidden=16, layers=1, chunk_frames=16).eval()
    ens = FusedEnsemble([gru, tdnn], [1.0, 2.0]).eval()
    assert ens.lookahead_frames == 12 and ens.window_frames == 28
    feats = torch.randn(2, 16 * 4, F_DIM)
    full, _ = ens(feats, torch.tensor([64, 64]))
    torch.testing.assert_close(stream(ens, feats), full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"pass \(batch, 28, 20\)"):
        ens.forward_chunk(torch.zeros(1, 16, F_DIM), ens.initial_state(1))


@pytest.mark.parametrize("arch", ["gru", "lstm"])
@torch.no_grad()
def test_recurrent_lookahead_is_an_output_delay(arch: str) -> None:
    """A recurrent model with lookahead L has the causal model's outputs L frames later: the
    same weights, fed the same frames, give output n (delayed) = output n + L (causal)."""
    causal, delayed = make(arch, lookahead=0), make(arch, lookahead=3)
    delayed.load_state_dict(causal.state_dict())
    feats = torch.randn(1, 96, F_DIM)
    lengths = torch.tensor([96])
    ref, _ = causal(feats, lengths)
    out, n = delayed(feats, lengths)
    assert out.shape == ref.shape and int(n[0]) == 24
    torch.testing.assert_close(out[0, :21], ref[0, 3:], atol=1e-6, rtol=0)


@torch.no_grad()
def test_ensemble_of_two_lookaheads_streams_like_forward() -> None:
    """A GRU delayed by 1 output frame and a TDNN looking 3 ahead: each member takes the first
    chunk_frames + its own lookahead frames of the ensemble's window."""
    from ekd_compress.ensemble.fusion import FusedEnsemble

    ens = FusedEnsemble([make("gru", lookahead=1, chunk_frames=16, layers=1), make(lookahead=3, chunk_frames=16)],
                        [1.0, 1.0]).eval()
    assert ens.lookahead_frames == 12
    feats = torch.randn(2, 16 * 4, F_DIM)
    full, _ = ens(feats, torch.tensor([64, 64]))
    torch.testing.assert_close(stream(ens, feats), full, atol=1e-5, rtol=0)
