"""Audio for `ekd_compress.serve.bench` and `ekd_compress.serve.soak`: recordings from a directory, or synthetic
speech-like clips (compute latency does not depend on what is said)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def load_audio_dir(directory: str | Path, limit: int = 20) -> list[tuple[np.ndarray, int]]:
    """*.wav (16-bit PCM, any rate; first channel) and, with soundfile installed, *.flac/*.ogg."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg"))[:limit]
    if not files:
        raise FileNotFoundError(f"no .wav/.flac files under {directory}; pass --audio DIR with some recordings")
    out = []
    for p in files:
        if p.suffix.lower() == ".wav":
            try:
                with wave.open(str(p), "rb") as w:
                    if w.getsampwidth() != 2:
                        raise ValueError(f"{p}: {8 * w.getsampwidth()}-bit WAV; convert to 16-bit PCM")
                    x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())[:, 0]
                    out.append((x.astype(np.float32) / 32768.0, w.getframerate()))
                    continue
            except wave.Error:
                pass
        import soundfile as sf  # non-PCM wav, flac, ogg

        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
        out.append((x[:, 0], sr))
    return out


def synthetic_audio(n: int = 4, seconds: float = 4.0, sr: int = 16000, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Speech-like clips: voiced bursts (harmonics of a gliding f0), noise bursts, pauses."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        parts, total = [], 0
        while total < seconds * sr:
            d = int(rng.uniform(0.15, 0.6) * sr)
            t = np.arange(d) / sr
            kind = rng.random()
            if kind < 0.55:
                f0 = rng.uniform(90, 220) * (1 + 0.2 * t / t[-1] * rng.uniform(-1, 1))
                phase = 2 * np.pi * np.cumsum(f0) / sr
                x = sum(np.sin(k * phase) / k for k in range(1, 12)) * rng.uniform(0.05, 0.3)
                x *= np.hanning(d)
            elif kind < 0.8:
                x = rng.standard_normal(d) * rng.uniform(0.01, 0.08) * np.hanning(d)
            else:
                x = rng.standard_normal(d) * 0.001
            parts.append(x.astype(np.float32))
            total += d
        clips.append((np.concatenate(parts)[: int(seconds * sr)], sr))
    return clips


def _fit(clip: tuple[np.ndarray, int], seconds: float) -> tuple[np.ndarray, int]:
    """Loop or cut a clip to `seconds`."""
    x, sr = clip
    n = int(seconds * sr)
    reps = -(-n // max(len(x), 1))
    return np.tile(x, reps)[:n], sr
