"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, tolerant, detachable and requeueing.

- Tolerant: submitit raises UncompletedJobError for a job that was killed (SIGKILL, timeout, OOM, node failure),
  and the stock launcher then abandons the rest of the array. Here such a job becomes a FAILED JobReturn, the
  launcher waits for all the others, and the sweeper reports it as failed (a re-run of the sweep runs it again).
- Detach (`hydra.launcher.detach=true`): submit the array and return at once; the sweeper records each point as
  submitted with its SLURM job id, and `transferlab-status` / `transferlab-report` read the results as they come
  (no database: the sweep folder is the state).
- Requeue (`hydra.launcher.max_requeue=N`): a task that reaches its time limit or is pre-empted gets SLURM's
  warning signal (`signal_delay_s` before the limit), and submitit's checkpoint hook (this launcher's `checkpoint`)
  requeues it, at most N times for time limits (pre-emptions always); the requeued task runs the same point again,
  which continues from its `last.ckpt` (`checkpoint.every_s` bounds what is lost).
- Arrays within the cluster's cap: SLURM refuses an array whose task indices reach its `MaxArraySize` (often 1001),
  and submitit does not split arrays (submitit #1624). A sweep with more points is submitted as several arrays of
  at most that many tasks (`max_array_size`, null = read from `scontrol show config`), all before any is waited on.
- Pull (`hydra.launcher.pull=true hydra.launcher.workers=W`): instead of one array task per point, W jobs (each
  with this launcher's resources, e.g. one node and its GPUs) drain the sweep folder's points like
  `hydra/launcher=pull`'s local workers (pull.py, transferlab.sweep.pull), so a sweep of any size needs W jobs, not
  one per point. `tasks_per_node=G` with `gpus_per_task=1` makes each job G workers, one per GPU. The submitting
  process waits for its workers (`detach` is refused with pull: see docs/sweeps.md).
"""

# No `from __future__ import annotations`: OmegaConf reads the dataclass's annotations as types, and Hydra's plugin
# scan imports this module under a name it does not keep in sys.modules (string annotations could not resolve).
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)


@dataclass
class TransferlabSlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's SLURM settings plus transferlab's two."""

    _target_: str = "hydra_plugins.transferlab_plugins.slurm.TolerantSlurmLauncher"
    detach: bool = False    # submit and return at once; follow with transferlab-status
    max_requeue: int = 0    # time-limit requeues per task (submitit's max_num_timeout)
    max_array_size: Optional[int] = None  # tasks per array at most; null = the cluster's MaxArraySize
    pull: bool = False      # W worker jobs drain the sweep folder instead of one array task per point
    workers: int = 1        # pull: worker jobs
    heartbeat_s: float = 30.0
    expire_s: float = 300.0
    poll_s: float = 5.0


ConfigStore.instance().store(group="hydra/launcher", name="transferlab_slurm", node=TransferlabSlurmConf,
                             provider="transferlab")


class TolerantSlurmLauncher(SlurmLauncher):
    def __init__(self, detach: bool = False, max_requeue: int = 0, pull: bool = False, workers: int = 1,
                 heartbeat_s: float = 30.0, expire_s: float = 300.0, poll_s: float = 5.0,
                 max_array_size: Optional[int] = None, **params: Any) -> None:
        from transferlab.errors import ConfigError, problem

        if max_array_size is not None and (isinstance(max_array_size, bool) or not isinstance(max_array_size, int)
                                           or max_array_size < 1):
            raise ConfigError(problem("hydra.launcher.max_array_size", max_array_size, "null (the cluster's "
                                      "MaxArraySize) or an integer >= 1 (tasks per array at most)"))

        if pull:
            from hydra_plugins.transferlab_plugins.pull import check

            check(workers, heartbeat_s, expire_s, poll_s)
            if detach:
                raise ConfigError(problem("hydra.launcher.detach", True, "false with hydra.launcher.pull=true (the "
                                                                         "submitting process waits for its workers)"))
        else:  # an array task runs its one point: a second task would run the same point into the same folder
            several = [problem(f"hydra.launcher.{key}", params[key], "1 without hydra.launcher.pull=true (each task "
                               "would run the same point into one folder; with pull=true each task is a worker)")
                       for key in ("tasks_per_node", "nodes") if params.get(key) not in (None, 1)]
            if several:
                raise ConfigError(several)
        if max_requeue:
            params["max_num_timeout"] = int(max_requeue)
        super().__init__(**params)
        self.detach = bool(detach)
        self.pull = bool(pull)
        self.workers, self.heartbeat_s, self.expire_s, self.poll_s = workers, heartbeat_s, expire_s, poll_s
        self.max_array_size = max_array_size
        self.submitted: list = []  # detach: the job ids, in the order of the launched points

    def _executor(self) -> Any:
        """submitit's SLURM executor with this launcher's parameters (as the stock launcher builds it)."""
        import submitit
        from omegaconf import OmegaConf

        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init["slurm_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster="slurm", **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        return executor

    def _pull(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        """W worker jobs drain these jobs' units from the sweep folder (pull.py); returns what each unit ended as."""
        from pathlib import Path

        from hydra.core.singleton import Singleton

        from hydra_plugins.transferlab_plugins.pull import PullWorker, queue, returns

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        units = queue(sweep_dir, job_overrides, initial_job_idx, self.heartbeat_s, self.expire_s)
        worker = PullWorker(self.hydra_context, self.config, self.task_function, Singleton.get_state(),
                            str(sweep_dir), self.poll_s)
        n = min(self.workers, len(units))
        jobs = self._executor().map_array(worker, [f"w{i}" for i in range(n)])
        log.info("pull: %d SLURM worker jobs (%s) drain %d units of %s", n, jobs[0].job_id.split("_")[0] if jobs
                 else "-", len(units), sweep_dir)
        for job in jobs:
            try:
                job.results()
            except Exception as e:  # noqa: BLE001 - a killed worker: the others take its claim over
                log.warning("pull worker job %s ended without finishing: %s", job.job_id, str(e).splitlines()[0])
        return returns(sweep_dir, units)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from transferlab.compat import submitit_launch

        def tolerant(results, job):  # noqa: ANN001, ANN202 - where the stock launch waits on a job
            if self.detach:  # submitted: do not wait
                self.submitted.append(str(job.job_id))
                ret = JobReturn(status=JobStatus.UNKNOWN, working_dir=None)
                ret.return_value = None
                return [ret]
            try:
                return results(job)
            except Exception as e:  # UncompletedJobError and friends
                ret = JobReturn(status=JobStatus.FAILED, working_dir=None)
                ret.return_value = e
                return [ret]

        if self.pull:
            return self._pull(job_overrides, initial_job_idx)
        self.submitted = []
        cap = self.max_array_size or cluster_max_array_size()
        parallel = self.params.get("array_parallelism")

        def in_arrays(one_array, executor, fn, *iterables):  # noqa: ANN001, ANN202 - where the stock launch submits
            args = list(zip(*iterables))
            size = min(cap or len(args), len(args)) or 1
            arrays = -(-len(args) // size)
            if arrays > 1:
                share = max(1, int(parallel) // arrays) if parallel else None
                if share:  # SLURM throttles each array alone: together they keep to array_parallelism
                    executor.update_parameters(array_parallelism=share)
                log.info("%d points as %d arrays of at most %d tasks (%s), at most %s tasks of each at once",
                         len(args), arrays, size, "hydra.launcher.max_array_size" if self.max_array_size else
                         "the cluster's MaxArraySize", share or "all")
            return [job for i in range(0, len(args), size) for job in one_array(executor, fn, *zip(*args[i:i + size]))]

        return submitit_launch(lambda: super(TolerantSlurmLauncher, self).launch(job_overrides, initial_job_idx),
                               tolerant, in_arrays)


def cluster_max_array_size() -> Optional[int]:
    """SLURM's `MaxArraySize` (`scontrol show config`): an array's task indices must stay below it. None when it
    cannot be read (no scontrol here: the array is submitted whole, and SLURM says if it is too large)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(found.group(1)) if found else None
