"""Large corpora: lazy manifests through the training loader, and the data-bench measurement."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lhotse import CutSet

from ekd_compress.data.scale_bench import (
    ALPHABET, _call, format_table, id_checksum, load_epoch, peak_rss_mb, prepare_corpus, run_scale_bench,
)
from ekd_compress.pipeline.context import Context, Features
from ekd_compress.recipe import RecipeError, config_hash, load_recipe
from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.train.data import AsrDataset, make_loader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """300 utterances of 1-2 s (stored lilcom features) and their manifest."""
    return prepare_corpus(300, tmp_path_factory.mktemp("corpus"), num_mel_bins=8, progress=False)


def dataset() -> AsrDataset:
    return AsrDataset(TokenTable.build_chars([ALPHABET]), FeatureSpec(num_mel_bins=8), subsampling=4)


def batch_ids(loader) -> list[list[str]]:
    return [batch["ids"] for batch in loader]


def all_ids(manifest: str) -> list[str]:
    return sorted(c.id for c in CutSet.from_jsonl_lazy(manifest))


@pytest.mark.parametrize("shuffle", [True, False])
def test_lazy_epoch_yields_every_cut_once(corpus, shuffle):
    cuts = CutSet.from_jsonl_lazy(corpus["manifest"])
    ds = dataset()
    loader = make_loader(cuts, ds, max_duration=20.0, shuffle=shuffle, seed=3)
    assert not ds.caches_features  # a cache would grow with the corpus
    expected = all_ids(corpus["manifest"])
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        got = [i for b in batch_ids(loader) for i in b]
        assert sorted(got) == expected  # nothing dropped, nothing twice
        assert len(got) == len(set(got))


@pytest.mark.parametrize("shuffle", [True, False])
def test_lazy_ranks_cover_every_cut(corpus, shuffle):
    per_rank = []
    for rank in range(2):
        cuts = CutSet.from_jsonl_lazy(corpus["manifest"])
        loader = make_loader(cuts, dataset(), max_duration=20.0, shuffle=shuffle, seed=3, world_size=2, rank=rank)
        per_rank.append(batch_ids(loader))
    assert len(per_rank[0]) == len(per_rank[1])  # every rank takes the same number of steps
    ids = [i for rank in per_rank for b in rank for i in b]
    assert set(ids) == set(all_ids(corpus["manifest"]))
    assert not {i for b in per_rank[0] for i in b} & {i for b in per_rank[1] for i in b}


def test_eager_and_lazy_give_the_same_shuffled_batches(corpus):
    eager_ds, lazy_ds = dataset(), dataset()
    eager = make_loader(CutSet.from_file(corpus["manifest"]).to_eager(), eager_ds, 20.0, shuffle=True, seed=5)
    lazy = make_loader(CutSet.from_jsonl_lazy(corpus["manifest"]), lazy_ds, 20.0, shuffle=True, seed=5)
    assert batch_ids(eager) == batch_ids(lazy)
    assert eager_ds.caches_features and not lazy_ds.caches_features


@pytest.mark.parametrize("shuffle", [True, False])
def test_tiny_lazy_set_is_read_as_eager(tmp_path, shuffle):
    small = prepare_corpus(50, tmp_path, num_mel_bins=8, progress=False)
    ds = dataset()
    lazy = make_loader(CutSet.from_jsonl_lazy(small["manifest"]), ds, 10.0, shuffle=shuffle, seed=1)
    eager = make_loader(CutSet.from_file(small["manifest"]).to_eager(), dataset(), 10.0, shuffle=shuffle, seed=1)
    assert batch_ids(lazy) == batch_ids(eager)
    assert ds.caches_features


def test_batches_carry_padded_features(corpus):
    batch = next(iter(make_loader(CutSet.from_jsonl_lazy(corpus["manifest"]), dataset(), 20.0, shuffle=True)))
    B, T, F = batch["feats"].shape
    assert F == 8 and B == len(batch["ids"]) and T == int(batch["lengths"].max())
    assert 100 <= int(batch["lengths"].min()) and T <= 200  # 1-2 s at 100 frames/s
    assert (batch["target_lengths"] > 0).all()


@pytest.mark.parametrize("setting,expected", [("auto", True), (True, True), (False, False)])
def test_context_opens_large_splits_lazily(corpus, tmp_path, setting, expected):
    recipe = load_recipe(None, [f"data.lazy={str(setting).lower()}", "data.lazy_min_cuts=100"])
    ctx = Context(recipe, tmp_path)
    ctx.features = Features({"train": corpus["manifest"]}, feature_hash="", cmvn="")
    assert ctx.cuts("train").is_lazy is expected
    big = load_recipe(None, ["data.lazy_min_cuts=300"])  # 300 cuts are not above 300: eager
    ctx = Context(big, tmp_path)
    ctx.features = Features({"train": corpus["manifest"]}, feature_hash="", cmvn="")
    assert not ctx.cuts("train").is_lazy


def test_lazy_setting_is_validated_and_left_out_of_stage_keys():
    with pytest.raises(RecipeError, match="data.lazy='sometimes'"):
        load_recipe(None, ["data.lazy=sometimes"])
    with pytest.raises(RecipeError, match="lazy_min_cuts"):
        load_recipe(None, ["data.lazy_min_cuts=-1"])
    a, b = load_recipe(None, ["data.lazy=true"]), load_recipe(None, ["data.lazy=false", "data.lazy_min_cuts=5"])
    assert config_hash(a.seed, a.data, a.tokens) == config_hash(b.seed, b.data, b.tokens)
    c = load_recipe(None, ["data.min_duration=0.5"])
    assert config_hash(a.seed, a.data, a.tokens) != config_hash(c.seed, c.data, c.tokens)


def test_benchmark_runs_end_to_end(tmp_path):
    result = run_scale_bench(300, tmp_path, isolate=False, progress=False, max_duration=20.0)
    assert [r["n"] for r in result["runs"]] == [30, 300] and result["complete"]
    for r in result["runs"]:
        prep, load = r["prepare"], r["load"]
        assert load["cuts"] == r["n"] and load["checksum"] == prep["checksum"]
        assert 1.0 <= load["frames"] / 100 / r["n"] <= 2.0  # 1-2 s utterances
        assert prep["seconds"] > 0 and load["seconds"] > 0 and load["batches"] >= 1
        assert load["peak_rss_mb"] >= load["baseline_rss_mb"] > 0
    assert result["runs"][1]["load"]["lazy"] and not result["runs"][1]["load"]["feature_cache"]
    assert json.loads(Path(result["json"]).read_text())["runs"][0]["n"] == 30
    assert not (tmp_path / "n300").exists()  # the corpora are removed
    assert result["growth_mb"] == pytest.approx(
        result["runs"][1]["load"]["peak_rss_mb"] - result["runs"][0]["load"]["peak_rss_mb"])
    assert "kB per extra utterance" in format_table(result)


def test_eager_loading_for_comparison(corpus):
    load = load_epoch(corpus["manifest"], max_duration=20.0, lazy=False, progress=False)
    assert load["cuts"] == 300 and load["checksum"] == corpus["checksum"]
    assert not load["lazy"] and load["feature_cache"]


def test_isolated_phase_reports_its_own_peak():
    assert 0 < _call(True, peak_rss_mb) < peak_rss_mb()  # a bare interpreter is smaller than this one
    assert id_checksum(["a", "b"]) == id_checksum(["b", "a"]) != id_checksum(["a", "a"])


def test_data_bench_command(tmp_path):
    from ekd_compress.cli.main import cli

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli, ["data-bench", "-n", "40", "--in-process", "--work-dir", str(tmp_path),
                                   "--out", str(out), "--max-duration", "10"])
    assert res.exit_code == 0, res.output
    assert "load utt/s" in res.output and json.loads(out.read_text())["complete"]


@pytest.mark.parametrize("lazy", [True, False])
def test_worker_processes_give_the_same_batches(corpus, lazy):
    """train.num_workers > 0 (the GPU setting: loading, not the GPU, bounds a small model's epoch)
    yields the batches of the in-process loader, epoch after epoch, with persistent workers."""
    def open_cuts():
        return CutSet.from_jsonl_lazy(corpus["manifest"]) if lazy else CutSet.from_file(corpus["manifest"]).to_eager()

    inline = make_loader(open_cuts(), dataset(), 20.0, shuffle=True, seed=7)
    workers = make_loader(open_cuts(), dataset(), 20.0, shuffle=True, seed=7, num_workers=2)
    assert workers.num_workers == 2 and workers.persistent_workers
    for epoch in range(2):
        inline.sampler.set_epoch(epoch)
        workers.sampler.set_epoch(epoch)
        got, want = list(workers), list(inline)
        assert [b["ids"] for b in got] == [b["ids"] for b in want]
        for a, b in zip(got, want):
            assert torch.equal(a["feats"], b["feats"]) and torch.equal(a["targets"], b["targets"])
