"""Spike coincidence: do two CTC models fire the same token on (nearly) the same frame?

Fusing CTC posteriors frame by frame only works when the members' spikes coincide
(Kurata & Audhkhasi, Interspeech 2019; Takashima et al. 2018). Unguided members fire
several frames apart and their average collapses; guided ones (trained with frame CE to a
guide's alignment, `ekd_compress.losses.guide`) coincide. Measured per token:

    a spike     = a frame whose argmax is not the blank (every such frame counts)
    coincides   = the other path has a spike of the *same token* within ±tolerance frames
    member_to_guide = coinciding member spikes / member spikes
    guide_to_member = coinciding guide spikes / guide spikes
    both            = (coinciding member spikes + coinciding guide spikes)
                      / (member spikes + guide spikes)       (pooled counts, not a mean)

"Any non-blank spike within ±1" is a weak test (each word is a burst of consecutive
tokens), hence the token match. A ratio with no spikes to count is NaN.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Union

import numpy as np

from ekd_compress.contract.tokens import BLANK_ID

log = logging.getLogger(__name__)


class CoincidenceError(RuntimeError):
    """A member's spikes do not coincide with the guide's well enough to be fused."""


def _path(name: str, x: Union[np.ndarray, list, object]) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2:  # (T, V) scores -> argmax path
        a = a.argmax(-1)
    if a.ndim != 1:
        raise ValueError(f"{name} of shape {a.shape} is not a (frames,) argmax path or (frames, vocab) scores")
    return a.astype(np.int64)


def _matched(src: np.ndarray, other: np.ndarray, tolerance: int, blank: int) -> tuple[int, int]:
    """(spikes in src, src spikes with the same token in `other` within ±tolerance frames)."""
    spikes = src != blank
    T = len(src)
    hit = np.zeros(T, dtype=bool)
    for d in range(-tolerance, tolerance + 1):  # compare src[t] with other[t + d]
        lo, hi = max(0, -d), min(T, T - d)
        if lo < hi:
            hit[lo:hi] |= src[lo:hi] == other[lo + d:hi + d]
    return int(spikes.sum()), int((hit & spikes).sum())


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _stats(m_spikes: int, m_hit: int, g_spikes: int, g_hit: int) -> dict[str, float]:
    return {
        "member_to_guide": _ratio(m_hit, m_spikes),
        "guide_to_member": _ratio(g_hit, g_spikes),
        "both": _ratio(m_hit + g_hit, m_spikes + g_spikes),
        "member_spikes": m_spikes,
        "guide_spikes": g_spikes,
        "member_matched": m_hit,
        "guide_matched": g_hit,
    }


def _counts(member_path, guide_path, tolerance: int, blank: int) -> tuple[int, int, int, int]:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance={tolerance!r} is invalid; use a frame count >= 0 (1 = ±1 output frame)")
    m, g = _path("member_path", member_path), _path("guide_path", guide_path)
    if len(m) != len(g):
        raise ValueError(f"member path has {len(m)} frames but the guide's has {len(g)}; compare models with "
                         "the same subsampling on the same utterance")
    m_spikes, m_hit = _matched(m, g, tolerance, blank)
    g_spikes, g_hit = _matched(g, m, tolerance, blank)
    return m_spikes, m_hit, g_spikes, g_hit


def spike_coincidence(member_path, guide_path, tolerance: int = 1, blank: int = BLANK_ID) -> dict[str, float]:
    """Coincidence of one utterance's argmax paths, each (T,) int token ids (or (T, V) scores).

    -> {member_to_guide, guide_to_member, both, member_spikes, guide_spikes,
        member_matched, guide_matched} (ratios in [0, 1] or NaN, counts as ints).
    """
    return _stats(*_counts(member_path, guide_path, tolerance, blank))


def corpus_coincidence(pairs: Iterable[tuple[object, object]], tolerance: int = 1, blank: int = BLANK_ID) -> dict[str, float]:
    """Coincidence over many utterances [(member_path, guide_path), ...]: the spike and match
    counts are summed over utterances before dividing (long utterances weigh more), the same
    keys as `spike_coincidence` plus `utterances`."""
    totals = [0, 0, 0, 0]
    n = 0
    for member_path, guide_path in pairs:
        for i, c in enumerate(_counts(member_path, guide_path, tolerance, blank)):
            totals[i] += c
        n += 1
    out = _stats(*totals)
    out["utterances"] = n
    return out


def check_coincidence(name: str, value: float, threshold: float, refuse: bool = True, tolerance: int = 1) -> bool:
    """Return True when member `name`'s coincidence `value` (e.g. `both`) reaches `threshold`.

    Below it (or NaN: no spikes at all), raise CoincidenceError when `refuse`, else log a
    loud warning and return False.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"coincidence threshold={threshold!r} is invalid; use a share in [0, 1], e.g. 0.6")
    value = float(value)
    if value >= threshold:
        return True
    if math.isnan(value):
        what = (f"member {name!r} and the guide emit no non-blank spikes to compare (all-blank output); "
                "the member did not learn: train it longer, or guided with a larger beta (members[].beta)")
    else:
        what = (f"member {name!r}: only {value:.1%} of its spikes coincide with the guide's (same token within "
                f"±{tolerance} frames), below the threshold {threshold:.1%}; fusing it would blur the "
                "ensemble's spikes. "
                "Fix: train the member guided by the guide's alignment with a larger beta (members[].beta, e.g. "
                f"0.3 -> 1.0), or drop it from the ensemble")
    if refuse:
        raise CoincidenceError(what + " (or lower distill.coincidence_threshold / set "
                                      "distill.refuse_below_threshold=false to fuse anyway)")
    bar = "!" * 78
    log.warning("\n%s\nSPIKE COINCIDENCE BELOW THRESHOLD: %s\n%s", bar, what, bar)
    return False
