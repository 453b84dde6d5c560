"""Export and evaluate work from an experiment folder holding only its contract: recipe.yaml,
tokens.txt, models/ and models.json (no features/, no dev audio)."""
import json
import shutil

import pytest

from ekd_compress.export.api import export_bundle
from tests.export.conftest import TEXTS, make_experiment, write_dev_set


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def clean_exp(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("clean") / "exp")
    shutil.rmtree(exp / "features")
    shutil.rmtree(exp / "audio")
    assert sorted(p.name for p in exp.iterdir()) == ["models", "models.json", "recipe.yaml", "tokens.txt"]
    return exp


@pytest.mark.parametrize("model", ["student", "ensemble"])
def test_export_verifies_on_probes_without_dev_audio(clean_exp, tmp_path, model):
    out = export_bundle(clean_exp, model=model, out_dir=tmp_path / model, verify_utterances=4, log=quiet)
    bundle = json.loads((out / "bundle.json").read_text())
    assert bundle["verification"]["on"] == "probe" and bundle["verification"]["utterances"] == 4
    assert bundle["verification"]["max_abs_logprob_diff"] < 1e-3
    assert (out / "model.onnx").stat().st_size > 0


def test_int8_from_a_clean_experiment_says_what_is_missing(clean_exp, tmp_path):
    with pytest.raises(ValueError, match="holds no dev set.*INT8 needs dev audio"):
        export_bundle(clean_exp, model="student", out_dir=tmp_path / "int8", int8=True, verify_utterances=2, log=quiet)


def test_evaluate_scores_a_clean_experiment_on_given_data(clean_exp, tmp_path):
    from ekd_compress.evaluate.on_data import evaluate_on_data

    data = tmp_path / "data"
    cuts = write_dev_set(data, TEXTS[:3])  # a lhotse manifest of three utterances, made here
    out = evaluate_on_data(clean_exp, cuts, log=quiet)
    names = {m["name"] for m in out["models"]}
    assert {"student", "ensemble", "baseline"} <= names
    assert all(m["words"] == sum(len(t.split()) for t in TEXTS[:3]) for m in out["models"])
