"""What selection costs: each arm's test score under an honest protocol, under the large-validation-set choice, and
for the best candidate in hindsight (the oracle), per n: `selection.csv` and one figure per setting.

Why: at small n the model is often chosen with far more labels than n (FEWTRANS, arXiv 2603.00478: the
validation-set illusion), and per-task tuning on labels outside the budget drives many reported few-shot gains
(HOSO, arXiv 2603.04341). A reader who sees, for each arm and n, the honest number beside the large-val number and
the oracle sees how much of an arm's lead came from its selection.

The three numbers, for one arm at one n and one (seed, data seed) pair:

- **honest**: a run whose `labels_used` counts only the n labelled examples (run/labels.py): `val_in_budget`, `cv`,
  or an untuned `last` / `fixed_epoch`. Which protocols are honest is read from the records, never from a list of
  names here: a run is honest when its labels_used is at most the labelled subset the large-val run trained on
  (its `n_train`, the same draw). A new protocol that records labels_used needs no change in this module.
- **large_val**: the run of `train.select=best_val` (`LARGE_VAL`): epoch and candidate chosen on the task's
  validation split, labels the x axis does not show.
- **oracle**: the highest test score among every model trained for those two runs: each run's tested model and,
  for a tuned run, each candidate's kept model tested once after the choice (`hindsight_test`,
  run/hindsight.py). By construction it is at least both of the others. It is over the tuned values only; each
  candidate's epoch is the one its protocol kept (epochs are not searched in hindsight). Without hindsight numbers
  in either run (untuned runs, or records of schema < 7) it is empty. A candidate whose hindsight test raised (its
  error is in the record) is missing from it, so that pair's oracle is only a lower bound: `oracle_lower_bound`
  counts those pairs, and the notes line says so.

Pairing: the runs compared are the same arm at the same n (the same identity but for the seeds and the protocol
keys, `identity.PROTOCOL`) and the same seed and data seed (`stats.PAIR`: the same labelled subset). Every mean
is over those pairs with its Student-t interval (`stats.t_interval`, as in summary.csv; accuracies clipped to
[0, 1]), and every gap is the mean of the per-pair differences with its interval (as in paired_tests.csv):
`large_val_minus_honest` (what the validation labels outside the budget bought), `oracle_minus_large_val` (what
even the large validation set left on the table) and `oracle_minus_honest` (the whole cost of choosing honestly).
`rank_*` rank the arms of one setting at one n by each mean (1: best), and `lead_honest` / `lead_large_val` are
an arm's mean minus the best other arm's under that protocol (positive: it leads by that much; a difference of
means: the paired tests of each protocol's arms are in paired_tests.csv), so a lead that only the large-val choice
gives shows as a rank that changes and a lead that shrinks. `same_choice` is the share of pairs in which both runs
were tuned and chose the same values.

Rows exist only where a sweep has both an honest and a large-val run of an arm at some n; a sweep without them has
no selection.csv and no figure. Get them by sweeping the protocol: `-m ... train.select=best_val,val_in_budget
tune.train.lr=[...]` (docs/report.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlab.analysis.stats import PAIR, ok_rows, t_interval
from transferlab.run import identity
from transferlab.run.record import RunRecord

LARGE_VAL = "best_val"  # the protocol that chooses on the task's validation split (labels outside n)
HINDSIGHT = "hindsight_test"  # a candidate's test numbers after the choice (run/hindsight.py)
GAPS = {"large_val_minus_honest": ("large_val", "honest"), "oracle_minus_large_val": ("oracle", "large_val"),
        "oracle_minus_honest": ("oracle", "honest")}
COLUMNS = ["setting", "arm", "arm_name", "n_label", "n", "honest", "large_val", "n_pairs", "labels_honest",
           "labels_large_val",
           *[f"{p}_{s}" for p in ("honest", "large_val", "oracle") for s in ("mean", "ci_lo", "ci_hi")],
           "oracle_pairs", "oracle_lower_bound",
           *[f"{g}_{s}" for g in GAPS for s in ("mean", "ci_lo", "ci_hi")],
           "same_choice", "rank_honest", "rank_large_val", "rank_oracle", "lead_honest", "lead_large_val",
           "setting_key", "selection_key", "honest_arm_key", "large_val_arm_key"]


def _oracle_of(record: RunRecord, metric: str) -> float:
    """The best hindsight test score among a tuned record's candidates on `test/<metric>`; NaN without any."""
    cands = (record.tuning or {}).get("candidates") if isinstance(record.tuning, Mapping) else None
    values = [c[HINDSIGHT].get(f"test/{metric}") for c in cands or []
              if isinstance(c, Mapping) and isinstance(c.get(HINDSIGHT), Mapping)]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(values) if values else math.nan


def _hindsight_failed(record: RunRecord) -> bool:
    """Did a candidate's hindsight test raise (run/hindsight.py records its error instead of numbers)?"""
    cands = (record.tuning or {}).get("candidates") if isinstance(record.tuning, Mapping) else None
    return any(isinstance(c, Mapping) and isinstance(c.get(HINDSIGHT), Mapping) and "error" in c[HINDSIGHT]
               for c in cands or [])


def _chosen(record: RunRecord) -> str | None:
    chosen = (record.tuning or {}).get("chosen") if isinstance(record.tuning, Mapping) else None
    return json.dumps(chosen, sort_keys=True) if chosen else None


def _rows(df: pd.DataFrame, records: Mapping[str, RunRecord], metric: str) -> tuple[pd.DataFrame, dict]:
    """The ok runs with a config, each with its keys without the protocol (`cell_key`: the arm at n;
    `selection_key`: the setting), its protocol's keys, its best hindsight score and its tuned choice; and
    {selection_key: (base label, reduced identity)} for the setting labels."""
    rep, size, arms, proto = identity.REPLICATES, identity.SAMPLE_SIZE, identity.ARM_GROUPS, identity.PROTOCOL
    extra, settings = [], {}
    ok = ok_rows(df)
    for _, r in ok.iterrows():
        rec = records.get(r["run_dir"])
        if rec is None or not isinstance(rec.config, Mapping):
            extra.append(None)
            continue
        ins = rec.inputs if isinstance(rec.inputs, Mapping) else {}
        sk = identity.group_key(rec.config, ins, without=rep + size + arms + proto)
        if sk not in settings:
            settings[sk] = (f"{r['target']} / {r['backbone']}", identity.group_config(rec.config, ins,
                                                                                      rep + size + arms + proto))
        full = identity.identity_config(rec.config)
        extra.append({"cell_key": identity.group_key(rec.config, ins, without=rep + proto), "selection_key": sk,
                      "protocol": {k: identity.get(full, k) for k in proto if identity.get(full, k) is not None},
                      "hindsight_best": _oracle_of(rec, metric), "hindsight_failed": _hindsight_failed(rec),
                      "chosen": _chosen(rec)})
    keep = [e is not None for e in extra]
    out = ok[keep].copy()
    for col in ("cell_key", "selection_key", "protocol", "hindsight_best", "hindsight_failed", "chosen"):
        out[col] = [e[col] for e in extra if e is not None]
    return out, settings


def _labels(protocols: Mapping[str, dict]) -> dict[str, str]:
    """arm_key -> its protocol's name (`train.select`), with the protocol keys that tell it from another variant
    of the same name (`val_in_budget train.val_in_budget_fraction=0.4`)."""
    from transferlab.config import cli_value

    out = {}
    by_select: dict[str, list[str]] = {}
    for ak, p in protocols.items():
        by_select.setdefault(str(p.get("train.select")), []).append(ak)
    for select, aks in by_select.items():
        differ = identity.differing_keys([protocols[a] for a in aks]) if len(aks) > 1 else []
        for ak in aks:
            out[ak] = " ".join([select, *(f"{k}={cli_value(protocols[ak].get(k))}" for k in differ)])
    return out


def _mean(values: Any, confidence: float, clip: bool) -> tuple[float, float, float]:
    s = t_interval(list(values), confidence)
    lo, hi = (np.clip([s["ci_lo"], s["ci_hi"]], 0.0, 1.0) if clip else (s["ci_lo"], s["ci_hi"]))
    return s["mean"], float(lo), float(hi)


def _pairs(h: pd.DataFrame, large: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, data seed) with both runs: honest, large_val, oracle (NaN without hindsight numbers;
    `oracle_short`: a candidate's hindsight test failed, so the oracle is a lower bound)."""
    cols = [*PAIR, "test_acc", "hindsight_best", "hindsight_failed", "labels_used", "chosen"]
    p = h[cols].merge(large[cols], on=PAIR, suffixes=("_h", "_l"))
    tested = p[["test_acc_h", "test_acc_l", "hindsight_best_h", "hindsight_best_l"]]
    any_hindsight = p[["hindsight_best_h", "hindsight_best_l"]].notna().any(axis=1)
    return pd.DataFrame({
        "honest": p["test_acc_h"], "large_val": p["test_acc_l"],
        "oracle": tested.max(axis=1).where(any_hindsight),
        "oracle_short": p["hindsight_failed_h"].astype(bool) | p["hindsight_failed_l"].astype(bool),
        "labels_honest": p["labels_used_h"],
        "labels_large_val": p["labels_used_l"],
        "same_choice": [float(a == b) if a is not None and b is not None else math.nan
                        for a, b in zip(p["chosen_h"], p["chosen_l"])]})


def table(df: pd.DataFrame, records: Mapping[str, RunRecord], metric: str = "acc",
          confidence: float = 0.95) -> pd.DataFrame:
    """selection.csv: one row per setting, arm, n and (honest protocol, large-val protocol) pair of that arm (see
    the module docstring); empty (with its columns) when no arm at any n has both. `df`: the report's runs with the
    lead metric in `test_acc` (`lead_metric.lead`); `records`: their records by run folder; `metric`: the lead
    metric's name (`acc`, `balanced_acc`, ...), whose hindsight number the oracle reads."""
    from transferlab.analysis.collect import setting_labels

    rows, settings = _rows(df, records, metric) if not df.empty else (pd.DataFrame(), {})
    out = []
    for _, cell in rows.groupby("cell_key", sort=False) if len(rows) else []:
        variants = {ak: g for ak, g in cell.groupby("arm_key", sort=False)}
        large = [ak for ak, g in variants.items() if (g["select"] == LARGE_VAL).all()]
        if not large:
            continue
        budget = float(cell.loc[cell["arm_key"].isin(large), "n_train"].max())
        honest = [ak for ak, g in variants.items() if ak not in large and g["labels_used"].notna().all()
                  and (pd.to_numeric(g["labels_used"]) <= budget).all()]
        names = _labels({ak: variants[ak]["protocol"].iloc[0] for ak in large + honest})
        for h in honest:
            for lv in large:
                pairs = _pairs(variants[h], variants[lv])
                if pairs.empty:
                    continue
                first = variants[lv].iloc[0]
                row = {"setting_key": first["setting_key"], "selection_key": first["selection_key"],
                       "arm": first["arm"], "arm_name": first.get("arm_name"), "n_label": first["n_label"],
                       "n": first["n"], "honest": names[h], "large_val": names[lv], "n_pairs": len(pairs),
                       "labels_honest": float(pairs["labels_honest"].mean()),
                       "labels_large_val": float(pairs["labels_large_val"].mean()),
                       "oracle_pairs": int(pairs["oracle"].notna().sum()),
                       "oracle_lower_bound": int((pairs["oracle"].notna() & pairs["oracle_short"]).sum()),
                       "same_choice": float(pairs["same_choice"].mean()) if pairs["same_choice"].notna().any()
                       else math.nan, "honest_arm_key": h, "large_val_arm_key": lv}
                for p in ("honest", "large_val", "oracle"):
                    row[f"{p}_mean"], row[f"{p}_ci_lo"], row[f"{p}_ci_hi"] = _mean(pairs[p].dropna(), confidence,
                                                                                   clip=True)
                for gap, (a, b) in GAPS.items():
                    row[f"{gap}_mean"], row[f"{gap}_ci_lo"], row[f"{gap}_ci_hi"] = _mean(
                        (pairs[a] - pairs[b]).dropna(), confidence, clip=False)
                out.append(row)
    if not out:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(out)
    labels = setting_labels({k: v for k, v in settings.items() if k in set(frame["selection_key"])},
                            shown=frame["selection_key"])
    frame["setting"] = frame["selection_key"].map(labels)
    within = ["selection_key", "n_label", "honest", "large_val"]
    for p in ("honest", "large_val", "oracle"):
        frame[f"rank_{p}"] = frame.groupby(within)[f"{p}_mean"].rank(ascending=False, method="min").astype("Int64")
    for p in ("honest", "large_val"):
        frame[f"lead_{p}"] = frame.groupby(within)[f"{p}_mean"].transform(_lead)
    return frame.reindex(columns=COLUMNS).sort_values(["setting", "n", "honest", "large_val", "arm"],
                                                      kind="stable").reset_index(drop=True)


def _lead(means: pd.Series) -> pd.Series:
    """Each arm's mean minus the best mean among the other arms (positive: it leads by that much); NaN alone."""
    out = []
    for i in range(len(means)):
        others = means.drop(means.index[i])
        out.append(means.iloc[i] - others.max() if others.notna().any() else math.nan)
    return pd.Series(out, index=means.index, dtype=float)


def notes(cost: pd.DataFrame) -> list[str]:
    """One line on selection.csv for the report's notes (none without rows): the cells it covers and, per honest
    protocol, the mean gaps over them."""
    if cost.empty:
        return []
    parts = []
    for (h, lv), g in cost.groupby(["honest", "large_val"], sort=True):
        text = (f"{lv} beats {h} by {100 * g['large_val_minus_honest_mean'].mean():+.1f} points on average over "
                f"{len(g)} arm/n cell{'s' * (len(g) > 1)}")
        with_oracle = g["oracle_mean"].notna()
        if with_oracle.any():
            text += (f", and the best candidate in hindsight beats {lv} by "
                     f"{100 * g.loc[with_oracle, 'oracle_minus_large_val_mean'].mean():+.1f}")
        else:
            text += " (no oracle: no tuned run with hindsight numbers, tune.train.* and schema >= 7)"
        short = int(g["oracle_lower_bound"].sum())
        if short:
            text += (f" (the oracle is a lower bound in {short} seed pair{'s' * (short > 1)}: a candidate's hindsight "
                     "test failed, its error is in the record's tuning block)")
        parts.append(text)
    return ["selection.csv: each arm's test score under the honest protocol (labels_used = n), the large-validation-"
            "set choice and the best candidate in hindsight, paired by seed; " + "; ".join(parts)]


# ---------------------------------------------------------------- the figure
HONEST_COLORS = ("#0072B2", "#009E73", "#CC79A7", "#56B4E9")  # Okabe-Ito, one per honest protocol
LARGE_VAL_STYLE = {"color": "#D55E00", "marker": "^", "linestyle": "--"}
ORACLE_STYLE = {"color": "#444444", "marker": "*", "linestyle": ":"}


def _line(ax, x, g: pd.DataFrame, p: str, label: str, style: dict) -> None:
    mean = g[f"{p}_mean"].to_numpy(float)
    err = np.vstack([mean - g[f"{p}_ci_lo"].to_numpy(float), g[f"{p}_ci_hi"].to_numpy(float) - mean])
    ax.errorbar(x, mean, yerr=np.nan_to_num(err).clip(min=0), capsize=3, markersize=6, linewidth=1.3, label=label,
                **style)


def figures(cost: pd.DataFrame, out_dir: Path, metric: str = "accuracy",
            confidence: float = 0.95) -> list[tuple[str, Path, str]]:
    """Per setting of selection.csv, `report_selection_cost[_<setting>].png` (and .pdf): one panel per arm, test
    score vs n under each honest protocol, the large-val choice and the oracle, mean over seed pairs with the
    t-interval; the panels share the y axis, so arms compare across panels. [(title, png, caption)]."""
    if cost.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transferlab.analysis.naming import setting_tags
    from transferlab.analysis.plots import save_figure

    out = []
    tags = setting_tags(sorted(cost["setting"].unique()))
    for setting, s in cost.groupby("setting", sort=True):
        arms = list(dict.fromkeys(s.sort_values(["rank_large_val", "arm"])["arm"]))  # the large-val winner first
        ncols = min(len(arms), 3)
        nrows = -(-len(arms) // ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.8 * ncols + 1.0, 3.0 * nrows + 1.0), squeeze=False,
                                 sharey=True)
        axes = list(grid.flat)
        for ax in axes[len(arms):]:
            ax.set_visible(False)
        honest = sorted(s["honest"].unique())
        ticks = s.drop_duplicates("n_label").sort_values("n")
        for ax, arm in zip(axes, arms):
            a = s[s["arm"] == arm]
            for i, h in enumerate(honest):
                g = a[a["honest"] == h].sort_values("n")
                _line(ax, g["n"].to_numpy(float) * 0.94, g, "honest", f"honest: {h}",
                      {"color": HONEST_COLORS[i % len(HONEST_COLORS)], "marker": "o", "linestyle": "-"})
            g = a.sort_values(["n", "n_pairs"], ascending=[True, False]).drop_duplicates("n")  # one per n
            _line(ax, g["n"].to_numpy(float), g, "large_val", f"large validation set: {g['large_val'].iloc[0]}",
                  LARGE_VAL_STYLE)
            if g["oracle_mean"].notna().any():
                _line(ax, g["n"].to_numpy(float) * 1.06, g, "oracle", "oracle: best candidate in hindsight",
                      ORACLE_STYLE)
            ax.set_xscale("log")
            ax.set_xticks(list(ticks["n"]))
            ax.set_xticklabels(list(ticks["n_label"]))
            ax.minorticks_off()
            ax.margins(x=0.1)
            ax.set_title(str(arm), fontsize=10)
            ax.grid(alpha=0.3)
        for row in grid:
            row[0].set_ylabel(f"test {metric}")
        fig.supxlabel("labelled target examples per class, n (log scale)", fontsize=10)
        fig.suptitle(f"What selection costs ({setting})")
        fig.tight_layout()
        legend = {}  # every line's entry once, whichever panel has it
        for ax in axes[:len(arms)]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
                   fontsize=8, frameon=False)
        path = save_figure(fig, out_dir / f"report_selection_cost{tags[setting]}.png")
        out.append((f"What selection costs ({setting})", path,
                    (f"One panel per arm: test {metric} vs n under the honest protocol (labels_used = n: every label "
                     "that shaped the model is counted in n), under best_val (epoch and tuned values chosen on the "
                     "task's validation split, labels outside n) and the oracle (the best candidate in hindsight: "
                     "the highest test score among every candidate of both runs, each tested once after the "
                     f"choice). Mean over seed pairs with its {confidence:.0%} t-interval; shared y axis. The gap "
                     "between the honest and the best_val marker is what the validation labels outside the budget "
                     "bought; selection.csv has every gap with its paired interval.")))
    return out
