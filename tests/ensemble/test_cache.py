"""EssenceCache: round trip in uint16/fp16, 4·K bytes per frame, key and frame-count checks, atomic close."""
import pickle

import numpy as np
import pytest

from ekd_compress.ensemble.cache import CacheMismatchError, EssenceCache

KEYS = {"feature_hash": "feat1", "teacher_hash": "teach1",
        "selection": {"k": 2, "temperature": 1.0, "mode": "residual"}}


def utterance(rng, frames, V=40):
    ids = np.stack([rng.choice(V, size=2, replace=False) for _ in range(frames)])
    top = rng.dirichlet(np.ones(3), size=frames)
    ids = np.concatenate([ids, np.full((frames, 1), -2)], axis=1)  # residual: rest bucket last
    return ids.astype(np.int64), top.astype(np.float32)


def make(tmp_path, n=5, **kw):
    rng = np.random.default_rng(0)
    data = {f"utt{i}": utterance(rng, 3 + i) for i in range(n)}
    cache = EssenceCache.create(tmp_path / "c", **KEYS, **kw)
    for uid, (ids, probs) in data.items():
        cache.write(uid, ids, probs)
    return cache, data


def test_round_trip_uint16_fp16(tmp_path):
    cache, data = make(tmp_path)
    cache.close()
    c = EssenceCache.open(tmp_path / "c", **KEYS)
    assert len(c) == 5 and "utt3" in c and "nope" not in c and c.K == 3
    for uid, (ids, probs) in data.items():
        got_ids, got_probs = c.read(uid, expected_frames=len(ids))
        assert got_ids.dtype == np.int64 and np.array_equal(got_ids, ids)
        assert got_probs.dtype == np.float32 and np.allclose(got_probs, probs, atol=1e-3, rtol=1e-3)
    stored = np.load(tmp_path / "c" / "shard-00000.ids.npy")
    assert stored.dtype == np.uint16 and stored.max() == 65535
    assert np.load(tmp_path / "c" / "shard-00000.probs.npy").dtype == np.float16
    assert c.bytes_per_frame() == 4 * 3 == cache.bytes_per_frame()


def test_many_small_shards_and_pickling(tmp_path):
    cache, data = make(tmp_path, n=20, shard_bytes=100)  # flush after every utterance or two
    cache.close()
    assert len(list((tmp_path / "c").glob("shard-*.ids.npy"))) > 5
    c = EssenceCache.open(tmp_path / "c", **KEYS)
    c.read("utt0", 3)
    c2 = pickle.loads(pickle.dumps(c))  # DataLoader workers
    for uid, (ids, probs) in data.items():
        assert np.array_equal(c2.read(uid, len(ids))[0], ids)
    assert c2.bytes_per_frame() == 12


def test_key_mismatch_names_what_differs(tmp_path):
    make(tmp_path)[0].close()
    with pytest.raises(CacheMismatchError, match="teacher_hash='teach1'.*'other'.*delete"):
        EssenceCache.open(tmp_path / "c", **{**KEYS, "teacher_hash": "other"})
    with pytest.raises(CacheMismatchError, match="feature_hash"):
        EssenceCache.open(tmp_path / "c", **{**KEYS, "feature_hash": "f2"})
    with pytest.raises(CacheMismatchError, match="k: cached 2 != requested 4"):
        EssenceCache.open(tmp_path / "c", **{**KEYS, "selection": {**KEYS["selection"], "k": 4}})


def test_frame_count_mismatch_and_unknown_utterance(tmp_path):
    make(tmp_path)[0].close()
    c = EssenceCache.open(tmp_path / "c", **KEYS)
    with pytest.raises(CacheMismatchError, match="4 cached teacher frames but the student emits 2"):
        c.read("utt1", expected_frames=2)
    with pytest.raises(KeyError, match="'missing' is not in the essence cache"):
        c.read("missing", 3)


def test_atomic_close(tmp_path):
    cache, _ = make(tmp_path)
    assert not (tmp_path / "c" / "index.json").exists()
    with pytest.raises(CacheMismatchError, match="index.json missing"):
        EssenceCache.open(tmp_path / "c", **KEYS)
    cache.close()
    cache.close()  # idempotent
    assert (tmp_path / "c" / "index.json").exists() and not list((tmp_path / "c").glob("*.tmp"))
    # re-creating over a finished cache removes the old index at once
    EssenceCache.create(tmp_path / "c", **KEYS)
    assert not (tmp_path / "c" / "index.json").exists()


def test_write_errors(tmp_path):
    cache, _ = make(tmp_path, n=1)
    with pytest.raises(ValueError, match="already in the cache"):
        cache.write("utt0", np.zeros((1, 3), dtype=np.int64), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="K=2"):
        cache.write("x", np.zeros((1, 2), dtype=np.int64), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="uint16"):
        cache.write("y", np.full((1, 3), 70000), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="log-probabilities"):
        cache.write("z", np.zeros((1, 3), dtype=np.int64), np.full((1, 3), -1.0))


def test_parts_written_by_ranks_merge_into_one_cache(tmp_path):
    rng = np.random.default_rng(1)
    data = {f"utt{i}": utterance(rng, 2 + i) for i in range(7)}
    ids_sorted = sorted(data)
    for rank in range(3):  # each rank writes every third utterance, some in several shards
        part = EssenceCache.create(tmp_path / "c", **KEYS, part=rank, shard_bytes=40)
        for uid in ids_sorted[rank::3]:
            part.write(uid, *data[uid])
        part.close()
    with pytest.raises(CacheMismatchError, match="index.json missing"):
        EssenceCache.open(tmp_path / "c", **KEYS)  # parts alone are not a complete cache
    merged = EssenceCache.merge_parts(tmp_path / "c", 3)
    c = EssenceCache.open(tmp_path / "c", **KEYS)
    assert len(c) == len(merged) == 7 and c.frames == sum(len(i) for i, _ in data.values())
    for uid, (ids, probs) in data.items():
        got_ids, got_probs = c.read(uid, expected_frames=len(ids))
        assert np.array_equal(got_ids, ids) and np.allclose(got_probs, probs, atol=1e-3)
    assert not list((tmp_path / "c").glob("index.part-*.json"))


def test_merge_refuses_a_missing_or_foreign_part(tmp_path):
    rng = np.random.default_rng(2)
    p0 = EssenceCache.create(tmp_path / "c", **KEYS, part=0)
    p0.write("a", *utterance(rng, 3))
    p0.close()
    with pytest.raises(CacheMismatchError, match="part 1 .* is missing"):
        EssenceCache.merge_parts(tmp_path / "c", 2)
    p1 = EssenceCache.create(tmp_path / "c", **{**KEYS, "teacher_hash": "other"}, part=1)
    p1.write("b", *utterance(rng, 3))
    p1.close()
    with pytest.raises(CacheMismatchError, match="teacher_hash"):
        EssenceCache.merge_parts(tmp_path / "c", 2)
