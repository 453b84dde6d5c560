"""Helpers for the data tests: tiny audio files made on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone(seconds: float, sampling_rate: int, freq: float = 440.0, amplitude: float = 0.3,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture
def write_wav():
    """``write_wav(path, seconds=1.0, sampling_rate=16000, freq=440, channels=1, format="WAV")``."""

    def _write(path, seconds: float = 1.0, sampling_rate: int = 16000, freq: float = 440.0,
               channels: int = 1, format: str = "WAV") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(seconds, sampling_rate, freq, channels=channels), sampling_rate,
                 subtype="PCM_16", format=format)
        return path

    return _write
