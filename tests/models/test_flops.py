"""Streaming FLOP counts of every architecture against hand counts for tiny models."""
from __future__ import annotations

import pytest

from ekd_compress.ensemble.fusion import FusedEnsemble
from ekd_compress.models import build_model
from ekd_compress.models.flops import count_chunk_flops

F, V, CHUNK = 4, 5, 8  # fbank bins, vocab, input frames per chunk (2 output frames at 4x subsampling)
N = CHUNK // 4  # output frames per chunk
FRONTEND = 2 * (2 * 4 * F)  # 2 FLOPs per multiply-add x stacked input (2 groups of 4 frames x F bins) per output unit


def test_tdnn_hand_count():
    h, layers, k = 8, 2, 3
    m = build_model("tdnn", F, V, hidden=h, layers=layers, kernel=k, chunk_frames=CHUNK)
    fc = count_chunk_flops(m)
    # per output frame: frontend 32 -> 8, each conv block 8 x 8 x 3 taps, output 8 -> 5
    per_frame = FRONTEND * h + layers * 2 * h * h * k + 2 * h * V
    assert fc.flops_per_chunk == N * per_frame == 2720
    assert fc.chunk_seconds == pytest.approx(0.08)
    assert fc.flops_per_second == pytest.approx(2720 / 0.08)
    assert set(fc.by_module) == {"Linear", "Conv1d"}


@pytest.mark.parametrize("arch,gates", [("gru", 3), ("lstm", 4)])
def test_rnn_hand_count(arch, gates):
    h, layers = 6, 2
    m = build_model(arch, F, V, hidden=h, layers=layers, chunk_frames=CHUNK)
    fc = count_chunk_flops(m)
    rnn = layers * 2 * gates * h * (h + h)  # every layer's input is the hidden size (the frontend projects to it)
    assert fc.flops_per_chunk == N * (FRONTEND * h + rnn + 2 * h * V)
    assert fc.by_module["GRU" if arch == "gru" else "LSTM"] == N * rnn


def test_transformer_hand_count_with_full_left_context():
    d, layers, ff, left = 8, 1, 2, 2
    m = build_model("transformer", F, V, hidden=d, layers=layers, heads=2, ff_mult=ff, left_chunks=left,
                    chunk_frames=CHUNK)
    fc = count_chunk_flops(m, warm_chunks=3)
    C, W = N, (left + 1) * N  # queries per chunk, keys in a full window
    linears = 2 * C * (d * d + d * 2 * d + d * d + d * ff * d + ff * d * d)  # q, kv, proj, ff in, ff out
    attn = 2 * 2 * C * W * d  # q k^T and scores v over all heads
    assert fc.flops_per_chunk == N * (FRONTEND * d + 2 * d * V) + layers * (linears + attn)
    assert fc.by_module["ChunkAttention"] == layers * attn


def test_ensemble_is_the_sum_of_its_members_even_at_zero_weight():
    a = build_model("tdnn", F, V, hidden=8, layers=2, chunk_frames=CHUNK)
    b = build_model("gru", F, V, hidden=6, layers=1, chunk_frames=CHUNK)
    ens = FusedEnsemble([a, b], [1.0, 0.0])  # the graph still runs b
    assert count_chunk_flops(ens).flops_per_chunk == count_chunk_flops(a).flops_per_chunk + count_chunk_flops(b).flops_per_chunk


def test_count_leaves_the_model_as_it_was():
    m = build_model("tdnn", F, V, hidden=8, layers=2, chunk_frames=CHUNK).train()
    count_chunk_flops(m)
    assert m.training and not m._forward_hooks and not m.blocks[0].conv._forward_hooks
