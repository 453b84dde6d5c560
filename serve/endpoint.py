"""Endpoint rules and the segments they close (the rules are described in `ekd_compress.serve.runtime`'s
docstring; `Stream` applies them). Re-exported by `ekd_compress.serve.runtime`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ekd_compress.serve.decode import Word


@dataclass(frozen=True)
class EndpointConfig:
    """Endpoint rules, seconds (see `ekd_compress.serve.runtime`'s docstring). enabled=False: one segment until finalize."""

    enabled: bool = True
    trailing_silence_s: float = 0.8
    no_speech_silence_s: float = 5.0
    max_utterance_s: float = 20.0


@dataclass
class Segment:
    """A final result: text, words with times (seconds from the stream start), and why it closed."""

    text: str
    words: list[Word]
    start: float
    end: float
    reason: str  # "trailing_silence" | "no_speech" | "max_length" | "end"
    token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "words": [w.to_dict() for w in self.words], "start": round(self.start, 3),
                "end": round(self.end, 3), "reason": self.reason}
