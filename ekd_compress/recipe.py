"""Typed recipes: YAML -> dataclasses via OmegaConf structured configs.

A recipe is plain YAML (loaded with `yaml.safe_load` semantics, no tags that run code)
merged onto the `Recipe` dataclass (`ekd_compress.recipe_schema`, whose names this module hands
on), so a misspelt key is an error that lists the valid keys. `--set a.b=c` overrides any value;
`${oc.env:EKD_DATA,data}` reads the environment. `save_recipe` writes the fully resolved recipe
next to a run's outputs. The checks a loaded recipe must pass (each error names the key and the
fix) are in `ekd_compress.recipe_checks`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from ekd_compress.recipe_checks import check_architectures, validate_recipe
from ekd_compress.recipe_files import find_recipe
from ekd_compress.recipe_schema import (
    DataConfig, DistillConfig, FeatureConfig, FsddData, KaldiData, ModelConfig, REGUIDE, RESERVED_NAMES, Recipe,
    RecipeError, SECOND_ROUND, SpecAugmentConfig, StudentSize, SwitchboardData, SyntheticData, TokenConfig,
    TrackingConfig, TrainConfig, VERDICT_TARGETS, baseline_name, baseline_names, config_hash, extra_speed_factors,
    recipe_to_dict,
)

__all__ = [  # the schema's names, handed on: `from ekd_compress.recipe import Recipe` and the like
    "load_recipe", "save_recipe", "DataConfig", "DistillConfig", "FeatureConfig", "FsddData", "KaldiData",
    "ModelConfig", "REGUIDE", "RESERVED_NAMES", "Recipe", "RecipeError", "SECOND_ROUND", "SpecAugmentConfig",
    "StudentSize", "SwitchboardData", "SyntheticData", "TokenConfig", "TrackingConfig", "TrainConfig",
    "VERDICT_TARGETS", "baseline_name", "baseline_names", "config_hash", "extra_speed_factors", "recipe_to_dict",
]


def _valid_keys(node: Any) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (a file, or a bundled recipe's name such as "demo"; the defaults when path
    is None), apply `a.b=c` overrides, validate (architectures included)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    schema = OmegaConf.structured(Recipe)
    layers = [schema]
    if path is not None:
        path = find_recipe(path)  # a file, or a bundled recipe's name (demo, fsdd, ...) from any directory
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {path} must be a YAML mapping at the top level")
        layers.append(OmegaConf.create(raw))
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(f"--set {ov!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        merged = OmegaConf.merge(*layers)
        if overrides:
            given = OmegaConf.from_dotlist(list(overrides))
            null_sections = [s for s in ("member_train", "student_train") if merged[s] is None]
            merged = OmegaConf.merge(merged, given)
            for section in null_sections:
                # null means "same as train": a setting given for the section alone starts from train's
                # settings (overrides included), not from the defaults
                if any(ov.split("=", 1)[0].startswith(section + ".") for ov in overrides):
                    merged[section] = OmegaConf.merge(merged.train, given[section])
        recipe: Recipe = OmegaConf.to_object(merged)  # resolves ${...}
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node: Any = Recipe()
        for part in parent.split(".") if parent else []:
            node = getattr(node, part, None)
        raise RecipeError(f"unknown recipe key {key!r}; valid keys here: {_valid_keys(node) or _valid_keys(ModelConfig())}") from None
    except OmegaConfBaseException as e:
        raise RecipeError(_value_error(e, overrides, path)) from None
    except TypeError as e:  # e.g. `--set members.0.x=1` (a mapping merged onto a list)
        raise RecipeError(
            f"cannot apply {list(overrides)} ({e}): list entries cannot be set by index; "
            "edit the recipe file or give the whole list, e.g. --set 'distill.ks=[1,2]'"
        ) from None
    validate_recipe(recipe)
    check_architectures(recipe)  # here, not when the model is built after the data and features stages
    return recipe


def _default_of(key: str) -> Any:
    node: Any = Recipe()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            return None
        node = getattr(node, part)
    return None if dataclasses.is_dataclass(node) else node


def _value_error(e: Exception, overrides: list[str] | tuple[str, ...], path: Path | None) -> str:
    """One line naming the key, the bad value, where it came from and what is expected."""
    key = getattr(e, "full_key", None)
    detail = str(getattr(e, "msg", None) or e).split("\n")[0]
    if not key:
        return f"invalid recipe value: {detail}"
    given = [ov for ov in overrides if ov.split("=", 1)[0].strip() == key]
    where = f"--set {given[-1]}" if given else f"{key} in {path}" if path else key
    default = _default_of(key)
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(default))
    hint = f"; give {kind}, e.g. --set {key}={json.dumps(default)}" if kind and default is not None else ""
    return f"{where}: {detail}{hint}"


def save_recipe(r: Recipe, path: Path) -> Path:
    """Write the fully resolved recipe as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe_to_dict(r), sort_keys=False))
    return path
