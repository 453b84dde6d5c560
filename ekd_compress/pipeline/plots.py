"""The plots of a distill run (EXP/plots/*.png), drawn from results.json.

    wer_vs_k.png     student WER against the essence k, "all" (ordinary KD) as its own labelled
                     point, with the baseline (seed mean), ensemble and KD-all WERs as reference lines
    model_wer.png    every model's WER on the verdict's set, coloured by kind
    topk_mass.png    the teacher's cumulative top-k probability at the distillation T, the chosen k marked
    coincidence.png  each member's spike coincidence with the guide, with the refusal threshold
    verdict.png      every verdict ratio on the verdict's set with its 95 % bootstrap interval and target
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

from ekd_compress.pipeline.verdict import DECIDING_SCALES

KIND_COLOURS = {"member": "#8c8c8c", "ensemble": "#1f77b4", "baseline": "#d62728", "kd": "#ff7f0e",
                "student": "#2ca02c"}


def _k_points(models: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(label, WER) of the essence students in k order, kd_all last as 'all'."""
    pts = sorted((int(r["name"][len("essence_k"):]), r["wer"]) for r in models if r["name"].startswith("essence_k"))
    out = [(str(k), w) for k, w in pts]
    out += [("all", r["wer"]) for r in models if r["name"] == "kd_all"]
    return out


def _reference(models: list[dict[str, Any]], prefix: str) -> Optional[float]:
    wers = [r["wer"] for r in models if r["name"] == prefix or r["name"].startswith(prefix + "_s")]
    return statistics.mean(wers) if wers else None


def plot_wer_vs_k(ax, results: dict[str, Any], split: str) -> None:
    models = results["tests"][split]["models"]
    pts = _k_points(models)
    xs = list(range(len(pts)))
    ax.plot(xs, [w for _, w in pts], marker="o", color=KIND_COLOURS["student"], label=f"student ({split})")
    vocab = len((results.get("essence") or {}).get("topk_mass") or [])
    ax.set_xticks(xs, [f"all\n(KD, k={vocab})" if lab == "all" and vocab else lab for lab, _ in pts])
    refs = [("baseline (seed mean)", _reference(models, "baseline"), KIND_COLOURS["baseline"], "--"),
            ("ensemble (teacher)", _reference(models, "ensemble"), KIND_COLOURS["ensemble"], "-."),
            ("KD-all", _reference(models, "kd_all"), KIND_COLOURS["kd"], ":")]
    for label, value, colour, style in refs:
        if value is not None:
            ax.axhline(value, color=colour, ls=style, lw=1.2, label=f"{label} {value:.1f}")
    chosen = results.get("chosen_k")
    labels = [lab for lab, _ in pts]
    if chosen is not None and str(chosen) in labels:
        i = labels.index(str(chosen))
        ax.plot([i], [pts[i][1]], marker="*", ms=14, color="black", ls="none", label=f"chosen k={chosen}")
    ax.set(xlabel="essence k (top-k teacher targets)", ylabel="WER %", title=f"Student WER against k ({split})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_model_wer(ax, results: dict[str, Any], split: str) -> None:
    order = {"member": 0, "ensemble": 1, "baseline": 2, "kd": 3, "student": 4}
    models = sorted(results["tests"][split]["models"], key=lambda r: (order.get(r["kind"], 9), r["name"]))
    ax.barh(range(len(models)), [r["wer"] for r in models],
            color=[KIND_COLOURS.get(r["kind"], "#555555") for r in models])
    ax.set_yticks(range(len(models)), [r["name"] for r in models], fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(models):
        ax.text(r["wer"], i, f" {r['wer']:.1f}", va="center", fontsize=7)
    ax.set(xlabel="WER %", title=f"WER of every model ({split})")
    ax.grid(alpha=0.3, axis="x")


def plot_topk_mass(ax, mass: list[float], chosen_k: Optional[str], temperature: Optional[float]) -> None:
    ks = range(1, len(mass) + 1)
    ax.plot(ks, mass, marker="o", ms=3)
    if chosen_k not in (None, "all") and 1 <= int(chosen_k) <= len(mass):
        k = int(chosen_k)
        ax.axvline(k, color="black", ls="--", lw=1)
        ax.annotate(f"chosen k={k}: {mass[k - 1]:.3f}", (k, mass[k - 1]), textcoords="offset points", xytext=(8, -14),
                    fontsize=8)
    t = f" at T={temperature:g}" if temperature is not None else ""
    ax.set(xlabel="k", ylabel="mean cumulative top-k probability", title=f"Teacher essence{t}", xscale="log",
           ylim=(min(mass) - 0.02, 1.005))
    ax.grid(alpha=0.3)


def plot_coincidence(ax, coincidence: dict[str, Any], threshold: Optional[float]) -> None:
    names = list(coincidence)
    values = [coincidence[n]["both"] for n in names]
    colours = ["#d62728" if threshold is not None and v < threshold else "#1f77b4" for v in values]
    ax.bar(names, values, color=colours)
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=1, label=f"fusion threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set(ylabel="spikes matching the guide (±1 frame)", ylim=(0, 1), title="Spike coincidence with the guide")


DECIDED_COLOURS = {"met": "#2ca02c", "not met": "#d62728", "undecided": "#7f7f7f", None: "#1f77b4"}


def plot_verdict(ax, rows: list[dict[str, Any]], split: str) -> None:
    """One line per claim: the ratio (dot, coloured by what the interval decides), its 95 %
    interval (bar) and its target (|); ratio 1 (equal error rates) dashed. An undecided claim is
    labelled with the set size that would decide it (the verdict's "decides_at")."""
    for i, r in enumerate(rows):
        colour = DECIDED_COLOURS.get(r.get("decided"), "#1f77b4")
        if r.get("ci95"):
            ax.plot(r["ci95"], [i, i], color=colour, lw=2.5, alpha=0.6, solid_capstyle="butt")
            at = r.get("decides_at") or {}
            if r.get("decided") == "undecided" and at:
                text = (f"{at['scale']}× the set: {at['decided']}" if at["scale"]
                        else f"> {DECIDING_SCALES[-1]}× the set")
                ax.annotate(text, (1.0, i), xycoords=("axes fraction", "data"), xytext=(6, 0),
                            textcoords="offset points", va="center", fontsize=7, color="#555555")
        ax.plot([r["ratio"]], [i], marker="o", color=colour, ms=7)
        ax.plot([r["target"]], [i], marker="|", color="black", ms=16, mew=2)
    ax.axvline(1.0, color="black", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["claim"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    handles = [ax.plot([], [], marker="o", ls="-", color=c, label=label)[0]
               for label, c in (("interval at or below target", DECIDED_COLOURS["met"]),
                                ("interval above target", DECIDED_COLOURS["not met"]),
                                ("undecided", DECIDED_COLOURS["undecided"]))]
    handles.append(ax.plot([], [], marker="|", ls="none", color="black", ms=10, mew=2, label="target")[0])
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=4, frameon=False)
    ax.set(xlabel="ratio (first / second error rate; lower is better for the first)",
           title=f"Verdict on {split}: ratios with 95 % bootstrap intervals"
                 + ("\n(right: the set size that would decide an undecided claim)"
                    if any(r.get("decided") == "undecided" for r in rows) else ""))
    ax.grid(alpha=0.3, axis="x")


def save_figure(fig, path: Path | str, dpi: int = 120) -> Path:
    """Lay out `fig`, write it to `path` (parent folders made) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _with_metric(results: dict[str, Any], metric: str) -> dict[str, Any]:
    """A copy of `results` whose model rows carry `metric` under "wer" (labels keep saying WER)."""
    tests = {t: {**tr, "models": [{**r, "wer": r.get(metric)} for r in tr["models"] if r.get(metric) is not None]}
             for t, tr in results["tests"].items()}
    return {**results, "tests": tests}


def write_plots(exp_dir: Path, results: dict[str, Any], split: str = "dev", temperature: Optional[float] = None,
                threshold: Optional[float] = None) -> list[Path]:
    """Draw every plot the results allow into EXP/plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = Path(exp_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    split = split if split in results["tests"] else next(iter(results["tests"]))
    metric = results.get("metric", "wer")
    if metric != "wer":  # phone/character models: the plots read the recipe's metric in the "wer" slot
        results = _with_metric(results, metric)
    jobs = [("wer_vs_k.png", (6, 4), lambda ax: plot_wer_vs_k(ax, results, split)),
            ("model_wer.png", (6, 0.8 + 0.28 * len(results["tests"][split]["models"])),
             lambda ax: plot_model_wer(ax, results, split))]
    mass = (results.get("essence") or {}).get("topk_mass")
    if mass:
        jobs.append(("topk_mass.png", (5, 3.5), lambda ax: plot_topk_mass(ax, mass, results.get("chosen_k"), temperature)))
    if results.get("coincidence"):
        jobs.append(("coincidence.png", (5, 3.5), lambda ax: plot_coincidence(ax, results["coincidence"], threshold)))
    claims = (results.get("verdict") or {}).get(split)
    if claims:
        jobs.append(("verdict.png", (7.5, 1.5 + 0.4 * len(claims)), lambda ax: plot_verdict(ax, claims, split)))
    written = []
    for name, size, draw in jobs:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        written.append(save_figure(fig, plots / name))
    return written
