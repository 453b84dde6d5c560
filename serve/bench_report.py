"""Tables and plots of `serve.bench` reports (the dict `bench_bundles` returns).

`table(report)` is the text table `ekd-compress bench` prints, with a second-over-first
ratio column when two bundles were compared; `plot(report, path)` draws latency bars
and the real-time capacity ramp (chunk compute p95 against concurrent streams).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

JSON_KEYS = ("bundle", "chunk_ms_p50", "chunk_ms_p95", "first_partial_ms_p50", "final_ms_p50", "final_ms_p95", "rtf",
             "max_realtime_streams", "rss_mb")


def table(report: dict[str, Any]) -> str:
    rows = [("", *[Path(m["bundle"]).name for m in report["models"]])]
    keys = [("chunk compute p50/p95/p99 ms", ("chunk_ms_p50", "chunk_ms_p95", "chunk_ms_p99")),
            ("first partial p50/p95/p99 ms", ("first_partial_ms_p50", "first_partial_ms_p95", "first_partial_ms_p99")),
            ("final p50/p95/p99 ms", ("final_ms_p50", "final_ms_p95", "final_ms_p99")),
            ("RTF (1 stream, fast)", ("rtf",)),
            ("RTF runtime only", ("rtf_runtime",)),
            ("real-time streams held", ("max_realtime_streams",)),
            ("server peak RSS MiB", ("rss_mb",))]

    def fmt(v):
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    for name, ks in keys:
        cells = []
        for m in report["models"]:
            cell = "/".join(fmt(m[k]) for k in ks)
            if ks == ("max_realtime_streams",) and m.get("max_realtime_streams_capped"):
                cell += "+"
            cells.append(cell)
        rows.append((name, *cells))
    if len(report["models"]) == 2:
        a, b = report["models"]
        ratio = []
        for name, ks in keys:
            x, y = a[ks[-1] if len(ks) == 1 else ks[1]], b[ks[-1] if len(ks) == 1 else ks[1]]
            ratio.append(f"{y / x:.2f}x" if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x else "-")
        rows[0] = (*rows[0], "2nd / 1st")
        for i, r in enumerate(ratio):
            rows[i + 1] = (*rows[i + 1], r)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
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
    for i, m in enumerate(models):
        ax1.bar(np.arange(len(keys)) + i * w, [m[k] or 0 for k in keys], w, label=Path(m["bundle"]).name)
    ax1.set_xticks(np.arange(len(keys)) + w * (len(models) - 1) / 2, labels, rotation=20)
    ax1.set_ylabel("ms")
    ax1.set_title("latency")
    ax1.legend()
    for m in models:
        if m["ramp"]:
            ax2.plot([r["streams"] for r in m["ramp"]], [r["chunk_ms_p95"] for r in m["ramp"]], "o-",
                     label=Path(m["bundle"]).name)
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
