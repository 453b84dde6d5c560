"""Switchboard / Hub5'00 (eval2000) scoring with GLM-style text normalisation.

NIST scores eval2000 with sclite, the stm reference (hub5e00.english.000405.stm) and
the GLM en20000405_hub5.glm: hesitations are optionally deletable, fragments need not
be recognised, and spelling variants map to one form. jiwer has no optional words, so
`normalize_swbd` rewrites both reference and hypothesis into one canonical form, in
this order:

1. Lower-case. `<contraction e_form="...">` tags (LDC transcripts) keep only the word.
2. Drop annotations: `<...>` tags (`<unk>`, `<b_aside>`, language tags), `[...]` and
   `[[...]]` events (`[noise]`, `[laughter]`, `[vocalized-noise]`, multi-word ones), and
   `{...}` events (`{breath}`). Brackets inside a word (`-[w]here`, `ju[st]-`) keep
   their letters: the word is `where`, and `just-` is a fragment.
3. Remove `(` `)` (sclite's optional-word marks; the word stays, so an optional word
   the hypothesis misses counts as a deletion -- the one place this departs from sclite),
   the punctuation `. , ? ! ; : " * ~` and the separators `--` `//`.
4. Per word: drop `%hesitation` and every `%`-word; drop fragments (a leading or
   trailing `-`, e.g. `th-`, `-ing`) from the reference only; map spellings through
   `GLM_MAP` (`ok`/`o.k.` -> `okay`, `uh-huh` -> `uhhuh`, `alright` -> `all right`,
   `gonna` -> `going to`, `wanna` -> `want to`, ...); split the remaining hyphenated
   words into parts (`x-ray` -> `x ray`, and a hypothesis fragment `th-` -> `th`);
   drop the fillers in `FILLERS` (`uh`, `um`, `eh`, `mm`, `hm`, `ah`, `huh`, `ha`, `er`,
   `oof`, `hee`, `ach`, `eee`, `ew`, and common spellings) from both sides, so they
   are neither errors nor credited.

Contractions (`i'm` / `i am`) are not expanded: the GLM lists them as alternatives,
which a one-best rewrite cannot express without guessing (`he's` = `he is`/`he has`).

Utterances whose reference holds `ignore_time_segment_in_scoring` are skipped, as
sclite does. `score_eval2000` splits utterances by id: ids starting with `sw` are the
Switchboard half, `en` the CallHome half (conversation ids `sw_4390`, `en_4156`;
utterance ids such as `en_4156-A_030185-030248` or `en_4156-A-000123-000456` start
with them).
"""
from __future__ import annotations

import re
from typing import Sequence

from .wer import WerResult, compute_wer

FILLERS: frozenset[str] = frozenset(
    {
        "uh", "um", "eh", "mm", "hm", "ah", "huh", "ha", "er", "oof", "hee", "ach", "eee", "ew",
        # common spellings in transcripts and model outputs
        "uhh", "uhm", "umm", "hmm", "mmm", "ahh", "erm", "hum",
    }
)

# spelling variants -> canonical form (may be several words); applied to both sides
GLM_MAP: dict[str, str] = {
    "ok": "okay", "o.k.": "okay", "o.k": "okay", "okey": "okay",
    "uh-huh": "uhhuh", "uh-hu": "uhhuh", "uhhuh": "uhhuh",
    "um-hum": "umhum", "um-hmm": "umhum", "mm-hmm": "umhum", "mm-hm": "umhum", "mhm": "umhum", "mmhmm": "umhum",
    "uh-uh": "uhuh", "huh-uh": "uhuh", "hm-mm": "uhuh",
    "alright": "all right", "all-right": "all right",
    "gonna": "going to", "wanna": "want to", "gotta": "got to", "kinda": "kind of", "sorta": "sort of",
    "'cause": "because", "cuz": "because",
    "yeah-yeah": "yeah yeah",
}

IGNORE_MARK = "ignore_time_segment_in_scoring"

_CONTRACTION_TAG = re.compile(r'<contraction\s+e_form="[^"]*"\s*>|<contraction[^>]*>')
_ANGLE = re.compile(r"<[^<>]*>")
_IN_WORD_BRACKET_BEFORE = re.compile(r"-?\[([a-z']+)\](?=[a-z'])")  # -[w]here -> where
_IN_WORD_BRACKET_AFTER = re.compile(r"(?<=[a-z'])\[([a-z']+)\]")  # ju[st]- -> just-
_SQUARE = re.compile(r"\[+[^\[\]]*\]+")
_CURLY = re.compile(r"\{[^{}]*\}")
_PUNCT = re.compile(r"--|//|[,?!;:\"*~()]")


def _map_glm(word: str) -> list[str]:
    return GLM_MAP.get(word, word).split()


def normalize_swbd(text: str, is_reference: bool = True) -> str:
    """Rewrite one transcript into the canonical scoring form (rules in the module docstring).

    Args:
        text: a reference or hypothesis transcript, any casing.
        is_reference: drop fragments (`th-`) as well; a hypothesis keeps their letters.

    Returns:
        Lower-case words separated by single spaces (possibly empty).
    """
    t = text.lower()
    t = _CONTRACTION_TAG.sub(" ", t)
    t = _ANGLE.sub(" ", t)
    t = _IN_WORD_BRACKET_BEFORE.sub(r"\1", t)
    t = _IN_WORD_BRACKET_AFTER.sub(r"\1", t)
    t = _SQUARE.sub(" ", t)
    t = _CURLY.sub(" ", t)
    t = _PUNCT.sub(" ", t)
    # GLM keys spelled with dots (o.k.) must match before dots are stripped
    words = [w for tok in t.split() for w in (GLM_MAP[tok].split() if tok in GLM_MAP else [tok])]
    words = " ".join(words).replace(".", " ").split()
    out: list[str] = []
    for w in words:
        if w.startswith("%"):
            continue
        if is_reference and (w.startswith("-") or w.endswith("-")):
            continue
        for mapped in _map_glm(w):
            for p in mapped.split("-"):
                if p and p not in FILLERS and p.strip("'"):
                    out.append(p)
    return " ".join(out)


def _subset(utt_id: str) -> str:
    key = utt_id.strip().lower()
    if key.startswith("sw"):
        return "swbd"
    if key.startswith("en"):
        return "callhome"
    raise ValueError(
        f"utterance id {utt_id!r} names neither part of eval2000; ids must start with the conversation id,"
        " 'sw_NNNN' (Switchboard) or 'en_NNNN' (CallHome)"
    )


def score_eval2000_results(
    utt_ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]
) -> dict[str, WerResult]:
    """As `score_eval2000`, but returns the `WerResult` objects (for SER, hits, merging)."""
    if not (len(utt_ids) == len(refs) == len(hyps)):
        raise ValueError(
            f"got {len(utt_ids)} ids, {len(refs)} references and {len(hyps)} hypotheses; pass one of each per utterance"
        )
    parts: dict[str, tuple[list[str], list[str]]] = {"swbd": ([], []), "callhome": ([], [])}
    for utt, ref, hyp in zip(utt_ids, refs, hyps):
        subset = _subset(utt)
        if IGNORE_MARK in ref.lower():
            continue
        parts[subset][0].append(normalize_swbd(ref, is_reference=True))
        parts[subset][1].append(normalize_swbd(hyp, is_reference=False))
    results = {name: compute_wer(r, h) for name, (r, h) in parts.items()}
    return {"all": results["swbd"].merge(results["callhome"]), **results}


def score_eval2000(utt_ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> dict[str, dict]:
    """Score eval2000 hypotheses with GLM-style normalisation, per part and overall.

    Args:
        utt_ids: utterance ids starting with the conversation id (`sw_...` or `en_...`).
        refs: raw reference transcripts (stm / LDC conventions are understood).
        hyps: raw hypotheses, same order.

    Returns:
        {"all": ..., "swbd": ..., "callhome": ...}, each a `WerResult.to_dict()`
        (`wer` percent, `sub`, `del`, `ins`, `words`); a part with no utterances has
        `words == 0` and `wer` NaN.
    """
    return {name: r.to_dict() for name, r in score_eval2000_results(utt_ids, refs, hyps).items()}
