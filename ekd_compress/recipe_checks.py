"""Recipe checks: every value a stage would trip over later, refused when the recipe loads.

`validate_recipe` runs the checks below, one function per part of the recipe, in order;
`check_architectures` (imports torch) checks that each model's `arch` and `params` exist.
Each error names the key, the bad value and the fix (RecipeError).
"""
from __future__ import annotations

import re

from ekd_compress.recipe_schema import (REGUIDE, RESERVED_NAMES, SECOND_ROUND, VERDICT_TARGETS, Recipe, RecipeError,
                                        TrainConfig, baseline_names, extra_speed_factors)

_CHOICES = {
    "data.corpus": ("synthetic", "fsdd", "kaldi", "switchboard"),
    "data.on_error": ("raise", "skip"),
    "data.metric": ("wer", "cer", "per"),
    "tokens.kind": ("char", "bpe", "phone"),
    "tokens.oov": ("report", "fail"),
    "train.select_on": ("wer", "cer", "per", "loss"),
    "train.stop_on": ("select", "wer", "cer", "per", "loss"),
    "distill.mode": ("renorm", "residual", "top_p"),
    "distill.cache": ("disk", "fly"),
    "distill.teacher_view": ("clean", "augmented"),
    "distill.student_init": ("scratch", "guide"),
}


def validate_recipe(r: Recipe) -> None:
    """RecipeError for the first value in `r` that no stage could use; None when all are usable."""
    _check_choices(r)
    _check_loss(r)
    _check_members(r)
    _check_student_sizes(r)
    _check_verdict_and_fusion(r)
    _check_guidance(r)
    for section, t in _train_sections(r):
        _check_train_section(section, t)
    _check_data(r)
    _check_metric(r)


def check_architectures(r: Recipe) -> None:
    """Every model's `arch` is registered and its `params` are ones that architecture takes (imports torch)."""
    from ekd_compress.models import model_names, model_params

    models = [("baseline", r.baseline), *[(f"members[{i}] ({m.name})", m) for i, m in enumerate(r.members)]]
    for where, m in models:
        if m.arch not in model_names():
            raise RecipeError(f"{where}.arch={m.arch!r} is not a registered architecture; use one of {model_names()} "
                              "or register your own (see ekd_compress/models/registry.py)")
        unknown = sorted(set(m.params) - set(model_params(m.arch)))
        if unknown:
            raise RecipeError(f"{where}.params has {unknown}, which {m.arch!r} does not take; "
                              f"valid parameters: {sorted(model_params(m.arch))}")


def _check_choices(r: Recipe) -> None:
    """Every key with a closed set of values (_CHOICES) holds one of them."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(r, section), key)
        if value not in choices:
            raise RecipeError(f"{dotted}={value!r} is not one of {list(choices)}")


def _check_loss(r: Recipe) -> None:
    """distill.teacher_view / cache, lam, temperature, kd_fade, ks and seeds."""
    d = r.distill
    if d.teacher_view == "augmented" and d.cache != "fly":
        raise RecipeError("distill.teacher_view=augmented needs the teacher in every step: set distill.cache=fly "
                          "(the disk cache holds the teacher's outputs on clean features only)")
    if not 0.0 <= d.lam <= 1.0:
        raise RecipeError(f"distill.lam={d.lam}: must be within [0, 1] (1 = CTC only)")
    if d.temperature <= 0:
        raise RecipeError(f"distill.temperature={d.temperature}: must be > 0")
    if d.kd_fade is not None:
        from ekd_compress.losses.essence import check_kd_fade

        try:
            check_kd_fade(d.kd_fade)
        except ValueError as e:
            raise RecipeError(f"distill.kd_fade: {e}") from None
    for k in d.ks:
        if not (k == "all" or (isinstance(k, int) and k > 0)):
            raise RecipeError(f"distill.ks contains {k!r}: use positive integers or 'all'")
    if not d.seeds:
        raise RecipeError("distill.seeds is empty: give at least one seed, e.g. [0, 1, 2]")


def _check_members(r: Recipe) -> None:
    """Learning rates, and member names that are unique and not the pipeline's own."""
    if r.baseline.lr is not None:
        raise RecipeError(f"baseline.lr={r.baseline.lr}: the baselines and students take train.lr (student_train.lr); "
                          "a model's own lr is for members only")
    for m in r.members:
        if m.lr is not None and not m.lr > 0:
            raise RecipeError(f"member {m.name!r}: lr={m.lr!r} must be > 0 (or null for member_train.lr)")
    names = [m.name for m in r.members]
    if len(set(names)) != len(names):
        raise RecipeError(f"member names must be unique: {names}")
    for n in names:
        if n in RESERVED_NAMES or n.startswith(("baseline_s", "student_s", "essence_k")):
            raise RecipeError(f"member name {n!r} is reserved for a model the pipeline makes; rename it")


def _check_student_sizes(r: Recipe) -> None:
    """distill.student_sizes names (they become model names) and distill.sweep_seeds."""
    d = r.distill
    sizes = [s.name for s in d.student_sizes]
    if len(set(sizes)) != len(sizes):
        raise RecipeError(f"distill.student_sizes names must be unique: {sizes}")
    for n in sizes:
        if not n or not n.replace("_", "").isalnum():
            raise RecipeError(f"distill.student_sizes name {n!r}: use letters, digits and '_' (e.g. s64)")
        if n.endswith("_ctc"):
            raise RecipeError(f"distill.student_sizes name {n!r} ends like a size's CTC-only start (sweep_<name>_ctc); "
                              "rename it so that it does not end in _ctc")
        if re.search(r"_s\d+$", n):
            raise RecipeError(f"distill.student_sizes name {n!r} ends like a seed's model (sweep_<name>_s<seed>); "
                              f"rename it, e.g. {n.rsplit('_s', 1)[0]}w{n.rsplit('_s', 1)[1]}")
    if not isinstance(d.sweep_seeds, int) or not 1 <= d.sweep_seeds <= len(d.seeds):
        raise RecipeError(f"distill.sweep_seeds={d.sweep_seeds!r}: the number of distill.seeds each size trains, "
                          f"1 to {len(d.seeds)} (distill.seeds={list(d.seeds)})")


def _check_verdict_and_fusion(r: Recipe) -> None:
    """distill.verdict_targets, compression_rtf_seconds, student_k and the fusion settings."""
    d = r.distill
    for claim, target in d.verdict_targets.items():
        if claim not in VERDICT_TARGETS:
            raise RecipeError(f"distill.verdict_targets: unknown claim {claim!r}; the claims are {list(VERDICT_TARGETS)}")
        if not isinstance(target, (int, float)) or target <= 0:
            raise RecipeError(f"distill.verdict_targets[{claim!r}]={target!r}: a ratio > 0 (e.g. 1.0)")
    if d.compression_rtf_seconds <= 0:
        raise RecipeError(f"distill.compression_rtf_seconds={d.compression_rtf_seconds}: seconds of dev audio, > 0")
    if d.student_k != "auto" and d.student_k not in d.ks:
        raise RecipeError(f"distill.student_k={d.student_k!r} is not among distill.ks={d.ks}; add it or use 'auto'")
    if d.fusion_weights is not None and (len(d.fusion_weights) != len(r.members) or min(d.fusion_weights) < 0
                                         or sum(d.fusion_weights) <= 0):
        raise RecipeError(f"distill.fusion_weights={d.fusion_weights}: give one non-negative weight per member "
                          f"({len(r.members)}), not all zero, or null for equal weights")
    if d.fusion_tune not in ("none", "dev", "select"):
        raise RecipeError(f"distill.fusion_tune={d.fusion_tune!r}: use 'none' (fusion_weights, or equal weights), "
                          "'dev' (grid-search the weights on the dev set) or 'select' (forward selection on dev)")
    if d.fusion_tune != "none" and d.fusion_weights is not None:
        raise RecipeError(f"distill.fusion_tune={d.fusion_tune} chooses the weights itself; set distill.fusion_weights=null "
                          "or distill.fusion_tune=none")
    if not d.fusion_on or any(s != "dev" and not str(s).startswith("dev_") for s in d.fusion_on):
        raise RecipeError(f"distill.fusion_on={list(d.fusion_on)!r}: the fusion search scores dev sets only: 'dev' and "
                          "copies of it among the test sets (names that start with 'dev_', e.g. dev_noisy10db)")
    if len(set(d.fusion_on)) != len(d.fusion_on):
        raise RecipeError(f"distill.fusion_on={list(d.fusion_on)!r} names a set twice; name each once")
    if d.fusion_tune == "none" and d.fusion_on != ["dev"]:
        raise RecipeError(f"distill.fusion_on={list(d.fusion_on)!r} names the sets of a fusion search, but "
                          "distill.fusion_tune=none searches nothing; set fusion_tune to select or dev, or drop fusion_on")
    if not 0.0 < d.fusion_grid <= 0.5 or abs(round(1.0 / d.fusion_grid) * d.fusion_grid - 1.0) > 1e-6:
        raise RecipeError(f"distill.fusion_grid={d.fusion_grid}: a step that divides 1, e.g. 0.1, 0.125 or 0.25")
    if not 0.0 <= d.coincidence_threshold <= 1.0:
        raise RecipeError(f"distill.coincidence_threshold={d.coincidence_threshold}: a share, within [0, 1]")


def _check_guidance(r: Recipe) -> None:
    """distill.guide, reguide, drop_ratio and select_rounds."""
    d = r.distill
    names = [m.name for m in r.members]
    seeds = baseline_names(d)
    if d.guide not in ("best", "first", *seeds):
        raise RecipeError(f"distill.guide={d.guide!r}: use 'best' (lowest dev WER among the baseline seeds), 'first', "
                          f"or the name of one of this recipe's baseline seeds: {seeds}")
    if d.reguide not in REGUIDE:
        raise RecipeError(f"distill.reguide={d.reguide!r}: use one of {list(REGUIDE)}")
    if d.reguide != "none" and not r.members:
        raise RecipeError(f"distill.reguide={d.reguide!r} re-trains the ensemble members, and the recipe has none; "
                          "set distill.reguide=none or add members")
    if d.reguide != "none" and (clash := [n for n in names if n + SECOND_ROUND in names]):
        raise RecipeError(f"members {[n + SECOND_ROUND for n in clash]} would share a name with the second round of "
                          f"{clash} (distill.reguide={d.reguide!r}); rename them")
    if d.drop_ratio < 1.0 or d.select_rounds < 1:
        raise RecipeError(f"distill.drop_ratio={d.drop_ratio} must be >= 1 and distill.select_rounds="
                          f"{d.select_rounds} >= 1")


def _check_train_section(section: str, t: TrainConfig) -> None:
    """One of train / member_train / student_train: parallel_jobs, max_restarts, average_last, watchdog."""
    if not isinstance(t.parallel_jobs, int) or isinstance(t.parallel_jobs, bool) or t.parallel_jobs < 1:
        raise RecipeError(f"{section}.parallel_jobs={t.parallel_jobs!r}: a number of trainings run at once, "
                          ">= 1 (1 = one after another)")
    if t.parallel_jobs > 1 and t.accelerator == "gpu":
        raise RecipeError(f"{section}.parallel_jobs={t.parallel_jobs} with {section}.accelerator=gpu: parallel "
                          "jobs share out CPU cores; on a GPU set parallel_jobs to 1")
    if t.max_restarts < 0:
        raise RecipeError(f"{section}.max_restarts={t.max_restarts} must be >= 0 (0 = never restart)")
    if t.average_last < 0:
        raise RecipeError(f"{section}.average_last={t.average_last} must be >= 0: 0 = off, N = average the "
                          "weights of the last N epochs (at most the last quarter of training)")
    for check in t.watchdog:
        if not (isinstance(check, (list, tuple)) and len(check) == 2 and isinstance(check[0], int)
                and check[0] >= 1 and isinstance(check[1], (int, float))):
            raise RecipeError(f"{section}.watchdog={t.watchdog!r}: give [[epoch, max dev WER %], ...] with "
                              "epochs >= 1, e.g. [[4, 95], [10, 25]], or [] for no watchdog")


def _check_data(r: Recipe) -> None:
    """data: speed factors, the synthetic corpus's sizes, FSDD test recordings, lazy loading, Kaldi speakers, durations."""
    extra_speed_factors(r.data.speed_perturb)
    if r.data.corpus == "synthetic" and (r.data.synthetic.dev_hours <= 0 or r.data.synthetic.test_hours <= 0):
        raise RecipeError("data.synthetic.dev_hours and test_hours must be > 0 (dev selects checkpoints, test is scored)")
    if r.data.synthetic.vocabulary not in ("sentences", "commands"):
        raise RecipeError(f"data.synthetic.vocabulary={r.data.synthetic.vocabulary!r}: use 'sentences' or 'commands'")
    if not 1 <= r.data.synthetic.min_words <= r.data.synthetic.max_words:
        raise RecipeError("data.synthetic.min_words and max_words: need 1 <= min_words <= max_words")
    if r.data.corpus == "fsdd" and r.data.fsdd.n_test > 0 and not r.data.fsdd.test_indices:
        raise RecipeError("data.fsdd.n_test > 0 needs data.fsdd.test_indices (recordings for the test strings)")
    if r.data.lazy not in ("auto", True, False):
        raise RecipeError(f"data.lazy={r.data.lazy!r} is not one of ['auto', true, false]")
    if r.data.lazy_min_cuts < 0:
        raise RecipeError(f"data.lazy_min_cuts={r.data.lazy_min_cuts}: a number of cuts, >= 0 (0 = always lazy)")
    if r.data.kaldi.test_speakers < 0 or (r.data.kaldi.test_speakers > 0 and r.data.kaldi.dev):
        raise RecipeError(f"data.kaldi.test_speakers={r.data.kaldi.test_speakers}: a number of speakers >= 0, carved "
                          "from train with the dev speakers (so only with data.kaldi.dev=null); list a separate "
                          "test dir under data.tests instead")
    if r.data.min_duration >= r.data.max_duration:
        raise RecipeError(f"data.min_duration={r.data.min_duration} must be below data.max_duration={r.data.max_duration}")


def _train_sections(r: Recipe) -> list[tuple[str, TrainConfig]]:
    """(name, config) of the training sections the recipe sets: train, and member_train / student_train if given."""
    return [(name, getattr(r, name)) for name in ("train", "member_train", "student_train")
            if getattr(r, name) is not None]


def _check_metric(r: Recipe) -> None:
    """tokens.kind, tokens.lexicon, data.metric and train.select_on/stop_on must agree."""
    phone = r.tokens.kind == "phone"
    if phone and not r.tokens.lexicon:
        raise RecipeError("tokens.kind=phone needs tokens.lexicon: a `WORD PH1 PH2 ...` file "
                          "(e.g. ${data.root}/speechocean762/lexicon.txt)")
    if not phone and r.tokens.lexicon:
        raise RecipeError(f"tokens.lexicon={r.tokens.lexicon!r} is only used with tokens.kind=phone; "
                          "set tokens.kind=phone or remove tokens.lexicon")
    metric = r.data.metric
    if phone and metric != "per":
        raise RecipeError(f"data.metric={metric!r}: a phone model writes phones, not words; use data.metric=per")
    if not phone and metric == "per":
        raise RecipeError(f"data.metric=per needs phone tokens (tokens.kind=phone with tokens.lexicon); "
                          f"with tokens.kind={r.tokens.kind} use wer or cer")
    for section, t in _train_sections(r):
        for key in ("select_on", "stop_on"):
            value = getattr(t, key)
            if value in ("wer", "cer", "per") and value != metric:
                raise RecipeError(f"{section}.{key}={value} but data.metric={metric}: models are chosen on the "
                                  f"recipe's metric; set {section}.{key}={metric} (or loss)")
