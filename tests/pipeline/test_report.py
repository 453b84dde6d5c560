"""results.md and plots readable at a glance (issue 16): legend, the student's source, T, flagged seeds, plots."""
from __future__ import annotations

import json

from ekd_compress.pipeline.report import flagged_seeds, markdown_table, write_report
from ekd_compress.recipe import load_recipe

WERS = {"baseline": ("baseline", 10.0), "baseline_s1": ("baseline", 11.0), "baseline_s2": ("baseline", 98.0),
        "gru": ("member", 9.0), "lstm": ("member", 12.0), "ensemble": ("ensemble", 8.0),
        "essence_k1": ("student", 6.0), "essence_k2": ("student", 6.5), "kd_all": ("kd", 7.0),
        "control_baseline_teacher": ("kd", 7.5), "student": ("student", 6.0), "student_s1": ("student", 6.2)}


def fake_results() -> dict:
    def rows(shift: float) -> list[dict]:
        return [{"name": n, "kind": k, "params": 1000, "wer": w + shift, "sub": 1, "del": 2, "ins": 0, "rtf": 0.01}
                for n, (k, w) in WERS.items()]
    return {"tests": {"dev": {"models": rows(0.0)}, "test": {"models": rows(1.0)}}, "chosen_k": "1",
            "coincidence": {"gru": {"both": 0.8, "member_to_guide": 0.8, "guide_to_member": 0.8},
                            "lstm": {"both": 0.4, "member_to_guide": 0.4, "guide_to_member": 0.4}},
            "essence": {"topk_mass": [0.8, 0.95, 0.99, 1.0], "blank_top1_share": 0.5,
                        "bytes_per_frame": {"1": 4.0, "all": 8.0}},
            "train_seconds": {}, "seeds": [0, 1, 2], "guide": "baseline", "ensemble": {}}


def test_results_md_explains_rows_and_flags_diverged_seeds(tmp_path):
    recipe = load_recipe("demo", ["distill.temperature=2", "distill.seeds=[0,1,2]"])
    write_report(tmp_path, fake_results(), recipe)
    md = (tmp_path / "results.md").read_text()
    for row in ("`baseline`", "`member`", "`ensemble`", "`kd_all`", "`control_baseline_teacher`", "`essence_kN`",
                "`student`"):
        assert row in md, f"the legend does not explain {row}"
    assert "| student (= essence_k1) |" in md
    assert "top-1/2/4 mass at T = 2:" in md
    assert "⚠ baseline_s2" in md and "dev: baseline_s2 98.00" in md and "test: baseline_s2 99.00" in md
    assert "student_s1" not in md.split("Seeds with WER above")[1], "a seed within 1.5x of the best is not flagged"
    assert json.loads((tmp_path / "results.json").read_text())["chosen_k"] == "1"
    for plot in ("model_wer.png", "wer_vs_k.png", "topk_mass.png", "coincidence.png", "verdict.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 5000, plot
        assert f"plots/{plot}" in md, f"results.md does not list {plot}"


def test_flagged_seeds_rule():
    rows = [{"name": "baseline", "wer": 10.0}, {"name": "baseline_s1", "wer": 15.0},
            {"name": "baseline_s2", "wer": 15.1}]
    assert flagged_seeds(rows, "baseline") == ["baseline_s2 15.10"]
    assert flagged_seeds(rows[:1], "baseline") == []


def test_kd_all_student_and_no_temperature():
    results = fake_results()
    results["chosen_k"] = "all"
    md = markdown_table(results)
    assert "| student (= kd_all) |" in md and "mass at T:" in md


def test_wer_vs_k_plot_labels_all_and_draws_references(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ekd_compress.pipeline.plots import plot_coincidence, plot_wer_vs_k

    fig, (ax, ax2) = plt.subplots(1, 2)
    plot_wer_vs_k(ax, fake_results(), "dev")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "all\n(KD, k=4)"]
    labels = ax.get_legend_handles_labels()[1]
    assert any(lab.startswith("baseline (seed mean)") for lab in labels)
    assert "ensemble (teacher) 8.0" in labels and "KD-all 7.0" in labels and "chosen k=1" in labels
    plot_coincidence(ax2, fake_results()["coincidence"], 0.5)
    assert ax2.get_legend_handles_labels()[1] == ["fusion threshold 0.5"]
    plt.close(fig)


def test_oov_report_does_not_move_the_plots_off_the_verdict_set(tmp_path):
    """An out-of-lexicon note for another split once renamed the set the plots were drawn on."""
    import matplotlib.image

    results = fake_results()
    results["tests"]["dev"]["models"] = [r for r in results["tests"]["dev"]["models"] if r["name"] != "lstm"]
    results["oov"] = {"dev": {"utterances": 2, "words": {"zorp": 2}}}
    write_report(tmp_path, results, load_recipe("demo", []))
    md = (tmp_path / "results.md").read_text()
    assert "Out-of-lexicon words: 2 dev utterances left out (zorp x2)" in md
    height = matplotlib.image.imread(tmp_path / "plots" / "model_wer.png").shape[0]
    def pixels(split: str) -> float:  # the figure's height follows the row count of the set it shows (120 dpi)
        return 120 * (0.8 + 0.28 * len(results["tests"][split]["models"]))

    assert abs(height - pixels("test")) <= 1 < abs(height - pixels("dev")), "model_wer.png shows dev, not test"


def test_verdict_plot_labels_each_undecided_claim_with_the_set_size_that_decides_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ekd_compress.pipeline.plots import plot_verdict

    def claim(name: str, decided: str, at: dict) -> dict:
        return {"claim": name, "ratio": 0.9, "target": 0.8, "ci95": [0.6, 1.2], "decided": decided, "decides_at": at}

    rows = [claim("a", "undecided", {"scale": 16, "decided": "not met"}),
            claim("b", "undecided", {"scale": None, "decided": "undecided"}),
            claim("c", "not met", {"scale": 1, "decided": "not met"})]
    fig, ax = plt.subplots()
    plot_verdict(ax, rows, "test")
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert texts == ["16× the set: not met", "> 64× the set"], texts  # nothing beside the decided claim
    assert "set size that would decide" in ax.get_title()
