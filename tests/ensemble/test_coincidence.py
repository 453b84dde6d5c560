"""Token-matched spike coincidence on constructed argmax paths."""
import logging
import math

import numpy as np
import pytest

from ekd_compress.ensemble.coincidence import (CoincidenceError, check_coincidence, corpus_coincidence,
                                               spike_coincidence)

GUIDE = [0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0]


def shifted(path, d):
    return list(np.roll(path, d))


def test_shift_by_one_coincides():
    s = spike_coincidence(shifted(GUIDE, 1), GUIDE)
    assert s["member_to_guide"] == 1.0 and s["guide_to_member"] == 1.0 and s["both"] == 1.0
    assert s["member_spikes"] == 2 and s["guide_spikes"] == 2


def test_shift_by_three_does_not():
    s = spike_coincidence(shifted(GUIDE, 3), GUIDE)
    assert s["member_to_guide"] == 0.0 and s["both"] == 0.0
    assert spike_coincidence(shifted(GUIDE, 3), GUIDE, tolerance=3)["both"] == 1.0


def test_wrong_token_does_not():
    member = [0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0, 0]  # first spike on the right frame, wrong token
    s = spike_coincidence(member, GUIDE)
    assert s["member_to_guide"] == 0.5 and s["guide_to_member"] == 0.5 and s["both"] == 0.5


def test_directions_differ_and_both_pools_counts():
    member = [0, 3, 3, 3, 0, 0, 0, 0, 0, 0, 9, 0]  # 3 spikes of "3" near the guide's, one stray
    s = spike_coincidence(member, GUIDE)
    assert s["member_to_guide"] == pytest.approx(3 / 4) and s["guide_to_member"] == pytest.approx(1 / 2)
    assert s["both"] == pytest.approx((3 + 1) / (4 + 2))


def test_accepts_scores_and_rejects_length_mismatch():
    scores = np.eye(6)[GUIDE]  # (T, V) one-hot
    assert spike_coincidence(scores, GUIDE)["both"] == 1.0
    with pytest.raises(ValueError, match="11 frames but the guide.s has 12"):
        spike_coincidence(GUIDE[:-1], GUIDE)


def test_corpus_aggregates_counts_not_ratios():
    pairs = [(shifted(GUIDE, 1), GUIDE), ([0, 7, 0], [0, 0, 0])]  # 2+2 matched of 2+2, then 0 of 1
    s = corpus_coincidence(pairs)
    assert s["member_to_guide"] == pytest.approx(2 / 3) and s["guide_to_member"] == 1.0
    assert s["both"] == pytest.approx(4 / 5) and s["utterances"] == 2
    assert math.isnan(spike_coincidence([0, 0], [0, 0])["both"])


def test_check_coincidence(caplog):
    assert check_coincidence("tdnn", 0.9, 0.5, refuse=True)
    with pytest.raises(CoincidenceError, match=r"'tdnn'.*7\.0%.*50\.0%.*beta"):
        check_coincidence("tdnn", 0.07, 0.5, refuse=True)
    with caplog.at_level(logging.WARNING):
        assert not check_coincidence("lstm", 0.2, 0.5, refuse=False)
    assert "lstm" in caplog.text and "BELOW THRESHOLD" in caplog.text
    with pytest.raises(CoincidenceError, match="no non-blank spikes"):
        check_coincidence("lstm", float("nan"), 0.5, refuse=True)
