"""Every result.json under a sweep folder -> tidy pandas rows (one per run) and learning curves (one per epoch).

Reads only through `transferlab.results`, so the record schema has one owner. Failed runs are kept (status column)
so the report can list them; statistics use the `ok` rows only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlab.results import find_results, read_result

SCRATCH = "scratch"  # the arm label of the baseline: nothing transferred (cut=0)


def _num_classes(record: dict[str, Any]) -> int | None:
    if record.get("num_classes"):  # recorded by the run (relabelled or all-class tasks have no class list)
        return int(record["num_classes"])
    classes = ((record.get("config") or {}).get("target") or {}).get("classes")
    return len(classes) if isinstance(classes, list) and classes else None


def _effective_n(record: dict[str, Any]) -> tuple[float, str]:
    """(numeric n per class for a log axis, label). n_per_class=null means the whole pool: "all"."""
    n = record.get("n_per_class")
    if n is not None:
        return float(n), str(int(n))
    k = _num_classes(record)
    n_train = record.get("n_train") or np.nan
    return (float(n_train) / k if k else float(n_train)), "all"


def record_to_row(record: dict[str, Any], run_dir: str) -> dict[str, Any]:
    m = record.get("metrics") or {}
    hist = list(m.get("val/acc_history") or [])
    n, n_label = _effective_n(record)
    cut = record.get("cut")
    is_scratch = record.get("transfer") == SCRATCH or cut == 0
    return {
        "run_dir": run_dir, "status": record.get("status"), "error": record.get("error"),
        "name": record.get("name"), "source": record.get("source"), "target": record.get("target"),
        "backbone": record.get("backbone"), "transfer": record.get("transfer"), "strategy": record.get("strategy"),
        "cut": cut, "upper": record.get("upper"), "freeze": record.get("freeze"),
        "trainable_set": record.get("trainable_set"),
        "trainable_params": record.get("trainable_params"), "total_params": record.get("total_params"),
        "n_per_class": record.get("n_per_class"), "n": n, "n_label": n_label, "n_train": record.get("n_train"),
        "seed": record.get("seed"), "data_seed": record.get("data_seed"),
        "test_acc": m.get("test/acc", np.nan), "test_loss": m.get("test/loss", np.nan),
        "val_acc": m.get("val/acc", np.nan), "epochs": len(hist) if hist else m.get("epochs"),
        "wall_s": record.get("wall_s"), "source_cache": record.get("source_cache"),
        "is_scratch": bool(is_scratch), "val_acc_history": json.dumps(hist),
    }


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per result.json (ok and failed), sorted by run folder; empty frame if there are none."""
    root = Path(sweep_dir)
    rows = []
    for path in find_results(root):
        try:
            record = read_result(path)
        except (OSError, json.JSONDecodeError) as e:  # unreadable file: listed as failed, never fatal
            record = {"status": "failed", "error": f"unreadable result.json: {e}"}
        rows.append(record_to_row(record, str(path.parent.relative_to(root))))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("cut", "freeze", "seed", "data_seed", "trainable_params", "total_params", "n_train"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["arm"] = arm_labels(df)
    return df.sort_values(["run_dir"]).reset_index(drop=True)


def arm_labels(df: pd.DataFrame) -> pd.Series:
    """A short line label per row: "scratch" or "freeze=f", plus only the fields that vary within the sweep."""
    transfer = df[~df["is_scratch"]]
    varies = {k: transfer[k].nunique(dropna=False) > 1 for k in ("source", "cut", "upper", "strategy")}

    def label(r) -> str:
        if r["is_scratch"]:
            return SCRATCH
        if pd.isna(r["freeze"]):  # a transfer.trainable set is not a depth: label it by the set itself
            return str(r.get("trainable_set") or r.get("transfer"))
        f = int(r["freeze"])
        parts = [f"freeze={f}" + (" (all)" if f > 0 and f == r["cut"] else "")]
        if varies["cut"]:
            parts.append(f"cut={r['cut']}")
        if varies["upper"]:
            parts.append(f"upper={r['upper']}")
        if varies["strategy"] and r["strategy"] != "fixed":
            parts.append(str(r["strategy"]))
        if varies["source"]:
            parts.append(f"from {r['source']}")
        return " ".join(parts)

    return df.apply(label, axis=1)


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of validation accuracy per epoch (epoch counted from 1) for every ok run."""
    rows = []
    for _, r in df[df["status"] == "ok"].iterrows():
        for epoch, acc in enumerate(json.loads(r["val_acc_history"]), start=1):
            rows.append({"run_dir": r["run_dir"], "arm": r["arm"], "target": r["target"], "backbone": r["backbone"],
                         "n": r["n"], "n_label": r["n_label"], "seed": r["seed"], "epoch": epoch, "val_acc": acc})
    return pd.DataFrame(rows, columns=["run_dir", "arm", "target", "backbone", "n", "n_label", "seed", "epoch",
                                       "val_acc"])
