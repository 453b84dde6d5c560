"""Score the models of an experiment directory on any set of cuts.

`EXP/models.json` lists every trained model as {name, kind, path}; kind is one of
member, ensemble, baseline, kd, student. A member/baseline/kd/student path is a
`model.pt`; an ensemble path is an `ensemble.json` naming its members' files and weights.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lhotse import CutSet

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable

KINDS = ("member", "ensemble", "baseline", "kd", "student")


def read_registry(exp_dir: Path) -> list[dict[str, Any]]:
    path = Path(exp_dir) / "models.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {exp_dir} is not an experiment directory written by `ekd-compress distill`")
    return json.loads(path.read_text())


def register_model(exp_dir: Path, name: str, kind: str, path: Path, **extra: Any) -> None:
    """Add or replace one entry of EXP/models.json (paths stored relative to EXP)."""
    from ekd_compress.pipeline.stages import write_json_atomic

    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is unknown; use one of {KINDS}")
    exp_dir = Path(exp_dir)
    reg_path = exp_dir / "models.json"
    entries = json.loads(reg_path.read_text()) if reg_path.exists() else []
    entry = {"name": name, "kind": kind, "path": str(Path(path).resolve().relative_to(exp_dir.resolve())), **extra}
    names = [e["name"] for e in entries]
    if name in names:  # replaced in place, so the registry's order (and hash) is stable across re-runs
        entries[names.index(name)] = entry
    else:
        entries.append(entry)
    write_json_atomic(reg_path, entries)


def save_ensemble(path: Path, member_paths: list[Path], weights: Optional[list[float]]) -> Path:
    from ekd_compress.pipeline.stages import write_json_atomic

    path = Path(path)
    write_json_atomic(path, {"members": [str(Path(p).resolve().relative_to(path.parent.resolve())) for p in member_paths],
                             "weights": weights})
    return path


def load_any(path: Path) -> torch.nn.Module:
    """A model.pt or an ensemble.json -> a module with forward(feats, lengths)."""
    from ekd_compress.ensemble.fusion import FusedEnsemble
    from ekd_compress.train.fit import load_model

    path = Path(path)
    if path.suffix == ".json":
        spec = json.loads(path.read_text())
        members = [load_model(path.parent / p)[0] for p in spec["members"]]
        return FusedEnsemble(members, spec.get("weights")).eval()
    return load_model(path)[0]


@torch.no_grad()
def decode_cuts(
    model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec, max_duration: float = 200.0
) -> tuple[list[str], list[str], list[str], float, float]:
    """Greedy-decode every cut. Returns (ids, refs, hyps, audio seconds, compute seconds)."""
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode
    from ekd_compress.train.data import AsrDataset, make_loader

    dataset = AsrDataset(tokens, spec, subsampling=getattr(model, "subsampling", 4), keep_in_memory=False,
                         with_targets=False)
    ids, refs, hyps = [], [], []
    audio = compute = 0.0
    for batch in make_loader(cuts, dataset, max_duration, shuffle=False):
        start = time.perf_counter()
        log_probs, out_lengths = model(batch["feats"], batch["lengths"])
        decoded = ctc_greedy_decode(log_probs.detach().float().cpu().numpy(), out_lengths.cpu().numpy())
        compute += time.perf_counter() - start
        audio += sum(batch["durations"])
        ids += batch["ids"]
        refs += batch["texts"]
        hyps += [tokens.decode(d) for d in decoded]
    return ids, refs, hyps, audio, compute


def score_model(
    model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec, scoring: str = "plain"
) -> dict[str, Any]:
    """{wer, sub, del, ins, words, cer, cer_counts, rtf} (+ per, per_counts for phone models;
    + {"subsets": ...} for Switchboard scoring). See ekd_compress.evaluate.error_rates."""
    from ekd_compress.evaluate.error_rates import score_texts

    ids, refs, hyps, audio, compute = decode_cuts(model, cuts, tokens, spec)
    result = score_texts(refs, hyps, tokens.kind, tokens.lexicon)
    if scoring == "swbd" and tokens.kind != "phone":
        from ekd_compress.evaluate.swbd import score_eval2000

        subsets = score_eval2000(ids, refs, hyps)
        result = {**result, **subsets["all"], "subsets": {k: subsets[k] for k in ("swbd", "callhome")}}
    result["rtf"] = compute / max(audio, 1e-9)
    return result


def score_models(models: dict[str, tuple[dict[str, Any], torch.nn.Module]], cuts: CutSet, data_name: str,
                 tokens: TokenTable, spec: FeatureSpec, scoring: str = "plain", log=print,
                 metric: str = "wer") -> dict[str, Any]:
    """Score loaded models {name: (registry entry, model)} on one set -> the `evaluate --json` object:
    {"data", "metric" (the recipe's primary measure), "models": [row per model]}."""
    from ekd_compress.evaluate.error_rates import LABELS
    from ekd_compress.models import count_parameters

    rows = []
    for name, (entry, model) in models.items():
        res = score_model(model, cuts, tokens, spec, scoring)
        value = res.get(metric)
        shown = f"{value:6.2f}%" if value is not None else "   n/a "
        log(f"  {data_name:>12} {name:<26} {LABELS[metric]} {shown}  RTF {res['rtf']:.4f}")
        rows.append({"name": name, "kind": entry["kind"], "params": count_parameters(model), **res})
    return {"data": data_name, "metric": metric, "models": rows}


def load_registered(exp_dir: Path, names: Optional[list[str]] = None) -> dict[str, tuple[dict[str, Any], torch.nn.Module]]:
    """{name: (registry entry, model)} for every registered model, or those in `names`."""
    exp_dir = Path(exp_dir)
    registry = read_registry(exp_dir)
    unknown = sorted(set(names or []) - {e["name"] for e in registry})
    if unknown:
        raise ValueError(f"--model {unknown} not in {exp_dir}; its models are {[e['name'] for e in registry]}")
    return {e["name"]: (e, load_any(exp_dir / e["path"])) for e in registry if names is None or e["name"] in names}


def evaluate_experiment(
    exp_dir: Path, cuts: CutSet, data_name: str, spec: FeatureSpec, scoring: str = "plain",
    names: Optional[list[str]] = None, log=print, metric: str = "wer",
) -> dict[str, Any]:
    """Score every registered model (or those in `names`) -> the `evaluate --json` object."""
    tokens = TokenTable.load(Path(exp_dir) / "tokens.txt")
    return score_models(load_registered(exp_dir, names), cuts, data_name, tokens, spec, scoring, log, metric)
