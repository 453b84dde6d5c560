"""The export's checks can fail, and fail clearly: verification, INT8 accuracy, TensorRT
availability; plus the CLI, the torch-free bundle load and MLflow logging."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from ekd_compress.cli.export_cmd import export as export_cmd
from ekd_compress.export.api import export_bundle, load_dev_utterances
from ekd_compress.contract.bundle import read_bundle
from ekd_compress.export.quantize import Int8AccuracyError
from ekd_compress.export.verify import VerificationError, verify_onnx
from onnx_helpers import greedy_texts, word_errors

REPO = Path(__file__).resolve().parents[2]


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def baseline_bundle(experiment, tmp_path_factory) -> Path:
    return export_bundle(experiment, model="baseline", out_dir=tmp_path_factory.mktemp("b") / "baseline",
                         verify_utterances=3, log=quiet)


# ------------------------------------------------------------------------------ verification
def test_verification_fails_on_corrupted_onnx_weights(baseline_bundle, experiment, tmp_path):
    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.experiment import load_any
    from ekd_compress.recipe import load_recipe

    proto = onnx.load(str(baseline_bundle / "model.onnx"))
    largest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(largest).copy()
    weights += 0.05 * np.random.default_rng(0).standard_normal(weights.shape).astype(weights.dtype)
    largest.CopyFrom(numpy_helper.from_array(weights, largest.name))
    corrupted = tmp_path / "model.onnx"
    onnx.save(proto, str(corrupted))

    recipe = load_recipe(experiment / "recipe.yaml")
    dev = load_dev_utterances(experiment, feature_spec(recipe.features, recipe.data.sample_rate), 3)
    model = load_any(experiment / "models" / "baseline" / "model.pt")
    bundle = read_bundle(baseline_bundle)
    assert verify_onnx(model, baseline_bundle / "model.onnx", bundle, dev)["max_abs_logprob_diff"] <= 1e-4
    with pytest.raises(VerificationError, match=r"does not match the PyTorch model: max \|Δ log-prob\|"):
        verify_onnx(model, corrupted, bundle, dev)
    report = verify_onnx(model, corrupted, bundle, dev, raise_on_failure=False)
    assert report["max_abs_logprob_diff"] > 1e-4


def test_failed_verification_fails_the_export(experiment, tmp_path, monkeypatch):
    import ekd_compress.export.verify as verify

    original = verify.OrtStreamer.run_utterances

    def off_by_a_bit(self, feats_list, batch_size=1):
        return [lp + 1e-3 for lp in original(self, feats_list, batch_size)]

    monkeypatch.setattr(verify.OrtStreamer, "run_utterances", off_by_a_bit)
    out = tmp_path / "bundle"
    with pytest.raises(VerificationError, match="1e-04|0.0001"):
        export_bundle(experiment, model="baseline", out_dir=out, verify_utterances=2, log=quiet)
    assert not out.exists()  # no bundle is published when a check fails
    result = CliRunner().invoke(export_cmd, [str(experiment), "--model", "baseline", "--out", str(out),
                                             "--verify-utterances", "2"])
    assert result.exit_code != 0 and "VerificationError" in result.output and "Traceback" not in result.output


# -------------------------------------------------------------------------------------- INT8
def _dev_wer(path: Path, bundle: dict, utterances, tokens, one_batch: bool = False) -> float:
    """Dev WER in percent over `path`, scored here with a word edit distance."""
    hyps = greedy_texts(path, bundle, [u.feats for u in utterances], tokens, one_batch)
    errors = sum(word_errors(u.text.split(), h.split()) for u, h in zip(utterances, hyps))
    return 100.0 * errors / sum(len(u.text.split()) for u in utterances)


def _dev_set_the_model_half_gets_right(exp: Path, tokens) -> None:
    """Random models score a constant 100 % WER on real texts, which hides which utterances were
    scored: re-label every other dev utterance with the fp32 model's own hypothesis, so the WER
    depends on each utterance and frame. (Exports fp32 once to decode.)"""
    from lhotse import CutSet

    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.recipe import load_recipe

    probe = export_bundle(exp, model="tdnn", out_dir=exp / "probe", verify_utterances=1, log=quiet)
    bundle = read_bundle(probe)
    recipe = load_recipe(exp / "recipe.yaml")
    dev = load_dev_utterances(exp, feature_spec(recipe.features, recipe.data.sample_rate), None)
    texts = greedy_texts(probe / "model.onnx", bundle, [u.feats for u in dev], tokens, one_batch=False)
    hyps = {u.id: t for u, t in zip(dev, texts)}
    path = exp / "features" / "dev_cuts.jsonl.gz"
    cuts = CutSet.from_file(path).to_eager()
    relabelled = 0
    for i, cut in enumerate(cuts):
        if i % 2 == 0 and hyps[cut.id].strip():
            cut.supervisions[0].text = hyps[cut.id]
            relabelled += 1
    assert relabelled >= 2, f"the probe model emitted words for too few dev utterances: {hyps}"
    cuts.to_file(path)


def test_int8_writes_its_wer_report(make_exp, tmp_path):
    """The INT8 report's WERs are what the two graphs really score on the whole dev set,
    recomputed here with an independent chunk loop, greedy decoder and word edit distance,
    on a dev set where that WER is neither 0 nor 100 %."""
    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.recipe import load_recipe
    from ekd_compress.contract.tokens import TokenTable

    experiment = make_exp(tmp_path / "exp", models=["tdnn"])
    tokens = TokenTable.load(experiment / "tokens.txt")
    _dev_set_the_model_half_gets_right(experiment, tokens)
    # a random model may lose to INT8 by many points; this test checks the report, not the gate
    out = export_bundle(experiment, model="tdnn", out_dir=tmp_path / "b", int8=True, verify_utterances=2,
                        int8_method="dynamic", max_int8_wer_increase=100.0, min_int8_speedup=0.0, log=quiet)
    b = read_bundle(out)
    assert b["files"]["int8"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    r = b["int8"]
    recipe = load_recipe(experiment / "recipe.yaml")
    dev = load_dev_utterances(experiment, feature_spec(recipe.features, recipe.data.sample_rate), None)
    assert r["method"] == "dynamic" and r["utterances"] == len(dev) == 6
    wer_fp32 = _dev_wer(out / "model.onnx", b, dev, tokens)
    assert 0.0 < wer_fp32 < 100.0, f"the re-labelled dev set must give an informative WER, got {wer_fp32}"
    assert _dev_wer(out / "model.onnx", b, dev, tokens, one_batch=True) == wer_fp32, "fp32 is batch-independent"
    # dynamic INT8 quantizes activations with one scale per call, so its outputs depend on the
    # batch: the export streams every dev utterance alone, as here
    wer_int8 = _dev_wer(out / "model.int8.onnx", b, dev, tokens, one_batch=False)
    assert r["wer_fp32"] == pytest.approx(wer_fp32, abs=1e-6), f"report {r['wer_fp32']} vs recomputed {wer_fp32}"
    assert r["wer_int8"] == pytest.approx(wer_int8, abs=1e-6), f"report {r['wer_int8']} vs recomputed {wer_int8}"
    assert r["wer_increase"] == pytest.approx(wer_int8 - wer_fp32, abs=1e-6)
    assert r["latency_ms_fp32"] > 0 and r["latency_ms_int8"] > 0
    assert r["speedup"] == pytest.approx(r["latency_ms_fp32"] / r["latency_ms_int8"])
    from ekd_compress.export.onnx_export import read_metadata

    assert read_metadata(out / "model.int8.onnx")["states"] == b["states"]  # metadata survives quantization
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}, f"no quantized op in {sorted(ops)}"


def test_int8_static_calibrated(experiment, tmp_path):
    out = export_bundle(experiment, model="transformer", out_dir=tmp_path / "b", int8=True, int8_method="static",
                        verify_utterances=1, max_int8_wer_increase=100.0, min_int8_speedup=0.0, log=quiet)
    r = read_bundle(out)["int8"]
    assert r["method"] == "static" and r["wer_int8"] is not None and r["decision"] == "int8"
    assert r["calibration"] == {"on": "dev", "utterances": 6}  # this experiment has no training audio
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format (TensorRT-readable)


def test_required_int8_fails_loudly_on_accuracy(experiment, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(Int8AccuracyError, match=r"the allowed -0.5.*--max-int8-wer-increase"):
        export_bundle(experiment, model="baseline", out_dir=out, int8=True, int8_method="dynamic",
                      max_int8_wer_increase=-0.5, require_int8=True, verify_utterances=1, log=quiet)
    assert not out.exists()
    partial = json.loads((tmp_path / ".b.partial" / "bundle.json").read_text())  # kept for inspection
    assert partial["int8"]["decision"] == "refused" and "the allowed -0.5" in partial["int8"]["reason"]
    result = CliRunner().invoke(export_cmd, [str(experiment), "--model", "baseline", "--out", str(out), "--int8",
                                             "--int8-method", "dynamic", "--max-int8-wer-increase", "-0.5",
                                             "--require-int8", "--verify-utterances", "1"])
    assert result.exit_code == 1 and "Int8AccuracyError" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------ TensorRT
def test_trt_without_gpu_stops_at_once_without_traceback(experiment, tmp_path, monkeypatch):
    import ekd_compress.export.tensorrt_build as tb

    monkeypatch.setattr(tb, "cuda_gpus", lambda: [])  # as on any machine without an NVIDIA GPU
    out = tmp_path / "b"
    result = CliRunner().invoke(export_cmd, [str(experiment), "--model", "baseline", "--out", str(out), "--trt"])
    assert result.exit_code != 0
    assert "no CUDA GPU" in result.output and "pip install 'ekd-compress[trt]'" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not out.exists() and not (tmp_path / ".b.partial").exists()  # checked before exporting anything
    with pytest.raises(tb.TrtUnavailable, match="NVIDIA GPU"):
        export_bundle(experiment, model="baseline", out_dir=out, trt=True, log=quiet)


def test_trt_check_names_the_missing_package(monkeypatch):
    import builtins

    import ekd_compress.export.tensorrt_build as tb

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(tb, "cuda_gpus", lambda: ["NVIDIA H100"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(tb.TrtUnavailable) as err:
        tb.check_trt_available()
    assert "tensorrt Python package is not installed" in str(err.value) and "no CUDA GPU" not in str(err.value)


def test_trt_profile_covers_the_streaming_shapes(baseline_bundle):
    from ekd_compress.export.tensorrt_build import profile_shapes

    b = read_bundle(baseline_bundle)
    shapes = profile_shapes(b, 1, 4, 16)
    assert set(shapes) == {"chunk", *[s["name"] for s in b["states"]]}
    assert shapes["chunk"] == {"min": [1, 32, 40], "opt": [4, 32, 40], "max": [16, 32, 40]}
    assert shapes["gru_h"]["max"] == [2, 16, 32]  # batch is the second axis of RNN states


# ------------------------------------------------------------------------------------ CLI etc.
def test_cli_exports_and_reports_unknown_models(experiment, tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(export_cmd, [str(experiment), "--out", str(out), "--verify-utterances", "2"])
    assert result.exit_code == 0, result.output
    assert f"bundle written: {out}" in result.output
    b = read_bundle(out)
    assert b["model"]["name"] == "student" and b["model"]["kind"] == "student"
    result = CliRunner().invoke(export_cmd, [str(experiment), "--model", "nonesuch"])
    assert result.exit_code == 1 and "no model 'nonesuch'" in result.output and "baseline" in result.output


def test_bundle_runs_in_a_process_without_torch(baseline_bundle):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxruntime as ort
        from ekd_compress.contract.bundle import read_bundle
        from ekd_compress.export.ort_stream import OrtStreamer

        bundle_dir = {str(baseline_bundle)!r}
        b = read_bundle(bundle_dir)
        session = ort.InferenceSession(bundle_dir + "/" + b["files"]["onnx"], providers=["CPUExecutionProvider"])
        states = {{s["name"]: np.zeros([1 if d == "B" else d for d in s["shape"]], dtype=s["dtype"]) for s in b["states"]}}
        chunk = np.zeros([1 if d == "B" else d for d in b["inputs"]["chunk"]["shape"]], dtype="float32")
        log_probs, *new_states = session.run(None, {{"chunk": chunk, **states}})
        assert log_probs.shape == (1, b["streaming"]["output_frames_per_chunk"], b["vocab_size"])
        runner = OrtStreamer(bundle_dir + "/model.onnx", b)
        out = runner.run_utterances([np.zeros((70, b["features"]["num_mel_bins"]), dtype="float32")])
        assert out[0].shape == (24, b["vocab_size"])
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_bundle_is_logged_to_the_parent_mlflow_run(tmp_path, make_exp):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from ekd_compress.recipe import load_recipe, save_recipe

    exp = make_exp(tmp_path / "exp", models=["baseline"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("export-test", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    (exp / "mlflow_run.txt").write_text(run_id)
    recipe = load_recipe(exp / "recipe.yaml")
    recipe.tracking.enabled, recipe.tracking.uri = True, uri
    save_recipe(recipe, exp / "recipe.yaml")

    out = export_bundle(exp, model="baseline", verify_utterances=1, log=quiet)
    assert out == exp / "bundles" / "baseline"
    assert read_bundle(out)["provenance"]["mlflow_run_id"] == run_id
    logged = {Path(f.path).name for f in client.list_artifacts(run_id, "bundles/baseline")}
    assert {"bundle.json", "model.onnx", "tokens.txt"} <= logged


def test_export_logs_to_the_store_distill_recorded(tmp_path, make_exp, monkeypatch):
    """The recipe names no tracking URI and the shell has none: export finds the run's store through
    mlflow_run.json (issue 16), whatever the current directory."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from ekd_compress.recipe import load_recipe, save_recipe

    exp = make_exp(tmp_path / "exp", models=["baseline"])
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("export-uri", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    (exp / "mlflow_run.txt").write_text(run_id)
    (exp / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment": "export-uri"}))
    recipe = load_recipe(exp / "recipe.yaml")
    recipe.tracking.enabled, recipe.tracking.uri = True, None
    save_recipe(recipe, exp / "recipe.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path / "exp")

    export_bundle(exp, model="baseline", verify_utterances=1, log=quiet)
    logged = {Path(f.path).name for f in client.list_artifacts(run_id, "bundles/baseline")}
    assert {"bundle.json", "model.onnx", "tokens.txt"} <= logged
    assert not (tmp_path / "exp" / "mlflow.db").exists(), "export must not open a store in the current directory"


def test_cli_passes_trt_precision(experiment, monkeypatch):
    import ekd_compress.export.api as api
    import ekd_compress.export.tensorrt_build as tb

    seen = []
    monkeypatch.setattr(tb, "check_trt_available", lambda: (None, "NVIDIA H100"))
    monkeypatch.setattr(api, "export_bundle", lambda exp_dir, **kw: seen.append(kw) or Path(exp_dir) / "bundles" / "x")
    for flags, want in (([], "fp16"), (["--fp16"], "fp16"), (["--int8-trt"], "int8")):
        result = CliRunner().invoke(export_cmd, [str(experiment), "--trt", *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1]["trt"] is True and seen[-1]["trt_precision"] == want


def test_latency_benchmark_runs(baseline_bundle):
    from ekd_compress.export.bench_latency import bench, format_table

    out = format_table(bench(baseline_bundle, chunks=3, warmup=1, log=lambda m: None))
    for backend in ("pytorch", "onnx_fp32", "onnx_int8"):
        assert backend in out
    assert "p50 / pytorch" in out
