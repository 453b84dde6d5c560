"""The work of the `distill` stages up to the teacher: tracking, data, features, the guide's
alignment, the members' spike coincidence and the fused ensemble (the order and the keys live
in distill.py; the students and the evaluation in students.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ekd_compress.experiment import load_any, save_ensemble
from ekd_compress.pipeline.context import Alignment, Context, EnsembleResult, Features, PreparedData
from ekd_compress.recipe import recipe_to_dict


# ---------------------------------------------------------------------- tracking
def open_tracker(ctx: Context, enabled: bool) -> Any:
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
    run_file, run_json = ctx.exp_dir / "mlflow_run.txt", ctx.exp_dir / "mlflow_run.json"
    existing = run_file.read_text().strip() if run_file.exists() else None
    here = str(ctx.exp_dir.resolve())
    written_in = json.loads(run_json.read_text()).get("exp_dir", here) if run_json.exists() else here
    if existing and written_in != here:  # a copied experiment is a run of its own
        ctx.log(f"MLflow: this experiment is a copy of {written_in} (run {existing}); starting a new parent run")
        existing = None
    params = recipe_to_dict(ctx.recipe)
    try:
        run_id = tracker.start_parent(ctx.recipe.name, params=params, run_id=existing)
    except TrackingError as e:  # the recipe changed since that run: params are immutable, so start a new one
        ctx.log(f"MLflow: starting a new parent run ({e})")
        run_id = tracker.start_parent(ctx.recipe.name, params=params)
    run_file.write_text(run_id)
    # where the run lives, so `export` logs to it from any directory (credentials never written)
    write_json_atomic(run_json, {"run_id": run_id, "tracking_uri": redact_uri(uri),
                                 "experiment": ctx.recipe.tracking.experiment, "exp_dir": here})
    ctx.log(f"MLflow: {redact_uri(uri)} run {run_id}")
    return tracker


# -------------------------------------------------------------------- data, features
def stage_data(ctx: Context) -> PreparedData:
    from ekd_compress.pipeline.data_prep import prepare_data

    return PreparedData.from_json(prepare_data(ctx.recipe, ctx.exp_dir, ctx.log))


def stage_features(ctx: Context) -> Features:
    from ekd_compress.experiment import load_cuts, save_cuts
    from ekd_compress.features.fbank import store_features

    d = ctx.data
    splits = {"train": d.train, "dev": d.dev, **{f"test_{k}": v for k, v in d.tests.items()}}
    out: dict[str, str] = {}
    for split, path in splits.items():
        cuts = load_cuts(Path(path), exp_dir=ctx.exp_dir)
        if ctx.recipe.features.precompute:
            cuts = store_features(cuts, ctx.spec, ctx.exp_dir / "features" / split)
        target = save_cuts(cuts, ctx.exp_dir / "features" / f"{split}_cuts.jsonl.gz", ctx.exp_dir)
        out[split] = str(target)
    train = load_cuts(Path(out["train"]), exp_dir=ctx.exp_dir)
    cmvn = feature_stats(train, ctx.spec, ctx.exp_dir / "features" / "cmvn.npz")
    return Features(out, ctx.spec.hash(), str(cmvn))


def feature_stats(cuts: Any, spec: Any, path: Path) -> Path:
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


# ------------------------------------------------------------ frozen-model passes
def model_outputs(ctx: Context, model: Any, cuts: Any, desc: Optional[str] = None) -> Iterator[tuple[dict, Any, Any]]:
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
def stage_align(ctx: Context, source: Path, split_file: str = "train.npz") -> Alignment:
    """Viterbi-align every training utterance with `source` -> EXP/align/`split_file`.

    `source` is a model.pt or an ensemble.json: the guide (the best baseline seed on dev), or with
    distill.reguide the first round's ensemble or its best member."""
    from ekd_compress.losses.guide import ctc_forced_align

    aligner = load_any(source)
    aligned: dict[str, np.ndarray] = {}
    fallback = 0
    label = source.parent.name if source.suffix == ".pt" else source.stem
    for batch, log_probs, out_lengths in model_outputs(ctx, aligner, ctx.cuts("train"), desc=f"align ({label})"):
        for b, uid in enumerate(batch["ids"]):
            T = int(out_lengths[b])
            tgt = batch["targets"][b, : int(batch["target_lengths"][b])].numpy()
            try:
                aligned[uid] = ctc_forced_align(log_probs[b, :T].float().numpy(), tgt).astype(np.int16)
            except ValueError:  # too few frames for the transcript: no frame targets (ignored)
                aligned[uid] = np.full(T, -1, dtype=np.int16)
                fallback += 1
    path = ctx.exp_dir / "align" / split_file
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **aligned)
    if fallback:
        ctx.log(f"align: {fallback} utterances too short for their transcripts carry no frame targets")
    return Alignment(str(path), len(aligned), fallback)


# ------------------------------------------------------------- coincidence, fusion
def _argmax_paths(model: Any, cuts: Any, ctx: Context) -> dict[str, np.ndarray]:
    """utt id -> (T',) argmax token per output frame."""
    paths = {}
    for batch, log_probs, out_lengths in model_outputs(ctx, model, cuts):
        best = log_probs.argmax(-1).numpy()
        for b, uid in enumerate(batch["ids"]):
            paths[uid] = best[b, : int(out_lengths[b])]
    return paths


def stage_coincidence(ctx: Context, names: list[str]) -> dict[str, dict[str, float]]:
    """Token-matched spike coincidence of each member (model names) with the guide on dev (name -> stats)."""
    from ekd_compress.ensemble.coincidence import check_coincidence, corpus_coincidence

    d = ctx.recipe.distill
    dev = ctx.cuts("dev")
    guide_paths = _argmax_paths(load_any(ctx.model_path(ctx.guide)), dev, ctx)
    out = {}
    for name in names:
        member_paths = _argmax_paths(load_any(ctx.model_path(name)), dev, ctx)
        stats = corpus_coincidence([(member_paths[u], guide_paths[u]) for u in guide_paths])
        out[name] = stats
        ctx.log(f"coincidence {name}: {stats['both']:.3f} (member->guide {stats['member_to_guide']:.3f}, "
                f"guide->member {stats['guide_to_member']:.3f})")
        ctx.tracker.log_metrics({f"coincidence_{name}": stats["both"]}, step=0)
    for name, stats in out.items():
        check_coincidence(name, stats["both"], d.coincidence_threshold, refuse=d.refuse_below_threshold)
    return out


def stage_ensemble(ctx: Context, names: list[str], file: str = "ensemble.json") -> EnsembleResult:
    """Fuse the members (model names; fusion weights given, equal, or searched on the dev sets of
    distill.fusion_on) into EXP/models/`file` (distill.py registers the teacher's as "ensemble")."""
    d = ctx.recipe.distill
    members = [ctx.model_path(n) for n in names]
    out: dict[str, Any] = {}
    weights = d.fusion_weights
    unit = ctx.recipe.data.metric.upper()  # what the searches score (the JSON keeps its `dev_wer` keys)
    on = " + ".join(d.fusion_on)  # "dev" unless the recipe adds copies of dev (e.g. dev + dev_noisy10db)
    if d.fusion_tune == "dev":
        from ekd_compress.ensemble.tune import search_weights

        search = search_weights(*_dev_outputs(ctx, members, d.fusion_on), d.fusion_grid)
        weights = search.weights
        out = {"tuned_on": on, "method": "grid", "weights": weights, "dev_wer": search.wer,
               "uniform_dev_wer": search.uniform_wer, "grid": [[w, wer] for w, wer in search.tried]}
        ctx.log(f"fusion weights tuned on {on}: {dict(zip(names, weights))} -> {on} {unit} {search.wer:.2f} "
                f"(equal weights {search.uniform_wer:.2f}); {on} now also tuned the ensemble, so judge it on test sets")
    elif d.fusion_tune == "select":
        from ekd_compress.ensemble.tune import forward_select

        sel = forward_select(*_dev_outputs(ctx, members, d.fusion_on), rounds=d.select_rounds, drop_ratio=d.drop_ratio)
        weights = sel.weights
        out = {"tuned_on": on, "method": "forward_selection", "weights": weights, "dev_wer": sel.wer,
               "uniform_dev_wer": sel.uniform_wer, "member_dev_wer": dict(zip(names, sel.member_wers)),
               "dropped": [names[i] for i in sel.dropped], "picks": [names[i] for i in sel.picks],
               "round_dev_wer": sel.round_wers, "drop_ratio": d.drop_ratio}
        for i in sel.dropped:
            ctx.log(f"ensemble: dropped {names[i]} ({on} {unit} {sel.member_wers[i]:.2f} > {d.drop_ratio:g} x best "
                    f"member {min(sel.member_wers):.2f})")
        ctx.log(f"ensemble by forward selection on {on}: {dict(zip(names, [round(w, 3) for w in weights]))} -> {on} {unit} "
                f"{sel.wer:.2f} (members {', '.join(f'{n} {w:.2f}' for n, w in zip(names, sel.member_wers))}; "
                f"equal weights {sel.uniform_wer:.2f})")
    if weights is not None and max(weights) == 1.0:
        ctx.log(f"WARNING: all the weight is on one member: on {on}, fusion does not beat that member")
    path = save_ensemble(ctx.exp_dir / "models" / file, members, weights)
    return EnsembleResult(str(path), out)


def fusion_sets(features: Features, sets: list[str]) -> dict[str, str]:
    """The split of each dev set that distill.fusion_on names (set name -> split), or a ValueError naming
    the dev sets this experiment scores. distill calls it right after the features, before any training."""
    scored = features.scored_sets()
    unknown = [name for name in sets if name not in scored]
    if unknown:
        known = [n for n in scored if n == "dev" or n.startswith("dev_")]
        raise ValueError(f"distill.fusion_on names {unknown[0]!r}, which this experiment does not score; its dev sets "
                         f"are {known} (copies of dev come from data.*.noisy_dev_snr_db)")
    return {name: scored[name] for name in sets}


def _dev_outputs(ctx: Context, members: list[Path], sets: list[str]) -> tuple[list[list[Any]], list[Any], Any]:
    """(member_log_probs[m][u] (T_u, V), refs[u], decode) on the utterances of the dev `sets` together
    ("dev" and copies of dev among the test sets, e.g. "dev_noisy10db"), for the fusion searches of
    ekd_compress.ensemble.tune. refs and decoded hypotheses are in the units of the recipe's metric
    (words, characters or phones), so the searches' "WER" is that metric."""
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode
    from ekd_compress.evaluate.error_rates import units_for

    metric = ctx.recipe.data.metric
    splits = {name: ctx.cuts(split) for name, split in fusion_sets(ctx.features, sets).items()}
    outputs, refs = [], {}
    for path in members:
        per_utt = {}
        for name, cuts in splits.items():
            for batch, log_probs, out_lengths in model_outputs(ctx, load_any(path), cuts,
                                                               desc=f"fusion search {path.parent.name} ({name})"):
                for b, uid in enumerate(batch["ids"]):
                    per_utt[name, uid] = log_probs[b, : int(out_lengths[b])].clone()
                    refs[name, uid] = batch["texts"][b]
        outputs.append(per_utt)
    ids = sorted(refs)

    def decode(lp):
        text = ctx.tokens.decode(ctc_greedy_decode(lp[None].float().cpu().numpy())[0])
        return units_for(metric, [""], [text], ctx.tokens.lexicon)[1][0]

    ref_units = units_for(metric, [refs[u] for u in ids], [""] * len(ids), ctx.tokens.lexicon)[0]
    return [[o[u] for u in ids] for o in outputs], ref_units, decode


def teacher_path(ctx: Context) -> Path:
    """The students' teacher: the last round's ensemble (its stage's file), or the guide when the recipe
    has no members."""
    return Path(ctx.ensemble.path) if ctx.recipe.members else ctx.model_path(ctx.guide)
