"""Speed perturbation of the training split: copies, ids, durations, audio, keys and errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from ekd_compress.data import load_kaldi_dir
from ekd_compress.pipeline.data_prep import speed_perturb
from ekd_compress.pipeline.plan import extra_data_key
from ekd_compress.recipe import RecipeError, load_recipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


def _cuts(tmp_path, write_wav):
    d = tmp_path / "train"
    write_wav(d / "a.wav", 1.0, 16000)
    write_wav(d / "b.wav", 2.0, 16000, freq=300.0)
    (d / "wav.scp").write_text("a a.wav\nb b.wav\n")
    (d / "text").write_text("a one\nb two\n")
    (d / "utt2spk").write_text("a s1\nb s2\n")
    cuts, _ = load_kaldi_dir(d, text_normalizer="lower")
    return cuts


def test_each_factor_adds_a_resampled_copy(tmp_path, write_wav):
    cuts = _cuts(tmp_path, write_wav)
    lines: list[str] = []
    out = speed_perturb(cuts, [0.9, 1.0, 1.1], log=lines.append)
    assert len(out) == 6  # 1.0 adds nothing
    by_id = {c.id: c for c in out}
    assert set(by_id) == {"a", "b", "a_sp0.9", "b_sp0.9", "a_sp1.1", "b_sp1.1"}
    # slower speech is longer: 2 s at 0.9 -> 2.222 s; the transcript and speaker are kept
    assert math.isclose(by_id["b_sp0.9"].duration, 2.0 / 0.9, abs_tol=1e-3)
    assert math.isclose(by_id["b_sp1.1"].duration, 2.0 / 1.1, abs_tol=1e-3)
    assert by_id["b_sp0.9"].supervisions[0].text == "two"
    assert by_id["b_sp0.9"].supervisions[0].speaker == "s2"
    assert by_id["a_sp1.1"].load_audio().shape[1] == round(16000 / 1.1)
    assert lines == ["data train: speed perturbation [0.9, 1.1]: 2 -> 6 utterances"]


def test_no_factor_changes_nothing(tmp_path, write_wav):
    cuts = _cuts(tmp_path, write_wav)
    assert speed_perturb(cuts, [], log=pytest.fail) is cuts
    assert speed_perturb(cuts, [1.0], log=pytest.fail) is cuts


@pytest.mark.parametrize("factors, message", [([0.4], "out of range"), ([3.0], "out of range"),
                                              ([0.9, 0.9], "repeats a factor")])
def test_bad_factors_are_named(tmp_path, write_wav, factors, message):
    with pytest.raises(ValueError, match=message):
        speed_perturb(_cuts(tmp_path, write_wav), factors)


def test_data_key_changes_only_when_perturbing():
    plain = load_recipe(DEMO, [])
    assert extra_data_key(plain) == []  # keys of existing experiments stay as they were
    sp = load_recipe(DEMO, ["data.speed_perturb=[0.9,1.1]"])
    assert extra_data_key(sp) == [{"speed_perturb": [0.9, 1.1]}]


@pytest.mark.parametrize("value", ["[0.3]", "[0.9,0.9]"])
def test_recipe_refuses_bad_factors_at_load(value):
    """Refused when the recipe is read, before any stage runs, with the key named."""
    with pytest.raises(RecipeError, match=r"data\.speed_perturb"):
        load_recipe(DEMO, [f"data.speed_perturb={value}"])
