"""Guide alignment loss (frame CE) and Viterbi CTC forced alignment."""
import math
import time

import numpy as np
import pytest
import torch

from ekd_compress.losses.guide import GuideAlignmentLoss, ctc_forced_align


def test_guide_ce_hand_value_ignores_padding():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]],
                          [[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]])
    align = torch.tensor([[0, 2], [2, -1]])
    loss = GuideAlignmentLoss()(probs.log(), align)
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.8)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    per_utt = GuideAlignmentLoss(reduction="utterance")(probs.log(), align)  # sum over frames / B=2
    assert per_utt.item() == pytest.approx(expected * 3 / 2, rel=1e-6)


def test_guide_ce_all_ignored_is_zero_and_shape_checked():
    lp = torch.randn(1, 3, 4).log_softmax(-1)
    assert GuideAlignmentLoss()(lp, torch.full((1, 3), -1)).item() == 0.0
    with pytest.raises(ValueError, match="align"):
        GuideAlignmentLoss()(lp, torch.zeros(1, 4, dtype=torch.long))


def peaky(path, V, high=0.9):
    """(T, V) log-probs with `high` on the given label per frame, the rest spread evenly."""
    T = len(path)
    p = np.full((T, V), (1 - high) / (V - 1))
    p[np.arange(T), path] = high
    return np.log(p)


def test_forced_align_recovers_constructed_path():
    path = [0, 1, 1, 0, 2, 0, 2, 3, 0]
    got = ctc_forced_align(peaky(path, 5), [1, 2, 2, 3])
    assert got.dtype == np.int64 and got.tolist() == path


def test_forced_align_obeys_targets_over_argmax():
    # the argmax says blank everywhere; the alignment must still emit "1 1" with a blank between
    lp = peaky([0, 0, 0, 0], 3)
    lp[0, 1] = lp[3, 1] = math.log(0.08)  # token 1 likelier on frames 0, 3 (0.08) than 1, 2 (0.05)
    got = ctc_forced_align(torch.tensor(lp), torch.tensor([1, 1]))
    assert got.tolist() == [1, 0, 0, 1]


def test_forced_align_tight_repeats_and_too_short():
    assert ctc_forced_align(peaky([0, 0, 0], 3), [1, 1]).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="needs at least 3"):
        ctc_forced_align(peaky([0, 0], 3), [1, 1])
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_align(peaky([0, 0], 3), [0])
    assert ctc_forced_align(peaky([1, 0], 3), []).tolist() == [0, 0]


def test_forced_align_long_utterance_is_valid_path():
    rng = np.random.default_rng(0)
    T, V, S = 400, 30, 50
    lp = np.log(rng.dirichlet(np.ones(V) * 0.3, size=T))
    y = rng.integers(1, V, size=S)
    start = time.perf_counter()
    path = ctc_forced_align(lp, y)
    elapsed = time.perf_counter() - start
    collapsed = [int(c) for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
    assert collapsed == y.tolist() and len(path) == T
    print(f"forced alignment T={T} S={S}: {elapsed * 1e3:.1f} ms")


@pytest.mark.parametrize("targets", [[1, 2], [1, 1], [2]])
def test_forced_align_matches_brute_force(targets):
    import itertools

    rng = np.random.default_rng(len(targets))
    T, V = 5, 3
    lp = np.log(rng.dirichlet(np.ones(V), size=T))

    def collapse(p):
        return [c for i, c in enumerate(p) if c != 0 and (i == 0 or c != p[i - 1])]

    best = max((sum(lp[t, c] for t, c in enumerate(p)), p) for p in itertools.product(range(V), repeat=T)
               if collapse(p) == targets)
    got = ctc_forced_align(lp, targets)
    assert tuple(got.tolist()) == best[1]
