"""The INT8 gate: it ships INT8 only when it is accurate (<= +0.3 WER) AND faster (>= 1.2x), says
why in bundle.json otherwise; static INT8 calibrates on training audio; INT8 WER is batch-independent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ekd_compress.export.api import export_bundle, load_dev_utterances
from ekd_compress.contract.bundle import read_bundle
from ekd_compress.export.int8_gate import choose

GATE = {"max_wer_increase": 0.3, "min_speedup": 1.2}


def cand(method, inc, speed):
    return {"method": method, "wer_fp32": 10.0, "wer_int8": None if inc is None else 10.0 + inc, "wer_increase": inc,
            "speedup": speed, "latency_ms_fp32": 1.0, "latency_ms_int8": 1.0 / speed}


def test_gate_decisions_on_constructed_measurements():
    best, why = choose([cand("dynamic", 0.1, 1.5), cand("static", 0.0, 2.0)], **GATE)
    assert best["method"] == "static" and "2.00x faster" in why  # both pass: the faster one
    best, why = choose([cand("dynamic", 0.1, 0.55), cand("static", 0.0, 1.1)], **GATE)
    assert best is None and why.startswith("fp32 kept") and "0.55x the speed of fp32" in why and "1.10x" in why
    best, why = choose([cand("dynamic", 0.31, 3.0)], **GATE)  # fast but not accurate enough
    assert best is None and "+0.31 points > the allowed +0.3" in why
    best, why = choose([cand("dynamic", 0.3, 1.2)], **GATE)  # exactly at both limits passes
    assert best is not None
    c = cand("dynamic", None, 1.5)
    assert choose([c], **GATE)[0] is None and "could not be measured" in c["reasons"][0]


def test_gate_words_name_the_metric_of_a_phone_model():
    best, why = choose([{**cand("static", -0.2, 1.9), "metric": "per"}], **GATE)
    assert best is not None and "-0.20 PER points" in why
    c = {**cand("dynamic", 0.5, 1.5), "metric": "per"}
    assert choose([c], **GATE)[0] is None and c["reasons"][0].startswith("dev PER 10.00 -> 10.50 %")
    c = {**cand("dynamic", None, 1.5), "metric": "per"}
    assert choose([c], **GATE)[0] is None and c["reasons"][0] == (
        "its PER change could not be measured (the dev references hold no phones)")


def test_refusal_names_the_metric_of_a_phone_model():
    from ekd_compress.export.quantize import Int8AccuracyError, check_int8

    report = {"method": "dynamic", "wer_fp32": 30.0, "wer_int8": 31.0, "wer_increase": 1.0, "metric": "per"}
    with pytest.raises(Int8AccuracyError, match=r"changes dev PER from 30.00% to 31.00% \(\+1.00 points\)"):
        check_int8(report)
    with pytest.raises(Int8AccuracyError, match="INT8 WER change could not be measured .*hold no words"):
        check_int8({**report, "wer_increase": None, "metric": None})
    assert "WER points" in choose([cand("static", 0.0, 2.0)], **GATE)[1]  # no metric recorded: WER


def _exp_with_train_audio(make_exp, tmp_path) -> Path:
    exp = make_exp(tmp_path / "exp", models=["tdnn"])
    shutil.copyfile(exp / "features" / "dev_cuts.jsonl.gz", exp / "features" / "train_cuts.jsonl.gz")
    return exp


def test_too_slow_keeps_fp32_and_says_why_in_bundle_json(make_exp, tmp_path):
    exp = _exp_with_train_audio(make_exp, tmp_path)
    out = export_bundle(exp, model="tdnn", out_dir=tmp_path / "b", int8=True, verify_utterances=1,
                        max_int8_wer_increase=100.0, min_int8_speedup=1000.0, log=lambda m: None)
    b = json.loads((out / "bundle.json").read_text())
    r = b["int8"]
    assert b["files"]["int8"] is None and not list(out.glob("*int8*"))  # no INT8 file ships
    assert r["decision"] == "fp32" and r["method"] is None
    assert [c["method"] for c in r["candidates"]] == ["dynamic", "static"]  # both tried by default
    assert all(not c["passed"] and "required 1000x" in c["reasons"][0] for c in r["candidates"])
    assert "fp32 kept" in r["reason"] and "dynamic:" in r["reason"] and "static:" in r["reason"]
    assert r["calibration"] == {"on": "train", "utterances": 6}  # static INT8 calibrated on training audio
    assert r["gate"]["min_speedup"] == 1000.0 and r["gate"]["max_wer_increase"] == 100.0


def test_inaccurate_keeps_fp32_and_says_why(experiment, tmp_path):
    out = export_bundle(experiment, model="tdnn", out_dir=tmp_path / "b", int8=True, int8_method="dynamic",
                        verify_utterances=1, max_int8_wer_increase=-0.5, min_int8_speedup=0.0, log=lambda m: None)
    r = read_bundle(out)["int8"]
    assert read_bundle(out)["files"]["int8"] is None and r["decision"] == "fp32"
    (c,) = r["candidates"]
    assert c["reasons"] == [f"dev WER {c['wer_fp32']:.2f} -> {c['wer_int8']:.2f} % ({c['wer_increase']:+.2f} points "
                            "> the allowed -0.5)"]


def test_passing_int8_ships_with_its_measurements(experiment, tmp_path):
    out = export_bundle(experiment, model="tdnn", out_dir=tmp_path / "b", int8=True, verify_utterances=1,
                        max_int8_wer_increase=100.0, min_int8_speedup=0.0, log=lambda m: None)
    b = read_bundle(out)
    r = b["int8"]
    assert b["files"]["int8"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    assert r["decision"] == "int8" and r["method"] in ("dynamic", "static") and "INT8 kept" in r["reason"]
    best = max(r["candidates"], key=lambda c: c["speedup"])
    assert r["method"] == best["method"] and r["speedup"] == best["speedup"]
    assert r["latency_ms_fp32"] > 0 and r["wall_ms_int8"] > 0
    assert not (out / "model.int8-dynamic.onnx").exists() and not (out / "model.int8-static.onnx").exists()


def test_int8_scoring_is_batch_independent(experiment, tmp_path):
    """Dynamic INT8 quantizes activations with one scale per call: streamed in a batch, an
    utterance's outputs depend on its batch mates. The gate's scoring streams each alone."""
    import numpy as np

    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.recipe import load_recipe
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.export.ort_stream import OrtStreamer
    from ekd_compress.export.quantize import onnx_hyps, onnx_wer, quantize_dynamic_int8

    b = export_bundle(experiment, model="tdnn", out_dir=tmp_path / "b", verify_utterances=1, log=lambda m: None)
    bundle = read_bundle(b)
    int8 = OrtStreamer(quantize_dynamic_int8(b / "model.onnx", tmp_path / "q.onnx"), bundle, threads=1)
    recipe = load_recipe(experiment / "recipe.yaml")
    dev = load_dev_utterances(experiment, feature_spec(recipe.features, recipe.data.sample_rate), None)
    tokens = TokenTable.load(experiment / "tokens.txt")
    alone = [onnx_hyps(int8, [u], tokens)[0] for u in dev]
    assert onnx_hyps(int8, dev, tokens) == alone
    assert onnx_hyps(int8, dev[::-1], tokens) == alone[::-1]
    assert onnx_wer(int8, dev, tokens) == onnx_wer(int8, dev[::-1], tokens) == onnx_wer(int8, dev[:3] + dev[3:], tokens)
    # what the old scoring did (batches of 16): the same utterance's log-probs change with its batch mates
    feats = [u.feats for u in dev]
    batched = int8.run_utterances(feats, batch_size=16)
    single = int8.run_utterances(feats, batch_size=1)
    assert max(float(np.abs(x - y).max()) for x, y in zip(batched, single)) > 1e-4
