"""W&B dashboards as code: a workspace and a report for one sweep's W&B group, built with `wandb-workspaces`.

Five sections, the same in both: accuracy vs n per arm (runs grouped by `arm_name` and `n_per_class`, mean with
a standard-error bar; the report's per-arm line and its figure with the confidence intervals), gain over scratch,
the freeze-depth heatmap (freeze x n coloured by accuracy; the report's heatmap), effective data transferred
D_T(n) and transferability score vs accuracy. Every panel shows the sweep's runs only: the runset keeps the runs of
the sweep's group (`logger.wandb.group`, the sweep name) whose job type is `target` (the points) or `report` (the
`--wandb` report run, which holds the tables and figures); source pretraining runs share the group and are left
out.

A panel names only keys our runs log: the target runs' config axes and summary metrics (`training.loggers`) and
the report run's tables, table columns and figures (`analysis.wandb_push`); a table or figure the report did not
log (no scratch arm: no gain table) leaves its panel out, and a section left empty says why in a text panel.
`plan` is that decision, as data (what the spec file lists and the tests check); `build` turns it into the
library's objects.

Offline (the default) nothing is sent: `write_spec` writes the plan and the library's serialisation of both
objects (what `save()` would upload) to `<report>/wandb_dashboard.json`. `push` saves them to W&B (online only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE = "wandb_dashboard.json"
JOB_TYPES = ("target", "report")  # the sweep's points and its report run; not the source pretraining runs
GROUP_BY = ("arm_name", "n_per_class")  # config keys of every target run (training/loggers.py, run/experiment.py)


@dataclass
class Panel:
    """One panel: its kind, title and what it reads. `keys`: (where, key) pairs, where = config / summary (of the
    target runs), logged (a key the report run logs) or column (`<table key>:<column>`)."""

    kind: str  # bar, scatter, line_table, scatter_table, media, text
    title: str
    args: dict[str, Any] = field(default_factory=dict)
    keys: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Section:
    name: str
    panels: list[Panel]


def _figures(report, prefix: str) -> list[str]:
    """The report run's figure keys (`figures/<stem>`) whose file stem starts with `prefix`."""
    return [f"figures/{Path(p).stem}" for _, p, _ in report.figures if Path(p).stem.startswith(prefix)]


def _line(title: str, table: str, x: str, y: str, stroke: str) -> Panel:
    return Panel("line_table", title, {"table": table, "x": x, "y": y, "stroke": stroke},
                 [("logged", table), *(("column", f"{table}:{c}") for c in (x, y, stroke))])


def _media(title: str, keys: list[str]) -> Panel:
    return Panel("media", title, {"media_keys": keys}, [("logged", k) for k in keys])


def _arm_column(frame) -> str:
    return "arm_name" if "arm_name" in frame.columns else "arm"  # the arms' names, as the report's figures say them


def plan(report) -> list[Section]:
    """The dashboard's sections and panels for this report (see the module docstring)."""
    from transferlab.analysis.collect import SCORE_PREFIX
    from transferlab.analysis.wandb_push import logged_tables

    tables = logged_tables(report)
    metric = f"test/{report.metric}"  # the run summary key of the report's lead metric (training/module.py)
    acc: list[Panel] = [
        Panel("bar", f"{metric} per arm and n (mean and standard error over seeds)",
              {"metrics": [metric], "agg": "mean", "range": "stderr"},
              [("summary", metric), *(("config", k) for k in GROUP_BY)])]
    if "report/summary" in tables:
        s = tables["report/summary"]
        acc.append(_line(f"mean {report.metric} vs n per class, per arm (report)", "report/summary", "n",
                         "acc_mean", _arm_column(s)))
    if figs := _figures(report, "report_acc_vs_n"):
        acc.append(_media(f"{report.metric} vs n with confidence intervals (report figures)", figs))

    gain: list[Panel] = []
    if "report/gain" in tables:
        g = tables["report/gain"]
        gain.append(_line("gain over scratch vs n per class, per arm (paired over seeds)", "report/gain", "n",
                          "gain_mean", _arm_column(g)))
    if figs := _figures(report, "report_gain_vs_n"):
        gain.append(_media("gain over scratch with intervals (report figures)", figs))

    heat: list[Panel] = [
        Panel("scatter", f"freeze depth x n per class, coloured by {metric}",
              {"x": "freeze", "y": "n_per_class", "z": metric},
              [("config", "freeze"), ("config", "n_per_class"), ("summary", metric)])]
    if figs := _figures(report, "report_heatmap"):
        heat.append(_media(f"mean {report.metric} by freeze depth and n (report figures)", figs))

    effective: list[Panel] = []
    if "report/effective_data" in tables:
        e = tables["report/effective_data"]
        effective.append(_line("D_T(n): effective data transferred, examples per class", "report/effective_data",
                               "n", "d_t", _arm_column(e)))
    if figs := _figures(report, "report_effective_data"):
        effective.append(_media("D_T(n) with intervals (report figures)", figs))

    scores: list[Panel] = []
    results = tables.get("report/results")
    lead = f"test_{report.metric}"  # collect's column of the run's lead metric
    for col in [c for c in (results.columns if results is not None else []) if c.startswith(SCORE_PREFIX)]:
        if lead in results.columns and results[col].notna().any():
            scores.append(Panel("scatter_table", f"{col[len(SCORE_PREFIX):]} score vs {lead} (one point per run)",
                                {"table": "report/results", "x": col, "y": lead},
                                [("logged", "report/results"), ("column", f"report/results:{col}"),
                                 ("column", f"report/results:{lead}")]))
    if figs := _figures(report, "report_transferability"):
        scores.append(_media("transferability scores vs accuracy (report figures)", figs))

    empty = {"Gain over scratch": "no gain table: the sweep has no scratch arm (or no n where both ran)",
             "Effective data transferred D_T(n)": "no effective-data table: it needs a scratch arm at 3 or more n",
             "Transferability vs accuracy": "no run recorded a transferability score (transfer.scores)"}
    sections = [Section("Accuracy vs n per arm", acc), Section("Gain over scratch", gain),
                Section("Freeze depth heatmap", heat), Section("Effective data transferred D_T(n)", effective),
                Section("Transferability vs accuracy", scores)]
    for s in sections:
        if not s.panels:
            s.panels.append(Panel("text", s.name, {"markdown": f"Nothing to show for this sweep: {empty[s.name]}."}))
    return sections


def _filters(group: str):
    from wandb_workspaces import expr

    return [expr.Metric("Group") == group, expr.Metric("JobType").isin(list(JOB_TYPES))]


def _panel(p: Panel):
    import wandb_workspaces.reports.v2 as wr

    a = p.args
    if p.kind == "bar":
        return wr.BarPlot(title=p.title, metrics=[wr.SummaryMetric(m) for m in a["metrics"]],
                          groupby_aggfunc=a["agg"], groupby_rangefunc=a["range"])
    if p.kind == "scatter":
        return wr.ScatterPlot(title=p.title, x=wr.Config(a["x"]), y=wr.Config(a["y"]), z=wr.SummaryMetric(a["z"]))
    if p.kind == "line_table":  # the vega preset `wandb.plot.line` uses
        return wr.CustomChart(query={"summaryTable": {"tableKey": a["table"]}}, chart_name="wandb/line/v0",
                              chart_fields={"x": a["x"], "y": a["y"], "stroke": a["stroke"]},
                              chart_strings={"title": p.title})
    if p.kind == "scatter_table":  # the vega preset `wandb.plot.scatter` uses
        return wr.CustomChart(query={"summaryTable": {"tableKey": a["table"]}}, chart_name="wandb/scatter/v0",
                              chart_fields={"x": a["x"], "y": a["y"]}, chart_strings={"title": p.title})
    if p.kind == "media":
        return wr.MediaBrowser(title=p.title, media_keys=list(a["media_keys"]))
    if p.kind == "text":
        return wr.MarkdownPanel(markdown=a["markdown"])
    raise ValueError(f"panel kind {p.kind!r}")


def build(report, sections: list[Section], *, project: str, entity: str):
    """(workspace, report) as `wandb-workspaces` objects for the sweep's group."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    group = report.name
    n_runs = max(1, len(report.results))
    workspace = ws.Workspace(
        entity=entity, project=project, name=f"transferlab {group}",
        sections=[ws.Section(name=s.name, panels=[_panel(p) for p in s.panels], is_open=True) for s in sections],
        settings=ws.WorkspaceSettings(max_runs=n_runs + 1),  # every point and the report run, not W&B's 10
        runset_settings=ws.RunsetSettings(filters=_filters(group), groupby=[expr.Config(k) for k in GROUP_BY]))
    blocks: list[Any] = [wr.P(f"Sweep {group}: its target runs and its report run (W&B group {group}), made by "
                              "transferlab-report --wandb-workspace.")]
    for s in sections:
        blocks += [wr.H2(s.name), wr.PanelGrid(
            runsets=[wr.Runset(entity=entity, project=project, name=group, filters=_filters(group),
                               groupby=[f"config.{k}" for k in GROUP_BY])],
            panels=[_panel(p) for p in s.panels])]
    dashboard = wr.Report(project=project, entity=entity, title=f"transferlab sweep {group}"[:128],
                          description="accuracy vs n, gain over scratch, freeze depth, D_T(n), transferability",
                          blocks=blocks)
    return workspace, dashboard


def write_spec(report, *, project: str, entity: str | None) -> Path:
    """Offline: the plan and both objects as the library serialises them, to `<report>/wandb_dashboard.json`."""
    from transferlab.store.atomic import write_json

    sections = plan(report)
    workspace, dashboard = build(report, sections, project=project, entity=entity or "")
    spec = {"sweep": report.name, "project": project, "entity": entity,
            "runs": {"group": report.name, "job_types": list(JOB_TYPES), "group_by": list(GROUP_BY)},
            "sections": [{"name": s.name, "panels": [asdict(p) for p in s.panels]} for s in sections],
            "workspace": workspace._to_model().model_dump(by_alias=True, exclude_none=True),
            "report": dashboard._to_model().model_dump(by_alias=True, exclude_none=True)}
    path = Path(report.out_dir) / SPEC_FILE
    write_json(path, json.loads(json.dumps(spec, default=str)))
    return path


def push(report, *, project: str, entity: str | None) -> tuple[str, str]:
    """Save the workspace and the report to W&B (network and a login needed); their URLs."""
    import wandb

    entity = entity or wandb.Api().default_entity
    workspace, dashboard = build(report, plan(report), project=project, entity=entity)
    workspace.save()
    dashboard.save()
    return workspace.url, dashboard.url
