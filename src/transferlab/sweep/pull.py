"""Pull mode: W workers drain a sweep's points from its folder, each point claimed under a lock with a heartbeat.

A cluster caps array sizes and jobs per user, and one job per point cannot pack several points into an allocation.
Here the launcher writes the launch units of a sweep (a point, or a vectorised seed group led by its first point:
one unit, as the sweeper launches it) into the sweep folder, and W workers (local processes, or SLURM jobs) take
them one at a time until none is left. The sweep folder is the only state; no server:

- `pull.json` (sweep folder): the queue, this launch's units in launch order with each unit's job overrides;
- `claim.json` (the unit's folder, the leader's for a group): who holds the unit (worker, host, pid, SLURM job), a
  random token, the launch it belongs to, a beat counter the holder raises every `heartbeat_s`, and `ended` (with
  the error, if the run raised one) once its run returned;
- `.pull.lock` (sweep folder): every claim, heartbeat and end is a read-check-write under this file lock, so two
  workers never hold one unit;
- `pull.jsonl` (sweep folder): one line per claim, reclaim and end, an audit trail.

What a point's run leaves (started.json, result.json, checkpoints) is the same as under every other launcher; the
point states `transferlab-status` shows come from those files, with the claim's worker beside a running point.

A claim whose holder died (kill -9, node lost) is taken over once its beat counter has not moved for `expire_s`.
Clock skew: no time written by one host is compared with another host's clock (nor with a shared file system's
mtimes, which come from the file server's clock). A worker notes, on its own monotonic clock, when it first saw a
claim's current (token, beat); only when that has not changed for `expire_s` of its own clock does it take the
claim over. The holder fences itself: when its heartbeat has not been written for `expire_s / 2` of its clock (a
stalled file system), or the claim file no longer carries its token, it exits at once, taking the run with it. A
claimer sees a beat no earlier than it was written, so the holder is gone before anyone can take its claim (clock
rates agree far closer than 2x; only offsets differ between hosts). A unit is never run twice at once, and a
claimed unit is never dropped while a worker is left: workers stay until every unit has ended.

A worker told to stop (SIGTERM: `scancel`, a node being drained, a pre-emption; SIGUSR2: SLURM's warning before the
job's time limit) claims nothing more; if it holds a unit, it marks the claim released under the lock and exits at
once, taking the run with it, and the next worker to look takes the unit over without waiting `expire_s`. SLURM
sends SIGTERM first and SIGKILL only `KillWait` seconds later: a worker that went on (submitit ignores SIGTERM by
default) would keep claiming points from a job already cancelled.

A reclaimed point runs again in its own folder and continues from its last.ckpt, like a requeued SLURM task.
Torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from transferlab.errors import problem
from transferlab.store.atomic import shared_lock, write_json
from transferlab.sweep.state import slurm_job_id

log = logging.getLogger(__name__)
QUEUE_FILE = "pull.json"
CLAIM_FILE = "claim.json"
LOCK_FILE = ".pull.lock"
LOG_FILE = "pull.jsonl"
FENCED_EXIT = 75  # EX_TEMPFAIL: this worker lost (or could not keep) its claim; the unit runs elsewhere


@dataclass
class Unit:
    """One launch unit: a point, or a vectorised group's leader (its folder holds the claim)."""

    name: str             # the unit's folder name in the sweep folder
    overrides: list[str]  # the job's overrides, as the sweeper gives them to any launcher
    num: int = 0          # hydra.job.num


def timing_problems(workers: Any, heartbeat_s: Any, expire_s: Any, poll_s: Any, prefix: str) -> list:
    """The problems of a pull launcher's settings (`prefix` = `hydra.launcher`), [] when they are good."""
    out = []
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        out.append(problem(f"{prefix}.workers", workers, "an integer >= 1 (worker processes that drain the sweep)"))
    for key, value in (("heartbeat_s", heartbeat_s), ("poll_s", poll_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            out.append(problem(f"{prefix}.{key}", value, "a number of seconds > 0"))
    if isinstance(expire_s, bool) or not isinstance(expire_s, (int, float)):
        out.append(problem(f"{prefix}.expire_s", expire_s, "a number of seconds"))
    elif not out and expire_s < 3 * heartbeat_s:
        out.append(problem(f"{prefix}.expire_s", expire_s, f"at least 3 x heartbeat_s ({3 * heartbeat_s:g}): a "
                                                           "holder fences itself after expire_s / 2 without a beat"))
    return out


# ---------------------------------------------------------------- files
def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_queue(sweep_dir: str | Path, units: list[Unit], heartbeat_s: float, expire_s: float) -> str:
    """Write this launch's queue; returns the launch id its claims carry (claims of other launches are void)."""
    launch = f"{time.time():.6f}-{secrets.token_hex(4)}"
    write_json(Path(sweep_dir) / QUEUE_FILE, {"launch": launch, "heartbeat_s": heartbeat_s, "expire_s": expire_s,
                                              "units": [asdict(u) for u in units]})
    return launch


def read_queue(sweep_dir: str | Path) -> tuple[str, list[Unit], float, float]:
    data = _read(Path(sweep_dir) / QUEUE_FILE)
    if data is None:
        raise FileNotFoundError(f"{Path(sweep_dir) / QUEUE_FILE}: no pull queue here")
    units = [Unit(**u) for u in data["units"]]
    return str(data["launch"]), units, float(data["heartbeat_s"]), float(data["expire_s"])


def read_claim(unit_dir: str | Path) -> dict | None:
    return _read(Path(unit_dir) / CLAIM_FILE)


def _audit(sweep_dir: Path, entry: dict) -> None:
    line = (json.dumps({"t": time.time(), **entry}) + "\n").encode()
    fd = os.open(sweep_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines of concurrent workers never interleave
    finally:
        os.close(fd)


def read_audit(sweep_dir: str | Path) -> list[dict]:
    path = Path(sweep_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- claiming
class Claimer:
    """One worker's view of the queue: claims the next free (or expired) unit, ends its own."""

    def __init__(self, sweep_dir: str | Path, worker: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.worker = worker
        self.launch, self.units, self.heartbeat_s, self.expire_s = read_queue(self.sweep_dir)
        self.clock = clock
        self.lock = shared_lock(self.sweep_dir / LOCK_FILE)
        self._ended: set[str] = set()                    # units whose run returned (final for this launch)
        self._seen: dict[str, tuple[tuple, float]] = {}  # unit -> ((token, beat), when first seen, own clock)
        self.taken_at: dict[str, float] = {}              # unit -> when this worker began writing its claim

    def _dir(self, unit: Unit) -> Path:
        return self.sweep_dir / unit.name

    def claim(self) -> tuple[Unit, dict] | None:
        """The next unit this worker now holds, with its claim; None when none is free now (see `settled`)."""
        with self.lock:
            if read_queue(self.sweep_dir)[0] != self.launch:
                log.warning("worker %s stops: a newer launch of %s replaced its queue", self.worker, self.sweep_dir)
                self._ended = {u.name for u in self.units}  # settled: nothing of this launch is left to this worker
                return None
            for unit in self.units:
                if unit.name in self._ended:
                    continue
                if not (self._dir(unit) / CLAIM_FILE).exists():
                    return unit, self._take(unit, None)
                # A claim that cannot be read right now (a shared file system mid-rename, a damaged file) and a
                # claim of an earlier launch whose worker may still run the unit are held like any claim: taken only
                # once they have not changed for expire_s, never at once (a unit never runs twice at once).
                held = read_claim(self._dir(unit))
                ours = held is not None and held.get("launch") == self.launch
                if held is not None and held.get("ended"):
                    if ours:
                        self._ended.add(unit.name)
                        continue
                    return unit, self._take(unit, None)  # an earlier launch's run of it ended: this launch's turn
                if held is not None and held.get("released"):  # its holder was told to stop and has exited
                    return unit, self._take(unit, held if ours else None)
                key = (held.get("launch"), held.get("token"), held.get("beat")) if held is not None else ("unreadable",)
                now = self.clock()
                seen = self._seen.get(unit.name)
                if seen is None or seen[0] != key:
                    self._seen[unit.name] = (key, now)
                elif now - seen[1] >= self.expire_s:
                    return unit, self._take(unit, held if ours else None)
        return None

    def settled(self) -> bool:
        """Every unit of the launch has ended (as of the last `claim` that found none free)."""
        return len(self._ended) == len(self.units)

    def _take(self, unit: Unit, previous: dict | None) -> dict:
        claim = {"worker": self.worker, "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id(),
                 "token": secrets.token_hex(8), "launch": self.launch, "beat": 0, "claimed": time.time(),
                 "beat_at": time.time(), "ended": None, "error": None,
                 "released": None, "attempt": int((previous or {}).get("attempt") or 0) + 1,
                 "taken_from": (previous or {}).get("worker")}
        self._dir(unit).mkdir(parents=True, exist_ok=True)
        self.taken_at[unit.name] = self.clock()  # the holder's fence counts from the write
        write_json(self._dir(unit) / CLAIM_FILE, claim)
        self._seen.pop(unit.name, None)
        event = "reclaim" if previous else "claim"
        if previous:
            why = "released" if previous.get("released") else f"no heartbeat for {self.expire_s:g} s"
            log.warning("worker %s takes over %s from %s (%s)", self.worker, unit.name, previous.get("worker"), why)
        _audit(self.sweep_dir, {"event": event, "unit": unit.name, "worker": self.worker, "token": claim["token"],
                                "from": claim["taken_from"]})
        return claim

    def end(self, unit: Unit, claim: dict, error: str | None) -> bool:
        """Record that the unit's run returned (with its error, if any). False if the claim is no longer ours."""
        with self.lock:
            held = read_claim(self._dir(unit))
            if held is None or held.get("token") != claim["token"]:
                log.error("worker %s finished %s but no longer holds its claim", self.worker, unit.name)
                return False
            write_json(self._dir(unit) / CLAIM_FILE, {**held, "ended": time.time(), "error": error})
        self._ended.add(unit.name)
        _audit(self.sweep_dir, {"event": "end", "unit": unit.name, "worker": self.worker, "token": claim["token"],
                                "error": error})
        return True


def release(sweep_dir: Path, lock: Any, worker: str, unit: Unit, token: str, why: str, timeout: float) -> bool:
    """Mark a held claim released (its holder exits next): the next worker to look takes it over at once. Under
    `lock`; False (nothing written) when the claim is no longer `token`'s or the lock is not had within `timeout`
    (the claim then expires as a dead worker's does)."""
    path = sweep_dir / unit.name / CLAIM_FILE
    try:
        with lock.acquire(timeout=timeout):
            held = _read(path)
            if held is None or held.get("token") != token or held.get("ended"):
                return False
            write_json(path, {**held, "released": time.time()})
    except Exception as e:  # noqa: BLE001 - a lock timeout or a file-system error: the claim expires instead
        log.warning("worker %s could not release %s: %s", worker, unit.name, e)
        return False
    _audit(sweep_dir, {"event": "release", "unit": unit.name, "worker": worker, "token": token, "why": why})
    return True


class Heartbeat:
    """While a unit runs: raise its claim's beat counter every `heartbeat_s`, under the lock, if the claim is still
    this worker's; exit the process (fence) when it is not, or when no beat has been written for `expire_s / 2`.
    The second check runs in its own thread that does no file I/O, so a write hung on a stalled file system
    cannot delay it."""

    def __init__(self, claimer: Claimer, unit: Unit, claim: dict, exit: Callable[[int], Any] = os._exit) -> None:
        self.claimer, self.unit, self.token = claimer, unit, claim["token"]
        self.path = claimer.sweep_dir / unit.name / CLAIM_FILE
        self.lock = shared_lock(claimer.sweep_dir / LOCK_FILE)  # its own descriptor: excludes the worker's thread
        self._stop = threading.Event()
        self._exit = exit
        self._last_ok = claimer.taken_at.get(unit.name, claimer.clock())  # from the claim's write, not from now
        self._threads = [threading.Thread(target=self._beat, name="transferlab-pull-heartbeat", daemon=True),
                         threading.Thread(target=self._watch, name="transferlab-pull-watchdog", daemon=True)]

    def __enter__(self) -> "Heartbeat":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def release(self, why: str) -> bool:
        """Give the claim up (see `release`), through this heartbeat's own lock descriptor: callable from the
        worker's main thread while a run holds no lock of the claimer's."""
        return release(self.claimer.sweep_dir, self.lock, self.claimer.worker, self.unit, self.token, why,
                       timeout=self.claimer.heartbeat_s)

    def _beat(self) -> None:
        c = self.claimer
        while not self._stop.wait(c.heartbeat_s):
            try:
                with self.lock.acquire(timeout=c.heartbeat_s):
                    held = _read(self.path)
                    if held is None or held.get("token") != self.token:
                        log.error("worker %s stops: its claim of %s was taken over", c.worker, self.unit.name)
                        _audit(c.sweep_dir, {"event": "fenced", "unit": self.unit.name, "worker": c.worker,
                                             "token": self.token, "why": "its claim was taken over"})
                        self._exit(FENCED_EXIT)
                        return
                    began = c.clock()  # no claimer can see this beat before now: the fence counts from here
                    write_json(self.path, {**held, "beat": int(held.get("beat") or 0) + 1, "beat_at": time.time()})
                self._last_ok = began
            except Exception as e:  # noqa: BLE001 - a lock timeout or a file-system error: the watchdog decides
                log.warning("worker %s: heartbeat of %s not written: %s", c.worker, self.unit.name, e)

    def _watch(self) -> None:
        c = self.claimer
        while not self._stop.wait(min(1.0, c.heartbeat_s / 2)):
            if c.clock() - self._last_ok > c.expire_s / 2:
                log.error("worker %s stops: no heartbeat of %s written for %g s (another worker may take it over)",
                          c.worker, self.unit.name, c.expire_s / 2)  # no file I/O here: it may be what hangs
                self._exit(FENCED_EXIT)
                return


STOP_SIGNALS = ("SIGTERM", "SIGUSR2")  # cancel, drain, pre-emption / SLURM's warning before the time limit


class StopOnSignal:
    """A worker's answer to SIGTERM and SIGUSR2: claim nothing more; a held unit is released and the process exits
    at once (`128 + signal`), so the unit's run ends with it and another worker takes the unit over without waiting
    for its claim to expire. Installed in the worker's main thread (replacing submitit's handlers, which ignore
    SIGTERM); elsewhere it only answers `requested`."""

    def __init__(self, worker: str, exit: Callable[[int], Any]) -> None:
        self.worker, self._exit = worker, exit
        self.requested: int | None = None
        self.beat: Heartbeat | None = None  # set while a unit runs
        self.busy = False                   # taking a claim or ending a returned run: the loop acts after it
        self.previous: dict = {}
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signum
        log.warning("worker %s: %s, it claims nothing more", self.worker, signal.Signals(signum).name)
        if self.busy:
            return  # a claim being taken, or a run that returned being ended: the loop acts on it next
        if self.beat is not None:
            self.stop_holding(self.beat)
        self._exit(128 + signum)  # idle: nothing held

    def stop_holding(self, beat: Heartbeat) -> None:
        """Release the unit `beat` keeps and exit; the run in this process ends with it."""
        name = signal.Signals(self.requested or signal.SIGTERM).name
        beat.release(f"its worker got {name}")
        self._exit(128 + int(self.requested or signal.SIGTERM))


def drain(sweep_dir: str | Path, worker: str, run_unit: Callable[[Unit], str | None], poll_s: float = 2.0,
          exit: Callable[[int], Any] = os._exit) -> int:
    """The worker loop: claim a unit, run it with a heartbeat, record its end; wait while units are held by others
    (one may die and need taking over); return the number of units this worker ran once every unit has ended. Told
    to stop (`StopOnSignal`), it exits with `128 + signal` whatever it was doing when the signal came. `run_unit`
    returns None, or the error the run raised (its result.json says the rest)."""
    claimer = Claimer(sweep_dir, worker)
    stop = StopOnSignal(worker, exit)
    ran = 0
    try:
        while stop.requested is None:
            stop.busy = True  # from the claim until its heartbeat runs, a signal is acted on below
            got = claimer.claim()
            if got is None:
                stop.busy = False
                if claimer.settled():
                    return ran
                if stop.requested is not None:
                    break
                time.sleep(poll_s)
                continue
            unit, claim = got
            log.info("worker %s runs %s", worker, unit.name)
            with Heartbeat(claimer, unit, claim, exit=exit) as beat:
                stop.beat, stop.busy = beat, False
                if stop.requested is not None:  # the signal came while the claim was being taken
                    stop.stop_holding(beat)
                try:
                    error = run_unit(unit)
                except Exception as e:  # noqa: BLE001 - the run's own failure; the next unit goes on
                    error = f"{type(e).__name__}: {e}"
                stop.busy, stop.beat = True, None  # the run returned: its end is recorded whatever comes now
            claimer.end(unit, claim, error)
            stop.busy = False
            ran += 1
        exit(128 + stop.requested)  # told to stop while busy: the same exit as a signal that found it idle
        return ran
    finally:
        stop.restore()
