"""Which test metric the report leads with (`--metric`), and when accuracy alone misleads.

Every statistic of the report (summary, gain, ties and tests, n*, fits, effective data) is computed from one
column of the runs; `lead` puts the chosen metric there, so each of them is computed once, the same way, whatever
the metric. Accuracy is the default. On an imbalanced test split a model that predicts the largest class for every
example scores that class's share, so accuracy hides the collapse; balanced accuracy (mean per-class recall;
Brodersen et al. 2010, "The balanced accuracy and its posterior distribution", ICPR) scores it 1/k, and the report
suggests it when the largest class holds more than `IMBALANCED` of a setting's test split.
"""

from __future__ import annotations

import pandas as pd

from transferlab.errors import ConfigError, problem

COLUMNS = {"acc": "test_acc", "balanced_acc": "test_balanced_acc", "macro_f1": "test_macro_f1",
           "auroc": "test_auroc"}
NAMES = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1", "auroc": "AUROC"}
IMBALANCED = 0.6  # largest class's share of the test split above which accuracy is not the number to lead with


def lead(df: pd.DataFrame, metric: str = "acc") -> tuple[pd.DataFrame, list[str]]:
    """(the runs with `metric` in the column every statistic reads, `test_acc`; notes). The recorded accuracy
    stays in `test_accuracy`. Raises ConfigError for an unknown metric or one no ok run recorded."""
    if metric not in COLUMNS:
        raise ConfigError(problem("--metric", metric, "one of " + ", ".join(COLUMNS)))
    if metric == "acc" or df.empty:
        return df, []
    col = COLUMNS[metric]
    ok = df["status"] == "ok"
    if col not in df or df.loc[ok, col].isna().all():
        raise ConfigError(problem("--metric", metric, f"a metric the runs recorded: no ok run has {col} (runs "
                                                      "written before it was recorded; use --metric acc)"))
    lacking = int((ok & df[col].isna()).sum())
    notes = [f"the report leads with {NAMES[metric]} ({col}): every acc_* column, gain, test, n*, fit and effective-"
             "data value below is computed from it; results.csv keeps every metric"]
    if lacking:
        notes.append(f"{lacking} ok run{'s' * (lacking > 1)} did not record {col}: left out of the statistics")
    return df.assign(test_accuracy=df["test_acc"], test_acc=df[col]), notes


def imbalance_notes(df: pd.DataFrame, metric: str = "acc") -> list[str]:
    """One line per setting whose test split's largest class exceeds IMBALANCED, when the report leads with
    accuracy (needs the runs' `majority_acc`: the accuracy of always predicting the largest class)."""
    if metric != "acc" or "majority_acc" not in df or df.empty:
        return []
    out = []
    ok = df[(df["status"] == "ok") & df["majority_acc"].notna()]
    for setting, g in ok.groupby("setting", sort=True):
        share = float(g["majority_acc"].max())
        if share > IMBALANCED:
            out.append(f"{setting}: the largest class is {share:.0%} of the test split, so a model that always "
                       f"predicts it has accuracy {share:.3f}; read accuracy against that floor, or lead with "
                       "--metric balanced_acc")
    return out
