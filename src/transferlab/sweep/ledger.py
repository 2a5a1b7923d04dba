"""The sweep's ledger: the files a sweep keeps about its points, typed, and the one judgement of a point's state.

Files (names and schemas only here; who writes them says why):
- `sweep.json` in the sweep folder (`SweepRecord`): every point of every launch (`PointEntry`: its folder,
  overrides, fingerprint, the sweeper's status and error, a detached SLURM job, the launch that last declared it)
  and every launch's command line, host, times and counts (`Launch`). Written by the sweeper (`sweep.state.Summary`).
- `point.json` in a point's folder (`PointMarker`): the overrides and fingerprint it was last prepared for.
- `started.json` in a point's folder (`Started`): pid, host, start, SLURM job of the job that last started it.
- `group.json` in a vectorised group's leader folder (`GroupFile`): every member's folder, fingerprint and
  replicate values (`sweep.groups` writes it, `sweep.group_job` reads it).

A point's state (`judge_sweep`, `judge_points`), one vocabulary for the sweeper, `transferlab-status` and the
report, judged from its folders and its entry, in this order:
- `done`: some folder of the sweep holds an ok result.json of the point's fingerprint;
- `failed`, with its reason: its own result.json (same fingerprint) says failed, or cannot be read or fails its
  seal (tampered or corrupt), or its job started (started.json) and is gone without a result (the sweeper's
  recorded error when it has one, e.g. a full disk; else "its job died without a result"), or the sweeper recorded
  a failure that left no result (a config error);
- `running`: its job started and is alive (the pid on this host, or its SLURM job in `squeue`; another host's pid
  cannot be checked and counts as running);
- `queued`: submitted to SLURM (detached) and waiting in the queue;
- `stale`: its folder holds a result of another fingerprint (finished under other settings or data);
- `missing`: nothing yet, or its result.json is gone since the sweeper recorded it ok (lost);
- `dropped`: it would be failed, stale or missing, but the latest launch no longer declares it (a later launch of
  the same folder swept a smaller grid), so nothing will run it. A point the latest launch dropped that is done,
  running or queued keeps that state, with `dropped` set;
- pull mode (`hydra/launcher=pull`): a point not done names the worker whose claim holds it (`worker`).

Reads only (but `Started.write`, `PointMarker.write`, `GroupFile.write`, `SweepRecord.write`), torch-free, and fast
on 10^4 points: one pass over the result files, one `squeue` call.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from transferlab.run.record import RESULT_FILE, RunRecord
from transferlab.store.atomic import write_json

SWEEP_FILE = "sweep.json"      # the sweep's record: every point of every launch and its status, every launch
POINT_FILE = "point.json"      # written by the sweeper before a point runs: its overrides and fingerprint
STARTED_FILE = "started.json"  # written by the job when it starts (pid, host): tells "never started" from "died"
GROUP_FILE = "group.json"      # a vectorised group's members, in its leader's folder
LAUNCH_KEY = "launch"          # in each sweep.json point: the start of the latest launch that declared it

STATES = ("failed", "running", "queued", "stale", "missing", "dropped", "done")  # the order a table shows them in
SELECTABLE = ("failed", "missing", "stale")  # what `hydra.sweeper.only` may ask for
WAITING = ("failed", "queued", "stale", "missing")  # what is still to run (queued: its SLURM job will)
SLURM_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _known(cls, data: Mapping) -> dict:
    """The keys of `data` that are fields of the dataclass `cls` (older and newer files carry others)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# ---------------------------------------------------------------- the files
@dataclass
class PointEntry:
    """One point of sweep.json (a `sweep.points.Point` as the sweeper recorded it, plus its launch stamp)."""

    name: str
    dir: str | None = None          # its folder, relative to the sweep folder (older files: absolute)
    hash: str | None = None         # its fingerprint (`run.identity.fingerprint`)
    overrides: list[str] | None = None
    grid: str | None = None
    status: str | None = None       # the sweeper's: pending | skipped | ok | failed | busy | unselected | submitted
    error: str | None = None        # the sweeper's recorded error (a failure that may have left no result)
    job: str | None = None          # the SLURM job a detached launch submitted it as
    seed_group: str | None = None   # its identity without the replicate keys (`identity.seed_group_key`): its arm
    launch: float | None = None     # LAUNCH_KEY: the start of the latest launch that declared it

    @classmethod
    def from_dict(cls, data: Mapping) -> "PointEntry":
        return cls(**_known(cls, data))

    @property
    def folder(self) -> str:
        """Its folder's name in the sweep folder."""
        return Path(str(self.dir or self.name)).name


@dataclass
class Launch:
    argv: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    host: str | None = None
    user: str | None = None
    points: int | None = None
    ok: int | None = None
    failed: int | None = None
    skipped: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> "Launch":
        return cls(**_known(cls, data))


@dataclass
class SweepRecord:
    """sweep.json: the sweep's points (every launch's, latest status per point) and its launches, in order."""

    name: str | None = None
    sweep_dir: str | None = None
    points: list[PointEntry] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    ok: int | None = None
    failed: int | None = None
    skipped: int | None = None

    @classmethod
    def read(cls, sweep_dir: str | Path) -> "SweepRecord":
        """FileNotFoundError when the folder has no sweep.json; ValueError when it cannot be read as one."""
        path = Path(sweep_dir) / SWEEP_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no sweep record here (is this a sweep folder of "
                                    "`python -m transferlab.train -m ...`?)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} unreadable: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise ValueError(f"{path} unreadable: no list of points")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping) -> "SweepRecord":
        points = [PointEntry.from_dict(e) for e in data.get("points") or [] if isinstance(e, dict) and e.get("name")]
        launches = [Launch.from_dict(x) for x in data.get("launches") or [] if isinstance(x, dict)]
        return cls(**{**_known(cls, data), "points": points, "launches": launches})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, sweep_dir: str | Path) -> Path:
        path = Path(sweep_dir) / SWEEP_FILE
        write_json(path, self.to_dict())
        return path

    def declared_by_latest_launch(self) -> set[str] | None:
        """Names of the points the latest launch declared (its grid): each launch stamps its points with its start
        (`sweep.state.Summary.write`), so a point declared only by earlier launches was dropped from the grid (e.g.
        `target.n_per_class=1,2,5`, then `=1,2`). None when that cannot be told: no launch recorded, or the latest
        launch stamped no point (a sweep.json written before launches stamped their points)."""
        launches = [x for x in self.launches if x.start is not None]
        if not launches:
            return None
        latest = launches[-1].start  # launches are appended in the order they ran
        names = {p.name for p in self.points if p.launch == latest}
        return names or None


@dataclass
class PointMarker:
    """point.json: what the sweeper last prepared a point's folder for."""

    name: str | None = None
    hash: str | None = None
    overrides: list[str] | None = None

    @classmethod
    def read(cls, run_dir: str | Path) -> "PointMarker | None":
        data = _read_json(Path(run_dir) / POINT_FILE)
        return cls(**_known(cls, data)) if isinstance(data, dict) else None

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / POINT_FILE, asdict(self))


@dataclass
class Started:
    """started.json: the job that last started a point (a pid on a host, or a SLURM job)."""

    pid: int | None = None
    host: str | None = None
    start: float | None = None
    slurm_job: str | None = None

    @classmethod
    def read(cls, run_dir: str | Path) -> "Started | None":
        data = _read_json(Path(run_dir) / STARTED_FILE)
        return cls(**_known(cls, data)) if isinstance(data, dict) else None

    @classmethod
    def now(cls, slurm_job: str | None) -> "Started":
        return cls(pid=os.getpid(), host=socket.gethostname(), start=time.time(), slurm_job=slurm_job)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / STARTED_FILE, asdict(self))

    def job(self, entry: PointEntry | None = None) -> str | None:
        """Its SLURM job, else the job the sweeper recorded, else pid@host."""
        if self.slurm_job:
            return str(self.slurm_job)
        if entry is not None and entry.job:
            return str(entry.job)
        return f"{self.pid}@{self.host}" if self.pid else None


@dataclass
class GroupMember:
    name: str
    dir: str
    fingerprint: str
    seed_group: str | None = None  # the identity without the replicate keys (`identity.seed_group_key`)
    replicates: dict[str, Any] = field(default_factory=dict)  # its resolved seed, data_seed, pretrain.seed

    @classmethod
    def from_dict(cls, data: Mapping) -> "GroupMember":
        return cls(**_known(cls, data))


@dataclass
class GroupFile:
    """group.json: the members of a vectorised seed group, in order (the leader first)."""

    members: list[GroupMember] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path) -> "GroupFile":
        """ValueError when the file is not a group file with members (each a dir, fingerprint and replicates)."""
        data = _read_json(Path(path))
        try:
            members = data["members"]
            if not members or not all({"dir", "fingerprint", "replicates"} <= set(m) for m in members):
                raise ValueError("no members")
            return cls([GroupMember.from_dict({"name": Path(str(m["dir"])).name, **m}) for m in members])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: not a group file the sweeper wrote") from None

    def write(self, path: str | Path) -> Path:
        write_json(Path(path), asdict(self))
        return Path(path)


# ---------------------------------------------------------------- the judgement
@dataclass
class PointState:
    name: str
    state: str                        # one of STATES
    reason: str | None = None         # why failed / stale / dropped; where it runs
    job: str | None = None            # SLURM job id, or pid@host
    elapsed_s: float | None = None    # running: since its job started
    wall_s: float | None = None       # done or failed with a result: the run's own wall time
    folder: str | None = None         # where its result is (another folder's when done there)
    grid: str | None = None           # the sweeper grid it belongs to (scratch, transfer, ...)
    arm: str | None = None            # its seed-group key (older sweep.json: its overrides but the seeds)
    n: str | None = None              # its sample-size override's value (target.n_per_class), if it sets one
    started: float | None = None      # when its job last started (started.json), seconds since the epoch
    dropped: bool = False             # not in the latest launch's grid (see the module docstring)
    worker: str | None = None         # pull mode: the worker whose claim holds it (transferlab.sweep.pull)


def read_results(sweep_dir: str | Path) -> dict[str, RunRecord | str]:
    """{folder name: RunRecord, or the reason it could not be read} for every result.json of the sweep."""
    return {path.parent.name: read_record(path) for path in Path(sweep_dir).glob(f"*/{RESULT_FILE}")}


def read_record(path: Path) -> RunRecord | str:
    """The record in a result.json, or why it cannot be read (a record failing its seal included: tampered or
    corrupt)."""
    try:
        return RunRecord.read(path)
    except (OSError, ValueError) as e:
        return f"unreadable {RESULT_FILE}: {e}"


def done_by_fingerprint(results: Mapping[str, RunRecord | str]) -> dict[str, str]:
    """{fingerprint: folder} of the ok results among `read_results`' (the first folder in name order): a point is
    done when any folder holds an ok result of its fingerprint (e.g. one named by an older rule, or by a launch
    that swept other keys)."""
    out: dict[str, str] = {}
    for folder, rec in sorted(results.items()):
        if isinstance(rec, RunRecord) and rec.status == "ok" and recorded_fingerprint(rec):
            out.setdefault(str(recorded_fingerprint(rec)), folder)
    return out


def recorded_fingerprint(record: RunRecord) -> str | None:
    """The run identity a result.json was made under (`identity.fingerprint`); None for records written before
    identity covered input contents and trainer settings: those are never taken as done (nothing proves what
    data and settings made them)."""
    return str(record.fingerprint) if record.fingerprint else None


def folder_state(run_dir: str | Path, fingerprint: str) -> tuple[str, str | None]:
    """(done | failed | stale | missing, reason) of one point folder's own result.json for `fingerprint`: what a
    job left in its folder (the sweeper judging a job that returned, a group skipping a member already done)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return "missing", None
    record = read_record(path)
    if isinstance(record, str):
        return "failed", record
    if recorded_fingerprint(record) != fingerprint:
        return "stale", None
    if record.status == "ok":
        return "done", None
    return "failed", record.error or f"status={record.status!r}"


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


def _alive(started: Started, queue: Mapping[str, str], host: str) -> bool | None:
    """Is the job of this started.json still running? None when this machine cannot tell (another host, no
    SLURM to ask)."""
    if started.slurm_job:
        if shutil.which("squeue") is None:
            return None
        return queue.get(str(started.slurm_job)) in SLURM_ALIVE
    if started.host == host:
        return _pid_alive(started.pid)
    return None


DIED = "its job died without a result (killed, timed out, out of memory?)"
LOST = "its result.json is gone (the sweeper recorded the point done)"


def point_state(entry: PointEntry, results: Mapping[str, RunRecord | str], ok_by_fp: Mapping[str, str],
                started: Started | None, queue: Mapping[str, str], host: str, now: float) -> PointState:
    """The state of one point (see the module docstring), before pull claims and the latest launch's grid."""
    name, folder, want = entry.name, entry.folder, entry.hash
    job = started.job(entry) if started else (str(entry.job) if entry.job else None)
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
        alive = _alive(started, queue, host)
        elapsed = now - float(started.start or now)
        if alive:
            return PointState(name, "running", reason=f"on {started.host}", job=job, elapsed_s=elapsed)
        if alive is None:
            return PointState(name, "running", job=job, elapsed_s=elapsed,
                              reason=f"on {started.host} (cannot check from {host})")
        if own is None and entry.status in ("ok", "skipped"):  # it finished; its result is gone since
            return PointState(name, "missing", job=job, reason=LOST)
        if own is None:
            recorded = entry.error if entry.status == "failed" and entry.error else None
            return PointState(name, "failed", job=job, reason=recorded or DIED)
    if own is not None:  # a result of another fingerprint
        return PointState(name, "stale", reason="finished under another fingerprint (other settings or data)",
                          job=job, folder=folder)
    if entry.job and queue.get(str(entry.job)) in SLURM_ALIVE:
        return PointState(name, "queued", reason=f"SLURM {queue[str(entry.job)].lower()}", job=job)
    if entry.status == "failed":
        return PointState(name, "failed", reason=entry.error or "failed without a result", job=job)
    return PointState(name, "missing", job=job)


def judge_points(sweep_dir: str | Path, entries: Iterable[PointEntry], now: float | None = None,
                 results: Mapping[str, RunRecord | str] | None = None) -> list[PointState]:
    """The state of each point (see the module docstring), pull claims included; the latest launch's grid is
    `judge_sweep`'s. `results`: `read_results(sweep_dir)` when the caller has already read them."""
    sweep_dir = Path(sweep_dir)
    entries = list(entries)
    now = time.time() if now is None else now
    host = socket.gethostname()
    results = read_results(sweep_dir) if results is None else results
    ok_by_fp = done_by_fingerprint(results)
    started = {e.name: Started.read(sweep_dir / e.folder) for e in entries}
    queue = slurm_states([started[e.name].job(e) if started[e.name] else e.job for e in entries
                          if (started[e.name] and started[e.name].slurm_job) or e.job])
    judged = [point_state(e, results, ok_by_fp, started[e.name], queue, host, now) for e in entries]
    _claimed_by(sweep_dir, entries, judged, started)
    for e, p in zip(entries, judged):
        s = started[e.name]
        if s is not None and s.start is not None:
            try:
                p.started = float(s.start)
            except (TypeError, ValueError):
                pass
    return judged


def judge_sweep(sweep_dir: str | Path, now: float | None = None, record: SweepRecord | None = None,
                results: Mapping[str, RunRecord | str] | None = None) -> tuple[SweepRecord, list[PointState]]:
    """sweep.json and the state of every point it declares, in its order (one per name), the latest launch's grid
    applied (`dropped`). FileNotFoundError / ValueError as `SweepRecord.read`. `record` and `results`: what the
    caller has already read of the folder (`SweepRecord.read`, `read_results`), so nothing is read twice."""
    record = SweepRecord.read(sweep_dir) if record is None else record
    entries = list({e.name: e for e in record.points}.values())
    judged = judge_points(sweep_dir, entries, now, results)
    declared = record.declared_by_latest_launch()
    for e, p in zip(entries, judged):
        p.grid = e.grid
        if declared is not None and p.name not in declared:
            _drop(p)
    return record, judged


def _drop(p: PointState) -> None:
    """A point the latest launch does not declare: nothing will run it. A result it has, or a job still running
    it, still counts; otherwise it is `dropped`."""
    p.dropped = True
    if p.state in ("failed", "stale", "missing"):
        was = p.state + (f": {p.reason}" if p.reason else "")
        p.state, p.reason = "dropped", f"not in the latest launch's grid (was {was})"
    elif p.state == "done":
        p.reason = p.reason or "not in the latest launch's grid"


def _claimed_by(sweep_dir: Path, entries: list[PointEntry], judged: list[PointState],
                started: Mapping[str, Started | None]) -> None:
    """Pull mode: name the worker holding each point not yet done (its claim, in the unit's leader folder; members
    of a vectorised group share their leader's job). A claimed point whose worker died is taken over by another
    worker once the claim's heartbeat has stopped for `expire_s`, or at once when its worker released it, while
    workers are left. A point whose claim ended after its job started, with no result, is failed even though its
    worker (the pid its started.json names) lives on, running other points."""
    from transferlab.sweep.pull import read_claim

    holder: dict[str, str] = {}
    for e, p in zip(entries, judged):
        if p.state not in ("running", "failed", "missing"):  # done, queued or stale: no claim to show
            continue
        claim = read_claim(sweep_dir / e.folder)
        s = started.get(e.name)
        if p.state == "running" and claim and claim.get("ended") and s is not None and s.start is not None \
                and float(claim["ended"]) >= float(s.start):  # the run returned without a result
            p.state, p.elapsed_s = "failed", None
            p.reason = claim.get("error") or "its pull worker ended it without a result"
            continue
        if claim and not claim.get("ended"):
            p.worker = f"{claim.get('worker')} ({claim.get('slurm_job') or claim.get('pid')}@{claim.get('host')})"
            if p.job:
                holder[p.job] = p.worker
            if claim.get("released"):  # its worker exited: not running, whatever this host can check
                p.state, p.elapsed_s = ("failed" if s is not None else "missing"), None
                p.reason = f"released by pull worker {p.worker} (told to stop): the next worker to look takes it over"
            elif p.state == "failed":
                p.reason = f"{p.reason}; its pull claim is taken over once its heartbeat stops"
            elif p.state == "missing":
                p.reason = f"claimed by pull worker {p.worker}, not started yet"
    for p in judged:
        if p.worker is None and p.state == "running" and p.job in holder:
            p.worker = holder[p.job]
