"""Do-nothing stand-ins for `Tracker` and its runs, for `--no-mlflow`."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .mlflow_tracking import flatten_params


class NullRun:
    """A run that records nothing (for `--no-mlflow`)."""

    run_id = ""

    def log_params(self, params: Mapping[str, Any] | None) -> None:
        flatten_params(params)  # still surface over-long keys early

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any] | None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class NullTracker:
    """Same API as `Tracker`, records nothing; `lightning_logger` returns None."""

    uri = ""
    experiment_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run = NullRun()

    def start_parent(self, run_name: str, params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        self._run.log_params(params)
        return run_id or ""

    @contextmanager
    def child(self, run_name: str, params: Mapping[str, Any] | None = None,
              run_id: str | None = None) -> Iterator[NullRun]:
        self._run.log_params(params)
        yield self._run

    def end(self, status: str = "FINISHED") -> None:
        pass

    def handoff(self) -> None:
        """Nothing to hand to another process: its jobs use a NullTracker too."""
        return None

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        pass

    def lightning_logger(self, run_id: str | None = None) -> None:
        """None: pass `logger=tracker.lightning_logger(...) or False` to disable Trainer logging."""
        return None
