import itertools

"""Golden values of the shared CTC decoders (offline entry points) and ids -> text."""
import numpy as np
import pytest
import torch

from ekd_compress.contract.ctc_decode import ctc_greedy_decode, ctc_prefix_beam_search
from ekd_compress.contract.tokens import ids_to_text


def peaky(path: list[int], vocab: int, p: float = 0.97) -> np.ndarray:
    """(T, V) log-probs putting probability p on path[t]."""
    probs = np.full((len(path), vocab), (1 - p) / (vocab - 1))
    probs[np.arange(len(path)), path] = p
    return np.log(probs)


def test_greedy_collapses_repeats_and_drops_blanks():
    lp = peaky([0, 1, 1, 0, 1, 2, 2, 0, 0, 3], vocab=4)
    assert ctc_greedy_decode(lp) == [[1, 1, 2, 3]]


def test_greedy_batch_with_lengths_and_tensor_input():
    """Tensors are converted at the call site, as training and scoring do."""
    a = peaky([1, 1, 2, 0, 0, 3], 4)
    b = peaky([2, 0, 2, 3, 3, 3], 4)
    batch = torch.from_numpy(np.stack([a, b])).float()
    assert ctc_greedy_decode(batch.detach().float().cpu().numpy(), torch.tensor([3, 6]).cpu().numpy()) == [
        [1, 2], [2, 2, 3]]
    assert ctc_greedy_decode(batch, [0, 6])[0] == []


def test_greedy_rejects_bad_lengths():
    with pytest.raises(ValueError, match="lengths"):
        ctc_greedy_decode(np.zeros((2, 5, 3)), [5])
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        ctc_greedy_decode(np.zeros((1, 5, 3)), [6])


def test_ids_to_text_chars():
    tokens = ["<blk>", "|", "a", "b", "c"]
    assert ids_to_text([2, 3, 1, 1, 4, 1], tokens) == "ab c"
    assert ids_to_text([1, 2, 0, 3], tokens) == "ab"
    tokens_sp = ["<blk>", " ", "a", "b"]
    assert ids_to_text([2, 1, 3], tokens_sp) == "a b"
    assert ids_to_text([2, 5, 3], ["<blk>", "x", "a", "b", "c", "_"], space="_") == "a b"


def test_ids_to_text_bpe():
    tokens = ["<blk>", "<unk>", "\u2581he", "llo", "\u2581world", "\u2581a"]
    assert ids_to_text([2, 3, 4, 5], tokens) == "hello world a"
    with pytest.raises(ValueError, match="outside the token table"):
        ids_to_text([9], tokens)


def test_beam_equals_greedy_on_peaky_input():
    rng = np.random.default_rng(0)
    for _ in range(5):
        path = rng.integers(0, 5, size=12).tolist()
        lp = peaky(path, 5)
        assert ctc_prefix_beam_search(lp, beam=4) == ctc_greedy_decode(lp)[0]


def test_beam_beats_greedy_when_paths_merge():
    # per frame p(blank)=0.6, p(a)=0.4: best path is blank blank -> "", but
    # P("a") = 0.4*0.4 + 2*0.4*0.6 = 0.64 > P("") = 0.36
    lp = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc_greedy_decode(lp) == [[]]
    assert ctc_prefix_beam_search(lp, beam=2) == [1]


def test_beam_keeps_repeated_token_separated_by_blank():
    lp = peaky([1, 0, 1, 1, 2], 3)
    assert ctc_prefix_beam_search(lp, beam=3) == [1, 1, 2]


def _collapse(path):
    out, prev = [], None
    for c in path:
        if c != prev and c != 0:
            out.append(c)
        prev = c
    return tuple(out)


def test_wide_beam_finds_most_probable_labelling():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 3)) * 1.5
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    totals: dict[tuple, float] = {}
    for path in itertools.product(range(3), repeat=5):
        p = float(np.exp(lp[np.arange(5), path].sum()))
        key = _collapse(path)
        totals[key] = totals.get(key, 0.0) + p
    best = max(totals, key=totals.get)
    assert tuple(ctc_prefix_beam_search(lp, beam=64)) == best
