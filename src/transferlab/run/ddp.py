"""One run over several devices of one node (DDP) that cannot deadlock: the launching process derives everything
and then starts the ranks, which only read.

Why not Lightning's own launcher. With `strategy=ddp`, Lightning's subprocess launcher re-executes the script for
ranks 1..N-1 when the first `fit` starts (`lightning.fabric.strategies.launchers.subprocess_script`; under Hydra
with `hydra.run.dir=<the run dir>` added, so the ranks share the run folder). A re-executed rank runs everything
the script does before its fit: on a source cache miss it waits on the entry's file lock, which rank 0 holds while
it pretrains, and rank 0 waits for it in `init_process_group` (issue 27's hang). The pretraining's own fit would
spawn the ranks, every rank would write the run's files, and when a rank dies Lightning's observer thread SIGKILLs
the others and rank 0 itself, so no failed record is ever written.

So the process the user started (the launcher) is no rank:
1. It validates the config (a ConfigError writes nothing), then derives everything the fit needs exactly as a
   one-device run does (`Experiment.build`: the source model, pretrained on one device when the cache lacks it;
   the feature cache; the scores; the data subsets) and settles the resume state (`resume_state`: a committed best
   model put back, damaged checkpoints set aside), all before any rank exists. It holds no lock afterwards.
2. It starts N rank processes (`python -m transferlab.train <the same arguments> hydra.run.dir=<the run dir>`,
   with LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, so Lightning joins them and starts nothing
   itself) and waits for them.
3. A rank reads finished, verified cache entries and takes no lock (`store.verified.read_only`): a missing entry
   is an error, never a wait. Rank 0 writes the run's files (checkpoints, logs, W&B, result.json, from what the
   launcher handed over for the record: cache statuses, scores); ranks > 0 write nothing, not even a log file.
4. When a rank exits with an error or is killed, the launcher kills the other ranks and records the run as failed
   with which rank ended how (or with rank 0's own error when rank 0 recorded one). Ranks die with the launcher
   (PR_SET_PDEATHSIG), so none is left behind when it is killed.

How the ranks share data and what a DDP run equals: training/batches.py (the sharding rule) and docs/cli.md.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from transferlab.errors import Problem, problem

log = logging.getLogger(__name__)

HANDOFF_ENV = "TRANSFERLAB_DDP"  # in a rank's environment: the launcher's pid and what it derived for the record
STRATEGIES = ("ddp", "ddp_find_unused_parameters_true")  # Lightning's DDPStrategy, which the ranks run
DDP_KEYS = ("strategy", "sync_batchnorm")  # trainer keys only a DDP fit reads
POLL_S = 0.05  # how often the launcher looks at its ranks
GRACE_S = 60.0  # a rank still running this long after the others all ended well is stopped


class RanksFailed(RuntimeError):
    """A rank of a DDP run failed or was killed; the launcher stopped the others and recorded the run as failed."""


def _listed(devices: Any) -> list | None:
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, (str, Mapping))):
        return list(devices)
    return None


def processes(trainer: Mapping) -> int:
    """How many training processes `trainer` asks for (1: an ordinary run in this process). `devices` auto/-1
    mean every visible GPU when the accelerator may be a GPU (Lightning's reading; on a CPU, auto is one)."""
    devices = trainer.get("devices", 1)
    ids = _listed(devices)
    if ids is not None:
        return max(1, len(ids))
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return max(1, int(devices))
    if devices in ("auto", -1, "-1", None) and str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def _stated(devices: Any) -> int | None:
    """The device count a `devices` value states without asking the machine (None: auto, -1)."""
    ids = _listed(devices)
    if ids is not None:
        return len(ids)
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 0 else None
    return int(devices) if isinstance(devices, str) and devices.strip().isdigit() else None


def asks_for_ranks(trainer: Mapping) -> bool:
    """Does `trainer` ask for a DDP run, as far as the config alone tells (torch-free, for the sweeper)?"""
    return (_stated(trainer.get("devices", 1)) or 1) > 1 or str(trainer.get("strategy") or "auto") in STRATEGIES


def single_device(trainer: Mapping, *, machine: bool = True) -> dict:
    """The trainer settings of a fit the launching process runs itself (the source pretraining): the DDP keys
    out and one device, the first one listed. `identity.source_fingerprint` keys the source cache on these, as
    they are what shaped the model; it passes `machine=False` (torch-free: devices=auto without DDP keys stays
    auto in the key, as it does for any run)."""
    t = {k: v for k, v in trainer.items() if k not in DDP_KEYS}
    devices = t.get("devices", 1)
    ids = _listed(devices)
    if ids is not None:
        t["devices"] = ids[:1]
    elif (any(k in trainer for k in DDP_KEYS) or (_stated(devices) or 1) > 1
          or (machine and _stated(devices) is None and processes(t) > 1)):
        t["devices"] = 1
    return t


def _on_gpu(trainer: Mapping) -> bool:
    acc = str(trainer.get("accelerator", "auto"))
    if acc in ("gpu", "cuda"):
        return True
    if acc != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _sweep_job() -> bool:
    """Is this run a job of a sweep? Then its launcher placed it (pull workers are G srun tasks of one job, each
    running its own points), and several srun tasks are how it was meant to run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def check(cfg) -> list[Problem]:
    """A config that asks for several devices: what the ranks can run. Called by run/setup.py with the other
    checks (so `trainer.devices` beyond what is visible is `check_devices`' one line there)."""
    t = cfg["trainer"]
    out: list[Problem] = []
    if "LOCAL_RANK" in os.environ and HANDOFF_ENV not in os.environ:
        out.append(problem("trainer.devices", t.get("devices"), "this process was started as a rank by another "
                           f"launcher (LOCAL_RANK={os.environ['LOCAL_RANK']}: torchrun, srun); start transferlab "
                           "once per node, it starts its ranks itself"))
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    if tasks.isdigit() and int(tasks) > 1 and HANDOFF_ENV not in os.environ and not _sweep_job():
        out.append(problem("trainer.devices", t.get("devices"), f"this process is task "
                           f"{os.environ.get('SLURM_PROCID', '?')} of the {tasks} that srun started "
                           f"(SLURM_STEP_NUM_TASKS={tasks}), each running this same config into one folder; start "
                           "transferlab as one task per node (srun --ntasks-per-node=1), it starts its ranks itself"))
    strategy = t.get("strategy")
    if processes(t) <= 1:
        return out
    if strategy not in (None, "auto", *STRATEGIES):
        out.append(problem("trainer.strategy", strategy, f"one of {list(STRATEGIES)} with trainer.devices="
                           f"{t.get('devices')}: transferlab starts the DDP ranks itself (docs/cli.md)"))
    if t.get("num_nodes") not in (None, 1):
        out.append(problem("trainer.num_nodes", t.get("num_nodes"), "1: a DDP run uses the devices of one node"))
    if t.get("sync_batchnorm") and not _on_gpu(t):
        out.append(problem("trainer.sync_batchnorm", t.get("sync_batchnorm"), "null or false without GPUs (torch's "
                           "SyncBatchNorm runs on GPUs only)"))
    return out


def check_prepared(cfg, plan, target) -> list[Problem]:
    """What a DDP run needs of the built plan and task (run/setup.py's PLAN_CHECKS):
    - a fixed trainable set: DDP registers the parameters that require a gradient when it wraps the model at fit
      start, and its reducer waits for a gradient of each in every step; a plan that keeps blocks frozen for its
      first epochs (gradual, lp_ft) gives them none, so the fit would stop at its second step;
    - at least one val and one test example per rank: each rank computes the epoch's metrics (a collective),
      which a rank without examples would skip."""
    n = processes(cfg["trainer"])
    if n <= 1:
        return []
    out = []
    if plan is not None and plan.strategy != "fixed":
        out.append(problem("transfer.strategy", plan.strategy, "fixed with trainer.devices > 1 (DDP registers the "
                           "parameters when the fit starts; a block released later gets no gradient before then)"))
    fewest = None if target is None else min(len(target.val_y), len(target.test_y))
    if fewest is not None and fewest < n:
        out.append(problem("trainer.devices", cfg["trainer"].get("devices"), f"at most {fewest} processes: every "
                           "rank needs a val and a test example"))
    return out


def refuse_in_sweep(cfg) -> None:
    """A sweep point is one device (docs/sweeps.md: several points per device with `lease.per_device`): a rank
    re-running a multirun command would start the sweep again, as Lightning's and Hydra's issues show
    (Lightning #11300, Hydra #2070). Raises ConfigError; the sweeper calls it for every point before any folder
    exists."""
    from transferlab.errors import ConfigError

    t = cfg["trainer"]
    if asks_for_ranks(t):
        key = "trainer.strategy" if t.get("strategy") in STRATEGIES else "trainer.devices"
        raise ConfigError(problem(key, t.get(key.split(".")[1]), "one device per sweep point (a DDP run is one "
                                  "command without -m; K points per device: lease.per_device, docs/sweeps.md)"))


# ------------------------------------------------------------------------------------------------------ launcher


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


OWN_ARGS = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=", "hydra.job_logging")


def rank_command(rank: int, run_dir: str, argv: list[str]) -> list[str]:
    """The command of one rank: this run's arguments (as Lightning re-executes the script), the run folder fixed
    (one folder for every rank, whatever `${now:...}` says by then), no Hydra config copy, and for ranks > 0 no
    log file (they log to the terminal at warning level)."""
    args = [a for a in argv if not a.lstrip("+~").removeprefix("override ").startswith(OWN_ARGS)]
    args += [f"hydra.run.dir={_quote(run_dir)}", "hydra.output_subdir=null"]
    if rank > 0:
        args.append("hydra/job_logging=stdout")
    return [sys.executable, "-m", "transferlab.train", *args]


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every rank still running (a rank blocked in a collective does not run a SIGTERM handler) and reap."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def _wait(procs: list[subprocess.Popen]) -> tuple[int, str] | None:
    """None when every rank exits 0; else (the failed rank, why the run failed), the other ranks stopped.

    The failed rank is the first seen to end badly, one killed by a signal first among those seen at once: when a
    rank dies, the others fail in their next collective ("connection closed by peer"), which is a consequence."""
    all_done_since = None
    while True:
        codes = [p.poll() for p in procs]
        bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            rank = min(bad, key=lambda r: (codes[r] > 0, r))  # signals first, then the lowest rank
            _stop(procs)
            return rank, f"DDP rank {rank} (pid {procs[rank].pid}) {_how(codes[rank])}; the other ranks were stopped"
        if all(c == 0 for c in codes):
            return None
        if any(c == 0 for c in codes):
            all_done_since = all_done_since or time.monotonic()
            if time.monotonic() - all_done_since > GRACE_S:
                late = [r for r, c in enumerate(codes) if c is None]
                _stop(procs)
                return late[0], f"DDP ranks {late} still ran {GRACE_S:.0f} s after the others ended; they were stopped"
        time.sleep(POLL_S)


def _leave_error(given: Mapping[str, Any], rank: int, error: BaseException) -> None:
    """A rank > 0 writes no run file; its error's first line goes to the launcher's errors folder, so the record
    says why the run failed (a non-finite loss seen first on rank 1), not only an exit code."""
    folder = given.get("errors")
    if folder:
        line = (str(error).strip().splitlines() or [""])[0]
        try:
            Path(folder, f"rank-{rank}.txt").write_text(f"{type(error).__name__}: {line}")
        except OSError:
            pass  # the exit code still tells the launcher this rank failed


def _with_rank_error(why: str, rank: int, folder: str) -> str:
    """`why` (from `_wait`) with the error the failed rank left, when it left one."""
    try:
        error = Path(folder, f"rank-{rank}.txt").read_text().strip()
    except OSError:
        return why
    return f"{why}: {error}" if error else why


def _plain(value: Any) -> Any:
    """JSON for what the record holds beside plain values (numpy scalars in the scores)."""
    return value.item() if hasattr(value, "item") else str(value)


def _result_stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _release_devices() -> None:
    """The launcher keeps its process while the ranks run: give back the GPU memory its build cached."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def launch(cfg) -> dict[str, Any]:
    """Run `cfg` over `processes(cfg.trainer)` ranks (module docstring); returns the record rank 0 wrote.
    ConfigError before anything is written; RanksFailed (the record says failed, with why) when a rank failed."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from transferlab.run.experiment import Experiment
    from transferlab.run.record import RunRecord
    from transferlab.store import feature_cache
    from transferlab.training.checkpoints import resume_state

    n = processes(cfg.trainer)
    exp = Experiment(cfg)  # validation: a ConfigError writes nothing
    started = time.time() - (time.perf_counter() - exp.t0)  # the run's start as its record counts it
    procs: list[subprocess.Popen] = []
    errors: str | None = None
    result = exp.run_dir / "result.json"
    try:
        exp.build()  # every cache entry a rank reads, made here; the record's cache statuses and scores
        resume_state(exp.run_dir / "checkpoints", exp.fingerprint)  # files set right once, before any rank reads
        errors = tempfile.mkdtemp(prefix="transferlab-ddp-")  # ranks > 0 leave their error here, not in the run
        handoff = {"launcher": os.getpid(), "fingerprint": exp.fingerprint, "started": started,
                   "source_cache": exp.record.source_cache, "feature_cache": exp.record.feature_cache,
                   "scores": exp.record.scores, "errors": errors}
        exp.net = exp.module = exp.batches = None
        feature_cache.forget()
        _release_devices()
        run_dir = str(HydraConfig.get().runtime.output_dir)
        env = {**os.environ, "NODE_RANK": "0", "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(find_free_network_port()), HANDOFF_ENV: json.dumps(handoff, default=_plain)}
        before = _result_stat(result)
        log.info("DDP: starting %d ranks (trainer.devices=%s) in %s", n, cfg.trainer.devices, run_dir)
        for rank in range(n):
            procs.append(subprocess.Popen(rank_command(rank, run_dir, sys.argv[1:]), cwd=os.getcwd(),
                                          env={**env, "LOCAL_RANK": str(rank)}))
            log.info("DDP: rank %d is pid %d", rank, procs[-1].pid)
        failure = _wait(procs)
        if failure is not None:
            failure = failure[0], _with_rank_error(failure[1], failure[0], errors)
    except BaseException as e:
        _stop(procs)
        if isinstance(e, Exception):
            exp.fail(e)
        raise
    finally:
        if errors is not None:
            shutil.rmtree(errors, ignore_errors=True)
    written = _result_stat(result) not in (None, before)
    try:
        record = RunRecord.read(result) if written else None
    except (OSError, ValueError):  # rank 0 died between its record and the record's seal: no record to trust
        record = None
    if failure is None:
        if record is not None and record.status == "ok":
            return record.to_dict()
        failure = 0, "the ranks ended without an ok result.json from rank 0"
    rank, why = failure
    if rank == 0 and record is not None and record.status == "failed":  # rank 0's own error is the reason
        raise RanksFailed(f"{why}: {record.error}")
    error = RanksFailed(why)  # replaces what rank 0 may have recorded as a consequence (a broken collective)
    exp.fail(error)
    raise error


# ---------------------------------------------------------------------------------------------------------- ranks


def handoff() -> dict[str, Any] | None:
    """What the launcher handed this rank (module docstring), or None: this process is no DDP rank."""
    raw = os.environ.get(HANDOFF_ENV)
    return json.loads(raw) if raw and "LOCAL_RANK" in os.environ else None


def _follow_launcher(pid: int) -> None:
    """Die with the launcher: SIGKILL from the kernel when it exits (Linux), checked once against a launcher that
    died before this was set."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the check below and the launcher's own _stop remain
        pass
    if os.getppid() != pid:
        os._exit(1)


def rank_trainer(cfg) -> None:
    """The Lightning settings of a rank, set after the run's fingerprint was taken (they are how, not what):
    DDP (the configured DDP strategy, or ddp), sync_batchnorm null resolved (on with GPUs; torch's SyncBatchNorm
    runs on GPUs only), and Lightning's sampler injection off, as the batches shard themselves
    (training/batches.py)."""
    from omegaconf import open_dict

    t = cfg.trainer
    with open_dict(t):
        t.strategy = t.strategy if t.get("strategy") in STRATEGIES else "ddp"
        t.sync_batchnorm = bool(t.sync_batchnorm) if t.get("sync_batchnorm") is not None else _on_gpu(t)
        t.use_distributed_sampler = False


def run_rank(cfg, given: dict[str, Any]) -> None:
    """One rank: the run's build from the finished caches, its share of the fit and test; rank 0 writes the run's
    files, ranks > 0 nothing."""
    from transferlab.run.experiment import Experiment
    from transferlab.store import verified

    rank = int(os.environ["LOCAL_RANK"])
    _follow_launcher(int(given["launcher"]))
    if rank > 0:
        logging.getLogger("transferlab").setLevel(logging.WARNING)  # the launcher and rank 0 log the run
    verified.read_only(f"DDP rank {rank} reads only what the launching process made before starting the ranks")
    # The module logs torchmetrics' computed values, which torchmetrics already reduced across the ranks; Lightning's
    # advice to add sync_dist=True would reduce them a second time (a mean of equal values: same, slower).
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
    exp = Experiment(cfg)
    if exp.fingerprint != given["fingerprint"]:
        raise RuntimeError(f"DDP rank {rank} composed another run ({exp.fingerprint}) than its launcher "
                           f"({given['fingerprint']})")
    exp.t0 = time.perf_counter() - (time.time() - float(given["started"]))  # wall time from the launcher's start
    exp.build(score=False)  # with the config as the launcher built it: the same cache keys
    rank_trainer(cfg)
    if rank > 0:
        try:
            exp.fit(logger=False)
        except Exception as e:
            _leave_error(given, rank, e)
            raise
        return
    for key in ("source_cache", "feature_cache", "scores"):  # as the launcher found and made them
        setattr(exp.record, key, given[key])
    try:
        exp.close(exp.fit())
    except Exception as e:
        exp.fail(e)
        raise
