"""What a sweep is made of and what state each of its points is in: the logic behind the `transferlab` sweeper.

Hydra's basic sweeper knows one cartesian product, numbers its jobs 0..N-1 in a fresh timestamped folder, and
stops at the first failure; "you can't resume a Hydra multirun". Here:
- a sweep is a *union of grids*: `params` (shared) crossed with each of `grids` (e.g. a transfer arm over freeze
  depths and a scratch arm without one), so scratch points are not multiplied by freeze depths;
- every point has a *stable folder* named by its swept overrides in canonical (sorted) order
  (`seed=0,target.n_per_class=5,transfer.freeze=2`, whatever the order on the command line) and a *fingerprint*
  (`transferlab.identity`: everything that can change its result, input file contents included);
- a point is done when some result.json in the sweep folder says ok and was made under the same fingerprint (so a
  folder named under an older naming rule still counts); done points are skipped, failed/missing/stale ones run
  again; a point that fails is recorded and the others go on;
- a baseline grid (`transfer=scratch`) never takes `transfer` overrides meant for the transfer arms (from the
  command line or the shared params);
- the sweep's record (sweep.json) lists every point of every launch with its status, written before anything is
  launched and again at the end; the sweep ends with "N ok, M failed, K skipped" and a non-zero exit if any failed.

Resuming one killed point from its last checkpoint is fit.py's job (it refuses another run's checkpoint); before a
point runs, the sweeper sets aside a result of another fingerprint and clears that point's checkpoints, source
pretraining included (`prepare_point_dir`), and with `resume=false` does so for every point: it retrains from zero.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterable, Mapping

from transferlab.atomic import shared_lock, write_json
from transferlab.results import RESULT_FILE, read_result

POINT_FILE = "point.json"      # written by the sweeper before a point runs: its overrides and fingerprint
STARTED_FILE = "started.json"  # written by the job when it starts (pid, host): tells "never started" from "died"
SUMMARY_FILE = "sweep.json"    # the sweep's record: every point of every launch and its status, every launch
LOCK_FILE = ".sweep.lock"      # held by the process running the sweep: a second copy is refused
STALE_RESULT = "result.stale.json"
CHECKPOINT_DIRS = ("checkpoints", "source/checkpoints")  # a point's resume state: target fit, source pretraining
BASELINES = ("scratch",)
SWEEP_PID_ENV = "TRANSFERLAB_SWEEP_PID"  # set by the sweeper for its local worker processes (parent-death check)       # transfer choices that copy nothing: transfer overrides of other arms skip them
_SAFE = re.compile(r"[^A-Za-z0-9_.,=+\-]")
MAX_NAME = 150


# ---------------------------------------------------------------- identity
def recorded_fingerprint(record: Mapping[str, Any]) -> str | None:
    """The run identity a result.json was made under (`identity.fingerprint`); None for records written before
    identity covered input contents and trainer settings: those are never taken as done (nothing proves what
    data and settings made them)."""
    fp = record.get("fingerprint")
    return str(fp) if fp else None


class SweepBusy(SystemExit):
    """Another process is running a sweep into the same folder: two copies would train the same points twice and
    race on their files. One line, exit code 1, nothing launched."""


def sweep_lock(sweep_dir: Path):
    """Hold `sweep_dir/.sweep.lock` for the sweep (released by the OS if the process dies); SweepBusy if taken."""
    from filelock import Timeout

    lock = shared_lock(Path(sweep_dir) / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepBusy(f"transferlab: another sweep is running in {sweep_dir} (it holds {lock.lock_file}); "
                        f"wait for it to finish, or choose another hydra.sweep.dir") from None
    return lock


def point_name(overrides: Iterable[str]) -> str:
    """A folder name from `key=value` overrides: readable, file-system safe, and canonical: sorted by key, so the
    same point has one folder whatever the order of the command-line arguments."""
    parts = sorted((o.lstrip("+~") for o in overrides), key=lambda o: (o.split("=", 1)[0], o))
    name = _SAFE.sub("_", ",".join(parts)) or "point"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 17]}-{hashlib.sha1(name.encode()).hexdigest()[:16]}"
    return name


# ---------------------------------------------------------------- expansion
@dataclass
class Point:
    overrides: list[str]          # every override of the job (swept and constant)
    name: str                     # folder name, from the swept overrides only
    grid: str | None = None
    hash: str | None = None
    dir: str | None = None
    status: str = "pending"       # pending | skipped | ok | failed
    error: str | None = None


def _as_override_strings(params: Mapping[str, Any] | None) -> list[str]:
    out = []
    for k, v in (params or {}).items():
        v = "null" if v is None else v
        if isinstance(v, bool):
            v = str(v).lower()
        out.append(f"{k}={v}")
    return out


def expand(parse, params: Mapping[str, Any] | None, grids: Mapping[str, Mapping[str, Any] | None] | None,
           arguments: list[str]) -> list[Point]:
    """Points of a sweep: for each grid, params x grid x CLI arguments (cartesian); the union, duplicates dropped.

    `parse` turns override strings into Hydra `Override`s. CLI arguments replace a key's values where the key is
    set; a key that only some grids set (an arm-specific key) is replaced in those grids and not added to others.
    Folder names use the keys the preset sweeps (params and grids) and the CLI's multi-value sweeps, so shrinking
    a sweep from the CLI (`seed=0`) lands on the same folders as the full sweep.

    A baseline grid (its own `transfer` is one of BASELINES) takes no `transfer` / `transfer.*` value from the
    shared params or the CLI: those are meant for the transfer arms (`-m experiment=freeze_vs_n transfer.cut=2`
    must not give a "scratch" point with transferred weights).
    """
    shared = parse(_as_override_strings(params))
    grid_items = [(g, parse(_as_override_strings(spec))) for g, spec in (grids or {}).items() if spec is not None]
    if grids and not grid_items:
        raise ValueError("hydra.sweeper.grids: every grid is null; keep at least one")
    grid_items = grid_items or [(None, [])]
    cli = parse(list(arguments))
    arm_keys = {o.get_key_element() for _, ovs in grid_items for o in ovs}
    named = {o.get_key_element() for o in shared} | arm_keys | {
        o.get_key_element() for o in cli if o.is_sweep_override()}

    points, seen = [], set()
    for grid, grid_ovs in grid_items:
        baseline = _is_baseline(grid_ovs)
        merged: OrderedDict[str, Any] = OrderedDict()
        own_keys = {g.get_key_element() for g in grid_ovs}
        for o in [*grid_ovs, *(s for s in shared if s.get_key_element() not in own_keys)]:
            if baseline and o.get_key_element() not in own_keys and _is_transfer_key(o.get_key_element()):
                continue  # a transfer setting of the other arms
            merged[o.get_key_element()] = o
        own = set(merged)
        for o in cli:
            key = o.get_key_element()
            if key in arm_keys and key not in own:
                continue  # another arm's key
            if baseline and _is_transfer_key(key):
                continue  # meant for the transfer arms, never the baseline
            merged[key] = o
        choices = []
        for key, o in merged.items():
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise ValueError(f"{key}: the transferlab sweeper takes lists and range(), not {o.value_type}")
                choices.append([(key, f"{key}={v}") for v in o.sweep_string_iterator()])
            else:
                choices.append([(key, f"{key}={o.get_value_element_as_str()}")])
        for combo in product(*choices):
            overrides = [s for _, s in combo]
            ident = tuple(sorted(overrides))
            if ident in seen:
                continue
            seen.add(ident)
            swept = [s for k, s in combo if k in named]  # a sweep of one point (nothing swept): name it by all
            points.append(Point(overrides=overrides, name=point_name(swept or overrides), grid=grid))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two points share the folder name {dupes[0]!r}; sweep that key from the preset instead")
    return points


def _is_transfer_key(key: str) -> bool:
    return key == "transfer" or key.startswith("transfer.")


def _is_baseline(grid_overrides) -> bool:
    return any(o.get_key_element() == "transfer" and not o.is_sweep_override()
               and o.get_value_element_as_str() in BASELINES for o in grid_overrides)


# ---------------------------------------------------------------- state on disk
def point_status(run_dir: str | Path, expected_hash: str) -> tuple[str, str | None]:
    """('ok'|'failed'|'stale'|'missing', error) of a point folder, judged by its result.json and config hash."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return "missing", None
    try:
        record = read_result(path)
    except (OSError, ValueError) as e:
        return "failed", f"unreadable {RESULT_FILE}: {e}"
    if recorded_fingerprint(record) != expected_hash:
        return "stale", None
    if record.get("status") == "ok":
        return "ok", None
    return "failed", record.get("error") or f"status={record.get('status')!r}"


def finished_runs(sweep_dir: str | Path) -> dict[str, Path]:
    """{fingerprint: folder} of every ok result.json directly below the sweep folder: a point is done when any
    folder holds its fingerprint's result (e.g. one named by an older rule, or by a launch that swept other keys)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}")):
        try:
            record = read_result(path)
        except (OSError, ValueError):
            continue
        fp = recorded_fingerprint(record)
        if fp and record.get("status") == "ok":
            found.setdefault(fp, path.parent)
    return found


def adopt_renamed_folders(sweep_dir: str | Path, points: Iterable[Point]) -> list[tuple[Path, Path]]:
    """Folders named under an older rule (e.g. in command-line order) become their point's canonical folder, so a
    point keeps one folder: matched by the overrides its point.json records (the same set, in any order). Only
    folders whose canonical name is still free move. Returns the (old, new) moves."""
    sweep_dir = Path(sweep_dir)
    by_overrides: dict[frozenset, Path] = {}
    for marker in sweep_dir.glob(f"*/{POINT_FILE}"):
        try:
            overrides = json.loads(marker.read_text()).get("overrides")
        except (OSError, ValueError):
            continue
        if isinstance(overrides, list):
            by_overrides.setdefault(frozenset(overrides), marker.parent)
    moves = []
    for p in points:
        canonical = Path(p.dir or sweep_dir / p.name)
        old = by_overrides.get(frozenset(p.overrides))
        if old is not None and old != canonical and not canonical.exists():
            old.rename(canonical)
            moves.append((old, canonical))
    return moves


def set_aside(path: Path) -> Path | None:
    """Rename a result that no longer counts (another fingerprint, or `resume=false`) to result.stale[.k].json, never
    over an older one: a finished result is kept, just no longer read as this point's."""
    if not path.exists():
        return None
    target = path.with_name(STALE_RESULT)
    k = 2
    while target.exists():
        target = path.with_name(f"result.stale.{k}.json")
        k += 1
    path.replace(target)
    return target


def clear_checkpoints(run_dir: Path) -> None:
    """Remove the point's resume state (target fit and source pretraining) so nothing resumes from another run."""
    for rel in CHECKPOINT_DIRS:
        shutil.rmtree(run_dir / rel, ignore_errors=True)


def prepare_point_dir(run_dir: str | Path, point: Point, *, fresh: bool = False) -> None:
    """Before a point runs: if its folder holds another fingerprint's work (or `fresh`: `resume=false`), set the
    result aside and clear every checkpoint, source pretraining included, so the point trains from zero."""
    run_dir = Path(run_dir)
    marker = run_dir / POINT_FILE
    old = None
    if marker.exists():
        try:
            old = json.loads(marker.read_text()).get("hash")
        except (OSError, ValueError):
            old = None
    result = run_dir / RESULT_FILE
    owned_by_other = (old is not None and old != point.hash) or (
        result.exists() and point_status(run_dir, point.hash or "")[0] == "stale")
    if fresh or owned_by_other or old is None:  # no marker: nothing proves whose checkpoints these are
        set_aside(result)
        clear_checkpoints(run_dir)
    (run_dir / STARTED_FILE).unlink(missing_ok=True)
    write_json(marker, {"name": point.name, "hash": point.hash, "overrides": point.overrides})


def mark_started(run_dir: str | Path) -> None:
    """Called by the job as it starts: lets the sweeper tell a point that never started (re-launch it) from one
    that died (failed), when a parallel launcher loses a whole batch to one dead worker."""
    write_json(Path(run_dir) / STARTED_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                              "start": time.time()})


def was_started(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STARTED_FILE).exists()


# ---------------------------------------------------------------- the sweep's record
@dataclass
class Summary:
    """This launch's points and their statuses; `write` merges them into sweep.json, which keeps every point of
    every launch (latest status per folder) and every launch's command line, host, times and counts, so the
    report can list failures that left no result and the declared points still missing."""

    name: str
    sweep_dir: str
    points: list[Point] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.time)
    end: float | None = None

    def count(self, status: str) -> int:
        return sum(p.status == status for p in self.points)

    @property
    def line(self) -> str:
        return f"{self.count('ok')} ok, {self.count('failed')} failed, {self.count('skipped')} skipped"

    def _point_entry(self, p: Point) -> dict[str, Any]:
        entry = asdict(p)
        if p.dir:
            entry["dir"] = os.path.relpath(p.dir, self.sweep_dir)  # relative: a moved sweep folder still reads
        return entry

    def write(self) -> Path:
        path = Path(self.sweep_dir) / SUMMARY_FILE
        try:
            old = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            old = {}
        points = {e.get("name"): e for e in old.get("points", []) if isinstance(e, dict)}
        points.update({p.name: self._point_entry(p) for p in self.points})
        launches = [x for x in old.get("launches", []) if isinstance(x, dict) and x.get("start") != self.start]
        launches.append({"argv": self.argv, "start": self.start, "end": self.end, "host": socket.gethostname(),
                         "user": os.environ.get("USER"), "points": len(self.points), "ok": self.count("ok"),
                         "failed": self.count("failed"), "skipped": self.count("skipped")})
        write_json(path, {"name": self.name, "sweep_dir": self.sweep_dir, "ok": self.count("ok"),
                          "failed": self.count("failed"), "skipped": self.count("skipped"),
                          "launches": launches, "points": list(points.values())})
        return path

    def report(self) -> str:
        lines = [f"sweep {self.name}: {self.line}  ({self.sweep_dir})"]
        for p in self.points:
            if p.status == "failed":
                lines.append(f"  failed {p.name}: {p.error}")
        return "\n".join(lines)
