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
"""

# No `from __future__ import annotations`: OmegaConf reads the dataclass's annotations as types, and Hydra's plugin
# scan imports this module under a name it does not keep in sys.modules (string annotations could not resolve).
from dataclasses import dataclass
from typing import Any, Sequence
from unittest import mock

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


@dataclass
class TransferlabSlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's SLURM settings plus transferlab's two."""

    _target_: str = "hydra_plugins.transferlab_plugins.slurm.TolerantSlurmLauncher"
    detach: bool = False    # submit and return at once; follow with transferlab-status
    max_requeue: int = 0    # time-limit requeues per task (submitit's max_num_timeout)


ConfigStore.instance().store(group="hydra/launcher", name="transferlab_slurm", node=TransferlabSlurmConf,
                             provider="transferlab")


class TolerantSlurmLauncher(SlurmLauncher):
    def __init__(self, detach: bool = False, max_requeue: int = 0, **params: Any) -> None:
        if max_requeue:
            params["max_num_timeout"] = int(max_requeue)
        super().__init__(**params)
        self.detach = bool(detach)
        self.submitted: list = []  # detach: the job ids, in the order of the launched points

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.core import Job

        results = Job.results

        def tolerant(job):  # noqa: ANN001
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

        self.submitted = []
        with mock.patch.object(Job, "results", tolerant):
            return super().launch(job_overrides, initial_job_idx)
