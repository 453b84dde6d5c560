"""Evaluation: WER (plain and Switchboard/eval2000 GLM-style), error rates, real-time factor.

CTC decoding lives in the runtime contract (`ekd_compress.contract.ctc_decode`), shared with
the server. Importing this package is light: numpy only; jiwer loads when first needed.
"""
from .rtf import RtfSpan, RtfTimer
from .swbd import FILLERS, GLM_MAP, normalize_swbd, score_eval2000, score_eval2000_results
from .wer import WerResult, compute_wer, merge_wer

__all__ = [
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
