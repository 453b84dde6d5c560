"""Text normalisers."""
from __future__ import annotations

import pytest

from ekd_compress.data import available_normalizers, get_normalizer, register_normalizer


def test_registry_names_and_unknown_name():
    assert {"none", "lower", "upper", "swbd", "swbd-score"} <= set(available_normalizers())
    with pytest.raises(ValueError) as e:
        get_normalizer("nope")
    assert "lower" in str(e.value) and "swbd" in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        register_normalizer("lower")(lambda s: s)


@pytest.mark.parametrize("raw,expected", [
    ("Hello,  World!", "hello world"),
    ("It's a dog's life; isn't it?", "it's a dog's life isn't it"),
    ("well-known  \t mother-in-law", "well known mother in law"),
    ('"Quoted" text \u2019s', "quoted text 's"),
    ("Caf\u00e9 NO. 5", "caf\u00e9 no 5"),
    (" ' ", ""),
])
def test_lower(raw, expected):
    assert get_normalizer("lower")(raw) == expected


def test_upper_and_none():
    assert get_normalizer("upper")("it's, OK.") == "IT'S OK"
    assert get_normalizer("none")("  As Is!  ") == "  As Is!  "


@pytest.mark.parametrize("raw,expected", [
    # MS98 Switchboard conventions
    ("[silence]", ""),
    ("[noise] yeah [laughter] i know [vocalized-noise]", "yeah i know"),
    ("[laughter-yes] that's right", "yes that's right"),
    ("i th[e]- think -[th]at is it", "i think is it"),
    ("[be]cause i_1 said so", "cause i said so"),
    ("a [bocket/bucket] of {weirdo} stuff <unk>", "a bucket of weirdo stuff"),
    ("UM-HUM uh-huh Um mhm", "mm-hmm uh-huh um mm-hmm"),
    ("the t._v. show", "the t v show"),
    # eval2000 (LDC2002T43) conventions
    ("%um, <contraction e_form=\"[they=>they]['re=>are]\">they're not that thrilled about it, but %uh",
     "um they're not that thrilled about it but uh"),
    ("what to you mean? {breath} oh, about ((you're)) leaving (( )) ha-", "what to you mean oh about you're leaving"),
])
def test_swbd(raw, expected):
    assert get_normalizer("swbd")(raw) == expected


def test_swbd_score_drops_fillers():
    assert get_normalizer("swbd-score")("%um yeah uh-huh um-hum i see uh") == "yeah i see"


def test_swbd_output_alphabet():
    out = get_normalizer("swbd")("[noise] A&B's {lipsmack} co-op 100% <b_aside> OK?")
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz' -")
    assert "co-op" in out.split()
