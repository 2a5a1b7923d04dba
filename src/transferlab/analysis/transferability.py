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

Scratch copies nothing and has no score.

Ties. Scores within a relative tolerance of each other (SCORE_RTOL, of the larger magnitude) are one value: the
same features scored twice (once from inputs, once from the feature cache) differ in the last digits, and ranking
that difference would grade floating-point noise. Every statistic ranks the tie classes (`tie_ranks`), so tied arms
are neither concordant nor discordant and share the top when they tie for it. A grading with fewer than two
distinct scores ranks nothing: its correlations are NaN, with that note, and its regret is the cost of picking an
arm at random.

Scores that cannot vary. A score reads either the features at the cut (LogME, H-score: `scores.METHODS[...].needs`
is "features") or the source model's predictions (NCE, LEEP). When every arm of a setting and n read the same
input in every seed (same source model, and for feature scores the same cut and init: arms that differ only in
freeze depth, strategy or PEFT), the score is the same number by construction and grading it would grade noise;
the row says so (`graded` false, `note`), has no statistics, and the summary says it once per setting and score.
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
COLUMNS = ["setting", "target", "backbone", "n_label", "n", "score", "n_arms", "n_seeds", "graded", "n_distinct",
           *[c for s in STATS for c in (s, f"{s}_lo", f"{s}_hi")],
           "picked_arm", "picked_acc", "best_arm", "best_acc", "note", "setting_key"]
# Scores within this relative difference (of the larger magnitude) are ties: far above the float noise of scoring
# the same features by two paths, far below any difference between two arms' features worth ranking.
SCORE_RTOL = 1e-6
SAME_INPUT = "same input for every arm"  # the start of the note of a score that cannot vary (`_same_input`)
ARM_COLUMNS = ["setting", "setting_key", "n_label", "n", "score", "arm", "score_mean", "acc_mean", "n_seeds"]


def score_names(df: pd.DataFrame) -> list[str]:
    """The scores some run recorded (the `score_<method>` columns of `collect`), in column order."""
    return [c[len(SCORE_PREFIX):] for c in df.columns if c.startswith(SCORE_PREFIX)]


# ---------------------------------------------------------------- statistics on many draws at once
def tie_ranks(x: np.ndarray, rtol: float = SCORE_RTOL) -> np.ndarray:
    """Dense ranks (0, 1, ...) of each row of x [B, m] after merging values within `rtol` of their neighbour in
    sorted order (relative to the larger magnitude): equal scores up to float noise become one tie class."""
    x = np.atleast_2d(np.asarray(x, float))
    order = np.argsort(x, axis=1, kind="stable")
    sx = np.take_along_axis(x, order, axis=1)
    gap = np.abs(np.diff(sx, axis=1)) > rtol * np.maximum(np.abs(sx[:, 1:]), np.abs(sx[:, :-1]))
    dense = np.concatenate([np.zeros((len(x), 1)), np.cumsum(gap, axis=1)], axis=1)
    out = np.empty_like(dense)
    np.put_along_axis(out, order, dense, axis=1)
    return out


def n_distinct(x: np.ndarray, rtol: float = SCORE_RTOL) -> np.ndarray:
    """Distinct values per row of x [B, m] up to `rtol` (`tie_ranks`)."""
    return tie_ranks(x, rtol).max(axis=1).astype(int) + 1


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
    """Best accuracy minus the (mean) accuracy of the arm(s) with the highest score (ties within SCORE_RTOL: the
    mean over them), per row of [B, m]."""
    ranks = tie_ranks(score)
    top = ranks == ranks.max(axis=1, keepdims=True)
    return acc.max(axis=1) - (acc * top).sum(axis=1) / top.sum(axis=1)


def _all(score: np.ndarray, acc: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic on the scores' tie classes (`tie_ranks`): all four depend on the scores' order only."""
    ranks = tie_ranks(score)
    return {"kendall_tau": kendall_tau_b(ranks, acc), "weighted_tau": weighted_tau(ranks, acc),
            "spearman": spearman(ranks, acc), "regret": regret(score, acc)}


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
    distinct = int(n_distinct(score)[0])
    out: dict = {**point, "n_arms": len(arms), "graded": distinct >= 2, "n_distinct": distinct}
    ranks = tie_ranks(score)[0]
    top = np.flatnonzero(ranks == ranks.max())
    out.update(picked_arm=" | ".join(sorted(label[arms[i]] for i in top)), picked_acc=float(acc[0, top].mean()),
               best_arm=label[arms[int(np.argmax(acc[0]))]], best_acc=float(acc[0].max()))
    notes = []
    if distinct < 2:
        notes.append(f"the score is equal for every arm (within a relative {SCORE_RTOL:g}), so it ranks nothing "
                     "here; its regret is that of an arm picked at random")
        for s in ("kendall_tau", "weighted_tau", "spearman"):
            out[s] = math.nan
    elif len(top) > 1:
        notes.append(f"{len(top)} arms tie for the highest score (within a relative {SCORE_RTOL:g}): regret over "
                     "their mean")
    # Bootstrap over the replicates every arm has (seed, data_seed): resampled jointly across arms.
    reps = g.assign(rep=[f"{s}/{d}" for s, d in zip(g["seed"], g["data_seed"])])
    common = set.intersection(*(set(reps.loc[reps["arm_key"] == a, "rep"]) for a in arms))
    out["n_seeds"] = len(common)
    for s in STATS:
        out[f"{s}_lo"] = out[f"{s}_hi"] = math.nan
    if len(common) >= 2 and n_boot > 0 and distinct >= 2:
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
        notes.append(f"{'one seed is' if len(common) == 1 else 'no seed is'} common to every arm: no bootstrap "
                     "interval")
    out["note"] = "; ".join(notes)
    return out


def _input_of(r: pd.Series, needs: str) -> tuple:
    """What a run's score read: the source model (its cache entry, else the source task), and for a feature score
    also the cut and what the copied blocks held (`init`)."""
    src = r.get("source_ckpt")
    src = src if isinstance(src, str) and src else str(r.get("source"))
    return (src, int(r["cut"]), str(r.get("init"))) if needs == "features" else (src,)


def _same_input(g: pd.DataFrame, name: str) -> str | None:
    """The note of a score that reads the same input in every arm at each seed (so it cannot rank them), or None
    when the arms' inputs differ (or there are fewer than two arms)."""
    from transferlab.scores import METHODS

    if g["arm_key"].nunique() < 2 or "cut" not in g:
        return None
    needs = METHODS[name].needs if name in METHODS else None
    if needs is None:
        return None
    rep = [f"{s}/{d}" for s, d in zip(g["seed"], g["data_seed"])]
    per_rep = pd.Series([_input_of(r, needs) for _, r in g.iterrows()], index=g.index).groupby(rep).nunique()
    if (per_rep > 1).any():
        return None
    what = (f"the features at the cut (cut={int(g['cut'].iloc[0])})" if needs == "features"
            else "the source model's predictions")
    return (f"{SAME_INPUT}: it reads only {what}, which the arms share (they differ in what trains, not in what "
            "was copied), so it is the same number for every arm by construction and is not graded")


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
            same = _same_input(scored, name)
            if same is not None:  # the score cannot vary across these arms: said, not graded
                rows.append({**where, "score": name, "n_arms": scored["arm_key"].nunique(), "graded": False,
                             "n_seeds": scored["seed"].nunique(), "note": same})
                continue
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
    """One line per setting and score: Kendall tau-b [interval] and regret (points) at each n; a score that cannot
    vary across the arms (`_same_input`) is said once instead, and an n where it ranks nothing says so."""
    lines = []
    same = table["note"].fillna("").str.startswith(SAME_INPUT)
    said: dict[tuple[str, str, str], list[str]] = {}  # (setting, why, n list) -> the scores it holds for
    for (setting, score), t in table[same].groupby(["setting", "score"], sort=False):
        ns = ", ".join(str(n) for n in t.sort_values("n")["n_label"])
        said.setdefault((setting, t["note"].iloc[0][len(SAME_INPUT) + 2:], ns), []).append(score)
    for (setting, why, ns), scores in said.items():
        if len(scores) > 1:  # one sentence for several scores
            why = why.replace("it reads", "each reads", 1).replace("so it is", "so each is", 1)
        lines.append(f"{setting}: {', '.join(scores)} not graded (n={ns}): {why}")
    for (setting, score), t in table[~same].groupby(["setting", "score"], sort=False):
        parts = []
        for _, r in t.sort_values("n").iterrows():
            if not r["graded"]:
                parts.append(f"n={r['n_label']}: ranks nothing (equal score for every arm)")
                continue
            ci = "" if pd.isna(r["kendall_tau_lo"]) else f" [{_num(r['kendall_tau_lo'])}, {_num(r['kendall_tau_hi'])}]"
            parts.append(f"n={r['n_label']}: tau {_num(r['kendall_tau'])}{ci}, regret "
                         f"{_num(100 * r['regret'], '.1f')} pt")
        if parts:
            lines.append(f"{setting}: {score} vs measured accuracy ({int(t['n_arms'].max())} arms): "
                         + "; ".join(parts))
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
    all_settings = list(dict.fromkeys(table["setting"]))
    for setting in all_settings:
        t, a = table[table["setting"] == setting], arms[arms["setting"] == setting]
        names = [n for n in dict.fromkeys(t["score"]) if (a["score"] == n).any()]  # scores with arms to show
        if not names:  # nothing graded here (every score read the same input in every arm): no figure
            continue
        t = t[t["score"].isin(names)]
        with_tau = t["kendall_tau"].notna().any()  # no tau at any n: no "rank agreement" panel
        ns = a.drop_duplicates("n_label").sort_values("n")
        colors = dict(zip(ns["n_label"], itertools.cycle(PALETTE)))  # the report's palette: visible on white
        panels = len(names) + int(with_tau)
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
        for i, name in enumerate(names if with_tau else []):
            g = t[t["score"] == name].sort_values("n")
            err = np.array([g["kendall_tau"] - g["kendall_tau_lo"], g["kendall_tau_hi"] - g["kendall_tau"]])
            x = g["n"] * (1.04 ** (i - (len(names) - 1) / 2))  # side by side at each n
            ax.errorbar(x, g["kendall_tau"], yerr=np.nan_to_num(err), marker="o", capsize=3, label=name)
        if with_tau:
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_xticks(list(ns["n"]))
            ax.set_xticklabels(list(ns["n_label"]))
            ax.minorticks_off()
            ax.set_ylim(-1.05, 1.05)
            ax.set_xlabel("labelled target examples per class, n")
            ax.set_ylabel("Kendall tau-b, score vs accuracy")
            ax.set_title("rank agreement vs n")
            ax.legend(fontsize=7)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Transferability scores vs measured accuracy ({setting})")
        fig.tight_layout()
        path = save_figure(fig, out_dir / f"report_transferability{_tag(setting, len(all_settings) == 1)}.png")
        out.append((f"Transferability scores ({setting})", path,
                    "Each point is a transfer arm (mean over seeds) at one n: its score before training against "
                    "its measured test accuracy."
                    + (" Last panel: Kendall tau-b between score and accuracy across the arms, per n, with its "
                       "bootstrap interval over seeds (transferability.csv: weighted tau, Spearman, regret)."
                       if with_tau else " No score ranks the arms at any n (equal scores within the tolerance), "
                       "so there is no rank-agreement panel.")))
    return out
