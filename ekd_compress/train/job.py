"""One training job: what to train, on which targets, with which losses -> a trained model.

`TrainJob` says what a model is (name, kind, architecture, seed, training settings), what it
learns from (the transcripts, plus a guide alignment or essence targets) and how the losses
are weighed (`losses`, names from ekd_compress.losses.compose). `train` runs it, restarting
a run that the convergence watchdog stops with the next seed (train/watchdog.py):

    job = TrainJob(name="essence_k4", kind="student", arch="tdnn", params={...}, seed=0, train=cfg,
                   out_dir=exp / "models" / "essence_k4", losses={"ctc": 0.5, "essence_kd": 0.5},
                   essence=EssenceTargets(k=4, temperature=2.0, cache_dir=exp / "essence/teacher/k4", ...))
    result = train(job, data, tracker, log)

The distill pipeline (pipeline/distill.py, pipeline/students.py) makes the jobs and records
the trained models in the experiment's registry.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np

from ekd_compress.recipe import SpecAugmentConfig, TrainConfig

if TYPE_CHECKING:
    import torch

    from ekd_compress.contract.features import FeatureSpec
    from ekd_compress.contract.tokens import TokenTable

Log = Callable[[str], None]


@dataclass
class EssenceTargets:
    """Where a student's essence targets come from (the "essence_kd" loss) and how they are made:
    the top-`k` entries of the teacher's softmax(z / temperature) (`mode` renorm/rest/top_p, see
    ekd_compress.ensemble.essence.select_essence), read from the cache in `cache_dir` (checked
    against `cache_keys` when opened) or, without a cache, computed from a frozen `teacher` on the
    batch's clean features (`teacher_view` "clean") or on the student's SpecAugmented ones ("augmented").
    `fade` (start, end): the KD weight falls linearly to 0 between these fractions of the training steps."""

    k: Optional[int]
    temperature: float
    mode: str = "renorm"
    top_p: float = 0.95
    blank_weight: float = 1.0
    cache_dir: Optional[Path] = None
    cache_keys: dict[str, Any] = field(default_factory=dict)
    teacher: Optional["torch.nn.Module"] = None
    teacher_view: str = "clean"
    fade: Optional[tuple[float, float]] = None  # the KD weight's fade (distill.kd_fade), None: constant


@dataclass
class TrainJob:
    """One model to train. `losses` weighs registered losses by name: {"ctc": 1.0} (baseline),
    {"ctc": 1.0, "guide_ce": beta} (member, needs `align_path`), {"ctc": lam, "essence_kd": 1 - lam}
    (student, needs `essence`)."""

    name: str                    # models.json name, e.g. "baseline", "lstm", "essence_k4"
    kind: str                    # models.json kind: baseline, member, kd, student
    arch: str                    # a registered architecture (ekd_compress.models)
    params: dict[str, Any]       # its constructor arguments
    seed: int                    # the first attempt's seed (restarts use train.watchdog.restart_seed)
    train: TrainConfig
    out_dir: Path                # EXP/models/NAME: checkpoints, model.pt, fit.json, restarts.json
    losses: dict[str, float] = field(default_factory=lambda: {"ctc": 1.0})
    align_path: Optional[Path] = None  # the guide's frame alignment (npz, utt id -> (T',) int16)
    essence: Optional[EssenceTargets] = None
    init_from: Optional[Path] = None   # a model.pt of the same architecture and size to start from (else scratch)

    def tracking_params(self, seed: int) -> dict[str, Any]:
        """The parameters of the job's MLflow child run (the names runs have always carried)."""
        mode = "essence" if "essence_kd" in self.losses else "guided" if "guide_ce" in self.losses else "ctc"
        return {"name": self.name, "kind": self.kind, "arch": self.arch, "mode": mode, "seed": seed,
                "beta": self.losses.get("guide_ce", 0.0), "k": self.essence.k if self.essence else None,
                "params": self.params, "train": dataclasses.asdict(self.train),
                "init_from": str(self.init_from) if self.init_from else "scratch"}


@dataclass
class TrainData:
    """What every job of one experiment trains on: the token table, the feature settings, the
    train/dev cuts (eager or lazy CutSets), the global CMVN statistics and the augmentation."""

    tokens: "TokenTable"
    spec: "FeatureSpec"
    train_cuts: Any
    dev_cuts: Any
    cmvn: Path                   # npz with mean, std (F,) of the training features
    specaugment: SpecAugmentConfig
    metric: str = "wer"          # the dev error rate: wer, cer or per
    loaded: dict[str, Any] = field(default_factory=dict)  # alignments read once per run, by path


@dataclass
class TrainResult:
    """A trained model: model.pt path, best dev score (the `train.select_on` measure) and epoch,
    training seconds, parameter count, the seed that converged, and the watchdog's restarts."""

    model: str
    best_dev: float
    best_epoch: int
    train_seconds: float
    params: int
    seed: Optional[int] = None   # None only in stage results written before seeds were recorded
    restarts: list[dict[str, Any]] = field(default_factory=list)
    # the last allowed seed failed a watchdog check too: kept (no restart was left) and reported
    unconverged: Optional[dict[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def train(job: TrainJob, data: TrainData, tracker: Any, log: Log = print) -> TrainResult:
    """Train one model; a run the convergence watchdog stops is restarted with the next seed.

    Every restart is kept in `OUT/restarts.json` (so a resumed job knows it), on its MLflow
    child run (FAILED, tagged) and in the result (the pipeline adds it to models.json).
    """
    from ekd_compress.atomic import write_json_atomic
    from ekd_compress.train.distributed import barrier, dist_info
    from ekd_compress.train.watchdog import StalledRun, restart_seed

    cfg = job.train
    restarts_file = job.out_dir / "restarts.json"
    restarts: list[dict[str, Any]] = json.loads(restarts_file.read_text()) if restarts_file.exists() else []
    while True:
        attempt = len(restarts)
        run_seed = restart_seed(job.seed, attempt)
        watchdog = "off" if not cfg.watchdog else "stop" if attempt < cfg.max_restarts else "report"
        try:
            res = _fit_once(job, data, run_seed, watchdog, tracker, log)
            break
        except StalledRun as stalled:
            restarts.append(stalled.attempt.to_dict())
            log(f"WATCHDOG {job.name}: {stalled}; restarting with seed {restart_seed(job.seed, attempt + 1)} "
                f"(restart {attempt + 1} of at most {cfg.max_restarts})")
            if dist_info().is_main:  # every rank stalls alike (dev metrics are gathered); rank 0 cleans up
                for stale in ("checkpoints", "model.pt", "fit.json"):  # the next attempt starts from scratch
                    path = job.out_dir / stale
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                write_json_atomic(restarts_file, restarts)
            barrier()
    failed = res["unconverged"]
    if failed:
        log(f"WATCHDOG {job.name}: seed {run_seed} also failed the watchdog ({failed['reason']}) and no restart is left "
            f"(train.max_restarts={cfg.max_restarts}): kept, and reported as not converged")
    elif restarts:
        log(f"{job.name}: converged with seed {run_seed} after {len(restarts)} restart(s)")
    return TrainResult(**res, seed=run_seed, restarts=restarts)


@dataclass
class Training:
    """What one training run of a job steps through: the model inside its Lightning module (the
    job's losses and LR schedule) and the train and dev loaders."""
    module: Any                  # train.module.AsrModule; module.model is the network
    train_loader: Any
    dev_loader: Any


def prepare_training(job: TrainJob, data: TrainData, seed: int) -> Training:
    """Build `job`'s model (seeded, global CMVN, output-prior start; or the weights of `job.init_from`)
    and its data loaders, as every run of `train` does; the LR range test (train/lr_range.py) steps
    through the same."""
    import torch

    from ekd_compress.data.noise_pool import NoiseMixer
    from ekd_compress.train.data import AsrDataset, make_loader
    from ekd_compress.train.distributed import dist_info
    from ekd_compress.train.fit import build
    from ekd_compress.train.module import AsrModule

    cfg = job.train
    torch.manual_seed(seed)
    model = build(job.arch, data.spec.num_mel_bins, len(data.tokens), job.params)
    if job.init_from is not None:  # its weights replace the whole start, CMVN statistics and output bias included
        load_initial_weights(model, job.init_from)
    else:
        with np.load(data.cmvn) as stats:
            model.set_normalization(torch.from_numpy(stats["mean"]), torch.from_numpy(stats["std"]))
        if cfg.output_prior_bias:
            prior = label_prior(data.train_cuts, data.tokens, data.spec.frame_shift_ms, model.subsampling)
            model.set_output_prior(torch.from_numpy(prior))
    alignments = load_alignments(job.align_path, data.loaded) if "guide_ce" in job.losses else None
    essence = None
    if job.essence is not None and job.essence.cache_dir is not None:
        from ekd_compress.ensemble.cache import EssenceCache

        essence = EssenceCache.open(job.essence.cache_dir, **job.essence.cache_keys).read
    subsampling = model.subsampling
    # cuts marked for on-the-fly noise (data.fsdd.train_noise_fly) get fresh noise every epoch
    train_ds = AsrDataset(data.tokens, data.spec, subsampling, alignments=alignments, essence=essence,
                          noise=NoiseMixer(seed))
    dev_ds = AsrDataset(data.tokens, data.spec, subsampling)
    ranks = {"world_size": dist_info().world_size, "rank": dist_info().rank}  # each rank reads its share
    train_loader = make_loader(data.train_cuts, train_ds, cfg.max_duration, shuffle=True, seed=seed,
                               num_workers=cfg.num_workers, sortagrad=cfg.sortagrad, **ranks)
    dev_loader = make_loader(data.dev_cuts, dev_ds, cfg.max_duration, shuffle=False, **ranks)
    steps = max(1, sum(1 for _ in train_loader.sampler))  # batches per epoch, for the LR schedule
    module = AsrModule(model, data.tokens, cfg, data.specaugment, losses=job.losses, essence=job.essence,
                       steps_per_epoch=steps, metric=data.metric)
    return Training(module, train_loader, dev_loader)


def load_initial_weights(model: "torch.nn.Module", path: Path) -> None:
    """Overwrite `model`'s weights (CMVN statistics included) with those of the model file `path`,
    which must have been built with the same architecture, sizes and vocabulary."""
    from ekd_compress.train.fit import load_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from={path}: no such model file; train that model first")
    source, _ = load_model(path)
    ours, theirs = model.build_info, source.build_info
    if ours != theirs:
        raise ValueError(f"init_from={path}: that model was built as {theirs}, this one as {ours}; a model can only "
                         "start from the weights of one with the same architecture, parameters and vocabulary")
    model.load_state_dict(source.state_dict())


def _fit_once(job: TrainJob, data: TrainData, seed: int, watchdog: str, tracker: Any, log: Log) -> dict[str, Any]:
    """One training run of `train`; `watchdog` is fit_model's ("off", "stop" or "report")."""
    from ekd_compress.models import count_parameters
    from ekd_compress.train.fit import fit_model
    from ekd_compress.train.watchdog import StalledRun

    cfg = job.train
    prepared = prepare_training(job, data, seed)
    with tracker.child(job.name, job.tracking_params(seed)) as run:
        logger = tracker.lightning_logger(run.run_id)
        try:
            res = fit_model(prepared.module, prepared.train_loader, prepared.dev_loader, job.out_dir, cfg, seed,
                            logger=logger,
                            extra_meta={"name": job.name, "kind": job.kind, "seed": seed, "mlflow_run_id": run.run_id},
                            log=log, watchdog=watchdog)
        except StalledRun as stalled:  # the run ends FAILED, tagged with the reason
            run.set_tags({"watchdog": "stalled", "watchdog_reason": stalled.attempt.reason})
            raise
        if res.stalled:
            run.set_tags({"watchdog": "not_converged", "watchdog_reason": res.stalled["reason"]})
        run.log_metrics({"best_dev_score": res.best_score, "train_seconds": res.train_seconds}, step=0)
    n_params = count_parameters(prepared.module.model)
    log(f"{job.name}: best dev {cfg.select_on} {res.best_score:.2f} at epoch {res.best_epoch}, "
        f"{n_params} params, {res.train_seconds:.0f} s")
    return {"model": str(res.model_path), "best_dev": res.best_score, "best_epoch": res.best_epoch,
            "train_seconds": res.train_seconds, "params": n_params, "unconverged": res.stalled}


def label_prior(cuts: Iterable[Any], tokens: "TokenTable", frame_shift_ms: float, subsampling: int) -> np.ndarray:
    """(V,) share of training output frames each token fills under CTC: every transcript token
    one frame, blank (id 0) the rest. The start of the output bias (`train.output_prior_bias`)."""
    counts = np.zeros(len(tokens))
    frames = 0
    for cut in cuts:
        ids = tokens.encode(" ".join(s.text for s in cut.supervisions if s.text))
        np.add.at(counts, ids, 1)
        frames += int(round(cut.duration * 1000 / frame_shift_ms)) // subsampling
    counts[0] = max(frames - counts[1:].sum(), 1)
    return (counts / counts.sum()).astype(np.float32)


def load_alignments(path: Optional[Path], loaded: dict[str, Any]) -> dict[str, np.ndarray]:
    """utt id -> (T',) int16 guide frame labels (-1: not aligned), read once into `loaded`."""
    if path is None:
        raise ValueError("the guide_ce loss needs the guide's alignment (TrainJob.align_path); run the 'align' stage")
    key = f"alignments:{path}"
    if key not in loaded:
        with np.load(path) as z:
            loaded[key] = {k: z[k] for k in z.files}
    return loaded[key]
