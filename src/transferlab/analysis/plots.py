"""The report's figures (PNG, Agg backend: no display, no network). Each function draws one figure and saves it.

Conventions shared by all figures: n is per-class and on a log axis; colour encodes freeze depth (light = few
frozen blocks, dark = many); scratch is always a black dashed line; bands are 95% t-intervals over seeds. Every
figure shows one setting (`collect`'s setting_key): runs that differ in anything but their arm are never drawn
in one panel, and scratch is found by the `is_scratch` column, never by its label.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from transferlab.analysis.collect import curves  # noqa: E402
from transferlab.analysis.stats import PAIR, t_interval  # noqa: E402
from transferlab.store.atomic import atomic_path  # noqa: E402

SCRATCH_STYLE = {"color": "black", "linestyle": "--", "marker": "s", "label": "scratch"}
YOSINSKI_STYLE = {"BnB": ("#1f4e9c", "-", "o"), "BnB+": ("#6fa8dc", "-", "^"),
                  "AnB": ("#c0392b", "-", "o"), "AnB+": ("#f08080", "-", "^")}
DPI = 110


def _scratch(d: pd.DataFrame) -> pd.Series:
    return d["is_scratch"].astype(bool) if "is_scratch" in d else pd.Series(False, index=d.index)


def _arm_order(arms: pd.DataFrame) -> list[str]:
    """Transfer arms sorted by freeze depth (then label), scratch excluded."""
    t = arms[~_scratch(arms)].drop_duplicates("arm")
    return list(t.sort_values(["freeze", "arm"], na_position="last")["arm"])


def _scratch_arms(d: pd.DataFrame) -> list[str]:
    """The scratch lines of one setting: one, unless they differ in a key (each its own line, never pooled)."""
    return sorted(d.loc[_scratch(d), "arm"].unique())


def _scratch_style(arm: str, i: int) -> dict:
    return {**SCRATCH_STYLE, "label": arm, "linestyle": ["--", ":", "-."][i % 3]}


def _colors(arms: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("viridis")
    k = max(len(arms) - 1, 1)
    return {a: cmap(0.9 * (1 - i / k)) for i, a in enumerate(arms)}


def _n_axis(ax, sub: pd.DataFrame) -> None:
    ticks = sub.drop_duplicates("n_label").sort_values("n")
    ax.set_xscale("log")
    ax.set_xticks(list(ticks["n"]))
    ax.set_xticklabels([lab if lab != "all" else f"all\n(~{n:.0f})" for lab, n in zip(ticks["n_label"], ticks["n"])])
    ax.minorticks_off()
    ax.set_xlabel("labelled target examples per class, n (log scale)")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _line(ax, g: pd.DataFrame, y: str, lo: str, hi: str, **style) -> None:
    g = g.sort_values("n")
    ax.plot(g["n"], g[y], **{"marker": "o", **style})
    band = g[g[lo].notna()]
    if len(band):
        ax.fill_between(band["n"], band[lo], band[hi], color=style.get("color"), alpha=0.1, linewidth=0)


def _draw_crossover(ax, cx: pd.DataFrame | None) -> None:
    if cx is None or cx.empty:
        return
    for _, r in cx.iterrows():
        n = r["n_star"]
        if pd.isna(n) or math.isinf(n):
            continue
        lo, hi = r["n_star_lo"], r["n_star_hi"] if not math.isinf(r["n_star_hi"]) else ax.get_xlim()[1]
        ax.axvspan(lo, hi, color="tab:red", alpha=0.08, linewidth=0)
        ax.axvline(n, color="tab:red", linestyle=":", linewidth=1.5)
        text = f"n* ≤ {n:g}" if n == r["n_min"] else f"n* = {n:.3g}"  # censored: ahead from the first n on
        ax.annotate(text, xy=(n, 0.02), xycoords=("data", "axes fraction"), color="tab:red",
                    ha="left", fontsize=9, xytext=(3, 0), textcoords="offset points")


def acc_vs_n(summary: pd.DataFrame, cx: pd.DataFrame | None, path: Path, title: str) -> Path:
    """Test accuracy vs n: one line + CI band per freeze depth, scratch dashed, crossover n* with its interval."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    arms = _arm_order(summary)
    colors = _colors(arms)
    for arm in arms:
        _line(ax, summary[summary["arm"] == arm], "acc_mean", "acc_ci_lo", "acc_ci_hi", color=colors[arm], label=arm)
    for i, arm in enumerate(_scratch_arms(summary)):
        _line(ax, summary[summary["arm"] == arm], "acc_mean", "acc_ci_lo", "acc_ci_hi", **_scratch_style(arm, i))
    _n_axis(ax, summary)
    _draw_crossover(ax, cx)
    ax.set_ylabel("test accuracy (mean over seeds, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def heatmap(summary: pd.DataFrame, path: Path, title: str) -> Path:
    """Mean test accuracy, arm (freeze depth) x n; the best cell of every column is boxed; missing cells hatched."""
    arms = _arm_order(summary) + _scratch_arms(summary)
    cols = list(summary.drop_duplicates("n_label").sort_values("n")["n_label"])
    grid = summary.pivot_table(index="arm", columns="n_label", values="acc_mean", aggfunc="mean")
    grid = grid.reindex(index=arms, columns=cols)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 0.9 * len(cols)), 1.5 + 0.5 * len(arms)))
    ax.set_facecolor("#eeeeee")
    sns.heatmap(grid, annot=True, fmt=".3f", cmap="mako", ax=ax, cbar_kws={"label": "test accuracy"},
                linewidths=0.5, linecolor="white")
    for j, c in enumerate(cols):
        col = grid[c]
        if col.notna().any():
            i = arms.index(col.idxmax())
            ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="tab:red", linewidth=2.5))
        for i, v in enumerate(col):
            if pd.isna(v):
                ax.text(j + 0.5, i + 0.5, "missing", ha="center", va="center", fontsize=7, color="gray")
    ax.set_xlabel("n per class (red box: best in column)")
    ax.set_ylabel("")
    ax.set_title(title)
    return _save(fig, path)


def gain_vs_n(gain: pd.DataFrame, path: Path, title: str) -> Path:
    """Transfer minus scratch test accuracy (paired by seed) vs n, one line + CI band per depth."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    arms = _arm_order(gain)
    colors = _colors(arms)
    for arm in arms:
        _line(ax, gain[gain["arm"] == arm], "gain_mean", "gain_ci_lo", "gain_ci_hi", color=colors[arm], label=arm)
    ax.axhline(0, color="black", linestyle="--", linewidth=1, label="scratch (0)")
    _n_axis(ax, gain)
    ax.set_ylabel("test accuracy minus scratch (95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def crossover_plot(df_ok: pd.DataFrame, cx_row: pd.Series, path: Path, title: str) -> Path:
    """Fine-tuned minus frozen accuracy vs n (paired by seed, 95% CI), zero line, n* and its bootstrap interval."""
    ft = df_ok[df_ok["arm"] == cx_row["finetuned_arm"]].groupby(["n", "n_label", *PAIR])["test_acc"].mean()
    fr = df_ok[df_ok["arm"] == cx_row["frozen_arm"]].groupby(["n", "n_label", *PAIR])["test_acc"].mean()
    d = (ft - fr).dropna().rename("diff").reset_index()
    rows = []
    for (n, lab), g in d.groupby(["n", "n_label"]):
        s = t_interval(g["diff"])
        rows.append({"n": n, "n_label": lab, "mean": s["mean"], "lo": s["ci_lo"], "hi": s["ci_hi"]})
    tab = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _line(ax, tab, "mean", "lo", "hi", color="tab:purple",
          label=f"{cx_row['finetuned_arm']} minus {cx_row['frozen_arm']}")
    for _, g in d.groupby(PAIR):
        ax.plot(g["n"], g["diff"], color="tab:purple", alpha=0.25, linewidth=0.8)
    ax.axhline(0, color="black", linewidth=1)
    _n_axis(ax, tab)
    _draw_crossover(ax, cx_row.to_frame().T)
    ax.set_ylabel("accuracy difference (thin: single seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def yosinski(ytab: pd.DataFrame, base: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy vs cut for AnB, AnB+, BnB, BnB+ (Yosinski et al. 2014, fig. 2), one panel per n; base = scratch."""
    labels = list(ytab.drop_duplicates("n_label").sort_values("n")["n_label"])
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4.2), squeeze=False, sharey=True)
    for ax, lab in zip(axes[0], labels):
        sub = ytab[ytab["n_label"] == lab]
        lines = sub.get("line", sub["yosinski"])
        for name, (color, ls, marker) in YOSINSKI_STYLE.items():
            for line in sorted(set(lines[sub["yosinski"] == name])):  # one curve per arm family, never pooled
                g = sub[lines == line].sort_values("cut")
                ax.plot(g["cut"], g["acc_mean"], color=color, linestyle=ls, marker=marker, label=line)
                band = g[g["acc_ci_lo"].notna()]
                ax.fill_between(band["cut"], band["acc_ci_lo"], band["acc_ci_hi"], color=color, alpha=0.12,
                                linewidth=0)
        for name, ls in (("base B", "--"), ("base A", ":")):
            b = base[(base["n_label"] == lab) & (base.get("base", "base B") == name)]
            if len(b):
                ax.axhline(float(b["acc_mean"].iloc[0]), color="black", linestyle=ls,
                           label=f"{name} (scratch{' on A' if name == 'base A' else ''})")
        ax.set_xlabel("layers copied from the source (cut)")
        ax.set_xticks(sorted(sub["cut"].unique()))
        ax.set_title(f"n = {lab} per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean, 95% CI)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def learning_curves(df_ok: pd.DataFrame, path: Path, title: str, max_panels: int = 4) -> Path:
    """Validation accuracy per epoch (mean over seeds), transfer arms vs scratch, one panel per n."""
    long = curves(df_ok)
    ns = list(long.drop_duplicates("n_label").sort_values("n")["n_label"])
    if len(ns) > max_panels:  # smallest, largest and evenly spaced ones between
        idx = np.unique(np.linspace(0, len(ns) - 1, max_panels).round().astype(int))
        ns = [ns[i] for i in idx]
    arms = _arm_order(df_ok)
    scratch = _scratch_arms(df_ok)
    colors = _colors(arms)
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.8), squeeze=False, sharey=True)
    for ax, lab in zip(axes[0], ns):
        sub = long[long["n_label"] == lab]
        for arm in [*arms, *scratch]:
            g = sub[sub["arm"] == arm].groupby("epoch")["val_acc"].mean()
            if g.empty:
                continue
            style = (_scratch_style(arm, scratch.index(arm)) if arm in scratch
                     else {"color": colors[arm], "label": arm, "marker": "."})
            ax.plot(g.index, g.values, **{**style, "marker": None})
        ax.set_title(f"n = {lab} per class")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (mean over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def _tags(labels: list[str]) -> dict[str, str]:
    """File-name suffix per setting label ("" when there is one setting), unique and file-system safe."""
    if len(labels) == 1:
        return {labels[0]: ""}
    out: dict[str, str] = {}
    for label in labels:
        tag = "_" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")
        out[label] = tag if tag not in out.values() else f"{tag}_{len(out)}"
    return out


def draw_all(ok: pd.DataFrame, summary: pd.DataFrame, gain: pd.DataFrame, cx: pd.DataFrame, ytab: pd.DataFrame,
             out_dir: Path) -> list[tuple[str, Path, str]]:
    """Every figure the data supports, per setting (`setting_key`): [(title, path, caption)].

    A figure is skipped, not faked, when its inputs are absent (no scratch -> no gain plot, no freeze=0 and
    frozen pair -> no crossover, no upper=reinit cut sweep -> no Yosinski figure)."""
    out: list[tuple[str, Path, str]] = []
    settings = summary.drop_duplicates("setting_key").sort_values("setting")
    tags = _tags(list(settings["setting"]))
    for _, setting in settings.iterrows():
        key, where, target = setting["setting_key"], setting["setting"], setting["target"]
        tag = tags[where]
        sel = lambda d: d[d["setting_key"] == key] if len(d) else d  # noqa: E731
        s, g, c, y, o = sel(summary), sel(gain), sel(cx), sel(ytab), sel(ok)
        # The n-axis figures need a single cut/upper family per line; Yosinski's cut sweep gets its own figure.
        if (~_scratch(s)).any():  # a base-only setting (e.g. Yosinski's base A) is a reference line
            out.append((f"Test accuracy vs n ({where})", acc_vs_n(s, c, out_dir / f"report_acc_vs_n{tag}.png",
                        f"{where}: accuracy vs labelled examples"),
                        "One line per freeze depth (95% CI band over seeds), scratch dashed; red dotted line and "
                        "band: crossover n* where fine-tuning overtakes the frozen model, with its bootstrap CI."))
            out.append((f"Heatmap freeze depth x n ({where})", heatmap(s, out_dir / f"report_heatmap{tag}.png",
                        f"Mean test accuracy ({where})"),
                        "Mean test accuracy per arm and n; red box = best arm for that n; grey = missing."))
        if len(g):
            out.append((f"Gain over scratch ({where})", gain_vs_n(g, out_dir / f"report_gain_vs_n{tag}.png",
                        f"Transfer gain over scratch ({where})"),
                        "Transfer minus scratch test accuracy, paired by seed (same target subset), 95% CI."))
        for i, (_, r) in enumerate(c.iterrows()):
            if r["n_seeds"] == 0 or o["n"].nunique() < 2:
                continue
            suffix = tag + ("" if len(c) == 1 else f"_{i}")
            out.append((f"Crossover n* ({where})", crossover_plot(o, r, out_dir / f"report_crossover{suffix}.png",
                        f"{r['finetuned_arm']} vs {r['frozen_arm']} ({where})"),
                        "Paired difference fine-tuned minus frozen; above zero fine-tuning wins."))
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
                        f"Transferability by layer ({where})"),
                        "AnB: A's first layers frozen, rest retrained on B; BnB: same with B's own layers "
                        "(selffer); +: fine-tuned instead of frozen; dashed: base B trained from scratch "
                        "(dotted: base A, scratch on the source task, when the sweep has it)."))
        if len(o) and (o["is_scratch"]).any() and o["val_acc_history"].map(len).ge(2).any():  # a curve, not a dot
            out.append((f"Learning curves ({where})", learning_curves(o, out_dir / f"report_learning_curves{tag}.png",
                        f"Learning curves ({where})"),
                        "Validation accuracy per epoch, mean over seeds; scratch dashed."))
    return out


# ---- learning-curve fits and effective data transferred (analysis.fits, analysis.effective_data) -------------

def fitted_curves(summary: pd.DataFrame, fits: dict, path: Path, title: str) -> Path:
    """Mean test accuracy per n (dots) and each arm's fitted learning curve (line, the form chosen by held-out
    error, drawn over the n range it was fitted on), scratch black."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    arms = _arm_order(summary)
    colors = _colors(arms)
    scratch = _scratch_arms(summary)
    for arm in [*arms, *scratch]:
        g = summary[summary["arm"] == arm].sort_values("n")
        color = "black" if arm in scratch else colors[arm]
        fit = fits.get(g["line_key"].iloc[0])
        label = arm if fit is None or fit.form is None else f"{arm} ({fit.form})"
        ax.plot(g["n"], g["acc_mean"], "o", color=color, label=label)
        if fit is not None and fit.form is not None:
            grid = np.geomspace(fit.n_min, fit.n_max, 100)
            ax.plot(grid, fit.predict(grid), color=color, linestyle="--" if arm in scratch else "-")
    _n_axis(ax, summary)
    ax.set_ylabel("test accuracy (mean over seeds) and fitted curve")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def effective_data(dt: pd.DataFrame, path: Path, title: str) -> Path:
    """Effective data transferred D_T (examples per class) vs n per transfer arm, bootstrap interval as error
    bars; a censored value is drawn at its bound as an open triangle pointing the way the truth lies (up: more
    than this, down: less), never as a point."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    arms = _arm_order(dt.assign(is_scratch=False))
    colors = _colors(arms)
    for arm in arms:
        g = dt[dt["arm"] == arm].sort_values("n")
        val = g[g["censored"] == ""]
        if len(val):
            lo = (val["d_t"] - val["d_t_lo"].clip(lower=-1e12)).clip(lower=0)
            hi = (val["d_t_hi"].clip(upper=1e12) - val["d_t"]).clip(lower=0)
            ax.errorbar(val["n"], val["d_t"], yerr=[lo.where(np.isfinite(val["d_t_lo"]), 0),
                                                    hi.where(np.isfinite(val["d_t_hi"]), 0)],
                        color=colors[arm], marker="o", capsize=3, label=arm)
        for flag, marker in (("above", "^"), ("above_asymptote", "^"), ("below", "v")):
            c = g[g["censored"] == flag]
            if len(c):
                ax.plot(c["n"], c["d_t_bound"], linestyle="none", marker=marker, markerfacecolor="none",
                        color=colors[arm], markersize=9, label=None if len(val) else arm)
    if (dt["censored"].isin(["above", "above_asymptote", "below"])).any():
        ax.plot([], [], linestyle="none", marker="^", markerfacecolor="none", color="gray",
                label="censored: beyond the bound (up: more, down: less)")
    ax.axhline(0, color="black", linestyle="--", linewidth=1, label="no transfer (D_T = 0)")
    _n_axis(ax, dt)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("effective data transferred D_T (examples per class)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_fields(summary: pd.DataFrame, fits: dict, dt: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path, str]]:
    """The fitted learning curves and the effective-data figure of every setting that has them."""
    out: list[tuple[str, Path, str]] = []
    settings = summary.drop_duplicates("setting_key").sort_values("setting")
    tags = _tags(list(settings["setting"]))
    for _, setting in settings.iterrows():
        key, where = setting["setting_key"], setting["setting"]
        s = summary[summary["setting_key"] == key]
        if any(fits.get(lk) is not None and fits[lk].form for lk in s["line_key"].unique()):
            out.append((f"Learning-curve fits ({where})",
                        fitted_curves(s, fits, out_dir / f"report_fits{tags[where]}.png", f"Fitted curves ({where})"),
                        "Dots: mean test accuracy over seeds; lines: each arm's fitted curve (form in the legend, "
                        "chosen by the error predicting the largest n; fits.csv), drawn over the n range it saw."))
        d = dt[dt["setting_key"] == key] if len(dt) else dt
        if len(d) and d["censored"].isin(["", "above", "above_asymptote", "below"]).any():
            out.append((f"Effective data transferred ({where})",
                        effective_data(d, out_dir / f"report_effective_data{tags[where]}.png",
                                       f"Effective data transferred ({where})"),
                        "D_T: extra labelled examples per class training from scratch would need to match the arm "
                        "(Hernandez et al. 2021), bootstrap CI over seeds; open triangles: censored, the truth "
                        "lies beyond the bound in the direction shown (effective_data.csv)."))
    return out
