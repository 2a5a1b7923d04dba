"""The spread of a result split into its causes, and how many draws and seeds a wanted interval needs.

An arm's accuracy at n varies with two things a study chooses how often to repeat: the draw of the n labelled
examples (`data_seed`) and the training seed (`seed`: initialisation, batch order, dropout; and the source model
too when `pretrain.seed` follows `seed`, its default). Three seeds at n = 1 gave intervals of +-16-20 points, and
whether more seeds or more draws would narrow them depends on which cause dominates. A crossed design
(`seed=range(S) data_seed=range(D)`: every seed on every draw) separates them.

The model, per arm and n: y_ds = mu + a_d + b_s + e_ds, with draw effects a_d ~ (0, s2_draw), seed effects
b_s ~ (0, s2_seed) and a residual e_ds ~ (0, s2_resid) that also holds the draw x seed interaction (one run per
cell cannot tell them apart). The estimates are the two-way random-effects ANOVA's method of moments (Searle,
Casella & McCulloch, *Variance Components*, 1992, ch. 4), each truncated at 0:

    MS_draw = S * sum_d (ybar_d. - ybar)^2 / (D - 1)          E = s2_resid + S * s2_draw
    MS_seed = D * sum_s (ybar_.s - ybar)^2 / (S - 1)          E = s2_resid + D * s2_seed
    MS_res  = sum_ds (y_ds - ybar_d. - ybar_.s + ybar)^2 / ((D - 1)(S - 1))   E = s2_resid

Their intervals come from the pigeonhole bootstrap (Owen, *The pigeonhole bootstrap*, Ann. Appl. Stat. 2007):
draws and seeds are resampled independently, with replacement, and the estimates recomputed; the percentile
interval is reported. With 3 draws and 3 seeds these intervals are wide, which is the honest answer.

The planner: the mean over a crossed design of D draws and S seeds has variance
s2_draw / D + s2_seed / S + s2_resid / (D S), so the half-width of its interval is about z * sqrt(that) (normal
approximation, stated wherever it is printed). `plan` finds the design of fewest runs whose half-width is at most
the one asked for, from the point estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

COMPONENTS = ("draw", "seed", "resid")


@dataclass(frozen=True)
class Split:
    """Variance components of one arm at one n (accuracy units squared) with bootstrap intervals."""

    draws: int
    seeds: int
    mean: float
    var_draw: float
    var_seed: float
    var_resid: float
    ci: dict[str, tuple[float, float]]  # component -> (lo, hi)

    @property
    def total(self) -> float:
        """The variance of one run around the arm's mean: what a single run's spread holds."""
        return self.var_draw + self.var_seed + self.var_resid

    def share(self, component: str) -> float:
        return getattr(self, f"var_{component}") / self.total if self.total > 0 else float("nan")


def grid(rows: pd.DataFrame, value: str = "test_acc") -> np.ndarray | None:
    """The D x S matrix of `value` by (data_seed, seed), or None when the rows are not a complete crossed design
    (every seed on every draw, once, at least 2 of each)."""
    if rows[["data_seed", "seed"]].isna().any().any() or rows.duplicated(["data_seed", "seed"]).any():
        return None
    table = rows.pivot(index="data_seed", columns="seed", values=value)
    if table.shape[0] < 2 or table.shape[1] < 2 or table.isna().any().any():
        return None
    return table.to_numpy(dtype=float)


def moments(y: np.ndarray) -> tuple[float, float, float]:
    """(var_draw, var_seed, var_resid) of a D x S matrix by the ANOVA method of moments, truncated at 0."""
    d, s = y.shape
    m, rows, cols = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ms_draw = s * np.sum((rows - m) ** 2) / (d - 1)
    ms_seed = d * np.sum((cols - m) ** 2) / (s - 1)
    resid = y - rows[:, None] - cols[None, :] + m
    ms_res = np.sum(resid ** 2) / ((d - 1) * (s - 1))
    return max(0.0, (ms_draw - ms_res) / s), max(0.0, (ms_seed - ms_res) / d), float(ms_res)


def split(y: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Split:
    """Components of a D x S matrix with pigeonhole-bootstrap percentile intervals (module docstring)."""
    d, s = y.shape
    point = moments(y)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, 3))
    for b in range(n_boot):
        rows, cols = rng.integers(0, d, d), rng.integers(0, s, s)
        boots[b] = moments(y[np.ix_(rows, cols)])
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    ci = {c: (float(np.quantile(boots[:, i], lo)), float(np.quantile(boots[:, i], hi)))
          for i, c in enumerate(COMPONENTS)}
    return Split(draws=d, seeds=s, mean=float(y.mean()), var_draw=point[0], var_seed=point[1], var_resid=point[2],
                 ci=ci)


def half_width(var_draw: float, var_seed: float, var_resid: float, draws: int, seeds: int,
               confidence: float = 0.95) -> float:
    """Half-width of the interval of the mean over D draws x S seeds (normal approximation)."""
    z = float(st.norm.ppf(0.5 + confidence / 2))
    return z * math.sqrt(var_draw / draws + var_seed / seeds + var_resid / (draws * seeds))


def plan(sp: Split, wanted: float, *, confidence: float = 0.95, most: int = 64) -> tuple[int, int] | None:
    """(draws, seeds) of fewest runs (then fewest draws) whose half-width is at most `wanted`, each at most
    `most`; None when no such design exists within that bound."""
    best = None
    for d in range(1, most + 1):
        for s in range(1, most + 1):
            if half_width(sp.var_draw, sp.var_seed, sp.var_resid, d, s, confidence) <= wanted:
                if best is None or (d * s, d) < (best[0] * best[1], best[0]):
                    best = (d, s)
                break  # more seeds at this d only cost more
    return best


def table(df: pd.DataFrame, *, wanted: float | None = None, confidence: float = 0.95, n_boot: int = 2000,
          group: Sequence[str] = ("setting", "arm", "n_label"), order: Iterable[str] = ("setting", "n", "arm"),
          ) -> tuple[pd.DataFrame, list[str]]:
    """One row per arm and n with a crossed design: components as standard deviations in accuracy points, their
    shares of a single run's variance and intervals, the current half-width, and (with `wanted`, in accuracy
    units) the smallest design that reaches it. Returns (table, notes on the cells left out)."""
    ok = df[(df["status"] == "ok") & df["test_acc"].notna()]
    out, skipped = [], []
    for key, g in ok.groupby(list(group), sort=False, dropna=False):
        y = grid(g)
        if y is None:
            skipped.append(" / ".join(str(k) for k in key))
            continue
        sp = split(y, n_boot=n_boot, confidence=confidence)
        row = {**dict(zip(group, key)), "n": float(g["n"].iloc[0]) if "n" in g else float("nan"),
               "draws": sp.draws, "seeds": sp.seeds, "acc_mean": sp.mean}
        for c in COMPONENTS:
            v, (lo, hi) = getattr(sp, f"var_{c}"), sp.ci[c]
            row[f"sd_{c}_pt"] = 100 * math.sqrt(v)
            row[f"sd_{c}_lo_pt"], row[f"sd_{c}_hi_pt"] = 100 * math.sqrt(lo), 100 * math.sqrt(hi)
            row[f"share_{c}"] = sp.share(c)
        row["half_width_pt"] = 100 * half_width(sp.var_draw, sp.var_seed, sp.var_resid, sp.draws, sp.seeds,
                                                confidence)
        if wanted is not None:
            design = plan(sp, wanted, confidence=confidence)
            row["plan_draws"], row["plan_seeds"] = design if design else (None, None)
            row["plan_runs"] = design[0] * design[1] if design else None
        out.append(row)
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} arm/n cell{'s' * (len(skipped) > 1)} without a complete crossed design "
                     f"(every seed on every data_seed, at least 2 of each) not split: " + ", ".join(skipped[:6])
                     + (", ..." if len(skipped) > 6 else ""))
    res = pd.DataFrame(out)
    if not res.empty:
        res = res.sort_values([c for c in order if c in res]).reset_index(drop=True)
    return res, notes
