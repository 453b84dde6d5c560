"""`ekd-compress distill RECIPE`: every stage from data to the results table, in order.

Stages (each resumable, keyed by what it depends on; see stages.py; the list is plan.py's):
  data       corpus -> validated CutSets + tokens.txt
  features   fbank stored once per split (or on the fly)
  baseline   the student architecture on hard labels (CTC), one run per seed; the seed
             with the best dev WER is the guide whose spike timings the members follow
             (a seed stuck on the blank plateau is restarted by the watchdog, see train/watchdog.py)
  align      the guide's CTC forced alignment of the training set
  members    each ensemble member: CTC + beta * frame CE to the guide alignment
  coincide   token-matched spike coincidence of each member with the guide (dev set);
             refuses frame-level fusion below distill.coincidence_threshold
  ensemble   probability-domain fusion of the members (a model like any other); weights
             equal, given, grid-searched or chosen by forward selection on dev
  align_r2 … ensemble_r2   only with distill.reguide: the same four again, the members guided by
             the first ensemble (or its best member on dev); this second fusion is the teacher
  essence    fused teacher targets: T applied, top-k selected, cached on disk
  students   essence KD at each k in distill.ks (k=all is plain KD), the control
             student taught by the baseline alone, extra seeds of the chosen student
  evaluate   every model on dev and every test set -> results.json / results.md / plots

One student's training, file by file: this module (the order and the keys) -> students.py
(its TrainJob) -> parallel.py (in this process, or in a worker beside the others of its group with
train.parallel_jobs > 1) -> ekd_compress/train/job.py (the run) -> ekd_compress/train/module.py (the
step and its losses). The stages hand each other typed results (context.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from ekd_compress.pipeline.context import Alignment, Context, EnsembleResult, Features, PreparedData
from ekd_compress.pipeline.jobs import ctc_stage, member_job
from ekd_compress.pipeline.parallel import TrainingStage, train_stages
from ekd_compress.pipeline.plan import (
    baseline_names, expected_models, extra_data_key, pick_start, planned_stages, train_key, trainset_config,
)
from ekd_compress.pipeline.report import dev_score
from ekd_compress.recipe import SECOND_ROUND, Recipe, config_hash, save_recipe


def run_distill(recipe: Recipe, exp_dir: Optional[Path] = None, log: Callable[[str], None] = print,
                tracking: bool = True, stop_after: Optional[str] = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns the results.json object."""
    from ekd_compress.atomic import write_json_atomic
    from ekd_compress.experiment import prune_registry
    from ekd_compress.pipeline import teacher as S
    from ekd_compress.pipeline import students as ST
    from ekd_compress.pipeline.stages import StageRunner
    from ekd_compress.train.distributed import init_distributed, on_main, shutdown_distributed
    from ekd_compress.train.fit import resolve_device

    info = init_distributed(use_cuda=resolve_device(recipe.train)[0] == "gpu")
    if not info.is_main:  # rank 0 reports; the others would print the same lines again
        log = _quiet
    # absolute, so the paths stages record do not depend on the working folder (an experiment may be
    # resumed from another folder, or copied and resumed)
    exp_dir = Path(exp_dir or recipe.out_dir).resolve()
    exp_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(recipe, exp_dir, log)
    on_main(lambda: save_recipe(recipe, exp_dir / "recipe.yaml"), "saving the recipe")
    ctx.tracker = S.open_tracker(ctx, enabled=tracking and recipe.tracking.enabled and info.is_main)
    if info.enabled:
        log(f"data-parallel: {info.world_size} processes on {info.num_nodes} node(s)")
    runner = StageRunner(exp_dir, log, plan=planned_stages(recipe))
    r = recipe
    status = "FINISHED"
    try:
        ctx.keys["data"] = config_hash(r.seed, r.data, r.tokens, *extra_data_key(r))
        ctx.data = PreparedData.from_json(runner.run("data", ctx.keys["data"], lambda: S.stage_data(ctx).to_json()))
        feature_cfg = (r.features.num_mel_bins, r.features.frame_length_ms, r.features.frame_shift_ms,
                       r.features.dither, r.features.precompute, "cmvn")
        ctx.keys["features"] = config_hash(ctx.keys["data"], feature_cfg)
        ctx.features = Features.from_json(runner.run("features", ctx.keys["features"],
                                                     lambda: S.stage_features(ctx).to_json()))
        if r.members and r.distill.fusion_tune != "none":
            S.fusion_sets(ctx.features, r.distill.fusion_on)  # a set it does not score: say so before any training
        if stop_after == "features":
            return {}
        # models depend on the training data and features only: test sets may change freely
        ctx.keys["trainset"] = config_hash(r.seed, trainset_config(r), r.tokens, feature_cfg, *extra_data_key(r))

        train_cfg = r.train
        base_stages = [ctc_stage(ctx, name, seed, r.baseline.params)
                       for name, seed in zip(baseline_names(r.distill), r.distill.seeds)]
        base_dev = {name: res.best_dev for name, res in train_stages(ctx, runner, base_stages, train_cfg).items()}
        # the guide (whose spikes the members follow, and the control student's teacher): the best
        # CTC-only model of the student architecture on dev, not seed 0 by fiat
        guide = pick_start(base_dev, r.distill.guide)
        ctx.guide = guide
        ctx.keys["guide"] = ctx.keys[guide]
        log(f"guide: {guide} (dev {train_cfg.select_on} " + ", ".join(f"{n} {v:.2f}" for n, v in base_dev.items()) + ")")
        if stop_after == "baseline":
            return {}

        if r.members:
            reguide = r.distill.reguide
            member_dev = _teacher_round(ctx, runner, "", ctx.model_path(guide), config_hash(ctx.keys["guide"]),
                                        last=reguide == "none")
            if reguide != "none":  # one more round of guidance (GUIDE.md: "re-guide from a first ensemble")
                ctx.first_round = ctx.ensemble
                if reguide == "ensemble":
                    source, source_key = Path(ctx.first_round.path), ctx.keys["ensemble"]
                    label = "the first ensemble"
                else:  # the first round's best member on dev
                    best = min(member_dev, key=member_dev.get)
                    source, source_key, label = ctx.model_path(best), ctx.keys[best], f"{best}, the best member on dev"
                log(f"reguide: the members train again from scratch, guided by {label} instead of {guide}")
                _teacher_round(ctx, runner, SECOND_ROUND, source, config_hash(source_key, "reguide"), last=True)
                on = ctx.first_round.tuning.get("tuned_on", "dev")  # the sets its search scored, as results.md says
                log(f"reguide: ensemble {on} {r.data.metric.upper()} {_dev_score(ctx.first_round)} in the first round, "
                    f"{_dev_score(ctx.ensemble)} in the second (its teacher)")
            teacher_key = ctx.keys["ensemble" + ("" if reguide == "none" else SECOND_ROUND)]
        else:
            log("no members in the recipe: the teacher is the baseline alone")
            teacher_key = ctx.keys["guide"]
        if stop_after == "ensemble":
            return {}

        ST.run_students(ctx, runner, teacher_key)
        # drop models a changed recipe no longer makes
        registry = on_main(lambda: prune_registry(exp_dir, expected_models(r)), "pruning models.json")
        if r.distill.student_sizes:  # the compression section joins the key only with a sweep
            ctx.keys["compression"] = config_hash("compression-1", r.distill.compression_rtf_seconds)
        metric = [r.data.metric] if r.data.metric != "wer" else []  # WER experiments keep their key
        if r.distill.verdict_targets:  # so do experiments with the default targets
            metric.append(sorted(r.distill.verdict_targets.items()))
        # "scores-2": rows carry per-utterance counts (the verdict's intervals), so older results re-score
        ctx.keys["evaluate"] = config_hash(sorted(ctx.keys.items()), registry, ctx.features.to_json(), *metric,
                                           "scores-2")
        results = runner.run("evaluate", ctx.keys["evaluate"], lambda: ST.stage_evaluate(ctx))
        ST.log_report(ctx, results)
        return results
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"  # a run that stopped on an error must not read FINISHED in MLflow
        raise
    finally:
        if info.is_main:
            write_json_atomic(exp_dir / "stages" / "last_run.json", {"ran": runner.ran, "skipped": runner.skipped})
        if ctx.tracker is not None:
            ctx.tracker.end(status)
        shutdown_distributed(wait=status == "FINISHED")


def _teacher_round(ctx: Context, runner: Any, suffix: str, source: Path, align_key: str,
                   last: bool) -> dict[str, float]:
    """One round of guided members and their fusion: align the training set with `source` (the guide,
    or with distill.reguide the first round's ensemble or best member), train every member on
    CTC + beta * frame CE to that alignment, check their coincidence with the guide, fuse them.

    The stages and keys are "align", "member_<name>", "coincide", "ensemble" with `suffix` appended
    ("" for the first round, so experiments made before reguide keep theirs). The members are the
    models <name><suffix>; the fusion is EXP/models/ensemble<suffix>.json. The `last` round's members
    and fusion (the teacher's) are (re-)registered in models.json as "<name><suffix>" and "ensemble", so
    switching reguide on or off points the registry at the right round. Returns each member's dev
    score (the training's select_on metric), by model name."""
    from ekd_compress.experiment import record_model
    from ekd_compress.pipeline import teacher as S
    from ekd_compress.train.distributed import on_main

    r = ctx.recipe
    member_cfg = r.member_train or r.train
    ctx.keys["align" + suffix] = align_key
    ctx.alignment = Alignment.from_json(runner.run("align" + suffix, ctx.keys["align" + suffix],
                                                   lambda: S.stage_align(ctx, source, f"train{suffix}.npz").to_json()))
    member_stages, names, jobs = [], [], {}
    for m in r.members:
        name = m.name + suffix
        job = member_job(r, m, name, ctx.exp_dir / "models" / name, Path(ctx.alignment.path))
        key = config_hash(ctx.keys["align" + suffix], m, train_key(job.train), r.features.specaugment)
        member_stages.append(TrainingStage(f"member_{name}", key, lambda j=job: j, job.out_dir))
        ctx.keys[name] = key
        names.append(name)
        jobs[name] = job
    trained = train_stages(ctx, runner, member_stages, member_cfg)
    member_keys = [ctx.keys[n] for n in names]
    ctx.keys["coincide" + suffix] = config_hash(member_keys, r.distill.coincidence_threshold,
                                                r.distill.refuse_below_threshold)
    ctx.coincidence = runner.run("coincide" + suffix, ctx.keys["coincide" + suffix],
                                 lambda: S.stage_coincidence(ctx, names))
    # the search joins the key only when on, so ensembles made before it existed keep theirs
    tune = [(r.distill.fusion_tune, r.distill.fusion_grid)] if r.distill.fusion_tune == "dev" else []
    if r.distill.fusion_tune == "select":
        tune = [("select", r.distill.select_rounds, r.distill.drop_ratio)]
    if tune and r.distill.fusion_on != ["dev"]:  # likewise the sets it scores, when more than dev
        tune.append(("on", list(r.distill.fusion_on)))
    ctx.keys["ensemble" + suffix] = config_hash(member_keys, r.distill.fusion_weights, *tune)
    ctx.ensemble = EnsembleResult.from_json(runner.run(
        "ensemble" + suffix, ctx.keys["ensemble" + suffix],
        lambda: S.stage_ensemble(ctx, names, f"ensemble{suffix}.json").to_json()))
    if last:
        def register() -> None:
            for name in names:
                ctx.record(jobs[name], trained[f"member_{name}"])
            record_model(ctx.exp_dir, "ensemble", "ensemble", Path(ctx.ensemble.path))
        on_main(register, "registering the teacher")
    return {name: trained[f"member_{name}"].best_dev for name in names}


def _dev_score(result: Optional[EnsembleResult]) -> str:
    """An ensemble's dev score from its fusion search, or "-" when its weights were not searched."""
    return dev_score((result.tuning if result else {}).get("dev_wer"))


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def clean_experiment(exp_dir: Path) -> None:
    """Remove an experiment directory (for `distill --fresh`); refuses folders distill did not write."""
    exp_dir = Path(exp_dir)
    if not exp_dir.exists():
        return
    if not (exp_dir / "stages").is_dir() and not (exp_dir / "recipe.yaml").exists():
        raise ValueError(f"--fresh would delete {exp_dir}, which is not an experiment directory (no stages/ or "
                         "recipe.yaml); pick another --out or delete it yourself")
    shutil.rmtree(exp_dir)
