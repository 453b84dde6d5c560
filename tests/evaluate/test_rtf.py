import math
import time

import pytest

from ekd_compress.evaluate import RtfTimer


def test_add_and_rtf():
    t = RtfTimer()
    assert math.isnan(t.rtf)
    t.add(audio_seconds=10.0, compute_seconds=2.0)
    t.add(audio_seconds=10.0, compute_seconds=3.0)
    assert t.rtf == pytest.approx(0.25)
    assert t.to_dict() == {"rtf": pytest.approx(0.25), "audio_s": 20.0, "compute_s": 5.0, "blocks": 2}


def test_measure_block_and_late_audio():
    calls = []
    t = RtfTimer(sync=lambda: calls.append(1))
    with t.measure(audio_seconds=1.0):
        time.sleep(0.02)
    with t.measure() as span:
        span.audio_seconds = 1.0
    assert t.count == 2 and t.audio_seconds == 2.0
    assert 0.02 <= t.compute_seconds < 1.0
    assert len(calls) == 4
    assert t.rtf == pytest.approx(t.compute_seconds / 2.0)


def test_failed_block_not_recorded_and_merge():
    t = RtfTimer()
    with pytest.raises(RuntimeError):
        with t.measure(1.0):
            raise RuntimeError("boom")
    assert t.count == 0
    other = RtfTimer()
    other.add(4.0, 1.0)
    t.add(4.0, 3.0)
    assert t.merge(other).rtf == pytest.approx(0.5)
    with pytest.raises(ValueError, match="audio_seconds"):
        t.add(-1.0, 1.0)
