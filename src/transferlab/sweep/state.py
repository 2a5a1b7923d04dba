"""What state each point of a sweep is in on disk, and the sweep's record: the logic behind the sweeper.

- a point is done when some result.json in the sweep folder says ok and was made under the point's fingerprint
  (`transferlab.run.identity`: everything that can change its result, input file contents included), so a folder
  named under an older naming rule still counts; done points are skipped, failed/missing/stale ones run again; a
  point that fails is recorded and the others go on;
- the sweep's record (sweep.json) lists every point of every launch with its status, written before anything is
  launched and again at the end; the sweep ends with "N ok, M failed, K skipped" and a non-zero exit if any failed.

Resuming one killed point from its last checkpoint is training.fit's job (it refuses another run's checkpoint);
before a point runs, the sweeper sets aside a result of another fingerprint and clears that point's checkpoints,
source pretraining included (`prepare_point_dir`), and with `resume=false` does so for every point: it retrains
from zero. Torch-free.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from transferlab.run.record import RESULT_FILE, RunRecord, UnsealedRecord
from transferlab.store import verified
from transferlab.store.atomic import shared_lock
from transferlab.sweep.ledger import (POINT_FILE, STARTED_FILE, Launch, PointEntry, PointMarker, Started,
                                      SweepRecord, done_by_fingerprint, folder_state, read_results)
from transferlab.sweep.points import Point

LOCK_FILE = ".sweep.lock"      # held by the process running the sweep: a second copy is refused
STALE_RESULT = "result.stale.json"
# a point's resume state: target fit, source pretraining, a tuned point's candidates (run/tuning.py), a cv point's
# fold fits (run/cv.py)
CHECKPOINT_DIRS = ("checkpoints", "source/checkpoints", "candidates", "folds")
SWEEP_PID_ENV = "TRANSFERLAB_SWEEP_PID"  # set by the sweeper for its local worker processes (parent-death check)


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


# ---------------------------------------------------------------- state on disk
def finished_runs(sweep_dir: str | Path) -> dict[str, Path]:
    """{fingerprint: folder} of every ok result.json directly below the sweep folder (`ledger.done_by_fingerprint`)."""
    return {fp: Path(sweep_dir) / folder for fp, folder in done_by_fingerprint(read_results(sweep_dir)).items()}


def adopt_renamed_folders(sweep_dir: str | Path, points: Iterable[Point]) -> list[tuple[Path, Path]]:
    """Folders named under an older rule (e.g. in command-line order) become their point's canonical folder, so a
    point keeps one folder: matched by the overrides its point.json records (the same set, in any order). Only
    folders whose canonical name is still free move. Returns the (old, new) moves."""
    sweep_dir = Path(sweep_dir)
    by_overrides: dict[frozenset, Path] = {}
    for marker in sweep_dir.glob(f"*/{POINT_FILE}"):
        read = PointMarker.read(marker.parent)
        if read is not None and isinstance(read.overrides, list):
            by_overrides.setdefault(frozenset(read.overrides), marker.parent)
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
    verified.move(path, target)  # with its checksum sidecar
    return target


def clear_checkpoints(run_dir: Path) -> None:
    """Remove the point's resume state (target fit, source pretraining, a tuned point's candidates, a cv point's
    fold fits) so nothing resumes from another run."""
    for rel in CHECKPOINT_DIRS:
        shutil.rmtree(run_dir / rel, ignore_errors=True)


def prepare_point_dir(run_dir: str | Path, point: Point, *, fresh: bool = False) -> None:
    """Before a point runs: if its folder holds another fingerprint's work (or `fresh`: `resume=false`), set the
    result aside and clear every checkpoint, source pretraining included, so the point trains from zero."""
    run_dir = Path(run_dir)
    marker = PointMarker.read(run_dir)
    old = marker.hash if marker is not None else None
    result = run_dir / RESULT_FILE
    owned_by_other = (old is not None and old != point.hash) or (
        result.exists() and folder_state(run_dir, point.hash or "")[0] == "stale")
    if fresh or owned_by_other or old is None:  # no marker: nothing proves whose checkpoints these are
        set_aside(result)
        clear_checkpoints(run_dir)
    elif _unsealed(result):  # kept for inspection as result.json.corrupt-<time>; the point runs again
        verified.set_aside(result)
    (run_dir / STARTED_FILE).unlink(missing_ok=True)
    PointMarker(name=point.name, hash=point.hash, overrides=point.overrides).write(run_dir)


def _unsealed(result: Path) -> bool:
    try:
        RunRecord.read(result)
    except UnsealedRecord:
        return True
    except (OSError, ValueError):
        return False
    return False


def mark_started(run_dir: str | Path) -> None:
    """Called by the job as it starts: lets the sweeper tell a point that never started (re-launch it) from one
    that died (failed), when a parallel launcher loses a whole batch to one dead worker."""
    Started.now(slurm_job_id()).write(run_dir)


def slurm_job_id() -> str | None:
    """This process's SLURM job as `squeue -r` names it (`<array>_<task>` for an array task), or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def was_started(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STARTED_FILE).exists()


# ---------------------------------------------------------------- the sweep's record
@dataclass
class Summary:
    """This launch's points and their statuses; `write` merges them into sweep.json, which keeps every point of
    every launch (latest status per folder, stamped with the start of the latest launch that declared it) and every
    launch's command line, host, times and counts, so the report can list failures that left no result and the
    declared points still missing, and tell the points a later launch dropped from the grid."""

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
        """"N ok, M failed, K skipped", then what this launch left alone: points another launch still runs
        (busy), points `only` did not select, and SLURM points submitted without waiting (detach)."""
        extra = [f"{self.count(s)} {word}" for s, word in (("busy", "busy elsewhere"), ("unselected", "not selected"),
                                                         ("submitted", "submitted")) if self.count(s)]
        return ", ".join([f"{self.count('ok')} ok, {self.count('failed')} failed, {self.count('skipped')} skipped",
                          *extra])

    def _point_entry(self, p: Point) -> dict[str, Any]:
        entry = asdict(p)
        if p.dir:
            entry["dir"] = os.path.relpath(p.dir, self.sweep_dir)  # relative: a moved sweep folder still reads
        return entry

    def write(self) -> Path:
        try:
            old = SweepRecord.read(self.sweep_dir)
        except (FileNotFoundError, ValueError):
            old = SweepRecord()
        points = {e.name: e for e in old.points}
        # A point this launch left alone keeps what an earlier launch of the same config recorded (its failure,
        # its job); under another config it is declared anew. Every point of this launch is stamped with its start
        # (LAUNCH_KEY): a point whose stamp is older is no longer in the grid (`declared_by_latest_launch`).
        for p in self.points:
            kept = points.get(p.name)
            if kept is None or p.status not in ("busy", "unselected") or kept.hash != p.hash:
                kept = PointEntry.from_dict(self._point_entry(p))
            points[p.name] = dataclasses.replace(kept, launch=self.start)
        launches = [x for x in old.launches if x.start != self.start]
        launches.append(Launch(argv=self.argv, start=self.start, end=self.end, host=socket.gethostname(),
                               user=os.environ.get("USER"), points=len(self.points), ok=self.count("ok"),
                               failed=self.count("failed"), skipped=self.count("skipped")))
        return SweepRecord(name=self.name, sweep_dir=self.sweep_dir, points=list(points.values()), launches=launches,
                           ok=self.count("ok"), failed=self.count("failed"),
                           skipped=self.count("skipped")).write(self.sweep_dir)

    def report(self) -> str:
        lines = [f"sweep {self.name}: {self.line}  ({self.sweep_dir})"]
        for p in self.points:
            if p.status == "failed":
                lines.append(f"  failed {p.name}: {p.error}")
        return "\n".join(lines)
