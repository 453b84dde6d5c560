"""MLflow experiment tracking: one parent run per pipeline invocation, a child run per stage.

    uri = resolve_tracking_uri(base_dir=workdir)      # MLFLOW_TRACKING_URI wins
    check_tracking_uri(uri)                           # fail now, not after training
    tracker = Tracker(uri, "ekd-swbd")
    parent = tracker.start_parent("run-1", params=config_dict, tags={"recipe": "swbd"})
    with tracker.child("teacher-0", params={"arch": "conformer"}) as run:
        trainer = Trainer(logger=tracker.lightning_logger(run.run_id))
        ...
        run.log_metrics({"wer": 12.3}, step=0)
    tracker.end()

All calls go through `mlflow.MlflowClient` with explicit run ids, never mlflow's global
"active run", so several trackers (or a Lightning logger) can coexist. The `log_*`
methods of `Tracker` write to the innermost open run (the child inside `child()`).

Params: nested dicts are flattened to dotted keys (`{"model": {"dim": 256}}` ->
`model.dim`), values stringified and cut to MLflow's 6000-character limit. MLflow keeps
a param's first value forever; resuming a run with changed params raises `TrackingError`.

`NullTracker` (in `null.py`) has the same API and records nothing, for `--no-mlflow`;
`resolve_tracking_uri` / `check_tracking_uri` live in `uri.py`.

mlflow is imported only inside functions: it takes ~2 s to import, and a fresh sqlite
store spends a few more seconds creating its tables on first use.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .uri import TrackingError, check_tracking_uri, resolve_tracking_uri

__all__ = ["Run", "Tracker", "TrackingError", "check_tracking_uri", "flatten_params", "resolve_tracking_uri"]

if TYPE_CHECKING:  # pragma: no cover
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

MAX_PARAM_VAL_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000
PARENT_TAG = "mlflow.parentRunId"


# --------------------------------------------------------------------------- params
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested mapping -> {dotted.key: string value}, values cut to MLflow's length limit.

    Lists, tuples and other values are stringified with `str()`; None becomes "None". A character
    MLflow refuses in a key (anything but letters, digits, `_-. :/`) becomes "_", so a recipe key
    such as "student vs baseline (seed mean)" logs as "student vs baseline _seed mean_".
    """
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = _KEY_UNSAFE.sub("_", f"{prefix}{sep}{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            out.update(flatten_params(value, name, sep))
            continue
        if len(name) > MAX_KEY_LENGTH:
            raise TrackingError(f"param key {name[:60]!r}... is {len(name)} characters; MLflow allows {MAX_KEY_LENGTH}, shorten the config key")
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
        out[name] = text
    return out


def _to_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} has value {value!r} ({type(value).__name__}); log numbers only") from None


# ----------------------------------------------------------------------------- runs
class Run:
    """One MLflow run, addressed by id; what `Tracker.child()` yields."""

    def __init__(self, client: "MlflowClient", run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.previous_status: str | None = None  # a resumed run's status before it was reopened

    def log_params(self, params: Mapping[str, Any] | None) -> None:
        """Log (nested) params; values already logged with the same value are skipped."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        if not flat:
            return
        existing = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:
            shown = ", ".join(f"{k}: {existing[k]!r} -> {flat[k]!r}" for k in changed[:5])
            raise TrackingError(
                f"run {self.run_id} already has different values for params {shown}; MLflow params are immutable,"
                " so start a new run (no run id) or restore the original config"
            )
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (floats, ints, 0-d tensors) at `step` (default 0)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, _to_float(k, v), ts, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any] | None) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one local file into the run's artifacts (under `artifact_path` if given)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact {path} is not a file; use log_artifacts for a directory")
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local directory's contents into the run's artifacts."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"artifact directory {directory} does not exist; use log_artifact for a file")
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status)


class Tracker:
    """A parent run with nested child runs in one MLflow experiment.

    Args:
        uri: tracking URI (see `resolve_tracking_uri`); checked with `check_tracking_uri`.
        experiment_name: created if missing; for a sqlite store its artifacts go to
            `mlartifacts/` beside the database file.
        check: run `check_tracking_uri` first (default True).
    """

    def __init__(self, uri: str, experiment_name: str, check: bool = True) -> None:
        if check:
            check_tracking_uri(uri)
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment()
        self._stack: list[Run] = []
        self._borrowed: Run | None = None  # another process's parent run (attach): never ended here

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {self.experiment_name!r} at {self.uri} is deleted; restore it "
                        f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or choose another name"
                    )
                return exp.experiment_id
            location = None
            if self.uri.startswith("sqlite:///") and self.uri[len("sqlite:///"):] not in ("", ":memory:"):
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except MlflowException as e:
            raise TrackingError(f"cannot open experiment {self.experiment_name!r} at {self.uri}: {e.message}") from None

    # ---------------------------------------------------------------- run control
    @property
    def parent(self) -> Run | None:
        return self._stack[0] if self._stack else None

    @property
    def active(self) -> Run:
        """The innermost open run (a child inside `child()`, else the parent)."""
        if not self._stack:
            raise TrackingError("no MLflow run is open; call tracker.start_parent(...) first")
        return self._stack[-1]

    def _open(self, run_id: str | None, run_name: str, tags: dict[str, str]) -> Run:
        from mlflow.exceptions import MlflowException

        try:
            if run_id:
                run = self.client.get_run(run_id)
                if run.info.experiment_id != self.experiment_id:
                    raise TrackingError(
                        f"run {run_id} belongs to experiment {run.info.experiment_id}, not {self.experiment_name!r}"
                        f" ({self.experiment_id}); resume it under its own experiment name"
                    )
                self.client.update_run(run_id, status="RUNNING")
                handle = Run(self.client, run_id)
                handle.previous_status = run.info.status
                handle.set_tags(tags)
                return handle
            created = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            return Run(self.client, created.info.run_id)
        except MlflowException as e:
            what = f"resume run {run_id}" if run_id else f"create run {run_name!r}"
            raise TrackingError(f"cannot {what} at {self.uri}: {e.message}; check the run id or start a new run") from None

    def start_parent(
        self,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Open the parent run (or resume `run_id`) and log params/tags; returns its run id."""
        if self._stack:
            raise TrackingError(f"parent run {self._stack[0].run_id} is already open; call end() before starting another")
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if not run_id:
            try:  # user, source, git commit -- as mlflow.start_run would add
                from mlflow.tracking.context.registry import resolve_tags

                all_tags = resolve_tags(all_tags)
            except Exception:  # noqa: BLE001 - context tags are a nicety
                pass
        run = self._open(run_id, run_name, all_tags)
        try:
            run.log_params(params)
        except BaseException:  # e.g. changed params: leave the run as it was, and no run open here
            if run.previous_status is not None:
                self.client.update_run(run.run_id, status=run.previous_status)
            else:
                run.end("FAILED")
            raise
        self._stack.append(run)
        return run.run_id

    def handoff(self) -> dict[str, str] | None:
        """What another process needs to open child runs under this tracker's parent run (see `attach`);
        None when no parent run is open."""
        if not self._stack:
            return None
        return {"uri": self.uri, "experiment": self.experiment_name, "run_id": self._stack[0].run_id}

    @classmethod
    def attach(cls, handoff: dict[str, str]) -> "Tracker":
        """A tracker in another process (a parallel training job) whose parent is the run of `handoff`
        (from `handoff()`), taken as it is: its status is not changed, and `end()` here does not end it."""
        tracker = cls(handoff["uri"], handoff["experiment"], check=False)
        tracker._borrowed = Run(tracker.client, handoff["run_id"])
        tracker._stack.append(tracker._borrowed)
        return tracker

    @contextmanager
    def child(
        self, run_name: str, params: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> Iterator[Run]:
        """Open a child run of the innermost open run (or resume `run_id`) for the block.

        The run ends FINISHED, or FAILED if the block raises.
        """
        parent = self.active
        run = self._open(run_id, run_name, {PARENT_TAG: parent.run_id})
        self._stack.append(run)
        try:
            run.log_params(params)
            yield run
        except BaseException:
            self._stack.remove(run)
            run.end("FAILED")
            raise
        self._stack.remove(run)
        run.end("FINISHED")

    def end(self, status: str = "FINISHED") -> None:
        """End every open run, innermost first (not a parent run taken with `attach`)."""
        while self._stack:
            run = self._stack.pop()
            if run is not self._borrowed:
                run.end(status)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    # -------------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        self.active.log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.active.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.active.log_artifact(path, artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self.active.log_artifacts(directory, artifact_path)

    def lightning_logger(self, run_id: str | None = None) -> "MLFlowLogger":
        """A Lightning `MLFlowLogger` writing into an existing run (default: the innermost).

        Lightning calls `finalize()` at the end of `fit`, which marks that run FINISHED;
        the Tracker's own `end()` afterwards is harmless. Hyperparameters logged through
        the logger must not contradict params already on the run.
        """
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(
            experiment_name=self.experiment_name,
            tracking_uri=self.uri,
            run_id=run_id or self.active.run_id,
        )
