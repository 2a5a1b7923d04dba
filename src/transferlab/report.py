"""Entry point: a sweep folder -> CSVs, figures/ (PNG + PDF), tables/ (LaTeX + Markdown), report.html, a summary.

    python -m transferlab.report outputs/sweeps/freeze_vs_n [--out DIR] [--wandb] [--wandb-workspace [--push]]

Works on partial sweeps and never needs a network (`transferlab.analysis.build` builds it); `--wandb` logs the
tables and figures as one `report` run in the sweep's W&B group (offline unless asked); `--wandb-workspace` also
writes a W&B workspace and report for the group as code (`analysis.wandb_workspace`; the spec file offline,
saved to W&B with `--push` when online).
"""

from __future__ import annotations

import argparse
import sys

from transferlab.errors import ConfigError, problem


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="transferlab-report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="folder with result.json files below it (a Hydra multirun dir)")
    p.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    p.add_argument("--n-boot", type=int, default=2000,
                   help="bootstrap draws of every bootstrap interval (n*, effective data, transferability)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="epochs-to-threshold: this fraction of scratch's best validation accuracy")
    p.add_argument("--metric", default="acc", help="the test metric the report leads with: acc (default), "
                   "balanced_acc, macro_f1 or auroc (binary tasks)")
    p.add_argument("--crossover", nargs=2, action="append", default=[], metavar=("ARM_A", "ARM_B"),
                   help="also report n* where arm ARM_A overtakes ARM_B (arm labels, e.g. freeze=0 freeze=3, or "
                   "the arms' names as the tables show them); repeatable")
    p.add_argument("--ylim", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="fixed range of the accuracy axis (0-1, e.g. 0.8 1.0) in the accuracy figures; default: "
                   "the data's range")
    p.add_argument("--wandb", action="store_true", help="also log tables + figures as a W&B `report` run")
    p.add_argument("--wandb-mode", default="offline", choices=["offline", "online"], help="W&B mode for --wandb")
    p.add_argument("--wandb-project", default="transferlab")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-workspace", action="store_true",
                   help="also a W&B workspace + report for the sweep's group (implies --wandb; needs the `wandb` "
                   "extra: pip install 'transferlab[wandb]'); offline: its spec in <out>/wandb_dashboard.json")
    p.add_argument("--push", action="store_true",
                   help="with --wandb-workspace --wandb-mode online: save the workspace and report to W&B")
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
        metrics = ("acc", "balanced_acc", "macro_f1", "auroc")  # lead_metric.COLUMNS, without importing pandas
        if args.metric not in metrics:
            raise ConfigError(problem("--metric", args.metric, "one of " + ", ".join(metrics)))
        if args.ylim is not None and not 0 <= args.ylim[0] < args.ylim[1] <= 1:
            raise ConfigError(problem("--ylim", " ".join(f"{v:g}" for v in args.ylim), "LO HI with 0 <= LO < HI <= 1"))
        if args.push and not args.wandb_workspace:
            raise ConfigError(problem("--push", "set", "only with --wandb-workspace (it saves the dashboards)"))
        if args.wandb_workspace:
            try:
                import wandb_workspaces  # noqa: F401
            except ImportError:
                raise ConfigError(problem("--wandb-workspace", "set", "the wandb-workspaces package installed "
                                          "(pip install 'transferlab[wandb]')")) from None
        for a, b in args.crossover:
            if a == b:
                raise ConfigError(problem("--crossover", f"{a} {b}", "two different arm labels"))
        from transferlab.analysis.build import build_report  # pandas, matplotlib: after the arguments are checked

        report = build_report(args.sweep_dir, args.out, confidence=args.confidence, n_boot=args.n_boot,
                              threshold_frac=args.threshold, metric=args.metric,
                              crossover_pairs=[tuple(pair) for pair in args.crossover],
                              ylim=tuple(args.ylim) if args.ylim else None)
    except ConfigError as e:
        print("transferlab-report: " + "\n".join(e.problems), file=sys.stderr)
        return 2
    from transferlab.analysis.build import print_summary

    print_summary(report)
    if args.wandb or args.wandb_workspace:  # the dashboards read the report run's tables and figures
        from transferlab.analysis.wandb_push import push_report

        run_dir = push_report(report, project=args.wandb_project, entity=args.wandb_entity, mode=args.wandb_mode)
        print(f"W&B report run written to {run_dir}" + (" (run `wandb sync` to upload)" if args.wandb_mode ==
                                                          "offline" else ""))
    if args.wandb_workspace:
        return dashboards(report, args)
    return 0


def dashboards(report, args: argparse.Namespace) -> int:
    """The workspace + report spec file, always; with --push, saved to W&B (online only): one line when it cannot."""
    from transferlab.analysis import wandb_workspace

    spec = wandb_workspace.write_spec(report, project=args.wandb_project, entity=args.wandb_entity)
    print(f"W&B workspace + report spec written to {spec}")
    if not args.push:
        return 0
    if args.wandb_mode != "online":
        print(f"transferlab-report: --push: W&B is offline here (--wandb-mode {args.wandb_mode}); the spec is in "
              f"{spec}; run again with network and --wandb-mode online --push to save it", file=sys.stderr)
        return 1
    try:
        urls = wandb_workspace.push(report, project=args.wandb_project, entity=args.wandb_entity)
    except Exception as e:  # noqa: BLE001 - no network, no login, no access: say so in one line, keep the spec
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"transferlab-report: --push: could not save to W&B ({type(e).__name__}: {first}); the spec is in "
              f"{spec}", file=sys.stderr)
        return 1
    print("W&B workspace saved: {}\nW&B report saved: {}".format(*urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
