"""Feature specification: log-Mel filterbanks computed with kaldi-native-fbank.

One spec drives training (offline, whole utterances) and serving (online, chunk by
chunk), so the two cannot drift: `compute_fbank` is the offline path and
`OnlineFeatures` the streaming one, both calling kaldi-native-fbank's `OnlineFbank`.
Audio is float32 in [-1, 1] at `sample_rate` Hz; features are (frames, num_mel_bins)
float32 at one frame per `frame_shift_ms` milliseconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FeatureSpec:
    """Log-Mel filterbank settings (Kaldi conventions).

    sample_rate: Hz the model expects; other audio is resampled to it.
    num_mel_bins: feature dimension F.
    frame_length_ms / frame_shift_ms: analysis window and hop, milliseconds.
    dither: 0 for reproducible features (Kaldi's default 1.0 adds noise).
    low_freq / high_freq: Mel range in Hz; high_freq <= 0 means Nyquist + high_freq.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    low_freq: float = 20.0
    high_freq: float = 0.0
    snip_edges: bool = False

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"features.sample_rate={self.sample_rate}: must be a positive rate in Hz, e.g. 16000")
        if self.num_mel_bins <= 0:
            raise ValueError(f"features.num_mel_bins={self.num_mel_bins}: must be positive, e.g. 80")
        if self.frame_shift_ms <= 0 or self.frame_length_ms < self.frame_shift_ms:
            raise ValueError(
                f"features.frame_length_ms={self.frame_length_ms}, frame_shift_ms={self.frame_shift_ms}: "
                "need 0 < frame_shift_ms <= frame_length_ms (e.g. 25 and 10)"
            )

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_shift_ms

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSpec":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown feature setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**d)

    def hash(self) -> str:
        """Stable 12-hex-digit hash of the settings (keys caches of features and targets)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def kaldi_options(self):  # -> kaldi_native_fbank.FbankOptions
        import kaldi_native_fbank as knf

        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(self.sample_rate)
        opts.frame_opts.frame_length_ms = float(self.frame_length_ms)
        opts.frame_opts.frame_shift_ms = float(self.frame_shift_ms)
        opts.frame_opts.dither = float(self.dither)
        opts.frame_opts.snip_edges = bool(self.snip_edges)
        opts.mel_opts.num_bins = int(self.num_mel_bins)
        opts.mel_opts.low_freq = float(self.low_freq)
        opts.mel_opts.high_freq = float(self.high_freq)
        return opts


class OnlineFeatures:
    """Streaming fbank: feed audio pieces, pop the frames that became ready.

    Kaldi's online fbank scales samples like 16-bit PCM, so float audio in [-1, 1] is
    multiplied by 32768 here (and in `compute_fbank`), matching Kaldi/sherpa practice.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        import kaldi_native_fbank as knf

        self.spec = spec
        self._fbank = knf.OnlineFbank(spec.kaldi_options())
        self._popped = 0

    def accept(self, samples: np.ndarray) -> None:
        """samples: (N,) float in [-1, 1] at spec.sample_rate Hz."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._fbank.accept_waveform(float(self.spec.sample_rate), (samples * 32768.0).tolist())

    def finish(self) -> None:
        """Mark end of input so the last frames (snip_edges=False padding) become ready."""
        self._fbank.input_finished()

    def pop(self) -> np.ndarray:
        """Return the newly ready frames, (n, num_mel_bins) float32 (n may be 0), and release
        them from the extractor. (kaldi-native-fbank keeps every frame it computed until told
        to drop it: about 12 MB per 10 minutes of one 8 kHz stream, without bound.)"""
        ready = self._fbank.num_frames_ready
        n = ready - self._popped
        out = np.empty((max(n, 0), self.spec.num_mel_bins), dtype=np.float32)
        for i in range(n):
            out[i] = self._fbank.get_frame(self._popped + i)
        if n > 0:
            self._fbank.pop(n)  # frame indices stay absolute; only the storage is freed
        self._popped = ready
        return out


def compute_fbank(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Whole-utterance fbank: samples (N,) float in [-1, 1] -> (frames, num_mel_bins) float32."""
    online = OnlineFeatures(spec)
    online.accept(samples)
    online.finish()
    return online.pop()
