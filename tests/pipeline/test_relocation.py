"""A copied or moved experiment reads its own files: cut manifests store the experiment's audio and
feature files relative to themselves, and stage markers are rebased onto the folder they are read in."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet, Recording

from ekd_compress.contract.features import FeatureSpec
from ekd_compress.data.augment import write_pcm16
from ekd_compress.experiment import load_cuts, save_cuts
from ekd_compress.features.fbank import store_features
from ekd_compress.pipeline.stages import StageRunner

SPEC = FeatureSpec(sample_rate=8000, num_mel_bins=23)


def _wav(path: Path, seed: int) -> Recording:
    audio = np.random.default_rng(seed).uniform(-0.3, 0.3, 4000).astype(np.float32)
    write_pcm16(path, audio, 8000)
    return Recording.from_file(path, recording_id=path.stem)


@pytest.fixture
def corpus_and_exp(tmp_path):
    """A corpus file outside the experiment, a synthesised file inside it, features stored inside it."""
    (tmp_path / "corpus").mkdir()
    exp = tmp_path / "exp"
    (exp / "data" / "wav").mkdir(parents=True)
    recordings = [_wav(tmp_path / "corpus" / "outside.wav", 0), _wav(exp / "data" / "wav" / "inside.wav", 1)]
    cuts = CutSet.from_manifests(recordings=recordings)
    data = save_cuts(cuts, exp / "data" / "train_cuts.jsonl.gz", exp)
    feats = store_features(load_cuts(data), SPEC, exp / "features" / "train")
    save_cuts(feats, exp / "features" / "train_cuts.jsonl.gz", exp)
    return tmp_path, exp


def test_manifests_store_the_experiments_files_relative_to_themselves(corpus_and_exp):
    tmp_path, exp = corpus_and_exp
    stored = [json.loads(line) for line in
              __import__("gzip").open(exp / "features" / "train_cuts.jsonl.gz", "rt")]
    sources = {c["recording"]["id"]: c["recording"]["sources"][0]["source"] for c in stored}
    assert sources["inside"] == "../data/wav/inside.wav"
    assert sources["outside"] == str(tmp_path / "corpus" / "outside.wav")  # a corpus stays where it is
    assert {c["features"]["storage_path"] for c in stored} == {"train.lca"}


@pytest.mark.parametrize("lazy", [False, True])
def test_a_moved_experiment_reads_its_own_audio_and_features(corpus_and_exp, lazy):
    tmp_path, exp = corpus_and_exp
    before = {c.id: (c.load_audio(), c.load_features()) for c in load_cuts(exp / "features" / "train_cuts.jsonl.gz")}
    moved = tmp_path / "elsewhere" / "exp2"
    shutil.move(str(exp), str(moved))  # the original folder is gone: nothing can be read from it
    cuts = load_cuts(moved / "features" / "train_cuts.jsonl.gz", lazy=lazy)
    for cut in cuts:
        audio, feats = before[cut.id]
        np.testing.assert_array_equal(cut.load_audio(), audio)
        np.testing.assert_array_equal(cut.load_features(), feats)
    inside = next(c for c in cuts if c.recording.id == "inside")
    assert Path(inside.recording.sources[0].source).resolve() == (moved / "data" / "wav" / "inside.wav").resolve()


def test_a_copied_old_experiments_manifests_read_the_copys_files(tmp_path):
    """Manifests written before relocatable experiments name files by absolute path."""
    old = tmp_path / "old"
    (old / "data" / "wav").mkdir(parents=True)
    (tmp_path / "corpus").mkdir()
    recordings = [_wav(old / "data" / "wav" / "inside.wav", 1), _wav(tmp_path / "corpus" / "outside.wav", 0)]
    store_features(CutSet.from_manifests(recordings=recordings), SPEC, old / "features" / "train").to_file(
        old / "features" / "train_cuts.jsonl.gz")  # as older versions wrote it: every path absolute
    new = tmp_path / "new"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    cuts = load_cuts(new / "features" / "train_cuts.jsonl.gz", exp_dir=new)
    sources = {c.recording.id: c.recording.sources[0].source for c in cuts}
    assert sources == {"inside": str(new.resolve() / "data" / "wav" / "inside.wav"),
                       "outside": str(tmp_path / "corpus" / "outside.wav")}
    assert {c.features.storage_path for c in cuts} == {str(new.resolve() / "features" / "train.lca")}
    assert all(c.load_audio().shape == (1, 4000) and c.load_features().shape[1] == 23 for c in cuts)


def test_a_corpus_path_relative_to_the_current_directory_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rec = _wav(Path("data") / "a.wav", 2)
    assert not Path(rec.sources[0].source).is_absolute()
    save_cuts(CutSet.from_manifests(recordings=[rec]), tmp_path / "exp" / "data" / "cuts.jsonl.gz", tmp_path / "exp")
    monkeypatch.chdir(tmp_path / "exp")  # another directory: the stored path must not depend on it
    (cut,) = load_cuts(tmp_path / "exp" / "data" / "cuts.jsonl.gz")
    assert cut.recording.sources[0].source == str(tmp_path.resolve() / "data" / "a.wav")
    assert cut.load_audio().shape == (1, 4000)


def test_a_copied_experiments_markers_name_the_copys_files(tmp_path):
    exp = tmp_path / "a"
    runner = StageRunner(exp, log=lambda m: None)
    made = runner.run("features", "k1", lambda: {"train": str(exp.resolve() / "features" / "train_cuts.jsonl.gz"),
                                                  "report": "/corpus/train: 3 utterances", "n": 3})
    copy = tmp_path / "b"
    shutil.copytree(exp, copy)
    lines = []
    again = StageRunner(copy, log=lines.append).run("features", "k1", lambda: pytest.fail("re-ran a done stage"))
    assert again == {**made, "train": str(copy.resolve() / "features" / "train_cuts.jsonl.gz")}
    assert len(lines) == 2 and str(exp.resolve()) in lines[0] and lines[1].startswith("[skip] features")
    # in its own folder the marker reads as it was written, without a note
    lines.clear()
    assert StageRunner(exp, log=lines.append).run("features", "k1", lambda: {}) == made
    assert len(lines) == 1 and lines[0].startswith("[skip]")


def test_markers_written_before_they_recorded_their_folder_read_this_experiments_files(tmp_path):
    """An old experiment copied twice: its markers name files in both earlier folders."""
    first, second, new = tmp_path / "first", tmp_path / "second", tmp_path / "new"
    for rel in ("data/train_cuts.jsonl.gz", "tokens.txt", "models/gru/model.pt"):
        (new / rel).parent.mkdir(parents=True, exist_ok=True)
        (new / rel).write_text("x")
    (new / "stages").mkdir()
    (second / "stages").mkdir(parents=True)  # the second folder still exists; the first is gone
    corpus = f"{tmp_path}/corpus/data/train"  # a corpus folder with "data" in its path, not in this experiment
    markers = {"data": {"tokens": f"{first}/tokens.txt", "train": f"{first}/data/train_cuts.jsonl.gz",
                        "report": f"{corpus}: 3 utterances"},
               "member_gru": {"model": f"{second}/models/gru/model.pt", "gone": f"{second}/models/lstm/model.pt"}}
    for name, result in markers.items():
        (new / "stages" / f"{name}.json").write_text(json.dumps({"key": "k", "result": result, "seconds": 1.0}))
    lines = []
    runner = StageRunner(new, log=lines.append)
    here = new.resolve()
    assert runner.done("data", "k") == {"tokens": f"{here}/tokens.txt", "train": f"{here}/data/train_cuts.jsonl.gz",
                                        "report": f"{corpus}: 3 utterances"}
    assert runner.done("member_gru", "k") == {"model": f"{here}/models/gru/model.pt",
                                              "gone": f"{second}/models/lstm/model.pt"}  # not here: unchanged
    assert len(lines) == 2 and lines[0].startswith("[note]")
    assert lines[1].startswith("[warn] member_gru") and f"{second}/models/lstm/model.pt" in lines[1]
    assert runner.done("data", "other key") is None


def test_relative_paths_of_a_copied_copy_are_read_from_the_copy(tmp_path, monkeypatch):
    """`distill --out a` from tmp_path wrote "a/models/..." (relative to its working folder); `a` was
    copied to `b` and `b`, after training a stage of its own, to `c`; `c` resumed from another folder
    reads its own files from both markers, and strings that are not such paths stay as they were."""
    monkeypatch.chdir(tmp_path)
    StageRunner(Path("a"), log=lambda m: None).run("baseline", "k", lambda: {
        "model": "a/models/baseline/model.pt", "metric": "wer", "name": "essence_k1", "note": "a/b: not a path"})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    StageRunner(Path("b"), log=lambda m: None).run("student", "k", lambda: {"model": "b/models/student/model.pt"})
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    runner = StageRunner(tmp_path / "c", log=lambda m: None)
    here = (tmp_path / "c").resolve()
    assert runner.done("baseline", "k") == {"model": str(here / "models" / "baseline" / "model.pt"),
                                            "metric": "wer", "name": "essence_k1", "note": "a/b: not a path"}
    assert runner.done("student", "k") == {"model": str(here / "models" / "student" / "model.pt")}
    # read in the folder it was written in, from another working folder, a relative path is made absolute too
    assert StageRunner(tmp_path / "a", log=lambda m: None).done("baseline", "k")["model"] == str(
        (tmp_path / "a").resolve() / "models" / "baseline" / "model.pt")
