"""Transcript normalisers, registered by name.

Every corpus spells its transcripts its own way (case, punctuation, noise tags,
partial words, filler spellings).  A *normaliser* is a plain ``str -> str``
function that maps one transcript to the form the models are trained on.  They
are looked up by name so that recipes can say ``text_normalizer: swbd``::

    >>> get_normalizer("lower")("Hello,  World! It's me.")
    "hello world it's me"
    >>> get_normalizer("swbd")("[laughter] i th[e]- think %UH {breath} um-hum")
    'i think uh mm-hmm'

Registered names:

``"none"``
    Identity: the text is returned unchanged.
``"lower"``
    Lower-case; hyphens, dashes and slashes become spaces; every other
    punctuation character except the apostrophe is removed; runs of white
    space collapse to one space.  Letters of any script and digits are kept.
``"upper"``
    As ``"lower"`` but upper-case.
``"swbd"``
    Switchboard-1 (MS98 transcripts) and eval2000 (LDC2002T43) conventions,
    applied in this order:

    * lower-case;
    * eval2000 markup: ``<contraction e_form="...">we're`` keeps ``we're``,
      ``((word))`` (uncertain) keeps ``word``, ``(( ))`` is removed,
      ``%uh`` / ``%um`` lose the ``%``;
    * ``[laughter-yes]`` (word said while laughing) keeps ``yes``;
      ``[bocket/bucket]`` (mispronunciation) keeps the intended ``bucket``;
    * noise and event tags are removed: anything in square brackets
      (``[noise]``, ``[laughter]``, ``[vocalized-noise]``, ``[silence]``...),
      ``{breath}``-style tags from :data:`NOISE_WORDS`, ``<unk>``, ``<b_aside>``;
      ``{word}`` (an MS98 coinage) keeps ``word``;
    * partial words (``th[e]-``, ``-[th]at``, ``ha-``, ``-ing``) are **dropped**;
      a word with omitted sounds that is not a fragment (``[be]cause``) keeps
      what was said (``cause``);
    * ``_1`` pronunciation-variant suffixes are removed and ``t._v.`` style
      spelled letters become ``t v``;
    * fillers are **kept**, with one spelling each: ``uh``, ``um``, ``hm``,
      ``uh-huh``, ``mm-hmm`` (for ``um-hum``, ``mhm``, ``mm-hm``...),
      ``huh-uh``; they are frequent in conversational speech and a CTC model
      should emit them rather than hallucinate words.
    * only ``a-z``, the apostrophe and word-internal hyphens remain.
``"swbd-score"``
    ``"swbd"`` and then fillers removed as well, which approximates the
    eval2000 scoring rules (NIST GLM: fillers and fragments are optionally
    deletable) for computing WER.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Dict

Normalizer = Callable[[str], str]

_REGISTRY: Dict[str, Normalizer] = {}


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Decorator that registers a normaliser under ``name`` (overwriting is an error)."""

    def wrap(fn: Normalizer) -> Normalizer:
        if name in _REGISTRY:
            raise ValueError(f"A text normaliser named {name!r} is already registered.")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_normalizers() -> list[str]:
    """Names accepted by :func:`get_normalizer`, sorted."""
    return sorted(_REGISTRY)


def get_normalizer(name: str) -> Normalizer:
    """Return the normaliser registered as ``name``.

    :raises ValueError: for an unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown text normaliser {name!r}; valid names are: "
            f"{', '.join(available_normalizers())}."
        ) from None


_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


@register_normalizer("none")
def normalize_none(text: str) -> str:
    """Identity normaliser."""
    return text


def _strip_punctuation(text: str) -> str:
    out = []
    for ch in text:
        if ch == "'" or ch.isalnum() or ch.isspace():
            out.append(ch)
        elif ch in "-\u2010\u2011\u2012\u2013\u2014/":
            out.append(" ")
        elif ch in "\u2018\u2019\u02bc":  # typographic apostrophes
            out.append("'")
        elif unicodedata.category(ch).startswith(("P", "S")):
            continue  # punctuation and symbols are dropped
        else:
            out.append(ch)  # combining marks etc. stay attached to their letter
    return "".join(out)


def _drop_bare_apostrophes(text: str) -> str:
    # Apostrophes stay inside and around words ("it's", "dogs'", "'cause"),
    # but a token made only of apostrophes (a stray quote) is removed.
    return " ".join(w for w in text.split() if w.strip("'"))


@register_normalizer("lower")
def normalize_lower(text: str) -> str:
    """Lower-case, punctuation except apostrophes removed, spaces collapsed."""
    return _drop_bare_apostrophes(_collapse(_strip_punctuation(text.lower())))


@register_normalizer("upper")
def normalize_upper(text: str) -> str:
    """As :func:`normalize_lower` but upper-case."""
    return normalize_lower(text).upper()


#: Event tags written in braces or brackets in Switchboard / eval2000 / CALLHOME.
NOISE_WORDS = frozenset(
    """noise laughter laugh vocalized-noise silence breath lipsmack lip_smack cough
    sneeze sigh yawn click static background distortion throat_clear
    throat-clear inhale exhale sniff mouth-noise mouthnoise music""".split()
)

#: Filler spellings mapped to one canonical spelling each.
FILLERS: Dict[str, str] = {
    "uh": "uh",
    "ah": "uh",
    "um": "um",
    "umm": "um",
    "hm": "hm",
    "hmm": "hm",
    "mm": "hm",
    "uh-huh": "uh-huh",
    "um-hum": "mm-hmm",
    "mm-hmm": "mm-hmm",
    "mm-hm": "mm-hmm",
    "mhm": "mm-hmm",
    "hm-hmm": "mm-hmm",
    "uh-hum": "mm-hmm",
    "huh-uh": "huh-uh",
    "uh-uh": "huh-uh",
}

_CONTRACTION = re.compile(r'<contraction(?:\s+\w+="[^"]*")*\s*>')
_ANGLE_TAG = re.compile(r"<[^>\s]*>")
_UNCERTAIN = re.compile(r"\(\(([^()]*)\)\)")
_LAUGH_WORD = re.compile(r"\[laughter-([^\]\s]+)\]")
_MISPRONOUNCED = re.compile(r"\[[^\]/\s]*/([^\]\s]+)\]")
_BRACES = re.compile(r"\{([^{}\s]*)\}")
_BRACKETS_ONLY = re.compile(r"^\[[^\]]*\]$")
_KEEP = re.compile(r"[^a-z' -]")


def _swbd_token(tok: str) -> str | None:
    """Normalise one whitespace-separated token; ``None`` drops it."""
    if _BRACKETS_ONLY.match(tok):
        return None  # [noise], [silence], [vocalized-noise], ...
    tok = re.sub(r"_\d+$", "", tok)  # i_1 -> i
    partial = tok.endswith("-") or tok.startswith("-")
    if partial:
        return None
    tok = re.sub(r"\[[^\]]*\]", "", tok)  # [be]cause -> cause
    tok = tok.replace("._", " ").replace("_", " ").replace(".", "")
    tok = _KEEP.sub("", tok).strip("-")
    return tok or None


def _swbd(text: str, *, drop_fillers: bool) -> str:
    text = text.lower()
    text = _CONTRACTION.sub(" ", text)
    text = _UNCERTAIN.sub(r" \1 ", text)
    text = _LAUGH_WORD.sub(r"\1", text)
    text = _MISPRONOUNCED.sub(r"\1", text)
    text = _BRACES.sub(lambda m: " " if m.group(1) in NOISE_WORDS else m.group(1), text)
    text = _ANGLE_TAG.sub(" ", text)  # <unk>, <b_aside>, <e_aside>
    text = text.replace("%", "")
    words = []
    for raw in text.split():
        for tok in (_swbd_token(raw) or "").split():
            tok = FILLERS.get(tok, tok)
            if drop_fillers and tok in FILLERS.values():
                continue
            words.append(tok)
    return " ".join(words)


@register_normalizer("swbd")
def normalize_swbd(text: str) -> str:
    """Switchboard / eval2000 normaliser; fillers kept (see module docstring)."""
    return _swbd(text, drop_fillers=False)


@register_normalizer("swbd-score")
def normalize_swbd_score(text: str) -> str:
    """Switchboard normaliser for scoring: also removes fillers."""
    return _swbd(text, drop_fillers=True)
