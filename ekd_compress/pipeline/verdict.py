"""The verdict: does the method pay on this experiment? Computed from the scored numbers.

Each claim compares two error rates on one scored set as a ratio (lower is better for the first),
in the experiment's metric (results["metric"]: WER, CER or PER; WER for results made before it):

  ensemble vs best member        ensemble / min(member WERs)
  student vs ensemble            student (seed mean) / ensemble
  student vs baseline (mean)     student (seed mean) / baseline (seed mean)
  student vs baseline (best)     student (seed mean) / min(baseline seeds)
  student vs control             student (seed mean) / control_baseline_teacher
  best essence k vs KD-all       essence_k<k> / kd_all, k the chosen student's (or, when dev
                                 chose k = all, the essence k with the best dev WER)

`TARGETS` are the ratios the project aims for (issue "Models that learn"); a claim
is met when its ratio is at most its target. The verdict is read on the internal test
split (`test`, never looked at by any choice) when the experiment has one; a verdict on
dev says so, because dev selected checkpoints, the student k and the fusion weights.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional

TARGETS = {
    "ensemble vs best member": 0.85,
    "student vs ensemble": 0.8,
    "student vs baseline (seed mean)": 0.6,
    "student vs baseline (best seed)": 1.0,
    "student vs control": 0.9,
    "best essence k vs KD-all": 1.0,
}


def _seeds(by: dict[str, float], prefix: str) -> list[float]:
    return [w for n, w in by.items() if n == prefix or n.startswith(prefix + "_s")]


def best_essence_k(chosen_k: Optional[str], dev_models: list[dict[str, Any]], metric: str = "wer") -> Optional[str]:
    """The essence k (< all) the verdict judges: the chosen student's k, or, when the choice on
    dev was k = all (ordinary KD), the essence k with the lowest dev error rate."""
    if chosen_k not in (None, "all"):
        return chosen_k
    ks = {r["name"][len("essence_k"):]: float(r[metric]) for r in dev_models
          if r["name"].startswith("essence_k") and r.get(metric) is not None}
    return min(ks, key=ks.get) if ks else None


def verdict(models: list[dict[str, Any]], chosen_k: Optional[str],
            dev_models: Optional[list[dict[str, Any]]] = None, metric: str = "wer") -> list[dict[str, Any]]:
    """models: one scored set's rows ({"name", "kind", metric}) -> one row per claim that the
    experiment can judge: {"claim", "wer", "vs", "ratio", "target", "met", "metric"}, where "wer"
    and "vs" hold the two error rates in `metric` (percent; the key names predate the metric).
    `dev_models` (the dev rows) picks the essence k when the chosen student is k = all."""
    by = {r["name"]: float(r[metric]) for r in models if r.get(metric) is not None}
    members = [by[r["name"]] for r in models if r["kind"] == "member" and r["name"] in by]
    students, baselines = _seeds(by, "student"), _seeds(by, "baseline")
    student = statistics.mean(students) if students else None
    pairs: list[tuple[str, Optional[float], Optional[float]]] = [
        ("ensemble vs best member", by.get("ensemble"), min(members) if members else None),
        ("student vs ensemble", student, by.get("ensemble")),
        ("student vs baseline (seed mean)", student, statistics.mean(baselines) if baselines else None),
        ("student vs baseline (best seed)", student, min(baselines) if baselines else None),
        ("student vs control", student, by.get("control_baseline_teacher")),
    ]
    k = best_essence_k(chosen_k, dev_models or [], metric)
    if k is not None:
        pairs.append(("best essence k vs KD-all", by.get(f"essence_k{k}"), by.get("kd_all")))
    rows = []
    for claim, wer, vs in pairs:
        if wer is None or vs is None:
            continue
        ratio = wer / vs if vs > 0 else (0.0 if wer == 0 else float("inf"))
        rows.append({"claim": claim, "wer": wer, "vs": vs, "ratio": ratio, "target": TARGETS[claim],
                     "met": ratio <= TARGETS[claim] + 1e-9, "metric": metric})
    return rows


def verdict_split(tests: dict[str, Any]) -> str:
    """The scored set the verdict is read on: `test` (internal, untouched by choices) if present."""
    if "test" in tests:
        return "test"
    others = [t for t in tests if t != "dev" and "noisy" not in t]
    return others[0] if others else "dev"


def verdict_markdown(results: dict[str, Any]) -> str:
    """The verdict tables (the main split, and its noisy copy when scored) as Markdown."""
    from ekd_compress.evaluate.error_rates import LABELS

    tests = results["tests"]
    metric = results.get("metric", "wer")
    label = LABELS[metric]
    main = verdict_split(tests)
    splits = [main] + [t for t in tests if t.startswith(main + "_noisy")]
    out = []
    for split in splits:
        rows = verdict(tests[split]["models"], results.get("chosen_k"), tests.get("dev", {}).get("models"), metric)
        if not rows:
            continue
        caveat = "" if split != "dev" else " (dev also selected checkpoints, k and fusion weights: flattering)"
        out += [f"Verdict on `{split}`{caveat}: {label} %, ratio = first / second, met when ratio <= target", "",
                f"| claim | {label} | vs | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r['claim']} | {r['wer']:.2f} | {r['vs']:.2f} | {r['ratio']:.3f} | <= {r['target']:g} | "
                f"{'yes' if r['met'] else '**no**'} |" for r in rows]
        out.append("")
    restarts = results.get("restarts") or {}
    if restarts:
        out += ["Runs restarted by the convergence watchdog (stuck seeds, not averaged in):", ""]
        for name, attempts in restarts.items():
            for a in attempts:
                out.append(f"- {name}: seed {a['seed']} stopped at epoch {a['epoch']} (dev {label} {a['dev_wer']:.1f} %, "
                           f"{a['dev_blank']:.0%} of dev empty): {a['reason']}")
        out.append("")
    return "\n".join(out)
