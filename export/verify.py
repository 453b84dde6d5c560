"""Export verification: the ONNX model, streamed chunk by chunk in onnxruntime, against the
PyTorch full-utterance forward on real (dev) utterances.

For each utterance of T fbank frames (zero-padded to whole chunks, as a streaming runtime
pads the last chunk):

    reference  model(feats_padded[None], [T_padded])      PyTorch, whole utterance at once
    candidate  OrtStreamer: chunk after chunk from zero states, carrying the state outputs

and max |Δ log-prob| is taken over every output frame; transcripts (greedy CTC over the
first T // subsampling frames) must be identical. The utterances are also streamed as one
onnxruntime batch (dynamic B), which must agree just as closely. Tolerance 1e-4 by default.
A failed check raises `VerificationError`, which fails the export.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ekd_compress.export.ort_stream import OrtStreamer, pad_to_chunks

DEFAULT_TOLERANCE = 1e-4


class VerificationError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


@dataclass
class Utterance:
    """One dev utterance: id, fbank features (T, F) float32, reference text."""

    id: str
    feats: np.ndarray
    text: str = ""


def _greedy(log_probs: np.ndarray) -> list[int]:
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode

    return ctc_greedy_decode(log_probs)[0]


def verify_onnx(model, onnx_path: Path | str, bundle: dict[str, Any], utterances: Sequence[Utterance],
                tokens=None, tolerance: float = DEFAULT_TOLERANCE, raise_on_failure: bool = True) -> dict[str, Any]:
    """Compare the streaming ONNX model with `model`'s full forward on `utterances`.

    Args:
        model: the PyTorch model (StreamingCTCModel or FusedEnsemble) that was exported.
        onnx_path: its exported model.onnx.
        bundle: a bundle.json-like object with at least `streaming` and `states`.
        utterances: real utterances; features (T, F) as the model was trained on.
        tokens: a TokenTable for readable transcripts in the error message (optional).
        tolerance: largest allowed |Δ log-prob|.
        raise_on_failure: raise `VerificationError` when a check fails (else only report).

    Returns:
        {"max_abs_logprob_diff", "transcripts_identical", "utterances", "tolerance", "worst_utterance"}.
    """
    import torch

    if not utterances:
        raise ValueError("verification needs at least one utterance; the experiment's dev set is empty")
    runner = OrtStreamer(onnx_path, bundle, threads=1)
    sub = runner.subsampling
    feats = [np.asarray(u.feats, dtype=np.float32) for u in utterances]
    single = runner.run_utterances(feats, batch_size=1)
    batched = runner.run_utterances(feats, batch_size=len(feats)) if len(feats) > 1 else single
    worst, worst_id, mismatches = 0.0, utterances[0].id, []
    was_training = model.training
    model.eval()
    try:
        for utt, f, out_single, out_batched in zip(utterances, feats, single, batched):
            padded = torch.from_numpy(pad_to_chunks(f, runner.chunk_frames))[None]  # (1, T_pad, F)
            with torch.no_grad():
                ref, _ = model(padded, torch.tensor([padded.shape[1]]))
            ref = ref[0].float().numpy()  # (T_pad // sub, V)
            diff = max(float(np.abs(out_single - ref).max()), float(np.abs(out_batched - ref).max()))
            if not np.isfinite(diff):
                diff = float("inf")
            if diff > worst:
                worst, worst_id = diff, utt.id
            n_out = f.shape[0] // sub
            ids_ref, ids_onnx = _greedy(ref[:n_out]), _greedy(out_single[:n_out])
            if ids_ref != ids_onnx or _greedy(out_batched[:n_out]) != ids_ref:
                mismatches.append((utt.id, ids_ref, ids_onnx))
    finally:
        model.train(was_training)
    report = {
        "max_abs_logprob_diff": worst if np.isfinite(worst) else 1e30,
        "transcripts_identical": not mismatches,
        "utterances": len(utterances),
        "tolerance": tolerance,
        "worst_utterance": worst_id,
    }
    if raise_on_failure and (worst > tolerance or mismatches):
        problems = []
        if worst > tolerance:
            problems.append(f"max |Δ log-prob| = {worst:.3g} > {tolerance:g} (worst utterance {worst_id})")
        if mismatches:
            uid, ref_ids, onnx_ids = mismatches[0]
            show = (lambda ids: repr(tokens.decode(ids))) if tokens is not None else (lambda ids: str(ids))
            problems.append(f"{len(mismatches)} of {len(utterances)} transcripts differ "
                            f"(first: {uid}: PyTorch {show(ref_ids)} vs ONNX {show(onnx_ids)})")
        raise VerificationError(
            f"the exported ONNX model {onnx_path} does not match the PyTorch model: " + "; ".join(problems)
            + ". The export is refused. Check that every layer is streaming-exact (forward_chunk == forward), "
            "and that no op was exported with a batch- or length-dependent constant."
        )
    return report
