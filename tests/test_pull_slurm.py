"""Pull mode on a real local SLURM cluster (scripts/local_slurm.sh start; `make test-slurm`): `hydra/launcher=slurm
hydra.launcher.pull=true hydra.launcher.workers=2` submits 2 worker jobs that drain the sweep folder. One worker is
stopped mid-point, either as a lost node (its process killed with SIGKILL: the other takes its point over once the
claim's heartbeat stops) or by `scancel` (SIGTERM: it releases its point, and the other takes it over at once).
Every point ends ok exactly once, equal to a sequential run of the same points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from test_pull import FAST, POINTS, _by_fingerprint, _left_by
from test_slurm import LOCAL, slurm_env  # noqa: F401 - the cluster fixture
from test_sweeps import _summary
from transferlab.sweep import pull

pytestmark = pytest.mark.slurm


def _stop_a_worker_mid_point(sweep, proc, stop) -> tuple[str, str]:
    """Freeze the worker process of the first point seen running (claimed by a worker job, started by it, no result
    yet), look again (a tiny point may end between the look and the freeze), then `stop(claim)` it; returns the
    worker and its SLURM job."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for claim_file in sorted(sweep.glob(f"*/{pull.CLAIM_FILE}")):
            claim, started = pull.read_claim(claim_file.parent), claim_file.parent / "started.json"
            if claim and not claim["ended"] and started.exists() and not (claim_file.parent / "result.json").exists():
                if json.loads(started.read_text()).get("slurm_job") == claim["slurm_job"]:
                    os.kill(claim["pid"], signal.SIGSTOP)  # the worker process: this host is the cluster's node
                    again = pull.read_claim(claim_file.parent)
                    if again and again["token"] == claim["token"] and not again["ended"] \
                            and not (claim_file.parent / "result.json").exists():
                        stop(claim)
                        return claim["worker"], claim["slurm_job"]
                    os.kill(claim["pid"], signal.SIGCONT)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no point was seen running: {proc.communicate()[1][-3000:]}")


def _pull_sweep(tmp_path, env, expire_s):
    timing = [f"hydra.launcher.expire_s={expire_s}", *(a for a in FAST if "expire_s" not in a)]
    return subprocess.Popen([sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={tmp_path / 'pull'}",
                             *LOCAL, "hydra.launcher.pull=true", "hydra.launcher.workers=2", *timing, *POINTS,
                             "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _drained_once(proc, sweep, worker) -> tuple[list, str]:
    """The sweep ended 12 ok, each point ended exactly once, and the one point `worker` left was taken over by the
    other worker job; returns the audit and that point."""
    stdout, stderr = proc.communicate(timeout=900)
    audit = pull.read_audit(sweep)
    assert proc.returncode == 0, (stdout + stderr)[-4000:]
    assert _summary(stdout) == "12 ok, 0 failed, 0 skipped"
    ends = [e["unit"] for e in audit if e["event"] == "end"]
    assert len(ends) == len(set(ends)) == 12, audit  # every point ended exactly once
    assert [e["unit"] for e in audit if e["event"] in ("reclaim", "fenced")] == _left_by(worker, audit), audit
    workers = {pull.read_claim(sweep / u)["slurm_job"] for u in ends}
    assert len({j.split("_")[0] for j in workers}) == 1  # the worker jobs are one array
    (point,) = _left_by(worker, audit) or pytest.fail(f"the stopped {worker} left nothing: {audit}")
    return audit, point


def test_two_slurm_workers_drain_12_points_through_a_lost_node_like_a_sequential_run(tmp_path, slurm_env):
    """A worker job's process killed with SIGKILL mid-point, as a lost node's would be (no signal first): its claim's
    beat stops and the other worker job takes the point over after expire_s."""
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    sweep = tmp_path / "pull"
    proc = _pull_sweep(tmp_path, env, expire_s=4)
    worker, job = _stop_a_worker_mid_point(sweep, proc, lambda claim: os.kill(claim["pid"], signal.SIGKILL))
    audit, point = _drained_once(proc, sweep, worker)
    assert not [e for e in audit if e["event"] == "release"]
    assert pull.read_claim(sweep / point)["slurm_job"] not in (None, job)  # taken over by the other worker job
    sequential = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'seq'}", *POINTS, cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    assert _by_fingerprint(sweep) == _by_fingerprint(tmp_path / "seq")


def test_a_cancelled_slurm_worker_job_releases_its_point_to_the_other_at_once(tmp_path, slurm_env):
    """`scancel JOB` of a worker job mid-point: SLURM sends SIGTERM (SIGKILL only KillWait later); the worker
    releases its point and exits, claims nothing more, and the other worker job takes the point over well before
    the claim could expire (expire_s = 120 s here); the cancelled job is CANCELLED in SLURM's accounting."""
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    sweep = tmp_path / "pull"
    proc = _pull_sweep(tmp_path, env, expire_s=120)

    def scancel(claim):
        subprocess.run(["scancel", claim["slurm_job"]], env=env, check=True)
        os.kill(claim["pid"], signal.SIGCONT)  # SLURM sends SIGCONT before SIGTERM too; this one may come first

    t0 = time.time()
    worker, job = _stop_a_worker_mid_point(sweep, proc, scancel)
    audit, point = _drained_once(proc, sweep, worker)
    assert time.time() - t0 < 100
    (released,) = [e for e in audit if e["event"] == "release"]
    assert (released["unit"], released["worker"]) == (point, worker) and "SIGTERM" in released["why"]
    assert not [e for e in audit if e["worker"] == worker and e["t"] > released["t"]]  # it claimed nothing more
    assert pull.read_claim(sweep / point)["slurm_job"] not in (None, job)
    state = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert state and state[0].startswith("CANCELLED"), state


def test_the_slurm_script_offers_pull_mode(tmp_path, slurm_env):
    """`PULL_WORKERS=2 scripts/sweep_slurm.sh`: 2 worker jobs drain the preset's points (the script waits for them)."""
    from conftest import ROOT
    from test_slurm import SWEEP

    full = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), "PYTHON": sys.executable, "PULL_WORKERS": "2",
            **slurm_env}
    args = [a for a in SWEEP if a not in ("-m", "experiment=freeze_vs_n", "hydra/launcher=slurm")]
    p = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_slurm.sh"), "freeze_vs_n", *args, *FAST],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900, env=full)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "hydra/launcher=slurm hydra.launcher.pull=true hydra.launcher.workers=2" in p.stdout.splitlines()[0]
    assert _summary(p.stdout) == "2 ok, 0 failed, 0 skipped"
    sweep = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    ends = [e for e in pull.read_audit(sweep) if e["event"] == "end"]
    assert len(ends) == 2 and all(pull.read_claim(sweep / e["unit"])["slurm_job"] for e in ends)


def test_one_worker_job_of_two_tasks_is_two_workers_each_writing_its_points_logs(tmp_path, slurm_env):
    """`tasks_per_node=2`: one worker job is two workers (one per task, as one per GPU on a GPU node). Both drain
    the sweep, and the points of the task-1 worker keep their logs (Lightning would take SLURM_PROCID=1 for their
    rank and skip its rank-zero-only writes)."""
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    sweep = tmp_path / "pull"
    p = subprocess.run([sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep}", *LOCAL,
                        "hydra.launcher.pull=true", "hydra.launcher.workers=1", "hydra.launcher.tasks_per_node=2",
                        *FAST, "seed=range(6)", "target.n_per_class=2", "pretrain.max_epochs=1", "train.max_epochs=1",
                        "trainer.enable_progress_bar=false", "logger=csv",
                        "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _summary(p.stdout) == "6 ok, 0 failed, 0 skipped"
    ends = {e["unit"]: e["worker"] for e in pull.read_audit(sweep) if e["event"] == "end"}
    assert len(ends) == 6 and set(ends.values()) == {"w0.0", "w0.1"}, ends
    assert len({pull.read_claim(sweep / u)["slurm_job"] for u in ends}) == 1  # one job
    for unit in ends:
        assert "val/acc" in (sweep / unit / "logs" / "target" / "metrics.csv").read_text(), unit
