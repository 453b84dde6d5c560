"""Tables and plots of `ekd_compress.serve.bench` reports (the dict `bench_bundles` returns).

`table(report)` is the text table `ekd-compress bench` prints (one figure per cell, a column
per model named by its model name, size and dev WER where the bundle records them), with a
second-over-first ratio column when two bundles were compared; `plot(report, path)` draws latency bars
and the real-time capacity ramp (chunk compute p95 against concurrent streams).
Rows under the table give `ratios(report)`: how many times cheaper each bundle is than the ensemble.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

JSON_KEYS = ("bundle", "model", "params", "size_mb", "dev_wer", "chunk_ms_p50", "chunk_ms_p95", "per_chunk_ms_p50",
             "batch_mean", "first_partial_ms_p50", "final_ms_p50", "final_ms_p95", "rtf",
             "max_realtime_streams", "rss_mb", "rtf_cpu", "max_realtime_streams_capped", "ramp_limit",
             "flops_per_audio_second", "rtf_floor", "rtf_over_floor", "rtf_cpu_over_floor")
# reference / bundle ("times cheaper"), except streams: bundle / reference ("times more streams")
RATIO_KEYS = {"chunk_ms_p50": "cost", "per_chunk_ms_p50": "cost", "rtf": "cost", "rtf_cpu": "cost", "rtf_runtime_cpu": "cost",
              "flops_per_audio_second": "cost", "params": "cost", "max_realtime_streams": "capacity"}


def capacity_is_lower_bound(m: dict[str, Any]) -> bool:
    """A bundle's real-time streams are a lower bound, not its capacity: the ramp hit its ceiling, or
    real time broke on the clients or on the machine they share with the server (serve/bench_ramp.py)."""
    return bool(m.get("max_realtime_streams_capped") or m.get("ramp_limit") in ("clients", "machine"))


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """How many times cheaper each bundle is than the reference: the ensemble bundle (kind
    "ensemble" in bundle.json), else the first one. One entry per other bundle:
    {"bundle", "vs", KEY: ratio or None for each RATIO_KEYS, "streams_lower_bound": bool}
    (streams_lower_bound: the bundle's own capacity was capped, or limited by the clients or the
    machine, so its ratio is at least the value given)."""
    models = report["models"]
    if len(models) < 2:
        return []
    ref = next((m for m in models if m.get("kind") == "ensemble"), models[0])
    out = []
    for m in models:
        if m is ref:
            continue
        row: dict[str, Any] = {"bundle": m["bundle"], "vs": ref["bundle"]}
        for key, how in RATIO_KEYS.items():
            a, b = ref.get(key), m.get(key)
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0
            row[key] = None if not ok else round(a / b if how == "cost" else b / a, 3)
        row["streams_lower_bound"] = capacity_is_lower_bound(m)
        out.append(row)
    return out


ROWS: tuple[tuple[str, str], ...] = (
    ("parameters", "params"),
    ("ONNX size MB", "size_mb"),
    ("dev WER % (as exported)", "dev_wer"),
    ("chunk compute p50 ms", "chunk_ms_p50"),
    ("chunk compute p95 ms", "chunk_ms_p95"),
    ("chunk compute p99 ms", "chunk_ms_p99"),
    ("compute per chunk p50 ms (call / batch)", "per_chunk_ms_p50"),
    ("chunks per model call (mean)", "batch_mean"),
    ("first partial p50 ms", "first_partial_ms_p50"),
    ("first partial p95 ms", "first_partial_ms_p95"),
    ("first partial p99 ms", "first_partial_ms_p99"),
    ("final p50 ms", "final_ms_p50"),
    ("final p95 ms", "final_ms_p95"),
    ("final p99 ms", "final_ms_p99"),
    ("RTF (1 stream, fast)", "rtf"),
    ("RTF server CPU time", "rtf_cpu"),
    ("RTF runtime only", "rtf_runtime"),
    ("RTF runtime CPU time", "rtf_runtime_cpu"),
    ("real-time streams held", "max_realtime_streams"),
    ("server peak RSS MiB", "rss_mb"),
    ("MFLOP per audio second", "mflops_per_audio_second"),
    ("RTF floor (FLOPs / matmul rate)", "rtf_floor"),
    ("RTF / floor, server", "rtf_over_floor"),
    ("RTF / floor, server CPU", "rtf_cpu_over_floor"),
    ("RTF / floor, runtime CPU", "rtf_runtime_cpu_over_floor"),
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


def _value(m: dict[str, Any], key: str) -> Any:
    if key == "mflops_per_audio_second":
        f = m.get("flops_per_audio_second")
        return f / 1e6 if isinstance(f, (int, float)) else None
    return m.get(key)


def table(report: dict[str, Any]) -> str:
    """One row per figure (p50, p95 and p99 each their own), one column per model, named by its
    model name; rows no model has a value for (size, WER of a bundle without them) are left out."""
    models = report["models"]
    rows = [("", *model_labels(report))]
    two = len(models) == 2
    if two:
        rows[0] = (*rows[0], "2nd / 1st")
    for name, key in ROWS:
        values = [_value(m, key) for m in models]
        if all(v is None for v in values):
            continue
        cells = [_fmt(v) for v in values]
        if key == "max_realtime_streams":
            cells = [c + ("+" if capacity_is_lower_bound(m) else "") for c, m in zip(cells, models)]
        if two:
            x, y = values
            num = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
            cells.append(f"{y / x:.2f}x" if num and x else "-")
        rows.append((name, *cells))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    mm = report.get("machine", {}).get("matmul")
    if mm:
        lines.append(f"machine: {mm['gflops']:.1f} GFLOP/s single-thread matmul at {mm['peak_shape']} per CPU second "
                     f"({mm['gflops_chunk']:.1f} at a chunk's {mm['chunk_shape']}; {mm['engine']})")
    for m in report["models"]:
        if m.get("ramp_note"):
            lines.append(f"{Path(m['bundle']).name}: {m['ramp_note']}")
    for r in report.get("ratios") or []:
        cells = [f"{label} {_x(r.get(key))}" for label, key in (
            ("chunk p50", "chunk_ms_p50"), ("per chunk p50", "per_chunk_ms_p50"), ("RTF", "rtf"), ("RTF CPU", "rtf_cpu"), ("FLOPs", "flops_per_audio_second"),
            ("params", "params"))]
        streams = _x(r.get("max_realtime_streams")) + ("+" if r.get("streams_lower_bound") and r.get("max_realtime_streams") else "")
        lines.append(f"{Path(r['vs']).name} / {Path(r['bundle']).name} (times cheaper): " + ", ".join(cells)
                     + f"; real-time streams {streams} as many")
    return "\n".join(lines)


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


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
