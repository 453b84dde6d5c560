"""`ekd-compress evaluate EXPDIR --data DIR`: score an experiment's models on other data.

The experiment (recipe, tokens, models) is read through ekd_compress.experiment; the data
is a Kaldi data dir or a lhotse manifest, normalised like the experiment's training text.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ekd_compress.experiment import load_cuts, read_recipe

if TYPE_CHECKING:
    from lhotse import CutSet

    from ekd_compress.recipe import Recipe


def load_eval_cuts(data: Path, recipe: "Recipe", on_error: str = "raise", log: Callable[[str], None] = print) -> "CutSet":
    """A Kaldi data dir or a lhotse manifest -> CutSet at the recipe's rate, text normalised like training.
    Relative audio and feature paths in a manifest are read relative to its folder, as an experiment's
    manifests (EXP/data, EXP/features) store them."""
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
        cuts = load_cuts(data).resample(recipe.data.sample_rate)
        return cuts.map_supervisions(lambda s: s.transform_text(normalize))
    raise ValueError(f"--data {data}: expected a Kaldi data dir or a lhotse CutSet manifest (.jsonl.gz)")


def evaluate_on_data(exp_dir: Path, data: Path, names: Optional[list[str]] = None, scoring: str = "plain",
                     on_error: str = "raise", log: Callable[[str], None] = print,
                     words: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Score the experiment's models (all, or those in `names`) on `data` -> the `evaluate --json` object.

    words: for phone experiments, also decode words through the lexicon and an n-gram of the training
    transcripts: keyword arguments of `experiment_word_decoder` (order, lm_weight, word_score, beam), and
    optionally "tune_on": a data dir or manifest (dev) on which each model gets its own LM weight and word
    score (`tune_weights`; rows gain "words_weights"). The object then has "words" (the LM and settings)
    and each row a word-level wer and cer."""
    from ekd_compress.evaluate.scoring import evaluate_experiment
    from ekd_compress.features.fbank import feature_spec

    exp_dir = Path(exp_dir)
    recipe = read_recipe(exp_dir)
    cuts = load_eval_cuts(data, recipe, on_error, log)
    spec = feature_spec(recipe.features, recipe.data.sample_rate)
    decoder = info = tune = None
    if words is not None:
        from ekd_compress.evaluate.lexicon_words import experiment_word_decoder

        words = dict(words)
        tune_on = words.pop("tune_on", None)
        decoder, info = experiment_word_decoder(exp_dir, **words)
        log(f"words from phones: {info['order']}-gram of {info['train_sentences']} training transcripts "
            f"({info['lm']}), {info['lexicon_words']} lexicon words, beam {info['beam']}, " +
            (f"weights tuned per model on {tune_on}" if tune_on else
             f"LM weight {info['lm_weight']}, word score {info['word_score']}"))
        if tune_on:
            tune = _weight_tuner(decoder, load_eval_cuts(Path(tune_on), recipe, on_error, log), spec)
            info.update(tune_on=str(tune_on), lm_weight=None, word_score=None)
    result = evaluate_experiment(exp_dir, cuts, str(data), spec, scoring=scoring, names=names, log=log,
                                 metric=recipe.data.metric, words=decoder, tune_words=tune)
    if info is not None:
        result["words"] = info
    return result


def _weight_tuner(decoder: Any, tune_cuts: "CutSet", spec: Any) -> Callable[[Any], tuple[Any, dict]]:
    """model -> (its word decoder with the weights that score best on `tune_cuts`, those weights)."""
    from ekd_compress.evaluate.lexicon_words import tune_weights
    from ekd_compress.evaluate.scoring import utterance_log_probs

    def tune(model: Any) -> tuple[Any, dict]:
        refs, log_probs = utterance_log_probs(model, tune_cuts, decoder.tokens, spec)
        return tune_weights(decoder, log_probs, refs)

    return tune
