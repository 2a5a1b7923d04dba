"""Honest comparisons between arms: paired differences over seeds, their intervals and tests, ties with the best
arm, and Holm's correction over the family of tests made at one n.

Pairing. Runs with the same seed and data seed (`stats.PAIR`) trained on the same labelled subset, so the
difference of two arms within a pair removes the subset's luck, which at small n is most of the spread between
seeds. Every difference the report shows is a mean of per-pair differences with a Student-t interval over the pairs
(the paired-sample t interval), never the difference of two unpaired means with their separate intervals.

Tests. Each arm is tested against its scratch baseline and against the best arm at the same n with the paired
t-test (`scipy.stats.ttest_1samp` of the differences against 0, identical to `ttest_rel`; Student 1908), the
test whose interval the report prints; the Wilcoxon signed-rank test (Wilcoxon 1945, `scipy.stats.wilcoxon`, exact
for these sizes) is given beside it as a check that needs no normality. With k pairs the smallest two-sided Wilcoxon
p-value is 2 / 2^k, so below 6 pairs it can never reach 0.05: its p-values there say "too few seeds", not "no
effect".

Family. The tests made at one n of one setting are one family, corrected with Holm (`multiplicity.holm`): that is
the set of claims read together (one column of the heatmap, one row of the best-arm table: "which arms beat scratch
here, and which are worse than the best here"), and a family per n means a sweep over more n does not weaken the
claims at each n. Nothing is claimed jointly across n or settings. A pair of arms tested twice (the best arm vs
scratch is both "vs scratch" and "vs best") counts once in the family.

Ties. An arm is tied with the best when the paired interval of (arm - best) includes 0 at the report's confidence
(equivalently, the unadjusted paired t-test does not reject at 1 - confidence). With fewer than 2 pairs there is no
interval and the tie is unknown (NA), never asserted either way.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

from transferlab.analysis.multiplicity import holm
from transferlab.analysis.stats import PAIR, SETTING, ok_rows, t_interval

TEST_COLUMNS = [*SETTING, "n_label", "n", "arm", "reference_kind", "reference", "n_pairs", "diff_mean",
                "diff_ci_lo", "diff_ci_hi", "t_stat", "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm",
                "family_size", "significant", "setting_key", "line_key", "arm_key", "reference_line_key"]


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, value: str = "test_acc") -> np.ndarray:
    """a - b per (seed, data seed) pair present in both (the runs of one arm at one n each)."""
    ga = a.groupby(PAIR, dropna=False)[value].mean()
    gb = b.groupby(PAIR, dropna=False)[value].mean()
    return (ga - gb).dropna().to_numpy(dtype=float)


def paired_test(diffs: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean paired difference, its t-interval, the paired t-test and the Wilcoxon signed-rank test against 0.

    A difference that is the same in every pair has no spread: its interval is that value, and the t-test's
    p-value is 1 when the difference is 0 and 0 otherwise (the limit of the t statistic); NaN below 2 pairs."""
    d = np.asarray([v for v in diffs if not pd.isna(v)], dtype=float)
    s = t_interval(d, confidence)
    out = {"n_pairs": s["n"], "diff_mean": s["mean"], "diff_ci_lo": s["ci_lo"], "diff_ci_hi": s["ci_hi"],
           "t_stat": math.nan, "p_t": math.nan, "p_wilcoxon": math.nan}
    if len(d) < 2:
        return out
    if np.ptp(d) <= 1e-12:  # constant: scipy would divide float noise by float noise
        zero = abs(d[0]) <= 1e-12
        out.update(diff_ci_lo=float(d[0]), diff_ci_hi=float(d[0]),
                   t_stat=0.0 if zero else math.copysign(math.inf, d[0]), p_t=1.0 if zero else 0.0)
    else:
        t = st.ttest_1samp(d, 0.0)
        out.update(t_stat=float(t.statistic), p_t=float(t.pvalue))
    if np.all(np.abs(d) <= 1e-12):
        out["p_wilcoxon"] = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                out["p_wilcoxon"] = float(st.wilcoxon(d).pvalue)
            except ValueError:
                pass
    return out


def _means(g: pd.DataFrame) -> pd.DataFrame:
    """One row per line at this n (setting, n fixed): label, keys, mean; best first (ties in the mean by label)."""
    m = g.groupby("line_key", sort=False).agg(arm=("arm", "first"), is_scratch=("is_scratch", "first"),
                                              baseline_key=("baseline_key", "first"), arm_key=("arm_key", "first"),
                                              mean=("test_acc", "mean"))
    return m.reset_index().sort_values(["mean", "arm"], ascending=[False, True], kind="stable")


def comparisons(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Every paired test of one setting at one n: each transfer arm vs its scratch baseline (`reference_kind`
    "scratch") and each arm vs the best arm there (highest mean, scratch included; "best"), with Holm-adjusted
    p-values over the family of distinct pairs tested at that n. `diff_*` are arm minus reference.

    A setting without a transfer arm at some n (e.g. Yosinski's base A on the source task) has no comparisons."""
    ok = ok_rows(df)
    if ok.empty:
        return pd.DataFrame(columns=TEST_COLUMNS)
    alpha = 1 - confidence
    out = []
    for _, g in ok.groupby(["setting_key", "n_label"], sort=False):
        lines = _means(g)
        if lines["is_scratch"].astype(bool).all():
            continue
        best = lines.iloc[0]
        by_line = {lk: rows for lk, rows in g.groupby("line_key", sort=False)}
        planned = []
        for _, a in lines.iterrows():
            if not a["is_scratch"] and a["baseline_key"] in by_line:
                planned.append((a, "scratch", a["baseline_key"]))
            if a["line_key"] != best["line_key"]:
                planned.append((a, "best", best["line_key"]))
        rows, pair_p = [], {}
        first = g.iloc[0]
        for a, kind, ref in planned:
            res = paired_test(paired_differences(by_line[a["line_key"]], by_line[ref]), confidence)
            ref_label = by_line[ref]["arm"].iloc[0]
            pair = frozenset((a["line_key"], ref))
            pair_p.setdefault(pair, (res["p_t"], res["p_wilcoxon"]))
            rows.append({**{c: first[c] for c in SETTING}, "n_label": first["n_label"], "n": first["n"],
                         "arm": a["arm"], "reference_kind": kind, "reference": ref_label, **res,
                         "setting_key": first["setting_key"], "line_key": a["line_key"], "arm_key": a["arm_key"],
                         "reference_line_key": ref, "_pair": pair})
        pairs = list(pair_p)
        adj_t = dict(zip(pairs, holm([pair_p[p][0] for p in pairs])))
        adj_w = dict(zip(pairs, holm([pair_p[p][1] for p in pairs])))
        size = sum(not pd.isna(pair_p[p][0]) for p in pairs)
        for r in rows:
            pair = r.pop("_pair")
            r.update(p_t_holm=adj_t[pair], p_wilcoxon_holm=adj_w[pair], family_size=size,
                     significant=bool(adj_t[pair] <= alpha) if not pd.isna(adj_t[pair]) else pd.NA)
        out += rows
    if not out:
        return pd.DataFrame(columns=TEST_COLUMNS)
    frame = pd.DataFrame(out, columns=TEST_COLUMNS)
    frame["significant"] = frame["significant"].astype("boolean")
    return frame.sort_values(["setting", "n", "reference_kind", "arm"], kind="stable").reset_index(drop=True)


def _tied(lo: float, hi: float, n_pairs: int):
    """Does the paired interval include 0? NA without an interval (fewer than 2 pairs)."""
    if n_pairs < 2 or pd.isna(lo) or pd.isna(hi):
        return pd.NA
    return bool(lo <= 0 <= hi)


def mark_ties(summary: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """The summary with the best arm of its setting and n and every arm's paired comparison with it:
    `is_best`, `best_arm`, `diff_vs_best` (arm minus best, paired mean) with its interval and Holm-adjusted
    p-value, and `tied_with_best` (True: the interval includes 0; False: the arm is worse, or is the best itself;
    NA: fewer than 2 paired seeds, so it cannot tell)."""
    cols = ["is_best", "best_arm", "diff_vs_best", "diff_vs_best_ci_lo", "diff_vs_best_ci_hi",
            "p_vs_best_holm", "tied_with_best"]
    out = summary.drop(columns=[c for c in cols if c in summary], errors="ignore").copy()
    if out.empty:
        return out.reindex(columns=[*out.columns, *cols])
    vs_best = tests[tests["reference_kind"] == "best"] if len(tests) else tests
    best_of = {}  # (setting_key, n_label) -> best line_key, label
    for _, t in vs_best.iterrows():
        best_of[(t["setting_key"], t["n_label"])] = (t["reference_line_key"], t["reference"])
    for (sk, n), g in out.groupby(["setting_key", "n_label"], sort=False):
        if (sk, n) not in best_of and (~g["is_scratch"].astype(bool)).any():  # a single arm: it is the best
            top = g.sort_values(["acc_mean", "arm"], ascending=[False, True], kind="stable").iloc[0]
            best_of[(sk, n)] = (top["line_key"], top["arm"])
    by_arm = {r["arm_key"]: r for _, r in vs_best.iterrows()}
    values = {c: [] for c in cols}
    for _, r in out.iterrows():
        best = best_of.get((r["setting_key"], r["n_label"]))
        t = by_arm.get(r["arm_key"])
        is_best = best is not None and r["line_key"] == best[0]
        values["is_best"].append(is_best if best is not None else pd.NA)
        values["best_arm"].append(best[1] if best is not None else None)
        values["diff_vs_best"].append(0.0 if is_best else (t["diff_mean"] if t is not None else math.nan))
        values["diff_vs_best_ci_lo"].append(math.nan if t is None else t["diff_ci_lo"])
        values["diff_vs_best_ci_hi"].append(math.nan if t is None else t["diff_ci_hi"])
        values["p_vs_best_holm"].append(math.nan if t is None else t["p_t_holm"])
        values["tied_with_best"].append(False if is_best else (pd.NA if t is None else
                                                               _tied(t["diff_ci_lo"], t["diff_ci_hi"], t["n_pairs"])))
    for c in cols:
        out[c] = values[c]
    out["is_best"] = out["is_best"].astype("boolean")
    out["tied_with_best"] = out["tied_with_best"].astype("boolean")
    return out


def with_tests(gain: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """The gain table with the paired t-test of each arm vs its scratch baseline: `p_t`, `p_t_holm`,
    `p_wilcoxon`, `p_wilcoxon_holm`, `significant` (Holm-adjusted p <= 1 - confidence)."""
    cols = ["p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm", "significant"]
    if gain.empty:
        return gain.reindex(columns=[*gain.columns, *[c for c in cols if c not in gain]])
    vs = tests[tests["reference_kind"] == "scratch"][["arm_key", *cols]] if len(tests) else \
        pd.DataFrame(columns=["arm_key", *cols])
    return gain.drop(columns=[c for c in cols if c in gain]).merge(vs, on="arm_key", how="left")
