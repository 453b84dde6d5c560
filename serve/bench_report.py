"""Tables and plots of `serve.bench` reports (the dict `bench_bundles` returns).

`table(report)` is the text table `ekd-compress bench` prints (one figure per cell, a column
per model named by its model name, size and dev WER where the bundle records them), with a
second-over-first ratio column when two bundles were compared; `plot(report, path)` draws latency bars
and the real-time capacity ramp (chunk compute p95 against concurrent streams).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

JSON_KEYS = ("bundle", "model", "params", "size_mb", "dev_wer", "chunk_ms_p50", "chunk_ms_p95", "first_partial_ms_p50", "final_ms_p50", "final_ms_p95", "rtf",
             "max_realtime_streams", "rss_mb")


ROWS: tuple[tuple[str, str], ...] = (
    ("parameters", "params"),
    ("ONNX size MB", "size_mb"),
    ("dev WER % (as exported)", "dev_wer"),
    ("chunk compute p50 ms", "chunk_ms_p50"),
    ("chunk compute p95 ms", "chunk_ms_p95"),
    ("chunk compute p99 ms", "chunk_ms_p99"),
    ("first partial p50 ms", "first_partial_ms_p50"),
    ("first partial p95 ms", "first_partial_ms_p95"),
    ("first partial p99 ms", "first_partial_ms_p99"),
    ("final p50 ms", "final_ms_p50"),
    ("final p95 ms", "final_ms_p95"),
    ("final p99 ms", "final_ms_p99"),
    ("RTF (1 stream, fast)", "rtf"),
    ("RTF runtime only", "rtf_runtime"),
    ("real-time streams held", "max_realtime_streams"),
    ("server peak RSS MiB", "rss_mb"),
)


def model_labels(report: dict[str, Any]) -> list[str]:
    """Column names: each bundle's model name, with its folder added where two names are the same."""
    names = [m.get("model") or Path(m["bundle"]).name for m in report["models"]]
    return [f"{n} ({Path(m['bundle']).name})" if names.count(n) > 1 else n for n, m in zip(names, report["models"])]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def table(report: dict[str, Any]) -> str:
    """One row per figure (p50, p95 and p99 each their own), one column per model, named by its
    model name; rows no model has a value for (size, WER of a bundle without them) are left out."""
    models = report["models"]
    rows = [("", *model_labels(report))]
    two = len(models) == 2
    if two:
        rows[0] = (*rows[0], "2nd / 1st")
    for name, key in ROWS:
        values = [m.get(key) for m in models]
        if all(v is None for v in values):
            continue
        cells = [_fmt(v) for v in values]
        if key == "max_realtime_streams":
            cells = [c + ("+" if m.get("max_realtime_streams_capped") else "") for c, m in zip(cells, models)]
        if two:
            x, y = values
            num = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
            cells.append(f"{y / x:.2f}x" if num and x else "-")
        rows.append((name, *cells))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["chunk p50", "chunk p95", "first partial p50", "final p50", "final p95"]
    keys = ["chunk_ms_p50", "chunk_ms_p95", "first_partial_ms_p50", "final_ms_p50", "final_ms_p95"]
    w = 0.8 / max(len(models), 1)
    labels_by_model = model_labels(report)
    for i, (m, label) in enumerate(zip(models, labels_by_model)):
        ax1.bar(np.arange(len(keys)) + i * w, [m[k] or 0 for k in keys], w, label=label)
    ax1.set_xticks(np.arange(len(keys)) + w * (len(models) - 1) / 2, labels, rotation=20)
    ax1.set_ylabel("ms")
    ax1.set_title("latency")
    ax1.legend()
    for m, label in zip(models, labels_by_model):
        if m["ramp"]:
            ax2.plot([r["streams"] for r in m["ramp"]], [r["chunk_ms_p95"] for r in m["ramp"]], "o-", label=label)
    if models and models[0]["chunk_ms"]:
        ax2.axhline(models[0]["chunk_ms"], color="gray", ls="--", label="chunk duration")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent real-time streams")
    ax2.set_ylabel("chunk compute p95, ms")
    ax2.set_title("real-time capacity")
    ax2.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
