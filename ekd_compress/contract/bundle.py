"""The bundle format, written by `export/` and read by `serve/` and `evaluate`: one writer, one reader.

A bundle is a directory with the model, its tokens and `bundle.json`:

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
    inputs        {"chunk": {"shape": ["B", chunk_frames + lookahead_frames, F], "dtype": "float32"}}
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

A runtime feeds `chunk` (B, chunk_frames + lookahead_frames, F) float32 fbank frames plus the
states, gets `log_probs` (B, output_frames_per_chunk, V) (natural-log CTC posteriors) and the
next states, and moves on by `chunk_frames`: a model with lookahead sees the next call's first
`lookahead_frames` frames too (0 for a causal model). Zero-pad the last window of an
utterance. The batch axis B is dynamic.

Two levels of checking, both here:

- `validate_bundle` / `write_bundle` / `read_bundle`: the whole schema above (export writes
  only what passes it; tests and tools read the full metadata with `read_bundle`).
- `Bundle.load`: what a runtime needs to stream the model (format, files, features,
  streaming geometry, states, tokens); it reads every bundle `write_bundle` accepts, and also
  bundles of older exporters that lack metadata the runtime does not use. `inputs.chunk.shape[1]`
  may exceed `chunk_frames` (a window of `window_frames` fed per call, `chunk_frames` consumed).

numpy and the standard library only (torch-free): the streaming server loads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.lexicon import LEXICON_FILE
from ekd_compress.contract.tokens import BLANK_ID, TokenTable

FORMAT = "ekd-bundle/1"
BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TRT_FILE = "model.plan"
TOKENS_FILE = "tokens.txt"

# dtype name in bundle.json -> numpy dtype (states and outputs); export maps torch dtypes onto these names
DTYPES: dict[str, type] = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}

__all__ = ["BUNDLE_FILE", "DTYPES", "FORMAT", "INT8_FILE", "LEXICON_FILE", "ONNX_FILE", "SCHEMA", "TOKENS_FILE",
           "TRT_FILE", "Bundle", "BundleError", "StateInfo", "read_bundle", "state_shape", "validate_bundle",
           "write_bundle"]

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

_DTYPE_NAMES = tuple(DTYPES)


class BundleError(ValueError):
    """bundle.json is missing, malformed or inconsistent with the files beside it (writer and readers)."""


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
    window = ["B", s["chunk_frames"] + s["lookahead_frames"], feats["num_mel_bins"]]
    if chunk["shape"] != window:
        errors.append(f"inputs.chunk.shape {chunk['shape']} must be ['B', chunk_frames + lookahead_frames, "
                      f"num_mel_bins] = {window}")
    lp = d["outputs"]["log_probs"]
    _check_shape(lp["shape"], "outputs.log_probs.shape", errors)
    names = []
    for i, st in enumerate(d["states"]):
        where = f"states[{i}]"
        if not isinstance(st, dict) or not {"name", "shape", "dtype"} <= set(st):
            errors.append(f"{where} must be an object with name, shape and dtype, got {st!r:.80}")
            continue
        _check_shape(st["shape"], f"{where}.shape", errors)
        if st["dtype"] not in DTYPES:
            errors.append(f"{where}.dtype {st['dtype']!r} is not one of {_DTYPE_NAMES}")
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


def _load_json(bundle_dir: Path) -> Any:
    """The parsed BUNDLE/bundle.json (any JSON value); `BundleError` when it is missing or not JSON."""
    path = bundle_dir / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a bundle: {BUNDLE_FILE} is missing; make one with `ekd-compress export EXPDIR`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None


def read_bundle(bundle_dir: Path | str) -> dict[str, Any]:
    """Load BUNDLE/bundle.json and validate it against the whole schema (`validate_bundle`);
    raises `BundleError` (a ValueError) when unusable. Runtimes use `Bundle.load`."""
    bundle_dir = Path(bundle_dir)
    return validate_bundle(_load_json(bundle_dir), bundle_dir)


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


@dataclass(frozen=True)
class StateInfo:
    """One streaming state tensor of a bundle: its name, shape (ints and "B") and dtype name."""

    name: str
    shape: tuple  # ints and the symbol "B"
    dtype: str

    @property
    def batch_axis(self) -> int:
        return self.shape.index("B")

    def zeros(self, batch: int = 1) -> np.ndarray:
        """The initial value for `batch` streams: zeros of the state's shape and dtype."""
        return np.zeros(state_shape(list(self.shape), batch), dtype=DTYPES[self.dtype])


@dataclass
class Bundle:
    """A bundle directory as a runtime sees it, checked by `Bundle.load` (schema: module docstring)."""

    path: Path
    meta: dict[str, Any]
    features: FeatureSpec
    tokens: TokenTable
    states: list[StateInfo]
    chunk_frames: int  # input frames consumed (hop) per model call
    window_frames: int  # input frames fed per model call (inputs.chunk.shape[1])
    subsampling: int
    output_frames_per_chunk: int
    blank_id: int
    vocab_size: int

    @property
    def name(self) -> str:
        return str(self.meta.get("model", {}).get("name") or self.path.name)

    @property
    def frame_seconds(self) -> float:
        """Duration of one output frame (subsampling x feature frame shift), seconds."""
        return self.subsampling * self.features.frame_shift_ms / 1000.0

    @property
    def chunk_seconds(self) -> float:
        """Audio consumed per model call, seconds."""
        return self.chunk_frames * self.features.frame_shift_ms / 1000.0

    @property
    def lookahead_seconds(self) -> float:
        """Audio past each chunk that a model call also needs (window - chunk), seconds; 0 when causal."""
        return (self.window_frames - self.chunk_frames) * self.features.frame_shift_ms / 1000.0

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def file(self, key: str) -> Path | None:
        """The path of files[key] ("onnx", "int8", "trt", "tokens", ...), None when unset."""
        name = self.meta["files"].get(key)
        return self.path / name if name else None

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Read and check the bundle at `path` for streaming; `BundleError` naming the problem and the fix."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"bundle directory {path} does not exist; make one with `ekd-compress export EXPDIR`")
        meta_path = path / BUNDLE_FILE
        meta = _load_json(path)
        if not isinstance(meta, dict):
            raise BundleError(f"{meta_path} must hold a JSON object")

        def need(d: Any, key: str, typ: type | tuple, where: str) -> Any:
            if not isinstance(d, dict) or key not in d:
                raise BundleError(f"{meta_path}: missing key {where + key!r}; re-export the bundle")
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, typ):
                raise BundleError(f"{meta_path}: {where + key!r} must be {typ}, got {v!r:.60}")
            return v

        fmt = need(meta, "format", str, "")
        if fmt != FORMAT:
            raise BundleError(f"{meta_path}: format {fmt!r} is not {FORMAT!r}; re-export with this version")
        files = need(meta, "files", dict, "")
        for key in ("onnx", "tokens"):
            name = need(files, key, str, "files.")
            if not (path / name).is_file():
                raise BundleError(f"{path}: files.{key} names {name!r}, which is missing; re-export the bundle")
        for key in ("int8", "trt"):
            name = files.get(key)
            if name is not None and not (path / str(name)).is_file():
                raise BundleError(f"{path}: files.{key} names {name!r}, which is missing; re-export or set it to null")
        try:
            features = FeatureSpec.from_dict(need(meta, "features", dict, ""))
        except (TypeError, ValueError) as e:
            raise BundleError(f"{meta_path}: features: {e}") from None
        st = need(meta, "streaming", dict, "")
        chunk_frames = need(st, "chunk_frames", int, "streaming.")
        subsampling = need(st, "subsampling", int, "streaming.")
        out_per_chunk = need(st, "output_frames_per_chunk", int, "streaming.")
        if subsampling < 1 or chunk_frames < subsampling or chunk_frames % subsampling:
            raise BundleError(f"{meta_path}: streaming.chunk_frames={chunk_frames} must be a multiple of subsampling={subsampling}")
        if out_per_chunk != chunk_frames // subsampling:
            raise BundleError(f"{meta_path}: streaming.output_frames_per_chunk={out_per_chunk} != chunk_frames // subsampling")
        chunk_in = need(need(need(meta, "inputs", dict, ""), "chunk", dict, "inputs."), "shape", list, "inputs.chunk.")
        if len(chunk_in) != 3 or chunk_in[0] != "B" or chunk_in[2] != features.num_mel_bins or not isinstance(chunk_in[1], int) \
                or chunk_in[1] < chunk_frames:
            raise BundleError(f"{meta_path}: inputs.chunk.shape {chunk_in} must be ['B', >= chunk_frames, num_mel_bins]")
        states = []
        for i, s in enumerate(need(meta, "states", list, "")):
            name = need(s, "name", str, f"states[{i}].")
            shape = need(s, "shape", list, f"states[{i}].")
            dtype = need(s, "dtype", str, f"states[{i}].")
            if shape.count("B") != 1 or not all(d == "B" or (isinstance(d, int) and d >= 0) for d in shape):
                raise BundleError(f"{meta_path}: states[{i}].shape {shape} must hold ints and 'B' exactly once")
            if dtype not in DTYPES:
                raise BundleError(f"{meta_path}: states[{i}].dtype {dtype!r} is not one of {sorted(DTYPES)}")
            states.append(StateInfo(name, tuple(shape), dtype))
        vocab = need(meta, "vocab_size", int, "")
        blank = need(meta, "blank_id", int, "")
        try:
            tokens = TokenTable.load(path / files["tokens"])
        except ValueError as e:
            raise BundleError(f"{path / files['tokens']}: {e}") from None
        declared = meta.get("token_kind")
        if declared in ("char", "bpe", "phone") and declared != tokens.kind:
            fix = "copy its lexicon.txt beside tokens.txt" if declared == "phone" else "re-export the bundle"
            raise BundleError(f"{meta_path}: token_kind is {declared!r} but {path / files['tokens']} reads as "
                              f"{tokens.kind!r} tokens; {fix}")
        if len(tokens) != vocab:
            raise BundleError(f"{path}: tokens.txt has {len(tokens)} tokens but vocab_size is {vocab}; re-export the bundle")
        if blank != BLANK_ID:
            raise BundleError(f"{meta_path}: blank_id={blank}; this runtime expects the blank at id 0 (the token table convention)")
        return cls(path, meta, features, tokens, states, chunk_frames, int(chunk_in[1]), subsampling, out_per_chunk,
                   blank, vocab)
