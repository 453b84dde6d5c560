"""Losses by name and weight: the registry, the weighted sum, and its argument checks."""
import pytest
import torch

from ekd_compress.losses.compose import LOSSES, WeightedLoss, check_weights
from ekd_compress.losses.ctc import CTCLoss
from ekd_compress.losses.essence import EssenceKDLoss
from ekd_compress.losses.guide import GuideAlignmentLoss


def batch():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(2, 6, 4, generator=g).log_softmax(-1)
    ids = torch.randn(2, 6, 4, generator=g).topk(2, dim=-1).indices
    probs = torch.full((2, 6, 2), 0.5)
    return log_probs, torch.tensor([6, 5]), {
        "targets": torch.tensor([[1, 2], [3, 0]]), "target_lengths": torch.tensor([2, 1]),
        "align": torch.tensor([[0, 1, 1, 0, 2, 0], [3, 3, 0, 0, 0, -1]]), "kd_ids": ids, "kd_probs": probs,
    }


def test_the_built_in_losses_are_registered_by_name():
    check_weights({"ctc": 1.0})  # loads the built-in losses
    assert LOSSES["ctc"] is CTCLoss and LOSSES["guide_ce"] is GuideAlignmentLoss
    assert LOSSES["essence_kd"] is EssenceKDLoss


def test_weighted_sum_is_the_sum_of_each_loss_times_its_weight():
    log_probs, lengths, b = batch()
    loss = WeightedLoss({"ctc": 0.3, "guide_ce": 2.0, "essence_kd": 0.7},
                        {"essence_kd": {"temperature": 2.0, "reduction": "utterance"}})
    total, parts = loss(log_probs, lengths, b)
    ctc = CTCLoss()(log_probs, lengths, b["targets"], b["target_lengths"])
    guide = GuideAlignmentLoss()(log_probs, b["align"])
    kd = EssenceKDLoss(temperature=2.0, reduction="utterance")(log_probs, lengths, b["kd_ids"], b["kd_probs"])
    assert list(parts) == ["ctc", "guide_ce", "essence_kd"]
    for got, want in ((parts["ctc"], ctc), (parts["guide_ce"], guide), (parts["essence_kd"], kd)):
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.3 * ctc.item() + 2.0 * guide.item() + 0.7 * kd.item(), rel=1e-6)


def test_weights_are_checked():
    with pytest.raises(ValueError, match="loss 'kl' is unknown; use one of"):
        WeightedLoss({"ctc": 0.5, "kl": 0.5})
    with pytest.raises(ValueError, match="loss weight ctc=-1 is invalid"):
        check_weights({"ctc": -1})
    with pytest.raises(ValueError, match="at least one loss"):
        check_weights({})
