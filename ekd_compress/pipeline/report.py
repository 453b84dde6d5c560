"""results.json, results.md and the plots of a distill run."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ekd_compress.evaluate.error_rates import LABELS, metric_counts, metric_of
from ekd_compress.pipeline.stages import write_json_atomic

ORDER = {"member": 0, "ensemble": 1, "baseline": 2, "kd": 3, "student": 4}


def seed_spread(rows: list[dict[str, Any]], prefix: str, metric: str = "wer") -> tuple[float, float, int] | None:
    """(mean, std, n) of `metric` (percent) over `prefix` and `prefix_s*` rows."""
    wers = [r[metric] for r in rows if (r["name"] == prefix or r["name"].startswith(prefix + "_s"))
            and r.get(metric) is not None]
    if not wers:
        return None
    return statistics.mean(wers), (statistics.stdev(wers) if len(wers) > 1 else 0.0), len(wers)


def markdown_table(results: dict[str, Any]) -> str:
    tests = list(results["tests"])
    first = results["tests"][tests[0]]["models"]
    names = [r["name"] for r in sorted(first, key=lambda r: (ORDER[r["kind"]], r["name"]))]
    by = {t: {r["name"]: r for r in results["tests"][t]["models"]} for t in tests}
    secs = results.get("train_seconds", {})
    metric = results.get("metric", "wer")
    label = LABELS[metric]
    head = "| model | kind | params | " + " | ".join(f"{t} {label} % (S/D/I)" for t in tests) + " | RTF | train s |"
    lines = [head, "|" + " --- |" * (5 + len(tests))]

    def cell(row: dict[str, Any]) -> str:
        value, counts = metric_of(row, metric), metric_counts(row, metric)
        if value is None:
            return "n/a"
        return f"{value:.2f}" + (f" ({counts[0]}/{counts[1]}/{counts[2]})" if counts else "")

    for n in names:
        r0 = by[tests[0]][n]
        cells = [cell(by[t][n]) for t in tests]
        train_s = f"{secs[n]:.0f}" if n in secs else ""
        lines.append(f"| {n} | {r0['kind']} | {r0['params']:,} | " + " | ".join(cells) + f" | {r0['rtf']:.4f} | {train_s} |")
    out = ["\n".join(lines), ""]
    spread = []
    for prefix in ("baseline", "student"):
        cells = []
        for t in tests:
            s = seed_spread(results["tests"][t]["models"], prefix, metric)
            cells.append(f"{s[0]:.2f} ± {s[1]:.2f} (n={s[2]})" if s else "")
        spread.append(f"| {prefix} | " + " | ".join(cells) + " |")
    out += [f"Seed spread (mean ± std of {label} %):", "", "| model | " + " | ".join(tests) + " |",
            "|" + " --- |" * (1 + len(tests)), *spread, ""]
    if results.get("coincidence"):
        out += ["Spike coincidence with the guide (same token within ±1 frame, dev):", ""]
        out += [f"- {m}: {c['both']:.3f} (member→guide {c['member_to_guide']:.3f}, guide→member {c['guide_to_member']:.3f})"
                for m, c in results["coincidence"].items()]
        out.append("")
    ess = results.get("essence", {})
    if ess:
        mass = ess["topk_mass"]
        out.append(f"Teacher top-1/2/4 mass at T: {mass[0]:.3f} / {mass[min(1, len(mass)-1)]:.3f} / "
                   f"{mass[min(3, len(mass)-1)]:.3f}; blank is top-1 on {ess['blank_top1_share']:.1%} of frames; "
                   "cache bytes per frame: " + ", ".join(f"k={k}: {b:.1f}" for k, b in ess["bytes_per_frame"].items()))
        out.append(f"Chosen student k: {results.get('chosen_k')}")
    return "\n".join(out) + "\n"


def write_plots(exp_dir: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = Path(exp_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    ess = results.get("essence")
    if ess:
        mass = ess["topk_mass"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(range(1, len(mass) + 1), mass, marker="o")
        ax.set(xlabel="k", ylabel="average cumulative top-k probability", title="Teacher essence (paper Fig. 1)",
               xscale="log", ylim=(min(mass) - 0.02, 1.005))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(plots / "topk_mass.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    vocab = len(ess["topk_mass"]) if ess else 0  # x position of k = all
    metric = results.get("metric", "wer")
    for t, tr in results["tests"].items():
        pts = []
        for r in tr["models"]:
            if r.get(metric) is None:
                continue
            if r["name"].startswith("essence_k"):
                pts.append((int(r["name"][len("essence_k"):]), r[metric]))
            elif r["name"] == "kd_all" and vocab:
                pts.append((vocab, r[metric]))
        pts.sort()
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t)
    ax.set(xlabel="k (top-k essence; last point = all)", ylabel=f"{LABELS[metric]} %",
           title=f"Student {LABELS[metric]} against k", xscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(plots / "wer_vs_k.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    if results.get("coincidence"):
        names = list(results["coincidence"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(names, [results["coincidence"][n]["both"] for n in names])
        ax.set(ylabel="share of spikes matching the guide (±1 frame)", ylim=(0, 1), title="Spike coincidence")
        fig.tight_layout()
        written.append(plots / "coincidence.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def write_report(exp_dir: Path, results: dict[str, Any], recipe) -> None:
    from ekd_compress.pipeline.verdict import verdict, verdict_markdown, verdict_split

    exp_dir = Path(exp_dir)
    split = verdict_split(results["tests"])
    dev = results["tests"].get("dev", {}).get("models")
    metric = results.get("metric", "wer")
    results["verdict"] = {t: verdict(results["tests"][t]["models"], results.get("chosen_k"), dev, metric)
                          for t in results["tests"] if t == split or t.startswith(split + "_noisy")}
    write_json_atomic(exp_dir / "results.json", results)
    guide = f"Guide (and control teacher): {results['guide']}.\n\n" if results.get("guide") else ""
    oov = {split: o for split, o in (results.get("oov") or {}).items() if o.get("utterances")}
    for split, o in oov.items():
        guide += (f"Out-of-lexicon words: {o['utterances']} {split} utterances left out "
                  f"({', '.join(f'{w} x{n}' for w, n in list(o['words'].items())[:10])}).\n\n")
    ens = results.get("ensemble") or {}
    if ens.get("weights"):
        guide += (f"Ensemble weights ({ens.get('method', 'given')}, on {ens.get('tuned_on', 'recipe')}): "
                  f"{[round(w, 3) for w in ens['weights']]}; dropped: {ens.get('dropped', [])}.\n\n")
    (exp_dir / "results.md").write_text(f"# {recipe.name}: results\n\n" + verdict_markdown(results) + guide
                                        + "All models, every scored set:\n\n" + markdown_table(results))
    write_plots(exp_dir, results)
