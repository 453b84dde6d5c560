"""`ekd-compress distill RECIPE`: every stage from data to the results table.

Stages (each resumable, keyed by what it depends on; see stages.py):
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
  essence    fused teacher targets: T applied, top-k selected, cached on disk
  students   essence KD at each k in distill.ks (k=all is plain KD), the control
             student taught by the baseline alone, extra seeds of the chosen student
  evaluate   every model on dev and every test set -> results.json / results.md / plots
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ekd_compress.recipe import Recipe, TrainConfig, config_hash, save_recipe


@dataclass
class Context:
    recipe: Recipe
    exp_dir: Path
    log: Callable[[str], None] = print
    tracker: Any = None
    keys: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    # lazily loaded shared objects -------------------------------------------------
    @property
    def spec(self):
        from ekd_compress.features.fbank import feature_spec

        return feature_spec(self.recipe.features, self.recipe.data.sample_rate)

    @property
    def tokens(self):
        from ekd_compress.contract.tokens import TokenTable

        if "tokens" not in self._cache:
            self._cache["tokens"] = TokenTable.load(self.exp_dir / "tokens.txt")
        return self._cache["tokens"]

    def cuts(self, split: str):
        """One split's CutSet, read eagerly or lazily (streamed from disk) as `data.lazy` says.

        auto: lazily when the manifest holds more than `data.lazy_min_cuts` cuts (counted
        by reading at most that many lines). Lazy sets keep memory flat in the corpus size.
        """
        import gzip
        from itertools import islice

        from lhotse import CutSet

        if split not in self._cache:
            path = self.data["features"][split]
            lazy, limit = self.recipe.data.lazy, self.recipe.data.lazy_min_cuts
            if lazy == "auto":
                with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
                    lazy = sum(1 for _ in islice(f, limit + 1)) > limit
            self._cache[split] = CutSet.from_jsonl_lazy(path) if lazy else CutSet.from_file(path).to_eager()
        return self._cache[split]


def run_distill(recipe: Recipe, exp_dir: Optional[Path] = None, log: Callable[[str], None] = print,
                tracking: bool = True, stop_after: Optional[str] = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns the results.json object."""
    from ekd_compress.pipeline import stage_impl as S
    from ekd_compress.pipeline import students as ST
    from ekd_compress.pipeline.stages import StageRunner

    from ekd_compress.train.distributed import init_distributed, on_main
    from ekd_compress.train.fit import resolve_device

    info = init_distributed(use_cuda=resolve_device(recipe.train)[0] == "gpu")
    if not info.is_main:  # rank 0 reports; the others would print the same lines again
        log = _quiet
    exp_dir = Path(exp_dir or recipe.out_dir)
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
        ctx.keys["data"] = config_hash(r.seed, r.data, r.tokens, *lexicon_key(r))
        ctx.data["data"] = runner.run("data", ctx.keys["data"], lambda: S.stage_data(ctx))
        feature_cfg = (r.features.num_mel_bins, r.features.frame_length_ms, r.features.frame_shift_ms,
                       r.features.dither, r.features.precompute, "cmvn")
        ctx.keys["features"] = config_hash(ctx.keys["data"], feature_cfg)
        ctx.data["features"] = runner.run("features", ctx.keys["features"], lambda: S.stage_features(ctx))
        if stop_after == "features":
            return {}
        # models depend on the training data and features only: test sets may change freely
        ctx.keys["trainset"] = config_hash(r.seed, trainset_config(r), r.tokens, feature_cfg, *lexicon_key(r))

        train_cfg = r.train
        seeds = list(r.distill.seeds)
        base_key = config_hash(ctx.keys["trainset"], r.baseline.arch, r.baseline.params, train_key(train_cfg),
                               r.features.specaugment)
        base_dev = {}
        for i, seed in enumerate(seeds):
            name = "baseline" if i == 0 else f"baseline_s{seed}"
            key = config_hash(base_key, seed)
            res = runner.run(name, key, lambda n=name, s=seed: S.stage_train(
                ctx, n, "baseline", r.baseline.arch, r.baseline.params, "ctc", s, train_cfg),
                work_dir=exp_dir / "models" / name, all_ranks=True)
            ctx.keys[name] = key
            base_dev[name] = res["best_dev"]
        # the guide (whose spikes the members follow, and the control student's teacher): the best
        # CTC-only model of the student architecture on dev, not seed 0 by fiat
        guide = min(base_dev, key=base_dev.get) if r.distill.guide == "best" else "baseline"
        ctx.data["guide"] = guide
        ctx.keys["guide"] = ctx.keys[guide]
        log(f"guide: {guide} (dev {train_cfg.select_on} " + ", ".join(f"{n} {v:.2f}" for n, v in base_dev.items()) + ")")
        if stop_after == "baseline":
            return {}

        member_cfg = r.member_train or r.train
        if r.members:
            ctx.keys["align"] = config_hash(ctx.keys["guide"])
            ctx.data["align"] = runner.run("align", ctx.keys["align"], lambda: S.stage_align(ctx))
            for m in r.members:
                key = config_hash(ctx.keys["align"], m, train_key(member_cfg), r.features.specaugment)
                runner.run(f"member_{m.name}", key, lambda m=m: S.stage_train(
                    ctx, m.name, "member", m.arch, m.params, "guided", m.seed, member_cfg, beta=m.beta),
                    work_dir=exp_dir / "models" / m.name, all_ranks=True)
                ctx.keys[m.name] = key
            member_keys = [ctx.keys[m.name] for m in r.members]
            ctx.keys["coincide"] = config_hash(member_keys, r.distill.coincidence_threshold,
                                               r.distill.refuse_below_threshold)
            ctx.data["coincide"] = runner.run("coincide", ctx.keys["coincide"], lambda: S.stage_coincidence(ctx))
            # the search joins the key only when on, so ensembles made before it existed keep theirs
            tune = [(r.distill.fusion_tune, r.distill.fusion_grid)] if r.distill.fusion_tune == "dev" else []
            if r.distill.fusion_tune == "select":
                tune = [("select", r.distill.select_rounds, r.distill.drop_ratio)]
            ctx.keys["ensemble"] = config_hash(member_keys, r.distill.fusion_weights, *tune)
            ctx.data["ensemble"] = runner.run("ensemble", ctx.keys["ensemble"], lambda: S.stage_ensemble(ctx))
            teacher_key = ctx.keys["ensemble"]
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
        ctx.keys["evaluate"] = config_hash(sorted(ctx.keys.items()), registry, ctx.data["features"], *metric)
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
        from ekd_compress.pipeline.stages import write_json_atomic

        if info.is_main:
            write_json_atomic(exp_dir / "stages" / "last_run.json", {"ran": runner.ran, "skipped": runner.skipped})
        if ctx.tracker is not None:
            ctx.tracker.end(status)


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def lexicon_key(r: Recipe) -> list[Any]:
    """What a phone recipe's targets also depend on: the lexicon's content and how it is read
    (empty for char/bpe tokens, so their keys are as before the lexicon existed)."""
    if r.tokens.kind != "phone":
        return []
    import hashlib

    content = Path(r.tokens.lexicon).read_bytes() if r.tokens.lexicon and Path(r.tokens.lexicon).is_file() else b""
    return [hashlib.sha256(content).hexdigest()[:12], r.tokens.strip_stress, r.tokens.oov]


def trainset_config(r: Recipe) -> Any:
    """The data settings that shape train/dev (test-set-only settings left out)."""
    d = dataclasses.replace(r.data, tests={})
    d.synthetic = dataclasses.replace(d.synthetic, test_hours=0.0)
    d.fsdd = dataclasses.replace(d.fsdd, noisy_dev_snr_db=None, n_test=0, test_indices=[])
    return d


RUNTIME_ONLY = ("threads", "num_workers", "accelerator", "precision")


def train_key(cfg: TrainConfig) -> dict[str, Any]:
    """Training settings that change the result (how fast it runs does not)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_ONLY}
    if key["stop_on"] == "select":  # the behaviour before stop_on existed: keep those experiments' keys
        del key["stop_on"]
    return key


def expected_models(r: Recipe) -> list[str]:
    """Names of every model the recipe produces (models.json keys)."""
    d = r.distill
    names = ["baseline", *[f"baseline_s{s}" for s in d.seeds[1:]], *[m.name for m in r.members]]
    if r.members:
        names.append("ensemble")
    names += ["kd_all" if k == "all" else f"essence_k{k}" for k in d.ks]
    if d.control:
        names.append("control_baseline_teacher")
    from ekd_compress.pipeline.students import sweep_name

    names += [sweep_name(s.name) for s in d.student_sizes]
    return names + ["student", *[f"student_s{s}" for s in d.seeds[1:]]]


def planned_stages(r: Recipe) -> list[str]:
    """The stages a run of `r` goes through, in order (for 'stage n/N')."""
    d = r.distill
    stages = ["data", "features", "baseline", *[f"baseline_s{s}" for s in d.seeds[1:]]]
    if r.members:
        stages += ["align", *[f"member_{m.name}" for m in r.members], "coincide", "ensemble"]
    if d.cache != "fly":
        stages.append("essence")
    stages += ["kd_all" if k == "all" else f"essence_k{k}" for k in d.ks]
    if d.control:
        stages += (["essence_control"] if d.cache != "fly" else []) + ["control_baseline_teacher"]
    return stages + [f"student_s{s}" for s in d.seeds[1:]] + ["evaluate"]


def prune_registry(exp_dir: Path, keep: list[str]) -> list[dict[str, Any]]:
    """Remove models.json entries the recipe no longer makes; returns the kept entries."""
    from ekd_compress.experiment import read_registry
    from ekd_compress.pipeline.stages import write_json_atomic

    entries = [e for e in read_registry(exp_dir) if e["name"] in keep]
    write_json_atomic(Path(exp_dir) / "models.json", entries)
    return entries


def clean_experiment(exp_dir: Path) -> None:
    """Remove an experiment directory (for `distill --fresh`); refuses folders distill did not write."""
    exp_dir = Path(exp_dir)
    if not exp_dir.exists():
        return
    if not (exp_dir / "stages").is_dir() and not (exp_dir / "recipe.yaml").exists():
        raise ValueError(f"--fresh would delete {exp_dir}, which is not an experiment directory (no stages/ or "
                         "recipe.yaml); pick another --out or delete it yourself")
    shutil.rmtree(exp_dir)
