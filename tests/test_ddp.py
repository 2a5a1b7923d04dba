"""DDP runs (issue 27): the real CLI with `trainer=ddp` on 2 CPU processes (gloo), real Lightning ranks.

Every run here is a process group of its own with a hard timeout; on timeout the whole group is killed, so a
hang fails the test and leaves no rank behind. A rank left running after its launcher exits keeps the output
pipes open, so `communicate` does not return and the timeout fails the test too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_problems
from transferlab.run.record import RunRecord

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# The command (2 + 2 epochs, 5 examples per class), without the progress bar
TINY = ["pretrain.max_epochs=2", "train.max_epochs=2", "target.n_per_class=5", "trainer.enable_progress_bar=false"]
HARD_TIMEOUT_S = 150

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="2 CPU processes need 2 usable cores")


def _env(cwd: Path) -> dict:
    return {**os.environ, "TRANSFERLAB_ROOT": str(cwd), "OMP_NUM_THREADS": "1"}


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """The CLI in a process group (session) of its own, as a user starts it."""
    return subprocess.Popen([sys.executable, "-m", "transferlab.train", *args], cwd=cwd, env=_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = HARD_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank: nothing is left behind
        out, err = proc.communicate()
        pytest.fail(f"no end within {timeout} s (killed the process group)\n{err[-3000:]}")
    return proc.returncode, out, err


def run(args: list[str], cwd: Path, timeout: float = HARD_TIMEOUT_S) -> tuple[int, str, str]:
    return finish(start(args, cwd), timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie has ended


def _rank_pids(train_log: Path) -> dict[int, int]:
    """{rank: pid} from the launcher's log lines `DDP: rank r is pid p`."""
    pids = {}
    if train_log.exists():
        for line in train_log.read_text().splitlines():
            if "DDP: rank" in line and " is pid " in line:
                words = line.split("DDP: rank ")[1].split()
                pids[int(words[0])] = int(words[-1])
    return pids


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)).split("/")[0] for p in run_dir.iterdir()}


def test_ddp_cold_then_warm_cache_each_end_with_one_ok_result(tmp_path):
    """The issue's command, which hung with a cold cache: now it ends, twice (cold, then warm), with one ok record
    each; ranks > 0 wrote nothing (no log of theirs, no Lightning folder) and the test metrics are those of one
    process testing the same best.ckpt on the whole test split (the test split dealt out, never padded)."""
    cache = tmp_path / "cache"
    records = []
    for name in ("cold", "warm"):
        run_dir = tmp_path / name
        t0 = time.monotonic()
        code, out, err = run([*DDP, *TINY, f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert code == 0, err[-3000:]
        assert time.monotonic() - t0 < 60, "the issue's command must end within a minute"
        assert len(list(tmp_path.rglob("result.json"))) == len(records) + 1
        rec = RunRecord.read(run_dir / "result.json")
        assert rec.status == "ok" and rec.metrics.test_acc is not None
        assert rec.config["trainer"]["devices"] == 2 and rec.config["trainer"]["strategy"] == "ddp"
        assert len(_rank_pids(run_dir / "train.log")) == 2  # two ranks ran, in one process group
        assert ddp_ranks_joined(run_dir / "train.log") == ["Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2"]
        assert _files(run_dir) <= {"result.json", "result.json.sha256", "train.log", ".hydra", "checkpoints", "logs",
                                   "source"}, \
            _files(run_dir)  # no rank's log file (train_ddp_process_1.log), no lightning_logs
        assert "test/acc" in out  # the launcher printed the run's table
        records.append(rec)
    cold, warm = records
    assert (cold.source_cache, warm.source_cache) == ("miss", "hit")  # pretrained once, by the launcher
    assert len(list((cache / "source").glob("*/model.pt"))) == 1
    assert cold.scores["methods"] and set(cold.scores["methods"]) == set(warm.scores["methods"])  # launcher's
    assert sum(cold.metrics.test_class_counts) == cold.n_test  # every test example counted once, none padded
    assert sum(cold.metrics.test_pred_counts) == cold.n_test
    assert (tmp_path / "cold" / "source").exists() and not (tmp_path / "warm" / "source").exists()

    # One process tests the DDP run's best.ckpt on the whole test split: the same numbers.
    import lightning as L
    from omegaconf import OmegaConf

    from transferlab.run.experiment import Experiment

    cfg = OmegaConf.create(cold.config)
    for key in ("strategy", "sync_batchnorm"):  # one process: the same weights tested without DDP
        cfg.trainer.pop(key)
    cfg.trainer.devices = 1
    cfg.paths.output_dir = str(tmp_path / "retest")
    exp = Experiment(cfg)
    exp.build(score=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    tested = trainer.test(exp.module, exp.batches[2], ckpt_path=cold.target_ckpt, weights_only=True,
                          verbose=False)[0]
    assert tested["test/acc"] == pytest.approx(cold.metrics.test_acc, abs=0)
    assert exp.module.test_counts["test/class_counts"] == cold.metrics.test_class_counts
    assert exp.module.test_counts["test/pred_counts"] == cold.metrics.test_pred_counts
    assert tested["test/macro_f1"] == pytest.approx(cold.metrics.test_macro_f1, abs=1e-6)
    assert tested["test/loss"] == pytest.approx(cold.metrics.test_loss, rel=1e-5)


def test_a_rank_killed_mid_fit_fails_the_run_with_one_reason_and_a_rerun_completes(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    # long enough to be killed mid-fit (validation and last.ckpt every epoch); the re-run resumes and finishes
    args = [*DDP, "pretrain.max_epochs=2", "train.max_epochs=100", "target.n_per_class=5",
            "train.val_every_steps=1", "checkpoint.every_s=0", "trainer.enable_progress_bar=false",
            f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    proc = start(args, tmp_path)
    deadline = time.monotonic() + HARD_TIMEOUT_S
    pids: dict[int, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        pids = _rank_pids(run_dir / "train.log")
        if len(pids) == 2 and (run_dir / "checkpoints" / "last.ckpt").exists():
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the fit did not start (or ended) before the kill: {proc.communicate()[1][-3000:]}")
    os.kill(pids[1], signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 1, err[-3000:]
    reason = f"DDP rank 1 (pid {pids[1]}) was killed by SIGKILL; the other ranks were stopped"
    assert f"transferlab: {reason}" in err.splitlines(), err[-3000:]
    rec = RunRecord.read(run_dir / "result.json")
    assert rec.status == "failed" and rec.error == f"RanksFailed: {reason}"
    assert not any(_alive(pid) for pid in pids.values())  # no orphaned rank

    code, _, err = run(args, tmp_path)
    assert code == 0, err[-3000:]
    rec = RunRecord.read(run_dir / "result.json")
    assert rec.status == "ok" and rec.resumed_from and rec.metrics.epochs == 100


def test_a_non_finite_loss_fails_the_run_with_its_reason_whichever_rank_sees_it_first(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run([*DDP, *TINY, "train.lr=1e30", f"hydra.run.dir={run_dir}"], tmp_path)
    assert code == 1, err[-3000:]
    rec = RunRecord.read(run_dir / "result.json")
    # rank 0 records its own error; a rank > 0 leaves its first line for the launcher: never only an exit code
    assert rec.status == "failed" and "NonFiniteLossError: train/loss is nan" in rec.error, rec.error
    assert "Traceback" not in rec.error


def test_a_run_started_as_one_of_several_srun_tasks_is_refused(tmp_path):
    env = {**_env(tmp_path), "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    out = subprocess.run([sys.executable, "-m", "transferlab.train", *TINY], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=HARD_TIMEOUT_S)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = cli_problems(out.stderr)
    assert line.startswith("trainer.devices=") and "task 1 of the 2 that srun started" in line, line
    assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "outputs" / "cache").exists()


# What srun gives the one task of `srun -n1 -c2 python -m transferlab.train trainer=ddp ...` inside a SLURM job
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def ddp_ranks_joined(train_log: Path) -> list[str]:
    """Lightning's line of each rank that joined the process group, as rank 0 logged it ("GLOBAL_RANK: 0, MEMBER:
    1/2" for a run over 2 processes)."""
    return [ln.split(" - ", 1)[-1] for ln in train_log.read_text().splitlines() if "Initializing distributed" in ln]


def test_a_ddp_run_inside_a_slurm_task_trains_over_its_ranks_not_as_two_runs_of_one(tmp_path):
    """Inside a SLURM job, Lightning left to detect its environment took the task's SLURM_NTASKS=1 and
    SLURM_PROCID=0 for every rank: both ranks trained alone, each as rank 0 of 1, into one folder. The ranks
    transferlab starts form one process group of 2 whatever SLURM says."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.train", *DDP, *TINY, f"hydra.run.dir={run_dir}",
                             f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, env={**_env(tmp_path),
                                                                                          **SRUN_TASK},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    assert ddp_ranks_joined(run_dir / "train.log") == ["Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2"]
    assert RunRecord.read(run_dir / "result.json").status == "ok"


def test_ddp_inside_a_multirun_is_refused_before_anything_is_written(tmp_path):
    code, _, err = run(["-m", *DDP, "seed=0,1", "pretrain.max_epochs=1", "train.max_epochs=1"], tmp_path)
    assert code == 2, err[-3000:]
    assert cli_problems(err) == ["trainer.strategy='ddp': one device per sweep point (a DDP run is one command "
                                 "without -m; K points per device: lease.per_device, docs/sweeps.md)"], err[-3000:]
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists()  # no sweep folder, no cache


@pytest.mark.parametrize("args, key", [
    ([f"trainer.devices={len(os.sched_getaffinity(0)) + 1}"], "trainer.devices"),  # more processes than cores
    (["trainer.sync_batchnorm=true"], "trainer.sync_batchnorm"),                   # SyncBatchNorm is GPU-only
    (["transfer=gradual", "train.max_epochs=8"], "transfer.strategy"),            # releases blocks mid-fit
])
def test_bad_ddp_inputs_are_one_line_and_exit_2_with_nothing_written(tmp_path, args, key):
    code, _, err = run([*DDP, *TINY, *args], tmp_path)
    assert code == 2, err[-3000:]
    problems = cli_problems(err)
    assert len(problems) == 1 and problems[0].startswith(key + "="), err[-3000:]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "outputs" / "cache").exists()


def test_ddp_on_a_gpu_without_gpus_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, _, err = run(["trainer=ddp", *TINY], tmp_path)  # trainer=ddp defaults to accelerator=gpu
    assert code == 2 and cli_problems(err) == ["trainer.accelerator='gpu': no GPU is visible here; use auto or cpu"]
    assert not (tmp_path / "outputs" / "cache").exists()


def _shards(rank: int, world: int, init: str, out: str) -> None:
    """In a 2-process gloo group: what each kind of loader gives this rank, and the module's metrics synced."""
    import json

    import torch
    import torch.distributed as dist
    from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

    from transferlab.training.batches import dataloaders, tensor_loaders

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n_train, n_test, bs = 23, 11, 4  # batches of 4, 4, ..., 3 rows; an odd test split
    arrays = [torch.arange(n_train).float()[:, None], torch.arange(n_train) % 3, torch.zeros(5, 1),
              torch.arange(5) % 3, torch.arange(n_test).float()[:, None], torch.arange(n_test) % 3]
    got = {}
    for kind, (train, _, test) in (("tensor", tensor_loaders(arrays, bs, seed=0)),
                                   ("dataloader", dataloaders(arrays, bs, seed=0, num_workers=0))):
        got[kind] = {"train": [x[:, 0].long().tolist() for x, _ in train], "train_len": len(train),
                     "test": [x[:, 0].long().tolist() for x, _ in test], "test_len": len(test)}
        acc, stats = MulticlassAccuracy(3, average="micro"), MulticlassStatScores(3, average=None)
        for x, y in test:  # a fixed "model": predicts x mod 2
            pred = torch.nn.functional.one_hot(x[:, 0].long() % 2, 3).float()
            acc.update(pred, y)
            stats.update(pred, y)
        got[kind]["acc"], got[kind]["support"] = float(acc.compute()), stats.compute()[:, 4].tolist()
    Path(out).write_text(json.dumps(got))
    dist.destroy_process_group()


def test_batches_shard_by_one_rule_and_metrics_equal_one_process(tmp_path):
    """The sharding rule of training/batches.py, in a real 2-process gloo group, for TensorBatches and DataLoaders
    alike: each global training batch split across the ranks (the same batches one process draws, every rank a
    row), every test example evaluated by exactly one rank, and torchmetrics' synced values equal to one
    process's over the whole split."""
    import json
    import multiprocessing as mp

    import torch
    from torchmetrics.classification import MulticlassAccuracy

    from transferlab.training.batches import dataloaders, tensor_loaders

    ctx = mp.get_context("fork")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_shards, args=(r, 2, init, str(tmp_path / f"rank{r}.json"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    n_train, n_test = 23, 11
    arrays = [torch.arange(n_train).float()[:, None], torch.arange(n_train) % 3, torch.zeros(5, 1),
              torch.arange(5) % 3, torch.arange(n_test).float()[:, None], torch.arange(n_test) % 3]
    for kind, make in (("tensor", tensor_loaders), ("dataloader", lambda a, b, seed: dataloaders(a, b, seed,
                                                                                              num_workers=0))):
        one, _, test = make(arrays, 4, seed=0)  # one process: the global batches
        whole = [x[:, 0].long().tolist() for x, _ in one]
        r0, r1 = ranks[0][kind], ranks[1][kind]
        assert r0["train_len"] == r1["train_len"] == len(whole) == 6  # same steps per epoch as one process
        for batch, a, b in zip(whole, r0["train"], r1["train"]):
            assert a == batch[0::2] and b == batch[1::2]  # rows r, r + 2, ... of the same batch
        assert sorted(r0["test"][0] + r1["test"][0]) == list(range(n_test))  # each test example once, no padding
        assert (r0["test_len"], r1["test_len"]) == (1, 1)
        acc = MulticlassAccuracy(3, average="micro")
        for x, y in test:
            acc.update(torch.nn.functional.one_hot(x[:, 0].long() % 2, 3).float(), y)
        assert r0["acc"] == r1["acc"] == float(acc.compute())  # synced: the whole split's accuracy, exactly
        assert r0["support"] == r1["support"] == [4, 4, 3]  # counts summed over ranks: the split's, not doubled


def test_a_training_batch_with_fewer_rows_than_ranks_gives_every_rank_a_row():
    import torch

    from transferlab.training.batches import batch_share

    rows = torch.tensor([5, 6, 7])
    assert [batch_share(rows, r, 4).tolist() for r in range(4)] == [[5], [6], [7], [5]]
    assert [batch_share(rows, r, 2).tolist() for r in range(2)] == [[5, 7], [6]]


def test_a_ddp_run_shares_its_source_model_with_one_device_runs(tmp_path):
    """The launcher pretrains on one device, so the source cache key is a one-device run's (and the run's own
    identity still counts the devices)."""
    from conftest import compose_cfg
    from transferlab.run import identity

    one = compose_cfg([], tmp_path / "one")
    ddp = compose_cfg(DDP, tmp_path / "ddp")
    assert identity.source_fingerprint(one) == identity.source_fingerprint(ddp)
    assert identity.fingerprint(one) != identity.fingerprint(ddp)
