"""Fit several built runs of one shape as one stacked model (training/stacked.py): a vectorised seed group's
members (sweep/group_job.py) and a tuned point's candidates or their cv fold fits (run/tuning.py).

Why one place: which runs may share a stacked fit is one decision (`why_apart`: what `stacked.why_sequential` says
of the modules, plus the step plans, which only the runs know), and every caller turns a built `Experiment` into a
member the same way, from the random state its own fit would start from.

`fit_logged` ends every member's logger when the stacked fit breaks, for callers that then train the runs one after
the other (a tuned point's candidates and fold fits); a seed group's job instead records each member's failure with
its logger (`Experiment.fail`), so it opens the loggers itself and calls `fit`.
"""

from __future__ import annotations

from typing import Any

from transferlab.run.experiment import Experiment
from transferlab.training import stacked


def members(exps: list[Experiment], rngs: list[dict[str, Any]]) -> list[stacked.Member]:
    """Each built run as a stacked member; `rngs[i]` is the random state run i's own fit would start from."""
    return [stacked.Member(module=e.module, batches=e.batches, plan=e.prep.plan, ckpt_dir=e.run_dir / "checkpoints",
                           rng=r["torch"], select=str(e.cfg.train.select), select_epoch=e.cfg.train.select_epoch)
            for e, r in zip(exps, rngs)]


def why_apart(exps: list[Experiment], mem: list[stacked.Member]) -> str | None:
    """Why these runs cannot share one stacked fit, or None."""
    plans = [e.prep.budget.to_dict() for e in exps]
    differ = sorted({k for p in plans for k in p if p.get(k) != plans[0].get(k)})
    if differ:
        return f"the members' step plans differ in {', '.join(differ)}"
    first = exps[0]
    return stacked.why_sequential(mem, train_cfg=first.cfg.train, trainer_cfg=first.cfg.trainer,
                                  epochs=[e.prep.budget.epochs for e in exps])


def build(exps: list[Experiment]) -> list[dict[str, Any]]:
    """Build each run as its own fit would (no scores: a point records them once); the random state each run's
    own fit would start from (dropout draws from it), one per run."""
    from transferlab.training.callbacks import _rng_state

    rngs = []
    for e in exps:
        e.build(score=False)
        rngs.append(_rng_state())
    return rngs


def fit_logged(exps: list[Experiment], mem: list[stacked.Member], job_type: str) -> list[stacked.MemberFit]:
    """`fit`, each member logging into its run's own logger (opened now: its curves arrive while the stack
    trains); if the stacked fit breaks, every logger is ended as failed and the error raised."""
    from transferlab.training.loggers import finish_logger

    for e, m in zip(exps, mem):
        m.logger = e.open_logger(concurrent=True, job_type=job_type)
    try:
        return fit(exps, mem)
    except Exception:
        for m in mem:
            finish_logger(m.logger, failed=True)
        raise


def fit(exps: list[Experiment], mem: list[stacked.Member]) -> list[stacked.MemberFit]:
    """The stacked fit of runs `why_apart` accepted: each member's selection, curves and kept weights."""
    budget = exps[0].prep.budget
    return stacked.fit_stacked(mem, max_epochs=budget.epochs, trainer_cfg=exps[0].cfg.trainer,
                               val_epochs=budget.val_epochs)
