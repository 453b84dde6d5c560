"""The work of each `distill` stage (the order and the keys live in distill.py)."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ekd_compress.pipeline.scoring import load_any, register_model, save_ensemble
from ekd_compress.recipe import TrainConfig, recipe_to_dict


# ---------------------------------------------------------------------- tracking
def open_tracker(ctx, enabled: bool):
    from ekd_compress.tracking import (
        NullTracker, Tracker, TrackingError, check_tracking_uri, resolve_tracking_uri,
    )
    from ekd_compress.atomic import write_json_atomic
    from ekd_compress.tracking.uri import redact_uri

    if not enabled:
        return NullTracker()
    uri = ctx.recipe.tracking.uri or resolve_tracking_uri()
    check_tracking_uri(uri)  # fail now, not after an hour of training
    tracker = Tracker(uri, ctx.recipe.tracking.experiment)
    run_file = ctx.exp_dir / "mlflow_run.txt"
    existing = run_file.read_text().strip() if run_file.exists() else None
    params = recipe_to_dict(ctx.recipe)
    try:
        run_id = tracker.start_parent(ctx.recipe.name, params=params, run_id=existing)
    except TrackingError as e:  # the recipe changed since that run: params are immutable, so start a new one
        ctx.log(f"MLflow: starting a new parent run ({e})")
        run_id = tracker.start_parent(ctx.recipe.name, params=params)
    run_file.write_text(run_id)
    # where the run lives, so `export` logs to it from any directory (credentials never written)
    write_json_atomic(ctx.exp_dir / "mlflow_run.json", {"run_id": run_id, "tracking_uri": redact_uri(uri),
                                                        "experiment": ctx.recipe.tracking.experiment})
    ctx.log(f"MLflow: {redact_uri(uri)} run {run_id}")
    return tracker


# -------------------------------------------------------------------- data, features
def stage_data(ctx) -> dict[str, Any]:
    from ekd_compress.pipeline.data_prep import prepare_data

    return prepare_data(ctx.recipe, ctx.exp_dir, ctx.log)


def stage_features(ctx) -> dict[str, Any]:
    from lhotse import CutSet

    from ekd_compress.features.fbank import store_features

    d = ctx.data["data"]
    splits = {"train": d["train"], "dev": d["dev"], **{f"test_{k}": v for k, v in d["tests"].items()}}
    out: dict[str, Any] = {}
    for split, path in splits.items():
        cuts = CutSet.from_file(path)
        if ctx.recipe.features.precompute:
            cuts = store_features(cuts, ctx.spec, ctx.exp_dir / "features" / split)
        target = ctx.exp_dir / "features" / f"{split}_cuts.jsonl.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        cuts.to_file(target)
        out[split] = str(target)
    out["feature_hash"] = ctx.spec.hash()
    out["cmvn"] = str(feature_stats(CutSet.from_file(out["train"]), ctx.spec, ctx.exp_dir / "features" / "cmvn.npz"))
    return out


def feature_stats(cuts, spec, path: Path) -> Path:
    """Per-bin mean and std of the training features -> npz (the models' global CMVN)."""
    from ekd_compress.features.fbank import load_features

    total = np.zeros(spec.num_mel_bins)
    total_sq = np.zeros(spec.num_mel_bins)
    frames = 0
    for cut in cuts:
        f = load_features(cut, spec).astype(np.float64)
        total += f.sum(0)
        total_sq += (f ** 2).sum(0)
        frames += f.shape[0]
    mean = total / max(frames, 1)
    std = np.sqrt(np.maximum(total_sq / max(frames, 1) - mean ** 2, 1e-8))
    np.savez(path, mean=mean.astype(np.float32), std=std.astype(np.float32), frames=frames)
    return path


def test_sets(ctx) -> dict[str, str]:
    """Scored sets: dev plus the corpus's and recipe's test sets (name -> cuts key)."""
    return {"dev": "dev", **{k[len("test_"):]: k for k in ctx.data["features"] if k.startswith("test_")}}


# ------------------------------------------------------------------------ training
def stage_train(
    ctx, name: str, kind: str, arch: str, params: dict, mode: str, seed: int, train_cfg: TrainConfig,
    beta: float = 0.0, k: Optional[int] = None, essence_dir: Optional[Path] = None, teacher=None,
    teacher_file: Optional[Path] = None,
) -> dict[str, Any]:
    """Train one model; a run the convergence watchdog stops is restarted with the next seed.

    Every restart is kept in `models/NAME/restarts.json` (so a resumed job knows it), in the
    model's models.json entry, on its MLflow child run (FAILED, tagged) and in the report.
    """
    import json
    import shutil

    from ekd_compress.atomic import write_json_atomic
    from ekd_compress.train.distributed import barrier, dist_info
    from ekd_compress.train.watchdog import StalledRun, restart_seed

    out_dir = ctx.exp_dir / "models" / name
    restarts_file = out_dir / "restarts.json"
    restarts: list[dict[str, Any]] = json.loads(restarts_file.read_text()) if restarts_file.exists() else []
    while True:
        attempt = len(restarts)
        run_seed = restart_seed(seed, attempt)
        watchdog = bool(train_cfg.watchdog) and attempt < train_cfg.max_restarts
        try:
            res = _fit_once(ctx, name, kind, arch, params, mode, run_seed, train_cfg, beta, k, essence_dir,
                            teacher, teacher_file, watchdog)
            break
        except StalledRun as stalled:
            restarts.append(stalled.attempt.to_dict())
            ctx.log(f"WATCHDOG {name}: {stalled}; restarting with seed {restart_seed(seed, attempt + 1)} "
                    f"(restart {attempt + 1} of at most {train_cfg.max_restarts})")
            if dist_info().is_main:  # every rank stalls alike (dev metrics are gathered); rank 0 cleans up
                for stale in ("checkpoints", "model.pt", "fit.json"):  # the next attempt starts from scratch
                    path = out_dir / stale
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                write_json_atomic(restarts_file, restarts)
            barrier()
    if restarts:
        ctx.log(f"{name}: converged with seed {run_seed} after {len(restarts)} restart(s)")
    if dist_info().is_main:
        register_model(ctx.exp_dir, name, kind, Path(res["model"]), seed=run_seed,
                       **({"restarts": restarts} if restarts else {}))
    return {**res, "seed": run_seed, "restarts": restarts}


def _fit_once(ctx, name, kind, arch, params, mode, seed, train_cfg, beta, k, essence_dir, teacher, teacher_file,
              watchdog: bool) -> dict[str, Any]:
    """One training run of `stage_train` (the watchdog on or off)."""
    import torch

    from ekd_compress.models import count_parameters
    from ekd_compress.train.data import AsrDataset, make_loader
    from ekd_compress.train.distributed import dist_info
    from ekd_compress.train.fit import build, fit_model
    from ekd_compress.train.module import AsrModule
    from ekd_compress.train.watchdog import StalledRun

    r = ctx.recipe
    out_dir = ctx.exp_dir / "models" / name
    torch.manual_seed(seed)
    model = build(arch, ctx.spec.num_mel_bins, len(ctx.tokens), params)
    with np.load(ctx.data["features"]["cmvn"]) as stats:
        model.set_normalization(torch.from_numpy(stats["mean"]), torch.from_numpy(stats["std"]))
    if train_cfg.output_prior_bias:
        model.set_output_prior(torch.from_numpy(label_prior(ctx, model.subsampling)))
    alignments = _load_alignments(ctx) if mode == "guided" else None
    essence = None
    if essence_dir is not None:
        from ekd_compress.ensemble.cache import EssenceCache
        from ekd_compress.pipeline.students import cache_keys

        cache = EssenceCache.open(essence_dir, **cache_keys(ctx, teacher_file, k))
        essence = cache.read
    subsampling = model.subsampling
    train_ds = AsrDataset(ctx.tokens, ctx.spec, subsampling, alignments=alignments, essence=essence)
    dev_ds = AsrDataset(ctx.tokens, ctx.spec, subsampling)
    ranks = {"world_size": dist_info().world_size, "rank": dist_info().rank}  # each rank reads its share
    train_loader = make_loader(ctx.cuts("train"), train_ds, train_cfg.max_duration, shuffle=True, seed=seed,
                               num_workers=train_cfg.num_workers, sortagrad=train_cfg.sortagrad, **ranks)
    dev_loader = make_loader(ctx.cuts("dev"), dev_ds, train_cfg.max_duration, shuffle=False, **ranks)
    steps = max(1, sum(1 for _ in train_loader.sampler))  # batches per epoch, for the LR schedule
    module = AsrModule(model, ctx.tokens, train_cfg, r.features.specaugment, mode=mode, beta=beta,
                       distill=r.distill if mode == "essence" else None, k=k, teacher=teacher, steps_per_epoch=steps,
                       metric=r.data.metric)
    run_params = {"name": name, "kind": kind, "arch": arch, "mode": mode, "seed": seed, "beta": beta, "k": k,
                  "params": params, "train": dataclasses.asdict(train_cfg)}
    with ctx.tracker.child(name, run_params) as run:
        logger = ctx.tracker.lightning_logger(run.run_id)
        try:
            res = fit_model(module, train_loader, dev_loader, out_dir, train_cfg, seed, logger=logger,
                            extra_meta={"name": name, "kind": kind, "seed": seed, "mlflow_run_id": run.run_id},
                            log=ctx.log, watchdog=watchdog)
        except StalledRun as stalled:  # the run ends FAILED, tagged with the reason
            run.set_tags({"watchdog": "stalled", "watchdog_reason": stalled.attempt.reason})
            raise
        run.log_metrics({"best_dev_score": res.best_score, "train_seconds": res.train_seconds}, step=0)
    n_params = count_parameters(model)
    ctx.log(f"{name}: best dev {train_cfg.select_on} {res.best_score:.2f} at epoch {res.best_epoch}, "
            f"{n_params} params, {res.train_seconds:.0f} s")
    return {"model": str(res.model_path), "best_dev": res.best_score, "best_epoch": res.best_epoch,
            "train_seconds": res.train_seconds, "params": n_params}


def label_prior(ctx, subsampling: int) -> np.ndarray:
    """(V,) share of training output frames each token fills under CTC: every transcript token
    one frame, blank (id 0) the rest. The start of the output bias (`train.output_prior_bias`)."""
    counts = np.zeros(len(ctx.tokens))
    frames = 0
    for cut in ctx.cuts("train"):
        ids = ctx.tokens.encode(" ".join(s.text for s in cut.supervisions if s.text))
        np.add.at(counts, ids, 1)
        frames += int(round(cut.duration * 1000 / ctx.spec.frame_shift_ms)) // subsampling
    counts[0] = max(frames - counts[1:].sum(), 1)
    return (counts / counts.sum()).astype(np.float32)


def _model_path(ctx, name: str) -> Path:
    return ctx.exp_dir / "models" / name / "model.pt"


# ------------------------------------------------------------ frozen-model passes
def model_outputs(ctx, model, cuts, desc: Optional[str] = None):
    """Run a frozen model over `cuts` (clean features, no augmentation), batch by batch.

    Yields (batch dict, log_probs (B, T', V), out_lengths (B,)); a progress bar when `desc` is given.
    """
    import torch
    from tqdm import tqdm

    from ekd_compress.train.data import AsrDataset, make_loader

    ds = AsrDataset(ctx.tokens, ctx.spec, model.subsampling, keep_in_memory=False)
    loader = make_loader(cuts, ds, 200.0, shuffle=False)
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None):
            log_probs, out_lengths = model(batch["feats"], batch["lengths"])
            yield batch, log_probs, out_lengths


# ---------------------------------------------------------------- guide alignment
def stage_align(ctx) -> dict[str, Any]:
    """Viterbi-align every training utterance with the guide (the best baseline seed on dev)."""
    from ekd_compress.losses.guide import ctc_forced_align

    guide = load_any(_model_path(ctx, ctx.data["guide"]))
    aligned: dict[str, np.ndarray] = {}
    fallback = 0
    for batch, log_probs, out_lengths in model_outputs(ctx, guide, ctx.cuts("train"), desc="align"):
        for b, uid in enumerate(batch["ids"]):
            T = int(out_lengths[b])
            tgt = batch["targets"][b, : int(batch["target_lengths"][b])].numpy()
            try:
                aligned[uid] = ctc_forced_align(log_probs[b, :T].numpy(), tgt).astype(np.int16)
            except ValueError:  # too few frames for the transcript: no frame targets (ignored)
                aligned[uid] = np.full(T, -1, dtype=np.int16)
                fallback += 1
    path = ctx.exp_dir / "align" / "train.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **aligned)
    if fallback:
        ctx.log(f"align: {fallback} utterances too short for their transcripts carry no frame targets")
    return {"path": str(path), "utterances": len(aligned), "unaligned": fallback}


def _load_alignments(ctx) -> dict[str, np.ndarray]:
    if "alignments" not in ctx._cache:
        with np.load(ctx.data["align"]["path"]) as z:
            ctx._cache["alignments"] = {k: z[k] for k in z.files}
    return ctx._cache["alignments"]


# ------------------------------------------------------------- coincidence, fusion
def _argmax_paths(model, cuts, ctx) -> dict[str, np.ndarray]:
    """utt id -> (T',) argmax token per output frame."""
    paths = {}
    for batch, log_probs, out_lengths in model_outputs(ctx, model, cuts):
        best = log_probs.argmax(-1).numpy()
        for b, uid in enumerate(batch["ids"]):
            paths[uid] = best[b, : int(out_lengths[b])]
    return paths


def stage_coincidence(ctx) -> dict[str, Any]:
    from ekd_compress.ensemble.coincidence import check_coincidence, corpus_coincidence

    d = ctx.recipe.distill
    dev = ctx.cuts("dev")
    guide_paths = _argmax_paths(load_any(_model_path(ctx, ctx.data["guide"])), dev, ctx)
    out = {}
    for m in ctx.recipe.members:
        member_paths = _argmax_paths(load_any(_model_path(ctx, m.name)), dev, ctx)
        stats = corpus_coincidence([(member_paths[u], guide_paths[u]) for u in guide_paths])
        out[m.name] = stats
        ctx.log(f"coincidence {m.name}: {stats['both']:.3f} (member->guide {stats['member_to_guide']:.3f}, "
                f"guide->member {stats['guide_to_member']:.3f})")
        ctx.tracker.log_metrics({f"coincidence_{m.name}": stats["both"]}, step=0)
    for name, stats in out.items():
        check_coincidence(name, stats["both"], d.coincidence_threshold, refuse=d.refuse_below_threshold)
    return out


def stage_ensemble(ctx) -> dict[str, Any]:
    d = ctx.recipe.distill
    members = [_model_path(ctx, m.name) for m in ctx.recipe.members]
    names = [m.name for m in ctx.recipe.members]
    out: dict[str, Any] = {}
    weights = d.fusion_weights
    if d.fusion_tune == "dev":
        from ekd_compress.ensemble.tune import search_weights

        search = search_weights(*_dev_outputs(ctx, members), d.fusion_grid)
        weights = search.weights
        out = {"tuned_on": "dev", "method": "grid", "weights": weights, "dev_wer": search.wer,
               "uniform_dev_wer": search.uniform_wer, "grid": [[w, wer] for w, wer in search.tried]}
        ctx.log(f"fusion weights tuned on dev: {dict(zip(names, weights))} -> dev WER {search.wer:.2f} "
                f"(equal weights {search.uniform_wer:.2f}); dev now also tuned the ensemble, so judge it on test sets")
    elif d.fusion_tune == "select":
        from ekd_compress.ensemble.tune import forward_select

        sel = forward_select(*_dev_outputs(ctx, members), rounds=d.select_rounds, drop_ratio=d.drop_ratio)
        weights = sel.weights
        out = {"tuned_on": "dev", "method": "forward_selection", "weights": weights, "dev_wer": sel.wer,
               "uniform_dev_wer": sel.uniform_wer, "member_dev_wer": dict(zip(names, sel.member_wers)),
               "dropped": [names[i] for i in sel.dropped], "picks": [names[i] for i in sel.picks],
               "round_dev_wer": sel.round_wers, "drop_ratio": d.drop_ratio}
        for i in sel.dropped:
            ctx.log(f"ensemble: dropped {names[i]} (dev WER {sel.member_wers[i]:.2f} > {d.drop_ratio:g} x best "
                    f"member {min(sel.member_wers):.2f})")
        ctx.log(f"ensemble by forward selection on dev: {dict(zip(names, [round(w, 3) for w in weights]))} -> dev WER "
                f"{sel.wer:.2f} (members {', '.join(f'{n} {w:.2f}' for n, w in zip(names, sel.member_wers))}; "
                f"equal weights {sel.uniform_wer:.2f})")
    if weights is not None and max(weights) == 1.0:
        ctx.log("WARNING: all the weight is on one member: on dev, fusion does not beat that member")
    path = save_ensemble(ctx.exp_dir / "models" / "ensemble.json", members, weights)
    register_model(ctx.exp_dir, "ensemble", "ensemble", path)
    return {"path": str(path), **out}


def _dev_outputs(ctx, members: list[Path]):
    """(member_log_probs[m][u] (T_u, V), refs[u], decode) on the dev set, for the fusion searches
    of ekd_compress.ensemble.tune. refs and decoded hypotheses are in the units of the recipe's
    metric (words, characters or phones), so the searches' "WER" is that metric."""
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode
    from ekd_compress.evaluate.error_rates import units_for

    metric = ctx.recipe.data.metric

    dev = ctx.cuts("dev")
    outputs, refs = [], {}
    for path in members:
        per_utt = {}
        for batch, log_probs, out_lengths in model_outputs(ctx, load_any(path), dev, desc=f"fusion search {path.parent.name}"):
            for b, uid in enumerate(batch["ids"]):
                per_utt[uid] = log_probs[b, : int(out_lengths[b])].clone()
                refs[uid] = batch["texts"][b]
        outputs.append(per_utt)
    ids = sorted(refs)

    def decode(lp):
        text = ctx.tokens.decode(ctc_greedy_decode(lp[None].float().cpu().numpy())[0])
        return units_for(metric, [""], [text], ctx.tokens.lexicon)[1][0]

    ref_units = units_for(metric, [refs[u] for u in ids], [""] * len(ids), ctx.tokens.lexicon)[0]
    return [[o[u] for u in ids] for o in outputs], ref_units, decode


def teacher_path(ctx) -> Path:
    return ctx.exp_dir / "models" / "ensemble.json" if ctx.recipe.members else _model_path(ctx, ctx.data["guide"])


def file_hash(path: Path) -> str:
    """Hash of a model (an ensemble hashes its members' weights)."""
    import json

    path = Path(path)
    h = hashlib.sha256()
    files = [path.parent / p for p in json.loads(path.read_text())["members"]] if path.suffix == ".json" else []
    files.append(path)  # an ensemble.json adds its fusion weights
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]

