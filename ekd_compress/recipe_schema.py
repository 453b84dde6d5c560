"""The recipe's schema: the dataclasses a YAML recipe is merged onto, their constants, and the
pure helpers over them (`config_hash`, `recipe_to_dict`, the models' reserved names).

Loading (`load_recipe`) is in `ekd_compress.recipe`, the checks in `ekd_compress.recipe_checks`,
finding and showing recipe files in `ekd_compress.recipe_files`; all three build on this module,
and `ekd_compress.recipe` hands its names on, so `from ekd_compress.recipe import Recipe` works.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional


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
    # the dev sets whose utterances the fusion search (fusion_tune dev or select) scores together: "dev" and any
    # copy of dev among the scored test sets, e.g. FSDD's "dev_noisy10db"; never a test split
    fusion_on: list[str] = field(default_factory=lambda: ["dev"])
    # best = the baseline seed with the lowest dev WER | first = seed 0 | a baseline's name (e.g. baseline_s1):
    # that seed, whatever the others score, so seeds added later do not move the guide and retrain the teacher
    guide: str = "best"
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


def baseline_name(index: int, seed: int) -> str:
    """The model name of the baseline of `seed`, the `index`-th of distill.seeds: the first seed's
    baseline is "baseline", the others "baseline_s<seed>" (names a recipe may give distill.guide)."""
    return "baseline" if index == 0 else f"baseline_s{seed}"


def baseline_names(d: DistillConfig) -> list[str]:
    """The baseline seeds' model names, in the order of distill.seeds."""
    return [baseline_name(i, s) for i, s in enumerate(d.seeds)]


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


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(r)


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
