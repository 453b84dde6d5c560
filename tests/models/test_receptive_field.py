"""Receptive field of every architecture, in input frames, derived from the model definitions:

  frontend (4x causal stack)   frontend frame t sees input frames [4t − 4, 4t + 3]
  tdnn                          output n sees frontend frames n − R .. n, R = Σ_i (kernel − 1)·d_i
  transformer                   output n in chunk c = n // C sees frontend frames of chunks
                                c − layers·left_chunks .. c (each layer adds left_chunks chunks),
                                C = chunk_frames // 4, its own chunk including later frames
  gru / lstm                    unbounded to the left (recurrent), nothing to the right

A frame exactly at the limit must change the output; the frame one beyond it must not.
Checked for the full forward and for chunk-by-chunk streaming.
"""
from __future__ import annotations

import pytest
import torch

from ekd_compress.models import StreamingCTCModel, build_model
from tests.streaming import stream

F_DIM, VOCAB = 6, 7
CHANGED, UNCHANGED = 1e-4, 1e-6  # |Δ log-prob| thresholds


def make(name: str, **kwargs) -> StreamingCTCModel:
    """A tiny model in eval mode with perturbed weights (the transformer's zero-initialised
    position bias included), so every path carries a visible signal."""
    torch.manual_seed(0)
    model = build_model(name, F_DIM, VOCAB, dropout=0.0, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@torch.no_grad()
def effect(model: StreamingCTCModel, n_frames: int, frame: int, out_frame: int, streaming: bool) -> float:
    """max |Δ log-prob| of output frame `out_frame` when input frame `frame` is perturbed."""
    feats = torch.randn(1, n_frames, F_DIM, generator=torch.Generator().manual_seed(1))
    bumped = feats.clone()
    bumped[0, frame] += 3.0
    if streaming:
        a, b = stream(model, feats), stream(model, bumped)
    else:
        lengths = torch.tensor([n_frames])
        a, b = model(feats, lengths)[0], model(bumped, lengths)[0]
    return (a[0, out_frame] - b[0, out_frame]).abs().max().item()


def check_window(model: StreamingCTCModel, n_frames: int, out_frame: int, first: int, last: int) -> None:
    """Input frames `first`..`last` are the exact window of output frame `out_frame`
    (`first` = 0: unbounded on the left, only the right edge is exact)."""
    assert 0 <= first and last + 1 < n_frames, "the window must lie inside the utterance"
    for streaming in (False, True):
        path = "streaming" if streaming else "forward"
        cases = [(first, True), (last, True), (last + 1, False)] + ([(first - 1, False)] if first > 0 else [])
        for frame, inside in cases:
            d = effect(model, n_frames, frame, out_frame, streaming)
            if inside:
                assert d > CHANGED, (f"{path}: input frame {frame} is inside the receptive field "
                                     f"[{first}, {last}] of output {out_frame} but changes it by only {d:.3g}")
            else:
                assert d < UNCHANGED, (f"{path}: input frame {frame} is outside the receptive field "
                                       f"[{first}, {last}] of output {out_frame} but changes it by {d:.3g}")


@pytest.mark.parametrize(("kernel", "dilations", "layers"), [(3, [1, 2, 4], 3), (2, [1, 3], 4), (5, [2], 1)])
def test_tdnn_receptive_field(kernel: int, dilations: list[int], layers: int) -> None:
    model = make("tdnn", hidden=8, layers=layers, kernel=kernel, dilations=dilations, chunk_frames=8)
    R = sum((kernel - 1) * dilations[i % len(dilations)] for i in range(layers))  # frontend frames back
    assert model.receptive_field == R
    n = R + 3  # output frame whose window starts after the utterance start
    first, last = 4 * (n - R) - 4, 4 * n + 3
    n_frames = 8 * (-(-(last + 2) // 8))  # whole chunks, at least one frame after the window
    check_window(model, n_frames, n, first, last)


@pytest.mark.parametrize(("layers", "left_chunks", "chunk_frames"), [(2, 1, 8), (1, 2, 8), (2, 2, 4)])
@pytest.mark.parametrize("position", ["first", "last"])
def test_transformer_receptive_field(layers: int, left_chunks: int, chunk_frames: int, position: str) -> None:
    model = make("transformer", hidden=8, heads=2, layers=layers, left_chunks=left_chunks, chunk_frames=chunk_frames)
    C = chunk_frames // 4
    c = layers * left_chunks + 2  # a chunk whose whole left context lies inside the utterance
    n = c * C if position == "first" else c * C + C - 1
    first_chunk = c - layers * left_chunks
    first = 4 * (first_chunk * C) - 4  # frontend frame first_chunk*C looks 4 input frames back
    last = 4 * ((c + 1) * C - 1) + 3  # the last input frame of chunk c
    n_frames = chunk_frames * (c + 2)
    check_window(model, n_frames, n, first, last)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_models_see_the_whole_past_and_no_future(name: str) -> None:
    model = make(name, hidden=8, layers=2, chunk_frames=8)
    n = 9
    check_window(model, 48, n, 0, 4 * n + 3)  # the first input frame still reaches output 9
