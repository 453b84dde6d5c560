"""Evaluation: error rates (plain and Switchboard/eval2000 GLM-style) and scoring an
experiment's models (`scoring`, `on_data`: the `evaluate` command).

CTC decoding lives in the runtime contract (`ekd_compress.contract.ctc_decode`), shared with
the server. Importing this package is light: numpy only; jiwer and torch load when first needed
(`scoring` and `on_data` are not imported here).
"""
from .swbd import FILLERS, GLM_MAP, normalize_swbd, score_eval2000, score_eval2000_results
from .wer import WerResult, compute_wer, merge_wer

__all__ = [
    "FILLERS",
    "GLM_MAP",
    "normalize_swbd",
    "score_eval2000",
    "score_eval2000_results",
    "WerResult",
    "compute_wer",
    "merge_wer",
]
