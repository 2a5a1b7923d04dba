"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, tolerant of jobs that die without a result.

submitit raises UncompletedJobError for a job that was killed (SIGKILL, timeout, OOM, node failure), and the
stock launcher then abandons the rest of the array. Here such a job becomes a FAILED JobReturn, the launcher
waits for all the others, and the sweeper reports it as failed (a re-run of the sweep runs it again).
"""

from __future__ import annotations

from typing import Sequence
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class TolerantSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.core import Job

        results = Job.results

        def tolerant(job):  # noqa: ANN001
            try:
                return results(job)
            except Exception as e:  # UncompletedJobError and friends
                ret = JobReturn(status=JobStatus.FAILED, working_dir=None)
                ret.return_value = e
                return [ret]

        with mock.patch.object(Job, "results", tolerant):
            return super().launch(job_overrides, initial_job_idx)
