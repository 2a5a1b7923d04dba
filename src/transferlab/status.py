"""Entry point: what a sweep is doing, from what is on disk (reads only).

    python -m transferlab.status outputs/sweeps/freeze_vs_n [--json] [--all]

One table of the declared points (failed with their reason, running with their job (and pull worker) and time,
queued, stale, missing; with `--all` also the done ones and the ones a later launch dropped from the grid), the
totals, the compute time used and an estimate of the time left.
"""

from __future__ import annotations

import argparse
import json
import sys


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def print_status(status, show_done: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from transferlab.sweep.progress import STATES

    console = Console(width=max(Console().width, 120))
    totals = status.totals
    table = Table(title=f"sweep {status.name}: {len(status.points)} points ({status.sweep_dir})")
    for col in ("point", "state", "job", "time", "reason"):
        table.add_column(col, overflow="fold")
    quiet = ("done", "dropped")  # listed with --all only
    shown = [p for p in status.points if show_done or p.state not in quiet]
    for p in shown:
        time_ = _duration(p.elapsed_s if p.state == "running" else p.wall_s)
        job = " ".join(x for x in (p.job, p.worker and f"[{p.worker}]") if x)  # pull mode: the claim's worker
        table.add_row(escape(p.name), p.state, escape(job), time_, escape(p.reason or ""))
    if shown:
        console.print(table)
    hidden = [s for s in quiet if totals[s]] if not show_done else []
    console.print(", ".join(f"{n} {s}" for s, n in totals.items() if s != "dropped" or n) + (
        f"  ({' and '.join(hidden)} points hidden: --all shows them)" if hidden else ""))
    off_grid = {s: sum(p.dropped and p.state == s for p in status.points) for s in STATES}
    if any(off_grid.values()):  # the rest of them finished, or a job still runs them
        console.print(f"{sum(off_grid.values())} points are not in the latest launch's grid: "
                      + ", ".join(f"{n} {s}" for s, n in off_grid.items() if n)
                      + (" (dropped: not counted in the time left)" if off_grid["dropped"] else ""))
    compute, wall = status.time_left_s()
    jobs = status.running_jobs
    left = "no point finished yet" if compute is None else (
        f"about {_duration(compute)} of compute left" + (f", {_duration(wall)} at the {jobs} jobs running at once"
                                                           if jobs > 1 else ""))
    console.print(f"compute used {_duration(status.compute_used_s)}; {left}")
    for launch in status.launches[-3:]:
        import time as _t

        when = _t.strftime("%Y-%m-%d %H:%M", _t.localtime(launch.get("start") or 0))
        end = "running or killed" if not launch.get("end") else _duration(launch["end"] - launch["start"])
        console.print(f"launch {when} on {launch.get('host')} ({end}): "
                      f"{' '.join(str(a) for a in launch.get('argv') or [])}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="transferlab-status", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="a sweep folder (holds sweep.json)")
    p.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    p.add_argument("--all", action="store_true", help="also list the points that are done, and those the latest "
                   "launch dropped from the grid")
    args = p.parse_args(argv)
    from transferlab.sweep.progress import sweep_status

    try:
        status = sweep_status(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"transferlab-status: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, default=str))
    else:
        print_status(status, args.all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
