"""EssenceKDLoss and DistillationLoss on hand-computed 2-frame, V = 3 examples."""
import math

import pytest
import torch

from ekd_compress.losses.ctc import CTCLoss
from ekd_compress.losses.essence import REST_ID, DistillationLoss, EssenceKDLoss, check_kd_fade, kd_fade_factor

# student posteriors for 2 frames, V = 3 (blank, a, b)
Q = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]


def student(q=Q):
    return torch.tensor([q]).log()  # (1, 2, 3)


def targets(rows):
    ids = torch.tensor([[[i for i, _ in r] for r in rows]])
    probs = torch.tensor([[[p for _, p in r] for r in rows]])
    return ids, probs


# renorm k = 2 targets: frame 0 top-1 is blank, frame 1 top-1 is "a"
RENORM = [[(0, 0.7), (1, 0.3)], [(1, 0.8), (2, 0.2)]]
KL0 = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.3)
KL1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.3)


def test_renorm_frame_mean():
    loss = EssenceKDLoss()(student(), torch.tensor([2]), *targets(RENORM))
    assert loss.item() == pytest.approx((KL0 + KL1) / 2, rel=1e-5)


def test_padding_frames_masked():
    loss = EssenceKDLoss()(student(), torch.tensor([1]), *targets(RENORM))
    assert loss.item() == pytest.approx(KL0, rel=1e-5)


@pytest.mark.parametrize("bw", [0.0, 0.5, 1.0])
def test_blank_weight(bw):
    loss = EssenceKDLoss(blank_weight=bw)(student(), torch.tensor([2]), *targets(RENORM))
    assert loss.item() == pytest.approx((bw * KL0 + KL1) / (bw + 1), rel=1e-5)


def test_temperature_scales_student_and_t_squared():
    T = 2.0
    loss = EssenceKDLoss(temperature=T)(student(), torch.tensor([2]), *targets(RENORM))
    qT = [[math.sqrt(x) / sum(math.sqrt(y) for y in row) for x in row] for row in Q]  # softmax(log q / 2)
    kl0 = 0.7 * math.log(0.7 / qT[0][0]) + 0.3 * math.log(0.3 / qT[0][1])
    kl1 = 0.8 * math.log(0.8 / qT[1][1]) + 0.2 * math.log(0.2 / qT[1][2])
    assert loss.item() == pytest.approx(T * T * (kl0 + kl1) / 2, rel=1e-5)


def test_residual_rest_bucket():
    # frame 0: blank + rest; frame 1: "a", blank listed too, + rest (rest student mass = q(b) = 0.3)
    rows = [[(0, 0.7), (REST_ID, 0.3)], [(1, 0.6), (REST_ID, 0.4)]]
    loss = EssenceKDLoss()(student(), torch.tensor([2]), *targets(rows))
    kl0 = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    kl1 = 0.6 * math.log(0.6 / 0.6) + 0.4 * math.log(0.4 / 0.4)
    assert loss.item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)
    rows = [[(0, 0.5), (1, 0.25), (REST_ID, 0.25)], [(0, 0.2), (2, 0.5), (REST_ID, 0.3)]]
    loss = EssenceKDLoss()(student(), torch.tensor([2]), *targets(rows))
    kl0 = 0.5 * math.log(0.5 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.25 * math.log(0.25 / 0.2)
    kl1 = 0.2 * math.log(0.2 / 0.1) + 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.6)
    assert loss.item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)


def test_residual_top1_blank_weight_skips_rest():
    # rest is the largest entry but the teacher's top-1 is "a": blank_weight must not drop the frame
    rows = [[(1, 0.4), (REST_ID, 0.6)], [(0, 0.9), (REST_ID, 0.1)]]
    loss = EssenceKDLoss(blank_weight=0.0)(student(), torch.tensor([2]), *targets(rows))
    kl0 = 0.4 * math.log(0.4 / 0.3) + 0.6 * math.log(0.6 / 0.7)
    assert loss.item() == pytest.approx(kl0, rel=1e-5)


def test_top_p_zero_padding_contributes_nothing():
    rows = [[(0, 1.0), (0, 0.0)], [(1, 0.75), (2, 0.25)]]
    loss = EssenceKDLoss()(student(), torch.tensor([2]), *targets(rows))
    kl1 = 0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.3)
    assert loss.item() == pytest.approx((math.log(1 / 0.5) + kl1) / 2, rel=1e-5)


def test_every_id_listed_with_rest_has_finite_gradient():
    lp = student().requires_grad_(True)
    rows = [[(0, 0.5), (1, 0.3), (2, 0.2), (REST_ID, 0.0)], [(1, 0.6), (2, 0.3), (0, 0.1), (REST_ID, 0.0)]]
    loss = EssenceKDLoss()(lp, torch.tensor([2]), *targets(rows))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


def test_utterance_reduction_sums_frames_over_batch():
    lp = torch.cat([student(), student()])  # B = 2
    ids, probs = targets(RENORM)
    ids, probs = torch.cat([ids, ids]), torch.cat([probs, probs])
    loss = EssenceKDLoss(reduction="utterance")(lp, torch.tensor([2, 1]), ids, probs)
    assert loss.item() == pytest.approx((KL0 + KL1 + KL0) / 2, rel=1e-5)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="temperature"):
        EssenceKDLoss(temperature=0)
    with pytest.raises(ValueError, match="blank_weight"):
        EssenceKDLoss(blank_weight=-1)
    ids, probs = targets(RENORM)
    with pytest.raises(ValueError, match="re-run the 'essence' stage"):
        EssenceKDLoss()(student(), torch.tensor([2]), ids[:, :1], probs[:, :1])
    with pytest.raises(ValueError, match="token table"):
        EssenceKDLoss()(student(), torch.tensor([2]), ids + 5, probs)


def test_distillation_loss_combines_parts():
    lp = student()
    tgt, tgt_len = torch.tensor([[1]]), torch.tensor([1])
    ids, probs = targets(RENORM)
    total, parts = DistillationLoss(lam=0.3, temperature=1.0)(lp, torch.tensor([2]), tgt, tgt_len, ids, probs)
    ctc = CTCLoss()(lp, torch.tensor([2]), tgt, tgt_len)
    # CTC by hand: paths "a a", "a ∅", "∅ a"
    assert ctc.item() == pytest.approx(-math.log(0.3 * 0.6 + 0.3 * 0.1 + 0.5 * 0.6), rel=1e-5)
    assert parts["ctc"].item() == pytest.approx(ctc.item())
    assert parts["kd"].item() == pytest.approx((KL0 + KL1) / 2, rel=1e-5)
    assert total.item() == pytest.approx(0.3 * ctc.item() + 0.7 * (KL0 + KL1) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="lam"):
        DistillationLoss(lam=1.5)


def _utterance_kd_by_loops(logits: list[list[list[float]]], lengths: list[int],
                           rows: list[list[list[tuple[int, float]]]], temperature: float) -> float:
    """T² · Σ_b Σ_{f < len_b} Σ_k p·(log p − log softmax(z_f / T)[id]) / B, with plain Python loops."""
    total = 0.0
    for b, utterance in enumerate(logits):
        for f in range(lengths[b]):
            scaled = [z / temperature for z in utterance[f]]
            log_norm = math.log(sum(math.exp(s) for s in scaled))
            for token, p in rows[b][f]:
                if p > 0:
                    total += p * (math.log(p) - (scaled[token] - log_norm))
    return temperature ** 2 * total / len(logits)


def test_utterance_reduction_golden_value_at_t2():
    """The reduction training uses ("utterance"), at T = 2: the T² factor, the tempered student,
    padding and the batch mean are all in the number (computed independently with loops)."""
    temperature = 2.0
    logits = [[[-0.69, -1.2, -1.6], [-2.3, -0.51, -1.2], [-1.0, -1.0, -1.0]],
              [[-0.2, -2.0, -3.0], [-1.5, -0.4, -2.2], [-0.3, -0.3, -4.0]]]
    lengths = [3, 2]  # the second utterance's last frame is padding
    rows = [[[(0, 0.7), (1, 0.3)], [(1, 0.8), (2, 0.2)], [(2, 0.6), (0, 0.4)]],
            [[(0, 0.9), (2, 0.1)], [(1, 0.5), (0, 0.5)], [(1, 1.0), (2, 0.0)]]]
    lp = torch.tensor(logits).log_softmax(-1)  # the student's log-probs, as the model returns them
    ids = torch.tensor([[[i for i, _ in r] for r in utt] for utt in rows])
    probs = torch.tensor([[[p for _, p in r] for r in utt] for utt in rows])
    loss = EssenceKDLoss(temperature=temperature, reduction="utterance")(lp, torch.tensor(lengths), ids, probs)
    want = _utterance_kd_by_loops(lp.tolist(), lengths, rows, temperature)
    assert want > 0.01, "the hand-computed example must not be trivially zero"
    assert loss.item() == pytest.approx(want, rel=1e-5), (
        f"utterance-reduction KD at T=2 is {loss.item():.6f}, expected {want:.6f} "
        f"(without T² it would be {want / temperature ** 2:.6f})")


@pytest.mark.parametrize("fade, progress, factor", [
    (None, 0.9, 1.0),
    ((0.5, 0.8), 0.0, 1.0), ((0.5, 0.8), 0.5, 1.0), ((0.5, 0.8), 0.65, 0.5), ((0.5, 0.8), 0.8, 0.0),
    ((0.5, 0.8), 1.0, 0.0), ((0.0, 1.0), 0.25, 0.75), ((0.3, 0.3), 0.29, 1.0), ((0.3, 0.3), 0.3, 0.0),
])
def test_kd_fade_factor_golden_values(fade, progress, factor):
    assert kd_fade_factor(progress, fade) == pytest.approx(factor)


@pytest.mark.parametrize("fade", [[0.8, 0.5], [0.0, 1.2], [-0.1, 0.5], [0.5], "0.5,0.8", [True, 1.0], None])
def test_check_kd_fade_refuses_bad_values_naming_them(fade):
    with pytest.raises(ValueError, match=r"kd_fade=.* is invalid; use \[start, end\] with 0 <= start <= end <= 1"):
        check_kd_fade(fade)


def test_check_kd_fade_returns_floats():
    assert check_kd_fade([0, 1]) == (0.0, 1.0)
