"""Where recipes are found, how a resolved recipe is shown, and when an experiment folder may be reused.

`find_recipe("demo")` resolves a bundled recipe by name from any directory; a path that exists
is used as it is. Search order for a bare name (`demo` or `demo.yaml`):

    1. the path itself (relative to the current directory)
    2. $EKD_RECIPES (a folder of recipes; several joined with the path separator)
    3. ./recipes/
    4. the recipes/ folder of the source tree the package runs from (a clone, an editable install)
    5. the recipes installed with the package (wheel: <prefix>/share/ekd-compress/recipes)

`check_out_dir` guards an experiment folder: re-running the same recipe resumes it, a different
recipe is refused (its results would be replaced) unless the user asked to update it in place.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from ekd_compress.recipe_schema import Recipe, RecipeError, recipe_to_dict

ENV_RECIPES = "EKD_RECIPES"
# settings that change how fast a run goes or where it is tracked, not what it makes
RUNTIME_KEYS = ("out_dir", "tracking", "data.lazy", "data.lazy_min_cuts",
                *(f"{s}.{k}" for s in ("train", "member_train", "student_train")
                  for k in ("threads", "num_workers", "accelerator", "precision")))


def recipe_dirs() -> list[Path]:
    """Folders searched for a recipe given by name, in order (those that exist)."""
    dirs = [Path(p) for p in os.environ.get(ENV_RECIPES, "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "recipes")
    dirs.append(Path(__file__).resolve().parents[1] / "recipes")
    dirs.append(Path(sys.prefix) / "share" / "ekd-compress" / "recipes")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def bundled_recipes() -> dict[str, Path]:
    """Recipe name -> file, over every search folder (the first folder holding a name wins)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file for a path or a bundled recipe's name; RecipeError lists the names known."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a directory; give a .yaml file or a recipe name, e.g. demo")
    if len(path.parts) == 1:
        stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
        known = bundled_recipes()
        if stem in known:
            return known[stem]
    names = ", ".join(sorted(bundled_recipes())) or "none found"
    raise RecipeError(f"recipe {name_or_path} does not exist; give a YAML file or a recipe name ({names}); "
                      f"`ekd-compress recipe list` shows where each comes from")


def recipe_keys(node: Any = None, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every settable key as (dotted key, type, value) of the resolved recipe `node` (default: the defaults)."""
    node = Recipe() if node is None else node
    rows: list[tuple[str, str, Any]] = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += recipe_keys(value, key + ".")
        else:
            if isinstance(value, list):  # e.g. members: a list of ModelConfig
                value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((key, kind.replace("Optional[", "").rstrip("]") if "Optional[" in kind else kind, value))
    return rows


def show_recipe(recipe: Recipe, keys: bool = False) -> str:
    """The resolved recipe as YAML, or with `keys` one `key = value  (type)` line per settable key."""
    if not keys:
        return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False).rstrip()
    rows = [(k, t, yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip())
            for k, t, v in recipe_keys(recipe)]
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"{k.ljust(width)} = {v}  ({t})" for k, t, v in rows)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every result-shaping key that differs (runtime-only keys left out)."""
    a, b = _flat(old), _flat(new)
    changed = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS):
            continue
        if a.get(key) != b.get(key):
            changed.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changed


def check_out_dir(recipe: Recipe, exp_dir: Path, resume: bool = False) -> str:
    """Decide what a distill run may do with `exp_dir`: 'new', 'resume' (same recipe) or 'update'
    (a changed recipe, allowed by `resume`). Raises RecipeError, naming the changes and the choices,
    when a different recipe would replace a previous run's results, or the folder is not an experiment."""
    exp_dir = Path(exp_dir)
    if not exp_dir.exists() or not any(exp_dir.iterdir()):
        return "new"
    saved = exp_dir / "recipe.yaml"
    if not saved.is_file():
        if (exp_dir / "stages").is_dir():
            return "resume"  # interrupted before the recipe was written
        raise RecipeError(f"{exp_dir} exists and is not an experiment directory (no recipe.yaml); "
                          "choose another --out or empty it")
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{saved} is not valid YAML ({e}); use --fresh to start that experiment over") from None
    changes = recipe_changes(old, recipe_to_dict(recipe))
    if not changes:
        return "resume"
    if resume:
        return "update"
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    raise RecipeError(f"{exp_dir} holds a run of a different recipe ({shown}), whose results this run would replace. "
                      f"Use --out NEW_DIR for a separate run, --resume to update it in place (only the stages the "
                      f"change affects re-run), or --fresh to delete it first")
