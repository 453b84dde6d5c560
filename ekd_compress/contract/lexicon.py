"""Pronunciation lexicons (Kaldi / CMU format) and word -> phone transcription.

File format, one pronunciation per line (`lexicon.txt` of Kaldi, `cmudict`)::

    WORD PH1 PH2 ...        fields separated by spaces or tabs
    READ R IY1 D            a word may have several lines: its variants, in file order
    READ R EH1 D
    READ(2) R EH1 D         CMU's variant suffix `(n)` is removed from the word
    ;;; comment            lines starting with `;;;` and blank lines are skipped

Words are looked up case-insensitively (transcripts are normalised to lower case, lexicons
are usually upper case). With `strip_stress` (the default) the ARPAbet stress digits are
removed from every phone (`AH0`, `AH1` -> `AH`) and variants that become identical are merged.
The **first** pronunciation of a word is its training target and its reference for phone
error rates: the lexicon author's order puts the most common form first, and a fixed choice
keeps targets and references the same across training, scoring and serving.

Standard library only: the torch-free server loads it beside `tokens.txt`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

LEXICON_FILE = "lexicon.txt"

_VARIANT = re.compile(r"\(\d+\)$")
_STRESS = re.compile(r"(?<=[A-Za-z])[0-9]+$")


def strip_stress(phone: str) -> str:
    """`AH0` -> `AH`; a phone without a trailing stress digit is returned unchanged."""
    return _STRESS.sub("", phone)


@dataclass
class Lexicon:
    """Word -> pronunciations (tuples of phones), variants in file order.

    Attributes:
        prons: lower-cased word -> list of pronunciations, the first is the target.
        spelling: lower-cased word -> the word as the file spells it (for writing back).
        source: the file it was read from, if any.
    """

    prons: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    spelling: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path, strip_stress_digits: bool = True) -> "Lexicon":
        """Read a Kaldi/CMU lexicon file; errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"lexicon {path} does not exist; set tokens.lexicon to a `WORD PHONE ...` file")
        lex = cls(source=path)
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith(";;;"):
                continue
            fields = line.split()
            if len(fields) < 2:
                raise ValueError(f"{path}:{n}: word {fields[0]!r} has no phones; write `WORD PH1 PH2 ...` "
                                 "or delete the line")
            word = _VARIANT.sub("", fields[0])
            phones = tuple(strip_stress(p) if strip_stress_digits else p for p in fields[1:])
            lex.add(word, phones)
        if not lex.prons:
            raise ValueError(f"lexicon {path} holds no pronunciations; expected `WORD PH1 PH2 ...` lines")
        return lex

    def add(self, word: str, phones: Iterable[str]) -> None:
        """Append a pronunciation of `word` (a duplicate variant is ignored)."""
        phones = tuple(phones)
        if not phones:
            raise ValueError(f"pronunciation of {word!r} is empty; give at least one phone")
        key = word.lower()
        self.spelling.setdefault(key, word)
        variants = self.prons.setdefault(key, [])
        if phones not in variants:
            variants.append(phones)

    def save(self, path: str | Path) -> Path:
        """Write every pronunciation as `WORD PH1 PH2 ...` lines (variants in order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{self.spelling[w]} {' '.join(p)}\n" for w, ps in self.prons.items() for p in ps),
                        encoding="utf-8")
        return path

    # ------------------------------------------------------------------- lookup
    def __contains__(self, word: str) -> bool:
        return word.lower() in self.prons

    def __len__(self) -> int:
        return len(self.prons)

    @property
    def phones(self) -> list[str]:
        """Every phone of every pronunciation, sorted."""
        return sorted({p for ps in self.prons.values() for pron in ps for p in pron})

    def pronunciation(self, word: str) -> tuple[str, ...]:
        """The first (target) pronunciation of `word`; KeyError naming the word if it is missing."""
        try:
            return self.prons[word.lower()][0]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the lexicon"
                           f"{f' {self.source}' if self.source else ''}; add a `{word.upper()} PH1 PH2 ...` line") from None

    def transcribe(self, text: str) -> tuple[list[str], list[str]]:
        """Words separated by spaces -> (phones of the first pronunciations, out-of-lexicon words).

        Out-of-lexicon words contribute no phones; the caller decides whether that is an error.
        """
        phones: list[str] = []
        oov: list[str] = []
        for w in text.split():
            variants = self.prons.get(w.lower())
            if variants is None:
                oov.append(w)
            else:
                phones.extend(variants[0])
        return phones, oov

    def oov_counts(self, texts: Iterable[str]) -> Counter:
        """Out-of-lexicon word -> occurrences over `texts`."""
        return Counter(w for t in texts for w in t.split() if w.lower() not in self.prons)
