"""Effective data transferred: how many labelled target examples the source is worth to an arm.

Hernandez, Kaplan, Henighan & McCandlish 2021, "Scaling Laws for Transfer" (arXiv:2102.01293) define it as the
extra target data a model trained from scratch would need to match the transferred one: D_T = D_E - D_F, where
D_F is the target data the transferred model was trained on and D_E the data from scratch needs for the same
performance. Here, for every transfer arm and n:

    D_T(n) = n_scratch(acc_arm(n)) - n,

with acc_arm(n) the arm's mean accuracy over seeds at n and n_scratch the inverse of the scratch line's fitted
learning curve (`fits`; same setting, the arm's own baseline). Units: n, D_T and D_E are examples *per class*, as
everywhere in the report (multiply by the number of classes for totals). `fraction_transferred` is D_T / D_E,
the share of the effective data that came from the source (the quantity of the paper's figures); a negative D_T
means transfer hurt (scratch matches the arm with fewer examples).

Censoring: the inverse is read only within the n range scratch was run at. An arm above the scratch curve at
scratch's largest n needs more scratch data than was ever measured: D_T > n_max - n is all the data says, reported
as that bound with `censored` = "above" ("above_asymptote" when the fit says scratch never gets there at all),
never as an extrapolated number; below the curve at scratch's smallest n, D_T < n_min - n ("below").

Interval: a percentile bootstrap over seeds (resample (seed, data seed) pairs with replacement, the same draw for
scratch and the arm so the pairing stays; recompute both means, refit the scratch curve in its chosen form,
recompute D_T). A censored draw counts as +inf (above) or -inf (below), so an interval end can be a bound too
(`d_t_lo`/`d_t_hi` = -inf/+inf, printed as "< ..."/"> ..."). With few seeds the interval is coarse (`bootstrap`).
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
import pandas as pd

from transferlab.analysis.fits import FORMS, Fit, fit_form, invert
from transferlab.analysis.stats import PAIR, SETTING, ok_rows

COLUMNS = [*SETTING, "arm", "freeze", "baseline", "n_label", "n", "acc", "scratch_form", "n_scratch_equiv", "d_t",
           "censored", "d_t_bound", "d_t_lo", "d_t_hi", "fraction_transferred", "confidence", "n_seeds",
           "n_boot_ok", "d_t_text", "setting_key", "line_key", "arm_key", "baseline_key"]
SIGN = {"above": math.inf, "above_asymptote": math.inf, "below": -math.inf}


def d_t(fit: Fit, acc: float, n: float) -> tuple[float, str, float]:
    """(D_T, censoring flag, bound) for an arm at n with mean accuracy `acc`, against the scratch curve `fit`.
    D_T is NaN when censored; the bound is n_max - n ("above", "above_asymptote": D_T > bound) or n_min - n
    ("below": D_T < bound), else NaN."""
    n_eq, flag = invert(fit, acc)
    if flag == "":
        return n_eq - n, "", math.nan
    bound = fit.n_max - n if flag in ("above", "above_asymptote") else fit.n_min - n if flag == "below" else math.nan
    return math.nan, flag, bound


def _pairs(rows: pd.DataFrame) -> pd.Series:
    """The (seed, data seed) pair of every row as one string key (a missing data seed reads "nan" in every row)."""
    return pd.Series(["|".join(map(str, t)) for t in zip(*(rows[p] for p in PAIR))], index=rows.index, dtype=object)


def _grid(rows: pd.DataFrame, pairs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(pairs x n matrix of test_acc, NaN where a pair lacks that n; the n values)."""
    piv = rows.assign(_pair=_pairs(rows)).pivot_table(index="_pair", columns="n", values="test_acc",
                                                       aggfunc="mean")
    piv = piv.reindex(index=pairs)
    return piv.to_numpy(dtype=float), np.asarray(piv.columns, dtype=float)


def interval_end(v: float, below: float, above: float) -> str:
    """An interval end of D_T: a value, or the censoring bound it stands for (+inf: > above, -inf: < below; for
    D_T at n these are n_max - n and n_min - n of the scratch fit)."""
    if v == math.inf:
        return f"> {above:.3g}"
    if v == -math.inf:
        return f"< {below:.3g}"
    return f"{v:.3g}"


NOT_ESTIMATED = "not estimated"  # the start of d_t_text when there is no value nor bound (`d_t_sentence`)


def d_t_sentence(r) -> str:
    """The effective data of one row as a reader reads it: "D_T 14 labelled examples per class (95% bootstrap CI
    12 to > 15)", or "D_T not estimated (no scratch curve: 2 distinct n, and a fit needs at least 3)"."""
    text = str(r["d_t_text"])
    if text.startswith(NOT_ESTIMATED):
        return f"D_T {text}"
    value, sep, why = text.partition(" (")  # the unit goes after the value, before what qualifies it
    return f"D_T {value} labelled examples per class" + (f" ({why}" if sep else "")


def _text(d: float, flag: str, bound: float, lo: float, hi: float, fit: Fit, conf: float, n: float) -> str:
    if flag in ("no_fit", "flat"):
        return (NOT_ESTIMATED + " (scratch's curve is flat over its n range, so no n of scratch matches the arm)"
                if flag == "flat" else NOT_ESTIMATED + " (no scratch curve)")
    ci = ""
    if not (pd.isna(lo) or pd.isna(hi)):
        lo_s, hi_s = (interval_end(v, fit.n_min - n, fit.n_max - n) for v in (lo, hi))
        ci = (f" ({conf:.0%} bootstrap CI {lo_s} to {hi_s})" if lo_s != hi_s
              else f" ({conf:.0%} bootstrap CI: both ends {lo_s})")
    if flag == "":
        return f"{d:.3g}{ci}"
    if flag == "below":
        return f"< {bound:.3g} (below the scratch curve at its smallest n, {fit.n_min:g}){ci}"
    why = (f"at or above the scratch curve's asymptote {fit.asymptote:.3g}" if flag == "above_asymptote"
           else f"above the scratch curve at its largest n, {fit.n_max:g}")
    return f"> {bound:.3g} ({why}){ci}"


def _draw_fit(fit: Fit, grid: np.ndarray, ns: np.ndarray, pick: tuple[int, ...]) -> Fit | None:
    """The scratch curve refitted (same form, started from the full fit) on the mean of the drawn pairs."""
    sub = grid[list(pick)]
    seen = ~np.all(np.isnan(sub), axis=0)
    if seen.sum() < 3:
        return None
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = np.nanmean(sub[:, seen], axis=0)
    n = ns[seen]
    p = fit_form(FORMS[fit.form], n, y, start=fit.params)
    return None if p is None else Fit(fit.form, p, float(n.min()), float(n.max()), int(seen.sum()))


def effective_data(df: pd.DataFrame, summary: pd.DataFrame, fits: Mapping[str, Fit], n_boot: int = 2000,
                   confidence: float = 0.95, rng_seed: int = 0) -> pd.DataFrame:
    """`effective_data.csv`: one row per transfer arm and n whose setting has a scratch line (see the module
    docstring). `d_t` is NaN where `censored` is set; `d_t_bound` then holds the bound and `d_t_text` says it."""
    ok = ok_rows(df)
    if ok.empty or summary.empty or not ok["is_scratch"].any():
        return pd.DataFrame(columns=COLUMNS)
    alpha = (1 - confidence) / 2
    rng = np.random.default_rng(rng_seed)
    rows = []
    transfer = summary[~summary["is_scratch"].astype(bool)]
    for base_key, arms in transfer.groupby("baseline_key", sort=False):
        fit = fits.get(base_key)
        base_rows = ok[ok["line_key"] == base_key]
        if fit is None or base_rows.empty:
            continue
        arm_rows = ok[ok["line_key"].isin(arms["line_key"])]
        pairs = sorted(set(_pairs(base_rows)) | set(_pairs(arm_rows)))
        k = len(pairs)
        draws: dict[tuple[int, ...], int] = {}
        if fit.form is not None and k > 1 and n_boot > 0:
            for pick in np.sort(rng.integers(0, k, size=(n_boot, k)), axis=1):
                draws[tuple(pick)] = draws.get(tuple(pick), 0) + 1
        sgrid, sns = _grid(base_rows, pairs)
        draw_fits = {pick: _draw_fit(fit, sgrid, sns, pick) for pick in draws}
        for lk, arm in arms.groupby("line_key", sort=False):
            agrid, ans = _grid(arm_rows[arm_rows["line_key"] == lk], pairs)
            for _, a in arm.sort_values("n").iterrows():
                n, acc = float(a["n"]), float(a["acc_mean"])
                if fit.form is None:
                    d, flag, bound = math.nan, "no_fit", math.nan
                else:
                    d, flag, bound = d_t(fit, acc, n)
                col = int(np.flatnonzero(ans == n)[0]) if (ans == n).any() else None
                values, weights = [], []
                for pick, count in draws.items():
                    dfit = draw_fits[pick]
                    if dfit is None or col is None:
                        continue
                    cell = agrid[list(pick), col]
                    if np.all(np.isnan(cell)):
                        continue
                    dd, dflag, _ = d_t(dfit, float(np.nanmean(cell)), n)
                    v = dd if dflag == "" else SIGN.get(dflag, math.nan)
                    if not pd.isna(v):
                        values.append(v)
                        weights.append(count)
                lo = hi = math.nan
                if values:
                    sample = np.repeat(np.asarray(values, dtype=float), weights)
                    lo = float(np.quantile(sample, alpha, method="inverted_cdf"))
                    hi = float(np.quantile(sample, 1 - alpha, method="inverted_cdf"))
                n_eq = d + n if flag == "" else math.nan
                rows.append({**{c: a[c] for c in SETTING}, "arm": a["arm"], "freeze": a["freeze"],
                             "baseline": base_rows["arm"].iloc[0], "n_label": a["n_label"], "n": n, "acc": acc,
                             "scratch_form": fit.form, "n_scratch_equiv": n_eq, "d_t": d, "censored": flag,
                             "d_t_bound": bound, "d_t_lo": lo, "d_t_hi": hi,
                             "fraction_transferred": d / n_eq if flag == "" and n_eq > 0 else math.nan,
                             "confidence": confidence, "n_seeds": k, "n_boot_ok": int(sum(weights)),
                             "d_t_text": (f"{NOT_ESTIMATED} (no scratch curve: {fit.reason})" if fit.form is None
                                          else _text(d, flag, bound, lo, hi, fit, confidence, n)),
                             "setting_key": a["setting_key"], "line_key": lk, "arm_key": a["arm_key"],
                             "baseline_key": base_key})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["setting", "arm", "n"], kind="stable") \
        .reset_index(drop=True)
