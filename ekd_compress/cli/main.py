"""`ekd-compress` command line: thin click wrappers, one library call each.

The group and the training-side commands (distill, evaluate, recipe, data-bench, train-bench)
are here; export is in export_cmd.py, serve and bench in serve_cmd.py; every command reports
errors through errors.py. Heavy libraries (torch, lhotse, mlflow) are imported inside the
commands, so `ekd-compress --help` answers at once.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ekd_compress import __version__
from ekd_compress.cli.errors import UserError, friendly
from ekd_compress.cli.extras import needs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ekd-compress")
def cli() -> None:
    """Essence knowledge distillation: train a CTC ensemble, distil its top-k essence into
    one streaming student, and evaluate them."""


_recipe_arg = click.argument("recipe", metavar="RECIPE")
_set_opt = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe value, e.g. --set train.epochs=3 (repeatable).")


@cli.command()
@_recipe_arg
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Experiment directory (default: the recipe's out_dir).")
@_set_opt
@click.option("--no-mlflow", is_flag=True, help="Do not track the run in MLflow.")
@click.option("--fresh", is_flag=True, help="Delete the experiment directory first instead of resuming.")
@click.option("--resume", is_flag=True,
              help="Update an experiment made with a different recipe in place (only the stages the change affects "
                   "re-run). Without it such a folder is refused; the same recipe always resumes.")
@needs("train")
def distill(recipe: str, out_dir: Path | None, overrides: tuple[str, ...], no_mlflow: bool, fresh: bool,
            resume: bool) -> None:
    """Run every stage of RECIPE (a YAML file, or a bundled recipe's name: demo, fsdd, ...): data,
    features, guide, members, ensemble, essence cache, students, evaluation, report. Re-running
    the same recipe resumes and re-does only what is missing."""
    from ekd_compress.pipeline.distill import clean_experiment, run_distill
    from ekd_compress.recipe import load_recipe
    from ekd_compress.recipe_files import check_out_dir

    from ekd_compress.train.distributed import dist_info

    r = friendly(load_recipe, recipe, overrides)
    target = out_dir or Path(r.out_dir)
    main_rank = dist_info().is_main  # under torchrun: rank 0 deletes and reports; the ranks meet in run_distill
    if fresh and main_rank:
        friendly(clean_experiment, target)
    elif not fresh:
        friendly(check_out_dir, r, target, resume=resume)
    friendly(run_distill, r, target, tracking=not no_mlflow)
    if main_rank:
        click.echo(f"results: {target / 'results.md'}")


@cli.command()
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(exists=True, path_type=Path),
              help="A Kaldi data dir (wav.scp, text, utt2spk) or a lhotse CutSet manifest (.jsonl.gz).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of a table: {data, metric (the recipe's primary measure), models: "
                   "[{name, kind, params, wer, sub, del, ins, words, cer, cer_counts, utterances (per-utterance "
                   "[errors, units] per measure, with ids), rtf; per, per_counts for phone "
                   "models, whose wer and cer are null unless --words}], words (the word LM, with --words), "
                   "verdict (the experiment's claims on DATA, when every model was scored; verdict_words too with "
                   "--words)}.")
@click.option("--model", "names", multiple=True, help="Score only these models (repeatable; default: all).")
@click.option("--scoring", type=click.Choice(["plain", "swbd"]), default="plain", show_default=True,
              help="swbd: GLM-style normalisation with the swbd/callhome split (eval2000).")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="Bad utterances in DATA stop the run, or are skipped and counted.")
@click.option("--words", is_flag=True,
              help="Phone models: also decode words (lexicon + word n-gram of the training transcripts, "
                   "flashlight-text) and report their WER and CER beside the PER.")
@click.option("--lm-order", default=3, show_default=True, type=click.IntRange(2, 6),
              help="--words: n-gram order (KenLM needs 2 or more).")
@click.option("--lm-weight", default=1.0, show_default=True, type=float, help="--words: weight of the word LM.")
@click.option("--word-score", default=0.0, show_default=True, type=float, help="--words: score added per word.")
@click.option("--beam", default=32, show_default=True, type=click.IntRange(min=1), help="--words: beam size.")
@click.option("--tune-words-on", "tune_on", type=click.Path(exists=True, path_type=Path), default=None,
              help="--words: choose each model's LM weight and word score on this set (dev: a Kaldi dir or "
                   "manifest) instead of --lm-weight/--word-score.")
@needs("train")
def evaluate(exp_dir: Path, data: Path, as_json: bool, names: tuple[str, ...], scoring: str, on_error: str,
             words: bool, lm_order: int, lm_weight: float, word_score: float, beam: int, tune_on: Path | None) -> None:
    """Score every model of EXP_DIR on DATA, normalising text as the experiment's recipe does, then
    read the experiment's verdict on DATA (when every model was scored)."""
    from ekd_compress.evaluate.on_data import evaluate_on_data
    from ekd_compress.pipeline.verdict import verdict_on_data

    if words and scoring == "swbd":
        raise click.UsageError("--words scores plain text; drop --scoring swbd (phone models have no GLM rules)")
    if tune_on is not None and not words:
        raise click.UsageError("--tune-words-on tunes the word decoder: add --words")
    word_opts = None
    if words:
        word_opts = dict(order=lm_order, lm_weight=lm_weight, word_score=word_score, beam=beam)
        if tune_on is not None:
            word_opts["tune_on"] = tune_on
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    result = friendly(evaluate_on_data, exp_dir, data, names=list(names) or None, scoring=scoring,
                       on_error=on_error, log=log, words=word_opts)
    if not names:  # the claims compare models, so only a full scoring judges them
        result["verdict"], table = verdict_on_data(result, exp_dir)
        if table:
            log("\n" + table)
        if words:  # the same claims on the words decoded from phones
            result["verdict_words"], table = verdict_on_data({**result, "metric": "wer"}, exp_dir)
            if table:
                log("\n" + table)
    if as_json:
        click.echo(json.dumps(result))


@cli.command("data-bench")
@click.option("-n", "--utterances", "n", default=100_000, show_default=True, type=click.IntRange(min=10),
              help="Utterances in the large corpus.")
@click.option("--fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Also measure a corpus this share of the size, to compare peak memory.")
@click.option("--work-dir", default=Path("/tmp/ekd_scale_bench"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where the corpora (about 11 kB per utterance) go.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Result JSON (default: WORK_DIR/scale_bench.json).")
@click.option("--max-duration", default=120.0, show_default=True, type=float, help="Seconds of audio per batch.")
@click.option("--num-workers", default=0, show_default=True, type=int, help="DataLoader worker processes.")
@click.option("--seconds", nargs=2, type=float, default=(1.0, 2.0), show_default=True,
              help="Shortest and longest utterance, seconds.")
@click.option("--keep", is_flag=True, help="Keep the generated corpora.")
@click.option("--eager", is_flag=True,
              help="Load the manifests eagerly, features cached (the small-corpus path), for comparison.")
@click.option("--in-process", is_flag=True, help="Run every phase in this process (peak memory then accumulates).")
@needs("train")
def data_bench(n: int, fraction: float, work_dir: Path, out: Path | None, max_duration: float, num_workers: int,
               seconds: tuple[float, float], keep: bool, eager: bool, in_process: bool) -> None:
    """Time data preparation and one epoch of training-batch loading over a lazy manifest of N
    generated utterances (and of N*FRACTION), with each phase's peak memory."""
    from ekd_compress.data.scale_bench import format_table, run_scale_bench

    result = friendly(run_scale_bench, n, work_dir, fraction=fraction, isolate=not in_process, keep=keep, out=out,
                       max_duration=max_duration, num_workers=num_workers, min_seconds=seconds[0],
                       max_seconds=seconds[1], lazy=not eager)
    click.echo(format_table(result))
    click.echo(f"results: {result['json']}")
    if not result["complete"]:
        raise UserError("an epoch did not yield every utterance exactly once; see 'complete' in the JSON")


@cli.group()
def recipe() -> None:
    """Inspect recipes: the bundled ones, and any recipe resolved with its overrides."""


@recipe.command("show")
@_recipe_arg
@_set_opt
@click.option("--keys", is_flag=True, help="One line per settable key: key = value (type).")
@needs("train", preload=())  # recipe files need only pyyaml
def recipe_show(recipe: str, overrides: tuple[str, ...], keys: bool) -> None:
    """Print RECIPE (a file or a bundled name) fully resolved: defaults filled in, --set applied,
    ${...} expanded; what `distill` would run."""
    from ekd_compress.recipe import load_recipe
    from ekd_compress.recipe_files import show_recipe

    click.echo(show_recipe(friendly(load_recipe, recipe, overrides), keys=keys))


@recipe.command("list")
@needs("train", preload=())  # recipe files need only pyyaml
def recipe_list() -> None:
    """The recipes `distill NAME` finds, with their files and first comment line."""
    from ekd_compress.recipe_files import bundled_recipes

    found = bundled_recipes()
    if not found:
        raise UserError("no recipes found; set EKD_RECIPES to a folder of recipe files")
    width = max(len(n) for n in found)
    for name, path in found.items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        click.echo(f"{name.ljust(width)}  {path}  {first[:70] + '...' if len(first) > 73 else first}")


@cli.command("train-bench")
@_recipe_arg
@click.option("--model", "which", default="baseline", show_default=True,
              help="baseline (the student architecture) or a member's name from the recipe.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", default="auto", show_default=True, help="auto (bf16-mixed on CUDA), bf16-mixed, 16-mixed, 32-true.")
@click.option("--batch-seconds", type=float, default=None, help="Audio per step (default: the recipe's train.max_duration).")
@click.option("--utt-seconds", type=float, default=8.0, show_default=True, help="Length of each utterance.")
@click.option("--steps", type=int, default=30, show_default=True, help="Timed training steps.")
@click.option("--threads", type=int, default=None,
              help="Torch CPU threads (default: all cores); compare 1 and 2 to choose train.parallel_jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@needs("train")
def train_bench(recipe: str, which: str, device: str, precision: str, batch_seconds: float | None,
                utt_seconds: float, steps: int, threads: int | None, as_json: bool) -> None:
    """Training throughput of one recipe model on random features: input frames per second,
    GPU utilisation and peak GPU memory (on CUDA)."""
    from ekd_compress.recipe import load_recipe
    from ekd_compress.train.throughput import measure_throughput

    r = friendly(load_recipe, recipe)
    models = {"baseline": (r.baseline.arch, r.baseline.params), **{m.name: (m.arch, m.params) for m in r.members}}
    if which not in models:
        raise UserError(f"--model {which!r} is not in {recipe}; choose one of {sorted(models)}")
    arch, params = models[which]
    res = friendly(measure_throughput, arch, dict(params), device=device, precision=precision,
                    batch_seconds=batch_seconds or r.train.max_duration, utt_seconds=utt_seconds, steps=steps,
                    num_mel_bins=r.features.num_mel_bins, threads=threads)
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    util = "n/a" if res.gpu_utilization_mean is None else f"{res.gpu_utilization_mean:.0f} %"
    click.echo(f"{which} ({res.arch}, {res.params:,} params) on {res.device} {res.precision}: "
               f"{res.frames_per_second:,.0f} frames/s = {res.audio_seconds_per_second:,.0f} s of audio per s; "
               f"{res.batch_utterances} utterances x {utt_seconds:g} s per step; {res.threads} thread(s); "
               f"GPU utilisation {util}")


@cli.command("lr-find")
@click.argument("exp_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "names", multiple=True,
              help="baseline (the student architecture) or a member's name (repeatable; default: all of them).")
@click.option("--steps", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Optimiser steps from --lr-min to --lr-max (CTC models need about 1,000 to leave the blank "
                   "plateau).")
@click.option("--lr-min", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True)
@click.option("--lr-max", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Torch CPU threads (0: all cores).")
@needs("train")
def lr_find(exp_dir: Path, names: tuple[str, ...], steps: int, lr_min: float, lr_max: float, threads: int) -> None:
    """Learning-rate range test (Smith 2017) for the models of the distill experiment EXP_DIR: each
    trains briefly from scratch while the LR rises geometrically; a peak LR belongs between a decade
    below the LR of the lowest loss and that LR. Writes EXP_DIR/lr_range/NAME.json and
    EXP_DIR/plots/lr_range.png."""
    from ekd_compress.pipeline.lr_find import find_learning_rates

    friendly(find_learning_rates, exp_dir, names, steps=steps, lr_min=lr_min, lr_max=lr_max, threads=threads,
             log=click.echo)


from ekd_compress.cli.export_cmd import export  # noqa: E402  (light: heavy imports inside)
from ekd_compress.cli.serve_cmd import bench, serve  # noqa: E402

cli.add_command(export)
cli.add_command(serve)
cli.add_command(bench)


def main() -> None:  # pragma: no cover
    cli(prog_name="ekd-compress")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
