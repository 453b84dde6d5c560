"""Tables and plots of `serve.bench` reports (the dict `bench_bundles` returns).

`table(report)` is the text table `ekd-compress bench` prints, with a second-over-first
ratio column when two bundles were compared and the "times cheaper than the ensemble" rows
of `ratios(report)`; `plot(report, path)` draws latency bars and the real-time capacity ramp
(chunk compute p95 against concurrent streams).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

JSON_KEYS = ("bundle", "chunk_ms_p50", "chunk_ms_p95", "first_partial_ms_p50", "final_ms_p50", "final_ms_p95", "rtf",
             "max_realtime_streams", "rss_mb", "rtf_cpu", "max_realtime_streams_capped", "ramp_limit",
             "flops_per_audio_second", "rtf_floor", "rtf_over_floor", "rtf_cpu_over_floor")
# reference / bundle ("times cheaper"), except streams: bundle / reference ("times more streams")
RATIO_KEYS = {"chunk_ms_p50": "cost", "rtf": "cost", "rtf_cpu": "cost", "rtf_runtime_cpu": "cost",
              "flops_per_audio_second": "cost", "params": "cost", "max_realtime_streams": "capacity"}


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """How many times cheaper each bundle is than the reference: the ensemble bundle (kind
    "ensemble" in bundle.json), else the first one. One entry per other bundle:
    {"bundle", "vs", KEY: ratio or None for each RATIO_KEYS, "streams_lower_bound": bool}
    (streams_lower_bound: the bundle's own capacity was capped or client-limited, so its ratio is
    at least the value given)."""
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
        row["streams_lower_bound"] = bool(m.get("max_realtime_streams_capped") or m.get("ramp_limit") == "clients")
        out.append(row)
    return out


def table(report: dict[str, Any]) -> str:
    rows = [("", *[Path(m["bundle"]).name for m in report["models"]])]
    keys = [("chunk compute p50/p95/p99 ms", ("chunk_ms_p50", "chunk_ms_p95", "chunk_ms_p99")),
            ("first partial p50/p95/p99 ms", ("first_partial_ms_p50", "first_partial_ms_p95", "first_partial_ms_p99")),
            ("final p50/p95/p99 ms", ("final_ms_p50", "final_ms_p95", "final_ms_p99")),
            ("RTF (1 stream, fast)", ("rtf",)),
            ("RTF server CPU time", ("rtf_cpu",)),
            ("RTF runtime only", ("rtf_runtime",)),
            ("RTF runtime CPU time", ("rtf_runtime_cpu",)),
            ("real-time streams held", ("max_realtime_streams",)),
            ("server peak RSS MiB", ("rss_mb",)),
            ("MFLOP per audio second", ("flops_per_audio_second",)),
            ("RTF floor (FLOPs / matmul rate)", ("rtf_floor",)),
            ("RTF / floor (server, CPU, runtime CPU)", ("rtf_over_floor", "rtf_cpu_over_floor",
                                                        "rtf_runtime_cpu_over_floor"))]

    def fmt(v, key=""):
        if isinstance(v, (int, float)) and key == "flops_per_audio_second":
            v = v / 1e6
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    for name, ks in keys:
        cells = []
        for m in report["models"]:
            cell = "/".join(fmt(m.get(k), k) for k in ks)
            if ks == ("max_realtime_streams",) and (m.get("max_realtime_streams_capped") or m.get("ramp_limit") == "clients"):
                cell += "+"  # at least this many: capped, or the clients were the limit
            cells.append(cell)
        rows.append((name, *cells))
    if len(report["models"]) == 2:
        a, b = report["models"]
        ratio = []
        for name, ks in keys:
            x, y = a.get(ks[-1] if len(ks) == 1 else ks[1]), b.get(ks[-1] if len(ks) == 1 else ks[1])
            ratio.append(f"{y / x:.2f}x" if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x else "-")
        rows[0] = (*rows[0], "2nd / 1st")
        for i, r in enumerate(ratio):
            rows[i + 1] = (*rows[i + 1], r)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    mm = report.get("machine", {}).get("matmul")
    if mm:
        lines.append(f"machine: {mm['gflops']:.1f} GFLOP/s single-thread matmul at {mm['peak_shape']} per CPU second "
                     f"({mm['gflops_chunk']:.1f} at a chunk's {mm['chunk_shape']}; {mm['engine']})")
    for m in report["models"]:
        if m.get("ramp_note"):
            lines.append(f"{Path(m['bundle']).name}: {m['ramp_note']}")
    for r in report.get("ratios") or []:
        cells = [f"{label} {_x(r.get(key))}" for label, key in (
            ("chunk p50", "chunk_ms_p50"), ("RTF", "rtf"), ("RTF CPU", "rtf_cpu"), ("FLOPs", "flops_per_audio_second"),
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
