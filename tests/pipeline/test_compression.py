"""The compression curve's Pareto front and the smallest student that matches the ensemble."""
import pytest

from ekd_compress.pipeline.compression import (compression_markdown, merged_labels, pareto_front, plot_compression,
                                               seed_means, smallest_matching, student_groups)


def test_pareto_front_on_constructed_points():
    pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 5.0), (5.0, 2.0), (0.5, 20.0), (2.0, 5.0), (6.0, None)]
    # (3, 6) and (4, 5) are dominated by (2, 5); equal points both stay; a missing WER is never on it
    assert pareto_front(pts) == [5, 0, 1, 6, 4]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([(1.0, float("nan")), (2.0, 3.0)]) == [1]


def row(name, kind, flops, wer, rtf=None, params=None):
    return {"name": name, "kind": kind, "flops_per_audio_second": flops, "rtf_onnx": rtf or flops / 1e9,
            "params": params or int(flops / 50), "wer": {"test": wer}}


ROWS = [row("ensemble", "ensemble", 100e6, 2.0), row("gru", "member", 40e6, 2.5),
        row("control_baseline_teacher", "kd", 1e6, 1.0),  # taught by the guide alone: not a candidate
        row("sweep_s32", "student", 2e6, 2.5), row("sweep_s64", "student", 8e6, 2.0),
        row("kd_all", "kd", 16e6, 1.5), row("baseline", "baseline", 16e6, 1.8)]


def test_smallest_matching_student_and_its_savings():
    sm = smallest_matching(ROWS, "test")
    assert sm["name"] == "sweep_s64" and sm["wer"] == 2.0  # equal WER counts as matching
    assert sm["flop_saving"] == pytest.approx(12.5) and sm["param_saving"] == pytest.approx(12.5)
    assert sm["met"]  # >= 5x fewer FLOPs


def test_no_student_matches_or_no_ensemble():
    rows = [r for r in ROWS if r["name"] not in ("sweep_s64", "kd_all")]
    sm = smallest_matching(rows, "test")
    assert sm["name"] is None and not sm["met"]
    assert smallest_matching([r for r in ROWS if r["kind"] != "ensemble"], "test") is None


def test_a_size_is_judged_by_its_seed_mean():
    rows = ROWS + [row("sweep_s32_s1", "student", 2e6, 1.5), row("sweep_s64_s1", "student", 8e6, 2.4),
                   row("student_s1", "student", 16e6, 1.8)]
    groups = {"student": ["kd_all", "student_s1"], "sweep_s32": ["sweep_s32", "sweep_s32_s1"],
              "sweep_s64": ["sweep_s64", "sweep_s64_s1"]}
    # alone, s32's seed 1 (1.5) and s64's seed 0 (2.0) match the ensemble (2.0); by their means (2.0, 2.2) only s32
    assert smallest_matching(rows, "test")["name"] == "sweep_s32_s1"
    sm = smallest_matching(rows, "test", groups)
    assert sm["name"] == "sweep_s32" and sm["models"] == ["sweep_s32", "sweep_s32_s1"] and sm["wers"] == [2.5, 1.5]
    assert sm["wer"] == pytest.approx(2.0) and sm["flop_saving"] == pytest.approx(50.0) and sm["alias"] is None
    groups["sweep_s32"] = ["sweep_s32", "sweep_s32_s1", "sweep_s32_s2"]  # a seed without a score is left out
    rows[3] = row("sweep_s32", "student", 2e6, 2.8)
    sm = smallest_matching(rows, "test", groups)
    assert sm["name"] == "student" and sm["wer"] == pytest.approx(1.65) and sm["flop_saving"] == pytest.approx(6.25)
    by_name = {g["name"]: g for g in student_groups(rows, "test", groups)}
    assert set(by_name) == {"student", "sweep_s32", "sweep_s64"}  # the control student is not taught by the ensemble
    assert by_name["sweep_s64"]["wers"] == [2.0, 2.4]
    assert by_name["sweep_s32"]["models"] == ["sweep_s32", "sweep_s32_s1"]
    # next to each size, the CTC-only models of that size (those scored; none: "-")
    rows += [row("sweep_s64_ctc", "baseline", 8e6, 3.0), row("sweep_s64_ctc_s1", "baseline", 8e6, 2.6)]
    ctc = {"student": ["baseline", "baseline_s1"], "sweep_s64": ["sweep_s64_ctc", "sweep_s64_ctc_s1"], "sweep_s32": []}
    by_name = {g["name"]: g for g in student_groups(rows, "test", groups, ctc)}
    assert by_name["sweep_s64"]["ctc_wers"] == [3.0, 2.6] and by_name["sweep_s64"]["ctc_wer"] == pytest.approx(2.8)
    assert by_name["student"]["ctc_models"] == ["baseline"] and by_name["student"]["ctc_wer"] == 1.8
    assert by_name["sweep_s32"]["ctc_wer"] is None and by_name["sweep_s64"]["wers"] == [2.0, 2.4]  # not the CTC rows
    md = compression_markdown({"split": "test", "rtf_seconds": 5.0, "rows": rows, "pareto_flops": [], "pareto_rtf": [],
                               "students": list(by_name.values()), "smallest_matching": sm})
    assert "**student** (mean 1.65 % over 2 seeds: 1.50 / 1.80;" in md
    assert "| sweep_s64 | 2 | 8.00 | 2.20 | 2.00 / 2.40 | 2.80 (sweep_s64_ctc, sweep_s64_ctc_s1) |" in md
    assert "| sweep_s32 | 2 | 2.00 | 2.15 | 2.80 / 1.50 | - |" in md


def test_plot_with_seed_means(tmp_path):
    rows = ROWS + [row("sweep_s64_s1", "student", 8e6, 2.4)]
    groups = {"sweep_s64": ["sweep_s64", "sweep_s64_s1"]}
    comp = {"split": "test", "rtf_seconds": 5.0, "rows": rows, "pareto_flops": ["sweep_s32"], "pareto_rtf": [],
            "students": student_groups(rows, "test", groups),
            "smallest_matching": smallest_matching(rows, "test", groups)}
    assert comp["smallest_matching"]["name"] == "kd_all"  # s64's mean (2.2) is above the ensemble's 2.0
    assert plot_compression(comp, tmp_path / "c.png").stat().st_size > 10_000


def test_the_plot_draws_each_sizes_seed_means_students_and_ctc(tmp_path):
    rows = ROWS + [row("sweep_s64_s1", "student", 8e6, 2.4), row("sweep_s32_s1", "student", 2e6, 3.5),
                   row("sweep_s64_ctc", "baseline", 8e6, 3.0, rtf=0.01), row("sweep_s64_ctc_s1", "baseline", 8e6, 2.6,
                                                                               rtf=0.03)]
    groups = {"sweep_s64": ["sweep_s64", "sweep_s64_s1"], "sweep_s32": ["sweep_s32", "sweep_s32_s1"]}
    ctc = {"sweep_s64": ["sweep_s64_ctc", "sweep_s64_ctc_s1"], "sweep_s32": ["sweep_s32_ctc"]}  # one CTC seed: no mean
    comp = {"split": "test", "rtf_seconds": 5.0, "rows": rows, "pareto_flops": [], "pareto_rtf": [],
            "students": student_groups(rows, "test", groups, ctc), "smallest_matching": None}
    means = seed_means(comp, rows, "flops_per_audio_second")
    assert [(m[0], round(m[1], 6), m[2], m[3]) for m in means] == [
        (8e6, 2.2, [2.0, 2.4], "sweep_s64"), (2e6, 3.0, [2.5, 3.5], "sweep_s32"), (8e6, 2.8, [3.0, 2.6], "sweep_s64 CTC")]
    assert [m[5] for m in means] == ["student seed mean (min-max)", None, "CTC-only seed mean, same size (min-max)"]
    # the models each mean is named for: a size's single CTC model is not among them, so it keeps its own label
    assert [m[6] for m in means] == [["sweep_s64", "sweep_s64_s1"], ["sweep_s32", "sweep_s32_s1"],
                                     ["sweep_s64_ctc", "sweep_s64_ctc_s1"]]
    assert seed_means(comp, rows, "rtf_onnx")[-1][0] == pytest.approx(0.02)  # the CTC models' own mean cost
    assert plot_compression(comp, tmp_path / "c.png").stat().st_size > 10_000


def test_markdown_and_plot(tmp_path):
    comp = {"split": "test", "rtf_seconds": 5.0, "rows": ROWS,
            "pareto_flops": [ROWS[i]["name"] for i in pareto_front([(r["flops_per_audio_second"], r["wer"]["test"]) for r in ROWS])],
            "pareto_rtf": [], "smallest_matching": smallest_matching(ROWS, "test")}
    md = compression_markdown(comp)
    assert "**sweep_s64**" in md and "12.5x" in md and "| control_baseline_teacher | kd |" in md
    assert plot_compression(comp, tmp_path / "c.png").stat().st_size > 10_000


def test_labels_of_points_on_top_of_each_other_are_merged():
    pts = [(16.9e6, 1.71, "kd_all"), (16.9e6, 1.71, "essence_k1"), (20e6, 1.71, "student_s1"),  # within 1.4x
           (16.9e6, 1.56, "student_s2"), (25e6, 1.71, "gru"), (4.76e6, 2.56, "sweep_s64")]
    assert merged_labels(pts) == [(16.9e6, 1.71, "kd_all, essence_k1,\nstudent_s1"), (16.9e6, 1.56, "student_s2"),
                                  (25e6, 1.71, "gru"), (4.76e6, 2.56, "sweep_s64")]
    assert merged_labels([(2.0, 1.0, "b"), (1.99, 1.0, "a")]) == [(1.99, 1.0, "b, a")]  # at the cheaper point
    assert merged_labels([]) == []
