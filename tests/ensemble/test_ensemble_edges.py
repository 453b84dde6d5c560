"""Edges of fusion, essence selection, spike coincidence and the essence cache that the mutation
run (tools/mutation.sh, issue 17) found unchecked. Expected values by hand."""
import json
import logging
import math
import pickle

import numpy as np
import pytest
import torch

from ekd_compress.ensemble.cache import CacheMismatchError, EssenceCache
from ekd_compress.ensemble.coincidence import check_coincidence, corpus_coincidence, spike_coincidence
from ekd_compress.ensemble.essence import blank_argmax_share, cumulative_topk_mass, select_essence
from ekd_compress.ensemble.fusion import FusedEnsemble, fuse_posteriors, normalise_weights
from tests.ensemble.test_fusion import Accumulator, Differ
from tests.streaming import stream


def lp(rows, dtype=torch.float32):
    return torch.tensor([rows], dtype=dtype).log()  # (1, T, V)


# ------------------------------------------------------------------------------ fusion
def test_one_member_is_itself():
    a = lp([[0.2, 0.8], [0.6, 0.4]])
    assert normalise_weights(None, 1) == [1.0] and normalise_weights([5], 1) == [1.0]
    assert torch.allclose(fuse_posteriors([a]), a, atol=1e-7)
    with pytest.raises(ValueError, match="at least one member"):
        normalise_weights(None, 0)


def test_fusion_dtypes_and_exact_float64_weights():
    a, b = lp([[0.5, 0.5]], torch.float64), lp([[0.9, 0.1]], torch.float64)
    out = fuse_posteriors([a, b], [1, 2])  # weights 1/3, 2/3 exactly in float64
    assert out.dtype == torch.float64
    assert out.exp()[0, 0].tolist() == pytest.approx([0.5 / 3 + 1.8 / 3, 0.5 / 3 + 0.2 / 3], rel=1e-13, abs=0)
    half = fuse_posteriors([a.half(), b.half()])
    assert half.dtype == torch.float32  # computed in float32 at least


def test_fusion_rejects_members_that_are_not_3d():
    with pytest.raises(ValueError, match=r"shapes \[\(2,\), \(2,\)\]"):
        fuse_posteriors([torch.zeros(2), torch.zeros(2)])
    with pytest.raises(ValueError, match=r"shapes \[\(1, 2\), \(1, 2\)\]"):
        fuse_posteriors([torch.zeros(1, 2), torch.zeros(1, 2)])


def test_infinite_weight_is_refused():
    with pytest.raises(ValueError, match="finite"):
        normalise_weights([1.0, math.inf], 2)


def test_member_attribute_mismatches_name_the_fix():
    class OtherVocab(Accumulator):
        vocab_size = 5

    class OtherInput(Accumulator):
        input_dim = 4

    with pytest.raises(ValueError, match=r"differ in subsampling: \[2, 4\]; fuse only models with the same frame rate"):
        FusedEnsemble([Accumulator(0), Accumulator(1, chunk_frames=8, subsampling=4)])
    with pytest.raises(ValueError, match=r"differ in vocab_size: \[4, 5\]; train every member with the same tokens.txt"):
        FusedEnsemble([Accumulator(0), OtherVocab(1)])
    with pytest.raises(ValueError, match=r"differ in input_dim: \[3, 4\]; use the same feature config for every member"):
        FusedEnsemble([Accumulator(0), OtherInput(1)])


def test_one_member_ensemble_streams_like_the_member():
    m = Accumulator(0)
    ens = FusedEnsemble([m])
    assert (ens.subsampling, ens.chunk_frames, ens.vocab_size, ens.input_dim) == (2, 4, 4, 3)
    feats = torch.randn(1, 8, 3)
    assert torch.allclose(stream(ens, feats), m(feats, torch.tensor([8]))[0], atol=1e-6)


def test_chunk_out_frames_and_output_lengths():
    ens = FusedEnsemble([Accumulator(0), Differ(1)])
    assert ens.chunk_out_frames == 2 and isinstance(ens.chunk_out_frames, int)
    lengths = ens.output_lengths(torch.tensor([12, 9, 1]))
    assert lengths.tolist() == [6, 4, 0] and lengths.dtype == torch.int64
    with pytest.raises(ValueError, match="chunk_frames"):
        FusedEnsemble([Accumulator(0), Accumulator(1, chunk_frames=8)]).chunk_out_frames


def test_forward_refuses_members_whose_frames_disagree():
    class LongerLengths(Accumulator):
        def forward(self, feats, lengths):
            out, n = super().forward(feats, lengths)
            return out, n + 1

    class FewerFrames(Accumulator):
        def forward(self, feats, lengths):
            out, n = super().forward(feats, lengths)
            return out[:, :-1], n

    feats, lengths = torch.randn(1, 8, 3), torch.tensor([8])
    for other in (LongerLengths(1), FewerFrames(1)):
        with pytest.raises(ValueError, match=r"^member 1 emits"):
            FusedEnsemble([Accumulator(0), other])(feats, lengths)
    with pytest.raises(ValueError, match=r"^member 2 emits \(1, 4\) frames \(lengths \[5\]\) but member 0 emits "
                                         r"\(1, 4\) \(lengths \[4\]\)"):
        FusedEnsemble([Accumulator(0), Accumulator(2), LongerLengths(1)])(feats, lengths)


def test_three_members_stream_with_their_own_states():
    # state counts 1, 2, 1: the flat state must be split at the right places for every member
    members = [Accumulator(0), Differ(1), Accumulator(2)]
    ens = FusedEnsemble(members, [1, 2, 5])
    feats = torch.randn(2, 12, 3)
    full, _ = ens(feats, torch.tensor([12, 12]))
    assert [tuple(s.shape) for s in ens.initial_state(2)] == [(2, 4), (2, 1, 3), (2, 1), (2, 4)]
    assert torch.allclose(stream(ens, feats), full, atol=1e-5)
    parts = ens.split_state([torch.full((1,), float(i)) for i in range(4)])
    assert [[float(t) for t in p] for p in parts] == [[0.0], [1.0, 2.0], [3.0]]


# ------------------------------------------------------------------------------ essence selection
P = [0.6, 0.25, 0.1, 0.05]
LP = torch.tensor([[P]]).log()


@pytest.mark.parametrize("kwargs, match", [
    ({"k": True}, r"^k=True is invalid for a vocabulary of 4"),
    ({"k": 2.0}, r"^k=2.0 is invalid"),
    ({"k": 2, "temperature": True}, r"^temperature=True is invalid"),
    ({"k": 2, "temperature": "1"}, r"^temperature='1' is invalid"),
    ({"k": 2, "mode": "top_p", "top_p": 0.0}, r"^top_p=0.0 is invalid"),
    ({"k": 2, "mode": "top_p", "top_p": True}, r"^top_p=True is invalid"),
    ({"k": 2, "mode": "top_p", "top_p": "0.5"}, r"^top_p='0.5' is invalid"),
    ({"k": 2, "mode": "top_p", "max_k": 5}, r"^max_k=5 is invalid for a vocabulary of 4"),
])
def test_more_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_essence(LP, **kwargs)


def test_log_probs_must_be_a_3d_tensor():
    with pytest.raises(ValueError, match=r"^log_probs \(1, 4\) is not a \(batch, frames, vocab\) tensor"):
        select_essence(LP[0], k=1)
    with pytest.raises(ValueError, match=r"^log_probs ndarray is not"):
        select_essence(LP.numpy(), k=1)
    with pytest.raises(ValueError, match=r"^log_probs list is not"):
        select_essence([[P]], k=1)


def test_top_p_one_keeps_every_id_with_mass():
    ids, probs = select_essence(LP, k=4, mode="top_p", top_p=1.0)
    assert ids[0, 0].tolist() == [0, 1, 2, 3] and probs[0, 0].tolist() == pytest.approx(P, rel=1e-5)


def test_top_p_padding_has_id_zero_and_no_mass():
    # a one-hot teacher: after the first id the mass before each entry is exactly 1 = top_p
    one_hot = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]).log()
    ids, probs = select_essence(one_hot, k=4, mode="top_p", top_p=1.0)
    assert ids[0, 0].tolist() == [1, 0, 0, 0] and probs[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_residual_rows_sum_to_one_with_float_drift():
    torch.manual_seed(0)
    lp_ = torch.randn(3, 7, 9).log_softmax(-1)
    ids, probs = select_essence(lp_, k=9, mode="residual")  # rest ≈ 0 (clamped at 0, never negative)
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(3, 7), atol=1e-6)
    assert (ids[..., -1] == -2).all()


def test_frame_masks_and_shares_edge_cases():
    lp_ = torch.tensor([[P, [0.1, 0.6, 0.2, 0.1]]]).log()
    with pytest.raises(ValueError, match=r"^lengths of shape \(2,\) do not match a batch of 1"):
        blank_argmax_share(lp_, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"^lengths of shape \(1, 1\)"):
        cumulative_topk_mass(lp_, torch.tensor([[1]]))
    assert blank_argmax_share(lp_, torch.tensor([0])) == 0.0
    assert blank_argmax_share(lp_, torch.tensor([1])) == 1.0  # one valid frame, blank
    assert blank_argmax_share(lp_, torch.tensor([2]), blank=1) == 0.5
    mass = cumulative_topk_mass(lp_, [2], max_k=2)  # lengths as a list
    assert mass.tolist() == pytest.approx([(0.6 + 0.6) / 2, (0.85 + 0.8) / 2], rel=1e-6)
    assert cumulative_topk_mass(lp_, torch.tensor([1])).shape == (4,)  # max_k None = V


# ------------------------------------------------------------------------------ coincidence
GUIDE = [0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0]


def test_tolerance_edges():
    shifted2 = list(np.roll(GUIDE, 2))
    s = spike_coincidence(shifted2, GUIDE, tolerance=1)  # 2 frames apart: outside ±1 in both directions
    assert s["member_to_guide"] == 0.0 and s["guide_to_member"] == 0.0
    assert spike_coincidence(shifted2, GUIDE, tolerance=2)["both"] == 1.0
    exact = spike_coincidence(GUIDE, GUIDE, tolerance=0)
    assert exact["both"] == 1.0 and spike_coincidence(list(np.roll(GUIDE, 1)), GUIDE, tolerance=0)["both"] == 0.0
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"^tolerance=.* is invalid"):
            spike_coincidence(GUIDE, GUIDE, tolerance=bad)


def test_spikes_at_both_ends_of_the_utterance():
    guide = [4, 0, 0, 0, 0, 7]
    member = [0, 4, 0, 0, 7, 0]  # each one frame later / earlier, at the utterance edges
    s = spike_coincidence(member, guide)
    assert s["member_matched"] == 2 and s["guide_matched"] == 2 and s["both"] == 1.0
    s = spike_coincidence(guide, member)
    assert (s["member_spikes"], s["member_matched"], s["guide_spikes"], s["guide_matched"]) == (2, 2, 2, 2)


def test_counts_and_a_blank_other_than_zero():
    member = [1, 3, 3, 1, 1, 9, 1]  # blank = 1
    guide = [1, 1, 3, 1, 1, 1, 1]
    s = spike_coincidence(member, guide, blank=1)
    assert (s["member_spikes"], s["member_matched"], s["guide_spikes"], s["guide_matched"]) == (3, 2, 1, 1)


def test_paths_from_tensors_and_bad_shapes():
    scores = torch.eye(6)[GUIDE].requires_grad_(True)  # (T, V) scores of a model, still in the graph
    assert spike_coincidence(scores, torch.tensor(GUIDE))["both"] == 1.0
    with pytest.raises(ValueError, match=r"^member_path of shape \(1, 12, 6\) is not"):
        spike_coincidence(np.eye(6)[GUIDE][None], GUIDE)
    with pytest.raises(ValueError, match=r"^guide_path of shape \(1, 12, 6\) is not"):
        spike_coincidence(GUIDE, np.eye(6)[GUIDE][None])


def test_corpus_counts_every_direction():
    pairs = [(list(np.roll(GUIDE, 1)), GUIDE), ([0, 7, 0], [0, 7, 7])]
    s = corpus_coincidence(pairs)
    assert (s["member_spikes"], s["member_matched"], s["guide_spikes"], s["guide_matched"]) == (3, 3, 4, 4)
    assert s["utterances"] == 2
    empty = corpus_coincidence([])
    assert empty["utterances"] == 0 and math.isnan(empty["both"])


def test_threshold_edges(caplog):
    assert check_coincidence("m", 0.6, 0.6)  # reaching the threshold is enough
    assert check_coincidence("m", 0.0, 0.0) and check_coincidence("m", 1.0, 1.0)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"^coincidence threshold=.* is invalid"):
            check_coincidence("m", 0.5, bad)
    with caplog.at_level(logging.WARNING):
        assert check_coincidence("m", 0.1, 0.6, refuse=False, tolerance=2) is False
    lines = caplog.records[-1].getMessage().split("\n")
    assert lines[1] == "!" * 78 and lines[-1] == "!" * 78 and "±2 frames" in lines[2]


# ------------------------------------------------------------------------------ cache
KEYS = {"feature_hash": "feat1", "teacher_hash": "teach1",
        "selection": {"k": 2, "temperature": 1.0, "mode": "residual"}}


def utt(frames, seed=0, K=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 40, size=(frames, K))
    ids[:, -1] = -2
    return ids.astype(np.int64), rng.dirichlet(np.ones(K), size=frames).astype(np.float32)


def test_shard_boundary_is_reached_at_exactly_shard_bytes(tmp_path):
    # K = 3: 12 bytes per frame; utterances of 3, 4 and 5 frames
    for shard_bytes, want in ((36, [3, 4, 5]), (40, [7, 5]), (35, [3, 4, 5]), (85, [12])):
        cache = EssenceCache.create(tmp_path / str(shard_bytes), **KEYS, shard_bytes=shard_bytes)
        for i, n in enumerate((3, 4, 5)):
            cache.write(f"u{i}", *utt(n, i))
        cache.close()
        meta = json.loads((tmp_path / str(shard_bytes) / "index.json").read_text())
        assert [s["frames"] for s in meta["shards"]] == want, shard_bytes
        assert [s["bytes"] for s in meta["shards"]] == [12 * f for f in want]


def test_writer_facts_before_close(tmp_path):
    cache = EssenceCache.create(tmp_path / "a" / "b", **KEYS)  # parents are made
    assert cache.frames == 0 and cache.bytes_per_frame() == 0.0 and cache.K is None
    cache.write("x", *utt(3, 1))
    cache.write("y", *utt(2, 2))
    assert cache.frames == 5 and cache.bytes_per_frame() == 12.0 and cache.utt_ids() == ["x", "y"]
    with pytest.raises(ValueError, match=r"is still being written; close\(\) it"):
        cache.read("x")
    cache.close()
    with pytest.raises(ValueError, match=r"is closed; make a new one"):
        cache.write("z", *utt(1))
    reader = EssenceCache.open(tmp_path / "a" / "b", **KEYS)
    ids, probs = reader.read("y")  # no expected frame count: no check
    assert np.array_equal(ids, utt(2, 2)[0]) and reader.utt_ids() == ["x", "y"]
    with pytest.raises(ValueError, match=r"is read-only"):
        reader.write("z", *utt(1))


def test_write_checks_ids_and_probabilities(tmp_path):
    cache = EssenceCache.create(tmp_path / "c", **KEYS)
    ids, probs = utt(2)
    with pytest.raises(ValueError, match=r"^utterance 'a': ids \(3,\) and probs \(3,\) must both be"):
        cache.write("a", ids[0], probs[0])
    with pytest.raises(ValueError, match=r"^utterance 'a': ids \(2, 3\) and probs \(2, 2\)"):
        cache.write("a", ids, probs[:, :2])
    for bad in (65535, -3):  # the rest code itself, a negative id other than the rest id
        wrong = ids.copy()
        wrong[0, 0] = bad
        with pytest.raises(ValueError, match=r"holds ids outside \[0, 65535\)"):
            cache.write("a", wrong, probs)
    for bad in (1.01, np.nan, -1e-6):
        wrong = probs.copy()
        wrong[1, 0] = bad
        with pytest.raises(ValueError, match=r"holds probabilities outside \[0, 1\]"):
            cache.write("a", ids, wrong)
    edge = probs.copy()
    edge[0] = [1.0005, 0.0, 0.0]  # fp rounding above 1 is tolerated, zeros (top-p padding) are fine
    cache.write("a", ids, edge)
    assert "a" in cache and cache.K == 3


def test_context_manager_writes_the_index_only_on_success(tmp_path):
    with EssenceCache.create(tmp_path / "ok", **KEYS) as cache:
        cache.write("a", *utt(2))
    assert (tmp_path / "ok" / "index.json").exists()
    with pytest.raises(RuntimeError):
        with EssenceCache.create(tmp_path / "bad", **KEYS) as cache:
            cache.write("a", *utt(2))
            raise RuntimeError("teacher crashed")
    assert not (tmp_path / "bad" / "index.json").exists()
    with EssenceCache.open(tmp_path / "ok", **KEYS) as reader:
        assert reader.read("a", 2)[0].shape == (2, 3)


def test_recreate_removes_old_shards_and_part_files(tmp_path):
    cache = EssenceCache.create(tmp_path / "c", **KEYS, shard_bytes=1)
    for i in range(3):
        cache.write(f"u{i}", *utt(2, i))
    cache.close()
    assert len(list((tmp_path / "c").glob("shard-*.npy"))) == 6
    EssenceCache.create(tmp_path / "c", **KEYS).close()
    assert list((tmp_path / "c").glob("shard-*.npy")) == []
    part = EssenceCache.create(tmp_path / "p", **KEYS, part=2)
    part.write("a", *utt(2))
    part.close()
    assert {p.name for p in (tmp_path / "p").iterdir()} == {
        "part-002-shard-00000.ids.npy", "part-002-shard-00000.probs.npy", "index.part-002.json"}
    EssenceCache.create(tmp_path / "p", **KEYS, part=2)  # rank 2 starts again
    assert list((tmp_path / "p").iterdir()) == []


@pytest.mark.parametrize("part", [-1, 1000, 1001])
def test_part_numbers_are_bounded(tmp_path, part):
    with pytest.raises(ValueError, match=r"^part=.* must be an integer in \[0, 1000\)"):
        EssenceCache.create(tmp_path / "c", **KEYS, part=part)
    assert EssenceCache.create(tmp_path / "c", **KEYS, part=999).part == 999


def test_selection_must_be_a_dict_and_key_order_does_not_matter(tmp_path):
    with pytest.raises(ValueError, match=r"^selection=\[\('k', 2\)\] must be a dict"):
        EssenceCache.create(tmp_path / "c", feature_hash="f", teacher_hash="t", selection=[("k", 2)])
    EssenceCache.create(tmp_path / "c", **KEYS).close()
    reordered = {"mode": "residual", "temperature": 1.0, "k": 2}
    assert len(EssenceCache.open(tmp_path / "c", **{**KEYS, "selection": reordered})) == 0


def test_open_names_every_differing_selection_key_and_the_version(tmp_path):
    EssenceCache.create(tmp_path / "c", **KEYS).close()
    other = {"k": 4, "temperature": 1.0, "mode": "renorm", "top_p": 0.9}
    with pytest.raises(CacheMismatchError, match=r"\(k: cached 2 != requested 4, mode: cached 'residual' != requested "
                                                 r"'renorm', top_p: cached None != requested 0.9\)"):
        EssenceCache.open(tmp_path / "c", **{**KEYS, "selection": other})
    index = tmp_path / "c" / "index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "version": 2}))
    with pytest.raises(CacheMismatchError, match=r"has cache format version 2, this code reads 1"):
        EssenceCache.open(tmp_path / "c", **KEYS)


def test_merge_reads_back_and_checks_k_and_duplicates(tmp_path):
    EssenceCache.create(tmp_path / "c", **KEYS, part=0).close()  # an empty part 0: K comes from part 1
    p1 = EssenceCache.create(tmp_path / "c", **KEYS, part=1)
    p1.write("a", *utt(3))
    p1.close()
    merged = EssenceCache.merge_parts(tmp_path / "c", 2)
    assert merged.K == 3 and np.array_equal(merged.read("a", 3)[0], utt(3)[0])
    for parts in ((3, 4), (3, 3)):
        d = tmp_path / f"d{parts[1]}"
        for r, K in enumerate(parts):
            p = EssenceCache.create(d, **KEYS, part=r)
            p.write("same" if parts == (3, 3) else f"u{r}", *utt(2, K=K))
            p.close()
        match = "holds K=4, another part K=3" if parts == (3, 4) else "'same' is in two parts"
        with pytest.raises(ValueError, match=match):
            EssenceCache.merge_parts(d, 2)


def test_a_pickled_reader_carries_no_shard_data(tmp_path):
    cache = EssenceCache.create(tmp_path / "c", **KEYS)
    cache.write("big", *utt(2000))
    cache.close()
    reader = EssenceCache.open(tmp_path / "c", **KEYS)
    reader.read("big", 2000)  # maps the shard
    blob = pickle.dumps(reader)
    assert len(blob) < 2000 * 12 // 4  # the 24 kB shard is not in it
    assert np.array_equal(pickle.loads(blob).read("big", 2000)[0], utt(2000)[0])


# ------------------------------------------------------------------------------ second round
def test_members_without_an_attribute():
    class Offline(torch.nn.Module):  # an offline-only member: no chunk_frames at all
        subsampling, input_dim, vocab_size = 2, 3, 4

        def __init__(self) -> None:
            super().__init__()
            self.inner = Accumulator(1)

        def forward(self, feats, lengths):
            return self.inner(feats, lengths)

    ens = FusedEnsemble([Accumulator(0), Offline()])
    assert ens.chunk_frames is None and ens(torch.randn(1, 8, 3), torch.tensor([8]))[0].shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"ensemble members have chunk_frames \[4, None\]; streaming"):
        ens.initial_state(1)

    class NoInputDim(torch.nn.Module):  # a member that does not say its feature size
        subsampling, vocab_size = 2, 4

    with pytest.raises(ValueError, match=r"differ in input_dim: \[3, None\]"):
        FusedEnsemble([Accumulator(0), NoInputDim()])


def test_fusion_computes_in_the_first_members_dtype():
    a, b = lp([[0.5, 0.5]]), lp([[0.9, 0.1]], torch.float64)
    assert fuse_posteriors([a, b]).dtype == torch.float32
    assert fuse_posteriors([b, a]).dtype == torch.float64


def test_unknown_utterance_error_text():
    from ekd_compress.ensemble.cache import UnknownUtteranceError

    assert str(UnknownUtteranceError()) == "" and str(UnknownUtteranceError("no 'x' here")) == "no 'x' here"


def test_cache_repr(tmp_path):
    cache = EssenceCache.create(tmp_path / "c", **KEYS)
    cache.write("a", *utt(2))
    assert repr(cache) == (f"EssenceCache({str(tmp_path / 'c')!r}, utterances=1, K=3, "
                           "selection={'k': 2, 'mode': 'residual', 'temperature': 1.0})")


def test_coincidence_defaults():
    # tolerance 1 frame and blank 0 by default; check_coincidence refuses by default
    shifted2 = list(np.roll(GUIDE, 2))
    assert spike_coincidence(shifted2, GUIDE)["both"] == 0.0
    assert corpus_coincidence([(shifted2, GUIDE)])["both"] == 0.0
    assert spike_coincidence(list(np.roll(GUIDE, 1)), GUIDE)["both"] == 1.0
    from ekd_compress.ensemble.coincidence import CoincidenceError

    with pytest.raises(CoincidenceError, match=r"same token within ±1 frames"):
        check_coincidence("m", 0.1, 0.5)
