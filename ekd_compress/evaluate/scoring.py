"""Score an experiment's models on a set of cuts: greedy CTC decoding, then the error rates.

`score_models` gives the `evaluate --json` object ({"data", "metric", "models": [row per
model]}) that `distill`'s evaluate stage writes into results.json and `ekd-compress evaluate`
prints; the models come from the experiment folder (ekd_compress.experiment). Phone models can
also be scored on words: pass a `LexiconWordDecoder` (ekd_compress.evaluate.lexicon_words) and
their rows gain `wer`/`cer` of the words it decodes, beside `per` of the greedy phones.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np

import torch
from lhotse import CutSet

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.contract.tokens import TokenTable
from ekd_compress.experiment import load_registered, read_tokens

if TYPE_CHECKING:
    from ekd_compress.evaluate.lexicon_words import LexiconWordDecoder


@torch.no_grad()
def _model_outputs(model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec,
                   max_duration: float) -> Iterator[tuple[dict, list[np.ndarray], float]]:
    """Per batch of `cuts`: (batch dict, one (T', V) float32 log-prob array per cut, seconds the model took)."""
    from ekd_compress.train.data import AsrDataset, make_loader

    dataset = AsrDataset(tokens, spec, subsampling=getattr(model, "subsampling", 4), keep_in_memory=False,
                         with_targets=False)
    for batch in make_loader(cuts, dataset, max_duration, shuffle=False):
        start = time.perf_counter()
        log_probs, out_lengths = model(batch["feats"], batch["lengths"])
        lp = log_probs.detach().float().cpu().numpy()
        yield batch, [lp[b, : int(n)] for b, n in enumerate(out_lengths.cpu())], time.perf_counter() - start


def decode_cuts(
    model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec, max_duration: float = 200.0,
    words: Optional["LexiconWordDecoder"] = None,
) -> tuple[list[str], list[str], list[str], float, float, list[str]]:
    """Greedy-decode every cut. Returns (ids, refs, hyps, audio seconds, compute seconds, word hyps).

    Compute seconds are the model's and greedy decoding's. Word hyps are `words`' decoding of each
    utterance (phone models), [] without `words`; their beam search is not counted in compute seconds
    (the greedy RTF stays comparable)."""
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode

    ids, refs, hyps, word_hyps = [], [], [], []
    audio = compute = 0.0
    for batch, lps, seconds in _model_outputs(model, cuts, tokens, spec, max_duration):
        start = time.perf_counter()
        decoded = [ctc_greedy_decode(lp[None])[0] for lp in lps]
        compute += seconds + time.perf_counter() - start
        audio += sum(batch["durations"])
        ids += batch["ids"]
        refs += batch["texts"]
        hyps += [tokens.decode(d) for d in decoded]
        if words is not None:
            word_hyps += [words.decode(lp) for lp in lps]
    return ids, refs, hyps, audio, compute, word_hyps


def utterance_log_probs(model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec,
                        max_duration: float = 200.0) -> tuple[list[str], list[np.ndarray]]:
    """(references, one (T', V) float32 log-prob array per cut), in the cuts' order."""
    refs, out = [], []
    for batch, lps, _ in _model_outputs(model, cuts, tokens, spec, max_duration):
        refs += batch["texts"]
        out += lps
    return refs, out


def score_model(
    model: torch.nn.Module, cuts: CutSet, tokens: TokenTable, spec: FeatureSpec, scoring: str = "plain",
    words: Optional["LexiconWordDecoder"] = None,
) -> dict[str, Any]:
    """{wer, sub, del, ins, words, cer, cer_counts, utterances, rtf} (+ per, per_counts for phone
    models; + {"subsets": ...} for Switchboard scoring; utterances = {"ids", and per measure
    [errors, units] per utterance}). See ekd_compress.evaluate.error_rates. With `words` (phone
    models), wer and cer are those of the words it decodes instead of null."""
    from ekd_compress.evaluate.error_rates import score_texts

    ids, refs, hyps, audio, compute, word_hyps = decode_cuts(model, cuts, tokens, spec, words=words)
    result = score_texts(refs, hyps, tokens.kind, tokens.lexicon)
    if words is not None and tokens.kind == "phone":
        from_words = score_texts([r.lower() for r in refs], word_hyps, "char")  # lexicon words are lower case
        result.update({k: v for k, v in from_words.items() if k != "utterances"})
        result["utterances"].update(from_words["utterances"])
    result["utterances"] = {"ids": list(ids), **result["utterances"]}
    if scoring == "swbd" and tokens.kind != "phone":
        from ekd_compress.evaluate.swbd import score_eval2000

        subsets = score_eval2000(ids, refs, hyps)
        result = {**result, **subsets["all"], "subsets": {k: subsets[k] for k in ("swbd", "callhome")}}
        del result["utterances"]  # plain-text counts, not the GLM-normalised ones: no bootstrap on them
    result["rtf"] = compute / max(audio, 1e-9)
    return result


def score_models(models: dict[str, tuple[dict[str, Any], torch.nn.Module]], cuts: CutSet, data_name: str,
                 tokens: TokenTable, spec: FeatureSpec, scoring: str = "plain", log: Callable[[str], None] = print,
                 metric: str = "wer", words: Optional["LexiconWordDecoder"] = None,
                 tune_words: Optional[Callable[[torch.nn.Module], tuple["LexiconWordDecoder", dict]]] = None,
                 ) -> dict[str, Any]:
    """Score loaded models {name: (registry entry, model)} on one set -> the `evaluate --json` object:
    {"data", "metric" (the recipe's primary measure), "models": [row per model]}; `words`: see score_model.
    `tune_words(model)` -> (decoder, weights) picks each model's own word decoder (rows gain
    "words_weights"); it replaces `words`."""
    from ekd_compress.evaluate.error_rates import LABELS
    from ekd_compress.models import count_parameters

    rows = []
    for name, (entry, model) in models.items():
        decoder, weights = (words, None) if tune_words is None else tune_words(model)
        res = score_model(model, cuts, tokens, spec, scoring, words=decoder)
        if weights is not None:
            res["words_weights"] = weights
        value = res.get(metric)
        shown = f"{value:6.2f}%" if value is not None else "   n/a "
        decoded = words is not None and res.get("wer") is not None
        extra = f"  WER {res['wer']:6.2f}% (words from phones)" if decoded else ""
        log(f"  {data_name:>12} {name:<26} {LABELS[metric]} {shown}{extra}  RTF {res['rtf']:.4f}")
        rows.append({"name": name, "kind": entry["kind"], "params": count_parameters(model), **res})
    return {"data": data_name, "metric": metric, "models": rows}


def evaluate_experiment(
    exp_dir: Path, cuts: CutSet, data_name: str, spec: FeatureSpec, scoring: str = "plain",
    names: Optional[list[str]] = None, log: Callable[[str], None] = print, metric: str = "wer",
    words: Optional["LexiconWordDecoder"] = None,
    tune_words: Optional[Callable[[torch.nn.Module], tuple["LexiconWordDecoder", dict]]] = None,
) -> dict[str, Any]:
    """Score every registered model (or those in `names`) -> the `evaluate --json` object."""
    tokens = read_tokens(exp_dir)
    return score_models(load_registered(exp_dir, names), cuts, data_name, tokens, spec, scoring, log, metric, words,
                        tune_words)
