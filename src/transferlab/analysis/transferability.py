"""Transferability scores graded against what the sweep measured: rank correlation and regret, per score and n.

Every run records its scores before training (`RunRecord.scores`, `collect`'s `score_<method>` columns). Within
one setting (`collect`'s setting_key: the arms compared with each other) and one n, the transfer arms that recorded
a score are ranked by it and by their measured test accuracy (the report's lead metric, `test_acc`):

- per arm: the mean score and the mean accuracy over its seeds;
- Kendall's tau-b (ties counted as neither concordant nor discordant, Kendall 1945), the weighted tau of Vigna
  2015 ("A weighted correlation index for rankings with ties", `scipy.stats.weightedtau`: hyperbolic weights, the
  mean of the two rankings by score and by accuracy; swaps near the top cost more, which is what a researcher
  picking the best arm cares about; the index LogME's paper reports) and Spearman's rho;
- regret: the best measured mean accuracy minus the mean accuracy of the arm the score ranks first (when arms tie
  for first, the mean over them: the expected accuracy of picking one at random). 0 means the score picked the
  best arm; it is in accuracy units (0-1);
- a bootstrap interval for each: seeds resampled with replacement, jointly across arms (a seed draws the same
  target subset in every arm: the report's pairing), arm means and statistics recomputed, percentile interval
  over the draws where the statistic is defined. Over the seeds every arm has; none with fewer than 2.

Scratch copies nothing and has no score. A score that is equal for every arm ranks nothing (NCE and LEEP read the
source model's own predictions, so they are equal for every cut and freeze depth of one source; LogME and H-score
are equal across freeze depths at one cut): its correlations are NaN, with that note, and its regret is the cost
of picking an arm at random.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from transferlab.analysis.collect import SCORE_PREFIX

STATS = ("kendall_tau", "weighted_tau", "spearman", "regret")
COLUMNS = ["setting", "target", "backbone", "n_label", "n", "score", "n_arms", "n_seeds",
           *[c for s in STATS for c in (s, f"{s}_lo", f"{s}_hi")],
           "picked_arm", "picked_acc", "best_arm", "best_acc", "note", "setting_key"]
ARM_COLUMNS = ["setting", "setting_key", "n_label", "n", "score", "arm", "score_mean", "acc_mean", "n_seeds"]


def score_names(df: pd.DataFrame) -> list[str]:
    """The scores some run recorded (the `score_<method>` columns of `collect`), in column order."""
    return [c[len(SCORE_PREFIX):] for c in df.columns if c.startswith(SCORE_PREFIX)]


# ---------------------------------------------------------------- statistics on many draws at once
def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) over the pairs i < j, for each row of x [B, m] -> [B, m(m-1)/2]."""
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.sign(x[:, i] - x[:, j])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x, y [B, m] (NaN where either row is constant)."""
    sx, sy = _pair_signs(x), _pair_signs(y)
    den = np.sqrt((sx ** 2).sum(axis=1) * (sy ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sx * sy).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson correlation of average ranks) of each row pair of x, y [B, m]."""
    rx, ry = st.rankdata(x, axis=1), st.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def weighted_tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy's weighted tau of each row pair (NaN where either row is constant)."""
    out = np.full(len(x), np.nan)
    for b in range(len(x)):
        if np.ptp(x[b]) > 0 and np.ptp(y[b]) > 0:
            out[b] = st.weightedtau(x[b], y[b]).statistic
    return out


def regret(score: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Best accuracy minus the (mean) accuracy of the arm(s) with the highest score, per row of [B, m]."""
    top = np.isclose(score, score.max(axis=1, keepdims=True), rtol=0, atol=1e-12)
    return acc.max(axis=1) - (acc * top).sum(axis=1) / top.sum(axis=1)


def _all(score: np.ndarray, acc: np.ndarray) -> dict[str, np.ndarray]:
    return {"kendall_tau": kendall_tau_b(score, acc), "weighted_tau": weighted_tau(score, acc),
            "spearman": spearman(score, acc), "regret": regret(score, acc)}


# ---------------------------------------------------------------- one setting, n and score
def _grade(g: pd.DataFrame, col: str, confidence: float, n_boot: int, rng: np.random.Generator) -> dict | None:
    """The row of one (setting, n, score): g holds the ok transfer runs of that setting and n with that score."""
    arms = sorted(g["arm_key"].unique())
    if len(arms) < 2:
        return None
    label = {a: str(g.loc[g["arm_key"] == a, "arm"].iloc[0]) for a in arms}
    mean = g.groupby("arm_key")[[col, "test_acc"]].mean().loc[arms]
    score, acc = mean[col].to_numpy()[None, :], mean["test_acc"].to_numpy()[None, :]
    point = {k: float(v[0]) for k, v in _all(score, acc).items()}
    out: dict = {**point, "n_arms": len(arms)}
    top = np.flatnonzero(np.isclose(score[0], score[0].max(), rtol=0, atol=1e-12))
    out.update(picked_arm=" | ".join(sorted(label[arms[i]] for i in top)), picked_acc=float(acc[0, top].mean()),
               best_arm=label[arms[int(np.argmax(acc[0]))]], best_acc=float(acc[0].max()))
    notes = []
    if np.ptp(score[0]) == 0:
        notes.append("score equal for every arm: it ranks nothing here (regret: an arm picked at random)")
    elif len(top) > 1:
        notes.append(f"{len(top)} arms tie for the highest score: regret over their mean")
    # Bootstrap over the replicates every arm has (seed, data_seed): resampled jointly across arms.
    reps = g.assign(rep=[f"{s}/{d}" for s, d in zip(g["seed"], g["data_seed"])])
    common = set.intersection(*(set(reps.loc[reps["arm_key"] == a, "rep"]) for a in arms))
    out["n_seeds"] = len(common)
    for s in STATS:
        out[f"{s}_lo"] = out[f"{s}_hi"] = math.nan
    if len(common) >= 2 and n_boot > 0:
        order = sorted(common)
        cell = reps[reps["rep"].isin(common)].groupby(["arm_key", "rep"])[[col, "test_acc"]].mean()
        s_mat = np.array([[cell.loc[(a, r), col] for r in order] for a in arms])
        a_mat = np.array([[cell.loc[(a, r), "test_acc"] for r in order] for a in arms])
        k = len(order)
        counts = np.stack([np.bincount(rng.integers(0, k, size=k), minlength=k) for _ in range(n_boot)])
        draws = _all(counts @ s_mat.T / k, counts @ a_mat.T / k)
        alpha = (1 - confidence) / 2
        for s, values in draws.items():
            ok = values[np.isfinite(values)]
            if len(ok) >= max(10, n_boot // 2):  # most draws define it (else the interval would be a selection)
                out[f"{s}_lo"], out[f"{s}_hi"] = (float(q) for q in np.quantile(ok, [alpha, 1 - alpha]))
    elif len(common) < 2:
        notes.append(f"{len(common)} seed(s) common to every arm: no bootstrap interval")
    out["note"] = "; ".join(notes)
    return out


def grade(df: pd.DataFrame, confidence: float = 0.95, n_boot: int = 2000,
          seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(transferability table: one row per setting, n and score; per-arm means behind it). Empty frames when no
    run recorded a score."""
    names = score_names(df)
    if df.empty or not names:
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=ARM_COLUMNS)
    ok = df[(df["status"] == "ok") & df["test_acc"].notna() & ~df["is_scratch"].astype(bool)]
    rng = np.random.default_rng(seed)
    rows, arm_rows = [], []
    for (key, n_label), g in ok.groupby(["setting_key", "n_label"], sort=False):
        first = g.iloc[0]
        where = {"setting": first["setting"], "target": first["target"], "backbone": first["backbone"],
                 "n_label": n_label, "n": float(first["n"]), "setting_key": key}
        for name in names:
            col = SCORE_PREFIX + name
            scored = g[g[col].notna()]
            for arm_key, a in scored.groupby("arm_key", sort=False):
                arm_rows.append({**where, "score": name, "arm": a["arm"].iloc[0], "score_mean": a[col].mean(),
                                 "acc_mean": a["test_acc"].mean(), "n_seeds": len(a)})
            row = _grade(scored, col, confidence, n_boot, rng)
            if row is not None:
                rows.append({**where, "score": name, **row})
    table = pd.DataFrame(rows, columns=COLUMNS)
    if len(table):
        order = {name: i for i, name in enumerate(names)}
        table = table.sort_values(["setting", "score", "n"], key=lambda c: c.map(order) if c.name == "score"
                                  else c).reset_index(drop=True)
    return table, pd.DataFrame(arm_rows, columns=ARM_COLUMNS)


# ---------------------------------------------------------------- the report's words and figure
def _num(v: float, fmt: str = "+.2f") -> str:
    return "–" if v is None or pd.isna(v) else format(v, fmt)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One line per setting and score: Kendall tau-b [interval] and regret (points) at each n."""
    lines = []
    for (setting, score), t in table.groupby(["setting", "score"], sort=False):
        parts = []
        for _, r in t.sort_values("n").iterrows():
            ci = "" if pd.isna(r["kendall_tau_lo"]) else f" [{_num(r['kendall_tau_lo'])}, {_num(r['kendall_tau_hi'])}]"
            parts.append(f"n={r['n_label']}: tau {_num(r['kendall_tau'])}{ci}, regret "
                         f"{_num(100 * r['regret'], '.1f')} pt")
        lines.append(f"{setting}: {score} vs measured accuracy ({int(t['n_arms'].max())} arms): " + "; ".join(parts))
    return lines


def _tag(label: str, single: bool) -> str:
    return "" if single else "_" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")


def figures(table: pd.DataFrame, arms: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path, str]]:
    """Per setting with a graded score: `report_transferability[_<setting>].png` (one panel per score: mean score
    vs mean accuracy per arm, one colour per n; last panel: Kendall tau-b vs n per score, with its interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from transferlab.analysis.plots import PALETTE, save_figure  # PNG and PDF, like every figure of the report

    out = []
    settings = list(dict.fromkeys(table["setting"]))
    for setting in settings:
        t, a = table[table["setting"] == setting], arms[arms["setting"] == setting]
        names = list(dict.fromkeys(t["score"]))
        ns = a.drop_duplicates("n_label").sort_values("n")
        colors = dict(zip(ns["n_label"], itertools.cycle(PALETTE)))  # the report's palette: visible on white
        panels = len(names) + 1
        cols = min(panels, 3)
        rows = -(-panels // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.4 * rows), squeeze=False)
        axes = list(grid.flat)
        for ax in axes[panels:]:
            ax.axis("off")
        for ax, name in zip(axes, names):
            for n_label in ns["n_label"]:
                g = a[(a["score"] == name) & (a["n_label"] == n_label)].sort_values("score_mean")
                ax.plot(g["score_mean"], g["acc_mean"], color=colors[n_label], lw=0.7, alpha=0.6)
                ax.scatter(g["score_mean"], g["acc_mean"], color=colors[n_label], label=f"n={n_label}", s=22)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlabel(f"{name} (mean over seeds)")
            ax.set_ylabel("test accuracy (mean over seeds)")
            ax.set_title(name)
        ax = axes[panels - 1]
        for i, name in enumerate(names):
            g = t[t["score"] == name].sort_values("n")
            err = np.array([g["kendall_tau"] - g["kendall_tau_lo"], g["kendall_tau_hi"] - g["kendall_tau"]])
            x = g["n"] * (1.04 ** (i - (len(names) - 1) / 2))  # side by side at each n
            ax.errorbar(x, g["kendall_tau"], yerr=np.nan_to_num(err), marker="o", capsize=3, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(list(ns["n"]))
        ax.set_xticklabels(list(ns["n_label"]))
        ax.minorticks_off()
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("labelled target examples per class, n")
        ax.set_ylabel("Kendall tau-b, score vs accuracy")
        ax.set_title("rank agreement vs n")
        for h in (axes[0], ax):
            h.legend(fontsize=7)
        fig.suptitle(f"Transferability scores vs measured accuracy ({setting})")
        fig.tight_layout()
        path = save_figure(fig, out_dir / f"report_transferability{_tag(setting, len(settings) == 1)}.png")
        out.append((f"Transferability scores ({setting})", path,
                    "Each point is a transfer arm (mean over seeds) at one n: its score before training against "
                    "its measured test accuracy. Last panel: Kendall tau-b between score and accuracy across the "
                    "arms, per n, with its bootstrap interval over seeds (transferability.csv: weighted tau, "
                    "Spearman, regret)."))
    return out
