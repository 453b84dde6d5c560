"""The stages after the ensemble: essence targets, the distilled students (one `TrainJob`
each), and the evaluation of every model -> results.json and the report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ekd_compress.evaluate.scoring import score_models
from ekd_compress.experiment import load_any, load_registered, model_file_hash, record_model
from ekd_compress.pipeline.context import Context, EnsembleResult, EssenceResult
from ekd_compress.pipeline.jobs import ctc_stage
from ekd_compress.pipeline.parallel import TrainingStage, train_stages
from ekd_compress.pipeline.plan import (
    CHOSEN, CONTROL, ctc_groups, pick_start, seed_groups, seed_student_name, student_kind, student_name,
    sweep_baseline_names, sweep_name, train_key,
)
from ekd_compress.pipeline.teacher import model_outputs, teacher_path
from ekd_compress.pipeline.stages import StageRunner
from ekd_compress.recipe import DistillConfig, TrainConfig, config_hash
from ekd_compress.train.job import EssenceTargets, TrainJob


def k_value(k: Any, vocab: int) -> int:
    """The number of essence entries per frame: k, at most the vocabulary (k = all: all of it)."""
    return vocab if k == "all" else min(int(k), vocab)


def k_label(k: Any) -> str:
    return "all" if k == "all" else f"k{k}"


def selection(ctx: Context, k: Any) -> dict[str, Any]:
    d = ctx.recipe.distill
    return {"k": k_value(k, len(ctx.tokens)), "temperature": d.temperature, "mode": d.mode, "top_p": d.top_p}


def cache_keys(ctx: Context, teacher_file: Path, k: Any) -> dict[str, Any]:
    """What an essence cache must have been made from for this run (checked when it is opened)."""
    return {"feature_hash": ctx.spec.hash(), "teacher_hash": model_file_hash(teacher_file), "selection": selection(ctx, k)}


def teaching_key_extras(d: DistillConfig) -> list[Any]:
    """The student-key parts of teaching options that are not at their defaults (teacher_view, kd_fade):
    experiments made before an option existed keep their keys."""
    extras: list[Any] = [d.teacher_view] if d.teacher_view != "clean" else []
    if d.kd_fade is not None:
        extras.append(["kd_fade", *d.kd_fade])
    return extras


def essence_targets(ctx: Context, k: Any, teacher_file: Path, cache: Optional[EssenceResult]) -> EssenceTargets:
    """A student's essence targets: read from `cache` (the essence stage's), or without one
    computed in every step by the frozen teacher (distill.cache=fly, loaded here)."""
    d = ctx.recipe.distill
    targets = EssenceTargets(k=k_value(k, len(ctx.tokens)), temperature=d.temperature, mode=d.mode, top_p=d.top_p,
                             blank_weight=d.blank_weight,
                             fade=tuple(d.kd_fade) if d.kd_fade is not None else None)
    if cache is None:
        targets.teacher = load_any(teacher_file)
        targets.teacher_view = d.teacher_view
    else:
        targets.cache_dir = Path(cache.dirs[str(k)])
        targets.cache_keys = cache_keys(ctx, teacher_file, k)
    return targets


# --------------------------------------------------------------------- essence caches
def stage_essence(ctx: Context, teacher_file: Path, ks: list[Any], out_root: Path) -> EssenceResult:
    """One pass of the (clean-feature) teacher over the training set, writing one cache per k.

    Runs on every rank of a torchrun job: each rank takes its share of the utterances and
    writes its part of each cache; rank 0 then joins the parts and sums the statistics.
    """
    import torch

    from ekd_compress.ensemble.cache import EssenceCache
    from ekd_compress.ensemble.essence import cumulative_topk_mass, select_essence
    from ekd_compress.train.distributed import all_gather, dist_info, on_main, owns

    info = dist_info()
    teacher = load_any(teacher_file)
    caches, dirs = {}, {}
    for k in ks:
        dirs[k] = out_root / k_label(k)
        caches[k] = EssenceCache.create(dirs[k], **cache_keys(ctx, teacher_file, k),
                                        part=info.rank if info.enabled else None)
    V = len(ctx.tokens)
    mass_sum, frames = np.zeros(V), 0
    blank_top = 0
    d = ctx.recipe.distill
    cuts = ctx.cuts("train")
    if info.enabled:  # by a hash of the id, so a lazy manifest stays lazy
        cuts = cuts.filter(lambda c: owns(c.id, info))
    for batch, log_probs, out_lengths in model_outputs(ctx, teacher, cuts, desc="essence" if info.is_main else None):
        n = int(out_lengths.sum())
        mass_sum += cumulative_topk_mass(log_probs, out_lengths, d.temperature, V) * n
        frames += n
        mask = torch.arange(log_probs.shape[1])[None] < out_lengths[:, None]
        blank_top += int(((log_probs.argmax(-1) == 0) & mask).sum())
        for k in ks:
            sel = selection(ctx, k)
            ids, probs = select_essence(log_probs, k=sel["k"], temperature=d.temperature, mode=d.mode, top_p=d.top_p)
            for b, uid in enumerate(batch["ids"]):
                T = int(out_lengths[b])
                caches[k].write(uid, ids[b, :T].numpy(), probs[b, :T].numpy())
    for k in ks:
        caches[k].close()
    if info.enabled:  # every rank's counts, and one cache index per k
        # all_gather returns once every rank has closed its parts, so rank 0 can join them
        parts = all_gather((mass_sum, frames, blank_top))
        mass_sum, frames, blank_top = sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
        bytes_per_frame = on_main(lambda: {k: EssenceCache.merge_parts(dirs[k], info.world_size).bytes_per_frame()
                                           for k in ks}, "joining the essence cache parts")
    else:
        bytes_per_frame = {k: caches[k].bytes_per_frame() for k in ks}
    out = EssenceResult(dirs={str(k): str(v) for k, v in dirs.items()},
                        bytes_per_frame={str(k): b for k, b in bytes_per_frame.items()},
                        topk_mass=(mass_sum / max(frames, 1)).tolist(), blank_top1_share=blank_top / max(frames, 1),
                        frames=frames, parts=info.world_size)
    ctx.log(f"essence cache: {frames} frames; bytes/frame " +
            ", ".join(f"{k_label(k)}={b:.1f}" for k, b in out.bytes_per_frame.items()))
    return out


# ---------------------------------------------------------------------------- students
@dataclass
class StudentPlan:
    """What every student stage of one run shares: its teacher, the essence selection and where the
    students of the student's size start (`init_file`: the guide's weights with distill.student_init=guide,
    else None, from scratch; `init_extras`: what that start adds to their keys)."""

    ctx: Context
    teacher_key: str
    teacher_file: Path
    sel_key: str  # the essence selection and the training data
    init_file: Optional[Path]
    init_extras: list[Any]

    @property
    def cfg(self) -> TrainConfig:
        return self.ctx.recipe.student_train or self.ctx.recipe.train

    def teaching_key(self, model_params: dict, start: list[Any]) -> str:
        """What a student of size `model_params` depends on besides its teacher, k and seed: the loss and training
        settings and where it starts (`start`: [] from scratch); not on the other ks."""
        r, d = self.ctx.recipe, self.ctx.recipe.distill
        return config_hash(self.sel_key, train_key(self.cfg), d.lam, d.blank_weight, d.cache, r.baseline.arch,
                           model_params, r.features.specaugment, *teaching_key_extras(d), *start)

    @property
    def student_key(self) -> str:
        """The teaching key of the students of the student's size (the chosen k, the other ks, its seeds, the control)."""
        return self.teaching_key(self.ctx.recipe.baseline.params, self.init_extras)

    def stage(self, name: str, kind: str, k: Any, seed: int, key: str, cache: Optional[EssenceResult],
              t_file: Path, start: Optional[Path], size: Optional[dict] = None) -> TrainingStage:
        """The training stage of student `name` (essence size `k`, the teacher in `t_file` or its `cache`),
        of the student's size or `size`, starting from `start` (None: from scratch)."""
        ctx, d, base = self.ctx, self.ctx.recipe.distill, self.ctx.recipe.baseline

        def make_job() -> TrainJob:
            return TrainJob(name, kind, base.arch, size or base.params, seed, self.cfg, ctx.exp_dir / "models" / name,
                            losses={"ctc": d.lam, "essence_kd": 1.0 - d.lam},
                            essence=essence_targets(ctx, k, t_file, cache), init_from=start)

        ctx.keys[name] = key
        return TrainingStage(name, key, make_job, ctx.exp_dir / "models" / name)


def run_students(ctx: Context, runner: StageRunner, teacher_key: str) -> None:
    """Essence caches, then the students in rounds: a student per k and the control student (the
    round that chooses k), then more seeds of the chosen one and the size sweep (with
    student_init=guide each size first trains CTC-only seeds to start from)."""
    d = ctx.recipe.distill
    teacher_file = teacher_path(ctx)
    sel_key = config_hash(d.temperature, d.mode, d.top_p if d.mode == "top_p" else None, ctx.keys["trainset"])
    if d.cache != "fly":  # without a cache, each student's frozen teacher computes its targets in every step
        ess_key = config_hash(teacher_key, sel_key, list(d.ks))
        ess_dir = ctx.exp_dir / "essence" / "teacher"
        ctx.essence = EssenceResult.from_json(runner.run(
            "essence", ess_key, lambda: stage_essence(ctx, teacher_file, list(d.ks), ess_dir).to_json(),
            work_dir=ess_dir, all_ranks=True))
    # distill.student_init=guide: the students of the student's size start from the guide's weights (and depend on it)
    init_file = ctx.model_path(ctx.guide) if d.student_init == "guide" else None
    plan = StudentPlan(ctx, teacher_key, teacher_file, sel_key, init_file,
                       [["init", ctx.keys["guide"]]] if init_file else [])
    chosen = _first_round(plan, runner)
    _seeds_and_sweep(plan, runner, chosen)


def _first_round(plan: StudentPlan, runner: StageRunner) -> Any:
    """A student per k and the control student (taught by the guide alone); registers the student of
    the chosen k (the best on dev, or distill.student_k) as `student` and returns that k."""
    ctx, d = plan.ctx, plan.ctx.recipe.distill
    seed0, ks = d.seeds[0], list(d.ks)
    student_key = plan.student_key
    first = [plan.stage(student_name(k), student_kind(k), k, seed0, config_hash(student_key, plan.teacher_key, k, seed0),
                        ctx.essence, plan.teacher_file, plan.init_file) for k in ks]
    if d.control:
        base_file = ctx.model_path(ctx.guide)  # the guide: the best baseline seed on dev, or the one named
        ctl: Optional[EssenceResult] = None
        if d.cache != "fly":
            ctl_key = config_hash(ctx.keys["guide"], plan.sel_key, ["all"])
            ctl_dir = ctx.exp_dir / "essence" / "control"
            ctl = EssenceResult.from_json(runner.run("essence_control", ctl_key, lambda: stage_essence(
                ctx, base_file, ["all"], ctl_dir).to_json(), work_dir=ctl_dir, all_ranks=True))
        first.append(plan.stage(CONTROL, "kd", "all", seed0, config_hash(student_key, ctx.keys["guide"], "all", seed0),
                                ctl, base_file, plan.init_file))
    done = train_stages(ctx, runner, first, plan.cfg)
    rows = {k: (student_name(k), done[student_name(k)]) for k in ks}

    chosen = min(ks, key=lambda k: rows[k][1].best_dev) if d.student_k == "auto" else d.student_k
    name, res = rows[chosen]
    ctx.log(f"chosen student: {name} (k={chosen}, dev {plan.cfg.select_on} {res.best_dev:.2f}; "
            f"the recipe's metric is {ctx.recipe.data.metric})")
    from ekd_compress.train.distributed import on_main

    seed = res.seed if res.seed is not None else seed0
    on_main(lambda: record_model(ctx.exp_dir, CHOSEN, "student", Path(res.model), seed=seed,
                                 same_as=name, k=str(chosen)), "registering the student")
    ctx.chosen_k = str(chosen)
    return chosen


def _seeds_and_sweep(plan: StudentPlan, runner: StageRunner, chosen: Any) -> None:
    """More seeds of the chosen student (k = `chosen`), and the size sweep: distill.sweep_seeds students
    of each size, at the chosen k. With student_init=guide each size's CTC-only starts train with the
    seeds, and the size's students follow in a round of their own, from its best start."""
    ctx, d = plan.ctx, plan.ctx.recipe.distill
    seeds, params = list(d.seeds), ctx.recipe.baseline.params
    student_key = plan.student_key
    group = [plan.stage(seed_student_name(seed), "student", chosen, seed,
                        config_hash(student_key, plan.teacher_key, chosen, seed), ctx.essence, plan.teacher_file,
                        plan.init_file)
             for seed in seeds[1:]]
    sizes = {size.name: {**params, **size.params} for size in d.student_sizes}
    group += [ctc_stage(ctx, name, seed, sizes[size])
              for size in sizes for name, seed in zip(sweep_baseline_names(d, size), seeds)]
    done: dict[str, Any] = {}
    if any(sweep_baseline_names(d, size) for size in sizes):  # the sizes' students need their starts first
        done, group = train_stages(ctx, runner, group, plan.cfg), []
    for size, size_params in sizes.items():
        start, start_extras = sweep_start(ctx, size, done)
        size_key = plan.teaching_key(size_params, start_extras)
        for i, seed in enumerate(seeds[:d.sweep_seeds]):
            group.append(plan.stage(sweep_name(size, i, seed), "student", chosen, seed,
                                    config_hash(size_key, plan.teacher_key, chosen, seed), ctx.essence,
                                    plan.teacher_file, start, size=size_params))
    train_stages(ctx, runner, group, plan.cfg)


def sweep_start(ctx: Context, size: str, done: dict[str, Any]) -> tuple[Optional[Path], list[Any]]:
    """Where the students of sweep size `size` start, and what their key adds for it: with
    distill.student_init=guide, the size's CTC-only seed with the best dev score (`done`: the
    trained stages by name; distill.guide=first: its first seed; a guide named by its baseline: the best,
    as the size's seeds have other names), as the chosen student starts from the guide; with scratch,
    (None, []) and the keys of earlier experiments."""
    d = ctx.recipe.distill
    names = sweep_baseline_names(d, size)
    if not names:
        return None, []
    dev = {n: done[n].best_dev for n in names}
    best = pick_start(dev, d.guide if d.guide in ("best", "first") else "best")
    ctx.log(f"sweep {size}: its students start from {best} (dev " + ", ".join(f"{n} {v:.2f}" for n, v in dev.items()) + ")")
    return ctx.model_path(best), [["init", ctx.keys[best]]]


# --------------------------------------------------------------------------- evaluate
def stage_evaluate(ctx: Context) -> dict[str, Any]:
    """Score every registered model on dev and every test set -> results.json, results.md, plots."""
    from ekd_compress.pipeline.report import write_report

    scoring = "swbd" if ctx.recipe.data.corpus == "switchboard" else "plain"
    models = load_registered(ctx.exp_dir)  # loaded once, scored on every set
    metric = ctx.recipe.data.metric
    tests = {name: score_models(models, ctx.cuts(split), name, ctx.tokens, ctx.spec, scoring, ctx.log, metric)
             for name, split in ctx.features.scored_sets().items()}
    registry = [entry for entry, _ in models.values()]
    results = {
        "metric": metric,
        "tests": tests,
        "chosen_k": ctx.chosen_k,
        "coincidence": ctx.coincidence,
        "essence": {key: getattr(ctx.essence, key) for key in EssenceResult.SUMMARY} if ctx.essence else {},
        "train_seconds": _train_seconds(ctx, registry),
        "seeds": list(ctx.recipe.distill.seeds),
        "guide": ctx.guide,
        "ensemble": _fusion_summary(ctx.ensemble),
        "restarts": {e["name"]: e["restarts"] for e in registry if e.get("restarts")},
        "unconverged": {e["name"]: e["unconverged"] for e in registry if e.get("unconverged")},
        "oov": ctx.data.oov,
        "verdict_targets": dict(ctx.recipe.distill.verdict_targets),
    }
    if ctx.first_round is not None:  # distill.reguide: the teacher is the second round's ensemble
        results["first_round_ensemble"] = _fusion_summary(ctx.first_round)
    if ctx.recipe.distill.student_sizes:  # the compression curve: cost of every model against its WER
        results["compression"] = _compression(ctx, models, tests)
    write_report(ctx.exp_dir, results, ctx.recipe)
    return results


def _fusion_summary(result: Optional[EnsembleResult]) -> dict[str, Any]:
    """An ensemble stage's result without its search grid (the results.json "ensemble" entry)."""
    return {k: v for k, v in result.to_json().items() if k != "grid"} if result else {}


def _compression(ctx: Context, models: dict, tests: dict[str, Any]) -> dict[str, Any]:
    from ekd_compress.features.fbank import load_features
    from ekd_compress.pipeline.compression import measure_compression
    from ekd_compress.pipeline.verdict import verdict_split

    seconds = ctx.recipe.distill.compression_rtf_seconds
    feats, total = [], 0.0
    for cut in ctx.cuts("dev"):
        feats.append(load_features(cut, ctx.spec))
        total += cut.duration
        if total >= seconds:
            break
    ctx.log(f"compression: FLOPs and ONNX streaming RTF (1 thread) of every model over {total:.1f} s of dev audio")
    chosen = models[CHOSEN][0].get("same_as", CHOSEN)  # the chosen k's model, e.g. kd_all
    return measure_compression(models, tests, verdict_split(tests), feats, seconds,
                               frame_shift_ms=float(ctx.spec.frame_shift_ms), log=ctx.log,
                               groups=seed_groups(ctx.recipe.distill, chosen), ctc=ctc_groups(ctx.recipe.distill))


def _train_seconds(ctx: Context, registry: list[dict]) -> dict[str, float]:
    out = {}
    for e in registry:
        fit = ctx.exp_dir / Path(e["path"]).parent / "fit.json"
        if fit.exists():
            out[e["name"]] = json.loads(fit.read_text())["train_seconds"]
    return out


def log_report(ctx: Context, results: dict[str, Any]) -> None:
    """Print the table and attach results, plots and the recipe to the parent MLflow run (rank 0)."""
    from ekd_compress.train.distributed import dist_info

    if not dist_info().is_main:
        return
    print((ctx.exp_dir / "results.md").read_text())
    metric = results.get("metric", "wer")
    for test_name, t in results["tests"].items():
        ctx.tracker.log_metrics({f"{test_name}_{metric}_{row['name']}": row[metric] for row in t["models"]
                                 if row.get(metric) is not None}, step=0)
    for f in ("results.json", "results.md", "recipe.yaml", "models.json", "tokens.txt", "lexicon.txt"):
        if (ctx.exp_dir / f).exists():
            ctx.tracker.log_artifact(ctx.exp_dir / f)
    ctx.tracker.log_artifacts(ctx.exp_dir / "plots")
