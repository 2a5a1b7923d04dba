"""What a sweep is doing: the state of every declared point, judged from what is on disk, and the time left.

A point's state, from its folders and the sweep's record (sweep.json), in this order:
- `done`: some folder of the sweep holds an ok result.json of the point's fingerprint;
- `failed`: its own result.json (same fingerprint) says failed, or its job started (started.json) and is gone
  without a result (killed, timed out, out of memory), or the sweeper recorded a failure that left no result
  (a config error);
- `running`: its job started and is alive (the pid on this host, or its SLURM job in `squeue`);
- `queued`: submitted to SLURM (detached) and waiting in the queue;
- `stale`: its folder holds a result of another fingerprint (finished under other settings or data);
- `missing`: nothing yet;
- pull mode (`hydra/launcher=pull`): a point not done names the worker whose claim holds it (`worker`);
- `dropped`: it would be failed, stale or missing, but the latest launch no longer declares it (a later launch of
  the same folder swept a smaller grid), so nothing will run it: it is left out of the time left. A point the
  latest launch dropped that is done, running or queued keeps that state, with `dropped` set.
The sweeper's `hydra.sweeper.only=failed|missing|stale` selects points by the same states.

Time left (`SweepStatus.time_left_s`): each point still to run is priced at the median wall time of the finished
points of its own arm (the same overrides but for the seeds), else of its grid at its n, else of its grid, else
of all; a running job (one point, or a vectorised group whose members each record an equal share of the group's
time) costs its members' prices minus the time it has run. The wall time left divides the compute time left by
the jobs running now.

Reads only, torch-free, and fast on 10^4 points: one pass over the result files, one `squeue` call.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from transferlab.run.identity import REPLICATES, SAMPLE_SIZE
from transferlab.run.record import RESULT_FILE, RunRecord
from transferlab.sweep.state import STARTED_FILE, SUMMARY_FILE, declared_by_latest_launch, recorded_fingerprint

STATES = ("failed", "running", "queued", "stale", "missing", "dropped", "done")  # the order a table shows them in
SELECTABLE = ("failed", "missing", "stale")  # what `hydra.sweeper.only` may ask for
WAITING = ("failed", "queued", "stale", "missing")  # what is still to run (queued: its SLURM job will)
SLURM_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


@dataclass
class PointState:
    name: str
    state: str                        # one of STATES
    reason: str | None = None         # why failed / stale; where it runs
    job: str | None = None            # SLURM job id, or pid@host
    elapsed_s: float | None = None    # running: since its job started
    wall_s: float | None = None       # done or failed with a result: the run's own wall time
    folder: str | None = None         # where its result is (another folder's when done there)
    grid: str | None = None           # the sweeper grid it belongs to (scratch, transfer, ...)
    arm: str | None = None            # its overrides but the replicate keys (seeds): the runs pooled as one arm
    n: str | None = None              # its sample-size override's value (target.n_per_class), if it sets one
    started: float | None = None      # when its job last started (started.json), seconds since the epoch
    dropped: bool = False             # not in the latest launch's grid (see the module docstring)
    worker: str | None = None         # pull mode: the worker whose claim holds it (transferlab.sweep.pull)


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _results(sweep_dir: Path) -> dict[str, RunRecord | str]:
    """{folder name: RunRecord, or the reason it could not be read} for every result.json of the sweep."""
    out: dict[str, RunRecord | str] = {}
    for path in sweep_dir.glob(f"*/{RESULT_FILE}"):
        try:
            out[path.parent.name] = RunRecord.read(path)
        except (OSError, ValueError) as e:
            out[path.parent.name] = f"unreadable {RESULT_FILE}: {e}"
    return out


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: SLURM state} of the jobs `squeue` still knows (array tasks as `<array>_<task>`); {} without SLURM."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids or shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join({i.split("_")[0] for i in ids})],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a zombie waiting for its parent has finished
        return Path(f"/proc/{int(pid)}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _started(folder: Path) -> dict | None:
    data = _read_json(folder / STARTED_FILE)
    return data if isinstance(data, dict) else None


def _job_of(started: Mapping | None, entry: Mapping) -> str | None:
    if started and started.get("slurm_job"):
        return str(started["slurm_job"])
    if entry.get("job"):
        return str(entry["job"])
    if started and started.get("pid"):
        return f"{started['pid']}@{started.get('host')}"
    return None


def _alive(started: Mapping, job: str | None, queue: Mapping[str, str], host: str) -> bool | None:
    """Is the job of this started.json still running? None when this machine cannot tell (another host, no
    SLURM to ask)."""
    if started.get("slurm_job"):
        if shutil.which("squeue") is None:
            return None
        return queue.get(str(started["slurm_job"])) in SLURM_ALIVE
    if started.get("host") == host:
        return _pid_alive(started.get("pid"))
    return None


def _record(sweep_dir: Path) -> dict:
    record = _read_json(sweep_dir / SUMMARY_FILE)
    if not isinstance(record, dict) or not isinstance(record.get("points"), list):
        raise FileNotFoundError(f"{sweep_dir / SUMMARY_FILE}: no sweep record here (is this a sweep folder of "
                                "`python -m transferlab.train -m ...`?)")
    return record


def judge_points(sweep_dir: str | Path, entries: Mapping[str, Mapping], now: float | None = None) -> list[PointState]:
    """The state of each point {name: {"dir", "hash", and from sweep.json "status", "error", "job"}}."""
    sweep_dir = Path(sweep_dir)
    now = time.time() if now is None else now
    host = socket.gethostname()
    results = _results(sweep_dir)
    ok_by_fp: dict[str, str] = {}
    for folder, rec in sorted(results.items()):
        if isinstance(rec, RunRecord) and rec.status == "ok" and recorded_fingerprint(rec):
            ok_by_fp.setdefault(str(recorded_fingerprint(rec)), folder)
    started = {name: _started(sweep_dir / Path(str(e.get("dir") or name)).name) for name, e in entries.items()}
    queue = slurm_states([_job_of(started[n], e) for n, e in entries.items()
                          if (started[n] or {}).get("slurm_job") or e.get("job")])
    judged = [_judge(name, e, results, ok_by_fp, started[name], queue, host, now) for name, e in entries.items()]
    _claimed_by(sweep_dir, entries, judged)
    for p in judged:
        try:
            p.started = float((started[p.name] or {})["start"])
        except (KeyError, TypeError, ValueError):
            pass
    return judged


def _claimed_by(sweep_dir: Path, entries: Mapping[str, Mapping], judged: list[PointState]) -> None:
    """Pull mode: name the worker holding each point not yet done (its claim, in the unit's leader folder; members
    of a vectorised group share their leader's job). A claimed point whose worker died is taken over by another
    worker once the claim's heartbeat has stopped for `expire_s`, or at once when its worker released it, while
    workers are left."""
    from transferlab.sweep.pull import read_claim

    holder: dict[str, str] = {}
    for p in judged:
        if p.state not in ("running", "failed", "missing"):  # done, queued or stale: no claim to show
            continue
        claim = read_claim(sweep_dir / Path(str(entries[p.name].get("dir") or p.name)).name)
        if claim and not claim.get("ended"):
            p.worker = f"{claim.get('worker')} ({claim.get('slurm_job') or claim.get('pid')}@{claim.get('host')})"
            if p.job:
                holder[p.job] = p.worker
            if claim.get("released") and p.state != "running":
                p.reason = f"released by pull worker {p.worker} (told to stop): the next worker to look takes it over"
            elif p.state == "failed":
                p.reason = f"{p.reason}; its pull claim is taken over once its heartbeat stops"
            elif p.state == "missing":
                p.reason = f"claimed by pull worker {p.worker}, not started yet"
    for p in judged:
        if p.worker is None and p.state == "running" and p.job in holder:
            p.worker = holder[p.job]


def sweep_status(sweep_dir: str | Path, now: float | None = None) -> SweepStatus:
    """The state of every point sweep.json declares (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    record = _record(sweep_dir)
    entries = {e.get("name"): e for e in record["points"] if isinstance(e, dict) and e.get("name")}
    status = SweepStatus(sweep_dir=str(sweep_dir), name=str(record.get("name") or sweep_dir.name),
                         launches=[x for x in record.get("launches", []) if isinstance(x, dict)],
                         points=judge_points(sweep_dir, entries, now))
    declared = declared_by_latest_launch(record)
    for p in status.points:
        entry = entries.get(p.name) or {}
        p.grid = entry.get("grid")
        p.arm, p.n = _arm(entry.get("overrides"))
        if declared is not None and p.name not in declared:
            _drop(p)
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


def _drop(p: PointState) -> None:
    """A point the latest launch does not declare: nothing will run it. A result it has, or a job still running
    it, still counts; otherwise it is `dropped`."""
    p.dropped = True
    if p.state in ("failed", "stale", "missing"):
        was = p.state + (f": {p.reason}" if p.reason else "")
        p.state, p.reason = "dropped", f"not in the latest launch's grid (was {was})"
    elif p.state == "done":
        p.reason = p.reason or "not in the latest launch's grid"


def _judge(name: str, entry: Mapping, results: Mapping[str, RunRecord | str],
           ok_by_fp: Mapping[str, str], started: Mapping | None, queue: Mapping[str, str], host: str,
           now: float) -> PointState:
    folder = Path(str(entry.get("dir") or name)).name
    want = entry.get("hash")
    job = _job_of(started, entry)
    if want and want in ok_by_fp:
        rec = results[ok_by_fp[want]]
        return PointState(name, "done", job=job, wall_s=getattr(rec, "wall_s", None), folder=ok_by_fp[want])
    own = results.get(folder)
    if isinstance(own, str):
        return PointState(name, "failed", reason=own, job=job, folder=folder)
    if own is not None and recorded_fingerprint(own) == want and own.status != "ok":
        return PointState(name, "failed", reason=own.error or f"status={own.status!r}", job=job,
                          wall_s=own.wall_s, folder=folder)
    if started and (own is None or recorded_fingerprint(own) != want):
        alive = _alive(started, job, queue, host)
        elapsed = now - float(started.get("start") or now)
        if alive:
            return PointState(name, "running", reason=f"on {started.get('host')}", job=job, elapsed_s=elapsed)
        if alive is None:
            return PointState(name, "running", job=job, elapsed_s=elapsed,
                              reason=f"on {started.get('host')} (cannot check from {host})")
        if own is None:
            return PointState(name, "failed", job=job, reason="its job died without a result (killed, timed out, "
                                                              "out of memory?)")
    if own is not None:  # a result of another fingerprint
        return PointState(name, "stale", reason="finished under another fingerprint (other settings or data)",
                          job=job, folder=folder)
    if entry.get("job") and queue.get(str(entry["job"])) in SLURM_ALIVE:
        return PointState(name, "queued", reason=f"SLURM {queue[str(entry['job'])].lower()}", job=job)
    if entry.get("status") == "failed":
        return PointState(name, "failed", reason=entry.get("error") or "failed without a result", job=job)
    return PointState(name, "missing", job=job)


def states_of(sweep_dir: str | Path, points: Iterable[Any]) -> dict[str, PointState]:
    """{name: state} of this launch's points (each with `name`, `dir`, `hash`), for the sweeper: points another
    launch still runs are not launched again, and `hydra.sweeper.only` selects by state. What earlier launches of
    the same config recorded (a failure that left no result, a submitted SLURM job) counts."""
    sweep_dir = Path(sweep_dir)
    try:
        old = {e.get("name"): e for e in _record(sweep_dir)["points"] if isinstance(e, dict)}
    except FileNotFoundError:
        old = {}
    entries = {}
    for p in points:
        before = old.get(p.name) or {}
        same = before.get("hash") == p.hash  # a recorded failure or job of another config does not count
        entries[p.name] = {"dir": p.dir, "hash": p.hash, **({k: before.get(k) for k in ("status", "error", "job")}
                                                          if same else {})}
    return {st.name: st for st in judge_points(sweep_dir, entries)}
