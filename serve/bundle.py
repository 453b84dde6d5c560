"""Bundle loading for the streaming runtime: validates bundle.json and the files it names
(see export/bundle.py for the full schema). Re-exported by `serve.runtime`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable

BUNDLE_FORMAT = "ekd-bundle/1"
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class BundleError(ValueError):
    """A bundle directory is missing a file or bundle.json lacks / mistypes a key."""


@dataclass(frozen=True)
class StateInfo:
    name: str
    shape: tuple  # ints and the symbol "B"
    dtype: str

    @property
    def batch_axis(self) -> int:
        return self.shape.index("B")

    def zeros(self, batch: int = 1) -> np.ndarray:
        return np.zeros(tuple(batch if d == "B" else int(d) for d in self.shape), dtype=_DTYPES[self.dtype])


@dataclass
class Bundle:
    """A validated bundle directory (see export/bundle.py for the full schema)."""

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
        return self.chunk_frames * self.features.frame_shift_ms / 1000.0

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def file(self, key: str) -> Path | None:
        name = self.meta["files"].get(key)
        return self.path / name if name else None

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"bundle directory {path} does not exist; make one with `ekd-compress export EXPDIR`")
        meta_path = path / "bundle.json"
        if not meta_path.is_file():
            raise BundleError(f"{path} is not a bundle: bundle.json is missing; make one with `ekd-compress export EXPDIR`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{meta_path} is not valid JSON ({e}); re-export the bundle") from None
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
        if fmt != BUNDLE_FORMAT:
            raise BundleError(f"{meta_path}: format {fmt!r} is not {BUNDLE_FORMAT!r}; re-export with this version")
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
            if dtype not in _DTYPES:
                raise BundleError(f"{meta_path}: states[{i}].dtype {dtype!r} is not one of {sorted(_DTYPES)}")
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
        if blank != 0:
            raise BundleError(f"{meta_path}: blank_id={blank}; this runtime expects the blank at id 0 (the token table convention)")
        return cls(path, meta, features, tokens, states, chunk_frames, int(chunk_in[1]), subsampling, out_per_chunk,
                   blank, vocab)
