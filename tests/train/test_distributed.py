"""Data-parallel training on CPU with two gloo processes, against one process."""
import os
import socket
import sys
import json
import subprocess
from pathlib import Path

import pytest
import torch

from ekd_compress.train.distributed import DistInfo, dist_info, owns

ROOT = Path(__file__).resolve().parents[2]
from ekd_compress.contract.tokens import TokenTable

TOKENS = TokenTable.build_chars(["a b", "b a"])
F, V, T, S = 12, len(TOKENS), 40, 5  # mel bins, vocabulary, input frames, target tokens


def test_dist_info_reads_torchrun_environment(monkeypatch):
    for k, v in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    info = dist_info()
    assert info == DistInfo(4, 3, 1, 2) and info.num_nodes == 2 and info.enabled and not info.is_main


def test_dist_info_outside_torchrun(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert dist_info() == DistInfo(1, 0, 0, 1) and dist_info().is_main and not dist_info().enabled


def test_dist_info_rejects_inconsistent_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        dist_info()


def test_every_item_goes_to_exactly_one_rank():
    items = [f"utt{i}" for i in range(11)]
    parts = [[u for u in items if owns(u, DistInfo(3, r, r, 3))] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)


# ------------------------------------------------ two gloo processes vs one process
def _batch(seed: int, first_id: int, B: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = [f"u{first_id + b}" for b in range(B)]
    targets = torch.randint(1, V, (B, S), generator=g)
    return {"ids": ids, "texts": ["a b" if b % 2 else "b a" for b in range(B)], "durations": [0.4] * B,
            "feats": torch.randn(B, T, F, generator=g), "lengths": torch.full((B,), T, dtype=torch.long),
            "targets": targets, "target_lengths": torch.full((B,), S, dtype=torch.long)}


def _cat(a: dict, b: dict) -> dict:
    return {k: (a[k] + b[k]) if isinstance(a[k], list) else torch.cat([a[k], b[k]]) for k in a}


TRAIN = [_batch(10 + i, 2 * i) for i in range(4)]   # step s of rank r: batch 2s + r
DEV = [_batch(50 + i, 100 + 2 * i) for i in range(2)]


def _fit(out_dir: Path, train: list, dev: list) -> dict:
    """fit_model on fixed batches (no augmentation, no dropout); returns digest and the saved weights' path."""
    from ekd_compress.recipe import SpecAugmentConfig, TrainConfig
    from ekd_compress.train.fit import build, fit_model, weights_digest
    from ekd_compress.train.module import AsrModule

    torch.manual_seed(0)
    model = build("tdnn", F, V, {"hidden": 16, "layers": 2, "dropout": 0.0})
    cfg = TrainConfig(epochs=2, lr=1e-2, warmup_epochs=0.5, patience=5, threads=1, accelerator="cpu", select_on="loss")
    module = AsrModule(model, TOKENS, cfg, SpecAugmentConfig(enabled=False), steps_per_epoch=len(train))
    loaders = [torch.utils.data.DataLoader(batches, batch_size=None) for batches in (train, dev)]
    res = fit_model(module, *loaders, out_dir, cfg, seed=0, log=lambda m: None)
    return {"digest": weights_digest(module.model), "best_score": res.best_score, "path": str(res.model_path)}


def _worker() -> None:  # one rank, started by test_ddp_matches_single_process through torchrun
    out = Path(sys.argv[2])
    import torch.distributed as dist

    from ekd_compress.train.distributed import init_distributed, shutdown_distributed

    info = init_distributed()
    res = _fit(out / "ddp", TRAIN[info.rank::2], DEV[info.rank::2])
    shutdown_distributed()
    res["group_left"] = not dist.is_initialized()
    (out / f"rank{info.rank}.json").write_text(json.dumps(res))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    """2 ranks × 2 utterances per step = 1 process × 4 utterances per step (CTC is a per-utterance mean)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           __file__, "worker", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks hold different weights after training"
    assert ranks[0]["best_score"] == ranks[1]["best_score"]
    assert ranks[0]["group_left"] and ranks[1]["group_left"], "the process group outlived shutdown_distributed"

    single = _fit(tmp_path / "single", [_cat(TRAIN[0], TRAIN[1]), _cat(TRAIN[2], TRAIN[3])],
                  [_cat(DEV[0], DEV[1])])
    assert single["best_score"] == pytest.approx(ranks[0]["best_score"], abs=1e-6)  # dev loss gathered over ranks
    from ekd_compress.train.fit import load_model

    ddp_model, _ = load_model(Path(ranks[0]["path"]))
    one_model, _ = load_model(Path(single["path"]))
    changed = False
    for (name, a), (_, b) in zip(ddp_model.state_dict().items(), one_model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    init = build_initial()
    for (_, a), (_, b) in zip(ddp_model.state_dict().items(), init.state_dict().items()):
        changed |= not torch.equal(a, b)
    assert changed, "training did not change the weights: the comparison would be vacuous"


def build_initial():
    from ekd_compress.train.fit import build

    torch.manual_seed(0)
    return build("tdnn", F, V, {"hidden": 16, "layers": 2, "dropout": 0.0})


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker()


TINY = [
    "data.synthetic.hours=0.008", "data.synthetic.dev_hours=0.002", "data.synthetic.test_hours=0.001",
    "train.epochs=1", "train.max_duration=20", "distill.seeds=[0]", "distill.ks=[1,all]",
    "distill.refuse_below_threshold=false", "baseline.params={hidden: 16, layers: 1}",
    "members=[{name: lstm, arch: lstm, params: {hidden: 16, layers: 1}}, {name: tdnn, arch: tdnn, params: {hidden: 16, layers: 2}}]",
]


def test_torchrun_distill_on_two_cpu_processes(tmp_path):
    """The README's multi-process command: every stage completes, rank 0 reports once, the cache has every utterance."""
    import gzip


    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "ekd_compress", "distill", "recipes/demo.yaml", "--out", str(exp), "--no-mlflow"]
    for item in TINY:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("results: ") == 1 and "data-parallel: 2 processes on 1 node(s)" in proc.stdout
    results = json.loads((exp / "results.json").read_text())
    names = {row["name"] for row in results["tests"]["dev"]["models"]}
    assert {"baseline", "lstm", "tdnn", "ensemble", "essence_k1", "kd_all", "student"} <= names
    for name in ("baseline", "lstm", "essence_k1"):
        assert json.loads((exp / "models" / name / "fit.json").read_text())["world_size"] == 2
    with gzip.open(exp / "features" / "train_cuts.jsonl.gz", "rt") as f:
        train_ids = {json.loads(line)["id"] for line in f}
    index = json.loads((exp / "essence" / "teacher" / "k1" / "index.json").read_text())
    assert set(index["utts"]) == train_ids  # both ranks' parts, nothing lost or repeated
    assert {s["name"].split("-shard")[0] for s in index["shards"]} == {"part-000", "part-001"}
    assert results["essence"]["frames"] == sum(frames for _, _, frames in index["utts"].values())
