"""Experiment tracking (MLflow): `Tracker` for training runs (mlflow_tracking.py), `NullTracker` when
tracking is off (null.py), the tracking URI (uri.py), and `bench.log_bench_report` for
`ekd-compress bench --mlflow`. mlflow itself loads only when a Tracker is created."""
from .mlflow_tracking import (
    Run,
    Tracker,
    TrackingError,
    check_tracking_uri,
    flatten_params,
    resolve_tracking_uri,
)
from .null import NullRun, NullTracker

__all__ = [
    "NullRun",
    "NullTracker",
    "Run",
    "Tracker",
    "TrackingError",
    "check_tracking_uri",
    "flatten_params",
    "resolve_tracking_uri",
]
