"""Pull mode on a real local SLURM cluster (scripts/local_slurm.sh start; `make test-slurm`): `hydra/launcher=slurm
hydra.launcher.pull=true hydra.launcher.workers=2` submits 2 worker jobs that drain the sweep folder; one is killed
with SIGKILL mid-point (as a lost node would be) and the other takes its point over once the claim's heartbeat
stops. Every point ends ok exactly once, equal to a sequential run of the same points."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import run_cli
from test_pull import FAST, POINTS, _by_fingerprint, _left_by
from test_slurm import LOCAL, slurm_env  # noqa: F401 - the cluster fixture
from test_sweeps import _summary
from transferlab.sweep import pull

pytestmark = pytest.mark.slurm


def _kill_a_worker_job_mid_point(sweep, proc, env) -> tuple[str, str]:
    import json
    import time

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for claim_file in sorted(sweep.glob(f"*/{pull.CLAIM_FILE}")):
            claim, started = pull.read_claim(claim_file.parent), claim_file.parent / "started.json"
            if claim and not claim["ended"] and started.exists() and not (claim_file.parent / "result.json").exists():
                if json.loads(started.read_text()).get("slurm_job") == claim["slurm_job"]:
                    # Freeze the worker job first and look again: a tiny point may end between the look and the
                    # kill, and a worker killed after its point ended leaves nothing to take over.
                    job = claim["slurm_job"]
                    subprocess.run(["scancel", "--full", "--signal=STOP", job], env=env, check=True)
                    time.sleep(0.5)
                    again = pull.read_claim(claim_file.parent)
                    if again and again["token"] == claim["token"] and not again["ended"] \
                            and not (claim_file.parent / "result.json").exists():
                        subprocess.run(["scancel", "--full", "--signal=KILL", job], env=env, check=True)
                        return claim["worker"], job
                    subprocess.run(["scancel", "--full", "--signal=CONT", job], env=env, check=True)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no point was seen running: {proc.communicate()[1][-3000:]}")


# Known defect (issue 27, open): on the loopback cluster the worker job is CANCELLED by `scancel --signal=KILL` (sacct
# says so) but its worker process goes on claiming and ending points, so nothing is left to take over. The local
# kill -9 test (test_pull.py, run in CI) passes; what keeps the process alive under SLURM (proctrack/linuxproc here)
# is not yet known. Not strict: it passes when the kill lands.
@pytest.mark.xfail(strict=False, reason="a cancelled SLURM worker job's process survives scancel on the loopback "
                                        "cluster (issue 27, open)")
def test_two_slurm_workers_drain_12_points_through_a_kill_9_like_a_sequential_run(tmp_path, slurm_env):
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    sweep = tmp_path / "pull"
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep}", *LOCAL,
                             "hydra.launcher.pull=true", "hydra.launcher.workers=2", *FAST, *POINTS,
                             "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker, job = _kill_a_worker_job_mid_point(sweep, proc, env)
    stdout, stderr = proc.communicate(timeout=900)
    audit = pull.read_audit(sweep)
    assert proc.returncode == 0, (stdout + stderr)[-4000:]
    assert _summary(stdout) == "12 ok, 0 failed, 0 skipped"
    ends = [e["unit"] for e in audit if e["event"] == "end"]
    assert len(ends) == len(set(ends)) == 12, audit  # every point ended exactly once
    assert [e["unit"] for e in audit if e["event"] in ("reclaim", "fenced")] == _left_by(worker, audit), audit
    workers = {pull.read_claim(sweep / u)["slurm_job"] for u in ends}
    assert len({j.split("_")[0] for j in workers}) == 1  # the worker jobs are one array
    (point,) = _left_by(worker, audit) or pytest.fail(f"killed {worker} ({job}) left nothing: {audit}")
    assert pull.read_claim(sweep / point)["slurm_job"] not in (None, job)  # taken over by the other worker job
    sequential = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'seq'}", *POINTS, cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    assert _by_fingerprint(sweep) == _by_fingerprint(tmp_path / "seq")


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
