"""`ekd-compress lr-find`: the learning-rate range test for the models of a distill experiment.

For each named model (the baseline architecture, which is also the students', and the recipe's
members) the test builds the job `distill` would train (`jobs.baseline_job` / `member_job`:
its recipe settings, first seed, losses; members with the guide's alignment) and runs
`train.lr_range.lr_range_test` on the experiment's prepared training data. Results:
EXP/lr_range/NAME.json per model and EXP/plots/lr_range.png (`plot_lr_range`).
The experiment must have its `features` stage done (and `align` for members): a first
`ekd-compress distill` run, even an interrupted one, makes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from ekd_compress.train.lr_range import LrRange

BASELINE = "baseline"


def _stage_result(exp_dir: Path, name: str, log: Callable[[str], None]) -> dict:
    """The saved result of stage `name` (paths rebased onto `exp_dir`), or a ValueError saying what to run."""
    from ekd_compress.pipeline.stages import StageRunner

    runner = StageRunner(exp_dir, log)
    marker = runner.marker(name)
    if not marker.exists():
        raise ValueError(f"{exp_dir} has no '{name}' stage yet ({marker} is missing): run `ekd-compress distill` on "
                         f"its recipe until that stage is done (it may be stopped after it), then lr-find again")
    result = runner.done(name, json.loads(marker.read_text())["key"])
    assert result is not None  # the key was read from the marker itself
    return result


def find_learning_rates(exp_dir: Path, names: Sequence[str] = (), steps: int = 1000, lr_min: float = 1e-5,
                        lr_max: float = 1.0, threads: int = 0,
                        log: Callable[[str], None] = print) -> list[LrRange]:
    """Range-test each model of `names` (default: the baseline and every member) of the experiment
    in `exp_dir`; writes EXP/lr_range/NAME.json and EXP/plots/lr_range.png, returns the results.

    Args:
        steps, lr_min, lr_max: the test's steps and LR range (train.lr_range.lr_range_test).
        threads: torch CPU threads (0: torch's default, all cores).
    """
    import torch
    from tqdm import tqdm

    from ekd_compress.pipeline.context import Alignment, Context, Features
    from ekd_compress.pipeline.jobs import baseline_job, member_job
    from ekd_compress.recipe import load_recipe
    from ekd_compress.train.lr_range import lr_range_test

    exp_dir = Path(exp_dir)
    recipe_file = exp_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise ValueError(f"{exp_dir} is not a distill experiment (no recipe.yaml); give the folder `distill` wrote")
    r = load_recipe(recipe_file)
    members = {m.name: m for m in r.members}
    names = list(names) or [BASELINE, *members]
    unknown = [n for n in names if n != BASELINE and n not in members]
    if unknown:
        raise ValueError(f"--model {unknown[0]!r} is not a model of {recipe_file}; choose from {[BASELINE, *members]}")
    if threads > 0:
        torch.set_num_threads(threads)
    ctx = Context(r, exp_dir, log)
    ctx.features = Features.from_json(_stage_result(exp_dir, "features", log))
    data = ctx.train_data()
    seed = r.distill.seeds[0]
    # members follow the first round's guide alignment (with distill.reguide the second round's differs)
    align = Alignment.from_json(_stage_result(exp_dir, "align", log)) if set(names) - {BASELINE} else None
    jobs = [baseline_job(r, BASELINE, seed, exp_dir / "lr_range" / BASELINE) if name == BASELINE
            else member_job(r, members[name], name, exp_dir / "lr_range" / name, Path(align.path)) for name in names]
    recipe_lrs = {job.name: job.train.lr for job in jobs}  # a member's own (members[].lr) when it has one
    results = []
    out = exp_dir / "lr_range"
    out.mkdir(exist_ok=True)
    for job in jobs:
        with tqdm(total=steps, desc=f"lr-find {job.name}", unit="step", leave=False) as bar:
            def advance(step: int, lr: float, loss: float, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.1e}", loss=f"{loss:.1f}")

            res = lr_range_test(job, data, lr_min=lr_min, lr_max=lr_max, steps=steps, progress=advance)
        (out / f"{job.name}.json").write_text(json.dumps({**res.to_json(), "recipe_lr": recipe_lrs[job.name]}))
        low, high = res.peak_lr_range
        log(f"{job.name} ({job.arch}): lowest loss at lr {high:.1e}: a peak lr between {low:.1e} and {high:.1e} "
            f"(the recipe's {recipe_lrs[job.name]:.1e}); steepest fall at {res.steepest_lr:.1e}; {len(res.lrs)} "
            f"steps, {res.stopped}, {res.seconds:.0f} s")
        results.append(res)
    plot = plot_lr_range(results, exp_dir / "plots" / "lr_range.png", recipe_lrs)
    log(f"curves: {plot}; per model: {out}/NAME.json")
    return results


def plot_lr_range(results: Sequence[LrRange], path: Path, recipe_lrs: Optional[dict[str, float]] = None) -> Path:
    """Smoothed loss against LR (log x), one curve per model, its peak-LR range shaded, its lowest
    loss marked (o) and the recipe's LR dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ekd_compress.pipeline.plots import save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(results):
        color = f"C{i % 10}"
        low, high = r.peak_lr_range
        ax.plot(r.lrs, r.smoothed, color=color, label=f"{r.name} ({r.arch}): lowest loss at {high:.1e}")
        ax.axvspan(low, high, color=color, alpha=0.08)
        ax.scatter([high], [min(r.smoothed)], color=color, zorder=3)
        if recipe_lrs and r.name in recipe_lrs:
            ax.axvline(recipe_lrs[r.name], color=color, ls="--", lw=1, alpha=0.6)
    top = max(max(r.smoothed[: max(1, len(r.smoothed) // 4)]) for r in results) if results else 1.0
    ax.set(xscale="log", xlabel="learning rate", ylim=(0, top * 1.3),
           ylabel="training loss per target token (smoothed; members: CTC + beta x guide CE)",
           title="Learning-rate range test (shaded: each model's peak-LR range; dashed: the recipe's LR)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
