"""Experiment tracking (MLflow). mlflow itself loads only when a Tracker is created."""
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
