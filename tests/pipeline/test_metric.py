"""The recipe's primary measure (data.metric): validated against the tokens, used by the
verdict, results.md and checkpoint selection (hence the guide and the student choice)."""
from __future__ import annotations

import pytest

from ekd_compress.recipe import RecipeError, load_recipe

PHONE = ["tokens.kind=phone", "tokens.lexicon=/x/lexicon.txt", "data.metric=per"]


def test_metric_must_fit_the_tokens_and_the_selection():
    r = load_recipe(None, [*PHONE, "train.select_on=per"])
    assert r.data.metric == "per" and r.tokens.kind == "phone" and r.tokens.strip_stress and r.tokens.oov == "report"
    assert load_recipe(None, ["data.metric=cer", "train.select_on=cer"]).data.metric == "cer"
    with pytest.raises(RecipeError, match="phone model writes phones.*data.metric=per"):
        load_recipe(None, ["tokens.kind=phone", "tokens.lexicon=/x"])
    with pytest.raises(RecipeError, match="tokens.kind=phone needs tokens.lexicon"):
        load_recipe(None, ["tokens.kind=phone", "data.metric=per", "train.select_on=per"])
    with pytest.raises(RecipeError, match="data.metric=per needs phone tokens"):
        load_recipe(None, ["data.metric=per"])
    with pytest.raises(RecipeError, match=r"train.select_on=wer but data.metric=per.*train.select_on=per"):
        load_recipe(None, PHONE)  # select_on defaults to wer
    with pytest.raises(RecipeError, match="tokens.oov='drop' is not one of"):
        load_recipe(None, ["tokens.oov=drop"])
    with pytest.raises(RecipeError, match="test_speakers"):
        load_recipe(None, ["data.kaldi.test_speakers=2", "data.kaldi.dev=/some/dir"])
    assert load_recipe(None, [*PHONE, "train.select_on=loss"]).train.select_on == "loss"


def test_new_token_settings_leave_existing_keys_alone():
    """Char/BPE experiments keep their stage keys: the lexicon settings join the key only for phones."""
    from ekd_compress.pipeline.plan import extra_data_key
    from ekd_compress.recipe import config_hash

    char = load_recipe(None)
    assert extra_data_key(char) == []
    assert config_hash(char.tokens) == config_hash(load_recipe(None, ["tokens.strip_stress=false"]).tokens)


def _rows(metric, **values):
    kinds = {"gru": "member", "ensemble": "ensemble", "baseline": "baseline", "student": "student",
             "control_baseline_teacher": "kd", "kd_all": "kd", "essence_k1": "student"}
    return [{"name": n, "kind": kinds[n], "wer": None, "sub": None, "del": None, "ins": None, "params": 1, "rtf": 0.1,
             metric: v, f"{metric}_counts": {"sub": 1, "del": 2, "ins": 3, "units": 100}} for n, v in values.items()]


def test_verdict_and_results_table_read_the_recipes_metric(tmp_path):
    from ekd_compress.pipeline.report import markdown_table
    from ekd_compress.pipeline.verdict import verdict, verdict_markdown

    scores = _rows("per", gru=40.0, ensemble=36.0, baseline=38.0, student=30.0, control_baseline_teacher=33.0,
                   kd_all=31.0, essence_k1=30.0)
    v = {r["claim"]: r for r in verdict(scores, "1", metric="per")}
    assert v["ensemble vs best member"]["ratio"] == pytest.approx(36 / 40) and v["ensemble vs best member"]["metric"] == "per"
    assert v["student vs baseline (seed mean)"]["ratio"] == pytest.approx(30 / 38)
    assert verdict(scores, "1", metric="wer") == []  # phone models have no WER: nothing to judge on it
    results = {"metric": "per", "tests": {"dev": {"models": scores}, "test": {"models": scores}}, "chosen_k": "1"}
    md = verdict_markdown(results)
    assert "Verdict on `test`: PER %" in md and "| claim | PER | vs |" in md
    assert "| student vs ensemble | 30.00 | 36.00 | 0.833 |" in md
    table = markdown_table(results)
    assert "dev PER % (S/D/I)" in table and "| student (= essence_k1) | student | 1 | 30.00 (1/2/3) |" in table
    assert "Seed spread (mean ± std of PER %)" in table


def test_training_selects_checkpoints_on_dev_per(tmp_path):
    """A phone model's fit logs dev_per and keeps the checkpoint with the lowest dev PER."""
    import torch

    from ekd_compress.recipe import SpecAugmentConfig, TrainConfig
    from ekd_compress.contract.lexicon import Lexicon
    from ekd_compress.contract.tokens import TokenTable
    from ekd_compress.train.fit import build, fit_model, load_model
    from ekd_compress.train.module import AsrModule

    lex = Lexicon()
    lex.add("AB", ["A", "B"])
    lex.add("BA", ["B", "A"])
    tokens = TokenTable.build_phones(lex)
    F, g = 8, torch.Generator().manual_seed(0)

    def batch():
        return {"ids": ["u0", "u1"], "texts": ["ab", "ba ab"], "durations": [0.4, 0.4],
                "feats": torch.randn(2, 40, F, generator=g), "lengths": torch.full((2,), 40),
                "targets": torch.tensor([tokens.encode("ab") + [0, 0], tokens.encode("ba ab")]),
                "target_lengths": torch.tensor([2, 4])}

    train, dev = [batch() for _ in range(2)], [batch()]
    cfg = TrainConfig(epochs=2, lr=1e-2, warmup_epochs=0.5, threads=1, accelerator="cpu", select_on="per")
    with pytest.raises(ValueError, match="does not fit phone tokens"):
        AsrModule(build("tdnn", F, len(tokens), {"hidden": 8, "layers": 1}), tokens, cfg, SpecAugmentConfig(enabled=False))
    module = AsrModule(build("tdnn", F, len(tokens), {"hidden": 8, "layers": 1}), tokens, cfg,
                       SpecAugmentConfig(enabled=False), steps_per_epoch=2, metric="per")
    loaders = [torch.utils.data.DataLoader(b, batch_size=None) for b in (train, dev)]
    logged = []
    res = fit_model(module, *loaders, tmp_path / "m", cfg, seed=0, log=logged.append)
    assert any("dev_per=" in line for line in logged) and not any("dev_wer=" in line for line in logged)
    assert 0.0 <= res.best_score <= 200.0
    _, meta = load_model(res.model_path)
    assert meta["select_on"] == "per" and meta["best_score"] == pytest.approx(res.best_score)
