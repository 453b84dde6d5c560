"""A tiny experiment directory, laid out as `ekd-compress distill` writes it, for the export tests.

Randomly initialised small models of every architecture, an ensemble of three, tokens.txt,
recipe.yaml (40 mel bins, tracking off) and a dev CutSet of short synthetic wav files
(tones + noise) whose fbank is computed on the fly, so verification runs on real audio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

NUM_BINS = 40
SAMPLE_RATE = 16000
TEXTS = ["one two", "three", "four five six", "seven", "eight nine", "zero one"]

# name -> (arch, params, kind); small sizes keep the suite fast
SMALL_MODELS = {
    "baseline": ("gru", {"hidden": 32, "layers": 2}, "baseline"),
    "student": ("gru", {"hidden": 24, "layers": 1}, "student"),
    "lstm": ("lstm", {"hidden": 32, "layers": 2}, "member"),
    "tdnn": ("tdnn", {"hidden": 32, "layers": 3}, "member"),
    "transformer": ("transformer", {"hidden": 32, "heads": 2, "layers": 2}, "member"),
}
ENSEMBLE = ("lstm", "tdnn", "transformer")


def write_dev_set(exp_dir: Path, texts=TEXTS, seed: int = 0) -> Path:
    """Short wav files (0.4-1.3 s of tones and noise) -> EXP/features/dev_cuts.jsonl.gz (no stored features)."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    rng = np.random.default_rng(seed)
    wav_dir = exp_dir / "audio"
    wav_dir.mkdir(parents=True, exist_ok=True)
    recordings, supervisions = [], []
    for i, text in enumerate(texts):
        seconds = 0.4 + 0.18 * i
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        audio = 0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        path = wav_dir / f"utt{i}.wav"
        sf.write(str(path), audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=f"utt{i}")
        recordings.append(rec)
        supervisions.append(SupervisionSegment(id=f"utt{i}", recording_id=rec.id, start=0.0,
                                               duration=rec.duration, text=text))
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings),
                                 supervisions=SupervisionSet.from_segments(supervisions))
    target = exp_dir / "features" / "dev_cuts.jsonl.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    cuts.to_file(target)
    return target


def make_experiment(exp_dir: Path, models: dict = SMALL_MODELS, ensemble=ENSEMBLE, seed: int = 0) -> Path:
    """Build EXP with `models` (name -> (arch, params, kind)) and, if given, an ensemble of those names."""
    from ekd_compress.experiment import record_model, save_ensemble
    from ekd_compress.recipe import load_recipe, save_recipe
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.fit import build, save_model

    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(None)
    recipe.features.num_mel_bins = NUM_BINS
    recipe.data.sample_rate = SAMPLE_RATE
    recipe.tracking.enabled = False
    save_recipe(recipe, exp_dir / "recipe.yaml")
    tokens = TokenTable.build_chars(TEXTS)
    tokens.save(exp_dir / "tokens.txt")
    torch.manual_seed(seed)
    paths = {}
    for name, (arch, params, kind) in models.items():
        model = build(arch, NUM_BINS, len(tokens), params).eval()
        with torch.no_grad():  # larger random weights: peakier, more varied outputs than the default init
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
        paths[name] = save_model(model, exp_dir / "models" / name / "model.pt", {"name": name, "kind": kind})
        record_model(exp_dir, name, kind, paths[name])
    if ensemble:
        path = save_ensemble(exp_dir / "models" / "ensemble.json", [paths[n] for n in ensemble], None)
        record_model(exp_dir, "ensemble", "ensemble", path)
    write_dev_set(exp_dir)
    return exp_dir


@pytest.fixture(scope="session")
def experiment(tmp_path_factory) -> Path:
    """One shared tiny experiment; tests export into their own directories (pass out_dir)."""
    return make_experiment(tmp_path_factory.mktemp("exp") / "exp")


@pytest.fixture
def make_exp():
    """`make_exp(dir, models=[names of SMALL_MODELS])` -> a fresh experiment with just those models."""

    def _make(exp_dir: Path, models=tuple(SMALL_MODELS)) -> Path:
        chosen = {name: SMALL_MODELS[name] for name in models}
        return make_experiment(exp_dir, chosen, ensemble=ENSEMBLE if set(ENSEMBLE) <= set(chosen) else ())

    return _make
