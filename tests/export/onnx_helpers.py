"""Run an exported streaming ONNX graph with a plain onnxruntime loop written for the tests
(independent of ekd_compress.export.ort_stream and ekd_compress.export.verify), decode greedily, count word errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def greedy_ids(log_probs: np.ndarray) -> list[int]:
    """(T, V) log-probs -> argmax path with repeats merged and blanks (0) dropped."""
    best = log_probs.argmax(-1)
    return [int(t) for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]


def stream_onnx(path: Path, bundle: dict, feats_list: list[np.ndarray]) -> list[np.ndarray]:
    """Utterances (T_i, F) streamed together as one zero-padded batch through the ONNX graph,
    chunk by chunk from zero states, with a plain onnxruntime loop written here ->
    log_probs of each utterance's T_i // subsampling frames."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    C, sub = bundle["streaming"]["chunk_frames"], bundle["streaming"]["subsampling"]
    names = [s["name"] for s in bundle["states"]]
    B = len(feats_list)
    states = [np.zeros([B if d == "B" else d for d in s["shape"]], dtype=s["dtype"]) for s in bundle["states"]]
    n_chunks = max(-(-f.shape[0] // C) for f in feats_list)
    padded = np.zeros((B, n_chunks * C, feats_list[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(feats_list):
        padded[b, : f.shape[0]] = f
    outs = []
    for i in range(n_chunks):
        log_probs, *states = session.run(None, {"chunk": padded[:, i * C:(i + 1) * C], **dict(zip(names, states))})
        outs.append(log_probs)
    out = np.concatenate(outs, axis=1)
    return [out[b, : f.shape[0] // sub] for b, f in enumerate(feats_list)]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def greedy_texts(path: Path, bundle: dict, feats_list: list[np.ndarray], tokens, one_batch: bool) -> list[str]:
    """Greedy CTC (argmax, merge repeats, drop blank 0) over `path`, each utterance streamed
    alone or all of them as one batch -> texts."""
    if one_batch:
        outs = stream_onnx(path, bundle, feats_list)
    else:
        outs = [stream_onnx(path, bundle, [f])[0] for f in feats_list]
    return [tokens.decode(greedy_ids(lp)) for lp in outs]
