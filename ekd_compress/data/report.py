"""Data errors and the report of what an import kept and dropped.

Every importer in :mod:`ekd_compress.data` checks its input line by line.  A
problem is either raised as a :class:`DataError` (``on_error="raise"``) or
counted in a :class:`DataReport` (``on_error="skip"``) together with a few
example messages, so that nothing is ever dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

ON_ERROR_CHOICES = ("raise", "skip")

#: Reasons an utterance can be dropped, with a short human description.
REASONS: Dict[str, str] = {
    "missing_file": "required file or directory missing",
    "malformed_line": "malformed line",
    "duplicate_id": "duplicate id",
    "piped_command": "wav.scp entry is a shell command",
    "missing_audio": "audio file not found",
    "corrupt_audio": "audio file unreadable or corrupt",
    "mixed_sample_rate": "sample rate differs from the rest",
    "unknown_recording": "segment refers to an unknown recording",
    "bad_segment": "segment times outside the recording",
    "missing_text": "no transcript in text",
    "missing_speaker": "no speaker in utt2spk",
    "no_audio_entry": "transcript/speaker without audio entry",
    "empty_transcript": "empty transcript after normalisation",
    "bad_characters": "characters outside allowed_chars",
    "too_short": "shorter than min_duration",
    "too_long": "longer than max_duration",
}


class DataError(ValueError):
    """A problem in input data, located by file and line.

    ``str(err)`` is ``"{file}:{line}: {problem}; {fix}"`` (``"{file}: ..."`` when
    the problem concerns a whole file).
    """

    def __init__(
        self,
        file: Union[str, Path],
        line: Optional[int],
        problem: str,
        fix: str,
        reason: str = "malformed_line",
    ) -> None:
        self.file = str(file)
        self.line = line
        self.problem = problem
        self.fix = fix
        self.reason = reason
        super().__init__(format_problem(file, line, problem, fix))


def format_problem(file: Union[str, Path], line: Optional[int], problem: str, fix: str) -> str:
    """``"{file}:{line}: {problem}; {fix}"`` (line omitted when ``None``)."""
    loc = f"{file}:{line}" if line is not None else f"{file}"
    return f"{loc}: {problem}; {fix}"


def check_on_error(on_error: str) -> None:
    """Raise ``ValueError`` unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(
            f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}."
        )


@dataclass
class DataReport:
    """What an import kept and what it dropped, and why.

    :ivar source: the directory (or corpus) that was read.
    :ivar total: utterances seen (kept + dropped).
    :ivar kept: utterances turned into cuts.
    :ivar kept_seconds: total duration of the kept cuts, in seconds.
    :ivar dropped: number of dropped utterances per reason (keys of :data:`REASONS`).
    :ivar examples: up to ``max_examples`` full messages per reason.
    """

    source: str
    total: int = 0
    kept: int = 0
    kept_seconds: float = 0.0
    dropped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    max_examples: int = 5

    @property
    def kept_hours(self) -> float:
        """Total duration of kept cuts, in hours."""
        return self.kept_seconds / 3600.0

    @property
    def num_dropped(self) -> int:
        """Total number of dropped utterances."""
        return sum(self.dropped.values())

    def note(self, reason: str, message: str) -> None:
        """Remember ``message`` as an example of ``reason`` (counts are set separately)."""
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(message)

    def count(self, reasons: Mapping[str, int]) -> None:
        """Add dropped-utterance counts per reason."""
        for reason, n in reasons.items():
            if n:
                self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"{self.source}: {self.total} utterances, kept {self.kept} "
            f"({self.kept_hours:.3f} h), dropped {self.num_dropped}"
        ]
        for reason in sorted(self.dropped, key=lambda r: (-self.dropped[r], r)):
            desc = REASONS.get(reason, reason)
            lines.append(f"  {reason} ({desc}): {self.dropped[reason]}")
            for msg in self.examples.get(reason, [])[:3]:
                lines.append(f"      e.g. {msg}")
        problems_only = sorted(set(self.examples) - set(self.dropped))
        for reason in problems_only:  # problems that dropped no utterance (e.g. stray lines)
            lines.append(f"  {reason} ({REASONS.get(reason, reason)}): no utterance dropped")
            for msg in self.examples[reason][:3]:
                lines.append(f"      e.g. {msg}")
        return "\n".join(lines)
