"""The answer in one paragraph per setting: what a reader of the report came for, before any figure.

It says, from the tables the report already computed (nothing is recomputed here): the best arm at every n with
the arms tied with it (scratch included, so "transfer does not help here" is an answer too), the best transfer
arm's paired gain over scratch with its interval, every crossover n* (censored ones as bounds), and the effective
data transferred at the smallest n. Ties and intervals are the report's (`paired`, `stats`): a tie is "the seeds
cannot tell these apart", not "equal".
"""

from __future__ import annotations

import pandas as pd

from transferlab.analysis.effective_data import d_t_sentence
from transferlab.analysis.stats import format_n_star


def _pct(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{100 * v:.1f}%"


def _pt(mean, lo, hi) -> str:
    ci = "" if pd.isna(lo) or pd.isna(hi) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * mean:+.1f} pt{ci}"


def _best_part(b: pd.Series) -> str:
    tied = b.get("tied_with_best")
    tied = tied if isinstance(tied, str) and tied else ""
    return f"n={b['n_label']}: {b['best_arm']} {_pct(b['acc_mean'])}" + (f" (tied: {tied})" if tied else "")


def paragraphs(summary: pd.DataFrame, best: pd.DataFrame, gain: pd.DataFrame, crossovers: pd.DataFrame,
               effective: pd.DataFrame, metric_name: str = "accuracy",
               confidence: float = 0.95) -> list[tuple[str, str]]:
    """[(setting, paragraph)] for every setting with a transfer arm, in setting order."""
    out = []
    if best.empty:
        return out
    pct = f"{confidence:.0%}"
    for key, b in best.groupby("setting_key", sort=False):
        setting = b["setting"].iloc[0]
        s = summary[summary["setting_key"] == key]
        seeds = sorted({int(k) for k in s["n_seeds"].dropna()})
        parts = [f"Test {metric_name}, {'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])} per arm. "
                 "Best arm per n (highest mean, scratch included; tied: arms whose paired "
                 f"{pct} interval against it includes 0): "
                 + "; ".join(_best_part(r) for _, r in b.sort_values("n").iterrows()) + "."]
        g = gain[gain["setting_key"] == key] if len(gain) else gain
        if len(g):
            items = []
            transfer = s[~s["is_scratch"].astype(bool)]
            for n_label, t in transfer.groupby("n_label", sort=False):
                top = t.sort_values(["acc_mean", "arm"], ascending=[False, True]).iloc[0]
                row = g[g["arm_key"] == top["arm_key"]]
                if len(row):
                    r = row.iloc[0]
                    items.append((float(top["n"]), f"n={n_label}: {top['arm']} "
                                  + _pt(r["gain_mean"], r["gain_ci_lo"], r["gain_ci_hi"])))
            if items:
                parts.append(f"Best transfer arm minus scratch, paired by seed ({pct} interval): "
                             + "; ".join(text for _, text in sorted(items)) + ".")
        c = crossovers[crossovers["setting_key"] == key] if len(crossovers) else crossovers
        for _, r in c.iterrows():
            parts.append(f"Crossover: {r['finetuned_arm']} overtakes {r['frozen_arm']} at {format_n_star(r)}.")
        e = effective[effective["setting_key"] == key] if len(effective) else effective
        if len(e):  # only values and bounds: "no scratch fit" is no answer (effective_data.csv says why)
            flag = e["censored"].fillna("")
            e = e[flag.isin(["above", "above_asymptote", "below"]) | ((flag == "") & e["d_t"].notna())]
        if len(e):
            first = e[e["n"] == e["n"].min()].sort_values(["acc", "arm"], ascending=[False, True]).iloc[0]
            parts.append(f"Effective data transferred at the smallest n ({first['n_label']} per class), by "
                         f"{first['arm']}, the best transfer arm there: {d_t_sentence(first)}.")
        out.append((setting, " ".join(parts)))
    return out
