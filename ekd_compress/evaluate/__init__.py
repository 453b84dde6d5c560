"""Evaluation: CTC decoding, WER (plain and Switchboard/eval2000 GLM-style), real-time factor.

Importing this package is light: numpy only; jiwer and torch load when first needed.
"""
from .decode import ctc_greedy_decode, ctc_prefix_beam_search, ids_to_text
from .rtf import RtfSpan, RtfTimer
from .swbd import FILLERS, GLM_MAP, normalize_swbd, score_eval2000, score_eval2000_results
from .wer import WerResult, compute_wer, merge_wer

__all__ = [
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "ids_to_text",
    "RtfSpan",
    "RtfTimer",
    "FILLERS",
    "GLM_MAP",
    "normalize_swbd",
    "score_eval2000",
    "score_eval2000_results",
    "WerResult",
    "compute_wer",
    "merge_wer",
]
