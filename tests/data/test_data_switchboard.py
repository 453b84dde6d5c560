"""Switchboard + eval2000 through lhotse's recipes, on a tiny fake LDC tree with NIST SPHERE audio."""
from __future__ import annotations

import shutil

import pytest

from ekd_compress.data import DataError, load_switchboard_cuts, prepare_switchboard_corpus

MS98 = {
    "A": [
        "{c}A-ms98-a-0001 0.000000 0.400000 [silence]",
        "{c}A-ms98-a-0002 0.400000 1.600000 hi um-hum [laughter-yes] th[e]- okay",
        "{c}A-ms98-a-0003 1.600000 2.200000 [noise]",
        "{c}A-ms98-a-0004 2.200000 2.900000 [be]cause i_1 know",
    ],
    "B": [
        "{c}B-ms98-a-0001 0.000000 1.000000 yeah {weirdo} uh",
        "{c}B-ms98-a-0002 1.000000 2.500000 [vocalized-noise] right",
    ],
}

EVAL = """#Language: eng
#File id: {fid}
#Starting at 0 Ending at 3
# 0 1 #BEGIN

0.10 1.20 A: %um, <contraction e_form="[we=>we]['re=>are]">we're starting {{breath}}

1.00 2.10 B: mhm ((sure))

2.20 2.80 A: {{lipsmack}}
"""


@pytest.fixture
def ldc(tmp_path, write_wav) -> dict:
    swbd = tmp_path / "LDC97S62"
    for conv in ("02001", "02005", "02010"):
        write_wav(swbd / "swb1_d1" / "data" / f"sw{conv}.sph", 3.0, 8000, channels=2, format="NIST")
        name = f"sw{conv.lstrip('0')}"
        for side, lines in MS98.items():
            f = tmp_path / "swb_ms98_transcriptions" / conv[1:3] / conv[1:] / f"{name}{side}-ms98-a-trans.text"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("\n".join(x.replace("{c}", name) for x in lines) + "\n")
    ev = tmp_path / "eval2000"
    for fid in ("en_4156", "sw_4390"):
        write_wav(ev / "LDC2002S09" / "hub5e_00" / "english" / f"{fid}.sph", 3.0, 8000, channels=2, format="NIST")
        t = ev / "LDC2002T43" / "reference" / "english" / f"{fid}.txt"
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text(EVAL.format(fid=fid))
    return {"swbd": swbd, "eval2000": ev, "root": tmp_path}


def test_prepare_switchboard_and_eval2000(ldc, tmp_path):
    out = tmp_path / "prepared"
    cuts = prepare_switchboard_corpus(ldc["swbd"], ldc["eval2000"], out)
    assert set(cuts) == {"train", "dev", "eval2000", "eval2000_swbd", "eval2000_callhome"}
    assert {c.recording_id for c in cuts["dev"]} == {"sw02010"}  # the last conversation is held out
    assert {c.recording_id for c in cuts["train"]} == {"sw02001", "sw02005"}
    texts = {c.id: c.supervisions[0].text for c in cuts["train"]}
    assert texts["sw2001A-ms98-a-0002"] == "hi mm-hmm yes okay"
    assert texts["sw2001A-ms98-a-0004"] == "cause i know"
    assert texts["sw2001B-ms98-a-0001"] == "yeah weirdo uh"
    assert "sw2001A-ms98-a-0001" not in texts and "sw2001A-ms98-a-0003" not in texts  # silence / noise only
    assert len(cuts["train"]) == 2 * 4
    c = next(c for c in cuts["train"] if c.id == "sw2001B-ms98-a-0002")
    assert c.channel == 1 and c.supervisions[0].speaker == "sw02001B"
    audio = c.load_audio()
    assert audio.shape == (1, 12000) and c.sampling_rate == 8000

    ev = {c.id: c for c in cuts["eval2000"]}
    assert len(ev) == 4  # the lipsmack-only segments are dropped
    assert ev["en_4156-0"].supervisions[0].text == "um we're starting"
    assert ev["sw_4390-1"].supervisions[0].text == "mm-hmm sure"
    assert {c.supervisions[0].custom["subset"] for c in cuts["eval2000_swbd"]} == {"swbd"}
    assert {c.recording_id for c in cuts["eval2000_callhome"]} == {"en_4156"}
    assert ev["sw_4390-0"].load_audio().shape == (1, 8800)
    assert "empty_transcript" in (out / "eval2000_report.txt").read_text()

    again = load_switchboard_cuts(out)
    assert set(again) == set(cuts) and sorted(again["train"].ids) == sorted(cuts["train"].ids)


def test_options_dev_list_resample_and_no_eval(ldc, tmp_path):
    cuts = prepare_switchboard_corpus(ldc["swbd"], None, tmp_path / "p", dev_conversations=["sw02001"],
                                      sampling_rate=16000)
    assert set(cuts) == {"train", "dev"}
    assert {c.recording_id for c in cuts["dev"]} == {"sw02001"}
    assert all(c.sampling_rate == 16000 for c in cuts["train"])
    with pytest.raises(ValueError, match="dev_conversations"):
        prepare_switchboard_corpus(ldc["swbd"], None, tmp_path / "q", dev_conversations=["sw09999"])


def test_layout_errors_name_expected_paths(ldc, tmp_path):
    with pytest.raises(DataError, match="Switchboard directory not found"):
        prepare_switchboard_corpus(tmp_path / "nope", None, tmp_path / "o")
    with pytest.raises(DataError, match=r"transcripts not found.*swb_ms98_transcriptions"):
        prepare_switchboard_corpus(ldc["swbd"], None, tmp_path / "o", transcripts_dir=tmp_path / "nothing")
    victim = next((ldc["root"] / "swb_ms98_transcriptions").rglob("sw2005B-ms98-a-trans.text"))
    victim.unlink()
    with pytest.raises(DataError, match=r"sw02005\.sph needs sw2005B-ms98-a-trans\.text"):
        prepare_switchboard_corpus(ldc["swbd"], None, tmp_path / "o")


def test_eval2000_layout_error(ldc, tmp_path):
    with pytest.raises(DataError, match=r"LDC2002S09/LDC2002S09/hub5e_00/english: eval2000 directory not found"):
        prepare_switchboard_corpus(ldc["swbd"], ldc["eval2000"] / "LDC2002S09", tmp_path / "o")
    shutil.rmtree(ldc["eval2000"] / "LDC2002T43")
    with pytest.raises(DataError, match=r"eval2000/LDC2002T43/reference/english: eval2000 directory not found"):
        prepare_switchboard_corpus(ldc["swbd"], ldc["eval2000"], tmp_path / "o")


def test_distill_data_stage_applies_the_recipe_to_switchboard(ldc, tmp_path, write_wav):
    """Duration filters, max_train_utts and extra test sets hold for Switchboard as for other corpora."""
    from ekd_compress.pipeline.data_prep import prepare_data
    from ekd_compress.recipe import load_recipe

    extra = tmp_path / "extra"
    write_wav(extra / "a.wav", 1.0, 8000)
    extra.joinpath("wav.scp").write_text(f"u1 {extra / 'a.wav'}\n")
    extra.joinpath("text").write_text("u1 yeah right\n")
    extra.joinpath("utt2spk").write_text("u1 s1\n")
    sets = ["data.corpus=switchboard", f"data.switchboard.swbd_root={ldc['swbd']}",
            f"data.switchboard.eval2000_root={ldc['eval2000']}", "data.sample_rate=8000",
            "data.min_duration=1.0", "data.max_train_utts=3", f"data.tests={{extra: {extra}}}"]
    r = load_recipe("recipes/swbd.yaml", sets)
    lines = []
    out = prepare_data(r, tmp_path / "exp", log=lines.append)
    assert out["utterances"]["train"] == 3  # max_train_utts, after the duration filter
    assert "extra" in out["tests"] and out["utterances"]["extra"] == 1
    assert any("dropped" in line and "outside [1, " in line for line in lines)  # short turns counted, not lost silently
