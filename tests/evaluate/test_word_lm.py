"""Word n-grams (ARPA) and words decoded from phone posteriors through the lexicon."""
from __future__ import annotations

import numpy as np
import pytest

from ekd_compress.contract.lexicon import Lexicon
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.evaluate.ngram import UNK, ArpaModel, count_ngrams, train_ngram, write_arpa
from ekd_compress.serve.decode import flashlight_available

TEXTS = ["a cat", "at a tack", "a cat at a tack", "the cat sat"]
needs_flashlight = pytest.mark.skipif(not flashlight_available(), reason="flashlight-text with KenLM is not installed")


def test_counts_wrap_sentences_and_skip_the_lone_start():
    c = count_ngrams(["a b", "a"], 2)
    assert c[0] == {("a",): 2, ("b",): 1, ("</s>",): 2}  # <s> is only a context
    assert c[1] == {("<s>", "a"): 2, ("a", "b"): 1, ("b", "</s>"): 1, ("a", "</s>"): 1}
    with pytest.raises(ValueError, match="order 0"):
        count_ngrams(["a"], 0)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_conditional_distribution_sums_to_one(order):
    lm = ArpaModel.parse(train_ngram(TEXTS, order))
    vocab = sorted({w for t in TEXTS for w in t.split()}) + ["</s>", UNK]
    for ctx in ([], ["<s>"], ["a"], ["<s>", "a"], ["a", "cat"], ["cat", "at"], ["never", "seen"]):
        assert sum(10 ** lm.logprob(ctx, w) for w in vocab) == pytest.approx(1.0, abs=1e-5)


def test_unigrams_by_hand():
    # "a b" and "a": a 2, b 1, </s> 2 of N = 5; one type seen once, two twice: D = 1 / (1 + 4) = 0.2 -> clamped 0.2
    lm = ArpaModel.parse(train_ngram(["a b", "a"], 1))
    assert 10 ** lm.logprob([], "a") == pytest.approx((2 - 0.2) / 5, abs=1e-6)
    assert 10 ** lm.logprob([], "b") == pytest.approx((1 - 0.2) / 5, abs=1e-6)
    assert 10 ** lm.logprob([], "zebra") == pytest.approx(3 * 0.2 / 5, abs=1e-6)  # unknown words are <unk>
    assert lm.logprob([], "<s>") == -99.0
    with pytest.raises(ValueError, match="no non-empty transcripts"):
        train_ngram(["", "  "])


def test_seen_trigram_beats_its_backoff():
    lm = ArpaModel.parse(train_ngram(TEXTS, 3))
    assert lm.logprob(["at", "a"], "tack") > lm.logprob(["at", "a"], "cat")
    assert lm.logprob(["the"], "cat") > lm.logprob(["the"], "sat")


@needs_flashlight
def test_kenlm_reads_the_file_as_written(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = write_arpa(TEXTS, tmp_path / "lm" / "w.arpa", 3)
    ours = ArpaModel.parse(path.read_text())
    words = Dictionary(["a", "at", "cat", "tack", "zebra", UNK])
    kenlm = KenLM(str(path), words)
    state = kenlm.start(False)
    for w in ("a", "cat", "zebra"):
        assert kenlm.score(state, words.get_index(w))[1] == pytest.approx(ours.logprob(["<s>"], w), abs=1e-5)
    after_a, _ = kenlm.score(state, words.get_index("a"))
    assert kenlm.score(after_a, words.get_index("cat"))[1] == pytest.approx(ours.logprob(["<s>", "a"], "cat"), abs=1e-5)
    assert kenlm.finish(after_a)[1] == pytest.approx(ours.logprob(["<s>", "a"], "</s>"), abs=1e-5)


def _tokens() -> TokenTable:
    lex = Lexicon()
    for word, pron in [("cat", "K AE T"), ("at", "AE T"), ("a", "AH"), ("a", "EY"), ("tack", "T AE K"),
                       ("the", "DH AH"), ("sat", "S AE T")]:
        lex.add(word, pron.split())
    return TokenTable.build_phones(lex)


def _posteriors(tokens: TokenTable, phones: list[tuple[str, float]], frames: int = 3) -> np.ndarray:
    """Log-probs: per phone `frames` frames, the middle one giving the phone probability p (the rest blank)."""
    V, idx, rows = len(tokens.tokens), {t: i for i, t in enumerate(tokens.tokens)}, []
    for phone, p in phones:
        for k in range(frames):
            row = np.full(V, 1e-4)
            if k == frames // 2:
                row[idx[phone]], row[0] = p, 1 - p
            else:
                row[0] = 1.0
            rows.append(np.log(row / row.sum()))
    return np.array(rows, dtype=np.float32)


@needs_flashlight
def test_words_from_phones_use_every_variant_and_the_lm(tmp_path):
    from ekd_compress.evaluate.lexicon_words import LexiconWordDecoder

    tokens = _tokens()
    lm = write_arpa(["a cat", "a cat sat", "the cat"] * 5, tmp_path / "w.arpa", 3)
    dec = LexiconWordDecoder(tokens, lm, lm_weight=0.0)
    assert dec.decode(_posteriors(tokens, [("EY", 0.9), ("K", 0.9), ("AE", 0.9), ("T", 0.9)])) == "a cat"  # 2nd variant
    assert dec.decode(_posteriors(tokens, [("T", 0.9), ("AE", 0.9), ("K", 0.9)])) == "tack"
    assert dec.decode(np.zeros((0, len(tokens.tokens)), np.float32)) == ""
    # a faint K: the acoustics alone say "at", the LM (which never saw "at") says "cat"
    faint = _posteriors(tokens, [("AH", 0.9), ("K", 0.3), ("AE", 0.9), ("T", 0.9)])
    assert LexiconWordDecoder(tokens, lm, lm_weight=0.0).decode(faint) == "a at"
    assert LexiconWordDecoder(tokens, lm, lm_weight=2.0).decode(faint) == "a cat"
    with pytest.raises(ValueError, match=r"must be \(T, 8\)"):
        dec.decode(np.zeros((4, 3), np.float32))


@needs_flashlight
def test_word_decoder_refuses_what_it_cannot_use(tmp_path):
    from ekd_compress.evaluate.lexicon_words import LexiconWordDecoder

    with pytest.raises(ValueError, match="phone model"):
        LexiconWordDecoder(TokenTable.build_chars(["ab"]), tmp_path / "x.arpa")
    with pytest.raises(FileNotFoundError, match="write_arpa"):
        LexiconWordDecoder(_tokens(), tmp_path / "missing.arpa")


def test_words_are_for_phone_experiments_only(tmp_path):
    from ekd_compress.evaluate.lexicon_words import experiment_word_decoder

    TokenTable.build_chars(["a cat"]).save(tmp_path / "tokens.txt")
    with pytest.raises(ValueError, match="decodes words from phones.*'char' tokens"):
        experiment_word_decoder(tmp_path)


def test_unseen_vocabulary_words_share_the_unknown_mass():
    vocab = ["a", "b", "never", "also_never"]
    lm = ArpaModel.parse(train_ngram(["a b", "a"], 2, vocabulary=vocab))
    unk = 10 ** lm.logprob([], UNK)
    assert 10 ** lm.logprob([], "never") == pytest.approx(unk) and unk == pytest.approx(3 * 0.2 / 5 / 3, abs=1e-6)
    assert 10 ** lm.logprob([], "never") < 10 ** lm.logprob([], "b")  # below any seen word
    for ctx in ([], ["<s>"], ["a"], ["never"]):
        assert sum(10 ** lm.logprob(ctx, w) for w in [*vocab, "</s>", UNK]) == pytest.approx(1.0, abs=1e-5)


def test_runs_of_one_phone_are_merged_into_their_most_confident_frame():
    from ekd_compress.evaluate.lexicon_words import merge_repeated_frames

    lp = np.log(np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.9, 0.0 + 1e-9], [0.9, 0.05, 0.05],
                          [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32))
    out = merge_repeated_frames(lp)
    assert out.shape == (4, 3)  # frames 0-2 (token 1) -> frame 2; both blank frames kept; frame 5
    np.testing.assert_array_equal(out, lp[[2, 3, 4, 5]])


@needs_flashlight
def test_a_phone_lasting_several_frames_is_one_phone(tmp_path):
    from ekd_compress.evaluate.lexicon_words import LexiconWordDecoder

    tokens = _tokens()
    dec = LexiconWordDecoder(tokens, write_arpa(["a cat", "the cat sat"], tmp_path / "w.arpa", 2), lm_weight=0.0)
    idx = {t: i for i, t in enumerate(tokens.tokens)}

    def frames(*phones):
        rows = np.full((len(phones), len(tokens.tokens)), np.log(1e-3), np.float32)
        for t, p in enumerate(phones):
            rows[t, idx[p]] = np.log(0.99)
        return rows

    assert dec.decode(frames("EY", "EY", "K", "AE", "T")) == "a cat"
    assert dec.decode(frames("K", "K", "AE", "AE", "T", "T", "T")) == "cat"


@needs_flashlight
def test_weights_are_tuned_on_the_tuning_set(tmp_path):
    from ekd_compress.evaluate.lexicon_words import LexiconWordDecoder, tune_weights

    tokens = _tokens()
    dec = LexiconWordDecoder(tokens, write_arpa(["a cat", "a cat sat", "the cat"] * 5, tmp_path / "w.arpa", 3),
                             lm_weight=0.0)
    faint = _posteriors(tokens, [("AH", 0.9), ("K", 0.3), ("AE", 0.9), ("T", 0.9)])
    best, info = tune_weights(dec, [faint], ["A CAT"], grid=((0.0, 0.0), (2.0, 0.0)))
    assert info == {"lm_weight": 2.0, "word_score": 0.0, "tune_wer": 0.0, "tried": 2}
    assert best.decode(faint) == "a cat" and dec.decode(faint) == "a at"  # the original keeps its weights
    with pytest.raises(ValueError, match="no utterances"):
        tune_weights(dec, [], [])
