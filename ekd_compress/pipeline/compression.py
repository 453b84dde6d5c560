"""The compression curve of a distill run: what each model costs against what it scores.

For every registered model (members, ensemble, baselines, students, the size sweep):

    params                  trainable parameters
    flops_per_audio_second  steady-state streaming FLOPs of the matrix products, batch 1
                            (ekd_compress.models.flops)
    rtf_onnx                measured streaming RTF: the model exported to ONNX and run chunk by
                            chunk with onnxruntime on 1 thread, batch 1, over dev features, timed
                            by the CPU time of the calling thread (onnxruntime computes there with
                            one intra-op thread), so other processes sharing the machine do not
                            inflate it (model compute only: no fbank, no decoding; best of 3 passes)
    wer                     per scored set (results.json "tests")

The Pareto front (no other model both cheaper and at most as wrong) is computed on the verdict
split for FLOPs and for RTF. `smallest_matching` is the cheapest (FLOPs) student taught by the
ensemble whose WER is at most the ensemble's, with the ensemble/student ratios: the saving a
user of the toolkit gets for no loss of accuracy. Students that differ only by seed (the chosen
student's seeds, each size's `distill.sweep_seeds`) are judged together by their mean WER, so
one lucky seed of a size does not make it match. Computed only when the recipe has a size
sweep (`distill.student_sizes`), so recipes without one behave as before.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

TARGET_FLOP_SAVING = 5.0  # issue 15: the smallest student at most the ensemble's WER costs <= 1/5 of its FLOPs
NOT_FROM_ENSEMBLE = ("control_baseline_teacher",)  # taught by the guide alone


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, error) that no other point dominates (both <=, one <), by cost.

    Equal points are all kept. NaN or None costs/errors are never on the front.
    """
    ok = [i for i, (c, e) in enumerate(points) if c is not None and e is not None and c == c and e == e]
    front = []
    for i in ok:
        ci, ei = points[i]
        dominated = any(points[j][0] <= ci and points[j][1] <= ei and (points[j][0] < ci or points[j][1] < ei)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def onnx_streaming_rtf(model, feats_list: Sequence[np.ndarray], seconds: float, threads: int = 1,
                       frame_shift_ms: float = 10.0, passes: int = 3) -> float:
    """Streaming RTF of `model` exported to ONNX: compute (CPU) time / audio time, batch 1.

    Args:
        model: a streaming CTC model or FusedEnsemble (torch).
        feats_list: utterances' fbank features, each (T, F) float32, streamed in turn until
            `seconds` of audio (chunks of `model.chunk_frames` frames, the last zero-padded).
        threads: onnxruntime intra-op threads.
        passes: timed passes over the same chunks; the fastest is kept (others share the CPU).
    """
    from ekd_compress.export.onnx_export import export_streaming_onnx
    from ekd_compress.export.ort_stream import OrtStreamer, utterance_windows

    if seconds <= 0:
        raise ValueError(f"seconds={seconds}: stream at least some audio, e.g. 20 s")
    with tempfile.TemporaryDirectory(prefix="ekd-rtf-") as tmp:
        path = Path(tmp) / "model.onnx"
        io = export_streaming_onnx(model, path)
        runner = OrtStreamer(path, {"streaming": io["streaming"], "states": io["states"]}, threads=threads)
        cf, ahead = runner.chunk_frames, runner.lookahead_frames
        chunk_s = cf * frame_shift_ms / 1000.0
        utts, total = [], 0.0
        for feats in feats_list:  # whole utterances, each from a fresh state
            utts.append(utterance_windows(feats, cf, ahead))
            total += len(utts[-1]) * chunk_s
            if total >= seconds:
                break
        if not utts:
            raise ValueError("no features to time the streaming RTF on; the dev set is empty")
        runner.step(utts[0][0], runner.zero_states(1))  # warm-up
        best = float("inf")
        for _ in range(max(1, passes)):
            elapsed = 0.0
            for chunks in utts:
                states = runner.zero_states(1)
                for chunk in chunks:
                    t0 = time.thread_time()
                    _, states = runner.step(chunk, states)
                    elapsed += time.thread_time() - t0
            best = min(best, elapsed)
        return best / total


def measure_compression(models: dict[str, tuple[dict[str, Any], Any]], tests: dict[str, Any], split: str,
                        dev_feats: Sequence[np.ndarray], rtf_seconds: float, frame_shift_ms: float = 10.0,
                        log=print, groups: Optional[dict[str, list[str]]] = None,
                        ctc: Optional[dict[str, list[str]]] = None) -> dict[str, Any]:
    """The `compression` section of results.json (see the module docstring).

    Args:
        models: {name: (models.json entry, loaded model)}; entries with `same_as` are skipped.
        tests: results.json "tests" ({set: {"models": [{"name", "wer", ...}]}}).
        split: the scored set the front and `smallest_matching` are read on (the verdict's).
        dev_feats: features (T, F) of dev utterances to time the RTF on.
        groups: {group: [model names]} of students that differ only by seed (plan.seed_groups).
        ctc: {group: [model names]} of the CTC-only models of each group's size (plan.ctc_groups).
    """
    from ekd_compress.models import count_parameters
    from ekd_compress.models.flops import count_chunk_flops

    wers = {t: {r["name"]: float(r["wer"]) for r in tr["models"]} for t, tr in tests.items()}
    aliases = {entry["same_as"]: name for name, (entry, _) in models.items() if entry.get("same_as")}
    rows = []
    for name, (entry, model) in models.items():
        if entry.get("same_as"):  # e.g. "student", the registry's name for the chosen k's model
            continue
        flops = count_chunk_flops(model, frame_shift_ms=frame_shift_ms)
        rtf = onnx_streaming_rtf(model, dev_feats, rtf_seconds, frame_shift_ms=frame_shift_ms)
        rows.append({"name": name, "kind": entry["kind"], "alias": aliases.get(name), "params": count_parameters(model),
                     "flops_per_audio_second": flops.flops_per_second, "rtf_onnx": rtf,
                     "wer": {t: w.get(name) for t, w in wers.items()}})
        log(f"  compression {name:<26} {count_parameters(model):>9,} params  "
            f"{flops.flops_per_second / 1e6:8.2f} MFLOP/s audio  RTF {rtf:.5f}")
    points = [(r["flops_per_audio_second"], r["wer"].get(split)) for r in rows]
    front_flops = [rows[i]["name"] for i in pareto_front(points)]
    front_rtf = [rows[i]["name"] for i in pareto_front([(r["rtf_onnx"], r["wer"].get(split)) for r in rows])]
    return {"split": split, "rtf_seconds": rtf_seconds, "threads": 1, "rows": rows,
            "pareto_flops": front_flops, "pareto_rtf": front_rtf,
            "students": student_groups(rows, split, groups, ctc),
            "smallest_matching": smallest_matching(rows, split, groups)}


def is_ensemble_student(row: dict[str, Any]) -> bool:
    """A model of the student architecture taught by the ensemble (any k, seed or size)."""
    return row["kind"] in ("student", "kd") and row["name"] not in NOT_FROM_ENSEMBLE


def student_groups(rows: Sequence[dict[str, Any]], split: str, groups: Optional[dict[str, list[str]]] = None,
                   ctc: Optional[dict[str, list[str]]] = None) -> list[dict[str, Any]]:
    """The students taught by the ensemble with a `split` WER, one entry per group of seeds.

    Args:
        groups: {group: [model names]} of models that differ only by seed; a student in no
            group is a group of its own (named after it, its `alias` kept).
        ctc: {group: [model names]}: the CTC-only models of the group's size (what the teaching
            is measured against at that size); a group without any scored has "ctc_wer" None.
    Returns:
        [{"name", "models", "wers" (per seed, %), "wer" (their mean), "flops_per_audio_second",
        "params" (of the group's first model), "rtf_onnx" (mean), "ctc_models", "ctc_wers",
        "ctc_wer" (their mean or None)}], groups first, in order.
    """
    by_name = {r["name"]: r for r in rows}
    scored = {r["name"]: r for r in rows if is_ensemble_student(r) and r["wer"].get(split) is not None}
    named = [(g, [scored[n] for n in names if n in scored]) for g, names in (groups or {}).items()]
    named = [(g, members) for g, members in named if members]
    grouped = {r["name"] for _, members in named for r in members}
    named += [(name, [r]) for name, r in scored.items() if name not in grouped]
    out = []
    for g, members in named:
        wers = [float(r["wer"][split]) for r in members]
        ctc_rows = [by_name[n] for n in (ctc or {}).get(g, []) if n in by_name and by_name[n]["wer"].get(split) is not None]
        ctc_wers = [float(r["wer"][split]) for r in ctc_rows]
        out.append({"ctc_models": [r["name"] for r in ctc_rows], "ctc_wers": ctc_wers,
                    "ctc_wer": float(np.mean(ctc_wers)) if ctc_wers else None,
                    "name": g, "models": [r["name"] for r in members], "alias": members[0].get("alias")
                    if len(members) == 1 else None, "wers": wers, "wer": float(np.mean(wers)),
                    "flops_per_audio_second": members[0]["flops_per_audio_second"], "params": members[0]["params"],
                    "rtf_onnx": float(np.mean([r["rtf_onnx"] for r in members]))})
    return out


def smallest_matching(rows: Sequence[dict[str, Any]], split: str,
                      groups: Optional[dict[str, list[str]]] = None) -> dict[str, Any] | None:
    """The student (group of seeds, see `student_groups`) with the fewest FLOPs whose mean `split`
    WER <= the ensemble's, and its savings (ensemble / student for FLOPs, RTF and parameters);
    None without an ensemble row. {"name": None, ...} when no student reaches the ensemble's WER."""
    ens = next((r for r in rows if r["kind"] == "ensemble"), None)
    if ens is None or ens["wer"].get(split) is None:
        return None
    ok = [g for g in student_groups(rows, split, groups) if g["wer"] <= ens["wer"][split] + 1e-9]
    out: dict[str, Any] = {"ensemble_wer": ens["wer"][split], "target_flop_saving": TARGET_FLOP_SAVING}
    if not ok:
        return {**out, "name": None, "met": False}
    best = min(ok, key=lambda g: (g["flops_per_audio_second"], g["wer"]))
    flop_saving = ens["flops_per_audio_second"] / best["flops_per_audio_second"]
    return {**out, "name": best["name"], "alias": best["alias"], "models": best["models"], "wers": best["wers"],
            "wer": best["wer"], "params": best["params"], "flop_saving": flop_saving,
            "rtf_saving": ens["rtf_onnx"] / best["rtf_onnx"], "param_saving": ens["params"] / best["params"],
            "met": flop_saving >= TARGET_FLOP_SAVING - 1e-9}


def compression_markdown(comp: dict[str, Any]) -> str:
    """The results.md section: the named smallest student, then one row per model."""
    split = comp["split"]
    sm = comp.get("smallest_matching")
    out = [f"## Compression (WER on `{split}` against compute; plots/compression.png)", ""]
    if sm and sm.get("name"):
        wers = sm.get("wers") or [sm["wer"]]
        seeds = (f"mean {sm['wer']:.2f} % over {len(wers)} seeds: " + " / ".join(f"{w:.2f}" for w in wers)
                 if len(wers) > 1 else f"{sm['wer']:.2f} %, one seed")
        out.append(f"Smallest student with WER at most the ensemble's ({sm['ensemble_wer']:.2f} %): **{sm['name']}**"
                   + (f" (= {sm['alias']})" if sm.get("alias") else "") + " "
                   f"({seeds}; {sm['params']:,} parameters): **{sm['flop_saving']:.1f}x** fewer FLOPs per "
                   f"audio second than the ensemble, {sm['rtf_saving']:.1f}x lower measured RTF, "
                   f"{sm['param_saving']:.1f}x fewer parameters (target: >= {sm['target_flop_saving']:g}x FLOPs: "
                   f"{'met' if sm['met'] else '**not met**'}).")
    elif sm:
        out.append(f"No student taught by the ensemble reaches its WER ({sm['ensemble_wer']:.2f} %) on `{split}`.")
    groups = comp.get("students") or []
    if groups:  # each size by its seed mean: what the smallest student above was judged by
        out += ["", "Students taught by the ensemble, seeds of one size together (distill.sweep_seeds; a size with "
                "one seed is judged on it alone):", "",
                f"| student | seeds | MFLOP/s audio | {split} WER % (mean) | per seed | CTC only, same size (mean) |",
                "|" + " --- |" * 6]
        out += [f"| {g['name']} | {len(g['wers'])} | {g['flops_per_audio_second'] / 1e6:.2f} | {g['wer']:.2f} | "
                + " / ".join(f"{w:.2f}" for w in g["wers"]) + " | "
                + ("-" if g.get("ctc_wer") is None else f"{g['ctc_wer']:.2f} ({', '.join(g['ctc_models'])})") + " |"
                for g in sorted(groups, key=lambda g: (g["flops_per_audio_second"], g["wer"]))]
    out += ["", f"RTF: ONNX model compute (CPU time) on 1 thread, batch 1, streamed over {comp['rtf_seconds']:g} s "
            "of dev audio (no features, no decoding). Pareto front (FLOPs / RTF): F / R.", ""]
    tests = list(comp["rows"][0]["wer"]) if comp["rows"] else []
    out += ["| model | kind | params | MFLOP/s audio | RTF | " + " | ".join(f"{t} WER %" for t in tests) + " | front |",
            "|" + " --- |" * (6 + len(tests))]
    for r in sorted(comp["rows"], key=lambda r: r["flops_per_audio_second"]):
        front = ("F" if r["name"] in comp["pareto_flops"] else "") + ("R" if r["name"] in comp["pareto_rtf"] else "")
        wers = " | ".join("-" if r["wer"][t] is None else f"{r['wer'][t]:.2f}" for t in tests)
        name = r["name"] + (f" (= {r['alias']})" if r.get("alias") else "")
        out.append(f"| {name} | {r['kind']} | {r['params']:,} | {r['flops_per_audio_second'] / 1e6:.2f} | "
                   f"{r['rtf_onnx']:.5f} | {wers} | {front} |")
    return "\n".join(out) + "\n\n"


MARKERS = {"member": ("s", "tab:blue"), "ensemble": ("*", "tab:red"), "baseline": ("v", "tab:gray"),
           "kd": ("D", "tab:purple"), "student": ("o", "tab:green")}


def merged_labels(points: Sequence[tuple[float, float, str]], rel: float = 0.4,
                  per_line: int = 2) -> list[tuple[float, float, str]]:
    """One label per cluster of points whose names would print on top of each other: the same
    error, and costs within a factor 1 + `rel` of the cluster's first (as on a log axis). Returns
    (cost, error, names) at the cluster's cheapest point, in the order the points came; the names
    are joined by ", ", `per_line` to a line.

    Several models of one size often tie on a small test set (four students at 16.9 MFLOP/s and
    1.71 % in run K): their names, drawn one over the other, could not be read.
    """
    groups: list[list[tuple[float, float, str]]] = []
    for cost, err, name in points:
        for g in groups:
            c0, e0, _ = g[0]
            if e0 == err and max(c0, cost) <= (1 + rel) * min(c0, cost):
                g.append((cost, err, name))
                break
        else:
            groups.append([(cost, err, name)])
    return [(min(p[0] for p in g), g[0][1],
             ",\n".join(", ".join(p[2] for p in g[i:i + per_line]) for i in range(0, len(g), per_line)))
            for g in groups]


class SeedMean(NamedTuple):
    """One seed mean of the compression plot: a size's students, or its CTC-only models."""

    cost: float                # the cost `key` of seed_means (the CTC-only models' own mean cost)
    wer: float                 # mean WER %
    wers: list[float]          # the seeds' WERs %
    name: str                  # the size, or "<size> CTC"
    color: str
    legend: Optional[str]      # legend label, on the first mean of each kind only
    models: list[str]          # the models it stands for (the plot leaves out their own labels)


def seed_means(comp: dict[str, Any], rows: Sequence[dict[str, Any]], key: str) -> list[SeedMean]:
    """The seed means the compression plot draws, one SeedMean for each size with more than one student
    seed, and for the CTC-only models of that size when it has more than one (`<size> CTC`)."""
    by_name = {r["name"]: r for r in rows}
    out: list[SeedMean] = []
    seeded = [g for g in comp.get("students") or [] if len(g["wers"]) > 1]
    for i, g in enumerate(seeded):
        out.append(SeedMean(g[key], g["wer"], g["wers"], g["name"], "darkgreen",
                            "student seed mean (min-max)" if i == 0 else None, list(g["models"])))
    ctc = [g for g in seeded if len(g.get("ctc_wers") or []) > 1]
    for i, g in enumerate(ctc):
        cost = float(np.mean([by_name[n][key] for n in g["ctc_models"]]))
        out.append(SeedMean(cost, g["ctc_wer"], g["ctc_wers"], f"{g['name']} CTC", "dimgray",
                            "CTC-only seed mean, same size (min-max)" if i == 0 else None, list(g["ctc_models"])))
    return out


def plot_compression(comp: dict[str, Any], path: Path) -> Path:
    """WER against FLOPs per audio second and against measured RTF (log x), Pareto fronts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - NullFormatter below

    from ekd_compress.pipeline.plots import save_figure

    split = comp["split"]
    rows = [r for r in comp["rows"] if r["wer"].get(split) is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, front, label in ((axes[0], "flops_per_audio_second", comp["pareto_flops"], "FLOPs per second of audio"),
                                  (axes[1], "rtf_onnx", comp["pareto_rtf"], "measured streaming RTF (ONNX, 1 thread)")):
        seen = set()
        for r in rows:
            marker, color = MARKERS.get(r["kind"], ("x", "black"))
            ax.scatter(r[key], r["wer"][split], marker=marker, color=color, s=90 if r["kind"] == "ensemble" else 40,
                       label=None if r["kind"] in seen else r["kind"], zorder=3)
            seen.add(r["kind"])
        # a size's seeds (students, and its CTC-only models): their mean, with a bar from the best to the worst,
        # named once at the mean instead of once per seed
        labels, in_means = [], set()
        for m in seed_means(comp, rows, key):
            ax.errorbar(m.cost, m.wer, yerr=[[m.wer - min(m.wers)], [max(m.wers) - m.wer]], fmt="o", ms=12,
                        mfc="none", mec=m.color, ecolor=m.color, capsize=4, alpha=0.8, zorder=4, label=m.legend)
            labels.append((m.cost, m.wer, m.name))
            in_means.update(m.models)
        labels += [(r[key], r["wer"][split], r["name"]) for r in rows if r["name"] not in in_means]
        for x, y, names in merged_labels(labels):
            ax.annotate(names, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points", va="bottom")
        ens = next((r for r in rows if r["kind"] == "ensemble"), None)
        if ens is not None:  # what a student must reach to match it
            ax.axhline(ens["wer"][split], ls=":", lw=1, color="tab:red", alpha=0.7, label="ensemble's WER", zorder=1)
        pts = sorted((r[key], r["wer"][split]) for r in rows if r["name"] in front)
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="black", alpha=0.5, lw=1,
                    label="Pareto front", zorder=2)
        ax.set(xscale="log", xlabel=label, ylabel=f"WER % ({split})")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    sm = comp.get("smallest_matching")
    title = "Compression curve"
    if sm and sm.get("name"):
        mean = " (seed mean)" if len(sm.get("wers") or []) > 1 else ""
        title += f": {sm['name']}{mean} matches the ensemble at {sm['flop_saving']:.1f}x fewer FLOPs"
    fig.suptitle(title)
    return save_figure(fig, path)
