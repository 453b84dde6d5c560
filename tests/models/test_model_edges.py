"""Model edges that the mutation run (tools/mutation.sh, issue 17) found unchecked: chunk
attention against an independent per-head computation (the streaming-vs-forward tests
cannot see a change both paths share), the state layout names the exporter relies on,
argument checks and their messages, dtypes of the initial state."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ekd_compress.models import StreamingCTCModel, build_model
from ekd_compress.models.transformer import ChunkAttention


@torch.no_grad()
def test_chunk_attention_matches_a_per_head_loop():
    torch.manual_seed(0)
    dim, heads, chunk, left = 4, 2, 2, 3
    attn = ChunkAttention(dim, heads, chunk, left)
    W = left + chunk
    assert attn.rel_bias.shape == (heads, W + chunk - 1)
    attn.rel_bias.copy_(torch.randn(heads, W + chunk - 1))  # distinct bias per relative offset
    x = torch.randn(1, 1, chunk, dim)
    kv = torch.randn(1, 1, W, 2 * dim)
    valid = torch.tensor([[[False, True, True, True, True]]])
    got = attn(x, kv, valid)[0, 0]

    q = attn.q(x)[0, 0]  # (C, D)
    keys, values = kv[0, 0, :, :dim], kv[0, 0, :, dim:]
    dh = dim // heads
    out = torch.zeros(chunk, dim)
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        for c in range(chunk):
            scores = []
            for w in range(W):
                if not valid[0, 0, w]:
                    scores.append(-math.inf)
                    continue
                offset = c - w + left  # query position (left + c) minus key position w
                s = float(q[c, sl] @ keys[w, sl]) / math.sqrt(dh) + float(attn.rel_bias[h, offset + chunk - 1])
                scores.append(s)
            p = torch.softmax(torch.tensor(scores), dim=0)
            out[c, sl] = (p[:, None] * values[:, sl]).sum(0)
    torch.testing.assert_close(got, attn.proj(out), atol=1e-5, rtol=0)


def test_position_index_is_not_saved():
    model = build_model("transformer", 6, 5, hidden=8, heads=2, layers=1, chunk_frames=8)
    assert not any(k.endswith("rel_index") for k in model.state_dict())  # derived, rebuilt on load


@pytest.mark.parametrize(("arch", "kwargs", "names"), [
    ("gru", {"layers": 1}, ["frontend_cache", "gru_h"]),
    ("lstm", {"layers": 1}, ["frontend_cache", "lstm_h", "lstm_c"]),
    ("tdnn", {"layers": 2}, ["frontend_cache", "tdnn0_cache", "tdnn1_cache"]),
    ("transformer", {"layers": 1, "heads": 2}, ["frontend_cache", "attn_cache", "count"]),
])
def test_state_names_are_the_documented_ones(arch, kwargs, names):
    model = build_model(arch, 6, 5, hidden=8, chunk_frames=8, **kwargs)
    assert [n for n, _ in model.state_spec()] == names


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_initial_state_follows_the_model_dtype(arch):
    model = build_model(arch, 6, 5, hidden=8, chunk_frames=8, **({"heads": 2} if arch == "transformer" else {}))
    state = model.double().initial_state(2)
    assert state[0].dtype == torch.float64 and state[1].dtype == torch.float64


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"input_dim": 0}, r"^input_dim=0 is invalid; set input_dim to the number of fbank bins, e.g. 80$"),
    ({"input_dim": True}, r"^input_dim=True is invalid"),
    ({"vocab_size": 1}, r"^vocab_size=1 is invalid; vocab_size counts the blank \(id 0\) plus at least one token$"),
    ({"chunk_frames": 2}, r"^chunk_frames=2 is invalid; set chunk_frames to an integer >= 4$"),
    ({"dropout": 1.0}, r"^dropout=1.0 is invalid"),
    ({"dropout": True}, r"^dropout=True is invalid"),
    ({"dropout": False}, r"^dropout=False is invalid"),  # a bool is not a probability, even False
])
def test_base_argument_checks(kwargs, message):
    args = {"input_dim": 6, "vocab_size": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model("gru", args.pop("input_dim"), args.pop("vocab_size"), hidden=8, **args)


def test_smallest_valid_sizes_and_inputs():
    model = build_model("gru", 1, 2, hidden=4, chunk_frames=4, dropout=0.0).eval()
    log_probs, lengths = model(torch.randn(1, 4, 1), torch.tensor([4]))  # exactly one subsampling group
    assert log_probs.shape == (1, 1, 2) and lengths.tolist() == [1]
    with pytest.raises(ValueError, match="lengths of shape"):
        model(torch.randn(1, 8, 1), torch.tensor([8, 8]))


def test_normalisation_and_prior_checks():
    model = build_model("gru", 6, 5, hidden=8, chunk_frames=8)
    with pytest.raises(ValueError, match="normalisation stats"):
        model.set_normalization(torch.zeros(5), torch.ones(6))
    with pytest.raises(ValueError, match="normalisation stats"):
        model.set_normalization(torch.zeros(6), torch.ones(5))

    class NoOut(StreamingCTCModel):
        pass

    with pytest.raises(ValueError, match="needs an `out` Linear layer"):
        NoOut(6, 5, 8).set_output_prior(torch.full((5,), 0.2))
    model.out = nn.Linear(8, 5, bias=False)
    with pytest.raises(ValueError, match="needs an `out` Linear layer with bias"):
        model.set_output_prior(torch.full((5,), 0.2))
