"""Entry point: a sweep folder -> results.csv, summary.csv, PNG figures, report.html and a terminal summary.

    python -m transferlab.report outputs/sweeps/freeze_vs_n/2026-01-01_12-00-00 [--out DIR] [--wandb]

Works on partial sweeps (missing points are shown as missing, failed runs listed) and never needs a network;
`--wandb` logs the tables and figures as one `report` run in the sweep's W&B group (offline unless asked).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from transferlab.errors import ConfigError, problem

if TYPE_CHECKING:  # the heavy imports (pandas, matplotlib, seaborn) wait until the arguments are checked
    import pandas as pd
    from rich.console import Console


@dataclass
class Report:
    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    gain: pd.DataFrame
    best: pd.DataFrame
    crossovers: pd.DataFrame
    measures: pd.DataFrame
    yosinski: pd.DataFrame
    missing: pd.DataFrame
    failed: pd.DataFrame
    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    name: str = "sweep"


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    from transferlab.atomic import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def missing_points(df: pd.DataFrame) -> pd.DataFrame:
    """(arm, n, seed) combinations of the sweep's own axes with no result.json at all (not yet run or lost)."""
    import pandas as pd

    rows = []
    for (target, backbone), g in df.dropna(subset=["arm"]).groupby(["target", "backbone"]):
        seen = set(zip(g["arm"], g["n_label"], g["seed"]))
        ns = g.drop_duplicates("n_label").sort_values("n")["n_label"]
        for arm, n, seed in itertools.product(sorted(g["arm"].unique()), ns, sorted(g["seed"].dropna().unique())):
            if (arm, n, seed) not in seen:
                rows.append({"target": target, "backbone": backbone, "arm": arm, "n_label": n, "seed": int(seed)})
    return pd.DataFrame(rows, columns=["target", "backbone", "arm", "n_label", "seed"])


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, confidence: float = 0.95,
                 n_boot: int = 2000, threshold_frac: float = 0.9) -> Report:
    """Collect, compute, draw and write everything; raises ConfigError if there is nothing to report."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(problem("sweep_dir", str(sweep), "an existing folder holding result.json files"))
    from transferlab.results import find_results

    if next(find_results(sweep), None) is None:
        raise ConfigError(problem("sweep_dir", str(sweep), "a folder with at least one result.json below it"))
    from transferlab.analysis import collect, html, plots, stats

    df = collect.collect(sweep)
    if df.empty:
        raise ConfigError(problem("sweep_dir", str(sweep), "a folder with at least one result.json below it"))
    out = Path(out_dir) if out_dir else sweep
    ok = stats.ok_rows(df)
    summary = stats.summarize(df, confidence)
    gain = stats.paired_gain(df, confidence)
    cx = stats.crossovers(df, n_boot=n_boot, confidence=confidence)
    report = Report(
        out_dir=out, results=df, summary=summary, gain=gain, best=stats.best_per_n(summary), crossovers=cx,
        measures=stats.learning_measures(df, threshold_frac, confidence), yosinski=stats.yosinski_table(df, confidence),
        missing=missing_points(df),
        failed=df[df["status"] != "ok"][["run_dir", "arm", "n_label", "seed", "error"]].reset_index(drop=True),
        name=str(df["name"].dropna().iloc[0]) if df["name"].notna().any() else sweep.name,
    )
    report.files = {
        "results.csv": _write_csv(df.drop(columns=["val_acc_history"]), out / "results.csv"),
        "summary.csv": _write_csv(summary, out / "summary.csv"),
        "curves.csv": _write_csv(collect.curves(df), out / "curves.csv"),
    }
    for name, frame in (("gain.csv", gain), ("crossover.csv", cx), ("learning_measures.csv", report.measures),
                        ("yosinski.csv", report.yosinski)):
        if not frame.empty:
            report.files[name] = _write_csv(frame, out / name)
    report.figures = plots.draw_all(ok, summary, gain, cx, report.yosinski, out) if not ok.empty else []
    for _, p, _ in report.figures:
        report.files[p.name] = p
    report.files["report.html"] = html.write_html(
        out / "report.html", f"transferlab report: {report.name}", notes(report), report.figures,
        [("Best arm per n (Ng's rule read off the data)", report.best), ("Crossover n*", cx),
         ("Summary over seeds", summary), ("Gain over scratch", gain),
         ("Learning-curve measures (Taylor & Stone)", report.measures), ("Yosinski arms", report.yosinski),
         ("Missing points", report.missing)],
        report.failed)
    return report


def notes(r: Report) -> list[str]:
    from transferlab.analysis import stats

    n_ok = int((r.results["status"] == "ok").sum())
    lines = [f"{len(r.results)} runs found: {n_ok} ok, {len(r.failed)} failed, {len(r.missing)} (arm, n, seed) "
             f"points of the grid missing."]
    for _, c in r.crossovers.iterrows():
        lines.append(f"{c['target']}/{c['backbone']}: {c['finetuned_arm']} vs {c['frozen_arm']}: "
                     f"{stats.format_n_star(c)}")
    return lines


def _pct(v) -> str:
    import pandas as pd

    return "–" if v is None or pd.isna(v) else f"{100 * v:.1f}"


def print_summary(r: Report, console: Console | None = None) -> None:
    """Rich table of the best arm per n (one per setting), then the crossover lines, failed runs, written files."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 110))
    for (target, backbone), best in r.best.groupby(["target", "backbone"], sort=True):
        table = Table(title=f"{r.name}: {target} / {backbone} — best freeze depth per n (test accuracy %)")
        for col in ("n", "best arm", "acc [95% CI]", "seeds", "lead over runner-up", "scratch", "gain"):
            table.add_column(col, justify="left" if col in ("best arm", "lead over runner-up") else "right")
        for _, b in best.iterrows():
            ci = "" if pd.isna(b["acc_ci_lo"]) else f" [{_pct(b['acc_ci_lo'])}, {_pct(b['acc_ci_hi'])}]"
            runner = "–" if b["runner_up"] is None else f"+{_pct(b['margin'])} ({b['runner_up']})"
            gain = "–" if pd.isna(b["scratch_mean"]) else f"{100 * (b['acc_mean'] - b['scratch_mean']):+.1f}"
            table.add_row(str(b["n_label"]), str(b["best_arm"]), _pct(b["acc_mean"]) + ci, str(b["n_seeds"]), runner,
                          _pct(b["scratch_mean"]), gain)
        console.print(table)
    for line in notes(r):
        console.print(line)
    if len(r.failed):
        console.print(f"[red]failed runs ({len(r.failed)}):[/red]")
        for _, f in r.failed.iterrows():
            console.print(f"  {f['run_dir']}: {f['error']}")
    console.print(f"wrote {len(r.files)} files to {r.out_dir}: " + ", ".join(sorted(r.files)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="transferlab-report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="folder with result.json files below it (a Hydra multirun dir)")
    p.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws for the crossover interval")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="epochs-to-threshold: this fraction of scratch's best validation accuracy")
    p.add_argument("--wandb", action="store_true", help="also log tables + figures as a W&B `report` run")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online"], help="W&B mode for --wandb")
    p.add_argument("--wandb-project", default="transferlab")
    p.add_argument("--wandb-entity", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not 0 < args.confidence < 1:
            raise ConfigError(problem("--confidence", args.confidence, "a number strictly between 0 and 1"))
        if not 0 < args.threshold <= 1:
            raise ConfigError(problem("--threshold", args.threshold, "a fraction in (0, 1]"))
        if args.n_boot < 1:
            raise ConfigError(problem("--n-boot", args.n_boot, "an integer >= 1"))
        report = build_report(args.sweep_dir, args.out, confidence=args.confidence, n_boot=args.n_boot,
                              threshold_frac=args.threshold)
    except ConfigError as e:
        print("transferlab-report: " + "\n".join(e.problems), file=sys.stderr)
        return 2
    print_summary(report)
    if args.wandb:
        from transferlab.analysis.wandb_push import push_report

        run_dir = push_report(report, project=args.wandb_project, entity=args.wandb_entity, mode=args.wandb_mode)
        print(f"W&B report run written to {run_dir}" + (" (run `wandb sync` to upload)" if args.wandb_mode ==
                                                          "offline" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
