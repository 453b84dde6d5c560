"""Streaming ONNX export: parity per architecture and for the ensemble, the state contract,
ONNX metadata, and the bundle schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ekd_compress.export.api import export_bundle
from ekd_compress.contract.bundle import BundleError, read_bundle, validate_bundle, write_bundle
from onnx_helpers import greedy_ids, stream_onnx

ARCH_MODELS = ["baseline", "lstm", "tdnn", "transformer"]  # gru, lstm, tdnn, transformer


def quiet(msg: str) -> None:
    pass


class _Bundles(dict):
    """name -> bundle dir, each exported once per module on first use."""

    def __init__(self, experiment, root) -> None:
        super().__init__()
        self.experiment, self.root = experiment, root

    def __missing__(self, name):
        self[name] = export_bundle(self.experiment, model=name, out_dir=self.root / name, verify_utterances=4, log=quiet)
        return self[name]


@pytest.fixture(scope="module")
def bundles(experiment, tmp_path_factory):
    return _Bundles(experiment, tmp_path_factory.mktemp("bundles"))


@pytest.mark.parametrize("name", [*ARCH_MODELS, "ensemble"])
def test_streaming_onnx_matches_pytorch(bundles, experiment, name):
    """The exported graph, streamed here with onnxruntime (each utterance alone and all as one
    batch), against the PyTorch model's full-utterance forward: max |Δ log-prob| <= 1e-4 and
    identical greedy transcripts; the bundle's own verification report must agree."""
    import torch

    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.experiment import load_any, read_registry
    from ekd_compress.recipe import load_recipe
    from ekd_compress.export.api import load_dev_utterances

    b = read_bundle(bundles[name])
    entry = next(e for e in read_registry(experiment) if e["name"] == name)
    model = load_any(experiment / entry["path"]).eval()
    recipe = load_recipe(experiment / "recipe.yaml")
    dev = load_dev_utterances(experiment, feature_spec(recipe.features, recipe.data.sample_rate), 4)
    feats = [u.feats for u in dev]
    alone = [stream_onnx(bundles[name] / "model.onnx", b, [f])[0] for f in feats]
    together = stream_onnx(bundles[name] / "model.onnx", b, feats)
    worst = 0.0
    C = b["streaming"]["chunk_frames"]
    for u, f, one, batched in zip(dev, feats, alone, together):
        # a streaming client zero-pads the last chunk, and the transformer's last chunk attends to
        # that padding: the reference is the full forward over the same zero-padded utterance
        padded = np.zeros((-(-f.shape[0] // C) * C, f.shape[1]), dtype=np.float32)
        padded[: f.shape[0]] = f
        with torch.no_grad():
            ref, _ = model(torch.from_numpy(padded)[None], torch.tensor([padded.shape[0]]))
        ref = ref[0, : f.shape[0] // b["streaming"]["subsampling"]].numpy()
        assert one.shape == batched.shape == ref.shape, (u.id, one.shape, batched.shape, ref.shape)
        diff = max(float(np.abs(one - ref).max()), float(np.abs(batched - ref).max()))
        assert diff <= 1e-4, f"{name}: ONNX and PyTorch differ by {diff:.3g} on {u.id}"
        assert greedy_ids(one) == greedy_ids(batched) == greedy_ids(ref), f"{name}: transcripts differ on {u.id}"
        worst = max(worst, diff)
    v = b["verification"]
    assert v["utterances"] == 4 and v["transcripts_identical"] is True
    assert v["max_abs_logprob_diff"] == pytest.approx(worst, abs=1e-6), (
        f"{name}: the bundle reports max |Δ| {v['max_abs_logprob_diff']:.3g}, measured here {worst:.3g}")
    assert (bundles[name] / "model.onnx").is_file() and (bundles[name] / "tokens.txt").is_file()
    assert b["files"] == {"onnx": "model.onnx", "int8": None, "trt": None, "tokens": "tokens.txt"}
    assert b["int8"] is None and b["trt"] is None


def test_ensemble_is_one_graph_with_member_states(bundles, experiment):
    from ekd_compress.experiment import load_any

    b = read_bundle(bundles["ensemble"])
    assert b["model"]["arch"] == "ensemble"
    assert b["model"]["members"] == ["lstm", "tdnn", "transformer"]
    ens = load_any(experiment / "models" / "ensemble.json")
    assert [s["name"] for s in b["states"]] == [n for n, _ in ens.state_spec()]
    assert all(s["name"].startswith(("m0.", "m1.", "m2.")) for s in b["states"])
    count = [s for s in b["states"] if s["name"] == "m2.count"]
    assert count and count[0]["dtype"] == "int64" and count[0]["shape"] == ["B"]


@pytest.mark.parametrize("name", [*ARCH_MODELS, "ensemble"])
def test_state_shape_contract(bundles, experiment, name):
    """bundle.json states == model.state_spec (with "B"); the ONNX graph's inputs and outputs
    have exactly these names and shapes, with a dynamic batch axis."""
    import onnxruntime as ort

    from ekd_compress.experiment import load_any, read_registry

    entry = next(e for e in read_registry(experiment) if e["name"] == name)
    model = load_any(experiment / entry["path"])
    b = read_bundle(bundles[name])
    assert [(s["name"], s["shape"]) for s in b["states"]] == [(n, list(shape)) for n, shape in model.state_spec()]
    assert [s["dtype"] for s in b["states"]] == [str(t.dtype).removeprefix("torch.") for t in model.initial_state(1)]
    F, C = b["features"]["num_mel_bins"], b["streaming"]["chunk_frames"]
    assert b["inputs"]["chunk"]["shape"] == ["B", C, F] == ["B", model.chunk_frames, model.input_dim]
    assert b["streaming"]["output_frames_per_chunk"] == C // b["streaming"]["subsampling"]
    assert b["outputs"]["log_probs"]["shape"] == ["B", C // 4, "V"] and b["vocab_size"] == model.vocab_size

    session = ort.InferenceSession(str(bundles[name] / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert [i.name for i in session.get_inputs()] == ["chunk", *[s["name"] for s in b["states"]]]
    assert [o.name for o in session.get_outputs()] == ["log_probs", *[s["name"] + "_out" for s in b["states"]]]
    for s in [{"name": "chunk", **b["inputs"]["chunk"]}, *b["states"]]:
        onnx_shape = inputs[s["name"]].shape
        assert len(onnx_shape) == len(s["shape"])
        for dim, want in zip(onnx_shape, s["shape"]):
            assert isinstance(dim, str) if want == "B" else dim == want, (s["name"], onnx_shape, s["shape"])
    # a batch of 3 streams runs and returns states of the same shapes
    states = [np.zeros([3 if d == "B" else d for d in s["shape"]], dtype=s["dtype"]) for s in b["states"]]
    feeds = {"chunk": np.random.default_rng(0).standard_normal((3, C, F)).astype(np.float32),
             **{s["name"]: x for s, x in zip(b["states"], states)}}
    log_probs, *new_states = session.run(None, feeds)
    assert log_probs.shape == (3, C // 4, b["vocab_size"])
    assert [x.shape for x in new_states] == [x.shape for x in states]


def test_onnx_metadata_carries_the_contract(bundles):
    from ekd_compress.export.onnx_export import read_metadata

    b = read_bundle(bundles["baseline"])
    meta = read_metadata(bundles["baseline"] / "model.onnx")
    assert meta["ekd_bundle_format"] == "ekd-bundle/1"
    for key in ("features", "streaming", "states", "inputs", "outputs", "vocab_size", "blank_id", "token_kind"):
        assert meta[key] == b[key], key
    tokens = [line.rsplit(" ", 1)[0] for line in (bundles["baseline"] / "tokens.txt").read_text().splitlines()]
    assert meta["tokens"] == tokens and tokens[0] == "<blk>"
    assert meta["model"]["arch"] == "gru"


def test_bundle_provenance(bundles, experiment):
    p = read_bundle(bundles["baseline"])["provenance"]
    assert p["exp_dir"] == str(experiment.resolve())
    assert p["recipe"] == (experiment / "recipe.yaml").read_text()
    assert p["dev_wer"] is None and p["mlflow_run_id"] is None  # no results.json / no MLflow run here
    assert p["ekd_compress_version"] and p["created"]


def test_bundle_schema_validation(bundles, tmp_path):
    good = read_bundle(bundles["baseline"])
    validate_bundle(good)

    missing = json.loads(json.dumps(good))
    del missing["streaming"]["chunk_frames"]
    with pytest.raises(BundleError, match=r"missing key 'streaming.chunk_frames'"):
        validate_bundle(missing)

    no_states = {k: v for k, v in good.items() if k != "states"}
    with pytest.raises(BundleError, match=r"missing key 'states'.*ekd-compress export"):
        validate_bundle(no_states)

    wrong_type = json.loads(json.dumps(good))
    wrong_type["vocab_size"] = "17"
    with pytest.raises(BundleError, match=r"'vocab_size' must be int"):
        validate_bundle(wrong_type)

    bad_state = json.loads(json.dumps(good))
    bad_state["states"][0]["shape"] = [4, 40]  # no batch axis
    with pytest.raises(BundleError, match="batch axis"):
        validate_bundle(bad_state)

    no_output = json.loads(json.dumps(good))
    del no_output["outputs"][good["states"][0]["name"] + "_out"]
    with pytest.raises(BundleError, match="_out"):
        validate_bundle(no_output)

    # a file named in bundle.json must exist beside it
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "tokens.txt").write_text("<blk> 0\n")
    write_bundle(tmp_path, good)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx"):
        read_bundle(tmp_path)
    with pytest.raises(BundleError, match="bundle.json is missing"):
        read_bundle(tmp_path / "nowhere")
