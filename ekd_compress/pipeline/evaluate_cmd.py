"""`ekd-compress evaluate EXPDIR --data DIR`: score an experiment's models on other data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ekd_compress.recipe import load_recipe


def load_eval_cuts(data: Path, recipe, on_error: str = "raise", log: Callable[[str], None] = print):
    """A Kaldi data dir or a lhotse manifest -> CutSet at the recipe's rate, text normalised like training."""
    from lhotse import CutSet

    from ekd_compress.data.kaldi import load_kaldi_dir
    from ekd_compress.data.text import get_normalizer

    data = Path(data)
    normalize = get_normalizer(recipe.data.text_norm)
    if data.is_dir():
        cuts, report = load_kaldi_dir(data, text_normalizer=normalize, sampling_rate=recipe.data.sample_rate,
                                      on_error=on_error)
        log(f"{data}: {report.summary()}")
        return cuts
    if data.name.endswith((".jsonl.gz", ".jsonl", ".json")):
        cuts = CutSet.from_file(data).resample(recipe.data.sample_rate)
        return cuts.map_supervisions(lambda s: s.transform_text(normalize))
    raise ValueError(f"--data {data}: expected a Kaldi data dir or a lhotse CutSet manifest (.jsonl.gz)")


def evaluate_on_data(exp_dir: Path, data: Path, names: Optional[list[str]] = None, scoring: str = "plain",
                     on_error: str = "raise", log: Callable[[str], None] = print) -> dict[str, Any]:
    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.pipeline.scoring import evaluate_experiment

    exp_dir = Path(exp_dir)
    recipe_file = exp_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise FileNotFoundError(f"{recipe_file} not found: {exp_dir} is not an experiment directory of `ekd-compress distill`")
    recipe = load_recipe(recipe_file)
    cuts = load_eval_cuts(data, recipe, on_error, log)
    spec = feature_spec(recipe.features, recipe.data.sample_rate)
    return evaluate_experiment(exp_dir, cuts, str(data), spec, scoring=scoring, names=names, log=log,
                               metric=recipe.data.metric)
