"""`hydra/launcher=pull`: W local worker processes drain the sweep's points from its folder (transferlab.sweep.pull).

The sweeper hands this launcher its launch units as it hands them to any launcher (one job's overrides per point or
vectorised group); the launcher writes them as the sweep folder's queue, starts W workers and waits for them. Each
worker claims a unit, runs it the way Hydra's launchers run a job (the job's config composed by the config loader
from the same overrides, `run_job` with the task function: the same folder, result.json and fingerprint as any other
launcher), and claims the next until every unit has ended. `hydra/launcher=slurm hydra.launcher.pull=true` runs the
same workers as SLURM jobs (slurm.py). What each unit ended as is read back from its claim and the sweeper judges
each point by what it left on disk, as for every launcher.

A pull launcher used without a sweep (`-m`) is refused before Hydra writes anything (`SweepLauncherCheck`).
"""

# No `from __future__ import annotations`: OmegaConf reads the dataclass's annotations as types (see slurm.py).
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig

log = logging.getLogger(__name__)
PAYLOAD = ".pull.pkl"  # the pickled worker (task function, config loader, master config) local workers load


@dataclass
class PullLauncherConf:
    _target_: str = "hydra_plugins.transferlab_plugins.pull.PullLauncher"
    workers: int = 2           # worker processes on this machine
    heartbeat_s: float = 30.0  # a worker raises its claim's beat this often
    expire_s: float = 300.0    # a claim whose beat has not moved this long (the claimer's clock) is taken over
    poll_s: float = 2.0        # an idle worker looks for a free or expired claim this often


ConfigStore.instance().store(group="hydra/launcher", name="transferlab_pull", node=PullLauncherConf,
                             provider="transferlab")


def check(workers: Any, heartbeat_s: Any, expire_s: Any, poll_s: Any) -> None:
    """ConfigError (one line per problem, exit 2 from the CLI) before anything is written."""
    from transferlab.errors import ConfigError
    from transferlab.sweep.pull import timing_problems

    problems = timing_problems(workers, heartbeat_s, expire_s, poll_s, "hydra.launcher")
    if problems:
        raise ConfigError(problems)


class SweepLauncherCheck(Callback):
    """A pull launcher without `-m`: Hydra runs a single job itself and never calls a launcher, so the request would
    silently run one job in this process. Refused as Hydra instantiates its callbacks (conf/hydra/default.yaml),
    before it creates the run folder: a callback's own hooks cannot refuse (Hydra turns their errors into warnings).
    """

    def __init__(self, mode: Any, launcher: Any, pull: Any = False) -> None:
        from transferlab.errors import ConfigError, problem

        if str(getattr(mode, "name", mode)) == "MULTIRUN":
            return
        if str(launcher).endswith(".PullLauncher"):
            raise ConfigError(problem("hydra/launcher", "pull", "pull mode drains a sweep folder: run with -m"))
        if str(launcher).endswith(".TolerantSlurmLauncher") and pull is True:
            raise ConfigError(problem("hydra.launcher.pull", True, "pull mode drains a sweep folder: run with -m"))


# ---------------------------------------------------------------- the work, in any worker
def _rank_zero_of_its_own_runs() -> None:
    """Each task of a G-task worker job is a worker of its own, and each of its points is a one-device run: rank 0 of
    it. Lightning takes `SLURM_PROCID` for the process's rank when it is imported (`rank_zero_only.rank`), and only
    a multi-process strategy ever sets it again, so on tasks 1..G-1 every rank-zero-only write (the CSV and W&B
    loggers, Lightning's own log lines) would be skipped without a word."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    rank_zero_only.rank = 0


class PullWorker:
    """What a worker runs (pickled with everything a job needs, like submitit's launcher object): `drain` the
    queue, running each unit as Hydra's launchers run a job."""

    def __init__(self, hydra_context: Any, config: DictConfig, task_function: Any, singleton_state: Dict,
                 sweep_dir: str, poll_s: float) -> None:
        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function
        self.singleton_state, self.sweep_dir, self.poll_s = singleton_state, sweep_dir, poll_s

    def __call__(self, worker: str) -> int:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        from transferlab.sweep.pull import drain

        Singleton.set_state(self.singleton_state)
        setup_globals()
        if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:  # tasks_per_node=G: G workers in one SLURM job
            worker = f"{worker}.{os.environ.get('SLURM_PROCID', '0')}"
            _rank_zero_of_its_own_runs()
        return drain(self.sweep_dir, worker, self.run_unit, poll_s=self.poll_s)

    def run_unit(self, unit: Any) -> Optional[str]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import run_job
        from omegaconf import open_dict

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(unit.overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{unit.num}"
            cfg.hydra.job.num = unit.num
        HydraConfig.instance().set_config(cfg)
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if ret.status == JobStatus.FAILED:
            from transferlab.compat import job_exception

            e = job_exception(ret)
            return f"{type(e).__name__}: {e}".splitlines()[0]
        return None


def queue(sweep_dir: Path, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, heartbeat_s: float,
          expire_s: float) -> list:
    """Write the queue of these jobs (one unit each, named by its `hydra.sweep.subdir`); returns the units."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from transferlab.sweep.pull import Unit, write_queue

    parse = OverridesParser.create().parse_overrides
    units = []
    for i, overrides in enumerate(job_overrides):
        subdir = [o for o in parse([o for o in overrides if o.startswith("hydra.sweep.subdir=")])]
        if not subdir:
            raise ValueError("pull mode: a job without hydra.sweep.subdir (the transferlab sweeper names every "
                             "point's folder; use hydra/sweeper=transferlab)")
        units.append(Unit(name=str(subdir[-1].value()), overrides=list(overrides), num=initial_job_idx + i))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_queue(sweep_dir, units, heartbeat_s, expire_s)
    return units


def returns(sweep_dir: Path, units: list) -> List[Optional[JobReturn]]:
    """Per unit: COMPLETED or FAILED (with the run's error) when its run ended in this launch, None when no worker
    ended it (every worker died first): the sweeper then judges it by its folder, as for a lost launcher batch."""
    from transferlab.compat import job_return
    from transferlab.sweep.pull import read_claim, read_queue

    launch = read_queue(sweep_dir)[0]
    out: List[Optional[JobReturn]] = []
    for u in units:
        claim = read_claim(sweep_dir / u.name) or {}
        if claim.get("launch") != launch or not claim.get("ended"):
            out.append(None)
            continue
        out.append(job_return(JobStatus.FAILED if claim.get("error") else JobStatus.COMPLETED,
                              str(sweep_dir / u.name), RuntimeError(claim["error"]) if claim.get("error") else None))
    return out


class PullLauncher(Launcher):
    def __init__(self, workers: int = 2, heartbeat_s: float = 30.0, expire_s: float = 300.0,
                 poll_s: float = 2.0) -> None:
        check(workers, heartbeat_s, expire_s, poll_s)
        self.workers, self.heartbeat_s, self.expire_s, self.poll_s = workers, heartbeat_s, expire_s, poll_s
        self.config: Optional[DictConfig] = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def worker(self, sweep_dir: Path) -> PullWorker:
        from hydra.core.singleton import Singleton

        return PullWorker(self.hydra_context, self.config, self.task_function, Singleton.get_state(),
                          str(sweep_dir), self.poll_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        import cloudpickle

        from transferlab.store.atomic import atomic_path

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        units = queue(sweep_dir, job_overrides, initial_job_idx, self.heartbeat_s, self.expire_s)
        with atomic_path(sweep_dir / PAYLOAD) as tmp:
            tmp.write_bytes(cloudpickle.dumps(self.worker(sweep_dir)))
        n = min(self.workers, len(units))
        log.info("pull: %d workers drain %d units of %s", n, len(units), sweep_dir)
        procs = [subprocess.Popen([sys.executable, "-m", __name__, str(sweep_dir / PAYLOAD), f"w{i}"])
                 for i in range(n)]
        for i, p in enumerate(procs):
            code = p.wait()
            if code:
                log.warning("pull worker w%d (pid %d) exited with code %d", i, p.pid, code)
        return returns(sweep_dir, units)


def main(argv: List[str]) -> None:
    """A local worker: `python -m hydra_plugins.transferlab_plugins.pull PAYLOAD WORKER`."""
    import cloudpickle

    payload, worker = argv
    code = 0
    try:
        cloudpickle.loads(Path(payload).read_bytes())(worker)
    except BaseException:  # noqa: BLE001 - reported, then the fast exit below
        logging.getLogger(__name__).exception("pull worker %s failed", worker)
        code = 1
    import atexit
    import threading

    # Results are on disk: the exit hooks a normal exit runs, then no interpreter teardown (as transferlab.train.cli)
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
