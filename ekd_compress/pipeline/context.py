"""What the `distill` stages hand each other: the run's `Context` and each stage's typed result.

A stage's result is saved in its marker EXP/stages/NAME.json (`to_json`) and read back when a
resumed run skips the stage (`from_json`); the JSON is the same as the dicts earlier versions
wrote, so their experiments resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ekd_compress.recipe import Recipe

if TYPE_CHECKING:
    from ekd_compress.contract.features import FeatureSpec
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.job import TrainData, TrainJob, TrainResult


class StageResult:
    """A dataclass saved as a stage's JSON result (keys = field names)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class PreparedData(StageResult):
    """Stage `data`: the CutSet manifests of each split, the token table, and what was kept."""

    train: str
    dev: str
    tests: dict[str, str]                # test set name -> manifest
    tokens: str = ""                     # EXP/tokens.txt
    vocab_size: int = 0
    reports: dict[str, Any] = field(default_factory=dict)
    utterances: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    oov: dict[str, Any] = field(default_factory=dict)  # out-of-lexicon words dropped (phone recipes)


@dataclass
class Features(StageResult):
    """Stage `features`: one manifest per split (train, dev, test_NAME) with its features, the
    feature settings' hash and the global CMVN statistics (npz)."""

    splits: dict[str, str]
    feature_hash: str
    cmvn: str

    def to_json(self) -> dict[str, Any]:
        return {**self.splits, "feature_hash": self.feature_hash, "cmvn": self.cmvn}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Features":
        return cls({k: v for k, v in d.items() if k not in ("feature_hash", "cmvn")}, d["feature_hash"], d["cmvn"])

    def scored_sets(self) -> dict[str, str]:
        """Scored sets: dev plus every test set (name -> split)."""
        return {"dev": "dev", **{k[len("test_"):]: k for k in self.splits if k.startswith("test_")}}


@dataclass
class Alignment(StageResult):
    """Stage `align`: the guide's CTC forced alignment of the training set (npz: utt id -> (T',))."""

    path: str
    utterances: int
    unaligned: int


@dataclass
class EnsembleResult(StageResult):
    """Stage `ensemble`: EXP/models/ensemble.json and, when the weights were searched on dev, how."""

    path: str
    tuning: dict[str, Any] = field(default_factory=dict)  # tuned_on, method, weights, dev_wer, grid, ...

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, **self.tuning}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EnsembleResult":
        return cls(d["path"], {k: v for k, v in d.items() if k != "path"})


@dataclass
class EssenceResult(StageResult):
    """Stages `essence` / `essence_control`: one target cache per k and the teacher's statistics."""

    dirs: dict[str, str]                 # str(k) -> cache folder
    bytes_per_frame: dict[str, float]
    topk_mass: list[float]               # mean probability mass of the top-1..V entries
    blank_top1_share: float              # share of frames whose top-1 is blank
    frames: int
    parts: int = 1                       # ranks that wrote the caches

    SUMMARY = ("bytes_per_frame", "topk_mass", "blank_top1_share", "frames")


@dataclass
class Context:
    """One `distill` run: the recipe, the experiment folder, the log and tracker, every stage's
    key (name -> key; the evaluate stage's key hashes them all) and the results so far."""

    recipe: Recipe
    exp_dir: Path
    log: Callable[[str], None] = print
    tracker: Any = None
    keys: dict[str, str] = field(default_factory=dict)
    data: Optional[PreparedData] = None
    features: Optional[Features] = None
    guide: Optional[str] = None          # the best baseline seed on dev
    alignment: Optional[Alignment] = None
    coincidence: dict[str, dict[str, float]] = field(default_factory=dict)
    ensemble: Optional[EnsembleResult] = None   # the students' teacher (the second round's with distill.reguide)
    first_round: Optional[EnsembleResult] = None  # with distill.reguide: the first round's ensemble
    essence: Optional[EssenceResult] = None  # None when the targets are computed on the fly
    chosen_k: Optional[str] = None
    _cache: dict[str, Any] = field(default_factory=dict)

    # lazily loaded shared objects -------------------------------------------------
    @property
    def spec(self) -> "FeatureSpec":
        from ekd_compress.features.fbank import feature_spec

        return feature_spec(self.recipe.features, self.recipe.data.sample_rate)

    @property
    def tokens(self) -> "TokenTable":
        from ekd_compress.experiment import read_tokens

        if "tokens" not in self._cache:
            self._cache["tokens"] = read_tokens(self.exp_dir)
        return self._cache["tokens"]

    def cuts(self, split: str) -> Any:
        """One split's CutSet, read eagerly or lazily (streamed from disk) as `data.lazy` says.

        auto: lazily when the manifest holds more than `data.lazy_min_cuts` cuts (counted
        by reading at most that many lines). Lazy sets keep memory flat in the corpus size.
        """
        import gzip
        from itertools import islice

        from ekd_compress.experiment import load_cuts

        if split not in self._cache:
            path = self.features.splits[split]
            lazy, limit = self.recipe.data.lazy, self.recipe.data.lazy_min_cuts
            if lazy == "auto":
                with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
                    lazy = sum(1 for _ in islice(f, limit + 1)) > limit
            self._cache[split] = load_cuts(Path(path), lazy=bool(lazy), exp_dir=self.exp_dir)
        return self._cache[split]

    def model_path(self, name: str) -> Path:
        from ekd_compress.experiment import model_path

        return model_path(self.exp_dir, name)

    # training ---------------------------------------------------------------------
    def train_data(self) -> "TrainData":
        from ekd_compress.train.job import TrainData

        return TrainData(self.tokens, self.spec, self.cuts("train"), self.cuts("dev"), Path(self.features.cmvn),
                         self.recipe.features.specaugment, self.recipe.data.metric, loaded=self._cache)

    def train(self, job: "TrainJob") -> "TrainResult":
        """Run a training job and record the model in EXP/models.json (rank 0)."""
        from ekd_compress.train.distributed import dist_info
        from ekd_compress.train.job import train

        res = train(job, self.train_data(), self.tracker, self.log)
        if dist_info().is_main:
            self.record(job, res)
        return res

    def record(self, job: "TrainJob", res: "TrainResult") -> None:
        """Add the trained model to EXP/models.json (with the watchdog's restarts and a failed last
        seed, if any)."""
        from ekd_compress.experiment import record_model

        record_model(self.exp_dir, job.name, job.kind, Path(res.model), seed=res.seed,
                     **({"restarts": res.restarts} if res.restarts else {}),
                     **({"unconverged": res.unconverged} if res.unconverged else {}))
