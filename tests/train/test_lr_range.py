"""The learning-rate range test's schedule, smoothing and reading of a curve (the test itself runs
on a tiny experiment in tests/pipeline/test_distill_e2e.py)."""
import numpy as np
import pytest

from ekd_compress.train.lr_range import lr_schedule, read_curve, smooth


def test_schedule_is_geometric_from_min_to_max():
    lrs = lr_schedule(1e-5, 1e-1, 41)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1) and lrs[10] == pytest.approx(1e-4)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** 0.1)
    with pytest.raises(ValueError, match="0 < lr_min < lr_max"):
        lr_schedule(1e-1, 1e-5, 100)
    with pytest.raises(ValueError, match="at least 10 steps"):
        lr_schedule(1e-5, 1e-1, 5)


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([4.0, 4.0, 4.0]).tolist() == pytest.approx([4.0, 4.0, 4.0])  # no pull towards 0 at the start
    out = smooth([2.0, 0.0], beta=0.5)
    assert out.tolist() == pytest.approx([2.0, 0.5 * 0.5 * 2.0 / 0.75])


def test_reading_a_constructed_curve():
    lrs = lr_schedule(1e-5, 1.0, 101)  # 20 points per decade
    x = np.log10(lrs)
    # a start-up drop in the first steps, a fall that is steepest at 1e-3, the minimum at 1e-2, then a climb
    loss = 3.0 - np.tanh(2 * (x + 3)) + 3.0 * np.clip(x + 2, 0, None)
    loss[:5] += np.linspace(4.0, 0.0, 5)
    min_lr, steepest = read_curve(lrs, loss)
    assert min_lr == pytest.approx(1e-2)
    assert steepest == pytest.approx(1e-3)  # after the first 10 % of steps: not the start-up drop
    with pytest.raises(ValueError, match="at least 3 points"):
        read_curve([1e-3, 1e-2], [1.0, 2.0])
