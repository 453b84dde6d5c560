"""Streaming sample-rate conversion in numpy (windowed-sinc polyphase, Kaldi `LinearResample` style).

    r = Resampler(8000, 16000)
    out = r.accept(piece)        # any number of pieces, any sizes
    out_tail = r.flush()         # end of input: the last few samples (zero-padded on the right)

Output sample n sits at time n / out_rate; its value is sum_k x[k] * h(n / out_rate - k / in_rate)
with h a Hann-windowed sinc low-pass at 0.99 x the lower Nyquist frequency and `zeros` zero
crossings on each side. Times repeat every `up` outputs (`down` inputs) for up/down = out/in in
lowest terms, so there are only `up` distinct filters (phases), precomputed once. Streaming and
one-shot conversion give the same samples: an output is emitted only once every input it needs
has arrived, so the delay is half a filter (under 1 ms at 8-48 kHz). Samples before the start
of the stream are zeros. Total output length is floor(N_in * out_rate / in_rate).
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np


@lru_cache(maxsize=8)
def _filters(in_rate: int, out_rate: int, zeros: int, rolloff: float) -> tuple[np.ndarray, int, np.ndarray]:
    """The polyphase filter bank of one rate pair: (first input offset per phase (up,), taps,
    weights (up, taps) float32). Built once per rate pair and shared, read-only, by every
    `Resampler` of that pair: at 95,999 -> 16,000 Hz it takes tens of ms and several MB, and a
    server builds one per stream (8 pairs cached: at most a few tens of MB)."""
    g = gcd(in_rate, out_rate)
    up = out_rate // g
    cutoff = rolloff * 0.5 * min(in_rate, out_rate)  # Hz
    width = zeros / (2.0 * cutoff)  # seconds on each side of the output time
    # Phase p (outputs n = m*up + p): inputs k = m*down + first[p] + j, j < taps.
    t_out = np.arange(up) / out_rate  # (up,) seconds
    first = np.ceil((t_out - width) * in_rate).astype(np.int64)  # (up,)
    last = np.floor((t_out + width) * in_rate).astype(np.int64)  # (up,)
    taps = int((last - first).max()) + 1
    k = first[:, None] + np.arange(taps)[None, :]  # (up, taps) input indices for m = 0
    dt = t_out[:, None] - k / in_rate  # (up, taps) seconds between output and input sample
    window = np.where(np.abs(dt) < width, 0.5 * (1.0 + np.cos(np.pi * dt / width)), 0.0)
    weights = (window * 2.0 * cutoff * np.sinc(2.0 * cutoff * dt) / in_rate).astype(np.float32)
    first.flags.writeable = False
    weights.flags.writeable = False
    return first, taps, weights


class Resampler:
    """Stateful rate converter for float32 mono audio. in_rate == out_rate passes samples through."""

    def __init__(self, in_rate: int, out_rate: int, zeros: int = 6, rolloff: float = 0.99) -> None:
        for name, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
            if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
                raise ValueError(f"{name}={rate!r}: pass a positive integer rate in Hz, e.g. 16000")
        self.in_rate, self.out_rate = in_rate, out_rate
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self._received = 0  # input samples seen so far
        self._emitted = 0  # output samples produced so far
        self._buf = np.zeros(0, dtype=np.float32)  # input samples [self._buf_start, self._received)
        self._buf_start = 0
        if self.up == self.down:
            return
        self._first, self._taps, self._weights = _filters(in_rate, out_rate, zeros, rolloff)

    @property
    def identity(self) -> bool:
        return self.up == self.down

    def _input_span(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output indices n -> (first input index (len n), phase (len n))."""
        m, p = np.divmod(n, self.up)
        return m * self.down + self._first[p], p

    def _emit(self, upto: int) -> np.ndarray:
        """Produce outputs [self._emitted, upto) from the buffer (missing inputs read as zeros)."""
        if upto <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._emitted, upto, dtype=np.int64)
        start, phase = self._input_span(n)
        idx = start[:, None] + np.arange(self._taps)[None, :] - self._buf_start  # (n, taps) buffer positions
        valid = (idx >= 0) & (idx < self._buf.shape[0])
        if self._buf.size:
            x = np.where(valid, self._buf[np.clip(idx, 0, self._buf.shape[0] - 1)], np.float32(0.0))
        else:
            x = np.zeros(idx.shape, dtype=np.float32)
        out = np.einsum("nt,nt->n", x, self._weights[phase]).astype(np.float32)
        self._emitted = upto
        # Keep only the inputs a future output can still need.
        keep_from = int(self._input_span(np.array([upto]))[0][0])
        drop = min(max(keep_from - self._buf_start, 0), self._buf.shape[0])
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Feed (N,) float samples at in_rate; returns the output samples that became computable."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.identity:
            self._received += x.shape[0]
            self._emitted += x.shape[0]
            return x
        self._buf = np.concatenate([self._buf, x])
        self._received += x.shape[0]
        # Output n is computable when its last input index (start + taps - 1) has arrived.
        total = self._received * self.up // self.down  # never emit past the end of the signal
        lo, hi = self._emitted, total
        while lo < hi:  # largest n (exclusive bound) whose last tap < received; start is monotone in n
            mid = (lo + hi) // 2
            if int(self._input_span(np.array([mid]))[0][0]) + self._taps - 1 < self._received:
                lo = mid + 1
            else:
                hi = mid
        return self._emit(lo)

    def flush(self) -> np.ndarray:
        """End of input: the remaining outputs up to floor(N_in * out / in), zero-padding the right edge."""
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self._received * self.up // self.down)


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """One-shot conversion of (N,) float audio; equals streaming the same samples through `Resampler`."""
    r = Resampler(in_rate, out_rate)
    return np.concatenate([r.accept(samples), r.flush()])
