"""Independent trainings of one stage group, one after another or several at once.

The baseline seeds, the ensemble members and the students of one round depend on each other's
results only through what comes after them (the guide, the ensemble, the chosen k), so a group
can train together. With `train.parallel_jobs` N > 1 (member_train's for the members, student_train's
for the students) up to N jobs run at once, each in a spawned process with cores // N torch threads
(at least one; `threads` when set). On a 2-core CPU the small models here use a second thread poorly
(two threads 1.05-1.5x faster than one, RESULTS.md), while two one-thread processes run side by side
at nearly full speed.

The parent keeps the records: the work folders, the stage markers and EXP/models.json are written
by this process only, in the group's order (StageRunner.run_concurrently). A worker's lines reach the
parent's log through a queue; its MLflow child run opens under the distill's parent run
(Tracker.attach). Under torchrun, on a GPU, or with N = 1, the group trains one job after another in
this process, as before.

    stages = [TrainingStage(name, key, lambda: TrainJob(...)), ...]
    results = train_stages(ctx, runner, stages, recipe.train)   # name -> TrainResult
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ekd_compress.pipeline.context import Context, Features
from ekd_compress.pipeline.stages import StageRunner
from ekd_compress.recipe import Recipe, TrainConfig
from ekd_compress.train.job import TrainJob, TrainResult


@dataclass
class TrainingStage:
    """One training stage of a group: its marker name, its key, and how to make its job (called
    only when the stage has to run, so a done stage loads no teacher)."""

    name: str
    key: str
    make_job: Callable[[], TrainJob]
    work_dir: Path


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_threads(cfg: TrainConfig, jobs: int) -> int:
    """Torch threads of each of `jobs` parallel trainings: `cfg.threads` when set, else the cores
    shared out, at least 1 (3 jobs on 2 cores: 1 thread each, the cores time-shared)."""
    return cfg.threads if cfg.threads > 0 else max(1, cpu_cores() // jobs)


def train_stages(ctx: Context, runner: StageRunner, stages: list[TrainingStage], cfg: TrainConfig) -> dict[str, TrainResult]:
    """Run (or skip, when done) every stage of the group; results by stage name, in the group's order.

    `cfg.parallel_jobs` jobs at once in worker processes; one after another in this process when it
    is 1, under torchrun, or when at most one stage is left to run."""
    from ekd_compress.train.distributed import dist_info
    from ekd_compress.train.fit import resolve_device

    jobs = cfg.parallel_jobs
    if jobs > 1 and dist_info().enabled:
        ctx.log(f"parallel_jobs={cfg.parallel_jobs} is ignored under torchrun: the ranks share each job")
        jobs = 1
    if jobs > 1 and resolve_device(cfg)[0] == "gpu":  # accelerator auto found a GPU
        ctx.log(f"parallel_jobs={cfg.parallel_jobs} is ignored on a GPU: its jobs train one after another")
        jobs = 1
    if jobs > 1:  # (not under torchrun, where rank 0 alone reads the markers)
        jobs = min(jobs, sum(1 for s in stages if runner.done(s.name, s.key) is None))
    if jobs <= 1:
        return {s.name: TrainResult.from_json(runner.run(s.name, s.key, lambda s=s: ctx.train(s.make_job()).to_json(),
                                                         work_dir=s.work_dir, all_ranks=True))
                for s in stages}
    return _train_in_pool(ctx, runner, stages, jobs, job_threads(cfg, jobs))


def _train_in_pool(ctx: Context, runner: StageRunner, stages: list[TrainingStage], jobs: int,
                   threads: int) -> dict[str, TrainResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    by_name = {s.name: s for s in stages}
    made: dict[str, TrainJob] = {}
    handoff = ctx.tracker.handoff() if ctx.tracker is not None else None
    ctx.log(f"training up to {jobs} of {', '.join(by_name)} at once, {threads} thread(s) each "
            f"({cpu_cores()} cores); their lines interleave")

    def submit(name: str) -> Any:
        made[name] = by_name[name].make_job()
        return pool.submit(train_in_worker, ctx.recipe, str(ctx.exp_dir), ctx.features.to_json(), handoff,
                           made[name], threads)

    def record(name: str, result: dict) -> None:
        ctx.record(made[name], TrainResult.from_json(result))

    # spawn, not fork: a forked child would share this process's OpenMP pool and MLflow connections
    spawn = multiprocessing.get_context("spawn")
    lines = spawn.Queue()  # the workers' log lines, passed on to this process's log by a thread
    relay = threading.Thread(target=_relay, args=(lines, ctx.log), daemon=True)
    relay.start()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn, initializer=_start_worker,
                                 initargs=(lines,)) as pool:
            results = runner.run_concurrently([(s.name, s.key, s.work_dir) for s in stages], submit, record)
    finally:  # the pool has ended, so every worker line is in the queue before this
        lines.put(None)
        relay.join()
    return {name: TrainResult.from_json(result) for name, result in results.items()}


def _relay(lines: Any, log: Callable[[str], None]) -> None:
    """Pass the workers' lines to `log` until None arrives."""
    while (line := lines.get()) is not None:
        log(line)


_worker_lines: Any = None  # in a worker: the queue its log lines go to


def _start_worker(lines: Any) -> None:
    global _worker_lines
    _worker_lines = lines


def train_in_worker(recipe: Recipe, exp_dir: str, features: dict[str, Any], handoff: Optional[dict[str, str]],
                    job: TrainJob, threads: int) -> dict[str, Any]:
    """One training job in a worker process: the TrainResult's JSON (the parent records the model).

    Its lines go to the parent's log; no progress bar (several would fight over the terminal)."""
    os.environ["EKD_NO_PROGRESS_BAR"] = "1"
    import torch

    from ekd_compress.tracking import NullTracker
    from ekd_compress.train.job import train

    torch.set_num_threads(threads)
    ctx = Context(recipe, Path(exp_dir), log=_log_line)
    ctx.features = Features.from_json(features)
    if handoff is None:
        tracker: Any = NullTracker()
    else:
        from ekd_compress.tracking import Tracker

        tracker = Tracker.attach(handoff)
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, threads=threads))
    return train(job, ctx.train_data(), tracker, ctx.log).to_json()


def _log_line(message: str) -> None:
    """A worker's log: the parent's, through the queue (stdout when called outside a pool)."""
    if _worker_lines is None:
        print(message, flush=True)
    else:
        _worker_lines.put(message)
