"""Sweeps through `hydra/launcher=slurm` on a real local SLURM cluster (scripts/local_slurm.sh start; `make test-slurm`).

One array task per point; a task killed with SIGKILL is reported as failed while the other points finish, and
re-running the sweep runs only that point again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from test_sweeps import TINY, _summary
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


def test_a_sweep_larger_than_the_array_cap_is_submitted_as_several_arrays(tmp_path, slurm_env):
    """SLURM refuses an array whose indices reach MaxArraySize and submitit does not split arrays: 5 points under a
    cap of 2 go as arrays of 2, 2 and 1 tasks, all submitted before any is waited on, all ok; SLURM throttles each
    array alone, so they share array_parallelism (3 arrays under 2: one task of each at once)."""
    from hydra_plugins.transferlab_plugins.slurm import cluster_max_array_size

    assert cluster_max_array_size() == 1001  # the loopback cluster's (SLURM's default)
    sweep = tmp_path / "sw"
    out = run_cli("-m", "seed=range(5)", "target.n_per_class=2", *LOCAL, *TINY, "hydra.launcher.max_array_size=2",
                  "hydra.launcher.array_parallelism=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=slurm_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "5 ok, 0 failed, 0 skipped"
    assert ("5 points as 3 arrays of at most 2 tasks (hydra.launcher.max_array_size), at most 1 tasks of each at "
            "once") in out.stdout + out.stderr
    scripts = [p.read_text() for p in (sweep / ".submitit").glob("*/*_submission.sh")]
    assert sorted(ln.split("=", 1)[1] for s in scripts for ln in s.splitlines() if ln.startswith("#SBATCH --array")) \
        == ["0-1%1", "0-1%1"], scripts  # (the one-task array is a plain job)
    jobs = [json.loads(p.read_text())["slurm_job"] for p in sweep.glob("*/started.json")]
    per_array = sorted(Counter(job.split("_")[0] for job in jobs).values())
    assert per_array == [1, 2, 2], jobs  # (a one-task array is submitted as a plain job)


def test_a_ddp_run_started_by_srun_trains_over_its_ranks(tmp_path, slurm_env):
    """`srun -n1 -c2 python -m transferlab.train trainer=ddp ...`: one task of a SLURM job starts the run's 2 ranks,
    and they form one process group of 2 (Lightning, left to detect SLURM, made each rank 0 of 1)."""
    from test_ddp import DDP, TINY as DDP_TINY, ddp_ranks_joined

    run_dir = tmp_path / "run"
    out = subprocess.run(["srun", "-n1", "-c2", sys.executable, "-m", "transferlab.train", *DDP, *DDP_TINY,
                          f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path,
                         env={**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", **slurm_env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ddp_ranks_joined(run_dir / "train.log") == ["Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2"]
    assert RunRecord.read(run_dir / "result.json").status == "ok"


def test_slurm_vectorized_sweep_runs_one_array_task_per_group(tmp_path, slurm_env):
    """vectorize=seeds on SLURM: 2 arms x 2 seeds are 2 array tasks, each training its two seeds as one stacked
    model; every point has its own ok result.json."""
    sweep = [a if a != "seed=0" else "seed=0,1" for a in SWEEP] + ["hydra.sweeper.vectorize=seeds"]
    out = run_cli(*sweep, cwd=tmp_path, env=slurm_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "4 ok, 0 failed, 0 skipped"
    sweep_dir = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    records = [RunRecord.read(p) for p in find_results(sweep_dir)]
    assert sorted((r.freeze, r.seed) for r in records) == [(0, 0), (0, 1), (4, 0), (4, 1)]
    assert all(r.status == "ok" and r.group["mode"] == "stacked" and r.group["size"] == 2 for r in records)
    task_ids = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name}
    assert len(task_ids) == 2


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


def test_detach_returns_at_once_and_status_follows_the_points(tmp_path, slurm_env):
    from transferlab.sweep.progress import sweep_status

    t0 = time.time()
    out = run_cli(*SWEEP, "hydra.launcher.detach=true", cwd=tmp_path, env=slurm_env)
    took = time.time() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 ok, 0 failed, 0 skipped, 2 submitted" in out.stdout and "python -m transferlab.status" in out.stdout
    assert took < 60, took  # a process start and one sbatch, not the points' training
    sweep_dir = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    jobs = [p["job"] for p in json.loads((sweep_dir / "sweep.json").read_text())["points"]]
    assert len(jobs) == 2 and all(j and "_" in j for j in jobs)
    # Launching again while they are queued or running submits nothing twice.
    again = run_cli(*SWEEP, "hydra.launcher.detach=true", cwd=tmp_path, env=slurm_env)
    assert again.returncode == 0 and "0 submitted" not in again.stdout
    assert "0 ok, 0 failed" in again.stdout and ("busy elsewhere" in again.stdout or "2 skipped" in again.stdout)
    deadline = time.time() + 300
    while (status := sweep_status(sweep_dir)).totals["done"] < 2 and time.time() < deadline:
        assert status.totals["failed"] == 0, [p for p in status.points if p.state == "failed"]
        time.sleep(2)
    assert status.totals["done"] == 2, status.totals
    assert all(RunRecord.read(p).status == "ok" for p in find_results(sweep_dir))


def _last_epoch(point: Path) -> int:
    import torch

    try:
        return int(torch.load(point / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return -1


def test_a_warned_point_requeues_itself_and_resumes_to_the_uninterrupted_result(tmp_path, slurm_env, make_cfg):
    """SLURM warns a task before its time limit or a pre-emption with SIGUSR2 (`signal_delay_s`); the task then
    requeues itself through submitit's checkpoint hook and, started again, continues from its last.ckpt. The
    warning is sent here with scancel, once the point has trained a few epochs (time limits are minutes long)."""
    import torch

    from transferlab.run.experiment import run

    point = ["transfer=scratch", "target.n_per_class=40", "train.batch_size=8", "train.max_epochs=100",
             "checkpoint.every_s=0", "trainer.enable_progress_bar=false", "logger=none"]
    sweep_dir = tmp_path / "sw"
    env = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), **slurm_env}
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))  # job ids restart with the cluster
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep_dir}", "seed=0",
                             *point, *LOCAL, "hydra.launcher.max_requeue=2",
                             "hydra.launcher.setup=['export OMP_NUM_THREADS=1']"],  # one thread, as the reference
                            cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, warned = time.time() + 300, None
    while warned is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        folders = [p for p in sweep_dir.glob("*seed=0*") if p.is_dir()]
        if folders and 2 <= _last_epoch(folders[0]) < 80:
            started = json.loads((folders[0] / "started.json").read_text())
            warned = started["slurm_job"]
            subprocess.run(["scancel", "--signal=USR2", warned], env=env, check=True)
    if warned is None:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the point was never seen training (between epochs 2 and 80): {(out + err)[-3000:]}")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (stdout + stderr)[-4000:]
    assert _summary(stdout) == "1 ok, 0 failed, 0 skipped"
    (result,) = list(find_results(sweep_dir))
    requeued = RunRecord.read(result).to_dict()
    assert requeued["resumed_from"], "the point was not resumed after its requeue"
    # SLURM's own account of the task: it ran once, was requeued, then completed (the log files are the last run's).
    history = ""
    for _ in range(30):
        history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-S", since, "-j", warned],
                                 env=env, capture_output=True, text=True).stdout.split()
        if history[-1:] == ["COMPLETED"]:
            break
        time.sleep(1)
    assert history == ["REQUEUED", "COMPLETED"], history
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one-core SLURM task
    try:
        whole = run(make_cfg(*point, run="reference"))
    finally:
        torch.set_num_threads(threads)
    assert requeued["metrics"]["epochs"] == whole["metrics"]["epochs"] == 100
    # Same weights, batch order and random stream after the requeue; float sums may differ in the last bits
    # between processes (as for a SIGKILL resume, tests/test_resume.py).
    assert requeued["metrics"]["val/loss_history"] == pytest.approx(whole["metrics"]["val/loss_history"], abs=1e-6)
    assert requeued["metrics"]["val/acc_history"] == whole["metrics"]["val/acc_history"]
    assert requeued["metrics"]["test/acc"] == pytest.approx(whole["metrics"]["test/acc"], abs=1e-6)


def test_the_slurm_script_submits_a_preset_and_says_what_to_run_next(tmp_path, slurm_env):
    """scripts/sweep_slurm.sh on the loopback cluster; detach=false here (the script submits detached by default)
    so the test sees the points end."""
    full = {**os.environ, "TRANSFERLAB_ROOT": str(tmp_path), "PYTHON": sys.executable, **slurm_env}
    args = [a for a in SWEEP if a not in ("-m", "experiment=freeze_vs_n", "hydra/launcher=slurm")]
    p = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_slurm.sh"), "freeze_vs_n", *args,
                        "hydra.launcher.detach=false"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env=full)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("+ ") and "hydra/launcher=slurm hydra.launcher.detach=true" in lines[0]
    sweep = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    assert lines[-2] == f"state:  {sys.executable} -m transferlab.status {sweep}"
    assert lines[-1].startswith(f"report: {sys.executable} -m transferlab.report {sweep}")
    assert _summary(p.stdout) == "2 ok, 0 failed, 0 skipped"
    assert all(RunRecord.read(r).status == "ok" for r in find_results(sweep))
