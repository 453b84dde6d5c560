"""Real-time factor: compute seconds spent per second of audio processed.

RTF = compute seconds / audio seconds; below 1 is faster than real time. Time is wall
clock (`time.perf_counter`). On an accelerator, pass `sync` (e.g.
`torch.cuda.synchronize`) so queued kernels finish before the clock is read.

    timer = RtfTimer(sync=torch.cuda.synchronize if cuda else None)
    for batch in loader:
        with timer.measure(audio_seconds=batch_duration_s):
            model(batch)
    print(timer.rtf)
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass
class RtfSpan:
    """One measured block; `audio_seconds` may be set inside the block if known late."""

    audio_seconds: float = 0.0
    compute_seconds: float = 0.0


class RtfTimer:
    """Accumulates audio seconds and compute seconds over many measured blocks."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.audio_seconds = 0.0
        self.compute_seconds = 0.0
        self.count = 0

    def add(self, audio_seconds: float, compute_seconds: float) -> None:
        """Record a block timed elsewhere (both in seconds, >= 0)."""
        for name, value in (("audio_seconds", audio_seconds), ("compute_seconds", compute_seconds)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        self.audio_seconds += float(audio_seconds)
        self.compute_seconds += float(compute_seconds)
        self.count += 1

    @contextmanager
    def measure(self, audio_seconds: float | None = None) -> Iterator[RtfSpan]:
        """Time the enclosed block against `audio_seconds` of audio.

        Yields an `RtfSpan`; set `span.audio_seconds` inside the block when the duration
        is only known there. A block that raises is not recorded.
        """
        span = RtfSpan(audio_seconds=float(audio_seconds or 0.0))
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        yield span
        if self.sync is not None:
            self.sync()
        span.compute_seconds = time.perf_counter() - start
        self.add(span.audio_seconds, span.compute_seconds)

    @property
    def rtf(self) -> float:
        """compute / audio seconds; NaN before any audio was recorded."""
        if self.audio_seconds <= 0:
            return math.nan
        return self.compute_seconds / self.audio_seconds

    def merge(self, other: "RtfTimer") -> "RtfTimer":
        """A new timer holding both timers' totals (e.g. from worker processes)."""
        out = RtfTimer(self.sync)
        out.audio_seconds = self.audio_seconds + other.audio_seconds
        out.compute_seconds = self.compute_seconds + other.compute_seconds
        out.count = self.count + other.count
        return out

    def reset(self) -> None:
        self.audio_seconds = self.compute_seconds = 0.0
        self.count = 0

    def to_dict(self) -> dict[str, float | int]:
        """{"rtf", "audio_s", "compute_s", "blocks"} for reports and metric logging."""
        return {"rtf": self.rtf, "audio_s": self.audio_seconds, "compute_s": self.compute_seconds, "blocks": self.count}

    def __repr__(self) -> str:
        return f"RtfTimer(rtf={self.rtf:.4f}, audio_s={self.audio_seconds:.2f}, compute_s={self.compute_seconds:.2f}, blocks={self.count})"
