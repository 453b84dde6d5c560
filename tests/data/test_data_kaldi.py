"""Kaldi data directory import: happy paths and every kind of problem, raised and skipped."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from ekd_compress.data import DataError, DataReport, load_kaldi_dir, read_kaldi_table, write_kaldi_dir

LETTERS = set("abcdefghijklmnopqrstuvwxyz'")


def build(tmp_path: Path, write_wav, *, wav=None, text=None, utt2spk=None, segments=None,
          rates=(16000, 16000, 16000)) -> Path:
    """data/train with u1 (absolute path), u2 (relative to the dir), u3 (relative to the parent)."""
    d = tmp_path / "data" / "train"
    write_wav(tmp_path / "audio" / "u1.wav", 1.0, rates[0])
    write_wav(d / "wav" / "u2.wav", 1.5, rates[1])
    write_wav(tmp_path / "data" / "audio3" / "u3.wav", 2.0, rates[2])
    files = {
        "wav.scp": wav or [f"u1 {tmp_path / 'audio' / 'u1.wav'}", "u2 wav/u2.wav", "u3 audio3/u3.wav"],
        "text": text or ["u1 Hello, World!", "u2 it's fine", "u3 good  morning"],
        "utt2spk": utt2spk or ["u1 s1", "u2 s1", "u3 s2"],
    }
    if segments is not None:
        files["segments"] = segments
    for name, lines in files.items():
        (d / name).write_text("".join(f"{x}\n" for x in lines))
    return d


def test_happy_path_relative_and_absolute_paths(tmp_path, write_wav):
    d = build(tmp_path, write_wav)
    cuts, report = load_kaldi_dir(d, text_normalizer="lower", allowed_chars=LETTERS)
    assert sorted(cuts.ids) == ["u1", "u2", "u3"]
    by_id = {c.id: c for c in cuts}
    assert by_id["u1"].supervisions[0].text == "hello world"
    assert by_id["u2"].supervisions[0].text == "it's fine"
    assert by_id["u3"].supervisions[0].text == "good morning"
    assert by_id["u3"].supervisions[0].speaker == "s2"
    assert math.isclose(by_id["u2"].duration, 1.5)
    assert by_id["u2"].load_audio().shape == (1, 24000)
    assert report.kept == 3 and report.total == 3 and report.num_dropped == 0
    assert math.isclose(report.kept_seconds, 4.5) and math.isclose(report.kept_hours, 4.5 / 3600)
    assert "kept 3" in report.summary()


def test_audio_root(tmp_path, write_wav):
    d = build(tmp_path, write_wav)
    write_wav(tmp_path / "corpus" / "WAVE" / "SPK1" / "x.wav", 0.5, 16000)
    (d / "wav.scp").write_text("u1 WAVE/SPK1/x.wav\n")
    (d / "text").write_text("u1 hi\n")
    (d / "utt2spk").write_text("u1 s\n")
    with pytest.raises(DataError, match=r"wav\.scp:1: .*not found.*audio_root"):
        load_kaldi_dir(d)
    cuts, _ = load_kaldi_dir(d, audio_root=tmp_path / "corpus")
    assert cuts[0].recording.sources[0].source == str((tmp_path / "corpus/WAVE/SPK1/x.wav").resolve())


def test_segments_and_end_of_recording(tmp_path, write_wav):
    d = build(tmp_path, write_wav, text=["a one", "b two", "c three"], utt2spk=["a s", "b s", "c s"],
              segments=["a u1 0.0 0.4", "b u1 0.5 -1", "c u3 0.25 1.25"])
    cuts, report = load_kaldi_dir(d)
    by_id = {c.id: c for c in cuts}
    assert sorted(by_id) == ["a", "b", "c"]
    assert math.isclose(by_id["b"].start, 0.5) and math.isclose(by_id["b"].duration, 0.5)
    assert math.isclose(by_id["c"].duration, 1.0) and by_id["c"].recording_id == "u3"
    assert by_id["c"].load_audio().shape == (1, 16000)
    assert report.kept == 3


def test_resampling_mixed_rates(tmp_path, write_wav):
    d = build(tmp_path, write_wav, rates=(16000, 8000, 22050))
    cuts, _ = load_kaldi_dir(d, sampling_rate=16000)
    for c in cuts:
        assert c.sampling_rate == 16000
        assert abs(c.load_audio().shape[1] - round(c.duration * 16000)) <= 1


def test_duration_filters_are_counted(tmp_path, write_wav):
    d = build(tmp_path, write_wav)
    cuts, report = load_kaldi_dir(d, min_duration=1.2, max_duration=1.8)
    assert cuts.ids == ["u2"] or list(cuts.ids) == ["u2"]
    assert report.dropped == {"too_short": 1, "too_long": 1}
    assert report.total == 3
    assert any("min_duration" in m for m in report.examples["too_short"])


# (case id, build overrides, extra writer, load kwargs, reason, "file:line", kept, total)
CASES = [
    ("missing_audio", dict(wav=None), "u2 wav/nope.wav", {}, "missing_audio", "wav.scp:2", 2, 3),
    ("corrupt_audio", {}, "u2 wav/bad.wav", {}, "corrupt_audio", "wav.scp:2", 2, 3),
    ("piped", {}, "u2 sox in.wav -t wav - |", {}, "piped_command", "wav.scp:2", 2, 3),
    ("malformed_wav", {}, "u2", {}, "malformed_line", "wav.scp:2", 2, 3),
    ("empty_after_norm", dict(text=["u1 hello", "u2 !!! ...", "u3 x"]), None, {"text_normalizer": "lower"},
     "empty_transcript", "text:2", 2, 3),
    ("empty_raw", dict(text=["u1 hello", "u2", "u3 x"]), None, {}, "empty_transcript", "text:2", 2, 3),
    ("bad_chars", dict(text=["u1 hello", "u2 fine", "u3 good 2day"]), None, {"allowed_chars": LETTERS},
     "bad_characters", "text:3", 2, 3),
    ("duplicate", dict(text=["u1 hello", "u2 fine", "u3 good", "u1 again"]), None, {}, "duplicate_id",
     "text:4", 2, 3),
    ("duplicate_utt2spk", dict(utt2spk=["u1 s1", "u2 s1", "u3 s2", "u2 s3"]), None, {}, "duplicate_id",
     "utt2spk:4", 2, 3),
    ("mixed_rate", dict(rates=(16000, 16000, 8000)), None, {}, "mixed_sample_rate", "wav.scp:3", 2, 3),
    ("malformed_utt2spk", dict(utt2spk=["u1 s1", "u2 s1 extra", "u3 s2"]), None, {}, "malformed_line",
     "utt2spk:2", 2, 3),
    ("missing_text", dict(text=["u1 hello", "u3 good"]), None, {}, "missing_text", "wav.scp:2", 2, 3),
    ("missing_speaker", dict(utt2spk=["u1 s1", "u2 s1"]), None, {}, "missing_speaker", "wav.scp:3", 2, 3),
    ("orphan_text", dict(text=["u1 a", "u2 b", "u3 c", "u9 stray"]), None, {}, "no_audio_entry", "text:4", 3, 4),
]


def _make_case(tmp_path, write_wav, overrides, wav_line2):
    d = build(tmp_path, write_wav, **overrides)
    if wav_line2 is not None:
        lines = (d / "wav.scp").read_text().splitlines()
        lines[1] = wav_line2
        (d / "wav.scp").write_text("\n".join(lines) + "\n")
        (d / "wav" / "bad.wav").write_bytes(b"RIFF\x00\x00 this is not audio" * 20)
    return d


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_problem_raises_with_file_and_line(tmp_path, write_wav, case):
    _, overrides, wav_line2, kwargs, reason, where, _, _ = case
    d = _make_case(tmp_path, write_wav, dict(overrides), wav_line2)
    file, line = where.split(":")
    with pytest.raises(DataError) as info:
        load_kaldi_dir(d, on_error="raise", **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.reason == reason
    assert str(err).startswith(f"{d / file}:{line}: ")
    assert re.search(r": .+; .+", str(err)), "message must say the problem and the fix"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_problem_skipped_and_counted(tmp_path, write_wav, case):
    _, overrides, wav_line2, kwargs, reason, where, kept, total = case
    d = _make_case(tmp_path, write_wav, dict(overrides), wav_line2)
    cuts, report = load_kaldi_dir(d, on_error="skip", **kwargs)
    assert len(cuts) == kept == report.kept
    assert report.dropped == {reason: total - kept}
    assert report.total == total
    assert any(where in m for m in report.examples[reason])
    assert reason in report.summary()


def test_mixed_rate_message_suggests_sampling_rate(tmp_path, write_wav):
    d = build(tmp_path, write_wav, rates=(16000, 16000, 8000))
    with pytest.raises(DataError, match=r"sampling_rate=16000"):
        load_kaldi_dir(d)


@pytest.mark.parametrize("segments,reason,line", [
    (["a u1 0.0 0.4", "b u1 0.5 9.0"], "bad_segment", 2),
    (["a u1 0.0 0.4", "b nosuch 0.0 0.4"], "unknown_recording", 2),
    (["a u1 0.0 0.4", "b u1 0.9 0.3"], "malformed_line", 2),
    (["a u1 0.0 zero"], "malformed_line", 1),
])
def test_segment_problems(tmp_path, write_wav, segments, reason, line):
    d = build(tmp_path, write_wav, text=["a x", "b y"], utt2spk=["a s", "b s"], segments=segments)
    with pytest.raises(DataError, match=rf"segments:{line}: "):
        load_kaldi_dir(d)
    _, report = load_kaldi_dir(d, on_error="skip")
    assert report.dropped.get(reason) == 1


def test_missing_files_and_bad_arguments(tmp_path, write_wav):
    with pytest.raises(DataError, match="no such directory"):
        load_kaldi_dir(tmp_path / "nope")
    d = build(tmp_path, write_wav)
    (d / "utt2spk").unlink()
    with pytest.raises(DataError, match=r"utt2spk: missing file"):
        load_kaldi_dir(d)
    with pytest.raises(ValueError, match="on_error"):
        load_kaldi_dir(d, on_error="ignore")
    with pytest.raises(ValueError, match="valid names"):
        load_kaldi_dir(d, text_normalizer="klingon")


def test_write_kaldi_dir_roundtrip_and_validation(tmp_path, write_wav):
    write_wav(tmp_path / "k" / "a.wav", 0.3)
    out = write_kaldi_dir(tmp_path / "k", [("b", "a.wav", "two  words", "s1"), ("a", "a.wav", "one", "s1")])
    assert read_kaldi_table(out / "text") == {"a": "one", "b": "two words"}
    assert (out / "spk2utt").read_text() == "s1 a b\n"
    assert list(read_kaldi_table(out / "wav.scp")) == ["a", "b"]
    cuts, _ = load_kaldi_dir(out)
    assert len(cuts) == 2
    with pytest.raises(ValueError, match="duplicate"):
        write_kaldi_dir(tmp_path / "x", [("a", "a.wav", "t", "s"), ("a", "b.wav", "t", "s")])
    with pytest.raises(ValueError, match="white space"):
        write_kaldi_dir(tmp_path / "x", [("a b", "a.wav", "t", "s")])


def test_report_summary_lists_reasons():
    r = DataReport(source="d")
    r.note("missing_audio", "d/wav.scp:2: audio file 'x' not found; fix the path")
    r.count({"missing_audio": 2})
    r.kept, r.total = 3, 5
    s = r.summary()
    assert "dropped 2" in s and "missing_audio" in s and "wav.scp:2" in s


def test_check_audio_catches_truncated_flac(tmp_path, write_wav):
    d = build(tmp_path, write_wav)
    flac = write_wav(d / "wav" / "u2.flac", 1.5, 16000, format="FLAC")
    data = flac.read_bytes()
    flac.write_bytes(data[: len(data) // 2])  # the header still promises 1.5 s
    (d / "wav.scp").write_text((d / "wav.scp").read_text().replace("wav/u2.wav", "wav/u2.flac"))
    cuts, _ = load_kaldi_dir(d)  # header-only check passes
    assert len(cuts) == 3
    with pytest.raises(DataError, match=r"wav\.scp:2: cannot read audio .*u2\.flac"):
        load_kaldi_dir(d, check_audio=True)
    _, report = load_kaldi_dir(d, check_audio=True, on_error="skip")
    assert report.dropped == {"corrupt_audio": 1}


def test_duplicate_recording_in_wav_scp(tmp_path, write_wav):
    d = build(tmp_path, write_wav)
    (d / "wav.scp").write_text((d / "wav.scp").read_text() + "u2 wav/u2.wav\n")
    with pytest.raises(DataError, match=r"wav\.scp:4: duplicate id 'u2' \(first on line 2\)"):
        load_kaldi_dir(d)
    cuts, report = load_kaldi_dir(d, on_error="skip")
    assert sorted(cuts.ids) == ["u1", "u3"] and report.dropped == {"duplicate_id": 1}
