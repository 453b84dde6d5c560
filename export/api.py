"""`export_bundle`: one model of an experiment directory -> a verified, deployable bundle.

    bundle_dir = export_bundle("exp/demo")                      # the student, EXP/bundles/student
    export_bundle("exp/demo", model="ensemble", int8=True)      # members + fusion in one graph, + INT8
    export_bundle("exp/demo", trt=True, trt_precision="fp16")   # + TensorRT engine (NVIDIA GPU only)

Steps (the layout: ekd_compress/contract/bundle.py):
  1. with trt=True, check for a CUDA GPU and tensorrt first, before any work
  2. streaming ONNX with explicit state and metadata (onnx_export.py); tokens.txt beside it
  3. verification on dev utterances: onnxruntime chunk loop vs PyTorch full forward (verify.py)
  4. INT8 (quantize.py, int8_gate.py): dynamic and/or static (calibrated on training audio) INT8,
     dev WER and speed against fp32; shipped only when it passes the gate, else fp32 and the reason
  5. TensorRT engine (tensorrt_build.py)
  6. bundle.json; the bundle replaces OUT only when every step passed (work happens in
     OUT's sibling `.NAME.partial`, left behind for inspection when a step fails)
  7. the bundle is logged as MLflow artifacts `bundles/NAME` of the experiment's parent run
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from ekd_compress.contract.bundle import BUNDLE_FILE, FORMAT, INT8_FILE, ONNX_FILE, TOKENS_FILE, TRT_FILE, write_bundle
from ekd_compress.contract.lexicon import LEXICON_FILE
from ekd_compress.contract.tokens import BLANK_ID

Log = Callable[[str], None]


def resolve_model_entry(exp_dir: Path, model: str) -> dict[str, Any]:
    """The models.json entry called `model`, else the only entry of that kind."""
    from ekd_compress.experiment import read_registry

    entries = read_registry(exp_dir)
    for e in entries:
        if e["name"] == model:
            return e
    of_kind = [e for e in entries if e["kind"] == model]
    if len(of_kind) == 1:
        return of_kind[0]
    names = [e["name"] for e in entries]
    raise ValueError(f"no model {model!r} in {exp_dir / 'models.json'}; choose one of {names}")


def dev_wer(exp_dir: Path, name: str, metric: str = "wer") -> Optional[float]:
    """The model's dev WER (or another `metric` of its row: cer, per) from EXP/results.json
    (None when not evaluated yet, or not defined for the model: a phone model has no WER)."""
    path = exp_dir / "results.json"
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text())["tests"]["dev"]["models"]
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    for row in rows:
        if row.get("name") == name and isinstance(row.get(metric), (int, float)):
            return float(row[metric])
    return None


def parent_run_id(exp_dir: Path) -> Optional[str]:
    path = exp_dir / "mlflow_run.txt"
    text = path.read_text().strip() if path.exists() else ""
    return text or None


def recorded_tracking_uri(exp_dir: Path) -> Optional[str]:
    """The tracking URI distill used (mlflow_run.json), or None for experiments made before it was recorded.
    $MLFLOW_TRACKING_URI, when set, wins (e.g. credentials the recorded URI leaves out)."""
    import os

    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None
    try:
        uri = json.loads((exp_dir / "mlflow_run.json").read_text()).get("tracking_uri")
    except (OSError, ValueError, AttributeError):
        return None
    return uri if isinstance(uri, str) and uri else None


def load_dev_utterances(exp_dir: Path, spec, limit: Optional[int], split: str = "dev", spread: bool = False) -> list:
    """The first `limit` (None: all) cuts of a split ("dev", "train") of the experiment as `Utterance`s
    (fbank computed if not stored), or [] when the experiment holds no such set (only its contract:
    recipe, tokens, models, registry). `spread`: `limit` cuts evenly spaced over the split instead."""
    from ekd_compress.features.fbank import load_features
    from ekd_compress.experiment import cut_text, load_cuts
    from ekd_compress.export.verify import Utterance

    path = exp_dir / "features" / f"{split}_cuts.jsonl.gz"
    if not path.exists():
        return []
    cuts = load_cuts(path, exp_dir=exp_dir)
    if spread and limit is not None:
        cuts = cuts.to_eager()
        step = max(1, len(cuts) // max(limit, 1))
        cuts = [c for i, c in enumerate(cuts) if i % step == 0]
    out = []
    for cut in cuts:
        if limit is not None and len(out) >= limit:
            break
        try:
            feats = load_features(cut, spec)
        except (FileNotFoundError, OSError):  # audio or stored features gone: treat as no dev set
            return []
        if feats.shape[0] >= 4:
            out.append(Utterance(cut.id, feats, cut_text(cut)))
    return out


def probe_utterances(net, n: int = 8, seed: int = 0) -> list:
    """`n` feature sequences (40-400 frames, (T, F) float32) drawn around the model's own CMVN
    statistics and smoothed over time: an ONNX-vs-PyTorch parity probe for an experiment
    without its dev audio. They have no transcripts, so no WER can be measured on them."""
    import numpy as np

    from ekd_compress.export.verify import Utterance

    model = net.members[0] if hasattr(net, "members") else net
    mean = model.feat_mean.detach().cpu().numpy()
    std = 1.0 / model.feat_scale.detach().cpu().numpy()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = int(rng.integers(40, 401))
        noise = rng.standard_normal((T + 4, mean.shape[0]))
        smooth = (noise[:-4] + noise[1:-3] + noise[2:-2] + noise[3:-1] + noise[4:]) / np.sqrt(5.0)
        out.append(Utterance(f"probe{i}", (mean + std * smooth).astype(np.float32), ""))
    return out


def _model_info(model, entry: dict[str, Any]) -> dict[str, Any]:
    from ekd_compress.models import count_parameters as count_params

    members = getattr(model, "members", None)
    if members is not None:
        archs = [m.build_info["arch"] if hasattr(m, "build_info") else type(m).__name__ for m in members]
        return {"name": entry["name"], "kind": entry["kind"], "arch": "ensemble", "params": count_params(model),
                "members": archs, "weights": list(model.weights)}
    arch = model.build_info["arch"] if hasattr(model, "build_info") else type(model).__name__
    return {"name": entry["name"], "kind": entry["kind"], "arch": arch, "params": count_params(model), "members": None}


def export_bundle(
    exp_dir: Path | str,
    model: str = "student",
    out_dir: Path | str | None = None,
    int8: bool = False,
    trt: bool = False,
    trt_precision: str = "fp16",
    max_int8_wer_increase: float = 0.3,
    verify_utterances: int = 50,
    int8_method: str = "both",
    int8_utterances: Optional[int] = None,
    trt_max_batch: int = 16,
    min_int8_speedup: float = 1.2,
    require_int8: bool = False,
    calibration_utterances: int = 64,
    log: Log = print,
) -> Path:
    """Export one model of an experiment as a bundle directory; returns its path.

    Args:
        exp_dir: an experiment directory written by `ekd-compress distill`.
        model: a name in EXP/models.json ("student", "ensemble", "baseline", ...) or a kind with one model.
        out_dir: the bundle directory (default EXP/bundles/NAME); replaced if it exists.
        int8: quantize and measure INT8 (export/int8_gate.py); model.int8.onnx is written only when it
            passes the gate (WER and speed), else bundle.json's "int8" says why fp32 was kept.
        trt: also build model.plan with TensorRT (needs an NVIDIA GPU and `ekd-compress[trt]`).
        trt_precision: "fp16", "int8" or "fp32".
        max_int8_wer_increase: the largest allowed INT8 dev WER increase, absolute points (gate).
        verify_utterances: dev utterances for the ONNX-vs-PyTorch check.
        int8_method: "dynamic", "static" (calibrated on training features) or "both" (the faster that passes).
        int8_utterances: dev utterances for the INT8 WER (None: the whole dev set).
        trt_max_batch: the TensorRT profile's largest batch (streams per call).
        min_int8_speedup: the INT8 model must be this many times faster per chunk than fp32 (gate).
        require_int8: fail the export (Int8AccuracyError / Int8SpeedError) instead of keeping fp32.
        calibration_utterances: training utterances static INT8 calibrates on (dev without training audio).
        log: progress messages.
    """
    from ekd_compress.export.quantize import METHODS
    from ekd_compress.export.tensorrt_build import PRECISIONS, check_trt_available

    exp_dir = Path(exp_dir)
    if int8_method not in (*METHODS, "both"):
        raise ValueError(f"INT8 method {int8_method!r} is unknown; use one of {(*METHODS, 'both')}")
    if trt and trt_precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision {trt_precision!r} is unknown; use one of {PRECISIONS}")
    if verify_utterances < 1:
        raise ValueError(f"verify_utterances={verify_utterances}: verify on at least 1 dev utterance")
    if trt:
        check_trt_available()  # before any work: fail in a second, not after the export
    if not (exp_dir / "models.json").exists():
        raise FileNotFoundError(f"{exp_dir / 'models.json'} not found: {exp_dir} is not an experiment directory "
                                "written by `ekd-compress distill`")
    entry = resolve_model_entry(exp_dir, model)
    out_dir = Path(out_dir) if out_dir is not None else exp_dir / "bundles" / entry["name"]
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    gate = {"max_wer_increase": max_int8_wer_increase, "min_speedup": min_int8_speedup, "require": require_int8,
            "calibration_utterances": calibration_utterances}
    bundle = _build(exp_dir, entry, staging, int8, trt, trt_precision, gate, verify_utterances,
                    int8_method, int8_utterances, trt_max_batch, log)
    write_bundle(staging, bundle)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    log(f"bundle: {out_dir}")
    log_to_mlflow(exp_dir, out_dir, entry["name"], bundle, log)
    return out_dir


def _build(exp_dir: Path, entry: dict[str, Any], staging: Path, int8: bool, trt: bool, trt_precision: str,
           gate: dict[str, Any], verify_utterances: int, int8_method: str,
           int8_utterances: Optional[int], trt_max_batch: int, log: Log) -> dict[str, Any]:
    import ekd_compress
    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.experiment import load_any, read_recipe, read_tokens, recipe_text
    from ekd_compress.export.onnx_export import export_streaming_onnx, io_spec
    from ekd_compress.export.verify import verify_onnx

    recipe = read_recipe(exp_dir)
    spec = feature_spec(recipe.features, recipe.data.sample_rate)
    tokens = read_tokens(exp_dir)
    net = load_any(exp_dir / entry["path"]).eval()
    if net.input_dim != spec.num_mel_bins:
        raise ValueError(f"model {entry['name']!r} takes {net.input_dim} fbank bins but the recipe's features have "
                         f"{spec.num_mel_bins}; export it from the experiment it was trained in")
    if net.vocab_size != len(tokens):
        raise ValueError(f"model {entry['name']!r} has {net.vocab_size} outputs but tokens.txt has {len(tokens)} tokens")

    from ekd_compress.models.flops import count_chunk_flops

    flops = count_chunk_flops(net, frame_shift_ms=float(spec.frame_shift_ms))
    meta_run = None
    if entry["kind"] != "ensemble":
        import torch

        meta_run = torch.load(exp_dir / entry["path"], map_location="cpu", weights_only=True)["meta"].get("mlflow_run_id")
    io = io_spec(net)
    io["streaming"]["frame_shift_ms"] = float(spec.frame_shift_ms)
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "model": {**_model_info(net, entry), "flops_per_audio_second": flops.flops_per_second,
                  "flops_per_chunk": flops.flops_per_chunk},  # matrix products, batch 1 (models/flops.py)
        "files": {"onnx": ONNX_FILE, "int8": None, "trt": None, "tokens": TOKENS_FILE},
        "features": spec.to_dict(),
        "streaming": io["streaming"],
        "inputs": io["inputs"],
        "states": io["states"],
        "outputs": io["outputs"],
        "vocab_size": int(net.vocab_size),
        "blank_id": BLANK_ID,
        "token_kind": tokens.kind,
        "provenance": {
            "exp_dir": str(exp_dir.resolve()),
            "recipe": recipe_text(exp_dir),
            "mlflow_run_id": parent_run_id(exp_dir) or meta_run,
            "model_mlflow_run_id": meta_run,
            "model_path": entry["path"],
            "dev_wer": dev_wer(exp_dir, entry["name"]),
            "metric": recipe.data.metric,  # the experiment's primary measure, and its dev value
            "dev_error": dev_wer(exp_dir, entry["name"], recipe.data.metric),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "ekd_compress_version": ekd_compress.__version__,
        },
        "verification": None,
        "int8": None,
        "trt": None,
    }
    metadata = {"ekd_bundle_format": FORMAT, "tokens": tokens.tokens}
    metadata.update({k: bundle[k] for k in ("model", "features", "streaming", "inputs", "states", "outputs",
                                             "vocab_size", "blank_id", "token_kind")})
    metadata["provenance"] = {k: v for k, v in bundle["provenance"].items() if k != "recipe"}
    log(f"exporting {entry['name']} ({bundle['model']['arch']}, {bundle['model']['params']} parameters) to ONNX")
    export_streaming_onnx(net, staging / ONNX_FILE, metadata)
    shutil.copyfile(exp_dir / "tokens.txt", staging / TOKENS_FILE)
    if tokens.kind == "phone":  # the phone table decodes only beside its lexicon (TokenTable.load)
        shutil.copyfile(exp_dir / LEXICON_FILE, staging / LEXICON_FILE)
        bundle["files"]["lexicon"] = LEXICON_FILE
    if (exp_dir / "bpe.model").exists():
        shutil.copyfile(exp_dir / "bpe.model", staging / "bpe.model")

    need = None if (int8 and int8_utterances is None) else max(verify_utterances, int8_utterances or 0)
    dev = load_dev_utterances(exp_dir, spec, need)
    source = "dev"
    if not dev:
        if int8 or trt_precision == "int8" and trt:
            raise ValueError(f"{exp_dir} holds no dev set (features/dev_cuts.jsonl.gz and its audio): INT8 needs dev "
                             "audio to calibrate and to measure its WER change; export without --int8, or re-run "
                             "`ekd-compress distill` through its features stage")
        dev, source = probe_utterances(net, min(verify_utterances, 8)), "probe"
        log(f"no dev set in {exp_dir}: verifying on {len(dev)} feature probes drawn from the model's CMVN statistics")
    else:
        log(f"verifying ONNX against PyTorch on {min(verify_utterances, len(dev))} dev utterances")
    report = verify_onnx(net, staging / ONNX_FILE, bundle, dev[:verify_utterances], tokens)
    bundle["verification"] = {k: report[k] for k in ("max_abs_logprob_diff", "transcripts_identical", "utterances")}
    bundle["verification"]["on"] = source
    log(f"  max |Δ log-prob| {report['max_abs_logprob_diff']:.2e}, transcripts identical")

    if int8:
        from ekd_compress.export.int8_gate import int8_gate
        from ekd_compress.export.quantize import METHODS

        methods = list(METHODS) if int8_method == "both" else [int8_method]
        calib, calib_on = dev[:gate["calibration_utterances"]], "dev"
        if "static" in methods:
            train = load_dev_utterances(exp_dir, spec, gate["calibration_utterances"], split="train", spread=True)
            if train:
                calib, calib_on = train, "train"
            else:
                log("no training features in the experiment: static INT8 calibrates on dev")
        int8_dev = dev if int8_utterances is None else dev[:int8_utterances]
        try:
            bundle["int8"] = int8_gate(staging, ONNX_FILE, INT8_FILE, bundle, methods, int8_dev, calib, calib_on,
                                       tokens, gate["max_wer_increase"], gate["min_speedup"], gate["require"], log)
        except Exception as e:
            bundle["int8"] = {"decision": "refused", "reason": str(e)}
            (staging / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, default=str))  # the report, for inspection
            raise

    if trt:
        from ekd_compress.export.quantize import quantize_static_int8
        from ekd_compress.export.tensorrt_build import build_engine

        qdq = None
        if trt_precision == "int8":
            if int8 and bundle["int8"].get("method") == "static":
                qdq = staging / INT8_FILE
            else:
                qdq = quantize_static_int8(staging / ONNX_FILE, staging / "model.qdq.onnx", bundle, dev[:64])
        bundle["trt"] = build_engine(staging / ONNX_FILE, staging / TRT_FILE, bundle, trt_precision, int8_onnx=qdq,
                                     max_batch=trt_max_batch, log=log)
        bundle["files"]["trt"] = TRT_FILE
        if qdq is not None and qdq.name == "model.qdq.onnx":
            qdq.unlink(missing_ok=True)
    return bundle


def log_to_mlflow(exp_dir: Path, bundle_dir: Path, name: str, bundle: dict[str, Any], log: Log) -> bool:
    """Attach the bundle to the experiment's parent MLflow run as artifacts `bundles/NAME`.

    Skipped, with a note, when tracking is disabled in the recipe, the experiment has no run
    id, or its store cannot be reached; a failed upload never fails the export."""
    run_id = bundle["provenance"].get("mlflow_run_id")
    try:
        from ekd_compress.experiment import read_recipe

        tracking = read_recipe(exp_dir).tracking
    except Exception as e:  # noqa: BLE001
        log(f"MLflow: not logged ({e})")
        return False
    if not tracking.enabled:
        log("MLflow: tracking is disabled in the recipe; bundle not logged")
        return False
    if not run_id:
        log("MLflow: the experiment has no run id (mlflow_run.txt); bundle not logged")
        return False
    from ekd_compress.tracking import resolve_tracking_uri

    uri = tracking.uri or recorded_tracking_uri(exp_dir) or resolve_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        log(f"MLflow: no tracking store at {uri} (run export where distill ran, or set MLFLOW_TRACKING_URI); "
            "bundle not logged")
        return False
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)
        client.log_artifacts(run_id, str(bundle_dir), f"bundles/{name}")
        metrics = {"max_abs_logprob_diff": bundle["verification"]["max_abs_logprob_diff"]}
        if bundle["int8"]:
            metrics.update({k: bundle["int8"][k] for k in ("wer_fp32", "wer_int8", "speedup")
                            if bundle["int8"].get(k) is not None})
        for key, value in metrics.items():
            client.log_metric(run_id, f"export_{name}_{key}", float(value))
    except Exception as e:  # noqa: BLE001 - tracking must not fail an export that succeeded
        log(f"MLflow: bundle not logged to run {run_id} at {uri} ({type(e).__name__}: {e})")
        return False
    log(f"MLflow: bundle logged to run {run_id} as artifacts bundles/{name}")
    return True
