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

`TARGETS` (ekd_compress.recipe.VERDICT_TARGETS) are the ratios the project aims for (issue
"Models that learn"); a recipe's `distill.verdict_targets` replaces some (results.json keeps
them as "verdict_targets"). A claim
is met when its ratio is at most its target. Each ratio also gets a 95 % interval from the
paired bootstrap over the set's utterances (ekd_compress.evaluate.bootstrap): a few hundred
test words cannot tell a 0.9 from a 1.1, and the interval says when the set decides a claim.
When it does not, the verdict also says how many times larger a set would have to be to decide
it, if its utterances failed as this set's do (draws of 2, 4, ... 64 x N utterances; an
extrapolation that keeps the present ratio, so it sizes a test set rather than predicting one).
The verdict is read on the internal test split (`test`, never looked at by any choice) when
the experiment has one; a verdict on dev says so, because dev selected checkpoints, the
student k and the fusion weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ekd_compress.evaluate.bootstrap import RESAMPLES, bootstrap_rates, interval
from ekd_compress.recipe import VERDICT_TARGETS

TARGETS = VERDICT_TARGETS  # the defaults; the claims in the order the tables list them
DECIDING_SCALES = (2, 4, 8, 16, 32, 64)  # set sizes, in multiples of the scored set, tried for an undecided claim


def _seeds(by: dict[str, Any], prefix: str) -> list[str]:
    """Names of the seeds of `prefix` in `by` (`prefix`, `prefix_s1`, ...)."""
    return [n for n in by if n == prefix or n.startswith(prefix + "_s")]


def best_essence_k(chosen_k: Optional[str], dev_models: list[dict[str, Any]], metric: str = "wer") -> Optional[str]:
    """The essence k (< all) the verdict judges: the chosen student's k, or, when the choice on
    dev was k = all (ordinary KD), the essence k with the lowest dev error rate."""
    if chosen_k not in (None, "all"):
        return chosen_k
    ks = {r["name"][len("essence_k"):]: float(r[metric]) for r in dev_models
          if r["name"].startswith("essence_k") and r.get(metric) is not None}
    return min(ks, key=ks.get) if ks else None


def verdict(models: list[dict[str, Any]], chosen_k: Optional[str],
            dev_models: Optional[list[dict[str, Any]]] = None, metric: str = "wer",
            resamples: int = RESAMPLES, targets: Optional[dict[str, float]] = None) -> list[dict[str, Any]]:
    """models: one scored set's rows ({"name", "kind", metric}) -> one row per claim that the
    experiment can judge: {"claim", "wer", "vs", "ratio", "target", "met", "metric", "ci95",
    "decided", "decides_at"}, where "wer" and "vs" hold the two error rates in `metric` (percent; the
    key names predate the metric). "ci95" is the 95 % interval of the ratio over `resamples` paired
    bootstrap draws of the set's utterances (ekd_compress.evaluate.bootstrap), and "decided" says
    whether that interval lies at or below the target ("met"), above it ("not met") or around it
    ("undecided"). "decides_at" is {"scale", "decided"}: the smallest set size, in multiples of this
    set (1, then `DECIDING_SCALES`), whose interval would decide the claim were its utterances to fail
    as these do, and how; scale None when even 64 x would not. All three are None for rows without
    per-utterance counts. `dev_models` (the dev rows) picks the essence k when the chosen student is
    k = all. `targets` replaces some of `TARGETS`."""
    targets = {**TARGETS, **(targets or {})}
    by = {r["name"]: float(r[metric]) for r in models if r.get(metric) is not None}
    members = [r["name"] for r in models if r["kind"] == "member" and r["name"] in by]
    k = best_essence_k(chosen_k, dev_models or [], metric)
    point = _claims(by, members, k)
    scored = [r for r in models if r["name"] in by]

    def spread_at(scale: int) -> dict[str, tuple[Any, Any]]:
        drawn = bootstrap_rates(scored, metric, resamples, scale=scale) if resamples else None
        return _claims(drawn, members, k) if drawn is not None else {}

    spread = spread_at(1)
    rows = []
    for claim, (wer, vs) in point.items():
        ratio = float(_ratio(np.float64(wer), np.float64(vs)))
        target = targets[claim]
        ci = decided = decides_at = None
        if claim in spread:
            ci = list(interval(_ratio(*spread[claim])))
            decided = _decision(ci, target)
            decides_at = {"scale": 1 if decided != "undecided" else None, "decided": decided}
        rows.append({"claim": claim, "wer": float(wer), "vs": float(vs), "ratio": ratio, "target": target,
                     "met": ratio <= target + 1e-9, "metric": metric, "ci95": ci, "decided": decided,
                     "decides_at": decides_at})
    for scale in DECIDING_SCALES:
        open_rows = [r for r in rows if r["decides_at"] and r["decides_at"]["scale"] is None]
        if not open_rows:
            break
        larger = spread_at(scale)
        for r in open_rows:
            decided = _decision(list(interval(_ratio(*larger[r["claim"]]))), r["target"])
            if decided != "undecided":
                r["decides_at"] = {"scale": scale, "decided": decided}
    return rows


def _decision(ci: list[float], target: float) -> str:
    """Whether a ratio's interval lies at or below `target` ("met"), above it ("not met") or around it."""
    return "met" if ci[1] <= target + 1e-9 else "not met" if ci[0] > target + 1e-9 else "undecided"


def _claims(by: dict[str, Any], members: list[str], k: Optional[str]) -> dict[str, tuple[Any, Any]]:
    """{claim: (first, second)} for every claim whose two error rates `by` can give. The values of
    `by` are floats (the scored rates) or (R,) arrays (bootstrap draws): seed means and the best
    member are taken per draw."""
    def mean(names: list[str]):
        return np.mean(np.stack([by[n] for n in names]), axis=0) if names else None

    def least(names: list[str]):
        return np.min(np.stack([by[n] for n in names]), axis=0) if names else None

    students, baselines = _seeds(by, "student"), _seeds(by, "baseline")
    student = mean(students)
    pairs = [
        ("ensemble vs best member", by.get("ensemble"), least(members)),
        ("student vs ensemble", student, by.get("ensemble")),
        ("student vs baseline (seed mean)", student, mean(baselines)),
        ("student vs baseline (best seed)", student, least(baselines)),
        ("student vs control", student, by.get("control_baseline_teacher")),
    ]
    if k is not None:
        pairs.append(("best essence k vs KD-all", by.get(f"essence_k{k}"), by.get("kd_all")))
    return {claim: (a, b) for claim, a, b in pairs if a is not None and b is not None}


def _ratio(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first / second elementwise; x / 0 is 0 for x = 0 and infinite otherwise."""
    safe = np.where(second > 0, second, 1.0)
    return np.where(second > 0, first / safe, np.where(first == 0, 0.0, np.inf))


def verdict_split(tests: dict[str, Any]) -> str:
    """The scored set the verdict is read on: `test` (internal, untouched by choices) if present."""
    if "test" in tests:
        return "test"
    others = [t for t in tests if t != "dev" and "noisy" not in t]
    return others[0] if others else "dev"


def verdict_table(rows: list[dict[str, Any]], where: str, label: str = "WER") -> str:
    """One scored set's verdict rows (from `verdict`) as a Markdown table under a heading line."""
    out = [f"Verdict on {where}: {label} %, ratio = first / second, met when ratio <= target; "
           "95 % interval of the ratio over paired bootstrap draws of the utterances, and whether it "
           "decides the claim (test-set noise only: the seed spreads show training noise); when it does not, "
           "how many times larger a set would decide it if its utterances failed as these do", "",
           f"| claim | {label} | vs | ratio | target | met | 95 % interval | decided by the set | set to decide |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['claim']} | {r['wer']:.2f} | {r['vs']:.2f} | {r['ratio']:.3f} | <= {r['target']:g} | "
            f"{'yes' if r['met'] else '**no**'} | {_interval_text(r.get('ci95'))} | {r.get('decided') or 'n/a'} | "
            f"{_scale_text(r.get('decides_at'))} |"
            for r in rows]
    return "\n".join(out)


def verdict_on_data(scored: dict[str, Any], exp_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """The verdict on another scored set: `scored` is an `evaluate --json` object ({"data", "metric",
    "models"}) of the experiment in `exp_dir`, whose results.json, when there is one, gives the chosen
    student k and the dev rows that pick the essence k -> (verdict rows, Markdown table; "" when the
    set's models cannot judge any claim)."""
    import json

    from ekd_compress.evaluate.error_rates import LABELS

    metric = scored.get("metric", "wer")
    results_file = Path(exp_dir) / "results.json"
    exp_results = json.loads(results_file.read_text()) if results_file.exists() else {}
    dev = (exp_results.get("tests") or {}).get("dev", {}).get("models")
    rows = verdict(scored["models"], exp_results.get("chosen_k"), dev, metric,
                   targets=exp_results.get("verdict_targets"))
    return rows, (verdict_table(rows, f"`{scored['data']}`", LABELS[metric]) if rows else "")


def verdict_sets(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{split: verdict rows} for the verdict's split (`verdict_split`) and its noisy copies, as
    results.json keeps them under "verdict"."""
    tests = results["tests"]
    main = verdict_split(tests)
    dev = tests.get("dev", {}).get("models")
    return {t: verdict(tests[t]["models"], results.get("chosen_k"), dev, results.get("metric", "wer"),
                       targets=results.get("verdict_targets"))
            for t in [main] + [t for t in tests if t.startswith(main + "_noisy")]}


def verdict_markdown(results: dict[str, Any]) -> str:
    """The verdict tables (the main split, and its noisy copy when scored) as Markdown: the rows of
    results["verdict"] (`verdict_sets`), computed here when results has none."""
    from ekd_compress.evaluate.error_rates import LABELS

    label = LABELS[results.get("metric", "wer")]
    out = []
    for split, rows in (results.get("verdict") or verdict_sets(results)).items():
        if not rows:
            continue
        caveat = "" if split != "dev" else " (dev also selected checkpoints, k and fusion weights: flattering)"
        out += [verdict_table(rows, f"`{split}`{caveat}", label), ""]
    restarts = results.get("restarts") or {}
    if restarts:
        out += ["Runs restarted by the convergence watchdog (stuck seeds, not averaged in):", ""]
        for name, attempts in restarts.items():
            out += [_attempt_line(name, a, "stopped at", label) for a in attempts]
        out.append("")
    unconverged = results.get("unconverged") or {}
    if unconverged:
        out += ["Runs that failed the watchdog on their last allowed seed (kept: no restart was left; "
                "not converged, and in every mean above):", ""]
        out += [_attempt_line(name, a, "at", label) for name, a in unconverged.items()]
        out.append("")
    return "\n".join(out) + ("\n" if out else "")  # a blank line ends the table or list before what follows


def _attempt_line(name: str, a: dict[str, Any], verb: str, label: str) -> str:
    """One watchdog finding (train.watchdog.StalledAttempt as a dict) as a list item."""
    return (f"- {name}: seed {a['seed']} {verb} epoch {a['epoch']} (dev {label} {a['dev_wer']:.1f} %, "
            f"{a['dev_blank']:.0%} of dev empty): {a['reason']}")


def _interval_text(ci: Optional[list[float]]) -> str:
    return "n/a" if not ci else f"{ci[0]:.2f}–{ci[1]:.2f}"


def _scale_text(decides_at: Optional[dict[str, Any]]) -> str:
    """"this set", "4× (not met)" or "> 64×" for a verdict row's "decides_at"; "n/a" without counts."""
    if not decides_at:
        return "n/a"
    if decides_at["scale"] is None:
        return f"> {DECIDING_SCALES[-1]}×"
    return "this set" if decides_at["scale"] == 1 else f"{decides_at['scale']}× ({decides_at['decided']})"
