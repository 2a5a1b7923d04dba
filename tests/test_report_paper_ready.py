"""Paper-ready, second pass (issue 29), each item on a synthetic sweep: transferability ties within a tolerance and
scores that cannot vary, no panel without data, the effective-data axis clipped and said, arm names from the plan
in figures, tables and CSVs, the majority floor kept off a squashed axis, LaTeX labels unique per sweep, gain marks
that agree with the intervals, the setup block's sources of variation, and notes that are sentences."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from transferlab.analysis import paired, plots, provenance, stats, tables, transferability
from transferlab.run.record import RunRecord
from transferlab.transfer.arm_name import arm_name

matplotlib.use("Agg")


# ---- 1. transferability: ties within a tolerance, fewer than two distinct scores, scores that cannot vary -------

def _scored(scores: dict[str, list[float]], accs: dict[str, list[float]], *, cut=None, source_ckpt=None,
            method: str = "logme") -> pd.DataFrame:
    """Transfer runs of one setting at n=5, an arm per key, one row per seed; cut/source_ckpt per arm."""
    rows = []
    for i, (arm, values) in enumerate(scores.items()):
        for seed, (v, a) in enumerate(zip(values, accs[arm])):
            rows.append({"status": "ok", "is_scratch": False, "setting": "S", "setting_key": "s", "target": "t",
                         "backbone": "b", "n_label": "5", "n": 5.0, "arm": arm, "arm_key": arm, "seed": seed,
                         "data_seed": seed, "test_acc": a, f"score_{method}": v,
                         "cut": (cut or {}).get(arm, i + 1), "init": "source",
                         "source_ckpt": (source_ckpt or {}).get(arm, "cache/a/model.pt"), "source": "A"})
    return pd.DataFrame(rows)


def test_scores_equal_within_the_tolerance_are_ties_and_rank_nothing():
    # the numbers: the same features scored twice differ in the 9th digit
    noisy = [-0.8432630236, -0.8432630294]
    assert transferability.tie_ranks(np.array([noisy])).tolist() == [[0.0, 0.0]]
    assert transferability.n_distinct(np.array([[1.0, 1.0 + 1e-4, 1.0 + 2e-4]])).tolist() == [3]
    df = _scored({"a": [noisy[0]] * 3, "b": [noisy[1]] * 3}, {"a": [0.9, 0.91, 0.92], "b": [0.7, 0.71, 0.72]})
    table, _ = transferability.grade(df, n_boot=50)
    r = table.iloc[0]
    assert not r["graded"] and r["n_distinct"] == 1
    assert all(math.isnan(r[c]) for c in ("kendall_tau", "weighted_tau", "spearman", "kendall_tau_lo"))
    assert "ranks nothing" in r["note"] and "1e-06" in r["note"]
    assert r["picked_arm"] == "a | b" and r["regret"] == pytest.approx(0.1)  # a random pick of the two
    assert "n=5: ranks nothing" in transferability.summary_lines(table)[0]


def test_ties_count_as_neither_concordant_nor_discordant():
    # a and b tie within 1e-6; c is clearly lower and the worst arm: tau-b over one tie
    df = _scored({"a": [2.0] * 2, "b": [2.0 + 1e-9] * 2, "c": [1.0] * 2},
                 {"a": [0.80, 0.80], "b": [0.90, 0.90], "c": [0.5, 0.5]})
    r = transferability.grade(df, n_boot=20)[0].iloc[0]
    assert r["graded"] and r["n_distinct"] == 2
    # pairs (a,b) tied in score: 0; (a,c), (b,c) concordant: tau-b = 2 / sqrt(2 * 3)
    assert r["kendall_tau"] == pytest.approx(2 / math.sqrt(6))
    assert r["regret"] == pytest.approx(0.05)  # a and b tie for the top: their mean 0.85 vs the best 0.90


def test_a_score_that_cannot_vary_across_freeze_depths_is_said_once_not_graded(tmp_path):
    # freeze depths at one cut, one source model: LogME reads the same features in every arm
    df = _scored({"freeze=0": [1.0, 1.1], "freeze=2": [1.0 + 3e-9, 1.1], "freeze=4 (all)": [1.0, 1.1 + 1e-9]},
                 {"freeze=0": [0.9, 0.92], "freeze=2": [0.8, 0.82], "freeze=4 (all)": [0.6, 0.62]},
                 cut={"freeze=0": 4, "freeze=2": 4, "freeze=4 (all)": 4})
    df = pd.concat([df, df.assign(n_label="20", n=20.0)])
    table, arms = transferability.grade(df, n_boot=20)
    assert len(table) == 2 and not table["graded"].any() and arms.empty
    assert table["note"].str.startswith(transferability.SAME_INPUT).all()
    [line] = transferability.summary_lines(table)
    assert line.startswith("S: logme not graded (n=5, 20): it reads only the features at the cut (cut=4)")
    assert transferability.figures(table, arms, tmp_path) == []  # nothing to draw: no figure
    # other cuts read other features: graded
    cuts = _scored({"c2": [1.0, 1.1], "c3": [2.0, 2.1]}, {"c2": [0.6, 0.62], "c3": [0.8, 0.82]})
    assert transferability.grade(cuts, n_boot=20)[0]["graded"].all()


# ---- 2. no panel without data; the effective-data axis -------------------------------------------------------

def test_transferability_figure_has_no_rank_panel_without_tau(tmp_path, monkeypatch):
    df = _scored({"a": [1.0, 1.0], "b": [1.0, 1.0]}, {"a": [0.8, 0.8], "b": [0.7, 0.7]},
                 source_ckpt={"a": "x", "b": "y"})  # different inputs, equal scores: graded, ranks nothing
    table, arms = transferability.grade(df, n_boot=20)
    import matplotlib.pyplot as plt

    drawn = []
    orig = plots.save_figure

    def spy(fig, path):
        drawn.append([ax.get_title() for ax in fig.axes if ax.axison])
        return orig(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    [(_, path, caption)] = transferability.figures(table, arms, tmp_path)
    plt.close("all")
    assert drawn == [["logme"]] and "no rank-agreement panel" in caption and path.exists()


def test_effective_data_axis_spans_the_estimates_and_says_what_it_cut():
    dt = pd.DataFrame({"d_t": [-3.0, 2.0, math.nan], "censored": ["", "", "above"], "d_t_bound": [math.nan] * 2 + [5.0],
                       "d_t_lo": [-47.0, 1.0, math.nan], "d_t_hi": [-1.0, math.inf, math.nan]})
    lo, hi, clipped, ends = plots.effective_range(dt)
    pad = plots.RANGE_PAD * 8  # estimates and bounds span -3 .. 5
    assert (lo, hi) == pytest.approx((-3 - pad, 5 + pad)) and (clipped, ends) == (2, 4)


# ---- 3. arm names from the plan ------------------------------------------------------------------------------

def test_arm_names_say_what_trains():
    assert arm_name(cut=0, freeze=0) == "scratch"
    assert arm_name(cut=0, freeze=0, source_compute=True) == "scratch (matched compute)"
    assert arm_name(cut=4, freeze=4) == "linear probe"
    assert arm_name(cut=2, freeze=2, upper="reinit") == "frozen copy"
    assert arm_name(cut=4, freeze=0) == "fine-tune all"
    assert arm_name(cut=4, freeze=3) == "fine-tune top 1"
    assert arm_name(cut=4, freeze=4, peft="lora r=4") == "LoRA r=4"
    assert arm_name(cut=4, freeze=2, peft="lora r=8") == "LoRA r=8 + top 2"
    assert arm_name(cut=4, freeze=0, strategy="lp_ft") == "LP-FT"
    assert arm_name(cut=4, freeze=None, trainable="trainable=[*.bias]") == "train [*.bias]"
    assert arm_name(cut=4, freeze=4, init="random_frozen") == "linear probe, control: random frozen"


def test_names_reach_results_csv_tables_and_figures(tmp_path):
    from test_report_grouping import config, put, record

    for arm, ov in (("ft", "transfer.freeze=0"), ("top", "transfer.freeze=3"), ("lp", "transfer=linear_probe"),
                    ("scratch", "transfer=scratch")):
        for seed in (0, 1, 2):
            for n in (5, 10):
                put(tmp_path, f"{ov},n={n},seed={seed}",
                    record(config(f"target.n_per_class={n}", f"seed={seed}", ov), 0.6 + 0.01 * seed + 0.01 * n))
    from transferlab.analysis.build import build_report

    r = build_report(tmp_path, tmp_path / "out", n_boot=20)
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    cols = list(res.columns)
    assert cols[cols.index("arm") + 1] == "arm_name"  # the name beside the machine label
    names = dict(zip(res["arm"], res["arm_name"]))
    assert names == {"freeze=0": "fine-tune all", "freeze=3": "fine-tune top 1", "freeze=4 (all)": "linear probe",
                     "scratch": "scratch"}
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"arm", "arm_name", "best_arm", "best_arm_name"} <= set(summary.columns)
    md = (tmp_path / "out" / "tables" / "summary.md").read_text()
    assert "| fine-tune all |" in md and "| linear probe |" in md and "freeze=" not in md
    html_text = (tmp_path / "out" / "report.html").read_text()
    assert "fine-tune top 1" in html_text
    assert all("freeze=" not in text for _, text in r.answer)


# ---- 4. axes and labels --------------------------------------------------------------------------------------

def _summary(floor: float) -> pd.DataFrame:
    return pd.DataFrame({"n": [5.0, 10.0], "acc_mean": [0.9, 0.95], "acc_ci_lo": [0.85, 0.93],
                         "acc_ci_hi": [0.95, 0.97], "majority_baseline": [floor, floor]})


def test_a_majority_floor_far_below_the_data_goes_into_the_legend_not_the_axis():
    import matplotlib.pyplot as plt

    far, near = _summary(0.216), _summary(0.80)
    assert plots.majority_floor(far)[1] is False and plots.majority_floor(near)[1] is True
    assert plots.majority_floor(far, ylim=(0.0, 1.0))[1] is True  # a fixed range that holds it: drawn
    assert "21.6%" in plots.majority_caption(far) and "not drawn" in plots.majority_caption(far)
    fig, ax = plt.subplots()
    ax.plot([5, 10], [0.9, 0.95])
    plots._majority(ax, far)
    assert ax.get_ylim()[0] > 0.8  # the axis keeps the data's range
    assert any("21.6%" in t.get_text() for t in ax.legend().get_texts())
    plt.close(fig)


def test_ylim_option_is_checked(tmp_path):
    from transferlab.report import main

    assert main([str(tmp_path), "--ylim", "0.9", "0.8"]) == 2


def _grids(sweep: str) -> list:
    from test_report_paper import _rows

    df = _rows()
    tests = paired.comparisons(df)
    summary = paired.mark_ties(stats.summarize(df), tests)
    gain = paired.with_tests(stats.paired_gain(df), tests)
    return tables.grids(summary, gain, pd.DataFrame(), sweep=sweep)


def test_latex_labels_are_unique_per_sweep_and_the_gain_marks_have_their_own_meaning():
    a, b = _grids("freeze_vs_n"), _grids("medical")
    labels = [g.label for g in a + b]
    assert len(set(labels)) == len(labels)
    assert a[0].label == "tab:freeze-vs-n-summary" and b[0].label == "tab:medical-summary"
    assert "\\label{" + a[0].label + "}" in tables.to_latex(a[0])
    gain = next(g for g in a if g.kind == "gain")
    cells = dict(gain.rows)
    # n=20 (test_report_paper's worked numbers): C - scratch p 0.041 before correction, 0.083 after Holm
    c20 = cells["C"][gain.columns.index("20")]
    assert c20.uncorrected and not c20.significant and not c20.tied and not c20.best
    assert cells["B"][gain.columns.index("20")].significant  # Holm 0.0082
    assert not any(c.tied or c.best for _, row in gain.rows for c in row)  # † and bold are the summary's
    md = tables.to_markdown(gain)
    assert tables.DAGGER not in md and "° Significant before correction only" in md
    assert "paired t-test of the arm against scratch" in md
    assert r"^{\circ}" in tables.to_latex(gain)


# ---- 5. the setup block --------------------------------------------------------------------------------------

def test_setup_says_what_the_intervals_include_and_nothing_internal(tmp_path):
    from test_report_grouping import config, put, record

    recs = {}
    for seed in (0, 1, 2):
        for ov in ("transfer=scratch", "transfer.freeze=2"):
            rec = record(config(f"seed={seed}", ov, "pretrain.seed=0"), 0.8)
            rec["config"]["group"] = f"groups/g{seed}.json"  # the sweeper's internal key, different per group
            rec["config"]["target"].update(kind="npz", name="xray", classes=None)  # another task than the default
            folder = f"{ov},seed={seed}"
            put(tmp_path, folder, rec)
            recs[folder] = RunRecord.read(tmp_path / folder / "result.json")
    defaults = provenance.flatten(config())
    sweep = {"launches": [{"argv": ["-m", "seed=0,1"], "start": 1.0, "end": 2.0, "host": "h"},
                          {"argv": ["-m", "seed=0,1,2"], "start": 3.0, "end": 4.0, "host": "h"}],
             "points": [{"name": f, "launch": 3.0, "status": "ok"} for f in recs]}
    s = provenance.describe(recs, sweep, defaults=(defaults, "the defaults"))
    assert [k for k, _ in s.varied if k == "group"] == []
    changed = {k for k, _, _ in s.changed}
    assert "target.kind" in changed and "target.name" in changed and "target.classes" not in changed
    variation = dict(s.variation)
    assert variation["training seed (seed)"].startswith("included: 3 values")
    assert "data_seed = seed" in variation["data draw (data_seed: which labelled examples)"]
    assert variation["source model (pretrain.seed)"].startswith("not included: pretrain.seed=0")
    assert [c["command"] for c in s.commands] == ["python -m transferlab.train -m seed=0,1,2"]
    assert [c["command"] for c in s.superseded] == ["python -m transferlab.train -m seed=0,1"]
    from transferlab.analysis.html import setup_html

    page = setup_html(s)
    assert "what the intervals over seeds include" in page and "superseded" in page
    assert page.index("seed=0,1,2") < page.index("superseded")


def test_one_source_model_per_seed_is_a_source_of_variation(tmp_path):
    from test_report_grouping import config, put, record

    recs = {}
    for seed in (0, 1):
        rec = record(config(f"seed={seed}", "transfer.freeze=2"), 0.8)
        put(tmp_path, str(seed), rec)
        recs[str(seed)] = RunRecord.read(tmp_path / str(seed) / "result.json")
    s = provenance.describe(recs, None, defaults=(None, "none"))
    assert dict(s.variation)["source model (pretrain.seed)"].startswith("included: pretrain.seed = seed")


# ---- 6. words --------------------------------------------------------------------------------------------------

def test_effective_data_without_a_scratch_curve_is_a_sentence():
    from transferlab.analysis import effective_data, fits

    reason = fits.fit_curve([1, 2], [0.5, 0.6]).reason
    row = {"d_t_text": f"{effective_data.NOT_ESTIMATED} (no scratch curve: {reason})"}
    assert effective_data.d_t_sentence(row) == \
        "D_T not estimated (no scratch curve: 2 distinct n, and a fit needs at least 3)"
    assert effective_data.d_t_sentence({"d_t_text": "14 (95% bootstrap CI 12 to > 15)"}) == \
        "D_T 14 labelled examples per class (95% bootstrap CI 12 to > 15)"


def test_npz_labels_outside_0_to_k_minus_1_are_mapped_as_docs_tasks_says(tmp_path, make_cfg):
    """docs/tasks.md: labels need not be 0..K-1; the classes present are mapped to 0..C-1 in increasing order."""
    from transferlab.run.setup import prepare

    rng = np.random.default_rng(0)
    y = np.repeat([3, 7], 60)
    x = rng.random((120, 8, 8)).astype(np.float32)
    path = tmp_path / "gappy.npz"
    np.savez(path, x_train=x, y_train=y)
    prep = prepare(make_cfg("source=none", "target=npz", f"target.path={path}", "target.name=gappy",
                            "target.n_per_class=5", "transfer=scratch"))
    t = prep.target
    assert t.class_names == ["3", "7"] and sorted(set(t.test_y.tolist())) == [0, 1]
    assert json.dumps(t.class_names)
