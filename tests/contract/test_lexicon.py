"""Pronunciation lexicons and phone token tables: parsing, variants, stress, missing words."""
from __future__ import annotations

import pytest

from ekd_compress.contract.lexicon import Lexicon, strip_stress
from ekd_compress.contract.tokens import TokenTable

LEXICON = """\
;;; a CMU-style comment line
READ\tR IY1 D
READ\tR EH1 D
READ(2) R EH2 D
A\tAH0
A\tEY1
CAT  K AE1 T

THE DH AH0
"""


@pytest.fixture
def lexicon_file(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text(LEXICON)
    return path


def test_variants_in_file_order_first_is_the_target(lexicon_file):
    lex = Lexicon.load(lexicon_file)
    assert lex.prons["read"] == [("R", "IY", "D"), ("R", "EH", "D")]  # READ(2) R EH2 D merged after stripping
    assert lex.prons["a"] == [("AH",), ("EY",)]
    assert lex.pronunciation("Read") == ("R", "IY", "D")  # case-insensitive, the first line wins
    assert len(lex) == 4 and "cat" in lex and "CAT" in lex


def test_stress_digits_stripped_by_default_and_kept_on_request(lexicon_file):
    assert Lexicon.load(lexicon_file).phones == ["AE", "AH", "D", "DH", "EH", "EY", "IY", "K", "R", "T"]
    kept = Lexicon.load(lexicon_file, strip_stress_digits=False)
    assert kept.prons["read"] == [("R", "IY1", "D"), ("R", "EH1", "D"), ("R", "EH2", "D")]
    assert strip_stress("AH0") == "AH" and strip_stress("HH") == "HH" and strip_stress("2") == "2"


def test_missing_word_is_reported_not_dropped(lexicon_file):
    lex = Lexicon.load(lexicon_file)
    phones, oov = lex.transcribe("the dog read a zebra")
    assert phones == ["DH", "AH", "R", "IY", "D", "AH"] and oov == ["dog", "zebra"]
    assert lex.oov_counts(["the dog", "dog cat", "zebra"]) == {"dog": 2, "zebra": 1}
    with pytest.raises(KeyError, match="'dog' is not in the lexicon"):
        lex.pronunciation("dog")
    table = TokenTable.build_phones(lex)
    with pytest.raises(ValueError, match=r"\['dog'\].*not in the lexicon.*tokens.oov=report"):
        table.encode("the dog")


def test_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("CAT K AE T\nDOG\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: word 'DOG' has no phones"):
        Lexicon.load(path)
    with pytest.raises(FileNotFoundError, match="tokens.lexicon"):
        Lexicon.load(tmp_path / "missing.txt")


def test_phone_table_encodes_decodes_and_round_trips_with_its_lexicon(lexicon_file, tmp_path):
    table = TokenTable.build_phones(Lexicon.load(lexicon_file))
    assert table.kind == "phone" and table.tokens[0] == "<blk>" and "|" not in table.tokens
    ids = table.encode("the cat read")
    assert table.decode(ids) == "DH AH K AE T R IY D"
    table.save(tmp_path / "exp" / "tokens.txt")
    assert (tmp_path / "exp" / "lexicon.txt").read_text().startswith("READ R IY D\nREAD R EH D\n")
    loaded = TokenTable.load(tmp_path / "exp" / "tokens.txt")
    assert loaded.kind == "phone" and loaded.tokens == table.tokens
    assert loaded.encode("the cat read") == ids and loaded.lexicon.prons == table.lexicon.prons
    # a character table beside a stray lexicon.txt stays a character table
    chars = TokenTable.build_chars(["the cat"])
    chars.save(tmp_path / "exp" / "tokens.txt")
    assert TokenTable.load(tmp_path / "exp" / "tokens.txt").kind == "char"


def _cuts(texts):
    """Dummy cuts u0, u1, ... whose one supervision carries each text."""
    from lhotse import CutSet, SupervisionSegment
    from lhotse.testing.dummies import dummy_cut

    cuts = []
    for i, text in enumerate(texts):
        cut = dummy_cut(i, supervisions=[]).with_id(f"u{i}")
        cut.supervisions = [SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0,
                                               duration=cut.duration, text=text)]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def test_out_of_lexicon_training_utterances_reported_or_failing(lexicon_file):
    from ekd_compress.pipeline.data_prep import drop_out_of_lexicon

    cuts = _cuts(["the cat", "the dog", "a zebra read", "read a cat"])
    lex = Lexicon.load(lexicon_file)
    logged = []
    kept, report = drop_out_of_lexicon(cuts, lex, "train", "report", logged.append)
    assert sorted(c.id for c in kept) == ["u0", "u3"]
    assert report == {"utterances": 2, "words": {"dog": 1, "zebra": 1}}
    assert "2 of 4 utterances hold 2 words missing" in logged[0] and "dog x1" in logged[0]
    with pytest.raises(ValueError, match=r"train: 2 of 4 utterances.*add them to the lexicon"):
        drop_out_of_lexicon(cuts, lex, "train", "fail", logged.append)
    # nothing missing: nothing dropped, nothing logged
    assert drop_out_of_lexicon(_cuts(["the cat"]), lex, "dev", "fail", logged.append)[1]["utterances"] == 0
