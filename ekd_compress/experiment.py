"""The experiment folder: what `ekd-compress distill` writes and `export`/`evaluate` read back.

Every reader and writer of EXP/ goes through this module, so its layout has one owner:

    EXP/recipe.yaml              the recipe of the run (`read_recipe`, `recipe_text`)
    EXP/tokens.txt               the token table; lexicon.txt beside it for phone tokens (`read_tokens`)
    EXP/models.json              the model registry, [{name, kind, path, ...}] (`read_registry`,
                                 `record_model`, `prune_registry`)
    EXP/models/NAME/model.pt     one trained model (`model_path`, `load_any`)
    EXP/models/ensemble.json     the fused ensemble: member paths (relative to models/) and fusion
                                 weights (`save_ensemble`, `load_any`)
    EXP/features/SPLIT_cuts.jsonl.gz  the cuts of each split (transcripts: `cut_text`)
    EXP/data/SPLIT_cuts.jsonl.gz      the prepared cuts before feature extraction

Cut manifests are written by `save_cuts` and read by `load_cuts`: audio and feature files inside
the experiment are stored relative to the manifest, so a copied or moved experiment reads its own
files, never its original's. Stage markers are rebased the same way (pipeline/stages.py).

A registry entry's kind is one of member, ensemble, baseline, kd, student; its path is
relative to EXP. Entries may carry seed, restarts (watchdog restarts), same_as and k.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ekd_compress.atomic import write_json_atomic

if TYPE_CHECKING:
    import torch

    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.recipe import Recipe

KINDS = ("member", "ensemble", "baseline", "kd", "student")
REGISTRY_FILE = "models.json"
RECIPE_FILE = "recipe.yaml"
TOKENS_FILE = "tokens.txt"


# ------------------------------------------------------------------- registry
def read_registry(exp_dir: Path) -> list[dict[str, Any]]:
    """The entries of EXP/models.json, in registration order."""
    path = Path(exp_dir) / REGISTRY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {exp_dir} is not an experiment directory written by `ekd-compress distill`")
    return json.loads(path.read_text())


def record_model(exp_dir: Path, name: str, kind: str, path: Path, **extra: Any) -> None:
    """Add or replace one entry of EXP/models.json (paths stored relative to EXP).

    Not to be confused with `ekd_compress.models.registry.register_model`, the decorator that
    registers a model *class* by architecture name."""
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is unknown; use one of {KINDS}")
    exp_dir = Path(exp_dir)
    reg_path = exp_dir / REGISTRY_FILE
    entries = json.loads(reg_path.read_text()) if reg_path.exists() else []
    entry = {"name": name, "kind": kind, "path": str(Path(path).resolve().relative_to(exp_dir.resolve())), **extra}
    names = [e["name"] for e in entries]
    if name in names:  # replaced in place, so the registry's order (and hash) is stable across re-runs
        entries[names.index(name)] = entry
    else:
        entries.append(entry)
    write_json_atomic(reg_path, entries)


def prune_registry(exp_dir: Path, keep: list[str]) -> list[dict[str, Any]]:
    """Remove models.json entries the recipe no longer makes; returns the kept entries."""
    entries = [e for e in read_registry(exp_dir) if e["name"] in keep]
    write_json_atomic(Path(exp_dir) / REGISTRY_FILE, entries)
    return entries


# --------------------------------------------------------------------- models
def model_path(exp_dir: Path, name: str) -> Path:
    """EXP/models/NAME/model.pt, where a trained model called `name` is saved."""
    return Path(exp_dir) / "models" / name / "model.pt"


def save_ensemble(path: Path, member_paths: list[Path], weights: Optional[list[float]]) -> Path:
    """Write an ensemble.json: its members' model files (relative to its folder) and fusion weights."""
    path = Path(path)
    write_json_atomic(path, {"members": [str(Path(p).resolve().relative_to(path.parent.resolve())) for p in member_paths],
                             "weights": weights})
    return path


def load_any(path: Path) -> "torch.nn.Module":
    """A model.pt or an ensemble.json -> a module with forward(feats, lengths).

    Ensemble members at fusion weight 0 (dropped by forward selection) are left out: they add
    nothing to the fused posteriors, only compute (and exported bundles would run them)."""
    from ekd_compress.ensemble.fusion import FusedEnsemble, normalise_weights
    from ekd_compress.train.fit import load_model

    path = Path(path)
    if path.suffix == ".json":
        spec = json.loads(path.read_text())
        names, weights = list(spec["members"]), spec.get("weights")
        if weights is not None:
            try:  # the checks (one finite weight >= 0 per member) before anything is left out
                weights = normalise_weights(weights, len(names))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            names, weights = map(list, zip(*[(p, w) for p, w in zip(names, weights) if w > 0]))
        members = [load_model(path.parent / p)[0] for p in names]
        return FusedEnsemble(members, weights).eval()
    return load_model(path)[0]


def load_registered(exp_dir: Path, names: Optional[list[str]] = None) -> dict[str, tuple[dict[str, Any], "torch.nn.Module"]]:
    """{name: (registry entry, model)} for every registered model, or those in `names`."""
    exp_dir = Path(exp_dir)
    registry = read_registry(exp_dir)
    unknown = sorted(set(names or []) - {e["name"] for e in registry})
    if unknown:
        raise ValueError(f"--model {unknown} not in {exp_dir}; its models are {[e['name'] for e in registry]}")
    return {e["name"]: (e, load_any(exp_dir / e["path"])) for e in registry if names is None or e["name"] in names}


def model_file_hash(path: Path) -> str:
    """12 hex digits of sha256 over a model file (an ensemble.json hashes its members' weights too)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path.parent / p for p in json.loads(path.read_text())["members"]] if path.suffix == ".json" else []
    files.append(path)  # an ensemble.json adds its fusion weights
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------ recipe, tokens
def read_recipe(exp_dir: Path) -> "Recipe":
    """The recipe an experiment was made with (EXP/recipe.yaml)."""
    from ekd_compress.recipe import load_recipe

    recipe_file = Path(exp_dir) / RECIPE_FILE
    if not recipe_file.exists():
        raise FileNotFoundError(f"{recipe_file} not found: {exp_dir} is not an experiment directory of `ekd-compress distill`")
    return load_recipe(recipe_file)


def recipe_text(exp_dir: Path) -> str:
    """EXP/recipe.yaml as written (a bundle's provenance keeps it verbatim)."""
    return (Path(exp_dir) / RECIPE_FILE).read_text()


def read_tokens(exp_dir: Path) -> "TokenTable":
    """The experiment's token table (EXP/tokens.txt, with lexicon.txt beside it for phone tokens)."""
    from ekd_compress.contract.tokens import TokenTable

    return TokenTable.load(Path(exp_dir) / TOKENS_FILE)


def cut_text(cut: Any) -> str:
    """The transcript of one cut of EXP/features/*_cuts.jsonl.gz, as training reads it."""
    from ekd_compress.train.data import cut_text as transcript

    return transcript(cut)


# ------------------------------------------------------------ cut manifests
# the first-level entries of an experiment folder
LAYOUT = ("models", "features", "data", "essence", "align", "bundles", "plots", "stages", "tokens.txt",
          "lexicon.txt", "recipe.yaml", "models.json", "mlflow_run.json", "mlflow_run.txt")


def relocate_legacy_path(path: str, exp_dir: Path) -> str:
    """An absolute path E/ENTRY/... into another experiment folder E (ENTRY in LAYOUT), as versions
    before relocatable experiments wrote them, as the same file in `exp_dir` where that file exists;
    any other path (a corpus file, a file only E has) unchanged."""
    here = Path(exp_dir).resolve()
    if not os.path.isabs(path) or Path(path).is_relative_to(here):
        return path
    parts = Path(path).parts
    for i in range(1, len(parts)):
        if parts[i] in LAYOUT and here.joinpath(*parts[i:]).exists():
            return str(here.joinpath(*parts[i:]))
    return path


def _map_paths(cut: Any, fn: Callable[[str], str]) -> Any:
    """`cut` with `fn` applied to the path of each audio file, its features' storage and the
    clean audio and noise pool it is mixed from on the fly (``data.noise_pool``)."""
    from lhotse.utils import fastcopy

    from ekd_compress.data.noise_pool import map_noise_paths

    if hasattr(cut, "tracks"):  # a MixedCut: each track's cut
        cut = fastcopy(cut, tracks=[fastcopy(t, cut=_map_paths(t.cut, fn)) for t in cut.tracks])
    if getattr(cut, "recording", None) is not None:
        sources = [fastcopy(s, source=fn(s.source)) if s.type == "file" else s for s in cut.recording.sources]
        cut = fastcopy(cut, recording=fastcopy(cut.recording, sources=sources))
    if getattr(cut, "features", None) is not None:
        cut = fastcopy(cut, features=fastcopy(cut.features, storage_path=fn(cut.features.storage_path)))
    return map_noise_paths(cut, fn)


def _under(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else os.path.normpath(base / path)


def _relative_within(path: str, root: Path, base: Path) -> str:
    full = Path(path).resolve()
    return os.path.relpath(full, base) if full.is_relative_to(root) else str(full)


def _relocated(cut: Any, exp_dir: Path, seen: dict[str, str]) -> Any:
    def fn(p: str) -> str:
        if p not in seen:
            seen[p] = relocate_legacy_path(p, exp_dir)
        return seen[p]

    return _map_paths(cut, fn)


def save_cuts(cuts: Any, path: Path, root: Path) -> Path:
    """Write a lhotse CutSet to `path` (.jsonl.gz); audio and feature files under `root` (the
    experiment) are stored relative to `path`'s folder, files elsewhere (a corpus) by absolute
    path (a path relative to the current directory is made absolute)."""
    path = Path(path)
    relative = partial(_relative_within, root=Path(root).resolve(), base=path.parent.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    cuts.map(partial(_map_paths, fn=relative)).to_file(path)
    return path


def load_cuts(path: Path, lazy: bool = False, exp_dir: Optional[Path] = None) -> Any:
    """The CutSet `save_cuts` wrote, its relative file paths resolved against `path`'s folder.
    Absolute paths are kept, except that with `exp_dir` (the experiment the manifest belongs to)
    a path into another experiment's folder, as older versions wrote, is read from `exp_dir`
    where the same file exists (`relocate_legacy_path`). `lazy` streams the set from disk."""
    from lhotse import CutSet

    from ekd_compress.data.noise_pool import map_noise_paths

    path = Path(path)
    cuts = CutSet.from_jsonl_lazy(path) if lazy else CutSet.from_file(path)
    base = path.parent.resolve()
    cuts = cuts.with_recording_path_prefix(base).with_features_path_prefix(base)
    cuts = cuts.map(partial(map_noise_paths, fn=partial(_under, base=base)))
    if exp_dir is not None:
        cuts = cuts.map(partial(_relocated, exp_dir=Path(exp_dir).resolve(), seen={}))
    return cuts if lazy else cuts.to_eager()
