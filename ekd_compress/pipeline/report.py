"""results.json, results.md and the plots of a distill run."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ekd_compress.pipeline.plots import write_plots
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


LEGEND = {
    "baseline": "the student's architecture trained on the transcripts alone (CTC); `baseline_sN` are more seeds. "
                "The best seed on dev is the guide whose spike timings the members follow.",
    "member": "one ensemble member (an architecture of its own), trained with CTC plus a pull toward the guide's "
              "alignment.",
    "ensemble": "the teacher: the members' frame posteriors averaged (with the recipe's or dev-tuned weights).",
    "kd_all": "a student taught the teacher's whole distribution (k = all: ordinary knowledge distillation).",
    "essence_kN": "a student taught only the teacher's top-N tokens per frame (the essence), plus CTC.",
    "control_baseline_teacher": "a student taught by the baseline alone (k = all): how much of the gain comes from "
                                "frame targets as such rather than from the ensemble.",
    "student": "the chosen student (the essence k with the best dev WER, or the recipe's student_k); the same model "
               "as the row it names; `student_sN` are more seeds of it.",
}
SWEEP_LEGEND = {  # rows of a recipe with a size sweep (distill.student_sizes)
    "sweep_NAME": "a student of another size (the recipe's distill.student_sizes), taught like the chosen student; "
                  "`sweep_NAME_sN` are more seeds of it (the compression section below).",
    "sweep_NAME_ctc": "with distill.student_init=guide: a CTC-only model of that size, trained like the baselines; "
                      "`sweep_NAME_ctc_sN` are more seeds; the size's students start from the best of them on dev.",
}
DIVERGED_RATIO = 1.5  # a seed whose WER is above this times the best seed's is flagged


def student_source(results: dict[str, Any]) -> str | None:
    """The row the `student` row repeats (essence_kN or kd_all), from the chosen k."""
    k = results.get("chosen_k")
    return None if k is None else ("kd_all" if str(k) == "all" else f"essence_k{k}")


def legend_markdown(sweep: bool = False) -> str:
    """What each kind of row is; with `sweep`, the size sweep's rows too."""
    legend = {**LEGEND, **(SWEEP_LEGEND if sweep else {})}
    return "What the rows are:\n\n" + "\n".join(f"- `{n}`: {t}" for n, t in legend.items()) + "\n\n"


def flagged_seeds(rows: list[dict[str, Any]], prefix: str, metric: str = "wer") -> list[str]:
    """Seeds of `prefix` whose `metric` is above DIVERGED_RATIO x the best seed's (diverged or stuck)."""
    seeds = {r["name"]: r[metric] for r in rows if (r["name"] == prefix or r["name"].startswith(prefix + "_s"))
             and r.get(metric) is not None}
    if len(seeds) < 2:
        return []
    best = min(seeds.values())
    return [f"{n} {w:.2f}" for n, w in seeds.items() if w > DIVERGED_RATIO * max(best, 1e-9)]


def markdown_table(results: dict[str, Any], temperature: float | None = None) -> str:
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
        shown = f"{n} (= {student_source(results)})" if n == "student" and student_source(results) else n
        lines.append(f"| {shown} | {r0['kind']} | {r0['params']:,} | " + " | ".join(cells) + f" | {r0['rtf']:.4f} | {train_s} |")
    out = ["\n".join(lines), ""]
    spread, flags = [], []
    for prefix in ("baseline", "student"):
        cells = []
        for t in tests:
            s = seed_spread(results["tests"][t]["models"], prefix, metric)
            bad = flagged_seeds(results["tests"][t]["models"], prefix, metric)
            flags += [f"{t}: {b}" for b in bad]
            cells.append((f"{s[0]:.2f} ± {s[1]:.2f} (n={s[2]})" if s else "")
                         + (f" ⚠ {', '.join(b.split()[0] for b in bad)}" if bad else ""))
        spread.append(f"| {prefix} | " + " | ".join(cells) + " |")
    out += [f"Seed spread (mean ± std of {label} %):", "", "| model | " + " | ".join(tests) + " |",
            "|" + " --- |" * (1 + len(tests)), *spread, ""]
    if flags:
        out += [f"⚠ Seeds with WER above {DIVERGED_RATIO}x the best seed's (diverged or stuck on the blank "
                f"plateau; they inflate the mean ± std): {'; '.join(flags)}.", ""]
    if results.get("coincidence"):
        out += ["Spike coincidence with the guide (same token within ±1 frame, dev):", ""]
        out += [f"- {m}: {c['both']:.3f} (member→guide {c['member_to_guide']:.3f}, guide→member {c['guide_to_member']:.3f})"
                for m, c in results["coincidence"].items()]
        out.append("")
    ess = results.get("essence", {})
    if ess:
        mass = ess["topk_mass"]
        at_t = f"T = {temperature:g}" if temperature is not None else "T"
        out.append(f"Teacher top-1/2/4 mass at {at_t}: {mass[0]:.3f} / {mass[min(1, len(mass)-1)]:.3f} / "
                   f"{mass[min(3, len(mass)-1)]:.3f}; blank is top-1 on {ess['blank_top1_share']:.1%} of frames; "
                   "cache bytes per frame: " + ", ".join(f"k={k}: {b:.1f}" for k, b in ess["bytes_per_frame"].items()))
        out.append(f"Chosen student k: {results.get('chosen_k')}")
    return "\n".join(out) + "\n"


def write_report(exp_dir: Path, results: dict[str, Any], recipe) -> None:
    from ekd_compress.pipeline.verdict import verdict_markdown, verdict_sets, verdict_split

    exp_dir = Path(exp_dir)
    split = verdict_split(results["tests"])
    metric = results.get("metric", "wer")
    results["verdict"] = verdict_sets(results)  # verdict_markdown below writes these rows
    write_json_atomic(exp_dir / "results.json", results)
    guide = f"Guide (and control teacher): {results['guide']}.\n\n" if results.get("guide") else ""
    oov = {split: o for split, o in (results.get("oov") or {}).items() if o.get("utterances")}
    for name, o in oov.items():  # not `split`: that names the verdict's set, which the plots read below
        guide += (f"Out-of-lexicon words: {o['utterances']} {name} utterances left out "
                  f"({', '.join(f'{w} x{n}' for w, n in list(o['words'].items())[:10])}).\n\n")
    ens = results.get("ensemble") or {}
    if ens.get("weights"):
        guide += (f"Ensemble weights ({ens.get('method', 'given')}, on {ens.get('tuned_on', 'recipe')}): "
                  f"{[round(w, 3) for w in ens['weights']]}; dropped: {ens.get('dropped', [])}.\n\n")
    first = results.get("first_round_ensemble") or {}
    if first:  # distill.reguide: the members above are the second round's
        unit, on = metric.upper(), first.get("tuned_on", "dev")
        scores = ", ".join(f"{n} {v:.2f}" for n, v in (first.get("member_dev_wer") or {}).items())
        guide += (f"Second round of guidance (distill.reguide): the members above were trained again, guided by the first "
                  f"round's ensemble or best member. The first round's ensemble scored {on} {unit} "
                  f"{dev_score(first.get('dev_wer'))} (its members: {scores or 'not searched'}); the teacher's, "
                  f"{dev_score(ens.get('dev_wer'))}.\n\n")
    plots = write_plots(exp_dir, results, split=split, temperature=recipe.distill.temperature,
                        threshold=recipe.distill.coincidence_threshold)
    compression = ""
    if results.get("compression"):
        from ekd_compress.pipeline.compression import compression_markdown, plot_compression

        compression = "\n" + compression_markdown(results["compression"])
        plots.append(plot_compression(results["compression"], exp_dir / "plots" / "compression.png"))
    (exp_dir / "results.md").write_text(f"# {recipe.name}: results\n\n" + verdict_markdown(results) + guide
                                        + legend_markdown(bool(results.get("compression")))
                                        + "All models, every scored set:\n\n"
                                        + markdown_table(results, recipe.distill.temperature)
                                        + "\nPlots: " + ", ".join(f"plots/{Path(p).name}" for p in plots)
                                        + "\n" + compression)


def dev_score(value: Any) -> str:
    """A dev score from a fusion search, or "-" when the weights were not searched."""
    return "-" if value is None else f"{value:.2f}"

