"""One job, several points: the members of a vectorised seed group (`hydra.sweeper.vectorize=seeds`).

The sweeper gives the group's first point the job and writes the members (`sweep.groups`): each point's folder,
its replicate values (`seed`, `data_seed`, `pretrain.seed`, every one as its composed config resolves it) and the
fingerprint the sweeper computed for it. Here each member's config is the job's with those values and its own
output folder; a member whose config does
not reproduce its point's fingerprint fails (it would record a result under another identity). The source models
of several `pretrain.seed` values the members need and the cache lacks are pretrained first, as one stacked fit
(run/source_stack.py). Each member is
built as a single run builds (`Experiment.build`), then the members train as one stacked model
(`training.stacked`) or, when the group cannot hold them (`why_sequential`, one logged reason), one after the other
in this process, each from the random state its own run would have. Every member writes its own result.json,
best.ckpt and logs, so skip, resume, status and the report see ordinary points. Members that make several fits
each, tuned ones (`tune.*`, run/tuning.py) and cross-validated ones (`train.select=cv`, run/cv.py), run one after
the other, each as its own point would (a tuned member stacks its own candidates).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.config import tune_grid
from transferlab.errors import failure_text
from transferlab.run import source_stack
from transferlab.run.experiment import Experiment
from transferlab.sweep import state
from transferlab.sweep.ledger import GroupFile, folder_state
from transferlab.training.callbacks import _rng_state, _set_rng_state

log = logging.getLogger(__name__)


class GroupFailed(RuntimeError):
    """Some members of a group failed (each has its own failed result.json); the job reports it."""


def members(cfg: DictConfig) -> list[dict[str, Any]]:
    """The members listed in the group file (`sweep.groups.write`, `ledger.GroupFile`); ConfigError for anything
    else."""
    from transferlab.errors import ConfigError, problem

    try:
        return [asdict(m) for m in GroupFile.read(str(cfg.group)).members]
    except ValueError:
        raise ConfigError(problem("group", cfg.group, "null, or a group file the sweeper wrote "
                                  "(hydra.sweeper.vectorize=seeds); not a setting to pass by hand")) from None


def member_config(cfg: DictConfig, member: dict[str, Any]) -> DictConfig:
    """The job's config with a member's replicate values and its own output folder."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        for key, value in member["replicates"].items():
            OmegaConf.update(out, key, value, merge=False)
        out.paths.output_dir = str(member["dir"])
        out.group = str(cfg.group)
    return out


def run_group(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run every member of the group in `cfg.group`; their records (those that got as far as one)."""
    from transferlab.errors import ConfigError, problem

    listed = members(cfg)
    if tune_grid(cfg) or str(cfg.train.select) == "cv":
        return _run_one_by_one(cfg, listed)
    start = time.perf_counter()
    opened: list[Experiment] = []
    exps: list[Experiment] = []
    rngs: list[dict] = []
    failures: list[str] = []
    for m in listed:
        if folder_state(m["dir"], m["fingerprint"])[0] == "done":  # a requeued group: never redo a result
            log.info("vectorize: %s is done already; not trained again", Path(m["dir"]).name)
            continue
        state.mark_started(m["dir"])
        mcfg = member_config(cfg, m)
        try:
            exp = Experiment(mcfg)
        except ConfigError as e:  # nothing written, as for a single run; the sweeper records the point failed
            failures.append(f"{Path(m['dir']).name}: {e}")
            continue
        if exp.fingerprint != m["fingerprint"]:
            err = ConfigError(problem("group", str(cfg.group), f"a member config with the fingerprint "
                                      f"{m['fingerprint']} the sweeper computed for {Path(m['dir']).name} "
                                      f"(this job derived {exp.fingerprint})"))
            exp.fail(err)
            failures.append(f"{Path(m['dir']).name}: {failure_text(err)}")
            continue
        opened.append(exp)
    # The source models of several pretrain.seed values the cache lacks: one stacked pretraining (run/source_stack.py)
    made = source_stack.pretrain_missing([(e.cfg, e.prep, e.run_dir) for e in opened], Path(str(cfg.group)).parent.name)
    for exp in opened:
        try:
            exp.build()
        except Exception as e:
            exp.fail(e)
            failures.append(f"{exp.run_dir.name}: {failure_text(e)}")
            continue
        if exp.record.source_cache == "hit" and made.get(Path(exp.record.source_ckpt).parent.name) == exp.run_dir:
            exp.record.source_cache = source_stack.STATUS  # its entry: made by the group's stacked pretraining
        exps.append(exp)
        rngs.append(_rng_state())  # where this member's own fit would start (dropout draws from it)
    if exps:
        failures += _train(cfg, exps, rngs, size=len(listed), start=start)
    if failures:
        raise GroupFailed(f"{len(failures)} of {len(listed)} members failed: " + "; ".join(failures))
    return [e.record.to_dict() for e in exps]


def _run_one_by_one(cfg: DictConfig, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Members that make several fits each (tuned: run/tuning.py; cv: run/cv.py) run one after the other, each
    exactly as its own point runs (`experiment.run`; a tuned point stacks its own candidates, run/tuning.py):
    stacking the fits of several members is not built."""
    from transferlab.errors import ConfigError, problem
    from transferlab.run import identity
    from transferlab.run.experiment import run

    what = "tuned points (tune.*)" if tune_grid(cfg) else "cross-validated points (train.select=cv)"
    log.warning("vectorize: the %d members of %s are %s; they run one after the other",
                len(listed), Path(str(cfg.group)).parent.name, what)
    records, failures = [], []
    for m in listed:
        if folder_state(m["dir"], m["fingerprint"])[0] == "done":  # a requeued group: never redo a result
            continue
        state.mark_started(m["dir"])
        mcfg = member_config(cfg, m)
        try:
            if identity.fingerprint(mcfg) != m["fingerprint"]:
                raise ConfigError(problem("group", str(cfg.group), f"a member config with the fingerprint "
                                          f"{m['fingerprint']} the sweeper computed for {Path(m['dir']).name}"))
            records.append(run(mcfg))
        except Exception as e:  # its own result.json says how it ended (a config error: nothing written)
            failures.append(f"{Path(m['dir']).name}: {failure_text(e)}")
    if failures:
        raise GroupFailed(f"{len(failures)} of {len(listed)} members failed: " + "; ".join(failures))
    return records


def _shared_time(exps: list[Experiment], start: float) -> float:
    """An equal share of the group's common time so far (opening, builds, a stacked fit): a member's wall_s is
    that share plus its own time (its sequential fit, its test), so that summed over a sweep it is the compute
    used, and a point's median prices the points still to run (`transferlab-status`)."""
    return (time.perf_counter() - start) / len(exps)


def _train(cfg: DictConfig, exps: list[Experiment], rngs: list[dict], size: int, start: float) -> list[str]:
    from transferlab.run import stack
    from transferlab.training import stacked

    mem = stack.members(exps, rngs)
    reason = stack.why_apart(exps, mem)
    leader = Path(str(cfg.group)).parent.name
    for e in exps:
        e.record.group = {"leader": leader, "size": size, "mode": "sequential" if reason else "stacked",
                          "reason": reason}
    failures = []
    if reason:
        log.warning("vectorize: the %d members of %s run one after the other: %s", len(exps), leader, reason)
        share = _shared_time(exps, start)
        for e, r in zip(exps, rngs):
            e.t0 = time.perf_counter() - share
            _set_rng_state(r)
            try:
                e.close(e.fit())
            except Exception as err:
                e.fail(err)
                failures.append(f"{e.run_dir.name}: {type(err).__name__}: {err}")
        return failures
    log.info("vectorize: %d members of %s train as one stacked model", len(exps), leader)
    for e, m in zip(exps, mem):  # every member's own W&B run (or CSV log) open now: curves arrive while it trains
        m.logger = e.open_logger(concurrent=True)
    try:
        fits = stack.fit(exps, mem)
    except Exception as err:  # the group itself broke: every member fails with it
        for e in exps:
            e.fail(err)
        return [f"{e.run_dir.name}: {type(err).__name__}: {err}" for e in exps]
    share = _shared_time(exps, start)
    for e, m, fit in zip(exps, mem, fits):
        e.t0 = time.perf_counter() - share
        try:
            e.close(stacked.test_member(m, fit, trainer_cfg=cfg.trainer))
        except Exception as err:
            e.fail(err)
            failures.append(f"{e.run_dir.name}: {type(err).__name__}: {err}")
    return failures
