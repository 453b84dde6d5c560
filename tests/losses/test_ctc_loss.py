"""CTCLoss: a hand-computed case and agreement with torch."""
import math

import pytest
import torch
import torch.nn.functional as F

from ekd_compress.losses.ctc import CTCLoss


def test_two_frame_hand_value():
    # V = 2 (blank, a), target "a", T = 2: paths aa, a∅, ∅a
    probs = torch.tensor([[[0.4, 0.6], [0.7, 0.3]]])
    loss = CTCLoss()(probs.log(), torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    p = 0.6 * 0.3 + 0.6 * 0.7 + 0.4 * 0.3
    assert loss.item() == pytest.approx(-math.log(p), rel=1e-5)


def test_matches_torch_sum_over_batch():
    torch.manual_seed(0)
    B, T, V = 3, 12, 5
    lp = torch.randn(B, T, V).log_softmax(-1)
    out_lengths = torch.tensor([12, 10, 7])
    targets = torch.tensor([[1, 2, 3, 4], [2, 2, 0, 0], [4, 1, 3, 0]])
    target_lengths = torch.tensor([4, 2, 3])
    ours = CTCLoss()(lp, out_lengths, targets, target_lengths)
    ref = F.ctc_loss(lp.transpose(0, 1), targets, out_lengths, target_lengths, blank=0, reduction="sum") / B
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_infeasible_utterance_is_zeroed_not_inf():
    lp = torch.randn(1, 2, 4).log_softmax(-1)
    loss = CTCLoss()(lp, torch.tensor([2]), torch.tensor([[1, 1, 2]]), torch.tensor([3]))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_bad_lengths_named():
    lp = torch.randn(2, 4, 3).log_softmax(-1)
    with pytest.raises(ValueError, match="out_lengths"):
        CTCLoss()(lp, torch.tensor([5, 4]), torch.tensor([[1], [2]]), torch.tensor([1, 1]))
