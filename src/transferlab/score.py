"""Entry point: transferability scores without training, for every point of a grid, ranked per n.

    python -m transferlab.score source=digits_0to4 target=digits_5to9 transfer.cut=1,2,3,4 target.n_per_class=5,20
    python -m transferlab.score ... --json

Overrides are composed as `transferlab.train` composes them; a comma list (or `range(...)`) means "each of", as in
a sweep, but every point is scored in this one process (`transferlab.run.score_only`). Prints a ranked table of
the arms per n (rich), or the same as JSON with `--json`. A bad setting is one line per problem and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m transferlab.score", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides as for transferlab.train (a=1,2: each of 1, 2)")
    p.add_argument("--json", action="store_true", help="print the ranked tables as JSON instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transferlab.config  # noqa: F401 - the schemas conf/ is composed with
    from transferlab.errors import ConfigError
    from transferlab.run import score_only

    t0 = time.perf_counter()
    try:
        points = score_only.compose_points(args.overrides)
        groups = score_only.tables(score_only.score_points(points))
    except ConfigError as e:
        lines = "\n".join(f"  - {p}" for p in e.problems)
        print(f"transferlab: invalid configuration (nothing was scored):\n{lines}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"groups": groups, "time_s": elapsed}, indent=2, default=str))
    else:
        score_only.print_tables(groups, elapsed)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
