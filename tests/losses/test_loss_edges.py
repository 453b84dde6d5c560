"""Edges of the three losses that the mutation run (tools/mutation.sh, issue 17) found unchecked:
argument and input validation, batch sizes 0 and 1, temperatures other than 2 (where T·2 = T²),
zero-weight batches, dtypes, and the tie rules of the forced alignment. Expected values are
computed by hand or with plain Python loops."""
import math

import numpy as np
import pytest
import torch

from ekd_compress.losses.ctc import CTCLoss
from ekd_compress.losses.essence import REST_ID, DistillationLoss, EssenceKDLoss
from ekd_compress.losses.guide import GuideAlignmentLoss, ctc_forced_align

Q = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]  # student posteriors, 2 frames, V = 3
RENORM = [[(0, 0.7), (1, 0.3)], [(1, 0.8), (2, 0.2)]]  # frame 0 top-1 blank, frame 1 top-1 "a"
KL0 = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.3)
KL1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.3)


def student(q=Q):
    return torch.tensor([q]).log()  # (1, 2, 3)


def targets(rows):
    return (torch.tensor([[[i for i, _ in r] for r in rows]]),
            torch.tensor([[[p for _, p in r] for r in rows]]))


def tempered_kl(q_rows, rows, t):
    """Σ_k p·(log p − log softmax(log q / T)[id]) per frame, by hand."""
    out = []
    for q, row in zip(q_rows, rows):
        scaled = [math.log(x) / t for x in q]
        norm = math.log(sum(math.exp(s) for s in scaled))
        out.append(sum(p * (math.log(p) - (scaled[i] - norm)) for i, p in row if p > 0))
    return out


# ------------------------------------------------------------------------------ CTC
def test_ctc_empty_batch_is_a_connected_zero():
    lp = torch.zeros(0, 4, 3, requires_grad=True)
    loss = CTCLoss()(lp, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long),
                     torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()  # part of the graph, so a trainer can call backward on any batch
    assert lp.grad is not None and lp.grad.shape == lp.shape
    assert CTCLoss().per_utterance(lp, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long),
                                   torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_ctc_zero_lengths_are_valid():
    # an utterance with no target tokens over 2 frames: -log(p(∅)·p(∅)); one with 0 frames is allowed too
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]], [[0.5, 0.5], [0.5, 0.5]]])
    losses = CTCLoss().per_utterance(probs.log(), torch.tensor([2, 0]), torch.tensor([[1], [1]]), torch.tensor([0, 0]))
    assert losses.tolist() == pytest.approx([-math.log(0.8 * 0.6), 0.0], abs=1e-6)


def test_ctc_dtypes():
    probs = torch.tensor([[[0.4, 0.6], [0.7, 0.3]]])
    want = -math.log(0.6 * 0.3 + 0.6 * 0.7 + 0.4 * 0.3)
    args = (torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    half = CTCLoss()(probs.log().half(), *args)  # fp16 (autocast) log-probs are lifted to float32
    assert half.dtype == torch.float32 and half.item() == pytest.approx(want, rel=1e-3)
    double = CTCLoss()(torch.tensor([[[0.4, 0.6], [0.7, 0.3]]], dtype=torch.float64).log(), *args)
    assert double.dtype == torch.float64 and double.item() == pytest.approx(want, rel=1e-12)  # stays float64


def test_ctc_input_checks():
    lp = torch.randn(2, 4, 3).log_softmax(-1)
    ok = dict(out_lengths=torch.tensor([4, 4]), targets=torch.tensor([[1], [2]]), target_lengths=torch.tensor([1, 1]))

    def call(**kw):
        a = {**ok, **kw}
        return CTCLoss()(kw.pop("log_probs", lp), a["out_lengths"], a["targets"], a["target_lengths"])

    with pytest.raises(ValueError, match=r"^log_probs of shape \(4, 3\) is not \(batch, frames, vocab\)"):
        call(log_probs=lp[0])
    with pytest.raises(ValueError, match=r"^targets of shape \(2,\) do not match a batch of 2"):
        call(targets=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"^targets of shape \(1, 1\) do not match a batch of 2"):
        call(targets=torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"^out_lengths of shape \(1,\) does not match a batch of 2; pass one "
                                         r"output frame count per utterance"):
        call(out_lengths=torch.tensor([4]))
    with pytest.raises(ValueError, match=r"^out_lengths of shape \(2, 1\)"):
        call(out_lengths=torch.tensor([[4], [4]]))
    with pytest.raises(ValueError, match=r"^out_lengths has dtype torch.float32; pass integer output frame counts"):
        call(out_lengths=torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match=r"^out_lengths=\[-1, 4\] holds values outside \[0, 4\]"):
        call(out_lengths=torch.tensor([-1, 4]))
    with pytest.raises(ValueError, match=r"^target_lengths=\[2, 1\] holds values outside \[0, 1\]; each must count "
                                         r"the valid target tokens"):
        call(target_lengths=torch.tensor([2, 1]))


def test_ctc_with_another_blank_id():
    # blank = 1, target token 0: paths "0 0", "0 ∅", "∅ 0"
    probs = torch.tensor([[[0.4, 0.6], [0.7, 0.3]]])
    loss = CTCLoss(blank=1)(probs.log(), torch.tensor([2]), torch.tensor([[0]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.4 * 0.7 + 0.4 * 0.3 + 0.6 * 0.7), rel=1e-5)


# ------------------------------------------------------------------------------ essence KD
def test_documented_defaults():
    kd = EssenceKDLoss()
    assert (kd.temperature, kd.blank_weight, kd.reduction, kd.blank) == (1.0, 1.0, "frame", 0)
    loss = DistillationLoss()
    assert (loss.lam, loss.kd.temperature, loss.kd.blank_weight, loss.kd.reduction) == (0.5, 1.0, 1.0, "frame")
    assert CTCLoss().blank == 0 and GuideAlignmentLoss().reduction == "frame"


def test_kd_argument_checks():
    with pytest.raises(ValueError, match=r"^temperature=0 is invalid; use a number in \(0.0, inf\]"):
        EssenceKDLoss(temperature=0)
    with pytest.raises(ValueError, match=r"^temperature=True is invalid"):
        EssenceKDLoss(temperature=True)
    with pytest.raises(ValueError, match=r"^temperature='2' is invalid"):
        EssenceKDLoss(temperature="2")
    with pytest.raises(ValueError, match=r"^blank_weight=-0.5 is invalid; use a number in \[0.0, inf\]"):
        EssenceKDLoss(blank_weight=-0.5)
    with pytest.raises(ValueError, match=r"^reduction='sum' is unknown"):
        EssenceKDLoss(reduction="sum")
    assert EssenceKDLoss(temperature=0.5).temperature == 0.5 and EssenceKDLoss(temperature=float("inf"))
    assert EssenceKDLoss(blank_weight=0).blank_weight == 0.0
    with pytest.raises(ValueError, match=r"^lam=1.5 is invalid; use a number in \[0.0, 1.0\]"):
        DistillationLoss(lam=1.5)
    with pytest.raises(ValueError, match=r"^lam=-0.1 is invalid"):
        DistillationLoss(lam=-0.1)
    assert DistillationLoss(lam=0).lam == 0.0 and DistillationLoss(lam=1).lam == 1.0


def test_kd_input_checks():
    ids, probs = targets(RENORM)
    kd = EssenceKDLoss()
    with pytest.raises(ValueError, match=r"^student log_probs of shape \(2, 3\) is not \(B, T, V\)"):
        kd(student()[0], torch.tensor([2]), ids, probs)
    with pytest.raises(ValueError, match=r"^essence targets ids \(1, 2\)"):
        kd(student(), torch.tensor([2]), ids[..., 0], probs[..., 0])
    with pytest.raises(ValueError, match=r"^essence targets ids \(1, 2, 2\) / probs \(1, 2, 1\)"):
        kd(student(), torch.tensor([2]), ids, probs[..., :1])
    with pytest.raises(ValueError, match=r"^essence ids have dtype torch.float32"):
        kd(student(), torch.tensor([2]), ids.float(), probs)
    with pytest.raises(ValueError, match=r"^out_lengths=\[3\] holds values outside \[0, 2\]; each must count "
                                         r"the valid output frames"):
        kd(student(), torch.tensor([3]), ids, probs)
    for bad in (3, -1, -3):  # V itself, and negative ids other than the rest id
        wrong = ids.clone()
        wrong[0, 1, 1] = bad
        with pytest.raises(ValueError, match=r"^essence ids hold values outside \[0, 3\) other than the rest id -2"):
            kd(student(), torch.tensor([2]), wrong, probs)


@pytest.mark.parametrize("t", [0.5, 3.0])
@pytest.mark.parametrize("reduction", ["frame", "utterance"])
def test_kd_t_squared_at_temperatures_other_than_two(t, reduction):
    # at T = 2, T·2 = T² and 2^T = T²: only other temperatures tell the T² factor from look-alikes
    kl = tempered_kl(Q, RENORM, t)
    loss = EssenceKDLoss(temperature=t, reduction=reduction)(student(), torch.tensor([2]), *targets(RENORM))
    frames = 2 if reduction == "frame" else 1  # frame: mean over 2 frames; utterance: sum over B = 1
    assert loss.item() == pytest.approx(t * t * sum(kl) / frames, rel=1e-5)


def test_kd_utterance_reduction_divides_by_the_batch_size():
    for batch in (1, 3):
        lp = student().expand(batch, 2, 3)
        ids, probs = targets(RENORM)
        loss = EssenceKDLoss(reduction="utterance")(lp, torch.full((batch,), 2), ids.expand(batch, 2, 2),
                                                    probs.expand(batch, 2, 2))
        assert loss.item() == pytest.approx(KL0 + KL1, rel=1e-5), batch


def test_kd_blank_weight_above_one():
    loss = EssenceKDLoss(blank_weight=2.0)(student(), torch.tensor([2]), *targets(RENORM))
    assert loss.item() == pytest.approx((2 * KL0 + KL1) / 3, rel=1e-5)


def test_kd_blank_weight_per_frame_in_a_longer_batch():
    # three frames whose teacher top-1 is blank, a, blank: weights 0.5, 1, 0.5 (and frame 3 is padding)
    q = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2], [0.2, 0.2, 0.6]]
    rows = [[(0, 0.7), (1, 0.3)], [(1, 0.8), (2, 0.2)], [(2, 0.4), (0, 0.6)], [(0, 0.9), (1, 0.1)]]
    kl = tempered_kl(q, rows, 1.0)
    loss = EssenceKDLoss(blank_weight=0.5)(student(q), torch.tensor([3]), *targets(rows))
    assert loss.item() == pytest.approx((0.5 * kl[0] + kl[1] + 0.5 * kl[2]) / 2.0, rel=1e-5)


def test_kd_all_weights_zero_gives_a_finite_zero():
    lp = student().requires_grad_(True)
    for lengths, bw in ((torch.tensor([0]), 1.0), (torch.tensor([1]), 0.0)):  # all padding; the one frame blank
        loss = EssenceKDLoss(blank_weight=bw)(lp, lengths, *targets(RENORM))
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(lp.grad).all()


def test_kd_one_valid_frame_is_not_zeroed():
    loss = EssenceKDLoss()(student(), torch.tensor([1]), *targets(RENORM))  # total weight exactly 1
    assert loss.item() == pytest.approx(KL0, rel=1e-5) and KL0 > 0.1


def test_kd_residual_with_a_repeated_listed_id():
    # frame 0 lists blank twice (both p > 0) plus rest: the rest is q(a) + q(b) = 0.5 all the same
    rows = [[(0, 0.3), (0, 0.3), (REST_ID, 0.4)], [(1, 0.5), (2, 0.2), (REST_ID, 0.3)]]
    loss = EssenceKDLoss()(student(), torch.tensor([2]), *targets(rows))
    kl0 = 2 * 0.3 * math.log(0.3 / 0.5) + 0.4 * math.log(0.4 / 0.5)
    kl1 = 0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.3) + 0.3 * math.log(0.3 / 0.1)
    assert loss.item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)


def test_kd_residual_rest_in_a_longer_vocabulary():
    # V = 5: the rest bucket is the sum over the three ids not listed, by hand
    q = [[0.3, 0.25, 0.2, 0.15, 0.1], [0.05, 0.5, 0.1, 0.15, 0.2]]
    rows = [[(1, 0.5), (0, 0.2), (REST_ID, 0.3)], [(4, 0.6), (1, 0.3), (REST_ID, 0.1)]]
    loss = EssenceKDLoss()(torch.tensor([q]).log(), torch.tensor([2]), *targets(rows))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.2 * math.log(0.2 / 0.3) + 0.3 * math.log(0.3 / 0.45)
    kl1 = 0.6 * math.log(0.6 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    assert loss.item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)


def test_distillation_loss_endpoints_and_pass_through():
    lp, lengths = student(), torch.tensor([2])
    tgt, tgt_len = torch.tensor([[1]]), torch.tensor([1])
    ids, probs = targets(RENORM)
    ctc = -math.log(0.3 * 0.6 + 0.3 * 0.1 + 0.5 * 0.6)
    total, parts = DistillationLoss(lam=1.0)(lp, lengths, tgt, tgt_len, ids, probs)
    assert total.item() == pytest.approx(ctc, rel=1e-5)
    total, parts = DistillationLoss(lam=0.0)(lp, lengths, tgt, tgt_len, ids, probs)
    assert total.item() == pytest.approx((KL0 + KL1) / 2, rel=1e-5)
    # temperature, blank weight and reduction reach the KD term
    total, parts = DistillationLoss(lam=0.0, temperature=3.0, blank_weight=0.5, reduction="utterance")(
        lp, lengths, tgt, tgt_len, ids, probs)
    kl = tempered_kl(Q, RENORM, 3.0)
    assert parts["kd"].item() == pytest.approx(9.0 * (0.5 * kl[0] + kl[1]), rel=1e-5)


# ------------------------------------------------------------------------------ guide CE
def test_guide_reductions_with_batch_not_equal_to_frames():
    # B = 1, T = 3: "utterance" divides by 1, "frame" by the 2 valid frames (1 is ignored)
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]])
    align = torch.tensor([[0, -1, 2]])
    nll = -(math.log(0.7) + math.log(0.8))
    assert GuideAlignmentLoss(reduction="utterance")(probs.log(), align).item() == pytest.approx(nll, rel=1e-6)
    assert GuideAlignmentLoss()(probs.log(), align).item() == pytest.approx(nll / 2, rel=1e-6)
    one = torch.tensor([[-1, -1, 2]])  # a single valid frame: divided by 1
    assert GuideAlignmentLoss()(probs.log(), one).item() == pytest.approx(-math.log(0.8), rel=1e-6)
    # B = 3, T = 1
    probs = torch.tensor([[[0.7, 0.3]], [[0.4, 0.6]], [[0.9, 0.1]]])
    align = torch.tensor([[0], [1], [-1]])
    want = -(math.log(0.7) + math.log(0.6))
    assert GuideAlignmentLoss(reduction="utterance")(probs.log(), align).item() == pytest.approx(want / 3, rel=1e-6)


def test_guide_input_checks():
    lp = torch.randn(1, 3, 4).log_softmax(-1)
    with pytest.raises(ValueError, match=r"^reduction='sum' is unknown"):
        GuideAlignmentLoss(reduction="sum")
    with pytest.raises(ValueError, match=r"^log_probs of shape \(3, 4\) is not \(batch, frames, vocab\)"):
        GuideAlignmentLoss()(lp[0], torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^align has dtype torch.float32"):
        GuideAlignmentLoss()(lp, torch.zeros(1, 3))
    # the message lists exactly the labels outside [0, V), the ignore value excepted, at most five
    with pytest.raises(ValueError, match=r"^guide alignment holds labels \[-3, 4\] outside \[0, 4\)"):
        GuideAlignmentLoss()(lp, torch.tensor([[-3, 0, 4]]))
    with pytest.raises(ValueError, match=r"holds labels \[-3\] outside"):
        GuideAlignmentLoss()(lp, torch.tensor([[-3, -1, 3]]))
    with pytest.raises(ValueError, match=r"holds labels \[4\] outside"):
        GuideAlignmentLoss()(lp, torch.tensor([[4, -1, 0]]))
    lp7 = torch.randn(1, 7, 4).log_softmax(-1)
    with pytest.raises(ValueError, match=r"holds labels \[4, 5, 6, 7, 8\] outside"):
        GuideAlignmentLoss()(lp7, torch.tensor([[4, 5, 6, 7, 8, 9, 0]]))
    # another ignore value: -1 is then an invalid label and 9 is ignored
    loss = GuideAlignmentLoss(ignore_index=9)(lp, torch.tensor([[9, 0, 9]]))
    assert loss.item() == pytest.approx(-lp[0, 1, 0].item(), rel=1e-6)


# ------------------------------------------------------------------------------ forced alignment
def peaky(path, V, high=0.9):
    p = np.full((len(path), V), (1 - high) / (V - 1))
    p[np.arange(len(path)), path] = high
    return np.log(p)


def test_forced_align_empty_transcript_and_one_frame():
    got = ctc_forced_align(peaky([1, 0], 3), [])
    assert got.dtype == np.int64 and got.tolist() == [0, 0]
    assert ctc_forced_align(peaky([1, 0], 3), [], blank=2).tolist() == [2, 2]
    got = ctc_forced_align(peaky([0], 3), [2])  # one token in one frame: the only path
    assert got.dtype == np.int64 and got.tolist() == [2]


def test_forced_align_input_checks():
    with pytest.raises(ValueError, match=r"^log_probs of shape \(1, 3, 3\) is not \(frames, vocab\)"):
        ctc_forced_align(peaky([0, 0, 0], 3)[None], [1])
    for bad in ([3], [-1], [1, 0]):  # id V, a negative id, the blank
        with pytest.raises(ValueError, match=r"^targets .* hold ids outside \[1, 3\) or the blank 0"):
            ctc_forced_align(peaky([0, 0, 0], 3), bad)
    with pytest.raises(ValueError, match=r"^cannot align 2 tokens \(0 adjacent repeats\) to 1 frames"):
        ctc_forced_align(peaky([0], 3), [1, 2])


def test_forced_align_with_another_blank_id():
    # blank = 2: token 0 is an ordinary token, and 2 must not be in the targets
    path = [0, 2, 1, 1, 2, 0]
    got = ctc_forced_align(peaky(path, 3), [0, 1, 0], blank=2)
    assert got.tolist() == path
    with pytest.raises(ValueError, match="or the blank 2"):
        ctc_forced_align(peaky(path, 3), [2], blank=2)


def test_forced_align_tie_rules():
    # all paths score the same: end in the final blank, and going back prefer stay over advance
    flat = np.log(np.full((3, 3), 1 / 3))
    assert ctc_forced_align(flat, [1]).tolist() == [1, 0, 0]
    assert ctc_forced_align(flat, [1, 2]).tolist() == [1, 2, 0]
    assert ctc_forced_align(np.log(np.full((2, 3), 1 / 3)), [1, 2]).tolist() == [1, 2]


def test_forced_align_skips_the_blank_between_different_tokens_only():
    # T = S: the path must go token to token without blanks; with a repeat it cannot, and raises
    assert ctc_forced_align(peaky([0, 0, 0], 4), [1, 2, 3]).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="needs at least 4"):
        ctc_forced_align(peaky([0, 0, 0], 4), [1, 2, 2])


def test_forced_align_minus_infinity_and_nan_emissions():
    # token 2 impossible (log 0) everywhere but frame 2, nan on frame 0's blank: still the valid path
    lp = peaky([0, 1, 0, 0], 3)
    lp[:, 2] = -np.inf
    lp[2, 2] = math.log(0.01)
    lp[0, 0] = np.nan
    assert ctc_forced_align(lp, [1, 2]).tolist() == [1, 1, 2, 0]


def test_forced_align_accepts_a_row_of_targets():
    assert ctc_forced_align(peaky([0, 1, 0, 2], 3), torch.tensor([[1, 2]])).tolist() == [0, 1, 0, 2]


def test_forced_align_repeat_check_compares_neighbours():
    # 1 2 1 has no adjacent repeat: it fits in 3 frames, skipping both blanks
    assert ctc_forced_align(peaky([0, 0, 0], 3), [1, 2, 1]).tolist() == [1, 2, 1]


def test_forced_align_takes_a_likelier_blank_between_different_tokens():
    lp = np.log([[0.05, 0.9, 0.05], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9]])
    assert ctc_forced_align(lp, [1, 2]).tolist() == [1, 0, 2]  # 0.5 for the blank beats 0.4 for "1"


def test_forced_align_backtracks_through_the_best_predecessor():
    # at frame 2 (token 2) the best predecessor is "1" at frame 1 (a skip), better than both
    # staying on "2" and coming from the blank
    lp = np.log([[0.05, 0.9, 0.05], [0.3, 0.6, 0.1], [0.05, 0.05, 0.9]])
    assert ctc_forced_align(lp, [1, 2]).tolist() == [1, 1, 2]
    # here staying on "2" and coming from the blank tie (0.162 each) and beat the skip, whose
    # all-blank prefix (0.225 at frame 1) is not a predecessor of "2": stay wins the tie
    lp = np.log([[0.5, 0.4, 0.1], [0.45, 0.1, 0.45], [0.05, 0.05, 0.9]])
    assert ctc_forced_align(lp, [1, 2]).tolist() == [1, 2, 2]


def test_forced_align_prefers_stay_over_an_equal_skip():
    lp = np.log(np.array([[1 / 3] * 3] * 3 + [[0.05, 0.05, 0.9]]))
    assert ctc_forced_align(lp, [1, 2]).tolist() == [1, 2, 2, 2]
