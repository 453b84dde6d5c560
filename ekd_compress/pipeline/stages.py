"""Resumable stages keyed by the hash of what they depend on.

Each stage writes `EXP/stages/NAME.json` = {"key", "result", "seconds"} when it
completes. Re-running skips a stage whose key is unchanged; a changed key (its recipe
section or any upstream key changed) re-runs it and, through the keys, everything
downstream. A stage with a work folder keeps that folder between an interruption and
the re-run (so training resumes from `last.ckpt`) only while its key is unchanged.

A marker records the experiment folder it was written in. Read in another folder (an
experiment copied or moved), the paths in its result that lie in the old folder are rebased
onto the new one, so a resumed copy reads its own files (a path relative to the writer's working folder,
"a/models/...", counts as inside folder a). In a marker older than that record, a
path into another folder's experiment layout (E/models/..., E/features/...) is read from this
experiment when the same file exists here.

Under torchrun (see ekd_compress/train/distributed.py) rank 0 runs a stage and writes
its marker while the other ranks wait for its result; a stage run with `all_ranks=True`
(training, sharded essence caching) runs on every rank and rank 0's result is kept.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, as_completed
from pathlib import Path
from typing import Callable, Optional

from ekd_compress.atomic import write_json_atomic


class StageRunner:
    """Runs stages in order; each announces itself on one plain line with its place in `plan`
    (stage n/N), the time since the run started and an estimate of the time left:

        [run ] member_lstm  stage 6/14  elapsed 4:12  eta ~9:30  (key 9d46e5b67219)

    The estimate is the mean time of the training stages (work folder under models/) and of the
    other stages this run has finished, times how many of each are left; none before a stage of
    that kind has finished."""

    def __init__(self, exp_dir: Path, log: Callable[[str], None] = print, plan: Optional[list[str]] = None) -> None:
        self.exp_dir = Path(exp_dir)
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.plan: list[str] = list(plan or [])
        self.started = time.time()
        self._seconds: dict[bool, list[float]] = {True: [], False: []}  # training stage? -> durations
        self._moved_noted = False

    @staticmethod
    def is_training(name: str) -> bool:
        return name.startswith(("baseline", "member_", "essence_k", "kd_", "student", "control_", "sweep_"))

    def progress(self, name: str) -> str:
        """'stage n/N  elapsed m:ss  eta ~m:ss' for stage `name` (added to the plan if missing)."""
        if name not in self.plan:
            self.plan.append(name)
        n = self.plan.index(name) + 1
        left = self.plan[n - 1:]
        eta = 0.0
        for training in (True, False):
            count = sum(1 for s in left if self.is_training(s) == training)
            if count and not self._seconds[training]:
                eta = None
                break
            if count:
                eta += count * sum(self._seconds[training]) / len(self._seconds[training])
        eta_text = "eta ?" if eta is None else f"eta ~{_clock(eta)}"
        return f"stage {n}/{len(self.plan)}  elapsed {_clock(time.time() - self.started)}  {eta_text}"

    def marker(self, name: str) -> Path:
        return self.exp_dir / "stages" / f"{name}.json"

    def done(self, name: str, key: str) -> Optional[dict]:
        """Stage `name`'s saved result when its marker has this key, else None. Paths in it are
        rebased onto this experiment when the marker was written in another folder."""
        m = self.marker(name)
        if not m.exists():
            return None
        data = json.loads(m.read_text())
        if data.get("key") != key:
            return None
        here = str(self.exp_dir.resolve())
        written_in = data.get("exp_dir")
        if written_in is None:  # written before markers recorded their folder
            result = _rebase_legacy(data["result"], Path(here))
            moved = result != data["result"]
            elsewhere = [p for p in _strings(result) if _in_other_experiment(p, here)]
            if elsewhere:
                self.log(f"[warn] {name}: its marker names {len(elsewhere)} file(s) of another experiment that "
                         f"this one lacks, e.g. {elsewhere[0]}; they are read from there (--fresh re-makes them)")
        else:  # rebased even when written here: a relative path was relative to the writer's working folder
            result = _rebase(data["result"], written_in, here)
            moved = os.path.realpath(written_in) != here
        if moved and not self._moved_noted:
            self.log(f"[note] this experiment's stage markers were written in another folder "
                     f"({written_in or 'an older version did not record which'}): their paths are read from {here}")
            self._moved_noted = True
        return result

    def run(self, name: str, key: str, fn: Callable[[], dict], work_dir: Optional[Path] = None,
            all_ranks: bool = False) -> dict:
        """Run `fn` unless stage `name` already completed with this key; returns its result.

        In a torchrun job `fn` runs on rank 0 only, or on every rank when `all_ranks`.
        """
        from ekd_compress.train.distributed import on_main

        # rank 0 decides for all: a slow rank reading the marker rank 0 has just written would
        # skip a stage the others are still running together
        cached = on_main(lambda: self.done(name, key), f"checking stage {name}")
        if cached is not None:
            self._skip(name, key)
            return cached
        if work_dir is not None:
            on_main(lambda: self._prepare_work_dir(Path(work_dir), key), f"stage {name}")
        self.log(f"[run ] {name}  {self.progress(name)}  (key {key})")
        start = time.time()

        def finish(result: dict) -> dict:
            write_json_atomic(self.marker(name), {"key": key, "result": result, "seconds": time.time() - start,
                                                  "exp_dir": str(self.exp_dir.resolve())})
            return result

        if all_ranks:
            own = fn()
            result = on_main(lambda: finish(own), f"stage {name}")
        else:
            result = on_main(lambda: finish(fn()), f"stage {name}")
        self.ran.append(name)
        self._seconds[self.is_training(name)].append(time.time() - start)
        return result

    def run_concurrently(self, stages: list[tuple[str, str, Optional[Path]]], submit: Callable[[str], Future],
                         on_result: Callable[[str, dict], None] = lambda name, result: None) -> dict[str, dict]:
        """`run` for stages that do not depend on each other, (name, key, work_dir) each, their work
        started together: results by name.

        A stage done with its key is skipped; `submit(name)` starts each other one and returns a Future of
        its result (a stage whose `submit` raises has failed). Each ends with a `[done]` (or `[fail]`) line
        as it finishes; markers are written and `on_result(name, result)` called in the order of `stages`
        once all have ended, so the records of a run do not depend on which job finished first (a job that
        finished before an interruption finds its model.pt on resume). The first failed stage (in that
        order) is raised after the others have ended and been recorded.
        """
        results: dict[str, dict] = {}
        started: dict[str, tuple[str, Future]] = {}
        for name, key, work_dir in stages:
            cached = self.done(name, key)
            if cached is not None:
                self._skip(name, key)
                results[name] = cached
                continue
            if work_dir is not None:
                self._prepare_work_dir(Path(work_dir), key)
            self.log(f"[run ] {name}  {self.progress(name)}  (key {key}; started with the others of its group)")
            try:
                future = submit(name)
            except Exception as error:  # e.g. its job could not be made: a failed stage like the others
                future = Future()
                future.set_exception(error)
            started[name] = (key, future)
        start = time.time()
        seconds: dict[str, float] = {}
        errors: dict[str, BaseException] = {}
        names = {future: name for name, (_, future) in started.items()}
        for future in as_completed(names):
            name = names[future]
            seconds[name] = time.time() - start
            error = future.exception()
            if error is None:
                results[name] = future.result()
                self.log(f"[done] {name}  after {_clock(seconds[name])}")
            else:
                errors[name] = error
                self.log(f"[fail] {name}  after {_clock(seconds[name])}: {type(error).__name__}: {error}")
        wall = time.time() - start
        for name, (key, _) in started.items():
            if name not in results:
                continue
            on_result(name, results[name])
            write_json_atomic(self.marker(name), {"key": key, "result": results[name], "seconds": seconds[name],
                                                  "exp_dir": str(self.exp_dir.resolve())})
            self.ran.append(name)
            # the estimate of the time left counts the group's wall time shared out over its stages
            self._seconds[self.is_training(name)].append(wall / len(started))
        if errors:  # the first failure in the group's order, whichever ended first
            raise next(errors[name] for name in started if name in errors)
        return {name: results[name] for name, _, _ in stages}

    def _skip(self, name: str, key: str) -> None:
        if name not in self.plan:
            self.plan.append(name)
        self.log(f"[skip] {name}  stage {self.plan.index(name) + 1}/{len(self.plan)}  (done, key {key})")
        self.skipped.append(name)

    @staticmethod
    def _prepare_work_dir(work_dir: Path, key: str) -> None:
        key_file = work_dir / ".stage_key"
        if work_dir.exists() and (not key_file.exists() or key_file.read_text() != key):
            shutil.rmtree(work_dir)  # stale outputs of a different configuration
        work_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _strings(value: object) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _in_other_experiment(path: str, here: str) -> bool:
    """Whether `path` lies in an experiment folder (one with stages/) other than `here`."""
    from ekd_compress.experiment import LAYOUT

    if not os.path.isabs(path) or _inside(path, here):
        return False
    parts = Path(path).parts
    return any(parts[i] in LAYOUT and Path(*parts[:i], "stages").is_dir() for i in range(1, len(parts)))


def _map_strings(value: object, fn: Callable[[str], str]) -> object:
    """A JSON value with `fn` applied to every string in it (dict values, list items)."""
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def _rebase(value: object, old: str, new: str) -> object:
    """`value` with every string path inside folder `old` moved to the same place under `new`.

    A relative path counts as inside `old` when its leading folders are the last folders of `old`
    followed by an experiment entry (`distill --out runs/a` from /work wrote "runs/a/models/..." for
    /work/runs/a): it depended on the writer's working folder, and is made absolute under `new`."""
    from ekd_compress.experiment import LAYOUT

    old_parts = Path(old).parts

    def move(s: str) -> str:
        if _inside(s, old):
            return new + s[len(old):]
        if not os.path.isabs(s):
            parts = Path(s).parts
            for i in range(1, min(len(parts), len(old_parts))):
                if parts[i] in LAYOUT and parts[:i] == old_parts[-i:]:
                    return str(Path(new, *parts[i:]))
        return s

    return _map_strings(value, move)


def _rebase_legacy(value: object, here: Path) -> object:
    """`value` with every path string moved by `relocate_legacy_path`."""
    from ekd_compress.experiment import relocate_legacy_path

    return _map_strings(value, lambda s: relocate_legacy_path(s, here))


def _clock(seconds: float) -> str:
    """h:mm:ss above an hour, else m:ss."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
