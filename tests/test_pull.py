"""Pull mode (`hydra/launcher=pull`, transferlab/sweep/pull.py): workers claim a sweep's units from its folder under
a lock with a heartbeat; a dead worker's claim is taken over once its beat stops; no unit runs twice at once or is
lost. The protocol is tested with real processes (kill -9 included), then a real sweep through the CLI against a
sequential run of the same points."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_problems, run_cli
from test_sweeps import _summary
from transferlab.run.record import RunRecord, find_results
from transferlab.store.atomic import write_json
from transferlab.sweep import pull

FAST = ["hydra.launcher.heartbeat_s=0.5", "hydra.launcher.expire_s=4", "hydra.launcher.poll_s=0.2"]


def _queue(tmp_path: Path, n: int, heartbeat_s: float = 0.2, expire_s: float = 1.0) -> Path:
    sweep = tmp_path / "sw"
    sweep.mkdir(parents=True)
    pull.write_queue(sweep, [pull.Unit(name=f"p{i:02d}", overrides=[], num=i) for i in range(n)], heartbeat_s,
                     expire_s)
    return sweep


def _busy_worker(sweep: str, worker: str, hold_s: float) -> None:
    """A worker whose 'run' writes the time it holds the unit into runs.jsonl (to check nothing overlaps)."""
    def run(unit):
        t0 = time.time()
        time.sleep(hold_s)
        with open(Path(sweep) / "runs.jsonl", "a") as f:
            f.write(json.dumps({"unit": unit.name, "worker": worker, "pid": os.getpid(), "t0": t0,
                                "t1": time.time()}) + "\n")
        return None
    pull.drain(sweep, worker, run, poll_s=0.05)


def test_claims_are_exclusive_and_an_expired_claim_is_taken_over(tmp_path):
    """Expiry is judged on the claimer's own clock (a fake one here): a claim whose (token, beat) has not changed
    for expire_s since the claimer first saw it is taken over; a beat restarts the watch."""
    sweep = _queue(tmp_path, 3)  # expire_s = 1
    now = [0.0]
    a, b = pull.Claimer(sweep, "a", clock=lambda: now[0]), pull.Claimer(sweep, "b", clock=lambda: now[0])
    (u0, c0), (u1, c1), (u2, c2) = a.claim(), b.claim(), a.claim()
    assert [u0.name, u1.name, u2.name] == ["p00", "p01", "p02"]
    assert b.end(u1, c1, None)
    assert b.claim() is None and not b.settled()  # p00, p02 held by a: b starts watching their beats
    now[0] = 0.9
    write_json(sweep / "p00" / pull.CLAIM_FILE, {**pull.read_claim(sweep / "p00"), "beat": 1})  # a's beat
    assert b.claim() is None  # nothing expired yet on b's clock; p00's watch restarts at 0.9
    now[0] = 1.5
    u, c = b.claim()  # p02 unchanged since 0.0: taken over; p00 (beat at 0.9) is not
    assert u.name == "p02" and c["attempt"] == 2 and c["taken_from"] == "a"
    assert not a.end(u2, c2, None)  # a no longer holds p02
    assert a.end(u0, c0, None) and b.end(u, c, "boom")
    assert b.claim() is None and b.settled()
    events = [(e["event"], e["unit"], e["worker"]) for e in pull.read_audit(sweep)]
    assert events == [("claim", "p00", "a"), ("claim", "p01", "b"), ("claim", "p02", "a"), ("end", "p01", "b"),
                      ("reclaim", "p02", "b"), ("end", "p00", "a"), ("end", "p02", "b")]
    assert pull.read_claim(sweep / "p02")["error"] == "boom"


def test_a_heartbeat_fences_its_worker_when_the_claim_is_taken_or_cannot_be_written(tmp_path, monkeypatch):
    sweep = _queue(tmp_path, 1, heartbeat_s=0.05, expire_s=0.3)
    claimer = pull.Claimer(sweep, "a")
    unit, claim = claimer.claim()
    exits = []
    with pull.Heartbeat(claimer, unit, claim, exit=exits.append):
        time.sleep(0.2)
        assert pull.read_claim(sweep / "p00")["beat"] >= 2 and not exits
        write_json(sweep / "p00" / pull.CLAIM_FILE, {**claim, "token": "someone else"})
        deadline = time.time() + 2
        while not exits and time.time() < deadline:
            time.sleep(0.02)
    assert exits == [pull.FENCED_EXIT]

    sweep2 = _queue(tmp_path / "b", 1, heartbeat_s=0.05, expire_s=0.3)
    claimer = pull.Claimer(sweep2, "a")
    unit, claim = claimer.claim()
    exits = []
    with pull.Heartbeat(claimer, unit, claim, exit=exits.append):
        def stalled(*args):
            raise OSError("stale file handle")

        monkeypatch.setattr(pull, "write_json", stalled)  # every beat fails from now on (a stalled file system)
        deadline = time.time() + 2
        while not exits and time.time() < deadline:
            time.sleep(0.02)
    assert exits == [pull.FENCED_EXIT]  # by the watchdog, which writes nothing (the file system may hang)


def test_the_fence_counts_from_the_claims_write_not_from_when_its_heartbeat_starts(tmp_path):
    """A stall between writing a claim and starting its heartbeat eats into the holder's margin, never past it:
    a holder whose heartbeat starts expire_s / 2 after its claim was written (its own clock) fences at once."""
    sweep = _queue(tmp_path, 1, heartbeat_s=1.0, expire_s=3.0)
    now = [0.0]
    claimer = pull.Claimer(sweep, "a", clock=lambda: now[0])
    unit, claim = claimer.claim()  # written at 0.0
    now[0] = 1.6  # a stall of more than expire_s / 2 before the run starts
    exits = []
    with pull.Heartbeat(claimer, unit, claim, exit=exits.append):
        deadline = time.time() + 2
        while not exits and time.time() < deadline:
            time.sleep(0.02)
    assert exits == [pull.FENCED_EXIT]


def _held_by(sweep: Path, worker: str) -> tuple[int, str]:
    """(pid, unit) of the first unit seen held by `worker` (a claim not ended), waiting up to 30 s."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for d in sorted(sweep.glob("p*")):
            c = pull.read_claim(d)
            if c and not c["ended"] and c["worker"] == worker:
                return c["pid"], d.name
        time.sleep(0.01)
    raise AssertionError(f"{worker} was never seen holding a unit")


def test_workers_in_processes_run_every_unit_once_and_take_over_a_killed_ones(tmp_path):
    """4 worker processes, 16 units of 0.3 s; one worker is killed with SIGKILL while it holds a unit: that unit is
    taken over after its beat expires, every unit ends exactly once, and no two runs of a unit overlap."""
    sweep = _queue(tmp_path, 16, heartbeat_s=0.1, expire_s=0.6)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_busy_worker, args=(str(sweep), f"w{i}", 0.3)) for i in range(4)]
    for p in procs:
        p.start()
    victim, unit = _held_by(sweep, "w1")
    os.kill(victim, signal.SIGKILL)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs].count(-signal.SIGKILL) == 1 and all(
        p.exitcode == 0 for p in procs if p.pid != victim)
    audit = pull.read_audit(sweep)
    ends = [e["unit"] for e in audit if e["event"] == "end"]
    assert sorted(ends) == [f"p{i:02d}" for i in range(16)]  # every unit ended once
    assert [e for e in audit if e["event"] == "reclaim"][0]["unit"] == unit
    runs = [json.loads(line) for line in (sweep / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["unit"] for r in runs) == sorted(ends)  # the killed run never finished; its take-over did
    assert all(r["pid"] != victim for r in runs if r["unit"] == unit)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_worker_told_to_stop_releases_its_unit_and_another_takes_it_at_once(tmp_path, sig):
    """SLURM cancels a job (scancel, a drain, a pre-emption) with SIGTERM and warns of its time limit with SIGUSR2;
    SIGKILL follows only KillWait later. The worker holding a unit releases it and exits (128 + signal) at once;
    with expire_s at 60 s the other worker still takes the unit over within a second or two, every unit ends once,
    the stopped worker claims nothing more, and its unit's first run never finished."""
    sweep = _queue(tmp_path, 6, heartbeat_s=0.1, expire_s=60)
    ctx = mp.get_context("fork")
    procs = {w: ctx.Process(target=_busy_worker, args=(str(sweep), w, 0.5)) for w in ("w0", "w1")}
    for p in procs.values():
        p.start()
    victim, unit = _held_by(sweep, "w1")
    os.kill(victim, sig)
    for p in procs.values():
        p.join(timeout=30)
    assert (procs["w1"].exitcode, procs["w0"].exitcode) == (128 + sig, 0)
    audit = pull.read_audit(sweep)
    (released,) = [e for e in audit if e["event"] == "release"]
    assert (released["unit"], released["worker"]) == (unit, "w1") and signal.Signals(sig).name in released["why"]
    (taken,) = [e for e in audit if e["event"] == "reclaim"]
    assert (taken["unit"], taken["worker"], taken["from"]) == (unit, "w0", "w1")
    assert taken["t"] - released["t"] < 5  # not after expire_s: the claim said it was free
    assert not [e for e in audit if e["worker"] == "w1" and e["t"] > released["t"]]  # w1 claimed nothing more
    ends = [e["unit"] for e in audit if e["event"] == "end"]
    assert sorted(ends) == [f"p{i:02d}" for i in range(6)]
    runs = [json.loads(line) for line in (sweep / "runs.jsonl").read_text().splitlines()]
    assert [r["worker"] for r in runs if r["unit"] == unit] == ["w0"]  # the released run never finished


def _idle_worker(sweep: str, worker: str, look_s: float) -> None:
    """A worker with nothing to claim; each look for a unit takes `look_s` more (a signal then lands inside one)."""
    claim = pull.Claimer.claim

    def slow(self):
        time.sleep(look_s)
        return claim(self)
    pull.Claimer.claim = slow
    _busy_worker(sweep, worker, 0.1)


@pytest.mark.parametrize("look_s, signal_after_s", [(0.0, 0.5), (0.5, 0.25)], ids=["waiting", "looking"])
def test_a_worker_told_to_stop_while_idle_exits_and_holds_nothing(tmp_path, look_s, signal_after_s):
    """A worker waiting for others' units (nothing held) exits at once on SIGTERM, with 128 + signal whether the
    signal finds it sleeping or looking for a unit (then it acts on it after the look); the units are unaffected."""
    sweep = _queue(tmp_path, 1, heartbeat_s=0.1, expire_s=60)
    ctx = mp.get_context("fork")
    busy = ctx.Process(target=_busy_worker, args=(str(sweep), "w0", 2.0))
    busy.start()
    while not (sweep / "p00" / pull.CLAIM_FILE).exists():
        time.sleep(0.01)
    idle = ctx.Process(target=_idle_worker, args=(str(sweep), "w1", look_s))
    idle.start()
    time.sleep(signal_after_s)
    assert idle.is_alive()  # waiting: p00 is held by w0
    os.kill(idle.pid, signal.SIGTERM)
    idle.join(timeout=5)
    busy.join(timeout=10)
    assert (idle.exitcode, busy.exitcode) == (128 + signal.SIGTERM, 0)
    assert [(e["event"], e["worker"]) for e in pull.read_audit(sweep)] == [("claim", "w0"), ("end", "w0")]


WORKERS_0 = "hydra.launcher.workers=0: an integer >= 1 (worker processes that drain the sweep)"


@pytest.mark.parametrize("args, line", [
    (["hydra/launcher=pull", "hydra.launcher.workers=0"], WORKERS_0),
    (["hydra/launcher=pull", "hydra.launcher.heartbeat_s=10", "hydra.launcher.expire_s=20"],
     "hydra.launcher.expire_s=20.0: at least 3 x heartbeat_s (30): a holder fences itself after expire_s / 2 "
     "without a beat"),
    (["hydra/launcher=slurm", "hydra.launcher.pull=true", "hydra.launcher.workers=0"], WORKERS_0),
    (["hydra/launcher=slurm", "hydra.launcher.pull=true", "hydra.launcher.detach=true"],
     "hydra.launcher.detach=True: false with hydra.launcher.pull=true (the submitting process waits for its "
     "workers)"),
    (["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2"],
     "hydra.launcher.tasks_per_node=2: 1 without hydra.launcher.pull=true (each task would run the same point into "
     "one folder; with pull=true each task is a worker)"),
    (["hydra/launcher=slurm", "hydra.launcher.max_array_size=0"],
     "hydra.launcher.max_array_size=0: null (the cluster's MaxArraySize) or an integer >= 1 (tasks per array at "
     "most)"),
], ids=["workers", "expire", "slurm-workers", "slurm-detach", "slurm-array-tasks", "slurm-array-size"])
def test_bad_launcher_settings_are_one_line_exit_2_nothing_written(tmp_path, args, line):
    out = run_cli("-m", *args, "seed=0,1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert cli_problems(out.stderr) == [line]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("launcher", [["hydra/launcher=pull"], ["hydra/launcher=slurm", "hydra.launcher.pull=true"]])
def test_pull_mode_without_a_sweep_is_one_line_exit_2_nothing_written(tmp_path, launcher):
    out = run_cli(*launcher, "pretrain.max_epochs=1", "train.max_epochs=1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    key = "hydra/launcher='pull'" if len(launcher) == 1 else "hydra.launcher.pull=True"
    assert cli_problems(out.stderr) == [f"{key}: pull mode drains a sweep folder: run with -m"]
    assert not (tmp_path / "outputs").exists()


POINTS = ["seed=range(6)", "target.n_per_class=2,3", "pretrain.max_epochs=1", "train.max_epochs=1",
          "trainer.enable_progress_bar=false", "logger=none"]


def _by_fingerprint(sweep: Path) -> dict:
    out = {}
    for path in find_results(sweep):
        rec = RunRecord.read(path)
        assert rec.status == "ok", path
        out[rec.fingerprint] = (path.parent.name, rec.to_dict()["metrics"]["test/acc"])
    return out


def _left_by(worker: str, audit: list[dict]) -> list[str]:
    """The units a worker claimed and did not end (the one it was running when it was killed)."""
    held = {e["unit"] for e in audit if e["event"] in ("claim", "reclaim") and e["worker"] == worker}
    return sorted(held - {e["unit"] for e in audit if e["event"] == "end" and e["worker"] == worker})


def _kill_a_worker_mid_point(sweep: Path, proc: subprocess.Popen) -> str:
    """SIGKILL the worker of the first point seen running (claimed, started, no result yet); returns the worker
    (the point may have ended just before the kill: the worker then dies in its next one)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        for claim_file in sorted(sweep.glob(f"*/{pull.CLAIM_FILE}")):
            claim, started = pull.read_claim(claim_file.parent), claim_file.parent / "started.json"
            if claim and not claim["ended"] and started.exists() and not (claim_file.parent / "result.json").exists():
                if json.loads(started.read_text())["pid"] == claim["pid"]:
                    os.kill(claim["pid"], signal.SIGKILL)
                    return claim["worker"]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no point was seen running: {proc.communicate()[1][-3000:]}")


@pytest.mark.slow
def test_a_worker_on_task_1_of_a_several_task_job_writes_its_points_logs(tmp_path):
    """`tasks_per_node=G` makes each of a SLURM job's G tasks a worker (SLURM_NTASKS=G, SLURM_PROCID its index,
    here given to local workers). Lightning takes SLURM_PROCID for the process's rank, and its rank-zero-only
    writes (the CSV and W&B loggers) would skip every point of the workers on tasks 1..G-1 without a word."""
    sweep = tmp_path / "pull"
    out = run_cli("-m", f"hydra.sweep.dir={sweep}", "hydra/launcher=pull", "hydra.launcher.workers=1", *FAST,
                  "seed=0,1", "target.n_per_class=2", "pretrain.max_epochs=1", "train.max_epochs=1",
                  "trainer.enable_progress_bar=false", "logger=csv", cwd=tmp_path,
                  env={"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "2 ok, 0 failed, 0 skipped"
    assert {e["worker"] for e in pull.read_audit(sweep) if e["event"] == "end"} == {"w0.1"}
    for point in ("seed=0", "seed=1"):
        for log in ("logs/target/metrics.csv", "source/logs/source/metrics.csv"):
            assert "val/acc" in (sweep / point / log).read_text(), (point, log)


def test_two_workers_drain_12_points_through_a_kill_9_like_a_sequential_run(tmp_path):
    """2 pull workers drain a 12-point sweep; one is killed with SIGKILL mid-point; the other takes its point over
    once its beat expires. Every point ends ok exactly once, with the fingerprints and test accuracies of the same
    sweep run sequentially (the default launcher)."""
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path)}
    sweep = tmp_path / "pull"
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep}",
                             "hydra/launcher=pull", "hydra.launcher.workers=2", *FAST, *POINTS], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = _kill_a_worker_mid_point(sweep, proc)
    stdout, stderr = proc.communicate(timeout=300)
    audit = pull.read_audit(sweep)
    assert proc.returncode == 0, stderr[-4000:]
    assert _summary(stdout) == "12 ok, 0 failed, 0 skipped"
    ends = [e["unit"] for e in audit if e["event"] == "end"]
    assert len(ends) == len(set(ends)) == 12, audit  # every point ended exactly once
    assert [e["unit"] for e in audit if e["event"] in ("reclaim", "fenced")] == _left_by(worker, audit), audit
    sequential = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'seq'}", *POINTS, cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    assert _by_fingerprint(sweep) == _by_fingerprint(tmp_path / "seq")


def test_status_names_the_worker_that_holds_each_point(tmp_path):
    from test_status import NOW, Sweep, _here, _ok

    from transferlab.sweep.progress import sweep_status

    sweep = Sweep(tmp_path / "sw")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    running = sweep.add(None, "seed=0", started=_here(NOW - 5))
    died = sweep.add(None, "seed=1", started=_here(NOW - 5, pid=int(dead)))
    claimed = sweep.add(None, "seed=2")
    done = sweep.add(None, "seed=3", result=_ok(1.0), started=_here(NOW - 9))
    released = sweep.add(None, "seed=4", started={**_here(NOW - 5), "host": "another-host"})  # cannot be checked
    for name, worker, ended in ((running, "w0", None), (died, "w1", None), (claimed, "w1", None),
                                (done, "w0", NOW - 8), (released, "w1", None)):
        write_json(tmp_path / "sw" / name / pull.CLAIM_FILE, {"worker": worker, "pid": 123, "host": "h",
                                                              "ended": ended, "released": NOW - 1 if name == released
                                                              else None})
    status = {p.name: p for p in sweep_status(sweep.write(), now=NOW).points}
    assert (status[running].state, status[running].worker) == ("running", "w0 (123@h)")
    assert status[died].state == "failed" and status[died].worker == "w1 (123@h)"
    assert status[died].reason.endswith("its pull claim is taken over once its heartbeat stops")
    assert (status[claimed].state, status[claimed].reason) == ("missing", "claimed by pull worker w1 (123@h), "
                                                                          "not started yet")
    assert status[done].state == "done" and status[done].worker is None
    # a point whose run returned without a result (its claim ended after it started) while its worker lives on
    ended = sweep.add(None, "seed=5", started=_here(NOW - 5))
    write_json(tmp_path / "sw" / ended / pull.CLAIM_FILE, {"worker": "w0", "pid": 123, "host": "h",
                                                          "ended": NOW - 2, "error": "ValueError: bad data"})
    status = {p.name: p for p in sweep_status(sweep.write(), now=NOW).points}
    assert (status[ended].state, status[ended].reason) == ("failed", "ValueError: bad data")
    assert status[running].state == "running"  # its claim has not ended
    assert (status[released].state, status[released].reason) == (
        "failed", "released by pull worker w1 (123@h) (told to stop): the next worker to look takes it over")
    out = run_cli(str(tmp_path / "sw"), module="transferlab.status", cwd=tmp_path)
    assert out.returncode == 0 and "[w0 (123@h)]" in out.stdout, out.stdout + out.stderr


def test_the_node_script_drains_a_sweep_with_pull_workers_and_a_seed_group_is_one_unit(tmp_path):
    """`PULL_WORKERS=2 scripts/sweep_node.sh` with vectorize=seeds: 2 arms x 2 seeds are 2 units (each group's first
    point holds the claim); a worker runs a whole group as one stacked job; every member has its own ok result."""
    from test_sweeps import TINY, _script

    p = _script("sweep_node.sh", "freeze_vs_n", "seed=0,1", "target.n_per_class=2", "transfer.freeze=0,all",
                "hydra.sweeper.grids.scratch=null", "train.min_steps=null", "hydra.sweeper.vectorize=seeds", *TINY,
                *FAST, cwd=tmp_path, env={"PULL_WORKERS": "2", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "hydra/launcher=pull hydra.launcher.workers=2 lease.per_device=1 seed=0,1" in p.stdout.splitlines()[0]
    assert _summary(p.stdout) == "4 ok, 0 failed, 0 skipped"
    sweep = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    audit = pull.read_audit(sweep)
    leaders = sorted(e["unit"] for e in audit if e["event"] == "claim")
    assert len(leaders) == 2 and all(n.startswith("seed=0,") for n in leaders)
    assert sorted(e["unit"] for e in audit if e["event"] == "end") == leaders
    records = [RunRecord.read(p) for p in find_results(sweep)]
    assert len(records) == 4 and all(r.status == "ok" and r.group["size"] == 2 for r in records)
    assert sorted((r.freeze, r.seed) for r in records) == [(0, 0), (0, 1), (4, 0), (4, 1)]
