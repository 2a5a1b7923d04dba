"""Every recorded test metric in summary.csv, beside the one the report leads with, and the majority-class
baseline it is read against.

The statistics (ties, tests, fits, n*) are computed from one metric (`lead_metric`), so `acc_*` holds that one.
A reader still wants the others next to it, because on an imbalanced test split they disagree: this module adds,
per arm and n, the mean and t-interval over seeds of accuracy (only when it is not the lead metric), balanced
accuracy, macro-F1 and (binary tasks) AUROC, from the runs' recorded values, plus

- `majority_acc`: accuracy of always predicting the test split's largest class (the floor accuracy is read
  against; a model that collapsed to one class scores it);
- `majority_baseline`: what that same constant predictor scores on the lead metric: with k classes and the
  largest class's share p, accuracy p; balanced accuracy 1/k (its recall is 1 on one class, 0 on the others);
  macro-F1 2p/(1+p)/k (F1 of the predicted class, 0 for the others); AUROC 0.5 (a constant score ranks nothing).

These come from each run's recorded test class counts; runs recorded before them leave the columns empty.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from transferlab.analysis.stats import t_interval
from transferlab.run.record import RunRecord

METRICS = {"accuracy": "test_acc", "balanced_acc": "test_balanced_acc", "macro_f1": "test_macro_f1",
           "auroc": "test_auroc"}


def majority_scores(class_counts: list[int] | None) -> dict[str, float]:
    """What always predicting the largest class scores on each metric, from the test split's class counts
    (NaN without counts)."""
    counts = [c for c in (class_counts or []) if c]
    if not counts:
        return {m: math.nan for m in ("acc", "balanced_acc", "macro_f1", "auroc")}
    k, p = len(counts), max(counts) / sum(counts)
    return {"acc": p, "balanced_acc": 1 / k, "macro_f1": 2 * p / (1 + p) / k, "auroc": 0.5}


def add(summary: pd.DataFrame, runs: pd.DataFrame, records: Mapping[str, RunRecord], metric: str = "acc",
        confidence: float = 0.95) -> pd.DataFrame:
    """`summary` with `<metric>_mean/_ci_lo/_ci_hi` for every recorded metric but the lead one, `majority_acc`
    and `majority_baseline` (both means over the arm's runs: one test split, so equal in each of them).
    `runs` are the collected rows with the recorded metrics (before `lead_metric.lead` swapped one in)."""
    if summary.empty:
        return summary
    ok = runs[(runs["status"] == "ok")]
    base = {d: majority_scores(r.metrics.test_class_counts) for d, r in records.items()}
    cols: dict[str, list] = {}
    wanted = {name: col for name, col in METRICS.items() if col in ok and ok[col].notna().any()
              and not (name == "accuracy" and metric == "acc") and name != metric}
    by_arm = {k: g for k, g in ok.groupby("arm_key", sort=False)}
    for _, s in summary.iterrows():
        g = by_arm.get(s["arm_key"], ok.iloc[:0])
        for name, col in wanted.items():
            t = t_interval(g[col], confidence)
            lo, hi = (np.clip([t["ci_lo"], t["ci_hi"]], 0.0, 1.0) if t["n"] > 1 else (math.nan, math.nan))
            cols.setdefault(f"{name}_mean", []).append(t["mean"])
            cols.setdefault(f"{name}_ci_lo", []).append(float(lo))
            cols.setdefault(f"{name}_ci_hi", []).append(float(hi))
        scores = [base[d] for d in g["run_dir"] if d in base]
        cols.setdefault("majority_acc", []).append(_mean(s["acc"] for s in scores))
        cols.setdefault("majority_baseline", []).append(_mean(s[metric] for s in scores))
    return summary.assign(**cols)


def _mean(values) -> float:
    v = [x for x in values if not pd.isna(x)]
    return float(np.mean(v)) if v else math.nan
