"""Words from a phone model: CTC beam search through the lexicon's pronunciations and a word n-gram.

    lm = write_arpa(train_texts, exp / "lm" / "words_3gram.arpa")        # ekd_compress.evaluate.ngram
    dec = LexiconWordDecoder(tokens, lm, lm_weight=1.0, word_score=0.0)  # tokens: a phone TokenTable
    dec.decode(log_probs)                                                 # (T, V) log-probs -> "the cat"

Every pronunciation of every lexicon word (all variants, not only the first) is a path in a
phone trie; flashlight-text's `LexiconDecoder` searches CTC paths that spell whole words, scoring
each hypothesis as acoustic log-probability (natural log) + lm_weight x LM log10-probability (as
KenLM gives it) + word_score per word.
Phone tables have no word-boundary token, so the CTC blank doubles as the decoder's silence: a word
ends on its last phone and the next may start at the following frame (a repeated phone still needs
a blank between, as CTC requires). Because a word ends on entering its last phone, that phone could
not last more than one frame; so before the search, each run of consecutive frames whose best token is
the same phone is merged into its most confident frame (CTC reads such a run as one phone anyway).
The LM is a word-level KenLM model (ARPA) that should know every lexicon word (`write_arpa`'s
`vocabulary`). Words are lower case, as the lexicon's keys; score them against lower-cased references.
Decoding is whole-utterance (offline) and needs the optional `lm` extra (flashlight-text).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ekd_compress.contract.tokens import BLANK_ID, TokenTable


class LexiconWordDecoder:
    """Phone CTC posteriors -> a word string, through the lexicon and a word n-gram.

    Args:
        tokens: a phone token table (its `lexicon` spells the words).
        lm_path: word-level ARPA (or KenLM binary) file.
        lm_weight: weight of the LM's log10 probability (KenLM's unit) against the acoustic natural-log probability.
        word_score: added per word (positive: more, shorter words).
        beam: hypotheses kept per frame; beam_threshold: score margin below the best that survives.
    """

    def __init__(self, tokens: TokenTable, lm_path: str | Path, lm_weight: float = 1.0, word_score: float = 0.0,
                 beam: int = 32, beam_threshold: float = 25.0) -> None:
        if tokens.kind != "phone" or tokens.lexicon is None:
            raise ValueError(f"words from phones need a phone model with its lexicon; this table is {tokens.kind!r}")
        lm_path = Path(lm_path)
        if not lm_path.is_file():
            raise FileNotFoundError(f"word LM {lm_path} does not exist; "
                                    "write one with ekd_compress.evaluate.ngram.write_arpa")
        try:
            from flashlight.lib.text.decoder import SmearingMode, Trie
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary
        except ImportError as e:  # the training side never imports serve, so not its DecoderUnavailable
            raise RuntimeError(f"words from phones need flashlight-text with KenLM ({e}); "
                               "`pip install -e '.[lm]'`") from None
        lexicon = tokens.lexicon
        self.tokens = tokens
        self.words = sorted(w for w in lexicon.prons if w != "<unk>")
        self.words.append("<unk>")
        words = Dictionary(self.words)
        self.vocab = len(tokens.tokens)
        self._lm = KenLM(str(lm_path), words)
        start = self._lm.start(False)
        trie = Trie(self.vocab, BLANK_ID)
        index = {t: i for i, t in enumerate(tokens.tokens)}
        for w in self.words[:-1]:
            label = words.get_index(w)
            first_word_score = self._lm.score(start, label)[1]  # the trie's look-ahead score (smeared below)
            for pron in lexicon.prons[w]:
                missing = [p for p in pron if p not in index]
                if missing:
                    raise ValueError(f"lexicon word {w!r} uses phones {missing} that the model's token table lacks")
                trie.insert([index[p] for p in pron], label, first_word_score)
        trie.smear(SmearingMode.MAX)
        self._trie = trie  # the decoder keeps a pointer: hold the trie as long as the decoder
        self._unk = words.get_index("<unk>")
        self.beam, self.beam_threshold = beam, beam_threshold
        self._dec = self._search(lm_weight, word_score)

    def _search(self, lm_weight: float, word_score: float):
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions

        self.lm_weight, self.word_score = lm_weight, word_score
        opts = LexiconDecoderOptions(beam_size=self.beam, beam_size_token=self.vocab,
                                     beam_threshold=self.beam_threshold, lm_weight=lm_weight, word_score=word_score,
                                     unk_score=-math.inf, sil_score=0.0, log_add=False,
                                     criterion_type=CriterionType.CTC)
        return LexiconDecoder(opts, self._trie, self._lm, BLANK_ID, BLANK_ID, self._unk, [], False)

    def reweighted(self, lm_weight: float, word_score: float) -> "LexiconWordDecoder":
        """The same lexicon and LM (shared, not reloaded) with other weights."""
        import copy

        other = copy.copy(self)
        other._dec = other._search(lm_weight, word_score)
        return other

    def decode(self, log_probs: np.ndarray) -> str:
        """(T, V) log-probabilities of one utterance -> its best word string ("" if none)."""
        lp = np.ascontiguousarray(log_probs, dtype=np.float32)
        if lp.ndim != 2 or lp.shape[1] != self.vocab:
            raise ValueError(f"log_probs must be (T, {self.vocab}), got {lp.shape}")
        if lp.shape[0] == 0:
            return ""
        lp = np.ascontiguousarray(merge_repeated_frames(lp))
        results = self._dec.decode(lp.ctypes.data, lp.shape[0], lp.shape[1])
        if not results:
            return ""
        return " ".join(self.words[i] for i in results[0].words if i >= 0)


# (LM weight, word score) pairs `tune_weights` tries: around the weights speechocean762's dev chose (RESULTS.md)
WEIGHT_GRID = tuple((w, s) for w in (0.5, 1.0, 1.5, 2.0, 3.0) for s in (-1.0, 0.0, 1.0))


def tune_weights(decoder: LexiconWordDecoder, log_probs: list[np.ndarray], refs: list[str],
                 grid: tuple[tuple[float, float], ...] = WEIGHT_GRID) -> tuple[LexiconWordDecoder, dict]:
    """The decoder weights with the lowest WER on a tuning set (one model's (T, V) log-probs per utterance
    and the references) -> (that decoder, {"lm_weight", "word_score", "tune_wer", "tried"})."""
    from ekd_compress.evaluate.wer import compute_wer

    if not log_probs:
        raise ValueError("no utterances to tune the word decoder's weights on")
    refs = [r.lower() for r in refs]
    best = None
    for lm_weight, word_score in grid:
        dec = decoder.reweighted(lm_weight, word_score)
        wer = compute_wer(refs, [dec.decode(lp) for lp in log_probs]).wer
        if best is None or wer < best[0]:
            best = (wer, dec)
    wer, dec = best
    return dec, {"lm_weight": dec.lm_weight, "word_score": dec.word_score, "tune_wer": wer, "tried": len(grid)}


def merge_repeated_frames(log_probs: np.ndarray, blank: int = BLANK_ID) -> np.ndarray:
    """(T, V) -> (T', V): each run of consecutive frames with the same best non-blank token becomes
    its frame where that token is most probable. Blank frames are kept as they are."""
    best = log_probs.argmax(axis=1)
    keep: list[int] = []
    for t, tok in enumerate(best):
        if t > 0 and tok != blank and tok == best[t - 1]:  # the run goes on: keep its most confident frame
            if log_probs[t, tok] > log_probs[keep[-1], tok]:
                keep[-1] = t
        else:
            keep.append(t)
    return log_probs[keep]


def training_texts(exp_dir: Path) -> list[str]:
    """The experiment's training transcripts, one per original utterance (speed-perturbed copies,
    which repeat a transcript, left out)."""
    from ekd_compress.experiment import cut_text, load_cuts

    path = Path(exp_dir) / "data" / "train_cuts.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a word LM is trained on the experiment's training "
                                "transcripts; run `ekd-compress distill` for this experiment first")
    cuts = load_cuts(path, lazy=True, exp_dir=Path(exp_dir))
    return [text for c in cuts if not _speed_perturbed(c) and (text := cut_text(c))]


def _speed_perturbed(cut) -> bool:
    """A copy made by speed perturbation (lhotse's `Speed` transform; resampling is not a copy)."""
    for t in cut.recording.transforms or ():
        name = t.get("name") if isinstance(t, dict) else type(t).__name__
        if name == "Speed":
            return True
    return False


def experiment_word_decoder(exp_dir: Path, order: int = 3, lm_weight: float = 1.0, word_score: float = 0.0,
                            beam: int = 32) -> tuple[LexiconWordDecoder, dict]:
    """A word decoder for a phone experiment: an order-`order` n-gram of its training transcripts,
    written to EXP/lm/words_{order}gram.arpa, and the experiment's lexicon.

    Returns (decoder, description for the `evaluate --json` object's "words" field)."""
    from ekd_compress.evaluate.ngram import write_arpa
    from ekd_compress.experiment import read_tokens

    exp_dir = Path(exp_dir)
    tokens = read_tokens(exp_dir)
    if tokens.kind != "phone":
        raise ValueError(f"--words decodes words from phones; {exp_dir} has {tokens.kind!r} tokens, whose "
                         "models write words already")
    texts = [t.lower() for t in training_texts(exp_dir)]  # the lexicon's words are lower case
    lm = write_arpa(texts, exp_dir / "lm" / f"words_{order}gram.arpa", order, vocabulary=tokens.lexicon.prons)
    decoder = LexiconWordDecoder(tokens, lm, lm_weight=lm_weight, word_score=word_score, beam=beam)
    info = {"lm": str(lm), "order": order, "train_sentences": len(texts), "lm_weight": lm_weight,
            "word_score": word_score, "beam": beam, "lexicon_words": len(tokens.lexicon)}
    return decoder, info
