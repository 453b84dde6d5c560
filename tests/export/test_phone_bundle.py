"""A phone model end to end after training: its experiment scores PER (`evaluate --json`),
its bundle carries the lexicon, and the torch-free runtime reads it back and writes phones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import NUM_BINS, SAMPLE_RATE, TEXTS, write_dev_set

from ekd_compress.contract.lexicon import Lexicon
from ekd_compress.serve.decode import flashlight_available

LEXICON = "ONE W AH1 N\nTWO T UW1\nTHREE TH R IY1\nFOUR F AO1 R\nFIVE F AY1 V\nSIX S IH1 K S\n" \
          "SEVEN S EH1 V AH0 N\nEIGHT EY1 T\nNINE N AY1 N\nZERO Z IH1 R OW0\nZERO Z IY1 R OW0\n"


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def phone_exp(tmp_path_factory) -> Path:
    """EXP with a phone recipe (tokens.kind=phone, data.metric=per), a tiny TDNN student and a dev set."""
    from ekd_compress.experiment import record_model
    from ekd_compress.recipe import load_recipe, save_recipe
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.fit import build, save_model

    root = tmp_path_factory.mktemp("phone")
    (root / "lexicon.txt").write_text(LEXICON)
    exp = root / "exp"
    recipe = load_recipe(None, ["tokens.kind=phone", f"tokens.lexicon={root / 'lexicon.txt'}", "data.metric=per",
                                "train.select_on=per", f"features.num_mel_bins={NUM_BINS}",
                                f"data.sample_rate={SAMPLE_RATE}", "tracking.enabled=false"])
    save_recipe(recipe, exp / "recipe.yaml")
    tokens = TokenTable.build_phones(Lexicon.load(root / "lexicon.txt"))
    tokens.save(exp / "tokens.txt")
    torch.manual_seed(0)
    model = build("tdnn", NUM_BINS, len(tokens), {"hidden": 32, "layers": 2}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # peaky outputs, so the transcripts hold phones
    path = save_model(model, exp / "models" / "student" / "model.pt", {"name": "student", "kind": "student"})
    record_model(exp, "student", "student", path)
    write_dev_set(exp)
    return exp


def test_phone_experiment_evaluates_on_per(phone_exp):
    from ekd_compress.evaluate.on_data import evaluate_on_data

    out = evaluate_on_data(phone_exp, phone_exp / "features" / "dev_cuts.jsonl.gz", log=quiet)
    assert out["metric"] == "per"
    row = out["models"][0]
    assert row["wer"] is None and row["cer"] is None and {"sub", "del", "ins", "words", "rtf"} <= set(row)
    # the dev texts are digit words; their first pronunciations give the reference phones
    lex = Lexicon.load(phone_exp / "lexicon.txt")
    units = sum(len(lex.transcribe(t)[0]) for t in TEXTS)
    assert row["per_counts"]["units"] == units and row["per_counts"]["oov_words"] == 0
    c = row["per_counts"]
    assert row["per"] == pytest.approx(100.0 * (c["sub"] + c["del"] + c["ins"]) / units)
    json.dumps(out, allow_nan=False)  # null, not NaN: valid JSON


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text with KenLM is not installed")
def test_phone_experiment_scores_words_from_phones(phone_exp, tmp_path):
    """`evaluate --words`: an n-gram of the training transcripts (speed-perturbed copies left out) and
    the lexicon turn phone posteriors into words; rows keep their PER and gain a word WER and CER."""
    import shutil

    from lhotse import load_manifest

    from ekd_compress.evaluate.lexicon_words import training_texts
    from ekd_compress.evaluate.on_data import evaluate_on_data

    exp = tmp_path / "exp"
    shutil.copytree(phone_exp, exp)
    dev = exp / "features" / "dev_cuts.jsonl.gz"
    with pytest.raises(FileNotFoundError, match="train_cuts.jsonl.gz does not exist"):
        training_texts(exp)
    cuts = load_manifest(dev)
    (exp / "data").mkdir()
    # resampled originals are kept, speed-perturbed copies left out
    (cuts.resample(2 * SAMPLE_RATE) + cuts.perturb_speed(0.9)).to_file(exp / "data" / "train_cuts.jsonl.gz")
    assert sorted(training_texts(exp)) == sorted(TEXTS)

    plain = evaluate_on_data(exp, dev, log=quiet)["models"][0]
    out = evaluate_on_data(exp, dev, log=quiet, words=dict(order=2, lm_weight=1.0, word_score=0.0, beam=16))
    row = out["models"][0]
    assert out["words"]["train_sentences"] == len(TEXTS) and out["words"]["order"] == 2
    assert Path(out["words"]["lm"]).is_file() and out["words"]["lexicon_words"] == 10
    assert row["per"] == plain["per"] and row["per_counts"] == plain["per_counts"]  # the phones are scored as before
    assert row["words"] == sum(len(t.split()) for t in TEXTS)
    assert row["wer"] == pytest.approx(100.0 * (row["sub"] + row["del"] + row["ins"]) / row["words"])
    per_utt = row["utterances"]["wer"]
    assert len(per_utt) == len(TEXTS) and sum(n for _, n in per_utt) == row["words"]
    assert sum(e for e, _ in per_utt) == row["sub"] + row["del"] + row["ins"]
    assert row["cer"] is not None and row["cer_counts"]["units"] == sum(len(t.replace(" ", "")) for t in TEXTS)
    json.dumps(out, allow_nan=False)

    # weights tuned per model on a tuning set (here the same utterances)
    tuned = evaluate_on_data(exp, dev, log=quiet, words=dict(order=2, beam=16, tune_on=dev))
    weights = tuned["models"][0]["words_weights"]
    assert tuned["words"]["tune_on"] == str(dev) and tuned["words"]["lm_weight"] is None
    assert weights["tried"] == 15 and weights["tune_wer"] == pytest.approx(tuned["models"][0]["wer"])

    # the command: the JSON carries the LM settings, word-level rows and the verdict on words
    from click.testing import CliRunner

    from ekd_compress.cli.main import cli

    res = CliRunner().invoke(cli, ["evaluate", str(exp), "--data", str(dev), "--words", "--lm-order", "2",
                                   "--lm-weight", "1.0", "--beam", "16", "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    assert printed["words"]["order"] == 2 and printed["models"][0]["wer"] == row["wer"]
    assert "verdict_words" in printed and "verdict" in printed


def test_phone_bundle_round_trip_and_runtime_transcript(phone_exp, tmp_path):
    from ekd_compress.contract.ctc_decode import ctc_greedy_decode
    from ekd_compress.features.fbank import feature_spec
    from ekd_compress.experiment import load_any
    from ekd_compress.recipe import load_recipe
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.export.api import export_bundle, load_dev_utterances
    from ekd_compress.contract.bundle import Bundle, read_bundle
    from ekd_compress.serve.runtime import Recognizer

    out = export_bundle(phone_exp, model="student", out_dir=tmp_path / "bundle", verify_utterances=3, log=quiet)
    meta = read_bundle(out)
    assert meta["token_kind"] == "phone" and meta["files"]["lexicon"] == "lexicon.txt"
    assert meta["provenance"]["metric"] == "per" and meta["provenance"]["dev_wer"] is None
    assert (out / "lexicon.txt").read_text() == (phone_exp / "lexicon.txt").read_text()
    assert "ZERO Z IH R OW\nZERO Z IY R OW\n" in (out / "lexicon.txt").read_text()  # stress stripped, variants kept

    b = Bundle.load(out)
    assert b.tokens.kind == "phone" and b.tokens.tokens == TokenTable.load(phone_exp / "tokens.txt").tokens
    # the runtime's offline transcript of each dev utterance is the torch model's greedy phone string
    import soundfile as sf

    recipe = load_recipe(phone_exp / "recipe.yaml")
    model = load_any(phone_exp / "models" / "student" / "model.pt")
    dev = load_dev_utterances(phone_exp, feature_spec(recipe.features, recipe.data.sample_rate), 3)
    rec = Recognizer(out)
    phones = set(b.tokens.tokens[1:])
    nonempty = 0
    for i, u in enumerate(dev):
        with torch.no_grad():
            lp, n = model(torch.from_numpy(u.feats)[None], torch.tensor([u.feats.shape[0]]))
        expected = b.tokens.decode(ctc_greedy_decode(lp.numpy(), n.numpy())[0])
        audio, sr = sf.read(phone_exp / "audio" / f"utt{i}.wav", dtype="float32")
        segs = rec.recognize(audio, sr)
        text = " ".join(s.text for s in segs if s.text)
        assert text == expected
        assert set(text.split()) <= phones
        words = [w.word for s in segs for w in s.words]
        assert words == text.split()  # one entry per phone
        nonempty += bool(text)
    assert nonempty > 0

    # a phone bundle without its lexicon is refused with the fix
    (out / "lexicon.txt").unlink()
    from ekd_compress.contract.bundle import BundleError

    with pytest.raises(BundleError, match="lexicon"):
        Bundle.load(out)
