"""Entry point: how much of each arm's spread comes from the data draw and how much from the training seed, and
how many draws and seeds a wanted interval needs (analysis/variance.py has the model and its references).

    python -m transferlab.plan_seeds outputs/sweeps/freeze_vs_n --half-width 2

Reads a sweep run as a crossed design (`seed=range(S) data_seed=range(D)`: every seed on every draw); cells that
are not one are listed, not split. Never trains anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transferlab.errors import ConfigError, problem


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="transferlab-plan-seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="a sweep folder (result.json files below it)")
    p.add_argument("--half-width", type=float, default=None, metavar="POINTS",
                   help="wanted half-width of each arm's interval, in accuracy points (e.g. 2 for +-2 points); "
                        "prints the design of fewest runs that reaches it")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--n-boot", type=int, default=2000, help="pigeonhole-bootstrap draws of the components' intervals")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return p.parse_args(argv)


COLUMNS = {"setting": "setting", "arm": "arm", "n_label": "n", "draws": "draws", "seeds": "seeds",
           "acc_mean": "mean acc", "sd_draw_pt": "sd draw (pt)", "sd_seed_pt": "sd seed (pt)",
           "sd_resid_pt": "sd resid (pt)", "half_width_pt": "+- now (pt)", "plan_draws": "draws needed",
           "plan_seeds": "seeds needed", "plan_runs": "runs needed"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not Path(args.sweep_dir).is_dir():
            raise ConfigError(problem("sweep_dir", args.sweep_dir, "an existing sweep folder"))
        if not 0 < args.confidence < 1:
            raise ConfigError(problem("--confidence", args.confidence, "a number strictly between 0 and 1"))
        if args.half_width is not None and not args.half_width > 0:
            raise ConfigError(problem("--half-width", args.half_width, "a number of accuracy points > 0"))
        if args.n_boot < 1:
            raise ConfigError(problem("--n-boot", args.n_boot, "an integer >= 1"))
        from transferlab.analysis import variance  # pandas, scipy: after the arguments are checked
        from transferlab.analysis.collect import collect

        df = collect(args.sweep_dir)
        if df.empty:
            raise ConfigError(problem("sweep_dir", args.sweep_dir, "a folder with result.json files below it"))
        wanted = None if args.half_width is None else args.half_width / 100
        out, notes = variance.table(df, wanted=wanted, confidence=args.confidence, n_boot=args.n_boot)
        if out.empty:
            raise ConfigError(problem("sweep_dir", args.sweep_dir, "a crossed design in at least one arm and n "
                                      "(e.g. seed=range(3) data_seed=range(3)): " + " ".join(notes)))
    except ConfigError as e:
        print("transferlab-plan-seeds: " + "\n".join(e.problems), file=sys.stderr)
        return 2
    shown = out[[c for c in COLUMNS if c in out]].rename(columns=COLUMNS)
    pct = int(round(100 * args.confidence))
    print(f"variance of test accuracy split into the data draw (data_seed), the training seed (seed; the source model "
          f"too when pretrain.seed follows seed) and the rest (their interaction and noise); standard deviations in "
          f"accuracy points, {pct}% pigeonhole-bootstrap intervals in the CSV")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.half_width is not None:
        print(f"draws/seeds needed: the crossed design of fewest runs whose {pct}% interval of the mean is at most "
              f"+-{args.half_width:g} points (normal approximation from the estimates above); empty: not within "
              "64 x 64")
    for note in notes:
        print(note)
    if args.csv:
        out.to_csv(args.csv, index=False)
        print(f"written: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
