"""verify_onnx catches a single wrong frame wherever it is: in the last utterance only, in the
dynamic-batch path only, and when the mean |Δ| over the utterance would still look fine.

The ONNX outputs are corrupted by a wrapper around the streamer (one log-prob entry moved by
1e-2, upwards on the frame's argmax so no transcript changes): the only thing that can fail
the check is the max |Δ log-prob| itself, and the test knows the true answer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from ekd_compress.export.verify import Utterance, VerificationError, verify_onnx

pytest.importorskip("onnxruntime")

F_DIM, VOCAB, CHUNK = 6, 20, 8
LENGTHS = [37, 50, 29]  # input frames; the last utterance is the shortest (8 padded output frames)
BUMP = 1e-2


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path, dict]:
    from ekd_compress.models import build_model
    from ekd_compress.export.onnx_export import export_streaming_onnx

    torch.manual_seed(0)
    model = build_model("tdnn", F_DIM, VOCAB, hidden=8, layers=2, chunk_frames=CHUNK).eval()
    path = tmp_path_factory.mktemp("verify") / "model.onnx"
    bundle = export_streaming_onnx(model, path)  # io_spec: the bundle's streaming/states entries
    return model, path, bundle


def utterances() -> list[Utterance]:
    rng = np.random.default_rng(0)
    return [Utterance(f"utt{i}", rng.standard_normal((n, F_DIM)).astype(np.float32)) for i, n in enumerate(LENGTHS)]


def corrupt(monkeypatch, utt_index: int, batched: bool) -> list[int]:
    """Wrap OrtStreamer.run_utterances: in the single-stream (batched=False) or the dynamic-batch
    (batched=True) call, raise one log-prob of utterance `utt_index` by BUMP (frame 2, its argmax).
    Returns the list of batch sizes whose output was corrupted (filled in as verification runs)."""
    import ekd_compress.export.verify as verify

    original: Callable = verify.OrtStreamer.run_utterances
    corrupted: list[int] = []

    def wrapped(self, feats_list, batch_size=1):
        outs = [o.copy() for o in original(self, feats_list, batch_size)]
        if (batch_size > 1) == batched:
            frame = outs[utt_index][2]
            frame[int(frame.argmax())] += BUMP
            corrupted.append(batch_size)
        return outs

    monkeypatch.setattr(verify.OrtStreamer, "run_utterances", wrapped)
    return corrupted


def test_clean_export_passes_and_reports_a_tiny_difference(exported) -> None:
    model, path, bundle = exported
    report = verify_onnx(model, path, bundle, utterances())
    assert report["max_abs_logprob_diff"] <= 1e-4 and report["transcripts_identical"] is True
    assert report["utterances"] == len(LENGTHS)


@pytest.mark.parametrize(("utt_index", "batched"), [(2, False), (1, True), (2, True)],
                         ids=["last-utterance-single", "middle-utterance-batched-only", "last-utterance-batched-only"])
def test_one_wrong_frame_fails_verification(exported, monkeypatch, utt_index: int, batched: bool) -> None:
    model, path, bundle = exported
    corrupted = corrupt(monkeypatch, utt_index, batched)
    utts = utterances()
    with pytest.raises(VerificationError, match=r"max \|Δ log-prob\|"):
        verify_onnx(model, path, bundle, utts)
    if batched:
        assert corrupted == [len(utts)], f"verification must stream all utterances as one batch; it ran {corrupted}"
    report = verify_onnx(model, path, bundle, utts, raise_on_failure=False)
    assert report["max_abs_logprob_diff"] == pytest.approx(BUMP, abs=1e-4), report
    assert report["worst_utterance"] == utts[utt_index].id, report
    assert report["transcripts_identical"] is True, "the bump must fail on |Δ|, not on the transcript"


def test_max_not_mean_difference_is_checked(exported, monkeypatch) -> None:
    """One entry off by 1e-2 in the last utterance: its mean |Δ| is below the 1e-4 tolerance,
    its max is 100 times above it; verification must fail."""
    model, path, bundle = exported
    utts = utterances()
    padded_frames = -(-LENGTHS[-1] // CHUNK) * CHUNK // 4
    assert BUMP / (padded_frames * VOCAB) < 1e-4, "the example must be one a mean |Δ| would let pass"
    corrupt(monkeypatch, len(utts) - 1, batched=False)
    with pytest.raises(VerificationError, match=r"max \|Δ log-prob\| = 0.01 > 0.0001"):
        verify_onnx(model, path, bundle, utts)
