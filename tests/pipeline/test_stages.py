"""Stage resume and invalidation."""
import pytest

from ekd_compress.pipeline.stages import StageRunner


def test_skip_rerun_and_work_dir(tmp_path):
    calls = []
    runner = StageRunner(tmp_path, log=lambda m: None)
    work = tmp_path / "work"

    def stage():
        calls.append(1)
        (work / "out.txt").write_text("x")
        return {"n": len(calls)}

    assert runner.run("a", "k1", stage, work_dir=work) == {"n": 1}
    assert runner.run("a", "k1", stage, work_dir=work) == {"n": 1}  # skipped
    assert len(calls) == 1 and runner.skipped == ["a"]
    assert runner.run("a", "k2", stage, work_dir=work) == {"n": 2}  # changed key re-runs
    assert len(calls) == 2


def test_interrupted_stage_keeps_work_dir_only_for_same_key(tmp_path):
    runner = StageRunner(tmp_path, log=lambda m: None)
    work = tmp_path / "w"

    def crash():
        (work / "last.ckpt").write_text("partial")
        raise KeyboardInterrupt

    try:
        runner.run("train", "k1", crash, work_dir=work)
    except KeyboardInterrupt:
        pass
    seen = {}
    runner.run("train", "k1", lambda: seen.setdefault("resumed", (work / "last.ckpt").exists()) and {}, work_dir=work)
    assert seen["resumed"] is True  # same key: partial work kept for resume
    (work / "last.ckpt").write_text("partial")
    runner.run("train", "k2", lambda: seen.update(changed=(work / "last.ckpt").exists()) or {}, work_dir=work)
    assert seen["changed"] is False  # new key: stale work removed


def test_the_guide_is_the_best_the_first_or_the_named_seed():
    from ekd_compress.pipeline.plan import pick_start

    dev = {"baseline": 4.43, "baseline_s1": 3.52, "baseline_s2": 4.89}
    assert pick_start(dev, "best") == "baseline_s1"
    assert pick_start(dev, "first") == "baseline"
    assert pick_start(dev, "baseline_s2") == "baseline_s2"  # named: not the best one
    assert pick_start({**dev, "baseline_s3": 3.0}, "baseline_s1") == "baseline_s1"  # a better new seed does not move it
    with pytest.raises(ValueError, match="baseline_s9"):
        pick_start(dev, "baseline_s9")


def test_stop_on_changes_the_training_key_only_when_set():
    from ekd_compress.pipeline.plan import train_key
    from ekd_compress.recipe import TrainConfig

    assert "stop_on" not in train_key(TrainConfig())  # experiments made before stop_on keep their keys
    assert train_key(TrainConfig(stop_on="loss"))["stop_on"] == "loss"
    assert "threads" not in train_key(TrainConfig(threads=3))  # how fast it runs is not part of the key


def test_teaching_options_join_the_student_key_only_when_set():
    """Experiments made before distill.kd_fade and teacher_view keep their student keys; setting either changes them."""
    from ekd_compress.pipeline.students import teaching_key_extras
    from ekd_compress.recipe import DistillConfig

    assert teaching_key_extras(DistillConfig()) == []
    assert teaching_key_extras(DistillConfig(kd_fade=[0.5, 0.8])) == [["kd_fade", 0.5, 0.8]]
    assert teaching_key_extras(DistillConfig(cache="fly", teacher_view="augmented", kd_fade=[0.5, 0.8])) == [
        "augmented", ["kd_fade", 0.5, 0.8]]
