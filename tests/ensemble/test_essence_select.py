"""select_essence modes with golden values, cumulative top-k mass, blank argmax share."""
import math

import numpy as np
import pytest
import torch

from ekd_compress.ensemble.essence import blank_argmax_share, cumulative_topk_mass, select_essence
from ekd_compress.losses.essence import REST_ID

P = [0.6, 0.25, 0.1, 0.05]  # one frame, V = 4, blank most likely
LP = torch.tensor([[P]]).log()  # (1, 1, 4)
SQ = [math.sqrt(p) for p in P]
PT2 = [s / sum(SQ) for s in SQ]  # softmax(log P / 2) = [0.427, 0.276, 0.174, 0.123]


def rows(t):
    return t[0, 0].tolist()


def test_renorm():
    ids, probs = select_essence(LP, k=2, temperature=1.0, mode="renorm")
    assert ids.dtype == torch.int64 and probs.dtype == torch.float32 and ids.shape == (1, 1, 2)
    assert rows(ids) == [0, 1] and rows(probs) == pytest.approx([0.6 / 0.85, 0.25 / 0.85], rel=1e-5)


def test_renorm_temperature_before_selection():
    ids, probs = select_essence(LP, k=2, temperature=2.0, mode="renorm")
    assert rows(ids) == [0, 1]
    assert rows(probs) == pytest.approx([SQ[0] / (SQ[0] + SQ[1]), SQ[1] / (SQ[0] + SQ[1])], rel=1e-5)


def test_residual():
    ids, probs = select_essence(LP, k=2, temperature=1.0, mode="residual")
    assert rows(ids) == [0, 1, REST_ID] and rows(probs) == pytest.approx([0.6, 0.25, 0.15], rel=1e-5)
    ids, probs = select_essence(LP, k=1, temperature=2.0, mode="residual")
    assert rows(ids) == [0, REST_ID] and rows(probs) == pytest.approx([PT2[0], 1 - PT2[0]], rel=1e-5)


def test_top_p_set_grows_with_temperature():
    ids, probs = select_essence(LP, k=4, temperature=1.0, mode="top_p", top_p=0.8)
    assert rows(ids) == [0, 1, 0, 0] and rows(probs) == pytest.approx([0.6 / 0.85, 0.25 / 0.85, 0, 0], rel=1e-5)
    # at T = 2 the top-2 hold 0.70 < 0.8, so three ids are needed
    ids, probs = select_essence(LP, k=4, temperature=2.0, mode="top_p", top_p=0.8)
    s3 = sum(PT2[:3])
    assert rows(ids) == [0, 1, 2, 0] and rows(probs) == pytest.approx([PT2[0] / s3, PT2[1] / s3, PT2[2] / s3, 0])
    ids, probs = select_essence(LP, k=4, temperature=1.0, mode="top_p", top_p=0.5)
    assert rows(ids) == [0, 0, 0, 0] and rows(probs) == pytest.approx([1, 0, 0, 0])


def test_top_p_width_capped_by_max_k():
    ids, probs = select_essence(LP, k=4, temperature=2.0, mode="top_p", top_p=0.99, max_k=2)
    assert ids.shape == (1, 1, 2) and rows(ids) == [0, 1]
    assert rows(probs) == pytest.approx([SQ[0] / (SQ[0] + SQ[1]), SQ[1] / (SQ[0] + SQ[1])], rel=1e-5)


def test_k_equals_v_renorm_is_full_softmax():
    torch.manual_seed(0)
    lp = torch.randn(2, 5, 7).log_softmax(-1)
    ids, probs = select_essence(lp, k=7, temperature=1.5, mode="renorm")
    dense = torch.zeros(2, 5, 7).scatter(-1, ids, probs)
    assert torch.allclose(dense, torch.softmax(lp / 1.5, -1), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [({"k": 0}, "k=0"), ({"k": 5}, "k=5"), ({"k": 2, "mode": "x"}, "mode"),
                                           ({"k": 2, "temperature": 0}, "temperature"),
                                           ({"k": 2, "mode": "top_p", "top_p": 1.5}, "top_p")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_essence(LP, **kwargs)


def test_cumulative_mass_monotone_reaching_one_and_masked():
    lp = torch.tensor([[P, [0.1, 0.2, 0.3, 0.4]]]).log()  # frame 1 is padding
    mass = cumulative_topk_mass(lp, torch.tensor([1]), temperature=1.0, max_k=4)
    assert mass.shape == (4,) and mass == pytest.approx(np.cumsum(P))
    torch.manual_seed(0)
    lp = torch.randn(3, 6, 9).log_softmax(-1)
    mass = cumulative_topk_mass(lp, torch.tensor([6, 4, 2]), temperature=2.0)
    assert (np.diff(mass) >= 0).all() and mass[-1] == pytest.approx(1.0)
    assert cumulative_topk_mass(lp, torch.tensor([0, 0, 0]), 1.0, 3).tolist() == [0, 0, 0]


def test_blank_argmax_share():
    lp = torch.tensor([[P, [0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]]]).log()
    assert blank_argmax_share(lp, torch.tensor([2])) == pytest.approx(0.5)
    assert blank_argmax_share(lp, torch.tensor([3])) == pytest.approx(2 / 3)
