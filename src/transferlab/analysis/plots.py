"""The report's figures, each saved twice under `<out>/figures/`: PNG for the page, PDF (vector) for a paper.

Agg backend: no display, no network (matplotlib's PDF writer needs no backend either), so the report draws on a
headless machine.

Conventions shared by all figures, chosen so that a reader can tell the arms apart on paper, in greyscale and with
a colour-vision deficiency (the first version stacked one 10%-alpha band per arm on one axis, which blended into
one wash, and its lightest colour was invisible on white):

- n is per class on a log axis, and every n the data has is a tick; no panel is dropped (learning curves wrap
  into rows instead);
- one colour *and* one marker per arm, the Okabe-Ito palette (Okabe & Ito 2008, "Color universal design") without
  its yellow and black (yellow vanishes on white, black is scratch's), then Tol's darker colours beyond six arms;
  colours follow the arms sorted by freeze depth and are the same arm in every figure of a setting;
- scratch is black squares on a dashed line; the majority-class baseline (what always predicting the test
  split's largest class scores on the lead metric) is a grey dotted line;
- arms sit side by side around each n (dodged), each with its seeds as small dots and its mean with the t-interval
  over seeds as an error bar: with three seeds that interval can span most of the axis, and the dots show why;
- gains are small multiples, one panel per arm against the zero line, so no interval hides another.

Every figure shows one setting (`collect`'s setting_key): runs that differ in anything but their arm are never
drawn in one panel, and scratch is found by the `is_scratch` column, never by its label.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from transferlab.analysis.collect import curves  # noqa: E402
from transferlab.analysis.naming import setting_tags  # noqa: E402
from transferlab.analysis.paired import paired_differences  # noqa: E402
from transferlab.analysis.stats import PAIR, t_interval  # noqa: E402
from transferlab.store.atomic import atomic_path  # noqa: E402

# Okabe-Ito without yellow (#F0E442) and black, then Paul Tol's darker "muted" colours: all readable on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
           "#882255", "#117733", "#332288", "#AA4499", "#999933", "#661100")
MARKERS = ("o", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d")
SCRATCH_COLOR = "black"
MAJORITY_STYLE = {"color": "#666666", "linestyle": ":", "linewidth": 1.8}
MAJORITY_LABEL = "majority class (always predicts the largest test class)"
HIGHLIGHT = "#D55E00"  # the heatmap's best and tie boxes, the crossover line of its own figure
CROSS_COLOR = "#444444"  # crossover lines on the accuracy figure (not an arm's colour)
# long dashes: neither the majority line (dotted) nor scratch (short dashes)
CROSS_STYLES = ((0, (8, 3)), (0, (8, 3, 2, 3)), (0, (8, 3, 2, 3, 2, 3)), (0, (14, 4)))
YOSINSKI_STYLE = {"BnB": ("#0072B2", "-", "o"), "BnB+": ("#56B4E9", "--", "^"),
                  "AnB": ("#D55E00", "-", "o"), "AnB+": ("#E69F00", "--", "^")}
DPI = 110
Style = tuple[str, str]  # (colour, marker)


def _scratch(d: pd.DataFrame) -> pd.Series:
    return d["is_scratch"].astype(bool) if "is_scratch" in d else pd.Series(False, index=d.index)


def _arm_order(arms: pd.DataFrame) -> list[str]:
    """Transfer arms sorted by freeze depth (then label), scratch excluded."""
    t = arms[~_scratch(arms)].drop_duplicates("arm")
    return list(t.sort_values(["freeze", "arm"], na_position="last")["arm"])


def _scratch_arms(d: pd.DataFrame) -> list[str]:
    """The scratch lines of one setting: one, unless they differ in a key (each its own line, never pooled)."""
    return sorted(d.loc[_scratch(d), "arm"].unique())


def arm_styles(arms: list[str]) -> dict[str, Style]:
    """(colour, marker) per transfer arm, in the order given (freeze depth): one fixed style per arm, so the
    same arm looks the same in every figure of its setting."""
    return {a: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, a in enumerate(arms)}


def _style_of(arm: str, styles: dict[str, Style], scratch: list[str]) -> tuple[str, str, object]:
    """(colour, marker, line style) of a line: scratch black squares, dashed; transfer arms solid."""
    if arm in scratch:
        return SCRATCH_COLOR, "s", ["--", ":", "-."][scratch.index(arm) % 3]
    color, marker = styles.get(arm, (PALETTE[0], MARKERS[0]))
    return color, marker, "-"


def control_lines(summary: pd.DataFrame) -> list[str]:
    """The lines of the control-arm figure of one setting, or [] when it has no control arm: each control
    (`transfer.init=meanvar|random_frozen`: a depth's blocks not the source's; `transfer=scratch_long`: scratch at
    the compute of pretraining + training), the transferred arm with the source's weights at every depth a control
    has, and scratch."""
    init = summary["init"].fillna("source") if "init" in summary else pd.Series("source", index=summary.index)
    nothing = summary["copies_nothing"].astype(bool)  # as each run recorded it (transfer/arm.py)
    copies = ~_scratch(summary) & ~nothing
    long = ~_scratch(summary) & nothing
    controls = summary[(copies & (init != "source")) | long]
    if controls.empty:
        return []
    depths = set(controls.loc[~nothing, "freeze"])
    transferred = summary[copies & (init == "source") & summary["freeze"].isin(depths)]
    return [*_arm_order(transferred), *_arm_order(controls), *_scratch_arms(summary)]


def _dodge(ns: Iterable[float], k: int) -> tuple[list[float], float]:
    """Multiplicative x offsets placing k series side by side around each n on a log axis, and one step (in
    decades): together they span at most 60% of the smallest gap between two n, so neighbours never mix."""
    logs = np.log10(sorted({float(n) for n in ns if not pd.isna(n) and n > 0}))
    gap = float(np.min(np.diff(logs))) if len(logs) > 1 else 1.0
    step = min(0.6 * gap, 0.4) / max(k, 1)
    return [10 ** ((i - (k - 1) / 2) * step) for i in range(k)], step


def _n_axis(ax, sub: pd.DataFrame) -> None:
    ticks = sub.drop_duplicates("n_label").sort_values("n")
    ax.set_xscale("log")
    ax.set_xticks(list(ticks["n"]))
    ax.set_xticklabels([lab if lab != "all" else f"all\n(~{n:.0f})" for lab, n in zip(ticks["n_label"], ticks["n"])])
    ax.minorticks_off()
    ax.margins(x=0.08)
    ax.set_xlabel("labelled target examples per class, n (log scale)")


def save_figure(fig, path: Path) -> Path:
    """Write `path` (PNG) and the same figure as PDF beside it; returns the PNG path. Both atomically, so a
    reader never sees half a figure; the folder is made if needed. The PDF embeds TrueType (Type 42) fonts, not
    matplotlib's default Type 3, which many publishers' checks reject."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        with atomic_path(target) as tmp, plt.rc_context({"pdf.fonttype": 42}):
            fig.savefig(tmp, dpi=DPI, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return path


_save = save_figure


def _bars(ax, x, mean, lo, hi, *, color: str, marker: str, ls: object = "-", label: str | None = None,
          filled: Iterable[bool] | None = None, zorder: float = 3) -> None:
    """Means joined by a line, each with its interval as an error bar; `filled` False draws an open marker."""
    x, mean = np.asarray(x, float), np.asarray(mean, float)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)]).clip(min=0)
    ax.plot(x, mean, color=color, linestyle=ls, linewidth=1.3, alpha=0.85, zorder=zorder - 1)
    fill = np.ones(len(x), bool) if filled is None else np.asarray(list(filled), bool)
    for sel, face in ((fill, color), (~fill, "white")):
        if sel.any():
            ax.errorbar(x[sel], mean[sel], yerr=err[:, sel], fmt=marker, color=color, markerfacecolor=face,
                        markersize=6, capsize=3, elinewidth=1.3, zorder=zorder)
    if label is not None:
        ax.plot([], [], color=color, linestyle=ls, marker=marker, label=label)


def _dots(ax, x: float, values: Iterable[float], step: float, *, color: str, marker: str) -> None:
    """The seeds of one arm at one n as small dots just right of its error bar (so the mean's marker does not
    hide them), spread a little so equal values stay countable."""
    v = np.asarray([a for a in values if not pd.isna(a)], float)
    if not len(v):
        return
    offsets = 0.42 * step + (np.arange(len(v)) - (len(v) - 1) / 2) * (0.2 * step / max(len(v) - 1, 1))
    ax.plot(x * 10 ** offsets, v, linestyle="none", marker=marker, markersize=3.6, color=color, alpha=0.7,
            markeredgewidth=0, zorder=4)


# The majority-class line is drawn only when it widens the data's y range by at most this share of that range
# (or lies inside a fixed --ylim); further below, drawing it would squash the data into a strip at the top, so the
# floor is stated in the legend and the caption instead.
FLOOR_FAR = 0.5


def majority_floor(frame: pd.DataFrame, ylim: tuple[float, float] | None = None) -> tuple[pd.Series | None, bool]:
    """(the majority-class baseline per n, or None; whether it is drawn as a line): drawn when it lies within
    FLOOR_FAR of the data's range below the data (the means and interval ends of `frame`), or inside `ylim`."""
    if "majority_baseline" not in frame or frame["majority_baseline"].isna().all():
        return None, False
    m = frame.dropna(subset=["majority_baseline"]).groupby("n")["majority_baseline"].mean().sort_index()
    if ylim is not None:
        return m, bool(((m >= ylim[0]) & (m <= ylim[1])).all())
    values = pd.concat([frame[c] for c in ("acc_mean", "acc_ci_lo", "acc_ci_hi") if c in frame]).dropna()
    if values.empty:
        return m, True
    lo, hi = float(values.min()), float(values.max())
    return m, bool(m.min() >= lo - FLOOR_FAR * max(hi - lo, 0.02))


def floor_words(m: pd.Series) -> str:
    """The floor as a reader reads it: one value, or its range over n."""
    lo, hi = float(m.min()), float(m.max())
    return f"{100 * lo:.1f}%" if math.isclose(lo, hi, abs_tol=5e-4) else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def _majority(ax, frame: pd.DataFrame, ylim: tuple[float, float] | None = None) -> None:
    """The majority-class baseline of the lead metric (`majority_baseline`, per n) as a grey dotted line, or, when
    it is far below the data (`majority_floor`), only as a legend entry saying its value."""
    m, drawn = majority_floor(frame, ylim)
    if m is None:
        return
    if not drawn:
        ax.plot([], [], **MAJORITY_STYLE, label=f"majority class: {floor_words(m)} (below the axis, not drawn)")
    elif m.nunique() == 1 or len(m) == 1:
        ax.axhline(float(m.iloc[0]), **MAJORITY_STYLE, label=MAJORITY_LABEL, zorder=0)
    else:
        ax.plot(m.index, m.values, **MAJORITY_STYLE, label=MAJORITY_LABEL, zorder=0)


def majority_caption(frame: pd.DataFrame, ylim: tuple[float, float] | None = None) -> str:
    """The caption's sentence on the floor (empty without one) and on a fixed --ylim."""
    m, drawn = majority_floor(frame, ylim)
    fixed = (f" The y axis is fixed to {ylim[0]:g}-{ylim[1]:g} (--ylim); values outside it are not shown."
             if ylim is not None else "")
    if m is None:
        return fixed
    if drawn:
        return " Grey dotted: the majority-class baseline." + fixed
    return (f" The majority-class baseline ({floor_words(m)}: always predicting the largest test class) is far "
            "below the data and is not drawn, so the axis keeps the data's range." + fixed)


def n_star_short(r) -> str:
    """n* and its bootstrap interval in a few characters, censored ends as bounds: "≤ 2 (CI ≤ 2 to 7.3)"."""
    n, lo, hi, n_min, n_max = (float(r[k]) for k in ("n_star", "n_star_lo", "n_star_hi", "n_min", "n_max"))
    if math.isnan(n):
        return "unknown"

    def bound(v: float) -> str:
        return f"> {n_max:.3g}" if math.isinf(v) else (f"≤ {n_min:.3g}" if v <= n_min else f"{v:.3g}")

    head = bound(n) if bound(n)[0] in "≤>" else f"= {n:.3g}"
    if math.isnan(lo) or math.isnan(hi) or r.get("n_seeds", 2) < 2 or bound(lo) == bound(hi):
        return head
    return f"{head} (CI {bound(lo)} to {bound(hi)})"


def _draw_crossovers(ax, cx: pd.DataFrame | None, color: str = CROSS_COLOR) -> None:
    """One vertical line per crossover at its n*, each named in the legend with its pair of arms and bootstrap
    interval, requested pairs included. A censored n* (ahead from the smallest n on, or not ahead at the largest)
    crosses nowhere in the data: it gets its legend entry ("≤ 2", "> 100") and no line."""
    if cx is None or cx.empty:
        return
    for i, (_, r) in enumerate(cx.iterrows()):
        n = r["n_star"]
        if pd.isna(n):
            continue
        ls = CROSS_STYLES[i % len(CROSS_STYLES)]
        label = f"n*: {r['finetuned_arm']} overtakes {r['frozen_arm']}, {n_star_short(r)}"
        if r["n_min"] < n < r["n_max"]:
            ax.axvline(n, color=color, linestyle=ls, linewidth=1.6, zorder=0)
        ax.plot([], [], color=color, linestyle=ls, linewidth=1.6, label=label)


def _legend_right(ax, **kw) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, handlelength=3.2, **kw)


def _seeds_of(ok: pd.DataFrame | None, arm_key: str) -> pd.Series:
    if ok is None or ok.empty:
        return pd.Series(dtype=float)
    return ok.loc[ok["arm_key"] == arm_key].sort_values(PAIR)["test_acc"]


def acc_vs_n(summary: pd.DataFrame, cx: pd.DataFrame | None, path: Path, title: str, ok: pd.DataFrame | None = None,
             styles: dict[str, Style] | None = None, metric: str = "accuracy", confidence: float = 0.95,
             ylim: tuple[float, float] | None = None) -> Path:
    """Test metric vs n: per arm, side by side at each n, its seeds (dots) and mean with t-interval (error bar);
    scratch black, the majority-class baseline grey dotted, every crossover n* a labelled vertical line."""
    fig, ax = plt.subplots(figsize=(9.6, 5.0))
    arms, scratch = _arm_order(summary), _scratch_arms(summary)
    styles = styles or arm_styles(arms)
    order = [*arms, *scratch]
    factors, step = _dodge(summary["n"], len(order))
    for i, arm in enumerate(order):
        g = summary[summary["arm"] == arm].sort_values("n")
        color, marker, ls = _style_of(arm, styles, scratch)
        x = g["n"].to_numpy(float) * factors[i]
        for xi, key in zip(x, g["arm_key"]):
            _dots(ax, xi, _seeds_of(ok, key), step, color=color, marker=marker)
        _bars(ax, x, g["acc_mean"], g["acc_ci_lo"], g["acc_ci_hi"], color=color, marker=marker, ls=ls, label=arm)
    return _finish_over_n(fig, ax, summary, path, title, f"test {metric}\n(dots: seeds; bars: mean, "
                          f"{confidence:.0%} CI)", ylim, cx)


def _finish_over_n(fig, ax, summary: pd.DataFrame, path: Path, title: str, ylabel: str,
                   ylim: tuple[float, float] | None, cx: pd.DataFrame | None = None) -> Path:
    """The common end of a plot of the test metric over n: the majority-class line, the y range, the n axis, the
    crossovers, labels, grid and the legend beside the axes; saved."""
    _majority(ax, summary, ylim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    _n_axis(ax, summary)
    _draw_crossovers(ax, cx)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return _save(fig, path)


def heatmap(summary: pd.DataFrame, path: Path, title: str, metric: str = "accuracy",
            confidence: float = 0.95) -> Path:
    """Mean test metric, arm (freeze depth) x n. Solid box: the best arm of the column (`is_best`, the arm
    best.csv names); dashed box and a dagger: arms tied with it (`tied_with_best`: their paired interval against
    it includes 0), so a box won by a lead the seeds cannot resolve reads as a tie; missing cells say so."""
    arms = _arm_order(summary) + _scratch_arms(summary)
    cols = list(summary.drop_duplicates("n_label").sort_values("n")["n_label"])

    def grid_of(col: str, fill=np.nan) -> pd.DataFrame:
        if col not in summary:
            return pd.DataFrame(fill, index=arms, columns=cols)
        v = summary.assign(_v=summary[col].astype("float64"))
        return v.pivot_table(index="arm", columns="n_label", values="_v", aggfunc="max").reindex(index=arms,
                                                                                                 columns=cols)

    grid = grid_of("acc_mean")
    best = grid_of("is_best")
    if "is_best" not in summary:  # a summary without ties marked: the highest mean of the column
        best = grid.eq(grid.max()) & grid.notna()
    tied = grid_of("tied_with_best")
    text = np.array([[("" if pd.isna(v) else f"{v:.3f}" + ("†" if tied.iloc[i, j] == 1 else ""))
                      for j, v in enumerate(row)] for i, row in enumerate(grid.to_numpy())], dtype=object)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.8 + 1.0 * len(cols)), 2.0 + 0.5 * len(arms)))
    ax.set_facecolor("#eeeeee")
    sns.heatmap(grid, annot=text, fmt="", cmap="mako", ax=ax, cbar_kws={"label": f"test {metric} (mean)"},
                linewidths=0.5, linecolor="white")
    for j in range(len(cols)):
        for i in range(len(arms)):
            if pd.isna(grid.iloc[i, j]):
                ax.text(j + 0.5, i + 0.5, "missing", ha="center", va="center", fontsize=7, color="gray")
            elif best.iloc[i, j] == 1:
                ax.add_patch(plt.Rectangle((j + 0.03, i + 0.03), 0.94, 0.94, fill=False, edgecolor=HIGHLIGHT,
                                           linewidth=3))
            elif tied.iloc[i, j] == 1:
                ax.add_patch(plt.Rectangle((j + 0.08, i + 0.08), 0.84, 0.84, fill=False, edgecolor=HIGHLIGHT,
                                           linewidth=1.4, linestyle="--"))
    ax.set_xlabel(f"n per class\nsolid box: best mean in the column; dashed box and †: tied with it (paired "
                  f"{confidence:.0%} CI of the difference includes 0)", fontsize=9)
    ax.set_ylabel("")
    ax.set_title(title)
    return _save(fig, path)


def _panel_grid(k: int, ncols: int, w: float, h: float, **kw):
    """k panels in rows of at most `ncols`; unused cells hidden, and the panel above a hidden one shows the
    x tick labels the hidden one would have."""
    ncols = max(1, min(k, ncols))
    nrows = -(-k // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(w * ncols + 1.0, h * nrows + 0.9), squeeze=False, **kw)
    axes = list(grid.flat)
    for ax in axes[k:]:
        ax.set_visible(False)
    for idx in range(k):
        below = idx + ncols
        if below >= k:
            axes[idx].xaxis.set_tick_params(labelbottom=True)
    return fig, grid, axes[:k]


def gain_vs_n(gain: pd.DataFrame, path: Path, title: str, ok: pd.DataFrame | None = None,
              styles: dict[str, Style] | None = None, metric: str = "accuracy", confidence: float = 0.95) -> Path:
    """Transfer minus scratch (paired by seed, in percentage points) vs n, one panel per transfer arm: the seed
    pairs' differences (dots), their mean and t-interval (error bar; filled when the Holm-adjusted paired t-test
    against scratch is significant, open when not) and the zero line, which is scratch. Each panel has its own y
    scale: a shared one lets the worst arm flatten every other panel to a line at zero."""
    arms = _arm_order(gain)
    styles = styles or arm_styles(arms)
    fig, grid, axes = _panel_grid(len(arms), 3, 3.6, 2.8, sharex=True)
    _, step = _dodge(gain["n"], 1)
    for ax, arm in zip(axes, arms):
        g = gain[gain["arm"] == arm].sort_values("n")
        color, marker = styles.get(arm, (PALETTE[0], MARKERS[0]))
        ax.axhline(0, color=SCRATCH_COLOR, linestyle="--", linewidth=1)
        if ok is not None and not ok.empty:
            for _, r in g.iterrows():
                a = ok[ok["arm_key"] == r["arm_key"]]
                b = ok[(ok["line_key"] == r["baseline_key"]) & (ok["n_label"] == r["n_label"])]
                _dots(ax, float(r["n"]), 100 * paired_differences(a, b), step, color=color, marker=marker)
        sig = g["significant"].fillna(False).astype(bool) if "significant" in g else None
        _bars(ax, g["n"], 100 * g["gain_mean"], 100 * g["gain_ci_lo"], 100 * g["gain_ci_hi"], color=color,
              marker=marker, filled=sig)
        _n_axis(ax, g)
        ax.set_xlabel("")
        ax.set_title(arm, fontsize=10, color=color)
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel(f"{metric} minus scratch\n(percentage points)")
    fig.supxlabel("labelled target examples per class, n (log scale)", fontsize=10)
    handles = [Line2D([], [], color="gray", marker="o", linestyle="none", markersize=3.2, alpha=0.6,
                      label="one seed pair (same labelled subset)"),
               Line2D([], [], color="gray", marker="o", markersize=6, linestyle="-",
                      label=f"mean, {confidence:.0%} CI: Holm-adjusted p ≤ {1 - confidence:.2g} vs scratch"),
               Line2D([], [], color="gray", marker="o", markerfacecolor="white", markersize=6, linestyle="-",
                      label="mean, not significant"),
               Line2D([], [], color=SCRATCH_COLOR, linestyle="--", label="scratch (0)")]
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def crossover_plot(df_ok: pd.DataFrame, cx_row: pd.Series, path: Path, title: str, metric: str = "accuracy",
                   confidence: float = 0.95) -> Path:
    """Arm A minus arm B (paired by seed) vs n: single seeds thin, mean with its t-interval, zero line, and n*
    where A overtakes B with its bootstrap interval as a shaded span."""
    ft = df_ok[df_ok["arm"] == cx_row["finetuned_arm"]].groupby(["n", "n_label", *PAIR])["test_acc"].mean()
    fr = df_ok[df_ok["arm"] == cx_row["frozen_arm"]].groupby(["n", "n_label", *PAIR])["test_acc"].mean()
    d = (ft - fr).dropna().rename("diff").reset_index()
    rows = []
    for (n, lab), g in d.groupby(["n", "n_label"]):
        s = t_interval(g["diff"], confidence)
        rows.append({"n": n, "n_label": lab, "mean": s["mean"], "lo": s["ci_lo"], "hi": s["ci_hi"]})
    tab = pd.DataFrame(rows).sort_values("n")
    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    for _, g in d.groupby(PAIR):
        g = g.sort_values("n")
        ax.plot(g["n"], g["diff"], color=PALETTE[0], alpha=0.35, linewidth=0.8)
    ax.plot([], [], color=PALETTE[0], alpha=0.35, linewidth=0.8, label="single seeds")
    _bars(ax, tab["n"], tab["mean"], tab["lo"], tab["hi"], color=PALETTE[0], marker="o",
          label=f"{cx_row['finetuned_arm']} minus {cx_row['frozen_arm']}: mean, {confidence:.0%} CI")
    ax.axhline(0, color="black", linewidth=1)
    _n_axis(ax, tab)
    n, lo, hi = cx_row["n_star"], cx_row["n_star_lo"], cx_row["n_star_hi"]
    if not pd.isna(lo) and not pd.isna(n) and not math.isinf(n):
        right = hi if not math.isinf(hi) else float(tab["n"].max()) * 1.5
        if right > lo:
            ax.axvspan(lo, right, color=HIGHLIGHT, alpha=0.08, linewidth=0, label="n* bootstrap interval")
    _draw_crossovers(ax, cx_row.to_frame().T, color=HIGHLIGHT)
    ax.set_ylabel(f"difference in test {metric}\n(above 0: {cx_row['finetuned_arm']} ahead)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return _save(fig, path)


def yosinski(ytab: pd.DataFrame, base: pd.DataFrame, path: Path, title: str, metric: str = "accuracy",
             confidence: float = 0.95) -> Path:
    """Accuracy vs cut for AnB, AnB+, BnB, BnB+ (Yosinski et al. 2014, fig. 2), one panel per n, curves side by
    side at each cut with their t-intervals; base B (scratch on B) dashed, base A (scratch on A) dotted."""
    labels = list(ytab.drop_duplicates("n_label").sort_values("n")["n_label"])
    fig, grid, axes = _panel_grid(len(labels), 3, 5.0, 4.0, sharey=True)
    for ax, lab in zip(axes, labels):
        sub = ytab[ytab["n_label"] == lab]
        lines = sub.get("line", sub["yosinski"])
        curves_here = [(name, line) for name in YOSINSKI_STYLE
                       for line in sorted(set(lines[sub["yosinski"] == name]))]  # one per arm family, never pooled
        for i, (name, line) in enumerate(curves_here):
            color, ls, marker = YOSINSKI_STYLE[name]
            g = sub[lines == line].sort_values("cut")
            x = g["cut"].to_numpy(float) + (i - (len(curves_here) - 1) / 2) * 0.07
            _bars(ax, x, g["acc_mean"], g["acc_ci_lo"], g["acc_ci_hi"], color=color, marker=marker, ls=ls,
                  label=line)
        for name, ls in (("base B", "--"), ("base A", ":")):
            b = base[(base["n_label"] == lab) & (base.get("base", "base B") == name)]
            if len(b):
                ax.axhline(float(b["acc_mean"].iloc[0]), color="black", linestyle=ls,
                           label=f"{name} (scratch{' on A' if name == 'base A' else ''})")
        ax.set_xlabel("layers copied from the source (cut)")
        ax.set_xticks(sorted(sub["cut"].unique()))
        ax.set_title(f"n = {lab} per class")
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel(f"test {metric} (mean, {confidence:.0%} CI)")
    _legend_right(axes[-1])
    fig.suptitle(title)
    return _save(fig, path)


def learning_curves(df_ok: pd.DataFrame, path: Path, title: str, ncols: int = 4,
                    styles: dict[str, Style] | None = None) -> Path:
    """Validation accuracy at each check (mean over seeds), transfer arms vs scratch, one panel per n: every n, in
    rows of `ncols` panels (none left out)."""
    long = curves(df_ok)
    ns = list(long.drop_duplicates("n_label").sort_values("n")["n_label"])
    arms = _arm_order(df_ok)
    scratch = _scratch_arms(df_ok)
    styles = styles or arm_styles(arms)
    fig, grid, axes = _panel_grid(len(ns), ncols, 3.6, 3.0, sharey=True)
    for ax, lab in zip(axes, ns):
        sub = long[long["n_label"] == lab]
        for arm in [*arms, *scratch]:
            g = sub[sub["arm"] == arm].groupby("epoch")["val_acc"].mean()
            if g.empty:
                continue
            color, marker, ls = _style_of(arm, styles, scratch)
            ax.plot(g.index, g.values, color=color, linestyle=ls, linewidth=1.4, label=arm,
                    marker=marker, markevery=max(1, len(g) // 6), markersize=4)
        ax.set_title(f"n = {lab} per class")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel("validation accuracy\n(mean over seeds)")
    _legend_right(axes[-1])
    fig.suptitle(title)
    return _save(fig, path)


# ---- learning-curve fits and effective data transferred (analysis.fits, analysis.effective_data) -------------

def fitted_curves(summary: pd.DataFrame, fits: dict, path: Path, title: str,
                  styles: dict[str, Style] | None = None, metric: str = "accuracy",
                  ylim: tuple[float, float] | None = None) -> Path:
    """Mean test metric per n (markers) and each arm's fitted learning curve (line, the form chosen by held-out
    error, drawn over the n range it was fitted on), scratch black."""
    fig, ax = plt.subplots(figsize=(9.6, 5.0))
    arms, scratch = _arm_order(summary), _scratch_arms(summary)
    styles = styles or arm_styles(arms)
    for arm in [*arms, *scratch]:
        g = summary[summary["arm"] == arm].sort_values("n")
        color, marker, ls = _style_of(arm, styles, scratch)
        fit = fits.get(g["line_key"].iloc[0])
        label = arm if fit is None or fit.form is None else f"{arm} ({fit.form})"
        ax.plot(g["n"], g["acc_mean"], linestyle="none", marker=marker, color=color, label=label)
        if fit is not None and fit.form is not None:
            grid = np.geomspace(fit.n_min, fit.n_max, 100)
            ax.plot(grid, fit.predict(grid), color=color, linestyle=ls, linewidth=1.3)
    return _finish_over_n(fig, ax, summary, path, title, f"test {metric} (mean over seeds)\nand fitted curve", ylim)


CENSORED = ("above", "above_asymptote", "below")
RANGE_PAD = 0.08  # share of the estimates' range left free above and below them on the effective-data axis


def effective_range(dt: pd.DataFrame) -> tuple[float, float, int, int]:
    """(lo, hi, ends clipped, ends in all) of the effective-data axis: the range of what is estimated (the values,
    the censored bounds and 0, the no-transfer line), padded by RANGE_PAD. A linear axis over it reads directly in
    examples per class; bootstrap interval ends beyond it (a wide or one-sided interval, often infinite where
    censored) are cut at the axis edge and counted, so the caption can say what was clipped."""
    flag = dt["censored"].fillna("")
    shown = pd.concat([dt.loc[flag == "", "d_t"], dt.loc[flag.isin(CENSORED), "d_t_bound"], pd.Series([0.0])])
    shown = shown[np.isfinite(shown.astype(float))]
    lo, hi = float(shown.min()), float(shown.max())
    pad = RANGE_PAD * max(hi - lo, 1.0)
    lo, hi = lo - pad, hi + pad
    ends = pd.concat([dt.loc[(flag == "") & dt["d_t"].notna(), c] for c in ("d_t_lo", "d_t_hi")]).dropna()
    return lo, hi, int(((ends < lo) | (ends > hi)).sum()), int(len(ends))


def effective_data(dt: pd.DataFrame, path: Path, title: str, styles: dict[str, Style] | None = None) -> Path:
    """Effective data transferred D_T (examples per class) vs n per transfer arm, side by side at each n, bootstrap
    interval as error bars; a censored value is drawn at its bound as an open triangle pointing the way the truth
    lies (up: more than this, down: less), never as a point. A linear axis over the estimates' range
    (`effective_range`), interval ends beyond it cut at the edge."""
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    y_lo, y_hi, _, _ = effective_range(dt)
    arms = _arm_order(dt.assign(is_scratch=False))
    styles = styles or arm_styles(arms)
    factors, _ = _dodge(dt["n"], len(arms))
    for i, arm in enumerate(arms):
        g = dt[dt["arm"] == arm].sort_values("n")
        color, marker = styles.get(arm, (PALETTE[0], MARKERS[0]))
        val = g[g["censored"].fillna("") == ""]
        if len(val):
            lo = (val["d_t"] - val["d_t_lo"].clip(lower=y_lo)).clip(lower=0)
            hi = (val["d_t_hi"].clip(upper=y_hi) - val["d_t"]).clip(lower=0)
            ax.errorbar(val["n"] * factors[i], val["d_t"], yerr=[lo.fillna(0), hi.fillna(0)],
                        color=color, marker=marker, capsize=3, linestyle="-", linewidth=1.2)
        for flag, tri in (("above", "^"), ("above_asymptote", "^"), ("below", "v")):
            c = g[g["censored"] == flag]
            if len(c):
                ax.plot(c["n"] * factors[i], c["d_t_bound"], linestyle="none", marker=tri, markerfacecolor="none",
                        markeredgewidth=1.5, color=color, markersize=9)
        ax.plot([], [], color=color, marker=marker, label=arm)
    if (dt["censored"].isin(["above", "above_asymptote", "below"])).any():
        ax.plot([], [], linestyle="none", marker="^", markerfacecolor="none", color="gray",
                label="censored: beyond the bound\n(up: more, down: less)")
    ax.axhline(0, color="black", linestyle="--", linewidth=1, label="no transfer (D_T = 0)")
    _n_axis(ax, dt)
    ax.set_ylim(y_lo, y_hi)
    ax.set_ylabel("effective data transferred D_T\n(examples per class)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return _save(fig, path)


_tags = setting_tags


def draw_all(ok: pd.DataFrame, summary: pd.DataFrame, gain: pd.DataFrame, cx: pd.DataFrame, ytab: pd.DataFrame,
             out_dir: Path, metric: str = "accuracy", confidence: float = 0.95,
             ylim: tuple[float, float] | None = None) -> list[tuple[str, Path, str]]:
    """Every figure the data supports, per setting (`setting_key`): [(title, png path, caption)], each also as PDF.

    A figure is skipped, not faked, when its inputs are absent (no scratch -> no gain plot, no freeze=0 and
    frozen pair -> no crossover, no upper=reinit cut sweep -> no Yosinski figure)."""
    out: list[tuple[str, Path, str]] = []
    settings = summary.drop_duplicates("setting_key").sort_values("setting")
    tags = setting_tags(list(settings["setting"]))
    pct = f"{confidence:.0%}"
    for _, setting in settings.iterrows():
        key, where, target = setting["setting_key"], setting["setting"], setting["target"]
        tag = tags[where]
        sel = lambda d: d[d["setting_key"] == key] if len(d) else d  # noqa: E731
        s, g, c, y, o = sel(summary), sel(gain), sel(cx), sel(ytab), sel(ok)
        styles = arm_styles(_arm_order(s))
        # The n-axis figures need a single cut/upper family per line; Yosinski's cut sweep gets its own figure.
        if (~_scratch(s)).any():  # a base-only setting (e.g. Yosinski's base A) is a reference line
            out.append((f"Test {metric} vs n ({where})",
                        acc_vs_n(s, c, out_dir / f"report_acc_vs_n{tag}.png", f"{where}: {metric} vs labelled "
                                 "examples", ok=o, styles=styles, metric=metric, confidence=confidence, ylim=ylim),
                        f"Each arm side by side at every n: small dots are single seeds, the larger marker the mean "
                        f"with its {pct} t-interval over seeds. Scratch: black squares, dashed."
                        + majority_caption(s, ylim)
                        + (" Vertical lines: crossover n* of each pair (legend), where the first arm overtakes the "
                           "second for good." if len(c) else "")))
            out.append((f"Heatmap arm x n ({where})",
                        heatmap(s, out_dir / f"report_heatmap{tag}.png", f"Mean test {metric} ({where})",
                                metric=metric, confidence=confidence),
                        f"Mean test {metric} per arm and n. Solid box: the best arm of the column (best.csv); "
                        f"dashed box and †: tied with it (paired {pct} interval of the difference includes 0); "
                        "grey: missing."))
        shown = control_lines(s)
        if shown:
            out.append((f"Control arms vs n ({where})",
                        acc_vs_n(s[s["arm"].isin(shown)], None, out_dir / f"report_controls{tag}.png",
                                 f"{where}: transferred weights vs control arms", ok=o, styles=styles, metric=metric,
                                 confidence=confidence, ylim=ylim),
                        "Does the gain come from the source's features? Each transferred depth beside its control "
                        "at the same depth: meanvar (random weights with each tensor's mean and variance from the "
                        "source: Raghu et al. 2019) and random_frozen (the random init, frozen: Yosinski et al. "
                        "2014); scratch_long: scratch trained for the source pretraining's steps as well (He et al. "
                        f"2019); scratch black, dashed. Dots: seeds; bars: mean and {pct} t-interval."))
        if len(g):
            out.append((f"Gain over scratch ({where})",
                        gain_vs_n(g, out_dir / f"report_gain_vs_n{tag}.png", f"Transfer gain over scratch ({where})",
                                  ok=o, styles=styles, metric=metric, confidence=confidence),
                        f"One panel per transfer arm: its {metric} minus scratch's, paired by seed (same labelled "
                        f"subset), in percentage points; each panel has its own y scale. Dots: seed pairs; marker "
                        f"and bar: mean and {pct} t-interval, filled when the Holm-adjusted paired t-test against "
                        "scratch is significant. Dashed zero line: scratch."))
        for i, (_, r) in enumerate(c.iterrows()):
            if r["n_seeds"] == 0 or o["n"].nunique() < 2:
                continue
            suffix = tag + ("" if len(c) == 1 else f"_{i}")
            out.append((f"Crossover n*: {r['finetuned_arm']} vs {r['frozen_arm']} ({where})",
                        crossover_plot(o, r, out_dir / f"report_crossover{suffix}.png",
                                       f"{r['finetuned_arm']} vs {r['frozen_arm']} ({where})", metric=metric,
                                       confidence=confidence),
                        f"Paired difference {r['finetuned_arm']} minus {r['frozen_arm']} (above zero the first "
                        "is ahead); thin lines: single seeds; n* with its bootstrap interval"
                        + (" (requested with --crossover)." if r.get("requested") else ".")))
        if len(y) and y["cut"].nunique() > 1:
            scratch_b = _scratch_arms(s)
            base = s[s["arm"] == scratch_b[0]].assign(base="base B") if len(scratch_b) == 1 else s.iloc[:0]
            sources = set(o.loc[~o["is_scratch"] & (o["source"] != target), "source"])  # A of AnB: its own base
            # base A: scratch on the source task in this setting's context (all else equal but the target)
            base_a = summary[_scratch(summary) & summary["target"].isin(sources)
                             & (summary["context_key"] == setting["context_key"])]
            one_a = base_a["line_key"].nunique() == 1  # several candidate lines: none drawn rather than pooled
            base_a = base_a.assign(base="base A") if one_a else base_a.iloc[:0]
            out.append((f"Yosinski figure ({where})", yosinski(y, pd.concat([base, base_a]),
                                                               out_dir / f"report_yosinski{tag}.png",
                                                               f"Transferability by layer ({where})",
                                                               metric=metric, confidence=confidence),
                        "AnB: A's first layers frozen, rest retrained on B; BnB: same with B's own layers "
                        "(selffer); +: fine-tuned instead of frozen; dashed: base B trained from scratch "
                        "(dotted: base A, scratch on the source task, when the sweep has it)."))
        if len(o) and (o["is_scratch"]).any() and o["val_acc_history"].map(len).ge(2).any():  # a curve, not a dot
            n_panels = o["n_label"].nunique()
            out.append((f"Learning curves ({where})",
                        learning_curves(o, out_dir / f"report_learning_curves{tag}.png", f"Learning curves ({where})",
                                        styles=styles),
                        f"Validation accuracy per epoch, mean over seeds, one panel per n (all {n_panels}); "
                        "scratch dashed."))
    return out


def draw_fields(summary: pd.DataFrame, fits: dict, dt: pd.DataFrame, out_dir: Path,
                metric: str = "accuracy", ylim: tuple[float, float] | None = None) -> list[tuple[str, Path, str]]:
    """The fitted learning curves and the effective-data figure of every setting that has them."""
    out: list[tuple[str, Path, str]] = []
    settings = summary.drop_duplicates("setting_key").sort_values("setting")
    tags = setting_tags(list(settings["setting"]))
    for _, setting in settings.iterrows():
        key, where = setting["setting_key"], setting["setting"]
        s = summary[summary["setting_key"] == key]
        styles = arm_styles(_arm_order(s))
        if any(fits.get(lk) is not None and fits[lk].form for lk in s["line_key"].unique()):
            out.append((f"Learning-curve fits ({where})",
                        fitted_curves(s, fits, out_dir / f"report_fits{tags[where]}.png", f"Fitted curves ({where})",
                                      styles=styles, metric=metric, ylim=ylim),
                        f"Markers: mean test {metric} over seeds; lines: each arm's fitted curve (form in the "
                        "legend, chosen by the error predicting the largest n; fits.csv), drawn over the n range it "
                        "saw." + majority_caption(s, ylim)))
        d = dt[dt["setting_key"] == key] if len(dt) else dt
        if len(d) and ((d["censored"].fillna("") == "") & d["d_t"].notna()
                       | d["censored"].fillna("").isin(CENSORED)).any():  # a value or a bound: something to draw
            _, _, clipped, ends = effective_range(d)
            cut = (f" The axis spans the estimates and bounds; {clipped} of {ends} interval ends lie beyond it and "
                   "are cut at its edge (effective_data.csv has them)." if clipped else "")
            out.append((f"Effective data transferred ({where})",
                        effective_data(d, out_dir / f"report_effective_data{tags[where]}.png",
                                       f"Effective data transferred ({where})", styles=styles),
                        "D_T: extra labelled examples per class training from scratch would need to match the arm "
                        "(Hernandez et al. 2021), bootstrap CI over seeds; open triangles: censored, the truth "
                        "lies beyond the bound in the direction shown (effective_data.csv)." + cut))
    return out
