"""The `distill` stage list and model names, written once, and what the stage keys hash.

`plan(recipe)` is the ordered list of stages a run goes through, each with the models.json
name of the model it trains (if any); `planned_stages` (the "stage n/N" of the log) and
`expected_models` (the registry entries a recipe makes) both read it, and distill.py runs
the stages in that order.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ekd_compress.recipe import SECOND_ROUND, DistillConfig, Recipe, TrainConfig, baseline_names

CONTROL = "control_baseline_teacher"  # the student taught by the best baseline alone
CHOSEN = "student"                    # the registry's name of the chosen student (no stage of its own)


# ------------------------------------------------------------------------ names
# baseline_name(s) (the baseline seeds' names) live with the recipe, whose distill.guide may name one
def student_name(k: Any) -> str:
    """The student distilled with essence size k: "kd_all" for k = all (plain KD), else "essence_k<k>"."""
    return "kd_all" if k == "all" else f"essence_k{k}"


def student_kind(k: Any) -> str:
    return "kd" if k == "all" else "student"


def seed_student_name(seed: int) -> str:
    """Another seed of the chosen student."""
    return f"student_s{seed}"


def sweep_name(size_name: str, seed_index: int = 0, seed: int = 0) -> str:
    """The models.json name of the size-sweep student `size_name` (recipe distill.student_sizes):
    "sweep_<size>" for the first seed, "sweep_<size>_s<seed>" for the others (distill.sweep_seeds)."""
    return f"sweep_{size_name}" if seed_index == 0 else f"sweep_{size_name}_s{seed}"


def sweep_names(d: DistillConfig, size_name: str) -> list[str]:
    """The models of one size of the sweep, one per seed (the first distill.sweep_seeds of distill.seeds)."""
    return [sweep_name(size_name, i, s) for i, s in enumerate(d.seeds[:d.sweep_seeds])]


def sweep_baseline_name(size_name: str, seed_index: int = 0, seed: int = 0) -> str:
    """The CTC-only model of size `size_name` that the sweep's students of that size start from
    (distill.student_init=guide): "sweep_<size>_ctc", "sweep_<size>_ctc_s<seed>" for the other seeds."""
    return f"sweep_{size_name}_ctc" if seed_index == 0 else f"sweep_{size_name}_ctc_s{seed}"


def sweep_baseline_names(d: DistillConfig, size_name: str) -> list[str]:
    """The CTC-only models of one size of the sweep (none unless distill.student_init=guide): one per
    seed of the size's students, the best on dev is their start, as the guide is the chosen student's."""
    if d.student_init != "guide":
        return []
    return [sweep_baseline_name(size_name, i, s) for i, s in enumerate(d.seeds[:d.sweep_seeds])]


def seed_groups(d: DistillConfig, chosen_model: str) -> dict[str, list[str]]:
    """The models that differ only by seed, by group: "student" (the chosen k's model `chosen_model`
    and the student seeds) and each size of the sweep. The compression curve judges a size by the
    mean WER of its group."""
    groups = {CHOSEN: [chosen_model] + [seed_student_name(s) for s in d.seeds[1:]]}
    groups.update({sweep_name(s.name): sweep_names(d, s.name) for s in d.student_sizes})
    return groups


def pick_start(dev: dict[str, float], guide: str) -> str:
    """The CTC-only model that others follow or start from, of `dev` ({name: dev score}, in seed order):
    the lowest score with distill.guide=best, the first seed's with first, else the model `guide` names."""
    if guide == "best":
        return min(dev, key=dev.get)
    if guide == "first":
        return next(iter(dev))
    if guide not in dev:
        raise ValueError(f"distill.guide={guide!r} names none of {list(dev)}; name one of them, or use best or first")
    return guide


def ctc_groups(d: DistillConfig) -> dict[str, list[str]]:
    """The CTC-only models of each group of `seed_groups`' size: the baseline seeds for the chosen
    student, each size's CTC-only starts (`sweep_baseline_names`) for the sweep."""
    groups = {CHOSEN: baseline_names(d)}
    groups.update({sweep_name(s.name): sweep_baseline_names(d, s.name) for s in d.student_sizes})
    return groups


# ------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Step:
    stage: str                   # EXP/stages/<stage>.json
    model: Optional[str] = None  # the models.json name of the model it trains or builds


def plan(r: Recipe) -> list[Step]:
    """Every stage of a run of `r`, in the order distill.py runs them."""
    d = r.distill
    fly = d.cache == "fly"
    steps = [Step("data"), Step("features")]
    steps += [Step(name, name) for name in baseline_names(d)]
    if r.members:  # a round of guided members and their fusion; with distill.reguide, a second one is the teacher
        suffixes = [""] if d.reguide == "none" else ["", SECOND_ROUND]
        for sfx in suffixes:
            teacher = sfx == suffixes[-1]  # the first round's models are pruned from models.json
            steps += [Step(f"align{sfx}"), *[Step(f"member_{m.name}{sfx}", m.name + sfx if teacher else None)
                                             for m in r.members],
                      Step(f"coincide{sfx}"), Step(f"ensemble{sfx}", "ensemble" if teacher else None)]
    if not fly:
        steps += [Step("essence")] + ([Step("essence_control")] if d.control else [])
    # the first round of students (trained together with train.parallel_jobs > 1), then the second
    steps += [Step(student_name(k), student_name(k)) for k in d.ks]
    if d.control:
        steps.append(Step(CONTROL, CONTROL))
    # the second: the student seeds, and each size's CTC-only starts (student_init=guide); the third: the size sweep
    steps += [Step(seed_student_name(s), seed_student_name(s)) for s in d.seeds[1:]]
    steps += [Step(name, name) for s in d.student_sizes for name in sweep_baseline_names(d, s.name)]
    steps += [Step(name, name) for s in d.student_sizes for name in sweep_names(d, s.name)]
    return steps + [Step("evaluate")]


def planned_stages(r: Recipe) -> list[str]:
    """The stages a run of `r` goes through, in order (for 'stage n/N')."""
    return [s.stage for s in plan(r)]


def expected_models(r: Recipe) -> list[str]:
    """Names of every model the recipe produces (models.json keys)."""
    return [s.model for s in plan(r) if s.model] + [CHOSEN]


# ------------------------------------------------------------------ key parts
def extra_data_key(r: Recipe) -> list[Any]:
    """What the training data also depends on, beyond `r.data` and `r.tokens`: a phone recipe's
    lexicon (its content and how it is read), speed perturbation and on-the-fly noise. Each part is empty when
    unused, so the keys of recipes without them are as before these settings existed."""
    key: list[Any] = []
    if r.tokens.kind == "phone":
        lex = r.tokens.lexicon
        content = Path(lex).read_bytes() if lex and Path(lex).is_file() else b""
        key += [hashlib.sha256(content).hexdigest()[:12], r.tokens.strip_stress, r.tokens.oov]
    if r.data.speed_perturb:
        key.append({"speed_perturb": [float(f) for f in r.data.speed_perturb]})
    if r.data.corpus == "fsdd" and r.data.fsdd.train_noise_fly:
        key.append({"train_noise_fly": True})
    return key


def trainset_config(r: Recipe) -> Any:
    """The data settings that shape train/dev (test-set-only settings left out)."""
    data = dataclasses.replace(r.data, tests={})
    data.synthetic = dataclasses.replace(data.synthetic, test_hours=0.0)
    data.fsdd = dataclasses.replace(data.fsdd, noisy_dev_snr_db=None, n_test=0, test_indices=[])
    return data


RUNTIME_ONLY = ("threads", "num_workers", "accelerator", "precision", "parallel_jobs")


def train_key(cfg: TrainConfig) -> dict[str, Any]:
    """Training settings that change the result (how fast it runs does not)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_ONLY}
    if key["stop_on"] == "select":  # the behaviour before stop_on existed: keep those experiments' keys
        del key["stop_on"]
    if not key["average_last"]:  # likewise before averaging existed
        del key["average_last"]
    elif cfg.averaging_window() < cfg.average_last:  # cut to the last quarter of a short training: other weights
        key["average_last"] = cfg.averaging_window()
    return key
