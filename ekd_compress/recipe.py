"""Typed recipes: YAML -> dataclasses via OmegaConf structured configs.

A recipe is plain YAML (loaded with `yaml.safe_load` semantics, no tags that run code)
merged onto the `Recipe` dataclass below, so a misspelt key is an error that lists the
valid keys. `--set a.b=c` overrides any value; `${oc.env:EKD_DATA,data}` reads the
environment. `save_recipe` writes the fully resolved recipe next to a run's outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class SyntheticData:
    """espeak-ng speech the project makes itself (sizes in hours of audio)."""
    hours: float = 0.3
    dev_hours: float = 0.03
    test_hours: float = 0.03
    snr_db_low: float = 15.0   # additive noise SNR range, dB
    snr_db_high: float = 40.0
    reverb: bool = True
    # sentences: ~1500-word English sentences (large vocabulary, GPU-sized);
    # commands: strings of digits and command words (small vocabulary, learnable on a CPU)
    vocabulary: str = "sentences"
    min_words: int = 3
    max_words: int = 12


@dataclass
class FsddData:
    """Connected digit strings built from FSDD recordings `{digit}_{speaker}_{index}.wav`."""
    root: str = "${data.root}/fsdd"
    n_train: int = 1500            # strings built from recordings with train_indices
    n_dev: int = 150
    train_indices: list[int] = field(default_factory=lambda: list(range(10, 50)))
    dev_indices: list[int] = field(default_factory=lambda: list(range(5, 10)))
    # internal test split: strings from recordings that neither training nor any choice saw
    test_indices: list[int] = field(default_factory=list)
    n_test: int = 0
    noisy_dev_snr_db: Optional[float] = 10.0  # also score noisy copies of dev (and test) at this SNR
    # multi-condition training: extra train strings with noise, one (SNR dB, noise type) per share
    train_noise: list[Any] = field(default_factory=list)  # e.g. [[20, white], [10, pink], [5, babble]]
    train_noise_strings: int = 0      # strings per noise condition (0 = none)
    # mix the noisy strings' noise afresh every epoch (same kind and SNR, drawn from a noise pool of the training
    # recordings) instead of showing the same fixed noisy copy each time; keyed by plan.extra_data_key
    train_noise_fly: bool = field(default=False, metadata={"hash": False})


@dataclass
class KaldiData:
    """Any Kaldi data dir(s). dev is carved from train by speaker when `dev` is null."""
    train: str = ""
    dev: Optional[str] = None
    dev_speakers: int = 8
    # internal test split: whole speakers held out of train besides the dev ones (dev carved
    # from train only); no choice (checkpoints, k, fusion) looks at it, the verdict is read on it
    test_speakers: int = 0
    audio_root: Optional[str] = None


@dataclass
class SwitchboardData:
    """LDC97S62 + eval2000 (LDC2002S09/T43) laid out as released."""
    swbd_root: str = "${data.root}/LDC97S62"
    eval2000_root: str = "${data.root}/LDC2002S09"
    transcripts_dir: Optional[str] = None


@dataclass
class DataConfig:
    corpus: str = "synthetic"      # synthetic | fsdd | kaldi | switchboard
    root: str = "${oc.env:EKD_DATA,data}"
    sample_rate: int = 16000       # Hz; audio at other rates is resampled
    text_norm: str = "lower"
    on_error: str = "raise"        # raise | skip (skipped items are counted and reported)
    # the primary measure: wer | cer | per (phone models: tokens.kind=phone). results.md, the verdict,
    # checkpoint selection (train.select_on) and the student choice use it. Models choose by it through
    # train.select_on, so it is left out of the data key.
    metric: str = field(default="wer", metadata={"hash": False})
    min_duration: float = 0.3      # seconds
    max_duration: float = 20.0
    max_train_utts: Optional[int] = None
    # speed perturbation of the training split (Ko et al. 2015): each factor other than 1.0 adds a
    # resampled copy of every training cut (ids suffixed `_sp<factor>`), so an epoch grows by that
    # much; dev and test are never perturbed. [] = off. E.g. [0.9, 1.1] triples the training audio.
    speed_perturb: list[float] = field(default_factory=list, metadata={"hash": False})  # keyed by plan.extra_data_key
    # how pipeline stages open a split's manifest: auto | true | false. Lazy manifests stream from
    # disk (memory flat in the corpus size) and turn off the per-utterance feature cache; batches
    # are the same either way, so it is left out of the stage keys. auto: lazy above lazy_min_cuts.
    lazy: Any = field(default="auto", metadata={"hash": False})
    lazy_min_cuts: int = field(default=20000, metadata={"hash": False})  # lhotse's sampler buffer
    tests: dict[str, str] = field(default_factory=dict)  # extra test sets: name -> Kaldi dir
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    fsdd: FsddData = field(default_factory=FsddData)
    kaldi: KaldiData = field(default_factory=KaldiData)
    switchboard: SwitchboardData = field(default_factory=SwitchboardData)


@dataclass
class SpecAugmentConfig:
    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 10   # bins
    time_masks: int = 2
    time_width: int = 20   # frames (10 ms)


@dataclass
class FeatureConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    precompute: bool = True        # store fbank once (lhotse), or compute on the fly
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class TokenConfig:
    kind: str = "char"             # char | bpe | phone
    vocab_size: int = 500          # bpe only
    # phone only: a Kaldi/CMU lexicon `WORD PH1 PH2 ...` (several lines per word allowed; the first
    # is the training target). Copied (stress-stripped) into the experiment and the exported bundle.
    # These three join the data key only for phone tokens (distill.py), so char/bpe keys stay as they were.
    lexicon: Optional[str] = field(default=None, metadata={"hash": False})
    strip_stress: bool = field(default=True, metadata={"hash": False})   # AH0/AH1 -> AH
    # training utterances with an out-of-lexicon word: report (counted, listed, left out) | fail
    oov: str = field(default="report", metadata={"hash": False})


@dataclass
class ModelConfig:
    name: str = "baseline"
    arch: str = "gru"
    params: dict[str, Any] = field(default_factory=dict)
    beta: float = 0.3              # weight of the frame CE to the guide's alignment (members)
    seed: int = 0
    # a member's own peak learning rate over member_train.lr (e.g. from `ekd-compress lr-find`); None = that one.
    # Left out of the hash: the member's key carries it through its training settings, only when set
    lr: Optional[float] = field(default=None, metadata={"hash": False})


@dataclass
class TrainConfig:
    epochs: int = 10
    max_duration: float = 120.0    # seconds of audio per batch
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    patience: int = 5              # early stopping on dev WER, epochs
    select_on: str = "wer"         # wer | cer | per (= data.metric) | loss (checkpoint selection and early stopping)
    stop_on: str = "select"        # select (= select_on) | wer | cer | per | loss: what early stopping watches
    accelerator: str = "auto"      # auto | cpu | gpu
    precision: str = "auto"        # auto = bf16-mixed on CUDA, 32 on CPU
    num_workers: int = 0
    threads: int = 0               # torch CPU threads; 0 = all cores (with parallel_jobs: the cores shared out)
    # independent trainings of one stage group (baseline seeds, members, students) run at once, each in a
    # process of its own with cores // parallel_jobs threads (at least 1); 1 = one after another, in this process.
    # Small models use two threads poorly (RESULTS.md), so on a CPU several one-thread jobs finish sooner
    parallel_jobs: int = 1
    sortagrad: bool = False        # first epoch shortest-first (DeepSpeech2), then shuffled
    output_prior_bias: bool = False  # start the output bias at the log label prior (blank share of frames)
    # convergence watchdog: [[epoch, max dev WER %], ...]; at the end of each listed epoch a run whose
    # dev output is all blank, or whose dev WER is above that bound, is restarted with the next seed
    # (recorded in models.json, results and MLflow). [] = off
    watchdog: list[Any] = field(default_factory=list)
    max_restarts: int = 2
    # 0 = the model is the epoch with the best dev score; N = the mean of the weights after each of the
    # last N epochs, at most the last quarter of training (checkpoint averaging; not tied to one noisy dev score)
    average_last: int = 0

    def averaging_window(self) -> int:
        """The number of epochs whose weights are averaged: `average_last`, but at most the last
        quarter of training (epochs // 4, at least 1); 0 when averaging is off.

        The window is meant for the end of the learning-rate decay, where the weights sit around one
        optimum. A recipe's window does not shrink when its training is shortened (`--set
        train.epochs=10` on a recipe with `average_last: 10`), and a mean that reaches back to the
        first epochs is a mean with near-random weights. FSDD baseline, 10 epochs, dev WER of the
        mean of the last 10 / 5 / 3 / 2 epochs: 29.8 / 16.2 / 14.2 / 13.8 %, last epoch 15.1 (CPU-2;
        on the H200 the mean of all 10 scored 31.7 against 14.1 for the best epoch). The recipes'
        10 of 48 epochs is within the quarter (RESULTS.md).
        """
        if self.average_last < 1:
            return 0
        return min(int(self.average_last), max(1, int(self.epochs) // 4))


@dataclass
class StudentSize:
    """One student of the size sweep: the baseline architecture with `params` merged over
    `baseline.params`, trained like the chosen student (its k; the first distill.sweep_seeds of
    distill.seeds). With distill.student_init=guide the size also trains that many CTC-only seeds
    (`sweep_<name>_ctc`, `sweep_<name>_ctc_s<seed>`), and its students start from the best on dev."""
    name: str = "s64"              # the model is registered as `sweep_<name>`
    params: dict[str, Any] = field(default_factory=dict)


# the verdict's claims and the ratios the project aims for (issue "Models that learn", on FSDD);
# a recipe's distill.verdict_targets replaces some (ekd_compress/pipeline/verdict.py judges them)
VERDICT_TARGETS = {
    "ensemble vs best member": 0.85,
    "student vs ensemble": 0.8,
    "student vs baseline (seed mean)": 0.6,
    "student vs baseline (best seed)": 1.0,
    "student vs control": 0.9,
    "best essence k vs KD-all": 1.0,
}


@dataclass
class DistillConfig:
    temperature: float = 1.0
    lam: float = 0.5               # weight of hard-label CTC; 1 - lam goes to essence KD
    ks: list[Any] = field(default_factory=lambda: [1, 2, 4, "all"])
    mode: str = "renorm"           # renorm | residual | top_p
    top_p: float = 0.95
    blank_weight: float = 1.0      # KD weight of frames whose teacher top-1 is blank
    # [start, end] as fractions of a student's training steps: the KD weight (1 - lam) falls linearly to 0
    # between them, so the last part of training is CTC alone; None keeps it constant
    kd_fade: Optional[list[float]] = None
    cache: str = "disk"            # disk | fly
    # what the teacher sees under cache=fly: the clean features (as the disk cache does) or the
    # student's own SpecAugmented view of the batch ("consistent" teaching, Beyer et al. 2022)
    teacher_view: str = "clean"    # clean | augmented
    student_k: Any = "auto"        # auto = best dev WER among ks
    seeds: list[int] = field(default_factory=lambda: [0])   # baseline and chosen student
    control: bool = True           # student taught by the baseline alone
    # where the students of the student's own size start: from scratch (the paper), or from the guide's weights
    # (the best CTC-only baseline seed on dev), then trained with the multitask loss as before
    student_init: str = "scratch"  # scratch | guide
    fusion_weights: Optional[list[float]] = None
    fusion_tune: str = "none"      # none | dev: grid-search the member weights on dev WER
    fusion_grid: float = 0.1       # weight step of that search (each weight a multiple of it)
    # fusion_tune=select: forward selection with replacement on dev (Caruana et al. 2004)
    select_rounds: int = 12        # members added (with replacement) at most
    drop_ratio: float = 1.5        # members with dev WER above drop_ratio x the best member's are dropped
    guide: str = "best"            # best = the baseline seed with the lowest dev WER | first = seed 0
    # one more round of guidance: the members trained again from scratch, guided by the first round's
    # ensemble (or its best member on dev) instead of the baseline guide, and fused again; that second
    # ensemble is the students' teacher. none = one round
    reguide: str = "none"          # none | ensemble | best_member
    coincidence_threshold: float = 0.5   # token-matched spike coincidence, both directions
    refuse_below_threshold: bool = True
    # student-size sweep (compression curve): [] = none, the default recipe's behaviour
    student_sizes: list[StudentSize] = field(default_factory=list)
    sweep_seeds: int = 1           # seeds per size: the first N of `seeds` (a size is judged by its seed mean)
    compression_rtf_seconds: float = 20.0  # dev audio streamed per model to time its ONNX RTF (sweep only)
    # the verdict's target ratio per claim, over VERDICT_TARGETS ({} = those)
    verdict_targets: dict[str, float] = field(default_factory=dict)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None      # null: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "ekd-compress"


@dataclass
class Recipe:
    name: str = "demo"
    seed: int = 0
    out_dir: str = "exp/${name}"
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    baseline: ModelConfig = field(default_factory=ModelConfig)
    members: list[ModelConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    member_train: Optional[TrainConfig] = None   # null: same as train (--set member_train.x=... starts from train)
    student_train: Optional[TrainConfig] = None  # null: same as train (likewise)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


REGUIDE = ("none", "ensemble", "best_member")  # distill.reguide: what guides a second round of members
SECOND_ROUND = "_r2"  # with distill.reguide: the suffix of the second round's stages and member models
RESERVED_NAMES = {"baseline", "ensemble", "student", "kd_all", "control_baseline_teacher"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the fix."""


def extra_speed_factors(factors: list[float]) -> list[float]:
    """`data.speed_perturb` -> the factors that add a copy (1.0 dropped). RecipeError unless every
    factor is in (0.5, 2] and none repeats."""
    values = [float(f) for f in factors]
    for f in values:
        if not 0.5 < f <= 2.0:
            raise RecipeError(f"data.speed_perturb factor {f} is out of range; use factors in (0.5, 2], e.g. [0.9, 1.1]")
    if len(set(values)) != len(values):
        raise RecipeError(f"data.speed_perturb={list(factors)} repeats a factor; list each factor once")
    return [f for f in values if f != 1.0]


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
        from ekd_compress.recipe_files import find_recipe

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


def validate_recipe(r: Recipe) -> None:
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(r, section), key)
        if value not in choices:
            raise RecipeError(f"{dotted}={value!r} is not one of {list(choices)}")
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
    if not 0.0 < d.fusion_grid <= 0.5 or abs(round(1.0 / d.fusion_grid) * d.fusion_grid - 1.0) > 1e-6:
        raise RecipeError(f"distill.fusion_grid={d.fusion_grid}: a step that divides 1, e.g. 0.1, 0.125 or 0.25")
    if not 0.0 <= d.coincidence_threshold <= 1.0:
        raise RecipeError(f"distill.coincidence_threshold={d.coincidence_threshold}: a share, within [0, 1]")
    extra_speed_factors(r.data.speed_perturb)
    if r.data.corpus == "synthetic" and (r.data.synthetic.dev_hours <= 0 or r.data.synthetic.test_hours <= 0):
        raise RecipeError("data.synthetic.dev_hours and test_hours must be > 0 (dev selects checkpoints, test is scored)")
    if d.guide not in ("best", "first"):
        raise RecipeError(f"distill.guide={d.guide!r}: use 'best' (lowest dev WER among the baseline seeds) or 'first'")
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
    for section, t in _train_sections(r):
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
    _validate_metric(r)
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


def _validate_metric(r: Recipe) -> None:
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


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(r)


def save_recipe(r: Recipe, path: Path) -> Path:
    """Write the fully resolved recipe as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe_to_dict(r), sort_keys=False))
    return path


def config_hash(*parts: Any) -> str:
    """Stable 12-hex-digit hash of JSON-able parts (dataclasses allowed).

    Dataclass fields marked `metadata={"hash": False}` (settings that change how a stage
    runs, not what it makes) are left out, so adding one keeps every existing key.
    """
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.metadata.get("hash", True)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
