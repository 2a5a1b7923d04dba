"""Statistics over seeds: t-intervals, gain over scratch, the fine-tune/freeze crossover n*, learning-curve measures.

Seeds are the unit of replication: every interval is over seeds, and comparisons are paired by seed and data seed
(the same seeds draw the same target subset for every arm, so pairing removes the subset's luck from the
difference). Which runs are seeds of one arm (`arm_key`), which arms are drawn and compared together
(`setting_key`) and which scratch line a transfer arm is paired with (`baseline_key`) is `collect`'s decision, from
the run identity: runs are pooled here only within one arm_key, never by a label or a hand-picked list of fields.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

from transferlab.analysis import collect

# Every group is made by key columns from `collect` (one decision in one place); labels ride along for people.
SETTING = ["setting", "target", "backbone"]  # one report panel per setting (functions of setting_key)
ARM = ["arm", "is_scratch", "copies_nothing", "variant", "source", "transfer", "strategy", "cut", "upper", "freeze",
       "init"]
N_KEYS = ["n_label", "n"]
KEYS = ["setting_key", "context_key", "line_key", "arm_key", "baseline_key"]
PAIR = ["seed", "data_seed"]  # the same seed and data seed draw the same target subset: runs paired by these


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1) and the Student-t confidence interval of the mean; NaN spread for one value."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "n": 1}
    std = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_lo": mean - half, "ci_hi": mean + half, "n": n}


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df["test_acc"].notna()] if not df.empty else df


def _first(g: pd.DataFrame, cols: Sequence[str]) -> dict:
    """The descriptive columns of a group made by a key: equal on every row of it, so the first row's."""
    r = g.iloc[0]
    return {c: r[c] for c in cols}


def summarize(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per arm at one n (arm_key: the runs that differ only in their seeds): test accuracy mean/std/CI over
    seeds, number of seeds."""
    ok = ok_rows(df)
    cols = [*SETTING, *ARM, *N_KEYS, "acc_mean", "acc_std", "acc_ci_lo", "acc_ci_hi", "n_seeds", "seeds",
            "val_acc_mean", "trainable_params", "epochs_mean", *KEYS]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, g in ok.groupby(["setting_key", "arm_key"], sort=False):
        s = t_interval(g["test_acc"], confidence)
        lo, hi = np.clip([s["ci_lo"], s["ci_hi"]], 0.0, 1.0)  # an accuracy interval never leaves [0, 1]
        rows.append({**_first(g, [*SETTING, *ARM, *N_KEYS, *KEYS]), "acc_mean": s["mean"], "acc_std": s["std"],
                     "acc_ci_lo": lo, "acc_ci_hi": hi, "n_seeds": s["n"],
                     "seeds": " ".join(str(int(v)) for v in sorted(g["seed"].dropna().unique())),
                     "val_acc_mean": float(g["val_acc"].mean()), "trainable_params": g["trainable_params"].iloc[0],
                     "epochs_mean": float(pd.to_numeric(g["epochs"], errors="coerce").mean())})
    return pd.DataFrame(rows, columns=cols).sort_values(["setting", "n", "arm"]).reset_index(drop=True)


def _with_scratch(ok: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Transfer rows joined with their own scratch runs (same setting: the baseline line `collect` chose; same n;
    same seed and data seed), scratch's columns suffixed `_scratch`."""
    base = ok[ok["is_scratch"]][["line_key", "n_label", *PAIR, *cols]].rename(columns={"line_key": "baseline_key"})
    return ok[~ok["is_scratch"]].merge(base, on=["baseline_key", "n_label", *PAIR], how="inner",
                                       suffixes=("", "_scratch"))


def paired_gain(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Transfer minus scratch test accuracy, paired by (setting, n, seed, data seed) with the scratch line of the
    transfer arm's own setting (`baseline_key`); summarised per arm and n."""
    ok = ok_rows(df)
    cols = [*SETTING, "arm", "freeze", "baseline", *N_KEYS, "gain_mean", "gain_std", "gain_ci_lo", "gain_ci_hi",
            "n_pairs", "setting_key", "line_key", "arm_key", "baseline_key"]
    if ok.empty or not ok["is_scratch"].any():
        return pd.DataFrame(columns=cols)
    pairs = _with_scratch(ok, ["test_acc", "arm"])
    rows = []
    for _, g in pairs.groupby(["setting_key", "arm_key"], sort=False):
        s = t_interval(g["test_acc"] - g["test_acc_scratch"], confidence)
        rows.append({**_first(g, [*SETTING, "arm", "freeze", *N_KEYS, "setting_key", "line_key", "arm_key",
                                  "baseline_key"]), "baseline": g["arm_scratch"].iloc[0],
                     "gain_mean": s["mean"], "gain_std": s["std"], "gain_ci_lo": s["ci_lo"], "gain_ci_hi": s["ci_hi"],
                     "n_pairs": s["n"]})
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows, columns=cols).sort_values(["setting", "n", "arm"]).reset_index(drop=True)


def best_per_n(summary: pd.DataFrame, tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """The arm with the highest mean test accuracy at every n (Ng's rule read off the data), over every arm of the
    setting, scratch included (`best_is_scratch`: no transfer arm beats training from scratch there), with the mean
    of the scratch line it is compared with; settings without a transfer arm at that n are left out.

    With `tests` (`paired.comparisons`) every difference is paired over seeds: `gain` (best minus its scratch
    baseline, NaN when the best is scratch) and `margin_paired` (best minus runner-up) with their t-intervals and
    Holm-adjusted p-values, and `tied_with_best`: the arms whose paired interval against the best includes 0
    (`tie_unknown`: arms with fewer than 2 paired seeds, for which no tie can be told). `margin` stays the
    difference of the two means."""
    rows = []
    by = {} if tests is None or tests.empty else {(t["arm_key"], t["reference_kind"]): t for _, t in tests.iterrows()}
    for _, g in summary.groupby(["setting_key", "n_label"], dropna=False, sort=False):
        if g["is_scratch"].astype(bool).all():
            continue
        ranked = g.sort_values(["acc_mean", "arm"], ascending=[False, True], kind="stable")
        best = ranked.iloc[0]
        runner = ranked.iloc[1] if len(ranked) > 1 else None
        scratch = g[g["is_scratch"].astype(bool) & (g["line_key"] == best["baseline_key"])]
        row = {**_first(g, [*SETTING, *N_KEYS, "setting_key"]), "best_arm": best["arm"],
               "best_freeze": best["freeze"], "best_is_scratch": bool(best["is_scratch"]),
               "acc_mean": best["acc_mean"], "acc_ci_lo": best["acc_ci_lo"], "acc_ci_hi": best["acc_ci_hi"],
               "n_seeds": best["n_seeds"],
               "runner_up": None if runner is None else runner["arm"],
               "margin": math.nan if runner is None else best["acc_mean"] - runner["acc_mean"],
               "scratch_mean": scratch["acc_mean"].iloc[0] if len(scratch) else math.nan}
        if by:
            gain = by.get((best["arm_key"], "scratch"))
            vs = by.get((runner["arm_key"], "best")) if runner is not None else None  # runner-up minus best
            ties = [(r["arm"], by.get((r["arm_key"], "best"))) for _, r in ranked.iloc[1:].iterrows()]
            tied = [a for a, t in ties
                    if t is not None and t["n_pairs"] >= 2 and t["diff_ci_lo"] <= 0 <= t["diff_ci_hi"]]
            unknown = [a for a, t in ties if t is None or t["n_pairs"] < 2]
            row.update({
                "gain": math.nan if gain is None else gain["diff_mean"],
                "gain_ci_lo": math.nan if gain is None else gain["diff_ci_lo"],
                "gain_ci_hi": math.nan if gain is None else gain["diff_ci_hi"],
                "gain_p_holm": math.nan if gain is None else gain["p_t_holm"],
                "margin_paired": math.nan if vs is None else -vs["diff_mean"],
                "margin_ci_lo": math.nan if vs is None else -vs["diff_ci_hi"],
                "margin_ci_hi": math.nan if vs is None else -vs["diff_ci_lo"],
                "margin_p_holm": math.nan if vs is None else vs["p_t_holm"],
                "n_pairs": None if vs is None else vs["n_pairs"],
                "tied_with_best": ", ".join(tied), "n_tied": len(tied), "tie_unknown": ", ".join(unknown)})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["setting", "n"]).reset_index(drop=True) if rows else pd.DataFrame(rows)


# ---- crossover n* --------------------------------------------------------------------------------------------

def crossover_point(ns: Sequence[float], diffs: Sequence[float]) -> float:
    """Smallest n from which fine-tuning stays ahead (diff > 0 at that n and every larger one).

    Interpolated linearly in log n between the last point where freezing was at least as good and the first point
    of the winning run. Returns ns[0] if fine-tuning already wins at the smallest n, +inf if it is not ahead at
    the largest n, NaN without data.
    """
    pts = sorted((float(n), float(d)) for n, d in zip(ns, diffs) if not (pd.isna(n) or pd.isna(d)))
    if not pts:
        return math.nan
    if pts[-1][1] <= 0:
        return math.inf
    j = len(pts) - 1
    while j > 0 and pts[j - 1][1] > 0:
        j -= 1
    if j == 0:
        return pts[0][0]
    (n0, d0), (n1, d1) = pts[j - 1], pts[j]
    t = -d0 / (d1 - d0)  # d0 <= 0 < d1
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))


def crossover(finetuned: pd.DataFrame, frozen: pd.DataFrame, n_boot: int = 2000, confidence: float = 0.95,
              rng_seed: int = 0, by: Sequence[str] = ("seed",)) -> dict[str, float]:
    """n* where fine-tuned overtakes frozen, with a bootstrap-over-seeds interval.

    Both frames have columns n, test_acc and the pairing columns `by` (seed; the report adds data_seed).
    Differences are paired by (n, *by); each bootstrap draw resamples seeds with replacement and recomputes the
    mean difference curve. `p_cross` is the share of draws in which fine-tuning ends ahead at all (the interval's
    upper end is +inf when that share is below the confidence); `p_at_min` the share in which it is ahead from the
    smallest n on (n* censored at n_min: the interval's lower end is then n_min, a bound, not a value).
    """
    by = list(by)
    a = finetuned.groupby(["n", *by])["test_acc"].mean()
    b = frozen.groupby(["n", *by])["test_acc"].mean()
    d = (a - b).dropna().rename("diff").reset_index()
    out = {"n_star": math.nan, "n_star_lo": math.nan, "n_star_hi": math.nan, "p_cross": math.nan,
           "p_at_min": math.nan, "n_min": math.nan, "n_max": math.nan, "n_seeds": 0, "confidence": confidence}
    if d.empty:
        return out
    mean = d.groupby("n")["diff"].mean()
    out.update(n_star=crossover_point(mean.index, mean.values), n_min=float(mean.index.min()),
               n_max=float(mean.index.max()), n_seeds=len(d.drop_duplicates(by)))
    grid = d.pivot_table(index=by, columns="n", values="diff", aggfunc="mean")  # seeds x n, NaN = missing
    ns, values = np.asarray(grid.columns, dtype=float), grid.to_numpy(dtype=float)
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, len(values), size=(n_boot, len(values)))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an n no drawn seed has: NaN, skipped below
        curves = np.nanmean(values[picks], axis=1)  # n_boot x n
    draws = np.array([crossover_point(ns, c) for c in curves], dtype=float)
    alpha = (1 - confidence) / 2
    # inverted_cdf picks observed draws (no interpolation), so an infinite upper end stays a clean +inf
    out.update(n_star_lo=float(np.quantile(draws, alpha, method="inverted_cdf")),
               n_star_hi=float(np.quantile(draws, 1 - alpha, method="inverted_cdf")),
               p_cross=float(np.isfinite(draws).mean()), p_at_min=float((draws == ns.min()).mean()))
    return out


# arms that differ in their depth only (a control arm's init is in its label, not in `variant`)
FAMILY = ["setting_key", "source", "cut", "upper", "strategy", "init", "variant"]


def crossovers(df: pd.DataFrame, n_boot: int = 2000, confidence: float = 0.95,
               pairs: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """n* for every family of arms differing only in freeze depth (same setting, source, cut, upper, strategy and
    arm keys beyond the label: `variant`) that has both freeze=0 and a fully frozen arm, each a single line.

    `pairs` asks for more: (A, B) arm labels (`--crossover freeze=0 freeze=3`), n* where A overtakes B in every
    setting that has both (an arm label names one line within a setting); A is then in `finetuned_arm` and B in
    `frozen_arm`, and `requested` is True. A requested pair equal to a default one is not repeated."""
    ok = ok_rows(df)
    rows = []
    if ok.empty:
        return pd.DataFrame(rows)
    transfer = ok[~ok["is_scratch"]]
    for _, g in transfer.groupby(FAMILY, dropna=False, sort=False):
        ft = g[g["freeze"] == 0]
        deepest = g["freeze"].max()
        if ft.empty or pd.isna(deepest) or deepest == 0 or g["n"].nunique() < 2:  # a crossing needs two n
            continue
        fr = g[g["freeze"] == deepest]
        if ft["line_key"].nunique() > 1 or fr["line_key"].nunique() > 1:  # never pool two arms into one side
            continue
        res = crossover(ft, fr, n_boot=n_boot, confidence=confidence, by=PAIR)
        rows.append({**_first(g, [*SETTING, "source", "cut", "upper", "strategy", "variant", "setting_key"]),
                     "finetuned_arm": ft["arm"].iloc[0], "frozen_arm": fr["arm"].iloc[0], "requested": False, **res})
    done = {(r["setting_key"], r["finetuned_arm"], r["frozen_arm"]) for r in rows}
    for a_label, b_label in pairs:
        for key, g in ok.groupby("setting_key", sort=False):
            a, b = g[g["arm"] == a_label], g[g["arm"] == b_label]
            if a.empty or b.empty or (key, a_label, b_label) in done or g["n"].nunique() < 2:
                continue
            done.add((key, a_label, b_label))
            res = crossover(a, b, n_boot=n_boot, confidence=confidence, by=PAIR)
            rows.append({**_first(a, [*SETTING, "source", "cut", "upper", "strategy", "variant", "setting_key"]),
                         "finetuned_arm": a_label, "frozen_arm": b_label, "requested": True, **res})
    return pd.DataFrame(rows).sort_values(["setting", "requested", "finetuned_arm"]).reset_index(drop=True) if rows \
        else pd.DataFrame(rows)


def unknown_pairs(df: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The requested crossover pairs no setting has both arms of (a typo should not pass silently)."""
    ok = ok_rows(df)
    arms = ok.groupby("setting_key")["arm"].agg(set) if not ok.empty else pd.Series(dtype=object)
    return [f"{a} vs {b}" for a, b in pairs if not any(a in s and b in s for s in arms)]


def format_n_star(r) -> str:
    """Human text for one crossover row, e.g. "n* = 7.1 (95% bootstrap interval [4.2, 13]; ...)".

    Censored values are printed as bounds, never as numbers: `n* ≤ 2` when the first arm is already ahead at the
    smallest n (2), `n* > 100` when it is not ahead at the largest (100); an interval end at such a bound is the
    bound (`[≤ 2, 7.3]`), and an interval whose both ends are one bound is not printed as an interval ("1 to 1")
    but as the share of bootstrap draws beyond it."""
    get = r.get if hasattr(r, "get") else (lambda k, d=None: d)
    n, lo, hi = r["n_star"], r["n_star_lo"], r["n_star_hi"]
    arm = get("finetuned_arm") or "fine-tuning"
    pct = f"{get('confidence', 0.95) or 0.95:.0%}"
    if pd.isna(n):
        return "n* unknown (no paired data)"
    n_min, n_max, p_cross = r["n_min"], r["n_max"], r["p_cross"]
    if math.isinf(n):
        return (f"n* > {n_max:g} ({arm} not ahead at the largest n, {n_max:g}; ends ahead in {p_cross:.0%} of "
                f"bootstrap draws)")
    lead = f"n* ≤ {n_min:g} ({arm} ahead from the smallest n on)" if n <= n_min else f"n* = {n:.3g}"
    if get("n_seeds", 2) < 2:  # one seed: every bootstrap draw is that seed, an interval would be fake
        return f"{lead} (one seed: no interval)"
    bound = lambda v: f"> {n_max:g}" if math.isinf(v) else (f"≤ {n_min:g}" if v <= n_min else f"{v:.3g}")  # noqa: E731
    lo_s, hi_s = bound(lo), bound(hi)
    if lo_s == hi_s and lo_s[0] in "≤>":  # both ends at one censoring bound: say how many draws are beyond it
        share = get("p_at_min") if lo_s.startswith("≤") else 1 - p_cross
        beyond = "" if share is None or pd.isna(share) else f" in {share:.0%} of draws"
        return f"{lead} (bootstrap: n* {lo_s}{beyond}; {arm} ends ahead in {p_cross:.0%} of draws)"
    if lo_s == hi_s:
        return f"{lead} ({pct} bootstrap interval: {lo_s} at both ends; {arm} ends ahead in {p_cross:.0%} of draws)"
    return f"{lead} ({pct} bootstrap interval [{lo_s}, {hi_s}]; {arm} ends ahead in {p_cross:.0%} of draws)"


# ---- learning curves (Taylor & Stone 2009; Torrey & Shavlik 2009) ---------------------------------------------

def _auc(y: np.ndarray) -> float:
    """Area under an accuracy-per-epoch curve, normalised by its length (a mean level; 1 point = its value)."""
    return float(y[0]) if len(y) == 1 else float(np.trapezoid(y) / (len(y) - 1))


def epochs_to(y: Sequence[float], threshold: float, epochs: Sequence[int] | None = None) -> float:
    """First epoch (counted from 1) at which the curve reaches `threshold`; NaN if it never does. `epochs`: the
    epoch of each point of the curve (validation on a schedule); None: one point per epoch."""
    hits = np.nonzero(np.asarray(y, dtype=float) >= threshold)[0]
    if not len(hits):
        return math.nan
    return float(epochs[hits[0]]) if epochs is not None else float(hits[0] + 1)


def censored_median(epochs: Sequence[float]) -> tuple[float, int, int]:
    """(median, seeds that reached, seeds) of epochs-to-threshold where NaN means "not reached".

    A seed that never reached the threshold is right-censored: its time is longer than its run, not absent, so it
    is counted as +inf rather than dropped (dropping it, as a mean of the seeds that made it does, reports the
    lucky seeds only; Torrey & Shavlik 2009, "Transfer learning", Handbook of Research on Machine Learning
    Applications, list time-to-threshold among the measures of transfer). The median over all seeds is then finite
    exactly when more than half reached the threshold; otherwise it is NaN ("not reached")."""
    t = np.asarray(epochs, dtype=float)
    reached = int(np.isfinite(t).sum())
    if len(t) == 0:
        return math.nan, 0, 0
    med = float(np.median(np.where(np.isfinite(t), t, math.inf)))
    return (med if math.isfinite(med) else math.nan), reached, len(t)


def curve_measures(transfer: Sequence[float], scratch: Sequence[float], threshold: float,
                   tail: int = 3, transfer_epochs: Sequence[int] | None = None,
                   scratch_epochs: Sequence[int] | None = None) -> dict[str, float]:
    """Jumpstart (first-check gain), transfer ratio (AUC_t - AUC_s) / AUC_s over the checks both curves have,
    epochs to a threshold for both, and asymptotic gain (mean of the last `tail` checks, transfer minus scratch).

    `*_epochs`: the epoch of each point of a curve (validation on a schedule, training/budget.py); without them a
    curve has one point per epoch and the common part is the shorter length."""
    t, s = np.asarray(transfer, dtype=float), np.asarray(scratch, dtype=float)
    if len(t) == 0 or len(s) == 0:
        return {k: math.nan for k in ("jumpstart", "auc_ratio", "epochs_to_thr_transfer", "epochs_to_thr_scratch",
                                      "asymptotic_gain")}
    if transfer_epochs is not None and scratch_epochs is not None:
        at_t, at_s = dict(zip(transfer_epochs, t)), dict(zip(scratch_epochs, s))
        both = sorted(set(at_t) & set(at_s))
        tc, sc = np.array([at_t[e] for e in both]), np.array([at_s[e] for e in both])
    else:
        L = min(len(t), len(s))
        tc, sc = t[:L], s[:L]
    auc_s = _auc(sc) if len(sc) else math.nan
    k = min(tail, len(t), len(s))
    return {"jumpstart": float(tc[0] - sc[0]) if len(tc) else math.nan,
            "auc_ratio": (_auc(tc) - auc_s) / auc_s if len(tc) and auc_s > 0 else math.nan,
            "epochs_to_thr_transfer": epochs_to(t, threshold, transfer_epochs),
            "epochs_to_thr_scratch": epochs_to(s, threshold, scratch_epochs),
            "asymptotic_gain": float(t[-k:].mean() - s[-k:].mean())}


def learning_measures(df: pd.DataFrame, threshold_frac: float = 0.9, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm and n: the curve measures paired by seed against scratch, averaged with t-intervals.

    The threshold is `threshold_frac` times the mean best validation accuracy scratch reaches at that n, so
    "epochs to threshold" asks how soon each arm gets near what training from scratch eventually achieves. It is
    the censored median over all paired seeds (`censored_median`: NaN, "not reached", unless more than half got
    there), with `reached_thr_*` the number of seeds that did and `epochs_to_thr_*_text` both in words.
    """
    ok = ok_rows(df)
    if ok.empty or not ok["is_scratch"].any():
        return pd.DataFrame()
    hist = ok.assign(curve=ok["val_acc_history"], at=collect.curve_epochs(ok))
    hist = hist[hist["curve"].map(len) > 0]
    rows = []
    for _, g in hist.groupby(["setting_key", "n_label"], sort=False):
        sc = g[g["is_scratch"]]
        for _, ga in g[~g["is_scratch"]].groupby("arm_key", sort=False):
            base = sc[sc["line_key"] == ga["baseline_key"].iloc[0]]  # the arm's own scratch line
            if base.empty:
                continue
            scratch_by_pair = {pair: (c, at) for pair, c, at in zip(zip(*(base[p] for p in PAIR)), base["curve"],
                                                                    base["at"])}
            threshold = threshold_frac * float(np.mean([max(c) for c in base["curve"]]))
            per_seed = [curve_measures(c, scratch_by_pair[pair][0], threshold, transfer_epochs=at,
                                       scratch_epochs=scratch_by_pair[pair][1])
                        for pair, c, at in zip(zip(*(ga[p] for p in PAIR)), ga["curve"], ga["at"])
                        if pair in scratch_by_pair]
            if not per_seed:
                continue
            m = pd.DataFrame(per_seed)
            row = {**_first(ga, [*SETTING, "n_label", "n", "arm", "setting_key", "arm_key"]),
                   "threshold": threshold, "n_pairs": len(m)}
            for col in m.columns:
                if col.startswith("epochs_to_thr_"):  # censored: a median over all seeds, never a mean of some
                    med, reached, total = censored_median(m[col])
                    row[col] = med
                    row[f"reached_thr_{col.rsplit('_', 1)[1]}"] = reached
                    row[f"{col}_text"] = (f"{med:g} ({reached} of {total} reached)" if not pd.isna(med)
                                          else f"not reached ({reached} of {total} reached)")
                    continue
                s = t_interval(m[col].dropna(), confidence)
                row[col] = s["mean"]
                row[f"{col}_ci"] = (s["ci_hi"] - s["mean"]) if s["n"] > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["setting", "n", "arm"]).reset_index(drop=True) if rows else pd.DataFrame()


# ---- Yosinski et al. 2014 -------------------------------------------------------------------------------------

def yosinski_label(r) -> str | None:
    """AnB / AnB+ / BnB / BnB+ for a transfer row: A != B is transfer, B == B the selffer; "+" = fine-tuned
    (freeze=0), no "+" = every copied block frozen. Other depths are not part of the figure."""
    if r["is_scratch"] or r["copies_nothing"] or pd.isna(r["cut"]) or pd.isna(r["freeze"]):
        return None
    if r.get("init", "source") != "source":  # a control arm's copied blocks are not A's (or B's) features
        return None
    if isinstance(r.get("peft"), str):  # LoRA / prompts train inside the frozen blocks: not Yosinski's arms
        return None
    base = "BnB" if r["source"] == r["target"] else "AnB"
    if r["freeze"] == 0:
        return base + "+"
    if r["freeze"] == r["cut"]:
        return base
    return None


def _yosinski_line(ok: pd.DataFrame) -> pd.Series:
    """The curve a row belongs to: its Yosinski name, plus what else sets its arm apart (a non-fixed strategy, the
    source when one name has several, the arm keys beyond the label), so two arms are never one point of a curve."""
    sources = ok.groupby(["setting_key", "yosinski"])["source"].transform("nunique")
    parts = [ok["yosinski"],
             ok["strategy"].where(ok["strategy"].fillna("fixed") != "fixed", ""),
             ("from " + ok["source"].astype(str)).where(sources > 1, ""),
             ok["variant"].fillna("")]
    return pd.Series([" ".join(p for p in ps if p) for ps in zip(*parts)], index=ok.index)


def yosinski_table(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean/CI of test accuracy per (setting, n, Yosinski curve, cut); only rows with upper=reinit count, since the
    paper re-initialises and retrains the layers above the cut."""
    ok = ok_rows(df)
    if ok.empty:
        return pd.DataFrame()
    ok = ok[(ok["upper"] == "reinit") & ~ok["is_scratch"]]
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(yosinski=ok.apply(yosinski_label, axis=1)).dropna(subset=["yosinski"])
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(line=_yosinski_line(ok))
    rows = []
    for _, g in ok.groupby(["setting_key", "n_label", "line", "cut", "arm_key"], sort=True):
        s = t_interval(g["test_acc"], confidence)
        lo, hi = np.clip([s["ci_lo"], s["ci_hi"]], 0.0, 1.0)
        rows.append({**_first(g, [*SETTING, "n_label", "yosinski", "line", "cut", "setting_key"]),
                     "n": float(g["n"].iloc[0]), "acc_mean": s["mean"], "acc_ci_lo": lo, "acc_ci_hi": hi,
                     "n_seeds": s["n"]})
    return pd.DataFrame(rows)
