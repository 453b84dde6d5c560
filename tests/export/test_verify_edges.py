"""verify_onnx beyond a single bumped log-prob (tests/export/test_verify.py): transcript
mismatches in the single-stream and in the batched path, non-finite outputs, the tolerance
boundary, the reference's length argument, a model left in training mode, two and one
utterances. Found unchecked by the mutation run (tools/mutation.sh, issue 17)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from ekd_compress.export.verify import Utterance, VerificationError, verify_onnx
from tests.export.test_verify import CHUNK, exported, utterances  # noqa: F401  (module fixture)

pytest.importorskip("onnxruntime")


def patch_outputs(monkeypatch, change: Callable[[list[np.ndarray], int], None]) -> None:
    """Let `change(outputs, batch_size)` edit the streamer's outputs in place."""
    import ekd_compress.export.verify as verify

    original = verify.OrtStreamer.run_utterances

    def wrapped(self, feats_list, batch_size=1):
        outs = [o.copy() for o in original(self, feats_list, batch_size)]
        change(outs, batch_size)
        return outs

    monkeypatch.setattr(verify.OrtStreamer, "run_utterances", wrapped)


def flip_argmax(out: np.ndarray, frame: int) -> None:
    """Make a non-blank token that is no neighbour's argmax the clear argmax of `frame`: the
    greedy transcript gains or changes a token."""
    near = {int(out[f].argmax()) for f in range(max(0, frame - 1), min(len(out), frame + 2))}
    token = min(set(range(1, out.shape[1])) - near)
    out[frame, token] = out[frame].max() + 5.0


class Tokens:
    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched-only"])
def test_a_transcript_difference_fails_even_within_tolerance(exported, monkeypatch, batched) -> None:
    model, path, bundle = exported
    utts = utterances()

    def change(outs, batch_size):
        if (batch_size > 1) == batched:
            flip_argmax(outs[2], 1)

    patch_outputs(monkeypatch, change)
    report = verify_onnx(model, path, bundle, utts, tolerance=100.0, raise_on_failure=False)
    assert report["transcripts_identical"] is False and report["tolerance"] == 100.0
    with pytest.raises(VerificationError, match=r"PyTorch model: 1 of 3 transcripts differ \(first: utt2: "
                                                r"PyTorch \[[0-9, ]*\] vs ONNX \[[0-9, ]*\]\)"):
        verify_onnx(model, path, bundle, utts, tolerance=100.0)
    # at a tolerance equal to the worst difference only the transcripts are reported
    worst = report["max_abs_logprob_diff"]
    with pytest.raises(VerificationError, match=r"PyTorch model: 1 of 3 transcripts differ"):
        verify_onnx(model, path, bundle, utts, tolerance=worst)
    if not batched:
        with pytest.raises(VerificationError, match=r"PyTorch '[a-z]*' vs ONNX '[a-z]*'\)\. The export is refused"):
            verify_onnx(model, path, bundle, utts, tokens=Tokens(), tolerance=100.0)


def test_padding_frames_count_for_the_difference_but_not_the_transcript(exported, monkeypatch) -> None:
    # utterance 2 has 29 input frames: output frames 7.. are padding (of a 32-frame chunk)
    model, path, bundle = exported

    def change(outs, batch_size):
        flip_argmax(outs[2], 7)

    patch_outputs(monkeypatch, change)
    report = verify_onnx(model, path, bundle, utterances(), raise_on_failure=False)
    assert report["transcripts_identical"] is True and report["max_abs_logprob_diff"] > 1.0


def test_both_problems_are_reported(exported, monkeypatch) -> None:
    model, path, bundle = exported

    def change(outs, batch_size):
        if batch_size == 1:
            flip_argmax(outs[2], 1)

    patch_outputs(monkeypatch, change)
    with pytest.raises(VerificationError, match=r"> 0.0001 \(worst utterance utt2\); 1 of 3 transcripts differ"):
        verify_onnx(model, path, bundle, utterances())


def test_non_finite_output_fails_and_is_reported_as_huge(exported, monkeypatch) -> None:
    model, path, bundle = exported

    def change(outs, batch_size):  # utterances 1 and 2 are equally bad (inf): the first one is named
        outs[1][3, 0] = np.nan
        outs[2][3, 0] = np.inf

    patch_outputs(monkeypatch, change)
    report = verify_onnx(model, path, bundle, utterances(), raise_on_failure=False)
    assert report["max_abs_logprob_diff"] == 1e30 and report["worst_utterance"] == "utt1"
    with pytest.raises(VerificationError, match=r"max \|Δ log-prob\| = inf > 0.0001 \(worst utterance utt1\)"):
        verify_onnx(model, path, bundle, utterances())


def test_tolerance_is_inclusive(exported, monkeypatch) -> None:
    model, path, bundle = exported

    def change(outs, batch_size):
        outs[0][2, int(outs[0][2].argmax())] += 1e-2  # the transcript stays

    patch_outputs(monkeypatch, change)
    worst = verify_onnx(model, path, bundle, utterances(), raise_on_failure=False)["max_abs_logprob_diff"]
    assert worst == pytest.approx(1e-2, abs=1e-4)
    assert verify_onnx(model, path, bundle, utterances(), tolerance=worst)["tolerance"] == worst
    with pytest.raises(VerificationError):
        verify_onnx(model, path, bundle, utterances(), tolerance=worst * 0.999)


def test_the_reference_sees_the_whole_padded_utterance(exported) -> None:
    """The reference is model(padded, [padded length]): a length-aware model that blanks its
    output past the given length must still match the ONNX graph, which has no lengths."""
    model, path, bundle = exported

    class LengthAware(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, feats, lengths):
            out, out_lengths = self.inner(feats, lengths)
            valid = torch.arange(out.shape[1])[None, :, None] < out_lengths[:, None, None]
            return torch.where(valid, out, torch.zeros_like(out)), out_lengths

    report = verify_onnx(LengthAware().eval(), path, bundle, utterances())
    assert report["max_abs_logprob_diff"] < 1e-4


def test_a_model_in_training_mode_is_verified_in_eval_mode_and_restored(exported) -> None:
    model, path, bundle = exported

    class Dropped(torch.nn.Module):  # dropout would break the match if verification ran in training mode
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, feats, lengths):
            out, n = self.inner(feats, lengths)
            return self.drop(out), n

    wrapper = Dropped().train()
    try:
        verify_onnx(wrapper, path, bundle, utterances())
        assert wrapper.training and wrapper.drop.training  # restored
        wrapper.eval()
        verify_onnx(wrapper, path, bundle, utterances())
        assert not wrapper.training
    finally:
        model.eval()


def test_two_utterances_are_also_streamed_as_one_batch(exported, monkeypatch) -> None:
    model, path, bundle = exported
    seen: list[int] = []

    def change(outs, batch_size):
        seen.append(batch_size)
        if batch_size > 1:
            outs[0][2, 0] += 1e-2

    patch_outputs(monkeypatch, change)
    with pytest.raises(VerificationError, match=r"worst utterance utt0"):
        verify_onnx(model, path, bundle, utterances()[:2])
    assert seen == [1, 2]


def test_one_utterance_and_none(exported) -> None:
    model, path, bundle = exported
    one = utterances()[2:]
    report = verify_onnx(model, path, bundle, one)
    assert report["utterances"] == 1 and report["worst_utterance"] == "utt2"
    with pytest.raises(ValueError, match="at least one utterance"):
        verify_onnx(model, path, bundle, [])


def test_float64_features_are_accepted(exported) -> None:
    model, path, bundle = exported
    utts = [Utterance(u.id, u.feats.astype(np.float64)) for u in utterances()]
    assert verify_onnx(model, path, bundle, utts)["max_abs_logprob_diff"] < 1e-4
    assert CHUNK == bundle["streaming"]["chunk_frames"]
