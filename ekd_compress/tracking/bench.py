"""MLflow logging of a serving benchmark (`ekd-compress bench --mlflow`).

The report is `ekd_compress.serve.bench.bench_bundles`' dict; serve/ itself never imports mlflow, the
CLI calls `log_bench_report` after the benchmark when asked to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

EXPERIMENT = "ekd-bench"


def log_bench_report(report: dict[str, Any], labels: Sequence[str], plot_path: Path | None,
                     log: Callable[[str], None]) -> None:
    """Log one MLflow run 'bench' (params: config, audio) with a child run per bundle.

    Args:
        report: the benchmark report: "config" (`ekd_compress.serve.bench.public_config`: whether a token was
            used, never the token), "audio", and "models" (one dict of numbers per bundle).
        labels: one run name per entry of report["models"] (`ekd_compress.serve.bench_report.model_labels`).
        plot_path: a PNG logged as an artifact of the parent run, or None.
        log: where the one-line outcome goes; an unreachable tracking server or a missing
            mlflow is reported there ("MLflow logging skipped: ..."), never raised.
    """
    from ekd_compress.tracking import Tracker, TrackingError, resolve_tracking_uri

    try:
        tracker = Tracker(resolve_tracking_uri(), EXPERIMENT)
        tracker.start_parent("bench", params={"config": report["config"], "audio": report["audio"]})
        for m, label in zip(report["models"], labels):
            with tracker.child(label, params={"bundle": m["bundle"]}) as run:
                run.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if plot_path is not None:
            tracker.log_artifact(plot_path)
        tracker.end()
        log(f"logged to MLflow at {tracker.uri} (experiment {EXPERIMENT})")
    except (TrackingError, ImportError) as e:
        log(f"MLflow logging skipped: {e}")
