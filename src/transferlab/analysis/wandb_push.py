"""Log a finished report to W&B as one `report` run in the sweep's group: tables, figures, crossover n*.

Offline by default (files under <out>/wandb, upload later with `wandb sync`); the mode goes to this one
`wandb.init`, never to the environment, so nothing else in the process changes mode.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from transferlab.analysis.collect import CURVE_COLUMNS


def _table(df: pd.DataFrame):
    import wandb

    clean = df.copy()
    for c in clean.columns:  # W&B tables want plain types: nullable ints -> float, objects -> str
        if str(clean[c].dtype) in ("Int64", "boolean"):
            clean[c] = clean[c].astype("float64")
        elif clean[c].dtype == object:
            clean[c] = clean[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return wandb.Table(dataframe=clean)


def _key(setting: str) -> str:
    """A setting label as a W&B key path: `digits_5to9 / small_cnn / train.lr=0.01` -> `digits_5to9/small_cnn/...`."""
    return str(setting).replace(" / ", "/")


def logged_tables(report) -> dict[str, pd.DataFrame]:
    """{W&B key: frame} of every table the report run logs (the empty optional ones left out); the dashboards
    (`analysis.wandb_workspace`) read their panels from this, so a panel never names a table that is not there."""
    tables = {"report/results": report.results.drop(columns=list(CURVE_COLUMNS)),
              "report/summary": report.summary, "report/best_per_n": report.best}
    for key, frame in (("report/gain", report.gain), ("report/crossover", report.crossovers),
                       ("report/learning_measures", report.measures), ("report/yosinski", report.yosinski),
                       ("report/failed", report.failed), ("report/missing", report.missing),
                       ("report/paired_tests", report.tests), ("report/fits", report.fits),
                       ("report/effective_data", report.effective),
                       ("report/transferability", report.transferability),
                       ("report/selection", report.selection)):
        if not frame.empty:
            tables[key] = frame
    return tables


def push_report(report, *, project: str = "transferlab", entity: str | None = None, mode: str = "offline") -> Path:
    """One W&B run (job_type=report, group=sweep name) holding the report; returns the run's local folder."""
    import wandb

    out = Path(report.out_dir)
    run = wandb.init(project=project, entity=entity, group=report.name, job_type="report", name=f"report {report.name}",
                     dir=str(out), mode=mode, config={"sweep_name": report.name, "runs": len(report.results)},
                     tags=["report"], reinit="finish_previous")
    try:
        payload = {key: _table(frame) for key, frame in logged_tables(report).items()}
        for setting, g in report.summary.groupby("setting"):  # native W&B line chart, one per setting
            by = "arm_name" if "arm_name" in g else "arm"  # the arms' names, as the report's figures say them
            lines = [(arm, a.sort_values("n")) for arm, a in g.groupby(by, sort=True)]
            payload[f"charts/acc_vs_n/{_key(setting)}"] = wandb.plot.line_series(
                xs=[a["n"].tolist() for _, a in lines], ys=[a["acc_mean"].tolist() for _, a in lines],
                keys=[arm for arm, _ in lines], title=f"test accuracy vs n per class ({setting})",
                xname="n per class")
        for title, path, caption in report.figures:
            payload[f"figures/{Path(path).stem}"] = wandb.Image(str(path), caption=f"{title}: {caption}")
        run.log(payload)
        run.summary.update({"runs_ok": int((report.results["status"] == "ok").sum()),
                            "runs_failed": len(report.failed)})
        for _, c in report.crossovers.iterrows():
            if not pd.isna(c["n_star"]):
                key = f"n_star/{_key(c['setting'])}/cut={c['cut']}" + (f" {c['variant']}" if c["variant"] else "")
                vals = {key: c["n_star"], f"{key}/lo": c["n_star_lo"], f"{key}/hi": c["n_star_hi"]}
                run.summary.update({k: float(v) for k, v in vals.items() if math.isfinite(v)})
        local = Path(run.dir).parent
    except BaseException:
        wandb.finish(exit_code=1)
        raise
    wandb.finish(exit_code=0)
    return local
