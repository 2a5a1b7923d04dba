"""What a sweep is doing: the state of every declared point and the time left.

A point's state (done, failed with its reason, running, queued, stale, missing, dropped; the pull worker holding
it) is judged in one place, `sweep.ledger` (the sweeper, this module and the report all use it).
The sweeper's `hydra.sweeper.only=failed|missing|stale` selects points by the same states.

Time left (`SweepStatus.time_left_s`): each point still to run is priced at the median wall time of the finished
points of its own arm (its seed-group key; an older sweep.json: the same overrides but the seeds), else of its grid
at its n, else of its grid, else
of all; a running job (one point, or a vectorised group whose members each record an equal share of the group's
time) costs its members' prices minus the time it has run. The wall time left divides the compute time left by
the jobs running now.

Reads only, torch-free, and fast on 10^4 points: one pass over the result files, one `squeue` call.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from transferlab.run.identity import REPLICATES, SAMPLE_SIZE
from transferlab.sweep.ledger import (SELECTABLE, STATES, WAITING, PointEntry, PointState, SweepRecord,  # noqa: F401
                                      judge_points, judge_sweep, slurm_states)


@dataclass
class SweepStatus:
    sweep_dir: str
    name: str
    points: list[PointState] = field(default_factory=list)
    launches: list[dict] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(p.state == state for p in self.points)

    @property
    def totals(self) -> dict[str, int]:
        return {s: self.count(s) for s in STATES}

    def _jobs(self) -> list[tuple[list[PointState], float]]:
        """The running jobs: (their running points, the time the job has spent on those points so far). Points of
        one job share its id (a vectorised group's members: one pid or SLURM task). The job's time runs from its
        first start; the recorded wall time of points it finished meanwhile (a group whose members run one after
        the other) is not these points' time. Points whose job is unknown are a job each."""
        by_job: dict[str, list[PointState]] = {}
        ended: dict[str, list[PointState]] = {}  # points with a wall time, by job
        for p in self.points:
            if p.state == "running":
                by_job.setdefault(p.job or f"point:{p.name}", []).append(p)
            elif p.job and p.wall_s is not None and p.started is not None:
                ended.setdefault(p.job, []).append(p)
        jobs = []
        for job, running in by_job.items():
            elapsed = max(p.elapsed_s or 0.0 for p in running)
            starts = [p.started for p in running if p.started is not None]
            finished = [p for p in ended.get(job, []) if starts and p.started + p.wall_s > min(starts)]
            if finished:  # elapsed then counts from the earliest start of the job's points
                first = min(starts + [p.started for p in finished])
                elapsed += min(starts) - first
            jobs.append((running, max(0.0, elapsed - sum(p.wall_s or 0.0 for p in finished))))
        return jobs

    @property
    def running_jobs(self) -> int:
        """Jobs running now: the parallelism in use (a vectorised group is one job, however many members)."""
        return len(self._jobs())

    @property
    def compute_used_s(self) -> float:
        """Wall time of every finished or failed run with a result, plus what the running jobs have spent so far
        (a group's time once, not once per member)."""
        return sum(p.wall_s or 0.0 for p in self.points) + sum(spent for _, spent in self._jobs())

    def price(self) -> Callable[[PointState], float] | None:
        """The expected wall time of a point: the median wall time of the finished points of its arm (its
        overrides but the seeds), else of its grid at its n, else of its grid, else of every finished point.
        A member of a vectorised group records an equal share of its group's time, so members price members.
        None when nothing finished yet."""
        done = [p for p in self.points if p.state == "done" and p.wall_s]
        if not done:
            return None
        keys: list[Callable[[PointState], Any]] = [lambda p: p.arm, lambda p: (p.grid, p.n), lambda p: p.grid]
        tables = []
        for key in keys:
            walls: dict[Any, list[float]] = {}
            for p in done:
                walls.setdefault(key(p), []).append(float(p.wall_s or 0.0))
            tables.append({k: statistics.median(v) for k, v in walls.items()})
        overall = statistics.median(float(p.wall_s or 0.0) for p in done)

        def price(p: PointState) -> float:
            for level, (key, table) in enumerate(zip(keys, tables)):
                k = key(p)
                if (level > 0 or k is not None) and k in table:  # no arm known (older sweep.json): next level
                    return table[k]
            return overall
        return price

    def time_left_s(self) -> tuple[float | None, float | None]:
        """(compute time left, wall time left), None, None when nothing finished yet. Compute: the price
        (`price`) of every point still to run (failed, queued, stale, missing; not dropped), plus for each running
        job the prices of its running points less the time it has spent on them. Wall: the compute time over the
        jobs running now (at least one)."""
        price = self.price()
        if price is None:
            return None, None
        jobs = self._jobs()
        compute = sum(price(p) for p in self.points if p.state in WAITING)
        compute += sum(max(0.0, sum(price(p) for p in running) - spent) for running, spent in jobs)
        return compute, compute / max(1, len(jobs))

    def to_dict(self) -> dict[str, Any]:
        compute, wall = self.time_left_s()
        return {"sweep_dir": self.sweep_dir, "name": self.name, "totals": self.totals,
                "compute_used_s": self.compute_used_s, "compute_left_s": compute, "wall_left_s": wall,
                "running_jobs": self.running_jobs,
                "launches": self.launches, "points": [asdict(p) for p in self.points]}


def sweep_status(sweep_dir: str | Path, now: float | None = None) -> SweepStatus:
    """The state of every point sweep.json declares (`ledger.judge_sweep`), with its arm and n for the prices.
    FileNotFoundError without a readable sweep.json."""
    sweep_dir = Path(sweep_dir)
    try:
        record, points = judge_sweep(sweep_dir, now)
    except ValueError as e:
        raise FileNotFoundError(str(e)) from None
    entries = {e.name: e for e in record.points}
    for p in points:
        e = entries[p.name]
        arm, p.n = _arm(e.overrides)
        p.arm = e.seed_group or arm  # the identity without the seeds; an older sweep.json: its overrides but those
    status = SweepStatus(sweep_dir=str(sweep_dir), name=str(record.name or sweep_dir.name),
                         launches=[asdict(x) for x in record.launches], points=points)
    status.points.sort(key=lambda p: (STATES.index(p.state), p.name))
    return status


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _arm(overrides: Any) -> tuple[str | None, str | None]:
    """(the overrides but the replicate keys, in sorted order; the sample size's value) of a sweep.json point;
    (None, None) when the point records no overrides."""
    if not isinstance(overrides, list):
        return None, None
    ovs = [str(o) for o in overrides]
    n = next((o.split("=", 1)[1] for o in ovs if _key(o) in SAMPLE_SIZE and "=" in o), None)
    return ",".join(sorted(o for o in ovs if _key(o) not in REPLICATES)), n


def states_of(sweep_dir: str | Path, points: Iterable[Any]) -> dict[str, PointState]:
    """{name: state} of this launch's points (each with `name`, `dir`, `hash`), for the sweeper: points another
    launch still runs are not launched again, and `hydra.sweeper.only` selects by state. What earlier launches of
    the same config recorded (a failure that left no result, a submitted SLURM job) counts."""
    sweep_dir = Path(sweep_dir)
    try:
        old = {e.name: e for e in SweepRecord.read(sweep_dir).points}
    except (FileNotFoundError, ValueError):
        old = {}
    entries = []
    for p in points:
        before = old.get(p.name)
        same = before is not None and before.hash == p.hash  # a recorded failure or job of another config: not
        entries.append(PointEntry(name=p.name, dir=p.dir, hash=p.hash, **(
            {"status": before.status, "error": before.error, "job": before.job} if same else {})))
    return {st.name: st for st in judge_points(sweep_dir, entries)}
