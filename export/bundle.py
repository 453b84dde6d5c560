"""The deployable bundle: a directory with the model, its tokens and `bundle.json`.

    BUNDLE/
      model.onnx          streaming fp32 model, state as explicit inputs/outputs (always)
      model.int8.onnx     onnxruntime INT8 model (export --int8)
      model.plan          TensorRT engine, valid only for the GPU and TensorRT version it names (export --trt)
      tokens.txt          `token id` per line, id 0 = CTC blank
      lexicon.txt         phone models only: `WORD PH1 PH2 ...` (stress-stripped), read with tokens.txt
      bundle.json         everything a runtime needs besides the weights (schema below)

bundle.json (format "ekd-bundle/1"):

    format        "ekd-bundle/1"
    model         {name, kind, arch, params, members: null | [member archs]}
    files         {onnx, int8: str|null, trt: str|null, tokens, lexicon (phone models only)}: file names
                  inside the bundle
    features      FeatureSpec.to_dict(): kaldi-native-fbank settings (sample_rate Hz, num_mel_bins, ...)
    streaming     {chunk_frames, subsampling, output_frames_per_chunk, lookahead_frames, frame_shift_ms}
    inputs        {"chunk": {"shape": ["B", chunk_frames, F], "dtype": "float32"}}
    states        [{"name", "shape" (with "B" for the batch axis), "dtype"}] in model input order;
                  the initial value of every state is zeros of that shape and dtype
    outputs       {"log_probs": {"shape": ["B", output_frames_per_chunk, "V"], "dtype": "float32"},
                   NAME + "_out": the next value of state NAME, same shape and dtype}
    vocab_size, blank_id, token_kind ("char" | "bpe" | "phone": the model writes phone strings,
                  `HH AH L OW`, decoded through tokens.txt with lexicon.txt beside it)
    provenance    {exp_dir, recipe (recipe.yaml text), mlflow_run_id, dev_wer, created, ekd_compress_version}
                  (+ metric: the experiment's primary measure, wer | cer | per, and dev_error: its dev
                  value; dev_wer is null for phone models, which write no words)
    verification  {max_abs_logprob_diff, transcripts_identical, utterances}
    int8          null | the INT8 gate's report {decision: int8|fp32, reason, method, metric, candidates, ...}
                  (phone models: PER in the wer_* fields)
    trt           null | {precision, tensorrt_version, gpu, profiles, ...}

A runtime feeds `chunk` (B, chunk_frames, F) float32 fbank frames plus the states, gets
`log_probs` (B, output_frames_per_chunk, V) (natural-log CTC posteriors) and the next
states. The chunk length is fixed at `chunk_frames`: zero-pad the last chunk of an
utterance. The batch axis B is dynamic.

This module is standard library only, so torch-free runtimes can use it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "ekd-bundle/1"
BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TRT_FILE = "model.plan"
TOKENS_FILE = "tokens.txt"

_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_NUM = (int, float, type(None))

# key -> type(s) or nested schema; a nested schema with None allowed is written (dict-schema, "nullable")
SCHEMA: dict[str, Any] = {
    "format": str,
    "model": {"name": str, "kind": str, "arch": str, "params": int, "members": (list, type(None))},
    "files": {"onnx": str, "int8": _OPT_STR, "trt": _OPT_STR, "tokens": str},
    "features": {"sample_rate": int, "num_mel_bins": int, "frame_length_ms": _NUM, "frame_shift_ms": _NUM},
    "streaming": {
        "chunk_frames": int, "subsampling": int, "output_frames_per_chunk": int,
        "lookahead_frames": int, "frame_shift_ms": _NUM,
    },
    "inputs": {"chunk": {"shape": list, "dtype": str}},
    "states": list,
    "outputs": {"log_probs": {"shape": list, "dtype": str}},
    "vocab_size": int,
    "blank_id": int,
    "token_kind": str,
    "provenance": {
        "exp_dir": _OPT_STR, "recipe": _OPT_STR, "mlflow_run_id": _OPT_STR, "dev_wer": _OPT_NUM,
        "created": str, "ekd_compress_version": str,
    },
    "verification": {"max_abs_logprob_diff": _NUM, "transcripts_identical": bool, "utterances": int},
    "int8": ({"method": _OPT_STR}, "nullable"),  # the INT8 gate's report; checked in _check_int8
    "trt": ({"precision": str, "tensorrt_version": str, "gpu": str, "profiles": list}, "nullable"),
}

_DTYPES = ("float32", "float16", "int64", "int32")


class BundleError(ValueError):
    """bundle.json is missing, malformed or inconsistent with the files beside it."""


def _type_names(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def _check(obj: Any, schema: dict[str, Any], where: str, errors: list[str]) -> None:
    for key, rule in schema.items():
        path = f"{where}.{key}" if where else key
        if not isinstance(obj, dict) or key not in obj:
            errors.append(f"missing key {path!r}")
            continue
        value = obj[key]
        nullable = isinstance(rule, tuple) and len(rule) == 2 and rule[1] == "nullable"
        if nullable:
            if value is None:
                continue
            rule = rule[0]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                errors.append(f"{path!r} must be an object, got {type(value).__name__}")
            else:
                _check(value, rule, path, errors)
        elif isinstance(value, bool) and bool not in (rule if isinstance(rule, tuple) else (rule,)):
            errors.append(f"{path!r} must be {_type_names(rule)}, got a boolean")
        elif not isinstance(value, rule):
            errors.append(f"{path!r} must be {_type_names(rule)}, got {type(value).__name__} {value!r:.60}")


def _check_shape(shape: Any, path: str, errors: list[str]) -> None:
    if not isinstance(shape, list) or not all(
        (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str) for d in shape
    ):
        errors.append(f"{path!r} must be a list of sizes (ints) and symbols (\"B\", \"V\"), got {shape!r}")
    elif shape.count("B") != 1:
        errors.append(f"{path!r} must hold the batch axis \"B\" exactly once, got {shape!r}")


def _check_consistency(d: dict[str, Any], errors: list[str]) -> None:
    s, feats = d["streaming"], d["features"]
    if d["format"] != FORMAT:
        errors.append(f"format is {d['format']!r}; this code reads {FORMAT!r} (re-export with this version)")
    if s["subsampling"] < 1 or s["chunk_frames"] % s["subsampling"] != 0:
        errors.append(f"streaming.chunk_frames={s['chunk_frames']} is not a multiple of subsampling={s['subsampling']}")
    elif s["output_frames_per_chunk"] != s["chunk_frames"] // s["subsampling"]:
        errors.append("streaming.output_frames_per_chunk must equal chunk_frames // subsampling")
    chunk = d["inputs"]["chunk"]
    _check_shape(chunk["shape"], "inputs.chunk.shape", errors)
    if chunk["shape"] != ["B", s["chunk_frames"], feats["num_mel_bins"]]:
        errors.append(f"inputs.chunk.shape {chunk['shape']} must be ['B', chunk_frames, num_mel_bins] = "
                      f"{['B', s['chunk_frames'], feats['num_mel_bins']]}")
    lp = d["outputs"]["log_probs"]
    _check_shape(lp["shape"], "outputs.log_probs.shape", errors)
    names = []
    for i, st in enumerate(d["states"]):
        where = f"states[{i}]"
        if not isinstance(st, dict) or not {"name", "shape", "dtype"} <= set(st):
            errors.append(f"{where} must be an object with name, shape and dtype, got {st!r:.80}")
            continue
        _check_shape(st["shape"], f"{where}.shape", errors)
        if st["dtype"] not in _DTYPES:
            errors.append(f"{where}.dtype {st['dtype']!r} is not one of {_DTYPES}")
        names.append(st["name"])
        out = d["outputs"].get(f"{st['name']}_out")
        if not isinstance(out, dict) or out.get("shape") != st["shape"] or out.get("dtype") != st["dtype"]:
            errors.append(f"outputs[{st['name'] + '_out'!r}] must exist with the shape and dtype of state {st['name']!r}")
    if len(set(names)) != len(names):
        errors.append(f"state names {names} are not unique")
    if not 0 <= d["blank_id"] < d["vocab_size"]:
        errors.append(f"blank_id={d['blank_id']} is outside the vocabulary of {d['vocab_size']}")
    _check_int8(d, errors)
    if (d["files"]["trt"] is None) != (d["trt"] is None):
        errors.append("files.trt and the trt report must be both set or both null")
    if d["token_kind"] == "phone" and not isinstance(d["files"].get("lexicon"), str):
        errors.append("token_kind is 'phone' but files.lexicon is missing: a phone model decodes with its lexicon.txt")


def _check_int8(d: dict[str, Any], errors: list[str]) -> None:
    """`int8` is null (no --int8), the gate's report {"decision": "int8" | "fp32", "reason", ...}
    (export/int8_gate.py; files.int8 set exactly when the decision is "int8"), or, in bundles from
    before the gate, a report {wer_fp32, wer_int8, speedup, method} beside files.int8."""
    r, f = d["int8"], d["files"]["int8"]
    if r is None:
        if f is not None:
            errors.append("files.int8 is set but there is no int8 report")
        return
    if "decision" in r:
        if r["decision"] not in ("int8", "fp32") or not isinstance(r.get("reason"), str):
            errors.append(f"int8.decision must be 'int8' or 'fp32' with a reason, got {r.get('decision')!r}")
        elif (f is not None) != (r["decision"] == "int8"):
            errors.append(f"files.int8 is {f!r} but int8.decision is {r['decision']!r}: set exactly when INT8 ships")
        return
    for key in ("wer_fp32", "wer_int8", "speedup"):
        if key not in r or not isinstance(r[key], _OPT_NUM):
            errors.append(f"int8.{key} must be a number or null")
    if not isinstance(r.get("method"), str) or f is None:
        errors.append("files.int8 and the int8 report must be both set or both null")


def validate_bundle(d: Any, bundle_dir: Path | str | None = None) -> dict[str, Any]:
    """Check a bundle.json object against the schema (and, given `bundle_dir`, that its files
    exist there). Returns `d`; raises `BundleError` listing every problem."""
    errors: list[str] = []
    if not isinstance(d, dict):
        raise BundleError(f"bundle.json must hold a JSON object, got {type(d).__name__}")
    _check(d, SCHEMA, "", errors)
    if not errors:
        _check_consistency(d, errors)
    if not errors and bundle_dir is not None:
        for key, name in d["files"].items():
            if name is not None and not (Path(bundle_dir) / name).is_file():
                errors.append(f"files.{key} names {name!r}, which is not in {bundle_dir}")
    if errors:
        where = f" in {Path(bundle_dir) / BUNDLE_FILE}" if bundle_dir is not None else ""
        raise BundleError(
            f"invalid bundle{where}: " + "; ".join(errors)
            + ". Re-export the model with `ekd-compress export EXPDIR` instead of editing bundle.json by hand."
        )
    return d


def read_bundle(bundle_dir: Path | str) -> dict[str, Any]:
    """Load and validate BUNDLE/bundle.json; raises `BundleError` (a ValueError) when unusable."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a bundle: {BUNDLE_FILE} is missing; make one with `ekd-compress export EXPDIR`"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
    return validate_bundle(d, bundle_dir)


def write_bundle(bundle_dir: Path | str, d: dict[str, Any]) -> Path:
    """Validate `d` and write it atomically as BUNDLE/bundle.json (NaN is refused: use null)."""
    bundle_dir = Path(bundle_dir)
    validate_bundle(d, bundle_dir)
    path = bundle_dir / BUNDLE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def state_shape(shape: list[Any], batch: int) -> tuple[int, ...]:
    """A bundle shape with "B" -> concrete shape for `batch` streams."""
    return tuple(batch if dim == "B" else int(dim) for dim in shape)
