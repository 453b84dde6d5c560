"""Fusion weights tuned on dev: the simplex grid and the search."""
import math

import pytest
import torch

from ekd_compress.ensemble.tune import search_weights, simplex_grid
from ekd_compress.contract.ctc_decode import ctc_greedy_decode


def test_simplex_grid_covers_every_weight_vector_once():
    grid = simplex_grid(3, 0.1)
    assert len(grid) == math.comb(12, 2) == 66
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)
    assert len({tuple(round(x, 6) for x in w) for w in grid}) == 66
    assert [1.0, 0.0] in simplex_grid(2, 0.5) and [0.5, 0.5] in simplex_grid(2, 0.5)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(3, 0.3)


def frames(tokens, confidence):
    """(T, V=3) log-probs putting `confidence` on each frame's token (0 = blank)."""
    lp = torch.full((len(tokens), 3), (1 - confidence) / 2)
    lp[torch.arange(len(tokens)), torch.tensor(tokens)] = confidence
    return lp.log()


def decode(lp):
    return " ".join(str(i) for i in ctc_greedy_decode(lp[None].numpy())[0])


def test_search_prefers_the_member_that_is_right_and_reports_equal_weights():
    # member 0 is right with little confidence, member 1 confidently wrong: equal weights follow member 1
    refs = ["1 2", "2 1"]
    right = [frames([1, 0, 2], 0.5), frames([2, 0, 1], 0.5)]
    wrong = [frames([2, 0, 2], 0.9), frames([1, 0, 1], 0.9)]
    res = search_weights([right, wrong], refs, decode, step=0.25)
    assert res.wer == 0.0 and res.weights[0] > res.weights[1]
    assert res.uniform_wer == 50.0  # fused by equal weights: member 1's tokens win
    assert len(res.tried) == 5


def test_ties_go_to_equal_weights():
    same = [frames([1, 0], 0.8)]
    res = search_weights([same, same], ["1"], decode, step=0.5)
    assert res.wer == 0.0 and res.weights == [0.5, 0.5]  # [1, 0] and [0, 1] score the same


def test_forward_selection_fuses_complementary_members_and_drops_the_weak_one():
    from ekd_compress.ensemble.tune import forward_select

    refs = ["1", "1", "2"]
    # a: sure and right on utterances 0-1, unsure and wrong on 2; b the mirror image; c confidently wrong
    a = [frames([1], 0.9), frames([1], 0.9), frames([1], 0.6)]
    b = [frames([2], 0.6), frames([1], 0.9), frames([2], 0.9)]
    c = [frames([2], 0.9), frames([2], 0.9), frames([1], 0.9)]
    sel = forward_select([a, b, c], refs, decode, rounds=4, drop_ratio=1.5)
    assert sel.member_wers == pytest.approx([100 / 3, 100 / 3, 100.0])
    assert sel.dropped == [2]            # 100 % > 1.5 x 33.3 %
    assert sel.picks[0] == 0             # starts from the best member (ties: the first)
    assert sel.wer == 0.0                # a + b: each one's sure frames outvote the other's unsure ones
    assert sel.weights[2] == 0.0 and sel.weights[0] > 0 and sel.weights[1] > 0
    assert sum(sel.weights) == pytest.approx(1.0)
    assert sel.round_wers[0] == pytest.approx(100 / 3) and min(sel.round_wers) == 0.0
    assert sel.uniform_wer > 0.0         # equal weights let c spoil the average


def test_forward_selection_keeps_the_best_member_alone_when_fusion_does_not_help():
    from ekd_compress.ensemble.tune import forward_select

    good = [frames([1], 0.9), frames([2], 0.9)]
    bad = [frames([2], 0.95), frames([1], 0.95)]  # within the drop ratio is impossible: 100 % vs 0 %
    sel = forward_select([good, bad], ["1", "2"], decode, rounds=3, drop_ratio=10.0)
    assert sel.weights == [1.0, 0.0] and sel.wer == 0.0
    with pytest.raises(ValueError, match="rounds"):
        forward_select([good], ["1", "2"], decode, rounds=0)
