"""The report as a paper and a record: tables with the best in bold and ties marked (exact cells worked out by hand),
the setup block read back from the records and sweep.json, the majority-class baseline, and figures that leave no
panel out and save a vector copy.

The constructed setting (one per test, seeds 0, 1, 2 paired by seed) at n = 10 and n = 20:

    n=10: A 0.80 0.82 0.84 | B 0.79 0.83 0.81 | C 0.70 0.71 0.72 | scratch 0.50 0.55 0.60
    n=20: A 0.89 0.93 0.91 | B 0.80 0.81 0.82 | C 0.60 0.70 0.80 | scratch 0.90 0.92 0.94

At n=10 A is best; B - A = (-0.01, +0.01, -0.03), sd 0.02: its 95% interval -0.01 ± 4.303 * 0.02 / sqrt(3)
= [-0.060, +0.040] holds 0 (tied); C - A = (-0.10, -0.11, -0.12) and scratch - A = (-0.30, -0.27, -0.24) do not.
At n=20 scratch is best; A - scratch = (-0.01, +0.01, -0.03) is tied, B and C are not (C - scratch: mean -0.22,
sd 0.08, interval [-0.419, -0.021]).
Half-widths: 4.303 * sd / sqrt(3) = 5.0 (sd 0.02), 2.5 (0.01), 12.4 (0.05), 24.8 (0.10) points.
Gains (arm - scratch, paired): n=10 A (0.30, 0.27, 0.24) +27.0 ± 7.5; B (0.29, 0.28, 0.21) +26.0 ± 10.8;
C (0.20, 0.16, 0.12) +16.0 ± 9.9; n=20 A -1.0 ± 5.0, B -11.0 ± 2.5, C -22.0 ± 19.9.
Holm at n=10 over the 5 distinct pairs (A, B, C vs scratch; B, C vs A): p (t, df 2) of C-A 0.0027, A-s 0.0041,
B-s 0.0092, C-s 0.020, B-A 0.48 -> adjusted 0.014, 0.016, 0.028, 0.040, 0.48: every gain significant.
At n=20 over 3 pairs: B-s 0.0027 -> 0.0082 (significant), C-s 0.041 -> 0.083 and A-s 0.48 (not).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from transferlab.analysis import metric_columns, paired, plots, provenance, stats, tables
from transferlab.run.record import RunRecord

ACC = {10: {"A": [0.80, 0.82, 0.84], "B": [0.79, 0.83, 0.81], "C": [0.70, 0.71, 0.72], "scratch": [0.50, 0.55, 0.60]},
       20: {"A": [0.89, 0.93, 0.91], "B": [0.80, 0.81, 0.82], "C": [0.60, 0.70, 0.80], "scratch": [0.90, 0.92, 0.94]}}


def _rows() -> pd.DataFrame:
    out = []
    for n, arms in ACC.items():
        for arm, accs in arms.items():
            for seed, acc in enumerate(accs):
                out.append({"status": "ok", "setting": "S_1", "target": "t", "backbone": "b", "setting_key": "s",
                            "context_key": "c", "line_key": arm, "arm_key": f"{arm}|{n}", "baseline_key": "scratch",
                            "arm": arm, "is_scratch": arm == "scratch", "copies_nothing": arm == "scratch",
                            "variant": "", "source": "A",
                            "transfer": "x", "strategy": "fixed", "init": "source", "cut": 4, "upper": "drop",
                            "freeze": 0 if arm == "scratch" else 1, "n": float(n), "n_label": str(n), "seed": seed,
                            "data_seed": seed, "test_acc": acc, "val_acc": acc, "trainable_params": 1, "epochs": 2,
                            "val_acc_history": [acc / 2, acc], "run_dir": f"{arm}_{n}_{seed}"})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def computed():
    df = _rows()
    tests = paired.comparisons(df)
    summary = paired.mark_ties(stats.summarize(df), tests)
    gain = paired.with_tests(stats.paired_gain(df), tests)
    return df, summary, gain


def test_summary_table_marks_the_best_in_bold_and_ties_with_a_dagger(computed):
    _, summary, _ = computed
    g = tables.summary_grid(summary, "S_1", "", "accuracy", 0.95)
    md = tables.to_markdown(g).splitlines()
    assert md[:8] == [
        "**Test accuracy (%) on S_1: mean ± half-width of the 95% t-interval over seeds.**", "",
        "| arm | n=10 | n=20 |", "|---|--:|--:|",
        "| A | **82.0 ± 5.0** | 91.0 ± 5.0† |",
        "| B | 81.0 ± 5.0† | 81.0 ± 2.5 |",
        "| C | 71.0 ± 2.5 | 70.0 ± 24.8 |",
        "| scratch | 55.0 ± 12.4 | **92.0 ± 5.0** |"]
    assert "† Not distinguishable from the best: the paired 95% t-interval of the difference (same seeds, same " \
           "labelled subsets) includes 0; this is the paired t-test against the best before any correction " \
           "(paired_tests.csv has its Holm-adjusted p)." in [line.rstrip() for line in md]
    tex = tables.to_latex(g)
    assert r"A & {\boldmath$82.0 \pm 5.0$} & $91.0 \pm 5.0^{\dagger}$ \\" in tex
    assert r"scratch & $55.0 \pm 12.4$ & {\boldmath$92.0 \pm 5.0$} \\" in tex
    assert r"\caption{Test accuracy (\%) on S\_1: mean $\pm$ half-width" in tex
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}"):
        assert tex.count(rule) == 1, rule
    assert r"$^\dagger$ Not distinguishable from the best" in tex


def test_gain_table_marks_its_own_test_after_and_before_holm(computed):
    """The marks come from the paired t-test against scratch whose interval the cell shows: C at n=20 has
    [-41.9, -2.1] (excludes 0, p 0.041) but Holm-adjusted p 0.083: significant before correction only (°). No bold
    and no dagger: those are the summary's."""
    _, summary, gain = computed
    g = tables.gain_grid(gain, summary, "S_1", "", "accuracy", 0.95)
    assert tables.to_markdown(g).splitlines()[2:7] == [
        "| arm | n=10 | n=20 |", "|---|--:|--:|",
        r"| A | +27.0 ± 7.5\* | -1.0 ± 5.0 |",
        r"| B | +26.0 ± 10.8\* | -11.0 ± 2.5\* |",
        r"| C | +16.0 ± 9.9\* | -22.0 ± 19.9° |"]
    tex = tables.to_latex(g)
    assert r"A & $+27.0 \pm 7.5^{*}$ & $-1.0 \pm 5.0$ \\" in tex
    assert r"C & $+16.0 \pm 9.9^{*}$ & $-22.0 \pm 19.9^{\circ}$ \\" in tex
    md = tables.to_markdown(g).replace("\\*", "*")
    assert "* Significant after Holm's correction: Holm-adjusted p ≤ 0.05" in md
    assert "° Significant before correction only: p ≤ 0.05 and the interval excludes 0" in md


def test_effective_data_table_prints_censored_values_and_interval_ends_as_bounds(computed):
    _, summary, _ = computed
    # scratch ran at n = 10 and 20: an interval end at +inf is "> 20 - n", at -inf "< 10 - n"
    dt = pd.DataFrame([
        {"arm": "A", "n_label": "10", "n": 10.0, "censored": "", "d_t": 6.25, "d_t_bound": math.nan,
         "d_t_lo": 4.0, "d_t_hi": math.inf},
        {"arm": "A", "n_label": "20", "n": 20.0, "censored": "above", "d_t": math.nan, "d_t_bound": 0.0,
         "d_t_lo": math.inf, "d_t_hi": math.inf},
        {"arm": "C", "n_label": "10", "n": 10.0, "censored": "below", "d_t": math.nan, "d_t_bound": 0.0,
         "d_t_lo": -math.inf, "d_t_hi": -2.5},
        {"arm": "C", "n_label": "20", "n": 20.0, "censored": "", "d_t": -7.0, "d_t_bound": math.nan,
         "d_t_lo": math.nan, "d_t_hi": math.nan}]).assign(baseline_key="scratch", setting_key="s", freeze=1)
    g = tables.effective_grid(dt, summary, "S_1", "", 0.95)
    assert tables.to_markdown(g).splitlines()[4:6] == [
        "| A | **6.25 [4, > 10]** | > 0† |",  # A is the best arm at n=10, tied with scratch at n=20
        "| C | < 0 [< 0, -2.5] | -7 |"]
    assert r"{\boldmath$6.25 [4, >10]$}" in tables.to_latex(g)


def test_tables_are_written_per_setting_as_tex_and_md(computed, tmp_path):
    _, summary, gain = computed
    grids = tables.grids(summary, gain, pd.DataFrame(), "balanced accuracy", 0.95)
    assert [g.name for g in grids] == ["summary", "gain"]  # one setting: no suffix; no effective data: no table
    files = tables.write_tables(grids, tmp_path / "tables")
    assert sorted(files) == ["tables/gain.md", "tables/gain.tex", "tables/summary.md", "tables/summary.tex"]
    assert r"Test balanced accuracy (\%)" in (tmp_path / "tables" / "summary.tex").read_text()
    two = pd.concat([summary, summary.assign(setting="S_2", setting_key="s2")])
    assert [g.name for g in tables.grids(two, gain, pd.DataFrame())] == ["summary_S_1", "gain_S_1", "summary_S_2"]


def test_latex_escapes_labels():
    assert tables.latex_escape("digits_5to9 & 50% #1 {x} a<b") == r"digits\_5to9 \& 50\% \#1 \{x\} a\textless{}b"


# ---- the majority-class baseline and the other metrics in summary.csv ------------------------------------------

def test_majority_class_scores_by_hand():
    # 70 / 10 / 10 / 5 / 5: p = 0.7, k = 5 -> accuracy 0.7, balanced 0.2, macro-F1 2 * 0.7 / 1.7 / 5, AUROC 0.5
    s = metric_columns.majority_scores([70, 10, 10, 5, 5])
    assert s == pytest.approx({"acc": 0.7, "balanced_acc": 0.2, "macro_f1": 1.4 / 1.7 / 5, "auroc": 0.5})
    assert all(math.isnan(v) for v in metric_columns.majority_scores(None).values())


def test_summary_gets_every_metric_and_the_baseline_of_the_lead_one(computed):
    df, summary, _ = computed
    runs = df.assign(test_balanced_acc=df["test_acc"] - 0.1, test_macro_f1=np.nan, test_auroc=np.nan)
    records = {d: RunRecord(metrics=type(RunRecord().metrics)(test_class_counts=[3, 1])) for d in df["run_dir"]}
    out = metric_columns.add(summary, runs, records, metric="acc")
    a10 = out[(out["arm"] == "A") & (out["n_label"] == "10")].iloc[0]
    assert a10["balanced_acc_mean"] == pytest.approx(0.72) and a10["majority_acc"] == pytest.approx(0.75)
    assert a10["majority_baseline"] == pytest.approx(0.75)
    assert "macro_f1_mean" not in out and "accuracy_mean" not in out  # not recorded; the lead metric is acc_*
    lead = metric_columns.add(summary, runs, records, metric="balanced_acc")
    assert lead["majority_baseline"].tolist() == pytest.approx([0.5] * len(lead))  # 1/k
    assert "accuracy_mean" in lead and "balanced_acc_mean" not in lead


# ---- the setup block ------------------------------------------------------------------------------------------

def test_setup_block_from_records_and_sweep_json(tmp_path):
    from test_report_grouping import config, put, record

    recs = {}
    for seed in (0, 1):
        for ov in ("transfer=scratch", "transfer.freeze=2"):
            rec = record(config("target.n_per_class=5", f"seed={seed}", ov, "train.lr=0.01", "name=demo"), 0.8)
            rec["target_data"] = {"sizes": {"pool": 500, "val": 100, "test": 200, "train": 25}}
            if ov != "transfer=scratch":
                rec["source_metrics"] = {"source": "digits_0to4", "backbone": "small_cnn", "test/acc": 0.987,
                                         "epochs": 30}
                rec["source_ckpt"] = "cache/source/abc123/model.pt"
                rec["source_cache"] = "hit"
            folder = f"{ov},seed={seed}"
            put(tmp_path, folder, rec)
            recs[folder] = RunRecord.read(tmp_path / folder / "result.json")
    sweep = {"launches": [{"argv": ["-m", "name=demo", "seed=0,1", "train.lr=0.01", "transfer=scratch,finetune",
                                    "hydra.sweep.dir=/some dir"], "start": 0.0, "end": 1.0, "host": "h", "points": 4,
                           "ok": 4}]}
    defaults = provenance.flatten(config("target.n_per_class=5"))  # the composed defaults (but n)
    s = provenance.describe(recs, sweep, defaults=(defaults, "the defaults"))
    assert [c["command"] for c in s.commands] == [
        "python -m transferlab.train -m name=demo seed=0,1 train.lr=0.01 transfer=scratch,finetune "
        "'hydra.sweep.dir=/some dir'"]
    assert s.commands[0]["outcome"] == "4 points: 4 ok"
    varied = dict(s.varied)
    assert varied["seed"] == "0, 1" and varied["transfer.name"] == "finetune, scratch"
    assert ("train.lr", "0.01", "0.001") in s.changed and ("name", "demo", "default") in s.changed
    assert not any(k.startswith("paths.") for k, *_ in s.changed + s.varied)
    assert dict(s.training)["target training"].startswith("epochs (max) ")
    assert "lr 0.01," in dict(s.training)["target training"]
    assert s.sources == [("digits_0to4 / small_cnn", "test accuracy 98.7% after 30 epochs (cache entry abc123: hit 2)")]
    roles = {role for role, _, _ in s.data}
    assert roles == {"target", "source"} and all(len(sha) == 64 for _, _, sha in s.data)
    assert s.splits == [("digits_5to9", "pool 500, val 100, test 200; labelled training subset 25 (n=5)")]
    env = dict(s.environment)
    assert env["transferlab"] == "0.1.0, commit aaaaaaaaaaaa" and env["python"] == "3.11.9"
    assert "torch 2.3.0" in env["libraries"]


def test_default_config_is_composed_from_conf():
    flat, note = provenance.default_config()
    assert flat is not None, note
    assert flat["train.max_epochs"] > 0 and "name" in flat and not any(k.startswith("paths.") for k in flat)
    assert flat["data_seed"] == flat["seed"]  # ${seed} resolved


# ---- figures --------------------------------------------------------------------------------------------------

@pytest.fixture
def captured(monkeypatch):
    """The figures the plotting functions make, kept open instead of saved."""
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path
    monkeypatch.setattr(plots, "_save", keep)
    return figs


def test_learning_curves_show_every_n(captured, tmp_path):
    rows = []
    for n in (1, 2, 5, 10, 20):
        for arm, freeze in (("freeze=0", 0), ("scratch", 0)):
            rows.append({"status": "ok", "run_dir": f"{arm}{n}", "setting": "S", "setting_key": "s",
                         "line_key": arm, "arm": arm, "is_scratch": arm == "scratch", "target": "t", "backbone": "b",
                         "n": float(n), "n_label": str(n), "seed": 0, "freeze": freeze,
                         "val_acc_history": [0.2, 0.5, 0.6]})
    plots.learning_curves(pd.DataFrame(rows), tmp_path / "lc.png", "t", ncols=4)
    titles = [ax.get_title() for ax in captured[0].axes if ax.get_visible()]
    assert titles == [f"n = {n} per class" for n in (1, 2, 5, 10, 20)]  # none dropped: a second row


def test_heatmap_boxes_the_best_and_marks_ties(captured, computed, tmp_path):
    _, summary, _ = computed
    plots.heatmap(summary, tmp_path / "h.png", "t")
    ax = captured[0].axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"0.820", "0.810†", "0.910†", "0.920"} <= texts and "0.550†" not in texts
    boxes = [p for p in ax.patches if p.get_edgecolor()[:3] == pytest.approx((0xD5 / 255, 0x5E / 255, 0))]
    solid = sorted((int(p.get_x()), int(p.get_y())) for p in boxes if p.get_linestyle() == "solid")
    dashed = sorted((int(p.get_x()), int(p.get_y())) for p in boxes if p.get_linestyle() == "--")
    # rows A, B, C, scratch; columns n=10, n=20
    assert solid == [(0, 0), (1, 3)] and dashed == [(0, 1), (1, 0)]


def test_palette_colours_are_visible_on_white():
    def luminance(hex_colour: str) -> float:
        rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    for c in plots.PALETTE:  # WCAG contrast against white of at least 2:1 (yellow #F0E442 has 1.2)
        assert (1.05 / (luminance(c) + 0.05)) >= 2.0, c


def test_every_figure_is_saved_as_png_and_pdf(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2])
    path = plots.save_figure(fig, tmp_path / "figures" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = (tmp_path / "figures" / "f.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and b"/Subtype /Type3" not in pdf and b"/FontFile2" in pdf  # TrueType embedded


def test_n_star_short_text():
    row = {"n_star": 2.0, "n_star_lo": 2.0, "n_star_hi": 2.0, "n_min": 2.0, "n_max": 100.0, "n_seeds": 3}
    assert plots.n_star_short(row) == "≤ 2"
    assert plots.n_star_short({**row, "n_star": 7.1, "n_star_hi": math.inf}) == "= 7.1 (CI ≤ 2 to > 100)"
    assert plots.n_star_short({**row, "n_star": math.inf, "n_star_lo": 50.0, "n_star_hi": math.inf}) == \
        "> 100 (CI 50 to > 100)"


def test_written_sweep_gives_the_tables_worked_out_above(tmp_path):
    """The n=10 case above (A -> freeze=0, B -> freeze=2) as result.json files through the whole report."""
    from test_report_grouping import config, put, record

    for arm, ov in (("A", "transfer.freeze=0"), ("B", "transfer.freeze=2"), ("scratch", "transfer=scratch")):
        for seed, acc in enumerate(ACC[10][arm]):
            rec = record(config("target.n_per_class=10", f"seed={seed}", ov), acc)
            rec["metrics"]["test/class_counts"] = [70, 10, 10, 5, 5]
            put(tmp_path, f"{ov},seed={seed}", rec)
    from transferlab.analysis.build import build_report

    build_report(tmp_path, tmp_path / "out", n_boot=20)
    tables_dir = tmp_path / "out" / "tables"
    assert sorted(p.name for p in tables_dir.iterdir()) == ["gain.md", "gain.tex", "summary.md", "summary.tex"]
    assert (tables_dir / "summary.md").read_text().splitlines()[4:8] == [
        "| fine-tune all | **82.0 ± 5.0** |", "| fine-tune top 2 | 81.0 ± 5.0† |", "| scratch | 55.0 ± 12.4 |",
        "| majority class | 70.0 |"]
    # Holm over the 3 pairs at n=10: 0.0041 x 3, 0.0092 x 2, 0.48: both gains significant
    assert (tables_dir / "gain.md").read_text().splitlines()[4:6] == [
        r"| fine-tune all | +27.0 ± 7.5\* |", r"| fine-tune top 2 | +26.0 ± 10.8\* |"]
    html_text = (tmp_path / "out" / "report.html").read_text()
    assert "<b>82.0 ± 5.0</b>" in html_text and "81.0 ± 5.0<sup>†</sup>" in html_text


def test_the_answer_names_the_best_arm_with_its_ties_and_the_gain(computed):
    from transferlab.analysis import answer

    _, summary, gain = computed
    tests = paired.comparisons(_rows())
    best = stats.best_per_n(summary, tests)
    [(setting, text)] = answer.paragraphs(summary, best, gain, pd.DataFrame(), pd.DataFrame())
    assert setting == "S_1"
    assert "n=10: A 82.0% (tied: B); n=20: scratch 92.0% (tied: A)." in text
    assert "n=10: A +27.0 pt [+19.5, +34.5]; n=20: A -1.0 pt [-6.0, +4.0]." in text  # half-widths 7.45, 4.97
