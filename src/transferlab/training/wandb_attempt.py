"""Which W&B run a job logs to: one run id per attempt, so a resumed or requeued job continues its run.

An *attempt* is one line of training from step 0: it starts when a job's fit starts from nothing and lasts through
every resume from its `last.ckpt` (a kill -9, a SLURM requeue, a crash and the same command again). A job whose
checkpoints were cleared (`resume=false`, another fingerprint in the folder, a vectorised group, which never
resumes) starts a new attempt. The run id is made at an attempt's start from the job's fingerprint, its folder and
the attempt number (`<fingerprint[:12]>-<folder hash>-<attempt>`), recorded in `<job dir>/wandb_run.json`, and
reused by every resume of that attempt; `wandb.init(id=..., resume="allow")` then makes every offline folder of
the attempt carry one id, so `wandb sync` of a sweep gives one W&B run per point and attempt.

The ledger lives beside the checkpoints, not in their folder: clearing them must not reset the attempt count, or
a fresh start would reuse (and append to) the previous attempt's run. The folder hash keeps the same point run in
two output folders from sharing a run in one project.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transferlab.store.atomic import write_json

LEDGER = "wandb_run.json"  # in the job's folder (a point's run dir; its `source/` for pretraining)


def _folder_hash(job_dir: Path) -> str:
    return hashlib.sha256(str(Path(job_dir).resolve()).encode()).hexdigest()[:8]


def read_ledger(job_dir: str | Path) -> dict | None:
    """The job folder's record of its current attempt ({fingerprint, attempt, id, ids}), or None."""
    try:
        obj = json.loads((Path(job_dir) / LEDGER).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def attempt_run_id(job_dir: str | Path, fingerprint: str, *, resumes: bool) -> str:
    """The W&B run id of this job. `resumes`: the fit will continue the folder's `last.ckpt` (same attempt);
    the ledger's id is reused when it was made for this fingerprint. Otherwise a new attempt begins: the next
    number, a new id, recorded before the run opens."""
    job_dir = Path(job_dir)
    prior = read_ledger(job_dir) or {}
    if resumes and prior.get("fingerprint") == fingerprint and isinstance(prior.get("id"), str):
        return prior["id"]
    attempt = int(prior.get("attempt") or 0) + 1
    run_id = f"{fingerprint[:12]}-{_folder_hash(job_dir)}-{attempt}"
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / LEDGER, {"fingerprint": fingerprint, "attempt": attempt, "id": run_id,
                                  "ids": [*(prior.get("ids") or []), run_id]})
    return run_id
