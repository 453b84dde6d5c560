"""The training jobs of the models that learn from transcripts and alignments, and the CTC-only stage.

`distill` trains the baselines (the student architecture on CTC alone, one per seed) and the
members (CTC plus a pull toward the guide's alignment); a size of the student sweep trains its own
CTC-only starts the way the baselines train (`ctc_stage`). `lr-find` builds the same jobs for its
range tests. The students' jobs are in students.py, with their essence targets.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ekd_compress.pipeline.context import Context
from ekd_compress.pipeline.parallel import TrainingStage
from ekd_compress.pipeline.plan import train_key
from ekd_compress.recipe import ModelConfig, Recipe, config_hash
from ekd_compress.train.job import TrainJob


def baseline_job(r: Recipe, name: str, seed: int, out_dir: Path, params: Optional[dict] = None) -> TrainJob:
    """A baseline seed: the student architecture on CTC alone (train settings); `params` (default
    baseline.params) for the CTC-only start of a size of the sweep."""
    return TrainJob(name, "baseline", r.baseline.arch, r.baseline.params if params is None else params, seed, r.train,
                    out_dir, losses={"ctc": 1.0})


def baseline_key(ctx: Context, params: dict, seed: int) -> str:
    """The stage key of a CTC-only model of the student architecture with `params`: the training data,
    the architecture, the train settings, SpecAugment and the seed (the teacher is not part of it)."""
    r = ctx.recipe
    return config_hash(config_hash(ctx.keys["trainset"], r.baseline.arch, params, train_key(r.train),
                                   r.features.specaugment), seed)


def member_job(r: Recipe, m: ModelConfig, name: str, out_dir: Path, align_path: Path) -> TrainJob:
    """Member `m` (model `name`) on CTC + beta * frame CE to the alignment in `align_path`, with
    member_train settings and its own peak LR (members[].lr) when it has one."""
    cfg = r.member_train or r.train
    if m.lr is not None:
        cfg = dataclasses.replace(cfg, lr=m.lr)
    return TrainJob(name, "member", m.arch, m.params, m.seed, cfg, out_dir, losses={"ctc": 1.0, "guide_ce": m.beta},
                    align_path=align_path)


def ctc_stage(ctx: Context, name: str, seed: int, params: dict) -> TrainingStage:
    """The training stage of the CTC-only model `name` of the student architecture with `params`
    (a baseline seed, or the start of a size of the sweep), trained with the train settings."""
    out_dir = ctx.exp_dir / "models" / name
    ctx.keys[name] = baseline_key(ctx, params, seed)
    return TrainingStage(name, ctx.keys[name], lambda: baseline_job(ctx.recipe, name, seed, out_dir, params), out_dir)
