"""The report's honest comparisons and the field's quantities, on numbers worked out by hand.

Holm's correction on a known p-value vector; ties with the best arm from paired intervals; censored n* printed as a
bound; learning-curve fits that recover the parameters of the curve that made the data; effective data
transferred on a constructed case (the arm equals scratch at 4n, so D_T = 3n), with its censored cases;
time-to-threshold as a censored median; and the CLI options (`--metric`, `--crossover`) on written records.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from transferlab.analysis import bootstrap, effective_data, fits, multiplicity, paired, stats

T975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


# ---- Holm ---------------------------------------------------------------------------------------------------

def test_holm_on_a_known_vector():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02 0.03 0.06 0.06
    assert multiplicity.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = multiplicity.holm([0.01, math.nan, 0.04])  # NaN: no test, not counted (m = 2)
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.04)
    assert multiplicity.holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1, order kept by the running max
    assert multiplicity.holm([]).tolist() == []


# ---- paired tests, ties, the best-arm table -----------------------------------------------------------------

def _rows(arms: dict[str, list[float]], n: float = 10.0, scratch: str = "scratch") -> list[dict]:
    """Hand-built ok runs of one setting at one n: arm label -> test accuracy per seed (seed = data seed)."""
    out = []
    for arm, accs in arms.items():
        for seed, acc in enumerate(accs):
            out.append({"status": "ok", "setting": "S", "target": "t", "backbone": "b", "setting_key": "s",
                        "context_key": "c", "line_key": arm, "arm_key": f"{arm}|{n:g}", "baseline_key": scratch,
                        "arm": arm, "is_scratch": arm == scratch, "copies_nothing": arm == scratch, "variant": "", "source": "A", "transfer": "x",
                        "strategy": "fixed", "init": "source", "cut": 4, "upper": "drop", "freeze": 0 if arm == scratch else 1,
                        "n": float(n), "n_label": f"{n:g}", "seed": seed, "data_seed": seed, "test_acc": acc,
                        "val_acc": acc, "trainable_params": 1, "epochs": 1, "val_acc_history": [acc]})
    return out


A = [0.80, 0.82, 0.84]
TIES = {"A": A,
        "B": [a - d for a, d in zip(A, [0.01, -0.01, 0.03])],  # B - A = -0.01, +0.01, -0.03: sd 0.02
        "C": [a - d for a, d in zip(A, [0.10, 0.11, 0.12])],   # C - A = -0.10, -0.11, -0.12: sd 0.01
        "scratch": [0.50, 0.55, 0.60]}


def test_ties_with_the_best_arm_from_paired_intervals():
    df = pd.DataFrame(_rows(TIES))
    tests = paired.comparisons(df)
    summary = paired.mark_ties(stats.summarize(df), tests)
    row = {r["arm"]: r for _, r in summary.iterrows()}
    assert set(summary["best_arm"]) == {"A"} and bool(row["A"]["is_best"]) and not row["B"]["is_best"]
    half_b = T975_DF2 * 0.02 / math.sqrt(3)  # B - A: mean -0.01, sd 0.02 -> [-0.0597, 0.0397] includes 0
    assert row["B"]["diff_vs_best"] == pytest.approx(-0.01)
    assert (row["B"]["diff_vs_best_ci_lo"], row["B"]["diff_vs_best_ci_hi"]) == (
        pytest.approx(-0.01 - half_b), pytest.approx(-0.01 + half_b))
    half_c = T975_DF2 * 0.01 / math.sqrt(3)  # C - A: mean -0.11, sd 0.01 -> [-0.1348, -0.0852] excludes 0
    assert row["C"]["diff_vs_best_ci_hi"] == pytest.approx(-0.11 + half_c)
    assert row["B"]["tied_with_best"] is True and row["C"]["tied_with_best"] is False
    assert row["A"]["tied_with_best"] is False and row["scratch"]["tied_with_best"] is False

    # the paired t-test of C vs A: t = -0.11 / (0.01 / sqrt 3), 2 df
    c_best = tests[(tests["arm"] == "C") & (tests["reference_kind"] == "best")].iloc[0]
    t = -0.11 / (0.01 / math.sqrt(3))
    assert c_best["t_stat"] == pytest.approx(t) and c_best["n_pairs"] == 3
    from scipy import stats as st
    assert c_best["p_t"] == pytest.approx(2 * st.t.sf(abs(t), 2))
    assert c_best["p_wilcoxon"] == pytest.approx(0.25)  # 3 pairs, all one sign: the smallest exact p, 2 / 2^3
    # the family: {B,A} {C,A} {scratch,A} vs best, {A,s} (= {s,A}) {B,s} {C,s} vs scratch: 5 distinct pairs
    assert set(tests["family_size"]) == {5} and len(tests) == 6
    pair_p = {}
    for _, r in tests.iterrows():
        pair_p[frozenset((r["line_key"], r["reference_line_key"]))] = r["p_t"]
    expected = dict(zip(pair_p, multiplicity.holm(list(pair_p.values()))))
    for _, r in tests.iterrows():
        assert r["p_t_holm"] == pytest.approx(expected[frozenset((r["line_key"], r["reference_line_key"]))])
    a_vs_s = tests[(tests["arm"] == "A") & (tests["reference_kind"] == "scratch")].iloc[0]
    s_vs_a = tests[(tests["arm"] == "scratch") & (tests["reference_kind"] == "best")].iloc[0]
    assert a_vs_s["p_t_holm"] == s_vs_a["p_t_holm"] and a_vs_s["diff_mean"] == pytest.approx(-s_vs_a["diff_mean"])

    best = stats.best_per_n(summary, tests).iloc[0]
    assert (best["best_arm"], best["runner_up"], best["tied_with_best"], best["n_tied"]) == ("A", "B", "B", 1)
    assert (best["margin_ci_lo"], best["margin_ci_hi"]) == (pytest.approx(0.01 - half_b), pytest.approx(0.01 + half_b))
    assert best["gain"] == pytest.approx(np.mean(A) - 0.55) and not best["best_is_scratch"]


def test_a_single_seed_cannot_tell_a_tie():
    df = pd.DataFrame(_rows({"A": [0.8], "B": [0.7], "scratch": [0.5]}))
    tests = paired.comparisons(df)
    summary = paired.mark_ties(stats.summarize(df), tests)
    assert summary.set_index("arm").loc["B", "tied_with_best"] is pd.NA
    assert tests["p_t"].isna().all() and tests["p_t_holm"].isna().all() and set(tests["family_size"]) == {0}
    assert stats.best_per_n(summary, tests).iloc[0]["tie_unknown"] == "B, scratch"


def test_when_scratch_is_best_the_table_says_so():
    df = pd.DataFrame(_rows({"A": [0.5, 0.52], "scratch": [0.7, 0.71]}))
    tests = paired.comparisons(df)
    best = stats.best_per_n(paired.mark_ties(stats.summarize(df), tests), tests).iloc[0]
    assert best["best_arm"] == "scratch" and best["best_is_scratch"] and math.isnan(best["gain"])
    assert best["margin_paired"] == pytest.approx(0.195)  # scratch minus A, paired: (0.2 + 0.19) / 2


def test_a_constant_paired_difference_has_no_spread():
    same = paired.paired_test([0.0, 0.0, 0.0])
    assert (same["p_t"], same["p_wilcoxon"], same["diff_ci_lo"], same["diff_ci_hi"]) == (1.0, 1.0, 0.0, 0.0)
    shifted = paired.paired_test([0.1, 0.1, 0.1])
    assert shifted["p_t"] == 0.0 and shifted["t_stat"] == math.inf


# ---- censored n* and the seeds warning ----------------------------------------------------------------------

def _cx(**kw) -> pd.Series:
    base = {"n_star": 1.0, "n_star_lo": 1.0, "n_star_hi": 1.0, "p_cross": 1.0, "p_at_min": 0.99, "n_min": 1.0,
            "n_max": 100.0, "n_seeds": 3, "confidence": 0.95, "finetuned_arm": "freeze=0", "frozen_arm": "freeze=3"}
    return pd.Series({**base, **kw})


def test_censored_n_star_is_printed_as_a_bound():
    text = stats.format_n_star(_cx())
    assert text.startswith("n* ≤ 1 (freeze=0 ahead from the smallest n on)")
    assert "1 to 1" not in text and "n* ≤ 1 in 99% of draws" in text
    assert "[≤ 1, 7.3]" in stats.format_n_star(_cx(n_star=2.5, n_star_hi=7.3))
    assert stats.format_n_star(_cx(n_seeds=1)) == "n* ≤ 1 (freeze=0 ahead from the smallest n on) (one seed: no interval)"
    assert "[3.1, > 100]" in stats.format_n_star(_cx(n_star=20.0, n_star_lo=3.1, n_star_hi=math.inf, p_cross=0.9))
    never = stats.format_n_star(_cx(n_star=math.inf, n_star_lo=math.inf, n_star_hi=math.inf, p_cross=0.1))
    assert never.startswith("n* > 100 (freeze=0 not ahead at the largest n")


def test_few_seeds_warning_counts_the_distinct_resamples():
    assert [bootstrap.distinct_resamples(k) for k in (1, 2, 3, 4, 5)] == [1, 3, 10, 35, 126]
    rng = np.random.default_rng(0)  # the count is what a bootstrap over 3 seeds can draw
    assert len({tuple(sorted(p)) for p in rng.integers(0, 3, size=(2000, 3))}) == 10
    assert "only 10 distinct resamples" in bootstrap.few_seeds_note(3, "n*")
    assert bootstrap.few_seeds_note(5, "n*") is None


def test_a_requested_crossover_pair():
    rows = []
    for n, (a, b) in {1: (0.5, 0.6), 4: (0.7, 0.65), 16: (0.9, 0.7)}.items():
        rows += _rows({"freeze=0": [a, a], "freeze=3": [b, b], "scratch": [0.4, 0.4]}, n=float(n))
    df = pd.DataFrame(rows)
    df.loc[df["arm"] == "freeze=3", "freeze"] = 3
    df.loc[df["arm"] == "freeze=0", "freeze"] = 0
    df["arm_key"] = df["arm"] + "|" + df["n_label"]
    cx = stats.crossovers(df, n_boot=50, pairs=[("freeze=0", "freeze=3"), ("scratch", "freeze=3")])
    # the default pair (freeze=0 vs the deepest, freeze=3) is not repeated; scratch vs freeze=3 never crosses
    assert cx[["finetuned_arm", "frozen_arm", "requested"]].values.tolist() == [
        ["freeze=0", "freeze=3", False], ["scratch", "freeze=3", True]]
    # freeze=0 - freeze=3: -0.1 at n=1, +0.05 at n=4: zero at 0.1 / 0.15 = 2/3 of the way in log n
    assert cx.loc[0, "n_star"] == pytest.approx(4 ** (2 / 3)) and cx.loc[1, "n_star"] == math.inf
    assert stats.unknown_pairs(df, [("freeze=0", "freeze=9")]) == ["freeze=0 vs freeze=9"]


# ---- learning-curve fits -----------------------------------------------------------------------------------

NS = [1, 2, 4, 8, 16, 32, 64]


def power(n, a=0.9, b=0.5, c=0.7):
    return a - b * np.asarray(n, dtype=float) ** -c


def test_fit_recovers_a_power_law():
    fit = fits.fit_curve(NS, power(NS))
    assert fit.form == "power" and fit.params == pytest.approx((0.9, 0.5, 0.7), abs=1e-6)
    assert fit.heldout["power"] == pytest.approx(0.0, abs=1e-6) and fit.asymptote == pytest.approx(0.9)
    assert "smallest held-out error" in fit.selection


def test_fit_recovers_exponential_saturation_and_log_linear():
    y = 0.95 - 0.6 * np.exp(-0.1 * np.asarray(NS, dtype=float))
    fit = fits.fit_curve(NS, y)
    assert fit.form == "exp" and fit.params == pytest.approx((0.95, 0.6, 0.1), abs=1e-6)
    assert fit.heldout["exp"] == pytest.approx(0.0, abs=1e-6) and abs(fit.heldout["power"]) > 1e-3
    lin = fits.fit_curve(NS, 0.2 + 0.1 * np.log(NS))
    assert lin.form == "log" and lin.params == pytest.approx((0.2, 0.1)) and lin.asymptote == math.inf


def test_fit_needs_three_distinct_n():
    assert fits.fit_curve([1, 2], [0.5, 0.6]).reason == "2 distinct n, and a fit needs at least 3"
    three = fits.fit_curve([1, 4, 16], power([1, 4, 16]))
    assert three.form == "power" and "no held-out check" in three.selection
    assert three.predict([1, 4, 16]) == pytest.approx(power([1, 4, 16]), abs=1e-6)
    table, _ = fits.fit_lines(pd.DataFrame([
        {"setting": "S", "target": "t", "backbone": "b", "arm": "A", "is_scratch": False, "setting_key": "s",
         "line_key": "A", "n": float(n), "acc_mean": 0.5} for n in (1, 2)]))
    assert table.loc[0, "reason"] == "2 distinct n, and a fit needs at least 3" and table.loc[0, "form"] is None


# ---- effective data transferred ---------------------------------------------------------------------------

SCRATCH_NS = [1, 2, 4, 8, 16, 32]


def _dt_case() -> pd.DataFrame:
    """Scratch on the power law at n = 1..32 (seeds +-0.01 around it, mean exact); arm "x4" equals scratch at 4n
    at n = 1, 2, 4, 8 (D_T = 3n) and at 16 (4n = 64: past scratch's largest n, censored); arm "top" above the
    asymptote; arm "low" below scratch's n=1 value at n = 2."""
    rows = []
    off = [-0.01, 0.0, 0.01]
    for n in SCRATCH_NS:
        rows += _rows({"scratch": [float(power(n)) + o for o in off]}, n=float(n))
    for n in (1, 2, 4, 8, 16):
        rows += _rows({"x4": [float(power(4 * n)) + o for o in off]}, n=float(n))
    rows += _rows({"top": [0.95, 0.95, 0.95]}, n=2.0)
    rows += _rows({"low": [float(power(0.5))] * 3}, n=2.0)
    return pd.DataFrame(rows)


def test_effective_data_is_3n_when_the_arm_equals_scratch_at_4n():
    df = _dt_case()
    summary = stats.summarize(df)
    _, fitted = fits.fit_lines(summary)
    assert fitted["scratch"].params == pytest.approx((0.9, 0.5, 0.7), abs=1e-6)
    dt = effective_data.effective_data(df, summary, fitted, n_boot=200)
    x4 = dt[dt["arm"] == "x4"].set_index("n")
    assert x4.loc[[1.0, 2.0, 4.0, 8.0], "d_t"].tolist() == pytest.approx([3, 6, 12, 24], rel=1e-5)
    assert x4.loc[[1.0, 2.0, 4.0, 8.0], "n_scratch_equiv"].tolist() == pytest.approx([4, 8, 16, 32], rel=1e-5)
    assert x4.loc[2.0, "fraction_transferred"] == pytest.approx(0.75, rel=1e-5)  # D_T / D_E = 6 / 8
    assert (x4["censored"].tolist()[:4], x4.loc[16.0, "censored"]) == (["", "", "", ""], "above")
    # censored: past scratch's largest n (32), so D_T > 32 - 16 = 16 is all the data says, never a number
    assert math.isnan(x4.loc[16.0, "d_t"]) and x4.loc[16.0, "d_t_bound"] == 16.0
    assert x4.loc[16.0, "d_t_text"].startswith("> 16 (above the scratch curve at its largest n, 32)")
    assert x4.loc[1.0, "d_t_lo"] <= 3 <= x4.loc[1.0, "d_t_hi"] and x4.loc[1.0, "n_seeds"] == 3
    top = dt[dt["arm"] == "top"].iloc[0]
    assert (top["censored"], top["d_t_bound"]) == ("above_asymptote", 30.0) and math.isnan(top["d_t"])
    assert top["d_t_hi"] == math.inf
    low = dt[dt["arm"] == "low"].iloc[0]  # below scratch at its smallest n: D_T < 1 - 2
    assert (low["censored"], low["d_t_bound"]) == ("below", -1.0) and low["d_t_text"].startswith("< -1 ")


def test_effective_data_point_estimate_by_hand():
    fit = fits.Fit("power", (0.9, 0.5, 0.7), 1.0, 32.0, 6)
    # the arm at n=3 scores the scratch curve's value at n=10: D_T = 10 - 3
    assert effective_data.d_t(fit, float(power(10)), 3.0) == (pytest.approx(7.0), "", pytest.approx(math.nan,
                                                                                                    nan_ok=True))
    assert effective_data.d_t(fit, 0.9, 3.0)[1:] == ("above_asymptote", 29.0)


# ---- time to threshold, censored -------------------------------------------------------------------------------

def test_time_to_threshold_is_a_censored_median():
    nan = math.nan
    assert stats.censored_median([3, nan, 5]) == (5.0, 2, 3)  # median of 3, 5, +inf
    med, reached, total = stats.censored_median([3, nan, nan])
    assert math.isnan(med) and (reached, total) == (1, 3)  # not more than half reached: "not reached"
    assert math.isnan(stats.censored_median([2, 4, nan, nan])[0])  # half is not more than half
    assert stats.censored_median([2, 4, 6, nan])[0] == 5.0
    rows = _rows({"A": [0.8, 0.8, 0.8], "scratch": [0.8, 0.8, 0.8]})
    curves = {("A", 0): [0.1, 0.9], ("A", 1): [0.1, 0.2], ("A", 2): [0.1, 0.2],
              ("scratch", 0): [0.5, 1.0], ("scratch", 1): [0.5, 1.0], ("scratch", 2): [0.95, 1.0]}
    for r in rows:
        r["val_acc_history"] = curves[(r["arm"], r["seed"])]
    m = stats.learning_measures(pd.DataFrame(rows), threshold_frac=0.9).iloc[0]  # threshold 0.9
    assert (m["reached_thr_transfer"], m["epochs_to_thr_transfer_text"]) == (1, "not reached (1 of 3 reached)")
    assert math.isnan(m["epochs_to_thr_transfer"])
    assert (m["epochs_to_thr_scratch"], m["epochs_to_thr_scratch_text"]) == (2.0, "2 (3 of 3 reached)")


# ---- the CLI options on written records -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """scratch, freeze=0, freeze=2 x n = 2, 5, 20 x seeds 0, 1, with balanced accuracy and class counts recorded
    (a test split whose largest class is 70%)."""
    from test_report_grouping import config, put, record

    root = tmp_path_factory.mktemp("fields_sweep")
    for n in (2, 5, 20):
        for seed in (0, 1):
            for arm, ov, acc in (("scratch", "transfer=scratch", 0.5), ("f0", "transfer.freeze=0", 0.7),
                                 ("f2", "transfer.freeze=2", 0.65)):
                rec = record(config(f"target.n_per_class={n}", f"seed={seed}", ov),
                             acc + 0.01 * seed + 0.1 * math.log10(n))
                rec["metrics"].update({"test/balanced_acc": acc - 0.1, "test/class_counts": [70, 10, 10, 5, 5]})
                put(root, f"{arm},n={n},s={seed}", rec)
    return root


def test_cli_metric_and_crossover_options(small_sweep, tmp_path):
    out = tmp_path / "out"
    p = run_cli(str(small_sweep), "--out", str(out), "--n-boot", "50", "--crossover", "freeze=2", "freeze=0",
                module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "the largest class is 70% of the test split" in p.stdout and "--metric balanced_acc" in p.stdout
    cx = pd.read_csv(out / "crossover.csv")
    assert [*zip(cx["finetuned_arm"], cx["frozen_arm"], cx["requested"])] == [
        ("freeze=0", "freeze=2", False), ("freeze=2", "freeze=0", True)]
    for name in ("paired_tests.csv", "fits.csv", "effective_data.csv", "best.csv", "figures/report_effective_data.png",
                 "figures/report_fits.png", "figures/report_fits.pdf"):
        assert (out / name).exists(), name
    assert {"tied_with_best", "is_best", "diff_vs_best_ci_lo"} <= set(pd.read_csv(out / "summary.csv").columns)

    bal = tmp_path / "bal"
    p = run_cli(str(small_sweep), "--out", str(bal), "--n-boot", "20", "--metric", "balanced_acc",
                module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = pd.read_csv(bal / "summary.csv")
    assert summary[summary["arm"] == "scratch"]["acc_mean"].tolist() == pytest.approx([0.4] * 3)
    assert pd.read_csv(bal / "results.csv")["test_acc"].max() > 0.7  # results.csv keeps the recorded accuracy
    assert "the report leads with balanced accuracy" in p.stdout and "largest class" not in p.stdout


def test_cli_rejects_unknown_metric_and_arms(small_sweep, tmp_path):
    p = run_cli(str(small_sweep), "--metric", "f2", module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 2 and "--metric='f2'" in p.stderr
    p = run_cli(str(small_sweep), "--out", str(tmp_path), "--crossover", "freeze=0", "freeze=9",
                module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 2 and "freeze=0 vs freeze=9" in p.stderr and "freeze=2" in p.stderr
    p = run_cli(str(small_sweep), "--out", str(tmp_path), "--metric", "auroc", module="transferlab.report",
                cwd=tmp_path)
    assert p.returncode == 2 and "no ok run has test_auroc" in p.stderr
