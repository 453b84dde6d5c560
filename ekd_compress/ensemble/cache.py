"""On-disk cache of essence targets: the teacher runs once, students train from disk.

Layout of a cache directory:

    index.json               keys, selection config, K, shard list, utt -> [shard, offset, frames]
    shard-00000.ids.npy      (N0, K) uint16  token ids; REST_ID (−2) stored as 65535
    shard-00000.probs.npy    (N0, K) float16 probabilities
    shard-00001.*.npy ...

Storage is 2 bytes (id) + 2 bytes (prob) per entry, 4·K bytes per frame, against
2·V bytes for dense fp16 posteriors. Each shard holds the frames of many utterances,
concatenated; shards are memory-mapped on demand, so opening a cache reads only the
index. Everything is written to a temporary file and moved into place with os.replace;
index.json is written last, by `close()`, so a cache whose writer died is never read as
complete.

Sharded generation (one writer per data-parallel rank): `create(..., part=r)` writes
`part-RRR-shard-*.npy` and, on close, `index.part-RRR.json` instead of index.json; when
every part is closed, `merge_parts(directory, n)` checks they agree and writes the one
index.json that readers open. Until then the cache is incomplete, as above.

Entries are keyed by the caller's `feature_hash` and `teacher_hash` and the selection
config (k, temperature, mode, ...): `open` refuses a cache made with other ones, and
`read` refuses an utterance whose frame count differs from the student's (the most common
cache failure in peer toolkits).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ekd_compress.atomic import write_atomic

REST_ID = -2  # = ekd_compress.losses.essence.REST_ID (not imported: this module stays torch-free)
REST_CODE = 65535  # uint16 code of REST_ID on disk
INDEX = "index.json"
VERSION = 1
DEFAULT_SHARD_BYTES = 64 << 20


class CacheMismatchError(ValueError):
    """The cache on disk was made for other features, another teacher, selection or frame rate."""


class UnknownUtteranceError(KeyError):
    """An utterance id the cache does not hold."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


def _normal(selection: dict[str, Any]) -> dict[str, Any]:
    """A JSON round trip, so a config compares equal to the one read back from index.json."""
    if not isinstance(selection, dict):
        raise ValueError(f"selection={selection!r} must be a dict of the selection config, e.g. "
                         "{'k': 4, 'temperature': 1.0, 'mode': 'renorm'}")
    return json.loads(json.dumps(selection, sort_keys=True))


def _part_prefix(part: int) -> str:
    return f"part-{part:03d}-"


def _part_index(part: int) -> str:
    return f"index.part-{part:03d}.json"


class EssenceCache:
    """Essence targets per utterance. Make one with `create` (writer) or `open` (reader)."""

    def __init__(self, directory: Path, meta: dict[str, Any], writable: bool, shard_bytes: int,
                 part: Optional[int] = None) -> None:
        self.directory = Path(directory)
        self.part = part
        self.meta = meta  # the index.json content
        self.writable = writable
        self.shard_bytes = shard_bytes
        self._buf_ids: list[np.ndarray] = []
        self._buf_probs: list[np.ndarray] = []
        self._buf_frames = 0
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._closed = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, directory: Path | str, *, feature_hash: str, teacher_hash: str, selection: dict[str, Any],
               shard_bytes: int = DEFAULT_SHARD_BYTES, part: Optional[int] = None) -> "EssenceCache":
        """A new, empty cache in `directory` (created; a previous cache there is removed).

        With `part=r` this writer makes part r of a sharded cache: it removes only its own
        old files (and index.json); `merge_parts` completes the cache.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if part is not None and not 0 <= int(part) < 1000:
            raise ValueError(f"part={part!r} must be an integer in [0, 1000): one part per writer (rank)")
        prefix = "" if part is None else _part_prefix(int(part))
        old_index = [directory / INDEX] + ([directory / _part_index(int(part))] if part is not None else [])
        for old in [*old_index, *directory.glob(f"{prefix}shard-*.npy"), *directory.glob(f"{prefix}*.tmp")]:
            old.unlink(missing_ok=True)  # index first: a half-replaced cache never looks complete
        meta = {"version": VERSION, "feature_hash": str(feature_hash), "teacher_hash": str(teacher_hash),
                "selection": _normal(selection), "K": None, "shards": [], "utts": {}}
        return cls(directory, meta, writable=True, shard_bytes=max(1, int(shard_bytes)),
                   part=None if part is None else int(part))

    @classmethod
    def merge_parts(cls, directory: Path | str, parts: int) -> "EssenceCache":
        """Join closed parts 0..parts-1 into one cache (writes index.json); returns it opened for reading."""
        directory = Path(directory)
        metas = []
        for r in range(parts):
            path = directory / _part_index(r)
            if not path.exists():
                raise CacheMismatchError(f"part {r} of the sharded essence cache {directory} is missing ({path.name}): "
                                         "its writer did not finish; re-run the 'essence' stage")
            metas.append(json.loads(path.read_text()))
        merged = dict(metas[0], shards=[], utts={})
        for r, meta in enumerate(metas):
            for key in ("version", "feature_hash", "teacher_hash", "selection"):
                if meta[key] != merged[key]:
                    raise CacheMismatchError(f"part {r} of {directory} has {key}={meta[key]!r} but part 0 has "
                                             f"{merged[key]!r}; all ranks must use one teacher and selection")
            if meta["K"] is not None:
                if merged["K"] not in (None, meta["K"]):
                    raise CacheMismatchError(f"part {r} of {directory} holds K={meta['K']}, another part K={merged['K']}")
                merged["K"] = meta["K"]
            offset = len(merged["shards"])
            merged["shards"].extend(meta["shards"])
            for utt, (shard, start, frames) in meta["utts"].items():
                if utt in merged["utts"]:
                    raise ValueError(f"utterance {utt!r} is in two parts of {directory}; give each rank its own share")
                merged["utts"][utt] = [shard + offset, start, frames]
        text = json.dumps(merged).encode()
        write_atomic(directory / INDEX, lambda f: f.write(text))
        for r in range(parts):
            (directory / _part_index(r)).unlink()
        return cls(directory, merged, writable=False, shard_bytes=DEFAULT_SHARD_BYTES)

    @classmethod
    def open(cls, directory: Path | str, *, feature_hash: str, teacher_hash: str,
             selection: dict[str, Any]) -> "EssenceCache":
        """Open a closed cache for reading, checking that it was made with these keys."""
        directory = Path(directory)
        index = directory / INDEX
        if not index.exists():
            raise CacheMismatchError(
                f"{directory} holds no complete essence cache ({INDEX} missing: never written, or its writer "
                "stopped before close()); delete the directory and re-run the 'essence' stage"
            )
        meta = json.loads(index.read_text())
        fix = f"delete {directory} or re-run the 'essence' stage to rebuild it"
        if meta.get("version") != VERSION:
            raise CacheMismatchError(f"{directory} has cache format version {meta.get('version')}, "
                                     f"this code reads {VERSION}; {fix}")
        for name, want in (("feature_hash", str(feature_hash)), ("teacher_hash", str(teacher_hash))):
            if meta[name] != want:
                raise CacheMismatchError(f"essence cache {directory} was made with {name}={meta[name]!r} but "
                                         f"the current one is {want!r}; {fix}")
        want_sel = _normal(selection)
        if meta["selection"] != want_sel:
            keys = sorted(set(meta["selection"]) | set(want_sel))
            diff = ", ".join(f"{k}: cached {meta['selection'].get(k)!r} != requested {want_sel.get(k)!r}"
                             for k in keys if meta["selection"].get(k) != want_sel.get(k))
            raise CacheMismatchError(f"essence cache {directory} was made with another selection ({diff}); {fix}")
        return cls(directory, meta, writable=False, shard_bytes=DEFAULT_SHARD_BYTES)

    # ------------------------------------------------------------------------ writing
    def write(self, utt_id: str, ids: np.ndarray, probs: np.ndarray) -> None:
        """Add one utterance: ids (T', K) int (REST_ID allowed), probs (T', K) float in [0, 1]."""
        if not self.writable or self._closed:
            raise ValueError(f"essence cache {self.directory} is {'closed' if self._closed else 'read-only'}; "
                             "make a new one with EssenceCache.create to write")
        ids, probs = np.asarray(ids), np.asarray(probs)
        if ids.ndim != 2 or ids.shape != probs.shape:
            raise ValueError(f"utterance {utt_id!r}: ids {ids.shape} and probs {probs.shape} must both be "
                             "(frames, K) arrays of one shape")
        if utt_id in self.meta["utts"]:
            raise ValueError(f"utterance {utt_id!r} is already in the cache; utterance ids must be unique")
        K = self.meta["K"]
        if K is None:
            self.meta["K"] = K = int(ids.shape[1])
        elif ids.shape[1] != K:
            raise ValueError(f"utterance {utt_id!r} has K={ids.shape[1]} entries per frame but the cache holds "
                             f"K={K}; one cache holds one selection config")
        ids = ids.astype(np.int64)
        rest = ids == REST_ID
        if ids.size and (int(ids.max()) >= REST_CODE or bool(((ids < 0) & ~rest).any())):
            raise ValueError(f"utterance {utt_id!r} holds ids outside [0, {REST_CODE}) other than the rest "
                             f"id {REST_ID}; uint16 storage holds vocabularies of up to {REST_CODE} tokens")
        probs = probs.astype(np.float32)
        if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0 + 1e-3):
            raise ValueError(f"utterance {utt_id!r} holds probabilities outside [0, 1]; pass the selected "
                             "probabilities, not log-probabilities")
        codes = np.where(rest, REST_CODE, ids).astype(np.uint16)
        shard = len(self.meta["shards"])
        self.meta["utts"][utt_id] = [shard, self._buf_frames, int(ids.shape[0])]
        self._buf_ids.append(codes)
        self._buf_probs.append(probs.astype(np.float16))
        self._buf_frames += int(ids.shape[0])
        if self._buf_frames * K * 4 >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buf_ids:
            return
        shard = len(self.meta["shards"])
        prefix = "" if self.part is None else _part_prefix(self.part)
        name = f"{prefix}shard-{shard:05d}"
        ids = np.concatenate(self._buf_ids)
        probs = np.concatenate(self._buf_probs)
        write_atomic(self.directory / f"{name}.ids.npy", lambda f: np.save(f, ids))
        write_atomic(self.directory / f"{name}.probs.npy", lambda f: np.save(f, probs))
        self.meta["shards"].append({"name": name, "frames": int(ids.shape[0]), "bytes": int(ids.nbytes + probs.nbytes)})
        self._buf_ids, self._buf_probs, self._buf_frames = [], [], 0

    def close(self) -> None:
        """Write the last shard and then the index (atomically). Idempotent; a reader's close drops its maps."""
        if self._closed:
            return
        if self.writable:
            self._flush()
            text = json.dumps(self.meta).encode()
            index = INDEX if self.part is None else _part_index(self.part)
            write_atomic(self.directory / index, lambda f: f.write(text))
        self._maps.clear()
        self._closed = True

    def __enter__(self) -> "EssenceCache":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.writable:
            self.close()  # a writer that failed leaves no index: the cache stays incomplete

    # ------------------------------------------------------------------------ reading
    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._maps:
            name = self.meta["shards"][shard]["name"]
            self._maps[shard] = (np.load(self.directory / f"{name}.ids.npy", mmap_mode="r"),
                                 np.load(self.directory / f"{name}.probs.npy", mmap_mode="r"))
        return self._maps[shard]

    def read(self, utt_id: str, expected_frames: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """One utterance -> (ids (T', K) int64 with REST_ID restored, probs (T', K) float32).

        `expected_frames` is the student's output frame count for the utterance; a cache
        entry of another length raises CacheMismatchError (None skips the check).
        """
        if self.writable and not self._closed:
            raise ValueError(f"essence cache {self.directory} is still being written; close() it, then "
                             "EssenceCache.open it to read")
        entry = self.meta["utts"].get(utt_id)
        if entry is None:
            raise UnknownUtteranceError(
                f"utterance {utt_id!r} is not in the essence cache {self.directory} ({len(self)} utterances); "
                "the training cuts changed since the cache was made: re-run the 'essence' stage"
            )
        shard, offset, frames = entry
        if expected_frames is not None and int(expected_frames) != frames:
            raise CacheMismatchError(
                f"utterance {utt_id!r} has {frames} cached teacher frames but the student emits "
                f"{int(expected_frames)}: teacher and student differ in subsampling or features; use a student "
                "with the teacher's subsampling, or delete the cache and re-run the 'essence' stage"
            )
        ids_map, probs_map = self._shard(shard)
        codes = np.asarray(ids_map[offset:offset + frames])
        ids = codes.astype(np.int64)
        ids[codes == REST_CODE] = REST_ID
        return ids, np.asarray(probs_map[offset:offset + frames], dtype=np.float32)

    # ------------------------------------------------------------------------- facts
    @property
    def K(self) -> Optional[int]:
        """Entries per frame (None before the first write)."""
        return self.meta["K"]

    @property
    def frames(self) -> int:
        """Output frames stored (written so far, for a writer)."""
        return sum(s["frames"] for s in self.meta["shards"]) + self._buf_frames

    def bytes_per_frame(self) -> float:
        """Stored bytes of ids + probs divided by stored frames (4·K); 0.0 for an empty cache."""
        frames = self.frames
        stored = sum(s["bytes"] for s in self.meta["shards"])
        stored += sum(a.nbytes for a in self._buf_ids) + sum(a.nbytes for a in self._buf_probs)
        return stored / frames if frames else 0.0

    def utt_ids(self) -> list[str]:
        return list(self.meta["utts"])

    def __len__(self) -> int:
        return len(self.meta["utts"])

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self.meta["utts"]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: reopen maps lazily, never pickle them
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __repr__(self) -> str:
        return (f"EssenceCache({str(self.directory)!r}, utterances={len(self)}, K={self.K}, "
                f"selection={self.meta['selection']})")
