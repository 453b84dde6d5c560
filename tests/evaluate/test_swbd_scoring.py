import math

import pytest

from ekd_compress.evaluate import normalize_swbd, score_eval2000, score_eval2000_results


@pytest.mark.parametrize(
    "text, expected",
    [
        ("OH YEAH [laughter] I THINK", "oh yeah i think"),
        ("(%HESITATION) so [noise] <unk> we [vocalized-noise] went", "so we went"),
        ("uh i um went eh there hm", "i went there"),
        ("i th- think -ing so", "i think so"),
        ("(TH-) THAT'S IT", "that's it"),
        ("it was ok. O.K.? okay", "it was okay okay okay"),
        ("uh-huh alright gonna wanna", "uhhuh all right going to want to"),
        ("an x-ray {breath} [[drawn out]] well", "an x ray well"),
        ("-[w]here ju[st]- yes", "where yes"),
        ("<contraction e_form=\"[it=>it]['s=>is]\">it's fine", "it's fine"),
        ("[noise] uh", ""),
    ],
)
def test_reference_normalisation(text, expected):
    assert normalize_swbd(text) == expected


def test_hypothesis_keeps_fragment_letters():
    assert normalize_swbd("i th- think", is_reference=False) == "i th think"
    assert normalize_swbd("uh i think", is_reference=False) == "i think"


def test_fillers_neither_errors_nor_credited():
    s = score_eval2000(["sw_4390-A_000100-000200"], ["uh so um yes"], ["so yes"])
    assert s["swbd"] == {"wer": 0.0, "sub": 0, "del": 0, "ins": 0, "words": 2}
    s = score_eval2000(["sw_4390-A_000100-000200"], ["so yes"], ["uh so yes um"])
    assert s["all"]["ins"] == 0


def test_split_swbd_callhome():
    ids = ["sw_4390-A_000100-000200", "sw_4390-B_000300-000400", "en_4156-A-000123-000456", "en_6000-B_000001-000002"]
    refs = ["hello there", "OK thanks", "one two three", "IGNORE_TIME_SEGMENT_IN_SCORING"]
    hyps = ["hello there", "okay thanks", "one three four five", "whatever"]
    s = score_eval2000(ids, refs, hyps)
    assert set(s) == {"all", "swbd", "callhome"}
    assert s["swbd"] == {"wer": 0.0, "sub": 0, "del": 0, "ins": 0, "words": 4}
    assert s["callhome"]["words"] == 3
    assert s["callhome"]["wer"] == pytest.approx(100.0 * (s["callhome"]["sub"] + s["callhome"]["del"] + s["callhome"]["ins"]) / 3)
    assert s["callhome"]["sub"] + s["callhome"]["del"] + s["callhome"]["ins"] == 3  # del two, ins four, ins five
    assert s["all"]["words"] == 7
    results = score_eval2000_results(ids, refs, hyps)
    assert results["all"].sentences == 3  # the IGNORE segment is skipped


def test_missing_part_is_nan_and_bad_ids_refused():
    s = score_eval2000(["sw_1-A_1-2"], ["a"], ["a"])
    assert s["callhome"]["words"] == 0 and math.isnan(s["callhome"]["wer"])
    with pytest.raises(ValueError, match="'fsh_1'"):
        score_eval2000(["fsh_1"], ["a"], ["a"])
    with pytest.raises(ValueError, match="one of each"):
        score_eval2000(["sw_1"], ["a", "b"], ["a"])
