"""Data stage: the recipe's corpus -> lhotse CutSets (train, dev, test sets) + tokens.txt.

Every corpus goes through a Kaldi data dir and `load_kaldi_dir`, so validation (file
and line in every error, skip counts) is the same for all of them.
"""
from __future__ import annotations

import random
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lhotse import CutSet

from ekd_compress.data.kaldi import load_kaldi_dir
from ekd_compress.data.text import get_normalizer
from ekd_compress.experiment import save_cuts
from ekd_compress.recipe import Recipe, RecipeError, extra_speed_factors
from ekd_compress.contract.tokens import TokenTable

NOISE_POOL = "noise_pool"  # EXP/data/fsdd/noise_pool: data.fsdd.train_noise_fly's noise

if TYPE_CHECKING:  # pragma: no cover
    from ekd_compress.contract.lexicon import Lexicon


def corpus_dirs(recipe: Recipe, work: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(train/dev Kaldi dirs, test-set Kaldi dirs) for the recipe's corpus, building them if needed."""
    d = recipe.data
    work = Path(work)
    tests: dict[str, Path] = {}
    if d.corpus == "synthetic":
        from ekd_compress.data.synthetic import COMMANDS_FILE, WORDS_FILE, make_synthetic_corpus

        s = d.synthetic
        commands = s.vocabulary == "commands"
        dirs = make_synthetic_corpus(
            work / "synthetic", hours=s.hours, dev_hours=s.dev_hours, test_hours=s.test_hours, seed=recipe.seed,
            sampling_rate=d.sample_rate, snr_db_range=(s.snr_db_low, s.snr_db_high), reverb=s.reverb,
            words_file=COMMANDS_FILE if commands else WORDS_FILE, min_words=s.min_words, max_words=s.max_words,
            random_fraction=1.0 if commands else 0.3,
        )
        splits = {"train": dirs["train"], "dev": dirs["dev"]}
        tests["test"] = dirs["test"]
    elif d.corpus == "fsdd":
        from ekd_compress.data.fsdd import make_digit_strings, make_noise_pool, prepare_fsdd, scan_fsdd, split_fsdd

        f = d.fsdd
        if not Path(f.root).exists():
            raise RecipeError(
                f"data.fsdd.root={f.root} does not exist; get FSDD (CC BY-SA 4.0): git clone "
                "https://github.com/Jakobovski/free-spoken-digit-dataset DIR/fsdd (it holds recordings/"
                "{digit}_{speaker}_{index}.wav), then set EKD_DATA=DIR or --set data.fsdd.root=DIR/fsdd (README: Data)")
        indices = dict(train_indices=list(f.train_indices), dev_indices=list(f.dev_indices),
                       test_indices=list(f.test_indices))
        dirs = prepare_fsdd(f.root, work / "fsdd", seed=recipe.seed, n_train=f.n_train, n_dev=f.n_dev,
                            n_test=f.n_test, sampling_rate=d.sample_rate, **indices)
        splits = {"train": dirs["train"], "dev": dirs["dev"]}
        if "test" in dirs:  # the internal test split: no choice looks at it
            tests["test"] = dirs["test"]
        recs = split_fsdd(scan_fsdd(f.root), by="index", **indices)
        for i, (snr, noise) in enumerate(f.train_noise if f.train_noise_strings > 0 else []):
            name = f"train_{noise}{snr:g}db"
            strings = partial(make_digit_strings, recs["train"], n_strings=f.train_noise_strings,
                              seed=recipe.seed + 100 + i, noise=str(noise), sampling_rate=d.sample_rate, prefix=name)
            splits[name] = strings(work / "fsdd" / name, snr_db=float(snr))
            if f.train_noise_fly:  # the same strings without noise: mixed afresh each epoch (mark_noisy_parts)
                strings(work / "fsdd" / f"{name}_clean", snr_db=None)
        if f.train_noise_fly and f.train_noise_strings > 0:
            make_noise_pool(recs["train"], work / "fsdd" / NOISE_POOL, [str(n) for _, n in f.train_noise],
                            seed=recipe.seed + 99, sampling_rate=d.sample_rate)
        if f.noisy_dev_snr_db is not None:  # the same kind of strings with white noise at this SNR
            noisy = {"dev": (f.n_dev, recipe.seed + 7), "test": (f.n_test, recipe.seed + 8)}
            for split, (n, seed) in noisy.items():
                if n > 0:
                    name = f"{split}_noisy{f.noisy_dev_snr_db:g}db"
                    tests[name] = make_digit_strings(recs[split], work / "fsdd" / name, n_strings=n, seed=seed,
                                                     snr_db=f.noisy_dev_snr_db, sampling_rate=d.sample_rate,
                                                     prefix=name)
    elif d.corpus == "kaldi":
        if not d.kaldi.train:
            raise RecipeError("data.corpus=kaldi needs data.kaldi.train (a Kaldi data dir)")
        splits = {"train": Path(d.kaldi.train)}
        if d.kaldi.dev:
            splits["dev"] = Path(d.kaldi.dev)
    elif d.corpus == "switchboard":
        splits = {}  # prepared as CutSets directly, see load_splits
    else:  # validated in the recipe, kept for safety
        raise RecipeError(f"data.corpus={d.corpus!r} is unknown")
    tests.update({name: Path(p) for name, p in d.tests.items()})
    return splits, tests


def split_by_speaker(cuts: CutSet, n_dev_speakers: int, seed: int) -> tuple[CutSet, CutSet]:
    """Carve a dev set of `n_dev_speakers` whole speakers out of `cuts`."""
    speakers = sorted({c.supervisions[0].speaker for c in cuts})
    if n_dev_speakers >= len(speakers):
        raise RecipeError(
            f"{n_dev_speakers} speakers to hold out (data.kaldi.dev_speakers + test_speakers) but the set has only "
            f"{len(speakers)} speakers; lower them"
        )
    dev_spk = set(random.Random(seed).sample(speakers, n_dev_speakers))
    dev = cuts.filter(lambda c: c.supervisions[0].speaker in dev_spk).to_eager()
    train = cuts.filter(lambda c: c.supervisions[0].speaker not in dev_spk).to_eager()
    return train, dev


def prepare_data(recipe: Recipe, exp_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build and validate all splits; write `data/*.jsonl.gz` and `tokens.txt`. Returns paths + reports."""
    d = recipe.data
    exp_dir = Path(exp_dir)
    work = exp_dir / "data"
    work.mkdir(parents=True, exist_ok=True)
    normalize = get_normalizer(d.text_norm)
    common = dict(text_normalizer=normalize, sampling_rate=d.sample_rate, on_error=d.on_error)
    audio_root = Path(d.kaldi.audio_root) if d.kaldi.audio_root else None
    reports: dict[str, str] = {}

    oov = {}
    if d.corpus == "switchboard":
        from ekd_compress.data.switchboard import prepare_switchboard_corpus

        sw = d.switchboard
        prepared = prepare_switchboard_corpus(sw.swbd_root, sw.eval2000_root, work / "swbd", transcripts_dir=sw.transcripts_dir)
        tests = {k: v for k, v in prepared.items() if k not in ("train", "dev")}
        train, reports["train"] = filter_duration(prepared["train"], d.min_duration, d.max_duration)
        dev, reports["dev"] = filter_duration(prepared["dev"], 0.0, d.max_duration)  # as for a Kaldi dev dir
        train = train.resample(d.sample_rate)
        if d.max_train_utts:
            train = train.subset(first=min(d.max_train_utts, len(train)))
        if recipe.tokens.kind == "phone":
            train, oov["train"] = drop_out_of_lexicon(train, load_lexicon(recipe), "train", recipe.tokens.oov, log)
        tokens = build_tokens(recipe, train, exp_dir)
        for name, path in d.tests.items():  # the recipe's extra test sets, scored like eval2000
            tests[name], rep = load_kaldi_dir(Path(path), audio_root=audio_root, **common)
            reports[name] = rep.summary()
    else:
        splits, test_dirs = corpus_dirs(recipe, work)
        train, rep = load_kaldi_dir(
            splits["train"], min_duration=d.min_duration, max_duration=d.max_duration, audio_root=audio_root, **common
        )
        reports["train"] = rep.summary()
        for name in [k for k in splits if k.startswith("train_")]:  # extra (e.g. noisy) training parts
            extra, rep = load_kaldi_dir(splits[name], min_duration=d.min_duration, max_duration=d.max_duration,
                                        audio_root=audio_root, **common)
            reports[name] = rep.summary()
            if d.corpus == "fsdd" and d.fsdd.train_noise_fly:
                extra = mark_noisy_part(extra, splits[name], work / "fsdd" / NOISE_POOL, log)
            train = (train + extra).to_eager()
        held_test = None
        if "dev" not in splits:
            n_test = d.kaldi.test_speakers if d.corpus == "kaldi" else 0
            train, held = split_by_speaker(train, d.kaldi.dev_speakers + n_test, recipe.seed)
            dev, held_test = split_by_speaker(held, n_test, recipe.seed + 1) if n_test else (held, None)
        if d.max_train_utts:
            train = train.subset(first=min(d.max_train_utts, len(train)))
        oov: dict[str, Any] = {}
        if recipe.tokens.kind == "phone":
            train, oov["train"] = drop_out_of_lexicon(train, load_lexicon(recipe), "train", recipe.tokens.oov, log)
        tokens = build_tokens(recipe, train, exp_dir)
        allowed = tokens.chars or None
        if "dev" not in splits:
            if tokens.kind == "phone":
                dev, oov["dev"] = drop_out_of_lexicon(dev, tokens.lexicon, "dev", recipe.tokens.oov, log)
            dev = drop_untokenizable(dev, tokens, d.on_error, log)
        if "dev" in splits:
            dev, rep = load_kaldi_dir(
                splits["dev"], allowed_chars=allowed, audio_root=audio_root, max_duration=d.max_duration, **common
            )
            reports["dev"] = rep.summary()
        tests = {"test": held_test} if held_test is not None else {}
        for name, path in test_dirs.items():
            # test references are scored as they are: no character filter, nothing skipped for it
            tests[name], rep = load_kaldi_dir(path, audio_root=audio_root, **common)
            reports[name] = rep.summary()

    train = speed_perturb(train, d.speed_perturb, log)
    paths = {"train": work / "train_cuts.jsonl.gz", "dev": work / "dev_cuts.jsonl.gz"}
    save_cuts(train, paths["train"], exp_dir)
    save_cuts(dev, paths["dev"], exp_dir)
    test_paths = {}
    for name, cuts in tests.items():
        test_paths[name] = str(work / f"test_{name}_cuts.jsonl.gz")
        save_cuts(cuts, test_paths[name], exp_dir)
    for name, summary in reports.items():
        log(f"data {name}: {summary}")
    hours = {"train": sum(c.duration for c in train) / 3600, "dev": sum(c.duration for c in dev) / 3600}
    return {
        "train": str(paths["train"]), "dev": str(paths["dev"]), "tests": test_paths,
        "tokens": str(exp_dir / "tokens.txt"), "vocab_size": len(tokens), "reports": reports,
        "utterances": {"train": len(train), "dev": len(dev), **{k: len(v) for k, v in tests.items()}},
        "hours": hours, "oov": oov,
    }


def speed_perturb(cuts: CutSet, factors: list[float], log: Callable[[str], None] = print) -> CutSet:
    """`cuts` plus one speed-perturbed copy per factor != 1 (lhotse resamples the audio when the
    features are computed; ids gain `_sp<factor>`). Bad factors: `recipe.extra_speed_factors`."""
    from ekd_compress.data.noise_pool import unmarked

    extra = extra_speed_factors(factors)
    if not extra:
        return cuts
    out = cuts
    for f in extra:
        out = out + cuts.perturb_speed(f).map(unmarked)  # their audio no longer matches a clean twin
    out = out.to_eager()
    log(f"data train: speed perturbation {extra}: {len(cuts)} -> {len(out)} utterances")
    return out


def mark_noisy_part(cuts: CutSet, noisy_dir: Path, pool: Path, log: Callable[[str], None] = print) -> CutSet:
    """Mark the cuts of an FSDD noisy part `train_{noise}{snr}db` to be mixed afresh every epoch
    from its clean twin `{noisy_dir}_clean` and `pool` (``ekd_compress.data.noise_pool``)."""
    from ekd_compress.data.fsdd import babble_kind
    from ekd_compress.data.noise_pool import mark_for_mixing

    m = re.fullmatch(r"train_([a-z]+)(-?[0-9.]+)db", noisy_dir.name)
    if m is None:
        raise ValueError(f"{noisy_dir.name!r} is not an FSDD noisy part name (train_{{noise}}{{snr}}db)")
    noise, snr = m.group(1), float(m.group(2))

    def kind(cut: Any) -> str:
        return babble_kind(cut.supervisions[0].speaker) if noise == "babble" else noise

    marked = mark_for_mixing(cuts, noisy_dir.parent / f"{noisy_dir.name}_clean", pool, kind, snr)
    log(f"data {noisy_dir.name}: {len(marked)} strings get fresh {noise} noise at {snr:g} dB every epoch "
        f"(pool {pool})")
    return marked


def filter_duration(cuts: CutSet, low: float, high: float) -> tuple[CutSet, str]:
    """Cuts with low <= duration <= high (seconds), and a summary that counts the rest."""
    kept = cuts.filter(lambda c: low <= c.duration <= high).to_eager()
    n, k = len(cuts), len(kept)
    return kept, f"{n} utterances, kept {k} ({sum(c.duration for c in kept) / 3600:.3f} h), " \
                  f"dropped {n - k} outside [{low:g}, {high:g}] s"


def load_lexicon(recipe: Recipe) -> "Lexicon":
    """The recipe's pronunciation lexicon (tokens.lexicon), stress digits stripped if tokens.strip_stress."""
    from ekd_compress.contract.lexicon import Lexicon

    path = Path(recipe.tokens.lexicon or "")
    if not path.is_file():
        raise RecipeError(f"tokens.lexicon={recipe.tokens.lexicon!r} is not a file; give a `WORD PH1 PH2 ...` lexicon "
                          "(set EKD_DATA or --set tokens.lexicon=PATH)")
    return Lexicon.load(path, strip_stress_digits=recipe.tokens.strip_stress)


def drop_out_of_lexicon(cuts: CutSet, lexicon: "Lexicon", split: str, policy: str,
                        log: Callable[[str], None]) -> tuple[CutSet, dict[str, Any]]:
    """Phone targets need every word in the lexicon. policy "fail": raise naming the words;
    "report": leave the utterances out, log and return the counts (never silently).

    Returns (kept cuts, {"utterances": left out, "words": {word: occurrences}}).
    """
    texts = {c.id: " ".join(s.text for s in c.supervisions if s.text) for c in cuts}
    counts = lexicon.oov_counts(texts.values())
    if not counts:
        return cuts, {"utterances": 0, "words": {}}
    bad = {uid for uid, t in texts.items() if any(w not in lexicon for w in t.split())}
    listing = ", ".join(f"{w} x{n}" for w, n in counts.most_common(10)) + (" ..." if len(counts) > 10 else "")
    message = (f"{split}: {len(bad)} of {len(texts)} utterances hold {sum(counts.values())} words missing from the "
               f"lexicon {lexicon.source} ({len(counts)} distinct: {listing})")
    if policy == "fail":
        raise ValueError(f"{message}; add them to the lexicon, or set tokens.oov=report to leave those utterances "
                         "out of training")
    log(f"WARNING {message}; left out of {split} (tokens.oov=report)")
    kept = cuts.filter(lambda c: c.id not in bad).to_eager()
    return kept, {"utterances": len(bad), "words": dict(counts.most_common())}


def drop_untokenizable(cuts: CutSet, tokens: TokenTable, on_error: str, log: Callable[[str], None]) -> CutSet:
    """A dev set carved from train may hold characters the (smaller) train part lacks, or,
    for phone tokens, words missing from the lexicon."""
    bad = []
    for c in cuts:
        try:
            tokens.encode(" ".join(s.text for s in c.supervisions))
        except ValueError as e:
            if on_error == "raise":
                raise ValueError(f"dev utterance {c.id}: {e} (or set data.on_error=skip)") from None
            bad.append(c.id)
    if bad:
        what = "words missing from the lexicon" if tokens.kind == "phone" else "characters unseen in train"
        log(f"dev: skipped {len(bad)} utterances with {what}, e.g. {bad[:3]}")
    return cuts.filter(lambda c: c.id not in set(bad)).to_eager() if bad else cuts


def build_tokens(recipe: Recipe, train: CutSet, exp_dir: Path) -> TokenTable:
    texts = [" ".join(s.text for s in c.supervisions) for c in train]
    if recipe.tokens.kind == "bpe":
        table = TokenTable.build_bpe(texts, recipe.tokens.vocab_size, exp_dir)
    elif recipe.tokens.kind == "phone":  # save() also writes the (stress-stripped) lexicon.txt beside tokens.txt
        table = TokenTable.build_phones(load_lexicon(recipe))
    else:
        table = TokenTable.build_chars(texts)
    table.save(exp_dir / "tokens.txt")
    return table
