"""What a sweep is made of and what state each of its points is in: the logic behind the `transferlab` sweeper.

Hydra's basic sweeper knows one cartesian product, numbers its jobs 0..N-1 in a fresh timestamped folder, and
stops at the first failure; "you can't resume a Hydra multirun". Here:
- a sweep is a *union of grids*: `params` (shared) crossed with each of `grids` (e.g. a transfer arm over freeze
  depths and a scratch arm without one), so scratch points are not multiplied by freeze depths;
- every point has a *stable folder* named by its swept overrides (`transfer.freeze=2,target.n_per_class=5,seed=0`)
  and a *config hash*, so re-running the same sweep finds what is already done;
- a point is done when its result.json says ok and was produced by the same config (hash); done points are
  skipped, failed/missing/stale ones run again; a point that fails is recorded and the others go on;
- the sweep ends with "N ok, M failed, K skipped" (also in sweep.json) and a non-zero exit if any failed.

Resuming one killed point from its last checkpoint is fit.py's job (it refuses another config's checkpoint); the
sweeper clears a point folder's checkpoints when the point's config changed (`prepare_point_dir`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterable, Mapping

from transferlab.atomic import write_json
from transferlab.results import RESULT_FILE, read_result

POINT_FILE = "point.json"      # written by the sweeper before a point runs: its overrides and config hash
SUMMARY_FILE = "sweep.json"    # written at the end of a sweep: every point and its status
LOCK_FILE = ".sweep.lock"      # held by the process running the sweep: a second copy is refused
STALE_RESULT = "result.stale.json"
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
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(sweep_dir) / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepBusy(f"transferlab: another sweep is running in {sweep_dir} (it holds {lock.lock_file}); "
                        f"wait for it to finish, or choose another hydra.sweep.dir") from None
    return lock


def point_name(overrides: Iterable[str]) -> str:
    """A folder name from `key=value` overrides: readable, file-system safe, stable for the same overrides."""
    parts = [o.lstrip("+~") for o in overrides]
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
        merged: OrderedDict[str, Any] = OrderedDict()
        for o in [*grid_ovs, *(s for s in shared if s.get_key_element() not in {g.get_key_element() for g in grid_ovs})]:
            merged[o.get_key_element()] = o
        own = set(merged)
        for o in cli:
            key = o.get_key_element()
            if key in arm_keys and key not in own:
                continue  # another arm's key
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


def prepare_point_dir(run_dir: str | Path, point: Point) -> None:
    """Before a point runs: if its folder holds another config's work, set that aside so nothing resumes from it.

    A stale result.json is renamed (report globs never see it), stale checkpoints are removed.
    """
    run_dir = Path(run_dir)
    marker = run_dir / POINT_FILE
    if marker.exists():
        try:
            old = json.loads(marker.read_text()).get("hash")
        except (OSError, ValueError):
            old = None
        if old != point.hash:
            if (run_dir / RESULT_FILE).exists():
                (run_dir / RESULT_FILE).replace(run_dir / STALE_RESULT)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    elif (run_dir / RESULT_FILE).exists() and point_status(run_dir, point.hash or "")[0] == "stale":
        (run_dir / RESULT_FILE).replace(run_dir / STALE_RESULT)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    write_json(marker, {"name": point.name, "hash": point.hash, "overrides": point.overrides})


# ---------------------------------------------------------------- summary
@dataclass
class Summary:
    name: str
    sweep_dir: str
    points: list[Point] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(p.status == status for p in self.points)

    @property
    def line(self) -> str:
        return f"{self.count('ok')} ok, {self.count('failed')} failed, {self.count('skipped')} skipped"

    def write(self) -> Path:
        path = Path(self.sweep_dir) / SUMMARY_FILE
        write_json(path, {"name": self.name, "sweep_dir": self.sweep_dir, "ok": self.count("ok"),
                          "failed": self.count("failed"), "skipped": self.count("skipped"),
                          "points": [asdict(p) for p in self.points]})
        return path

    def report(self) -> str:
        lines = [f"sweep {self.name}: {self.line}  ({self.sweep_dir})"]
        for p in self.points:
            if p.status == "failed":
                lines.append(f"  failed {p.name}: {p.error}")
        return "\n".join(lines)
