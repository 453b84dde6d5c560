"""Corpora to lhotse CutSets: Kaldi directories, FSDD digits, synthetic espeak-ng speech, Switchboard.

Typical use::

    from ekd_compress.data import make_synthetic_corpus, load_kaldi_dir

    dirs = make_synthetic_corpus("data/synth", hours=0.3, seed=0)
    cuts, report = load_kaldi_dir(dirs["train"], text_normalizer="lower", on_error="skip")
    print(report.summary())
"""

from ekd_compress.data.augment import add_noise, colored_noise, resample, reverberate, synthetic_rir
from ekd_compress.data.espeak import espeak_synthesize
from ekd_compress.data.fsdd import (DIGIT_WORDS, FsddRecording, make_digit_strings, prepare_fsdd, scan_fsdd,
                                    split_fsdd)
from ekd_compress.data.kaldi import load_kaldi_dir, read_kaldi_table, write_kaldi_dir
from ekd_compress.data.report import REASONS, DataError, DataReport
from ekd_compress.data.sphere import enable_sphere_fallback
from ekd_compress.data.switchboard import load_switchboard_cuts, prepare_switchboard_corpus
from ekd_compress.data.synthetic import (SentenceSampler, Voice, available_voices, load_vocabulary,
                                         make_synthetic_corpus, split_voices)
from ekd_compress.data.text import available_normalizers, get_normalizer, register_normalizer

__all__ = [
    "DIGIT_WORDS",
    "REASONS",
    "DataError",
    "DataReport",
    "FsddRecording",
    "SentenceSampler",
    "Voice",
    "add_noise",
    "available_normalizers",
    "available_voices",
    "colored_noise",
    "enable_sphere_fallback",
    "espeak_synthesize",
    "get_normalizer",
    "load_kaldi_dir",
    "load_switchboard_cuts",
    "load_vocabulary",
    "make_digit_strings",
    "make_synthetic_corpus",
    "prepare_fsdd",
    "prepare_switchboard_corpus",
    "read_kaldi_table",
    "register_normalizer",
    "resample",
    "reverberate",
    "scan_fsdd",
    "split_fsdd",
    "split_voices",
    "synthetic_rir",
    "write_kaldi_dir",
]
