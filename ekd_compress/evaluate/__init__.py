"""Evaluation: CTC decoding, error rates (plain and Switchboard/eval2000 GLM-style), and scoring
an experiment's models (`scoring`, `on_data`: the `evaluate` command).

Importing this package is light: numpy only; jiwer and torch load when first needed
(`scoring` and `on_data` are not imported here).
"""
from .decode import ctc_greedy_decode, ctc_prefix_beam_search, ids_to_text
from .swbd import FILLERS, GLM_MAP, normalize_swbd, score_eval2000, score_eval2000_results
from .wer import WerResult, compute_wer, merge_wer

__all__ = [
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "ids_to_text",
    "FILLERS",
    "GLM_MAP",
    "normalize_swbd",
    "score_eval2000",
    "score_eval2000_results",
    "WerResult",
    "compute_wer",
    "merge_wer",
]
