"""Run a bundle's ONNX model chunk by chunk with onnxruntime (numpy only, no torch).

Used by verification, INT8 measurement and the latency benchmark; the serving runtime has
its own copy of this loop (serve/), written against the same bundle contract.

    runner = OrtStreamer(bundle_dir / "model.onnx", bundle, threads=1)
    log_probs = runner.run_utterances([feats_a, feats_b])   # each (n_chunks * C_out, V)

Utterances are cut into chunks of `chunk_frames` input frames, the last one zero-padded
(what a streaming client does at end of input); outputs cover the padded length too, so
keep the first `T // subsampling` frames of an utterance of T input frames. A model with
lookahead is fed windows of `chunk_frames + lookahead_frames` frames that start a chunk apart
(`windows`), with `lookahead_frames` more zero frames after the last chunk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ekd_compress.contract.bundle import state_shape


def session_options(threads: int | None = 1):
    """onnxruntime SessionOptions: `threads` intra-op threads (None = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def pad_to_chunks(feats: np.ndarray, chunk_frames: int, lookahead_frames: int = 0) -> np.ndarray:
    """feats (T, F) -> (n * chunk_frames + lookahead_frames, F), n = max(1, ceil(T / chunk_frames)),
    zero-padded at the end."""
    T = feats.shape[0]
    n_chunks = max(1, -(-T // chunk_frames))
    out = np.zeros((n_chunks * chunk_frames + lookahead_frames, feats.shape[1]), dtype=np.float32)
    out[:T] = feats
    return out


def windows(padded: np.ndarray, chunk_frames: int, lookahead_frames: int = 0) -> list[np.ndarray]:
    """padded (..., n * chunk_frames + lookahead_frames, F) from `pad_to_chunks` -> the n windows a
    stream feeds, each (..., chunk_frames + lookahead_frames, F), contiguous, a chunk apart."""
    frames = padded.shape[-2]
    n_chunks = (frames - lookahead_frames) // chunk_frames
    if n_chunks < 1 or n_chunks * chunk_frames + lookahead_frames != frames:
        raise ValueError(f"{frames} frames are not n * {chunk_frames} + {lookahead_frames} (chunk + lookahead) "
                         "for any n >= 1; pad the features with pad_to_chunks first")
    size = chunk_frames + lookahead_frames
    return [np.ascontiguousarray(padded[..., s:s + size, :]) for s in range(0, n_chunks * chunk_frames, chunk_frames)]


def utterance_windows(feats: np.ndarray, chunk_frames: int, lookahead_frames: int = 0) -> list[np.ndarray]:
    """One utterance's features (T, F) -> the windows a stream of it feeds, each
    (1, chunk_frames + lookahead_frames, F) float32: `pad_to_chunks`, then `windows`."""
    padded = pad_to_chunks(np.asarray(feats, dtype=np.float32), chunk_frames, lookahead_frames)
    return windows(padded[None], chunk_frames, lookahead_frames)


class OrtStreamer:
    """A bundle's ONNX model (fp32 or INT8) as a chunk-by-chunk recogniser front end.

    Args:
        model_path: model.onnx or model.int8.onnx.
        bundle: the bundle.json object (for the state names, shapes, dtypes and chunk size).
        threads: intra-op threads (1 for latency measurements; None = all cores).
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(self, model_path: Path | str, bundle: dict[str, Any], threads: int | None = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.session = ort.InferenceSession(str(model_path), session_options(threads), providers=list(providers))
        self.chunk_frames = int(bundle["streaming"]["chunk_frames"])
        self.lookahead_frames = int(bundle["streaming"].get("lookahead_frames", 0))
        self.subsampling = int(bundle["streaming"]["subsampling"])
        self.out_per_chunk = int(bundle["streaming"]["output_frames_per_chunk"])
        self.state_names = [s["name"] for s in bundle["states"]]
        self.output_names = ["log_probs", *[f"{n}_out" for n in self.state_names]]

    def zero_states(self, batch: int) -> list[np.ndarray]:
        """Initial state for `batch` streams: zeros of every state's shape and dtype."""
        return [np.zeros(state_shape(s["shape"], batch), dtype=np.dtype(s["dtype"])) for s in self.bundle["states"]]

    def feeds(self, chunk: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {"chunk": chunk, **dict(zip(self.state_names, states))}

    def step(self, chunk: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """chunk (B, chunk_frames + lookahead_frames, F) float32 + states -> log_probs (B, C_out, V), next states."""
        log_probs, *new_states = self.session.run(self.output_names, self.feeds(chunk, states))
        return log_probs, new_states

    def run_padded(self, feats: np.ndarray) -> np.ndarray:
        """feats (B, n_chunks * chunk_frames + lookahead_frames, F) -> log_probs (B, n_chunks * C_out, V),
        from zero states."""
        states = self.zero_states(feats.shape[0])
        outs = []
        for window in windows(feats, self.chunk_frames, self.lookahead_frames):
            log_probs, states = self.step(window, states)
            outs.append(log_probs)
        return np.concatenate(outs, axis=1)

    def run_utterances(self, feats_list: Sequence[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        """Stream each utterance (T_i, F) -> its log_probs (n_chunks_i * C_out, V) (padding included).

        With batch_size > 1, utterances of similar length are streamed together as one batch
        (shorter ones padded with zero chunks at the end, which cannot change earlier outputs).
        """
        padded = [pad_to_chunks(np.asarray(f, dtype=np.float32), self.chunk_frames, self.lookahead_frames)
                  for f in feats_list]
        order = sorted(range(len(padded)), key=lambda i: padded[i].shape[0])
        results: list[np.ndarray | None] = [None] * len(padded)
        for start in range(0, len(order), max(1, batch_size)):
            group = order[start:start + max(1, batch_size)]
            longest = max(padded[i].shape[0] for i in group)
            batch = np.zeros((len(group), longest, padded[group[0]].shape[1]), dtype=np.float32)
            for b, i in enumerate(group):
                batch[b, : padded[i].shape[0]] = padded[i]
            log_probs = self.run_padded(batch)  # (B, (longest - lookahead) // subsampling, V)
            for b, i in enumerate(group):
                results[i] = log_probs[b, : (padded[i].shape[0] - self.lookahead_frames) // self.subsampling]
        return results  # type: ignore[return-value]
