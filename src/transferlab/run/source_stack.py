"""The source models a vectorised seed group needs and the cache lacks, pretrained as one stacked fit.

Why: the members of a group (`sweep.group_job`) that differ in `pretrain.seed` each need their own source model.
Built one by one, each cold member pretrains its own in turn (`experiment.pretrain_source`, through the source
cache); a source pretraining is K runs of one config that differ only in their seed, which is what
`training.stacked` trains as one model. So before the members are built, the group finds the distinct entries its
members need that are missing and, when there are two or more, pretrains them together; the members' builds then
find them in the cache (`hit`, and `stacked` in the record of the member the entry was made for).

What stays each pretraining's own, so that an entry is the one `pretrain_source` would store
(tests/test_source_stack.py): its initialisation and batch order (each member built by
`experiment.source_fit_parts` at its `pretrain.seed`, its dropout masks from the random state its own fit starts
from), its selection on the source val split, its test on the source test split, its `best.ckpt` and logger under
the folder its own pretraining would use, and its entry (`source_cache.put`: the same tensors and meta fields; its
`wall_s` an equal share of the stacked fit). The members' forwards run one after the other on their own slices
of the stacked tensors (`MemberByMember`, not vmap), so each goes through its separate pretraining's kernels and
an entry's weights are its separate pretraining's bit for bit, not within rounding (AdamW from scratch turns
rounding into visibly different weights within a few epochs, and an entry is shared by every run that reads it).

When it is not done (one logged line; each member then pretrains as today, in its build): fewer than two missing
entries (an entry whose payload and checksum are in place counts as made: its member's build verifies it, and
sets aside and retrains one that fails, as always); an entry another process is making (its lock is held: the
member's build waits for it) or one a killed pretraining can resume (its `last.ckpt`); whatever
`stacked.why_sequential` names (DataLoader batches, random layers other than dropout, an optimizer that is not
elementwise, different budgets, ...). A member whose pretraining fails (a NaN loss) gets no entry, and its build
pretrains it alone, which reports the failure as a single run does. Locks (`verified.claim_missing`): taken in
sorted order, never waited for, each entry read again once locked; an entry is written through the store's atomic
write, so a killed stacked pretraining leaves no half-written entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from transferlab.config import plain
from transferlab.run import identity
from transferlab.run.setup import Prepared
from transferlab.store import source_cache, verified
from transferlab.training.callbacks import LAST
from transferlab.training.loggers import finish_logger, make_logger
from transferlab.training.stacked import MemberByMember

log = logging.getLogger(__name__)

STATUS = "stacked"  # the record's `source_cache` of a member whose entry this group's stacked pretraining made


@dataclass
class Need:
    """A source cache entry a member needs, and the member it is made for (its config and its run folder)."""

    key: str
    path: Path
    cfg: DictConfig
    prep: Prepared
    run_dir: Path

    @property
    def work_dir(self) -> Path:
        return self.run_dir / "source"  # where `experiment.source_weights` pretrains it


def needs(members: list[tuple[DictConfig, Prepared, Path]]) -> list[Need]:
    """The distinct source cache entries the members read (a member of `source=none`, or whose plan copies no
    source tensor, needs none), each with the first member that needs it."""
    out: dict[str, Need] = {}
    for cfg, prep, run_dir in members:
        if not prep.plan.reads_source_weights or prep.source is None:
            continue
        key = identity.source_fingerprint(cfg, data=prep.source.fingerprint())
        out.setdefault(key, Need(key, source_cache.entry_path(cfg.paths.cache_dir, key), cfg, prep, Path(run_dir)))
    return list(out.values())


def pretrain_missing(members: list[tuple[DictConfig, Prepared, Path]], label: str) -> dict[str, Path]:
    """Pretrain, as one stacked fit, the source entries the members need that the cache lacks, when two or more
    can; {key: run folder of the member it was made for} of the entries stored (empty when nothing was stacked)."""
    from transferlab.run.experiment import source_entry_problem

    wanted = needs(members)
    if len(wanted) < 2:
        return {}
    checks = {n.path: (lambda obj, n=n: source_entry_problem(obj, n.key, n.cfg, n.prep.source)) for n in wanted}
    by_path = {n.path: n for n in wanted}
    with verified.claim_missing(list(checks.items())) as claimed:
        cold = [by_path[p] for p in claimed]
        resumable = [n for n in cold if (n.work_dir / "checkpoints" / LAST).exists()]
        if resumable:  # a killed pretraining of it resumes where it stopped (`pretrain_source`), not from 0
            log.info("source models %s resume a killed pretraining alone", ", ".join(n.key for n in resumable))
            cold = [n for n in cold if n not in resumable]
        if len(cold) < 2:
            if len(wanted) > 1:
                log.info("source pretraining of %s: %d of its %d source models to make here; none stacked",
                         label, len(cold), len(wanted))
            return {}
        try:
            return _pretrain(cold, label)
        except Exception as err:  # never the group's failure: each member's build pretrains its own, as alone
            log.warning("source pretraining of %s: the stacked pretraining broke (%s: %s); each source model is "
                        "pretrained by its run", label, type(err).__name__, err)
            return {}


def _pretrain(cold: list[Need], label: str) -> dict[str, Path]:
    """Build, check and run the stacked pretraining of `cold` (their locks held by the caller); store each entry."""
    from transferlab.run.experiment import source_fit_parts, source_meta, source_state
    from transferlab.training import stacked

    start = time.perf_counter()
    members, trainers = [], []
    for n in cold:  # each seeds the global RNG at its pretrain.seed; every member's build seeds it again after
        module, batches, key, trainer = source_fit_parts(n.cfg, n.prep.source)
        if key != n.key:
            raise RuntimeError(f"source key {key} is not the key {n.key} the entry was claimed under")
        trainers.append(trainer)
        members.append(stacked.Member(module=module, batches=batches, plan=None, ckpt_dir=n.work_dir / "checkpoints",
                                      rng=torch.get_rng_state()))  # where its own fit would start (dropout)
    first = cold[0].cfg
    reason = _differs(cold, trainers) or stacked.why_sequential(
        members, train_cfg=first.pretrain, trainer_cfg=trainers[0],
        epochs=[int(n.cfg.pretrain.max_epochs) for n in cold])
    if reason:
        log.warning("source pretraining of %s: the %d source models are pretrained one by one: %s",
                    label, len(cold), reason)
        return {}
    log.info("source pretraining of %s: %d pretrain.seed values (%s) as one stacked fit", label, len(cold),
             ", ".join(str(n.cfg.pretrain.seed) for n in cold))
    for n, m in zip(cold, members):  # each its own source logger (W&B run, job_type=source), as alone
        m.logger = make_logger(n.cfg, n.work_dir, "source", fingerprint=n.key, concurrent=True)
    try:
        fits = stacked.fit_stacked(members, max_epochs=int(first.pretrain.max_epochs), trainer_cfg=trainers[0],
                                   module_type=MemberByMember)
    except Exception:
        for m in members:
            finish_logger(m.logger, failed=True)
        raise
    share = (time.perf_counter() - start) / len(cold)
    made = {}
    for n, m, fit in zip(cold, members, fits):
        t0 = time.perf_counter()
        try:
            outcome = stacked.test_member(m, fit, trainer_cfg=trainers[0])
        except Exception as err:
            log.warning("source model %s (pretrain.seed=%s) failed in the stacked pretraining (%s: %s); its run "
                        "pretrains it alone", n.key, n.cfg.pretrain.seed, type(err).__name__, err)
            finish_logger(m.logger, failed=True)
            continue
        meta = source_meta(n.cfg, n.key, m.module, outcome, share + time.perf_counter() - t0, m.logger)
        finish_logger(m.logger, failed=False, summary=meta)
        source_cache.put(n.path, source_state(outcome.best_ckpt), meta)
        log.info("source model %s (%s): %s", n.key, STATUS, n.path)
        made[n.key] = n.run_dir
    return made


def _differs(cold: list[Need], trainers: list[dict]) -> str | None:
    """What the stacked fit would take from the first member for all, where the members differ: the optimizer
    and its settings, the backbone, the source task, the trainer. None when only `pretrain.seed` differs (a
    vectorised group's members share everything else; this is the check, not an assumption)."""
    def without_seed(cfg: DictConfig) -> dict:
        return {k: v for k, v in plain(cfg.pretrain).items() if k != "seed"}

    first = cold[0].cfg
    for n in cold[1:]:
        if without_seed(n.cfg) != without_seed(first):
            return "the members' pretrain settings differ (other than pretrain.seed)"
        if plain(n.cfg.backbone) != plain(first.backbone) or plain(n.cfg.source) != plain(first.source):
            return "the members' backbones or source tasks differ"
    if any(t != trainers[0] for t in trainers):
        return "the members' trainer settings differ"
    return None
