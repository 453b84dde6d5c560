"""Contract tests for every registered streaming CTC model (CPU, random data, small)."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from ekd_compress.models import (
    MODEL_REGISTRY,
    StreamingCTCModel,
    build_model,
    count_parameters,
    model_names,
    model_params,
    register_model,
)
from tests.streaming import stream

F_DIM, VOCAB = 80, 30
ARCHS = ["gru", "lstm", "tdnn", "transformer"]

# Default builds plus a few non-default shapes that stress the caches
# (transformer without left context, tiny chunks, longer TDNN kernels).
CONFIGS = [(name, {}) for name in ARCHS] + [
    ("gru", {"layers": 1, "hidden": 48, "chunk_frames": 4}),
    ("lstm", {"layers": 3, "hidden": 32, "chunk_frames": 8}),
    ("tdnn", {"hidden": 48, "layers": 3, "kernel": 5, "dilations": [1, 3]}),
    ("tdnn", {"hidden": 48, "layers": 4, "lookahead": 3}),
    ("tdnn", {"hidden": 48, "layers": 3, "kernel": 5, "dilations": [1, 3], "lookahead": 5, "chunk_frames": 8}),
    ("transformer", {"hidden": 64, "heads": 2, "left_chunks": 0, "chunk_frames": 16}),
    ("transformer", {"hidden": 64, "heads": 2, "layers": 2, "left_chunks": 3, "chunk_frames": 8}),
]
CONFIG_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for n, kw in CONFIGS]


def make(name: str, **kwargs) -> StreamingCTCModel:
    """A model in eval mode with all parameters perturbed, so zero-initialised parts (e.g. the
    transformer's relative-position bias) take part in the checks."""
    torch.manual_seed(0)
    model = build_model(name, F_DIM, VOCAB, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_all_architectures_registered() -> None:
    assert set(ARCHS) <= set(model_names())
    assert model_names() == sorted(MODEL_REGISTRY)


@pytest.mark.parametrize("name", ARCHS)
def test_default_size(name: str) -> None:
    model = build_model(name, F_DIM, VOCAB)
    assert 200_000 <= count_parameters(model) <= 2_000_000
    assert model.subsampling == 4 and model.chunk_frames % model.subsampling == 0
    assert (model.input_dim, model.vocab_size) == (F_DIM, VOCAB)


@pytest.mark.parametrize("name", ARCHS)
def test_forward_shapes_and_normalisation(name: str) -> None:
    model = make(name)
    feats = torch.randn(3, 70, F_DIM)
    lengths = torch.tensor([70, 41, 4])
    log_probs, out_lengths = model(feats, lengths)
    assert log_probs.shape == (3, 70 // 4, VOCAB)
    assert log_probs.dtype == torch.float32
    assert out_lengths.tolist() == [17, 10, 1]
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(3, 17), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
@torch.no_grad()
def test_streaming_matches_full_forward(name: str, kwargs: dict) -> None:
    model = make(name, **kwargs)
    n_chunks = 5
    feats = torch.randn(2, n_chunks * model.chunk_frames, F_DIM)
    lengths = torch.full((2,), feats.shape[1], dtype=torch.long)
    full, _ = model(feats, lengths)
    streamed = stream(model, feats)
    assert streamed.shape == full.shape == (2, n_chunks * model.chunk_out_frames, VOCAB)
    torch.testing.assert_close(streamed, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
@torch.no_grad()
def test_state_spec_matches_state(name: str, kwargs: dict) -> None:
    model = make(name, **kwargs)
    spec = model.state_spec()
    state = model.initial_state(3)
    assert len(spec) == len(state)
    assert len({n for n, _ in spec}) == len(spec), "state names must be unique"
    for (spec_name, shape), tensor in zip(spec, state):
        assert shape.count("B") == 1, spec_name
        assert tensor.shape == tuple(3 if d == "B" else d for d in shape), spec_name
    _, new_state = model.forward_chunk(torch.randn(3, model.window_frames, F_DIM), state)
    for old, new in zip(state, new_state):
        assert old.shape == new.shape and old.dtype == new.dtype


@pytest.mark.parametrize(("name", "kwargs"), [(n, {}) for n in ARCHS] + [("tdnn", {"lookahead": 4})],
                         ids=ARCHS + ["tdnn-lookahead4"])
@torch.no_grad()
def test_padding_independence(name: str, kwargs: dict) -> None:
    """Valid frames of a short utterance do not depend on the batch's padding (length not a
    multiple of 4 nor of the chunk, padding filled with noise)."""
    model = make(name, **kwargs)
    long_len, short_len = 3 * model.chunk_frames + 8, model.chunk_frames + 7
    short = torch.randn(1, short_len, F_DIM)
    alone, alone_len = model(short, torch.tensor([short_len]))
    batch = torch.randn(2, long_len, F_DIM) * 3.0
    batch[1, :short_len] = short[0]
    padded, out_lengths = model(batch, torch.tensor([long_len, short_len]))
    n = int(out_lengths[1])
    assert n == int(alone_len[0]) == short_len // 4
    torch.testing.assert_close(padded[1, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model architecture 'rnnt'") as err:
        build_model("rnnt", F_DIM, VOCAB)
    for name in ARCHS:
        assert name in str(err.value)


def test_unknown_kwarg_names_it_and_valid_ones() -> None:
    with pytest.raises(ValueError, match="hidden_size") as err:
        build_model("gru", F_DIM, VOCAB, hidden_size=64)
    assert "'hidden'" in str(err.value) and "'layers'" in str(err.value)
    assert set(model_params("transformer")) >= {"hidden", "layers", "heads", "left_chunks", "chunk_frames", "dropout"}


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("gru", {"chunk_frames": 30}, "chunk_frames=30"),
        ("gru", {"hidden": 0}, "hidden=0"),
        ("lstm", {"dropout": 1.5}, "dropout=1.5"),
        ("tdnn", {"kernel": 1}, "kernel=1"),
        ("tdnn", {"dilations": []}, "dilations"),
        ("transformer", {"hidden": 100, "heads": 3}, "heads=3"),
        ("transformer", {"left_chunks": -1}, "left_chunks=-1"),
    ],
)
def test_bad_values_raise(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, F_DIM, VOCAB, **kwargs)


def test_bad_inputs_raise() -> None:
    model = make("gru")
    with pytest.raises(ValueError, match="fbank"):
        model(torch.randn(1, 16, 40), torch.tensor([16]))
    with pytest.raises(ValueError, match="fewer than the subsampling"):
        model(torch.randn(1, 3, F_DIM), torch.tensor([3]))
    with pytest.raises(ValueError, match="chunk of shape"):
        model.forward_chunk(torch.randn(1, model.chunk_frames + 4, F_DIM), model.initial_state(1))
    with pytest.raises(ValueError, match="initial_state"):
        model.forward_chunk(torch.randn(1, model.chunk_frames, F_DIM), [])
    with pytest.raises(ValueError, match="batch_size=0"):
        model.initial_state(0)


def test_register_model_rejects_name_clash() -> None:
    with pytest.raises(ValueError, match="already taken"):

        @register_model("gru")
        class Other(StreamingCTCModel):
            pass


def test_ctc_training_reduces_loss() -> None:
    torch.manual_seed(0)
    model = build_model("gru", F_DIM, VOCAB, hidden=48, layers=1, dropout=0.0)
    feats = torch.randn(2, 64, F_DIM)
    lengths = torch.tensor([64, 48])
    targets = torch.randint(1, VOCAB, (2, 5))
    target_lengths = torch.tensor([5, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        log_probs, out_lengths = model(feats, lengths)
        loss = torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0, zero_infinity=True
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


class _ChunkWrapper(torch.nn.Module):
    """forward_chunk with the state as separate positional inputs/outputs, as an exporter needs."""

    def __init__(self, model: StreamingCTCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, chunk: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        log_probs, new_state = self.model.forward_chunk(chunk, list(state))
        return (log_probs, *new_state)


@pytest.mark.parametrize("name", ARCHS)
@torch.no_grad()
def test_forward_chunk_exports_to_onnx(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = make(name)
    names = [n for n, _ in model.state_spec()]
    state = model.initial_state(1)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ChunkWrapper(model).eval(), (torch.zeros(1, model.chunk_frames, F_DIM), *state), buffer,
            input_names=["chunk", *names], output_names=["log_probs", *[f"{n}_out" for n in names]],
            dynamo=False, opset_version=17,
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feats = torch.randn(1, 3 * model.chunk_frames, F_DIM)
    onnx_state = [s.numpy() for s in state]
    outs = []
    for start in range(0, feats.shape[1], model.chunk_frames):
        chunk = feats[:, start : start + model.chunk_frames].numpy()
        log_probs, *onnx_state = session.run(None, {"chunk": chunk, **dict(zip(names, onnx_state))})
        outs.append(torch.from_numpy(log_probs))
    torch.testing.assert_close(torch.cat(outs, dim=1), stream(model, feats), atol=1e-4, rtol=0)
