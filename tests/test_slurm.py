"""Sweeps through `hydra/launcher=slurm` on a real local SLURM cluster (scripts/local_slurm.sh start; `make test-slurm`).

One array task per point; a task killed with SIGKILL is reported as failed while the other points finish, and
re-running the sweep runs only that point again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweeps import TINY, _summary

from conftest import ROOT, run_cli
from transferlab.run.record import RunRecord, find_results

pytestmark = pytest.mark.slurm

STATE = Path(os.environ.get("TRANSFERLAB_SLURM_STATE", "/tmp/transferlab-slurm"))
# Local cluster: 2 CPUs, no GPU. On a real cluster keep the preset's 1 GPU per task and set partition/account.
LOCAL = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_task=null",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10"]
SWEEP = ["-m", "experiment=freeze_vs_n", "hydra.sweeper.grids.scratch=null", "seed=0", "target.n_per_class=2",
         "transfer.freeze=0,all", *LOCAL, *TINY]


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    conf = os.environ.get("SLURM_CONF") or str(STATE / "etc" / "slurm.conf")
    env = {"SLURM_CONF": conf}
    if not shutil.which("sbatch") or not Path(conf).exists():
        pytest.fail(f"no local SLURM cluster ({conf}): run `sudo {ROOT}/scripts/local_slurm.sh start` first")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env={**os.environ, **env})
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"slurmctld is not up: {ping.stdout}{ping.stderr}")
    return env


def _sacct(job_ids: set[str], env: dict) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(job_ids))],
                         capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout
    return dict(line.split("|", 1) for line in out.split())


def test_slurm_sweep_runs_one_array_task_per_point(tmp_path, slurm_env):
    out = run_cli(*SWEEP, cwd=tmp_path, env=slurm_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "2 ok, 0 failed, 0 skipped"
    sweep_dir = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    records = [RunRecord.read(p) for p in find_results(sweep_dir)]
    assert sorted(r.freeze for r in records) == [0, 4] and all(r.status == "ok" for r in records)
    task_ids = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name}
    assert len(task_ids) == 2  # <array>_0, <array>_1
    deadline = time.time() + 60  # submitit returns once the result file exists; SLURM's state may lag a moment
    while (states := set(_sacct(task_ids, slurm_env).values())) & {"RUNNING", "COMPLETING", "PENDING"}:
        assert time.time() < deadline, states
        time.sleep(1)
    assert states == {"COMPLETED"}


def test_slurm_task_killed_midway_is_reported_then_rerun(tmp_path, slurm_env):
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    slow_first = [a for a in SWEEP if not a.startswith("train.max_epochs")] + ["train.max_epochs=30"]
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.train", *slow_first], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        # Kill task 0 once it is training (its Lightning logs exist), like an OOM killer or a node failure would.
        point = sweep_dir / "seed=0,target.n_per_class=2,transfer=finetune,transfer.freeze=0"
        if (point / "checkpoints").exists() or (point / "train.log").exists():
            q = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, env=env).stdout
            running = [line.split()[0] for line in q.splitlines() if line.endswith("RUNNING") and "_0" in line]
            if running:
                victim = running[0]
                subprocess.run(["scancel", "--signal=KILL", victim], env=env, check=True)
    assert victim, "task 0 never ran"
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0, "a sweep with a killed point must exit non-zero"
    assert _summary(stdout) == "1 ok, 1 failed, 0 skipped", stderr[-3000:]
    assert "failed seed=0,target.n_per_class=2,transfer=finetune,transfer.freeze=0:" in stdout

    again = run_cli(*slow_first, cwd=tmp_path, env=slurm_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _summary(again.stdout) == "1 ok, 0 failed, 1 skipped"
    assert all(RunRecord.read(p).status == "ok" for p in find_results(sweep_dir))
