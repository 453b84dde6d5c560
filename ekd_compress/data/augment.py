"""Signal helpers for corpus building: resampling, coloured noise, SNR mixing, reverb.

All signals are 1-D ``float32`` numpy arrays in ``[-1, 1]``; lengths are in
samples, rates in Hz, times in seconds.  Randomness always comes from a
``numpy.random.Generator`` passed in, so results are reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

NOISE_COLORS = ("white", "pink", "brown")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling (``scipy.signal.resample_poly``, Kaiser window).

    :param audio: 1-D signal at ``orig_sr`` Hz.
    :return: the signal at ``target_sr`` Hz, ``float32``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    g = math.gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


def colored_noise(num_samples: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a ``1/f**a`` power spectrum, scaled to unit RMS.

    :param num_samples: length in samples.
    :param color: ``"white"`` (a=0), ``"pink"`` (a=1) or ``"brown"`` (a=2).
    """
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if color not in exponents:
        raise ValueError(f"Unknown noise colour {color!r}; valid colours are: {', '.join(NOISE_COLORS)}.")
    white = rng.standard_normal(num_samples)
    if exponents[color] > 0 and num_samples > 1:
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0  # avoid division by zero; the DC bin is removed below
        spec /= f ** (exponents[color] / 2.0)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n=num_samples)
    rms = float(np.sqrt(np.mean(white**2))) or 1.0
    return (white / rms).astype(np.float32)


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Return ``signal + g * noise`` with ``g`` chosen for the given SNR.

    The SNR is the ratio of mean powers over the whole signal (pauses
    included), in dB.  ``noise`` is tiled or cut to the signal's length.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if len(noise) < len(signal):
        noise = np.tile(noise, int(math.ceil(len(signal) / max(len(noise), 1))))
    noise = np.asarray(noise[: len(signal)], dtype=np.float32)
    p_sig = float(np.mean(signal.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_sig == 0.0 or p_noise == 0.0:
        return signal.copy()
    gain = math.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(np.float32)


def synthetic_rir(
    rt60: float, sampling_rate: int, rng: np.random.Generator, *, drr_db: float = 3.0
) -> np.ndarray:
    """Room impulse response: a direct path plus exponentially decaying noise.

    :param rt60: time (seconds) for the reverberant tail to decay by 60 dB.
    :param sampling_rate: Hz.
    :param drr_db: direct-to-reverberant energy ratio of the response, dB.
    :return: the response, ``round(rt60 * sampling_rate)`` samples long (at least 2).
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive (seconds), got {rt60}.")
    n = max(int(round(rt60 * sampling_rate)), 2)
    t = np.arange(n) / sampling_rate
    tail = rng.standard_normal(n) * np.exp(-3.0 * math.log(10.0) * t / rt60)  # -60 dB at rt60
    tail[0] = 0.0
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / float(np.sum(tail**2)))
    tail[0] = 1.0  # direct path, energy 1
    return tail.astype(np.float32)


def reverberate(signal: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir``, keep the input length and its RMS level."""
    signal = np.asarray(signal, dtype=np.float32)
    wet = fftconvolve(signal, rir)[: len(signal)]
    rms_dry = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2)))
    rms_wet = float(np.sqrt(np.mean(wet**2)))
    if rms_wet > 0:
        wet *= rms_dry / rms_wet
    return wet.astype(np.float32)


def normalize_peak(signal: np.ndarray, peak: float) -> np.ndarray:
    """Scale so that ``max(|signal|) == peak`` (silence is returned unchanged)."""
    m = float(np.max(np.abs(signal))) if len(signal) else 0.0
    return signal if m == 0.0 else (signal * (peak / m)).astype(np.float32)


def limit_peak(signal: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale down (never up) so that the signal does not clip."""
    m = float(np.max(np.abs(signal))) if len(signal) else 0.0
    return (signal * (peak / m)).astype(np.float32) if m > peak else signal


def read_mono(path: Union[str, Path]) -> tuple[np.ndarray, int]:
    """Read an audio file as mono ``float32`` (channels averaged); returns ``(audio, rate_hz)``."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(sr)


def write_pcm16(path: Union[str, Path], audio: np.ndarray, sampling_rate: int) -> None:
    """Write a mono 16-bit PCM WAV file (values clipped to ``[-1, 1]``)."""
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sampling_rate, subtype="PCM_16", format="WAV")
