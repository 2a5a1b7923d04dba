"""`transferlab-status` on synthetic sweep folders (sweep.json, result.json, started.json written here as the
sweeper and the jobs write them): the time left of a sweep whose seeds run as vectorised groups (one job per group,
each member recording an equal share of the group's time), each waiting point priced at its own arm's cost, and the
points a later launch dropped from the grid. The real sweeper writing the same files: tests/test_sweeps.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from transferlab.sweep.points import Point
from transferlab.sweep.ledger import SweepRecord
from transferlab.sweep.state import Summary
from transferlab.sweep.progress import sweep_status

NOW = 1_000_000.0  # the clock sweep_status is given


def _name(overrides: list[str]) -> str:
    return ",".join(sorted(overrides))


class Sweep:
    """A sweep folder written point by point: `add` declares a point (in sweep.json) and leaves what its job left."""

    def __init__(self, root: Path, launches: list[float] | None = None):
        self.root, self.points = root, []
        self.launches = [{"argv": ["-m"], "start": s, "end": s + 1.0, "host": "h"} for s in (launches or [0.0])]

    def add(self, grid: str | None, *overrides: str, result: dict | None = None, started: dict | None = None,
            launch: float | None = None) -> str:
        name = _name(list(overrides))
        folder = self.root / name
        folder.mkdir(parents=True)
        entry = {"name": name, "dir": name, "hash": f"h-{name}", "grid": grid, "overrides": list(overrides),
                 "status": "pending", "launch": self.launches[-1]["start"] if launch is None else launch}
        self.points.append(entry)
        if result is not None:
            (folder / "result.json").write_text(json.dumps({"fingerprint": f"h-{name}", **result}))
        if started is not None:
            (folder / "started.json").write_text(json.dumps({"slurm_job": None, **started}))
        return name

    def write(self) -> Path:
        (self.root / "sweep.json").write_text(json.dumps({"name": "syn", "points": self.points,
                                                          "launches": self.launches}))
        return self.root


def _ok(wall: float) -> dict:
    return {"status": "ok", "wall_s": wall}


def _here(start: float, pid: int | None = None) -> dict:
    """started.json of a job on this host that is alive (this test's process, or the pid given)."""
    return {"pid": pid or os.getpid(), "host": socket.gethostname(), "start": start}


def test_vectorised_groups_are_one_job_each_and_points_are_priced_by_their_arm(tmp_path):
    """A group of 5 seeds that has run for 30 s is one job (the sequential launcher: the only one running), and a
    member's recorded wall time is an equal share of its group's time. Before the fix the time left priced the
    running members at a share minus the *group's* elapsed time (nothing left), and then divided by the 5 members
    as if they were 5 jobs running at once: 117 s of compute, 23 s of wall time, for 231 s left."""
    sw = Sweep(tmp_path)
    t = ["transfer=finetune"]
    for s in range(5):  # arm freeze=0, n=5: a finished group of 5 (60 s), 12 s each
        sw.add("transfer", *t, "target.n_per_class=5", "transfer.freeze=0", f"seed={s}", result=_ok(12.0))
    for s in range(5):  # arm freeze=1, n=5: its group running for 30 s (each member marked as the group builds it)
        sw.add("transfer", *t, "target.n_per_class=5", "transfer.freeze=1", f"seed={s}",
               started=_here(NOW - 30.0 + 0.1 * s))
    for s in range(5):  # arm freeze=2, n=5: waiting, nothing of its arm done: its grid at n=5, 12 s each
        sw.add("transfer", *t, "target.n_per_class=5", "transfer.freeze=2", f"seed={s}")
    sw.add("transfer", *t, "target.n_per_class=50", "transfer.freeze=0", "seed=0", result=_ok(40.0))
    for s in (1, 2):  # its own arm is done at seed 0: 40 s each
        sw.add("transfer", *t, "target.n_per_class=50", "transfer.freeze=0", f"seed={s}")
    sw.add("transfer", *t, "target.n_per_class=50", "transfer.freeze=1", "seed=0")  # its grid at n=50: 40 s
    for s, wall in enumerate((2.0, 3.0, 4.0)):
        sw.add("scratch", "transfer=scratch", "target.n_per_class=5", f"seed={s}", result=_ok(wall))
    for s in (3, 4):  # failed (NaN), to run again: their arm's median, 3 s each
        sw.add("scratch", "transfer=scratch", "target.n_per_class=5", f"seed={s}",
               result={"status": "failed", "wall_s": 1.0, "error": "NonFiniteLossError: train/loss is nan"})
    sw.add("scratch", "transfer=scratch", "target.n_per_class=20", "seed=0")  # its grid (no n=20 done): 3 s
    sw.add("long", "transfer=scratch_long", "target.n_per_class=5", "seed=0")  # no grid done: all, median 12 s
    status = sweep_status(sw.write(), now=NOW)

    compute, wall = status.time_left_s()
    running_group = 5 * 12.0 - 30.0
    assert compute == pytest.approx(running_group + 5 * 12.0 + 2 * 40.0 + 40.0 + 2 * 3.0 + 3.0 + 12.0)  # 231
    assert wall == pytest.approx(compute)  # one job at a time
    assert status.running_jobs == 1
    assert status.totals == {"failed": 2, "running": 5, "queued": 0, "stale": 0, "missing": 10, "dropped": 0,
                             "done": 9}
    # compute used: every recorded wall time (the failed runs' too), and the running group's 30 s once
    assert status.compute_used_s == pytest.approx(5 * 12.0 + 40.0 + 9.0 + 2 * 1.0 + 30.0)
    out = run_cli(str(tmp_path), "--json", module="transferlab.status", cwd=tmp_path)
    data = json.loads(out.stdout)
    assert data["running_jobs"] == 1 and data["compute_left_s"] > 200


def test_two_groups_running_at_once_halve_the_wall_time(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        sw = Sweep(tmp_path)
        for s in range(4):
            sw.add(None, "transfer.freeze=0", f"seed={s}", result=_ok(10.0))
        for s in range(4):  # two groups of 4, one per job, each 20 s in
            sw.add(None, "transfer.freeze=1", f"seed={s}", started=_here(NOW - 20.0))
            sw.add(None, "transfer.freeze=2", f"seed={s}", started=_here(NOW - 20.0, pid=sleeper.pid))
        for s in range(4):
            sw.add(None, "transfer.freeze=3", f"seed={s}")
        status = sweep_status(sw.write(), now=NOW)
        compute, wall = status.time_left_s()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert status.running_jobs == 2 and status.totals["running"] == 8
    assert compute == pytest.approx(2 * (4 * 10.0 - 20.0) + 4 * 10.0)
    assert wall == pytest.approx(compute / 2)


def test_a_group_running_its_members_one_after_the_other(tmp_path):
    """A sequential group (the members the stacked model cannot hold) marks every member started as it builds
    them, then fits one after the other: two members finished (20 s each), three still to go. The job's time
    since its first start, less what the finished members recorded, is what the running ones have had. A point the
    same process finished before the group (the sequential launcher runs every job in the sweep's process) is
    not the group's."""
    sw = Sweep(tmp_path)
    sw.add(None, "transfer.freeze=0", "seed=0", result=_ok(45.0), started=_here(NOW - 100.0))
    for s in range(5):
        done = s < 2
        sw.add(None, "transfer.freeze=1", f"seed={s}", started=_here(NOW - 50.0 + s),
               result=_ok(20.0) if done else None)
    status = sweep_status(sw.write(), now=NOW)
    assert status.totals["running"] == 3 and status.running_jobs == 1
    compute, wall = status.time_left_s()
    spent = 50.0 - 2 * 20.0  # by the running members
    assert compute == pytest.approx(3 * 20.0 - spent) and wall == pytest.approx(compute)
    assert status.compute_used_s == pytest.approx(45.0 + 2 * 20.0 + spent)


def test_points_a_later_launch_dropped_are_dropped_not_missing(tmp_path):
    """Launched with n=1,2,5 over seeds 0,1, then again with n=1,2: the n=5 points keep the first launch's stamp.
    The one with a result stays done (its result counts), the other is dropped: not missing, not in the time
    left, listed with --all only."""
    sw = Sweep(tmp_path, launches=[100.0, 200.0])
    sw.add(None, "target.n_per_class=1", "seed=0", result=_ok(4.0))
    sw.add(None, "target.n_per_class=1", "seed=1")
    sw.add(None, "target.n_per_class=2", "seed=0")
    sw.add(None, "target.n_per_class=2", "seed=1")
    done5 = sw.add(None, "target.n_per_class=5", "seed=0", result=_ok(6.0), launch=100.0)
    gone = sw.add(None, "target.n_per_class=5", "seed=1", launch=100.0)
    failed5 = sw.add(None, "target.n_per_class=5", "seed=2", launch=100.0,
                     result={"status": "failed", "wall_s": 1.0, "error": "NonFiniteLossError: nan"})
    status = sweep_status(sw.write(), now=NOW)
    by = {p.name: p for p in status.points}
    assert status.totals == {"failed": 0, "running": 0, "queued": 0, "stale": 0, "missing": 3, "dropped": 2,
                             "done": 2}
    assert by[gone].state == "dropped" and by[gone].dropped and "latest launch" in by[gone].reason
    assert by[failed5].state == "dropped" and "was failed: NonFiniteLossError: nan" in by[failed5].reason
    assert by[done5].state == "done" and by[done5].dropped and by[done5].wall_s == 6.0
    compute, _ = status.time_left_s()
    assert compute == pytest.approx(4.0 + 2 * 5.0)  # seed 1 at n=1: its arm (4 s); n=2: all (median of 4, 6)

    table = run_cli(str(tmp_path), module="transferlab.status", cwd=tmp_path).stdout
    assert "0 stale, 3 missing, 2 dropped, 2 done" in table and "--all shows them" in table
    assert "3 points are not in the latest launch's grid: 2 dropped, 1 done (dropped: not counted in the time left)" \
        in table
    assert gone not in table
    full = run_cli(str(tmp_path), "--all", module="transferlab.status", cwd=tmp_path).stdout
    assert gone in full and "dropped" in full


def test_an_older_sweep_json_without_stamps_drops_nothing(tmp_path):
    sw = Sweep(tmp_path, launches=[100.0, 200.0])
    sw.add(None, "seed=0", launch=100.0)
    sw.add(None, "seed=1", launch=100.0)
    for p in sw.points:
        del p["launch"]
    status = sweep_status(sw.write(), now=NOW)
    assert status.totals["missing"] == 2 and status.totals["dropped"] == 0


def test_each_launch_stamps_the_points_it_declares(tmp_path):
    """sweep.json as Summary.write merges launches: every point a launch declares carries its start, points it left
    alone (busy, unselected) included; the points only an earlier launch declared keep that launch's start."""
    def pts(*ns, status="pending"):
        return [Point(overrides=[f"target.n_per_class={n}"], name=f"target.n_per_class={n}", hash=f"h{n}",
                      dir=str(tmp_path / f"target.n_per_class={n}"), status=status) for n in ns]

    Summary("syn", str(tmp_path), points=pts(1, 2, 5), start=100.0).write()
    second = pts(1, status="unselected") + pts(2, status="busy")
    second[1].error = "running (1@h; on h)"
    Summary("syn", str(tmp_path), points=second, start=200.0).write()
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert {p["name"]: p["launch"] for p in record["points"]} == {
        "target.n_per_class=1": 200.0, "target.n_per_class=2": 200.0, "target.n_per_class=5": 100.0}
    assert all(p["status"] == "pending" for p in record["points"])  # left alone: the earlier entry is kept
    assert SweepRecord.from_dict(record).declared_by_latest_launch() == {"target.n_per_class=1", "target.n_per_class=2"}
    Summary("syn", str(tmp_path), points=pts(1, 2, 5), start=300.0).write()  # the full grid again
    assert SweepRecord.read(tmp_path).declared_by_latest_launch() == {
        "target.n_per_class=1", "target.n_per_class=2", "target.n_per_class=5"}


def test_status_and_the_report_judge_every_point_alike_each_failure_with_its_reason(tmp_path, monkeypatch):
    """One judgement (sweep.ledger) for `transferlab-status` and the report: a done point, a failed result, a config
    error the sweeper recorded (no result), a job that died, a job that died on a full disk (the sweeper's recorded
    error, not "died without a result"), a stale result, a missing point, a hand-edited (tampered) result and a
    running job get the same state and the same reason from both."""
    from transferlab.analysis.collect import point_states
    from transferlab.run.record import RunRecord

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    sweep = Sweep(tmp_path / "sw")
    done = sweep.add(None, "seed=0", result=_ok(1.0))
    nan = sweep.add(None, "seed=1", result={"status": "failed", "error": "FloatingPointError: loss is nan"})
    config = sweep.add(None, "seed=2")
    died = sweep.add(None, "seed=3", started=_here(NOW - 9, pid=dead))
    disk = sweep.add(None, "seed=4", started=_here(NOW - 9, pid=dead))
    stale = sweep.add(None, "seed=5")
    (tmp_path / "sw" / stale / "result.json").write_text(json.dumps({"fingerprint": "another", "status": "ok"}))
    missing = sweep.add(None, "seed=6")
    tampered = sweep.add(None, "seed=7")
    RunRecord(status="ok", fingerprint=f"h-{tampered}", wall_s=1.0).write(tmp_path / "sw" / tampered)
    edited = json.loads((tmp_path / "sw" / tampered / "result.json").read_text())
    (tmp_path / "sw" / tampered / "result.json").write_text(json.dumps({**edited, "wall_s": 0.5}))
    running = sweep.add(None, "seed=8", started=_here(NOW - 5))
    lost = sweep.add(None, "seed=9", started=_here(NOW - 9, pid=dead))  # skipped as done by a later launch, then
    next(e for e in sweep.points if e["name"] == lost)["status"] = "skipped"  # its result.json went missing
    for name, error in ((config, "train.lr=-1.0: a number > 0"), (disk, "OSError: [Errno 28] No space left on "
                                                                          "device: '/out/seed=4/result.json'")):
        entry = next(e for e in sweep.points if e["name"] == name)
        entry.update(status="failed", error=error)
    status = {p.name: (p.state, p.reason) for p in sweep_status(sweep.write(), now=NOW).points}
    report = {r["run_dir"]: (r["state"], r["reason"]) for _, r in point_states(tmp_path / "sw").iterrows()}
    assert {k: (v[0], None if v[1] != v[1] else v[1]) for k, v in report.items()} == status  # NaN: no reason
    assert status[done] == ("done", None) and status[missing] == ("missing", None)
    assert status[nan] == ("failed", "FloatingPointError: loss is nan")
    assert status[config] == ("failed", "train.lr=-1.0: a number > 0")
    assert status[died] == ("failed", "its job died without a result (killed, timed out, out of memory?)")
    assert status[disk] == ("failed", "OSError: [Errno 28] No space left on device: '/out/seed=4/result.json'")
    assert status[stale][0] == "stale"
    assert status[tampered][0] == "failed" and "checksum" in status[tampered][1].lower(), status[tampered]
    assert status[running][0] == "running"
    assert status[lost] == ("missing", "its result.json is gone (the sweeper recorded the point done)")

    # the report's whole read (rows and judgement) reads each result.json once and judges as above
    from transferlab.analysis.collect import collect_sweep
    reads, read = [], RunRecord.read.__func__
    monkeypatch.setattr(RunRecord, "read", classmethod(lambda cls, path: reads.append(str(path)) or read(cls, path)))
    points = collect_sweep(tmp_path / "sw").points
    assert {r["run_dir"]: (r["state"], None if r["reason"] != r["reason"] else r["reason"])
            for _, r in points.iterrows()} == status
    assert len(reads) == len(set(reads)) == len(list((tmp_path / "sw").glob("*/result.json"))), reads
