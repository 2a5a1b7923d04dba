"""Entry point: list and prune the source-model and feature caches.

    python -m transferlab.cache ls [--cache-dir DIR] [--sweeps SWEEP_DIR ...] [--json]
    python -m transferlab.cache prune [--older-than 7d] [--unused-by SWEEP_DIR ...] [--dry-run] [--cache-dir DIR]

`--cache-dir` defaults to `paths.cache_dir`'s default, `$TRANSFERLAB_ROOT/outputs/cache`; the sweeps an entry is used
by are looked up in `--sweeps` (default: every folder under `<cache-dir>/../sweeps`). Prune never removes an entry a
running job holds, and never leaves half of one (`transferlab.store.entries`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _default_cache() -> Path:
    return Path(os.environ.get("TRANSFERLAB_ROOT", ".")) / "outputs" / "cache"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _age(s: float) -> str:
    s = max(0.0, s)
    return f"{s / 86400:.1f} d" if s >= 86400 else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    from transferlab.run.record import cache_entries_used
    from transferlab.store import entries as E

    p = argparse.ArgumentParser(prog="transferlab-cache", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list the entries: size, age, last use, sweeps that use them")
    ls.add_argument("--sweeps", nargs="*", default=None, help="sweep folders to look up usage in")
    ls.add_argument("--json", action="store_true")
    pr = sub.add_parser("prune", help="remove entries by last use and/or usage")
    pr.add_argument("--older-than", default=None, help="last used more than this long ago: 7d, 12h, 30m")
    pr.add_argument("--unused-by", nargs="+", default=[], help="used by none of these sweep folders")
    pr.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    pr.add_argument("--json", action="store_true")
    for q in (ls, pr):
        q.add_argument("--cache-dir", default=None, help="the cache folder (default $TRANSFERLAB_ROOT/outputs/cache)")
    args = p.parse_args(argv)
    cache = Path(args.cache_dir) if args.cache_dir else _default_cache()
    if not cache.is_dir():
        print(f"transferlab-cache: --cache-dir={str(cache)!r}: no such folder", file=sys.stderr)
        return 2
    now = time.time()
    if args.command == "ls":
        sweeps = args.sweeps if args.sweeps is not None else sorted(
            d for d in (cache.parent / "sweeps").glob("*") if d.is_dir())
        found = E.listing(cache, cache_entries_used(sweeps))
        if args.json:
            print(json.dumps([e.__dict__ for e in found], indent=2))
            return 0
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"cache {cache}: {len(found)} entries, {_size(sum(e.bytes for e in found))}")
        for col in ("kind", "key", "size", "age", "last use", "what", "used by"):
            table.add_column(col, overflow="fold")
        for e in found:
            table.add_row(e.kind, e.key, _size(e.bytes), _age(now - e.created), f"{_age(now - e.last_use)} ago",
                          escape(e.what), escape(", ".join(e.sweeps) or "–"))
        Console(width=max(Console().width, 120)).print(table)
        return 0
    try:
        older = E.parse_age(args.older_than) if args.older_than is not None else None
    except ValueError:
        print(f"transferlab-cache: --older-than={args.older_than!r}: a duration such as 7d, 12h, 30m or seconds",
              file=sys.stderr)
        return 2
    try:
        used_by = cache_entries_used(args.unused_by) if args.unused_by else None
        result = E.prune(cache, older_than_s=older, used_by=used_by, dry_run=args.dry_run, now=now)
    except ValueError as e:
        print(f"transferlab-cache: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for e in result.removed:
        print(f"{verb} {e.kind}/{e.key} ({_size(e.bytes)}, last used {_age(now - e.last_use)} ago): {e.what}")
    for e in result.in_use:
        print(f"kept {e.kind}/{e.key}: in use (a job holds its lock)")
    print(f"{verb} {len(result.removed)} entries ({_size(sum(e.bytes for e in result.removed))}), "
          f"{len(result.in_use)} in use, {result.kept} kept" + (
              f", {result.leftovers} leftovers of an interrupted prune" if result.leftovers else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
