"""Cost preview of a sweep, printed by its dry run (`hydra.sweeper.dry_run=true`): the compute each arm needs, the
total, the wall time at the launcher's parallelism, and the source pretrainings the sweep will run. An estimate
from short measurements on this machine, not a promise; nothing is launched, and nothing is written into the sweep
folder or the caches (probes work in a temporary folder).

How it is made:

1. **Describe** every point still to run (`describe`), from its composed config, as the run will plan it: its step
   budget (`run/setup.plan_budget`: epochs, training batches per epoch and their sizes, and the epochs it validates
   after, `StepBudget.val_epochs`), whether it reads a source model and whether `paths.cache_dir/source/` holds it
   (`run/identity.source_fingerprint`), whether it trains on cached frozen-prefix features, and its *shape of
   work*: everything one training batch and one validation pass compute (backbone and its settings, input shape,
   the parameters that train and the block the batches enter at, PEFT, L2-SP, batch size, optimizer, precision,
   val and test sizes; `_shape_key`). The config is prepared once per arm (the point's config but for the seeds
   and the sample size); other sample sizes draw their subset as the task does (`tasks.sampling.draw_subset`).
2. **Probe** each shape once (`probe`, injectable as `measure`): a real build and a real `fit_and_test` of 4 to 12
   epochs on the shape's point with the most training examples, in a temporary folder (outputs, checkpoints and
   the feature cache go there; the source model is a random stand-in of the same architecture: its values do not
   change the time), with at most a few batches of each split (the rest priced per batch). It validates after every
   second epoch: an epoch without a check times the epoch's own work, one with a check, minus that, the check (the
   validation pass, the selection and its best.ckpt, the callbacks). A callback times every epoch, training batch
   and evaluation batch; around the fit are timed the run's opening (hashing, checks, data), the build, the
   record. Repeated samples count at their lower quartile: other processes only ever slow a sample down, in
   bursts. Other batch sizes are timed as bare optimizer steps and added to the probe's per-batch time as a
   difference. A source pretraining is probed the same way. Under `hydra.sweeper.vectorize=seeds` the stacked
   model's step and validation pass are timed at 2 and 4 members, and a stacked fit's per-epoch work by two real
   `fit_stacked` runs (once: it is the framework's). The first probe runs twice: its first pass carries the
   process's one-time costs (lazy imports, first kernels), counted once per process.
3. **Price** (`price`, torch-free arithmetic):

       batch(b)      the probe's time per training batch, plus bare(b) - bare(probe's batch size)
       run           fixed + load + epochs x (epoch + sum of batch(b) over one epoch's batches) + checks x val
       point of F    F x (fit_only + load + epochs x ... + checks x val) + (fixed - fit_only) once + a test pass
       fits          per candidate but the chosen one (a tuned point: F = candidates x (k + 1 under cv)); its
                     candidates stacked: one group of C per stacked fit (1, or k under cv) + its fits on all n alone
       group of K    K x (fixed + load) + epochs x (epoch + sum of group_batch(b, K)) + checks x group_val(K)
                     (stacked; group_batch = Lightning's per-batch work once + the stacked step, linear in K
                     through the 2- and 4-member timings; a group the stacked model cannot hold is its runs in turn)
       job           one launch unit (a point, or a vectorised group) + Hydra's work per job; the first unit that
                     needs a source model missing from the cache pretrains it first (+ its pretraining), the first
                     that trains on a frozen prefix computes the features (+ one pass over pool, val and test)

   `fixed` is a run's cost outside its epochs (opening, build, Trainer, the test pass over the whole test split,
   checkpoints, the record), `fit_only` its build, Trainer and checkpoints alone; `epoch` the per-epoch work
   outside batches and validation (Lightning's loop, logging, callbacks); `checks` how many validation passes the
   budget schedules; `val` one pass over the whole val split.
4. **Wall time**: the units in launch order, each on the first free slot of the launcher (basic: 1; local_parallel:
   `n_jobs`, at most the device lease's slots, each worker paying its start-up once; slurm: `array_parallelism`,
   each task a fresh process, plus the queue's wait, which is not known here), a unit that needs a source model
   another slot is still pretraining waiting for it (the cache's file lock); plus this process's start-up.

Known approximations: `transfer.strategy=gradual|lp_ft` are priced as if their final trainable set trained from the
first epoch (an upper bound); a best.ckpt written on a validation check that improves is in the probe's check time
at the rate of the probe's first epochs; wandb logging is not probed (csv is); a DataLoader task (too large for
memory) is probed through a DataLoader over its first batches. The estimate is this machine's speed at probe time: a
machine that gets busier meanwhile runs the sweep slower. Torch-free at import: the sweeper imports this module;
torch and Lightning are imported inside the functions that probe.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from transferlab.run.identity import REPLICATES, SAMPLE_SIZE

log = logging.getLogger(__name__)

PROBE_EPOCHS = 12         # at most this many epochs per probe fit (the first is a warm-up, not a sample)
PROBE_MIN_EPOCHS = 4      # at least this many (two with a validation check, the first a warm-up)
PROBE_FIT_S = 0.6         # a probe fit stops after PROBE_MIN_EPOCHS once its epochs took this long
PROBE_TRAIN_BATCHES = 3   # training batches per probe epoch (the subset is cut to this many)
PROBE_EVAL_BATCHES = 2    # validation / test batches per pass in a probe (eval batches are training/batches.py's)
BARE_REPS = 5             # bare optimizer steps timed per batch size
STACK_SIZES = (2, 4)      # members of the stacked probes (vectorize=seeds)
STACK_REPS = 3            # stacked steps timed per batch size and member count
STACK_FIT_S = 0.3         # the longer of the two fit_stacked probes runs about this long (their difference in
STACK_EPOCHS = (3, 30)    # epochs, within these bounds, gives the per-epoch work)
# train.* keys that change neither a batch's nor a validation pass's compute (only how many there are, or values)
BUDGET_KEYS = ("max_epochs", "min_steps", "max_steps", "budget", "select", "select_epoch", "lr", "weight_decay",
               "lr_decay", "val_every_steps", "val_checks", "val_spacing")
NEUTRAL_TRAINER = ("enable_progress_bar", "log_every_n_steps")
QUIET = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transferlab", "torch")


# ----------------------------------------------------------------------------------------------- what is priced
@dataclass
class Work:
    """One point still to run, as the estimate sees it."""

    name: str
    arm: str                            # the arm's label in the table (grid x transfer arm)
    shape: str | None = None            # key of its shape's Timing; None when it fails its config checks
    epochs: int = 0
    batches: tuple[int, ...] = ()       # the sizes of one epoch's training batches
    checks: int = 0                     # validation passes (StepBudget.val_epochs)
    n_train: int = 0
    source: str | None = None           # key of the source model it reads (None: reads none)
    features: str | None = None         # the frozen-prefix feature pass it trains on (None: none)
    error: str | None = None            # why its config checks fail (it would fail at setup, before training)
    candidates: int = 1                 # fits a point makes alone, each at the point's shape: a tuned point's
    #                                     candidates (run/tuning.py), times k + 1 under train.select=cv (run/cv.py)
    stacked_fits: int = 0               # stacked fits it makes besides: a tuned point's candidates as one (1), or
    #                                     their cv fold fits fold by fold (k; their fits on all n are `candidates`)
    stack_size: int = 1                 # members of each stacked fit (the candidates)
    tuned: int = 1                      # its candidates (run/tuning.py; 1: untuned): each but the chosen one is
    #                                     tested once more after the choice (run/hindsight.py)


@dataclass
class Pretraining:
    """A source model the sweep reads: its pretraining, priced when the cache does not hold it."""

    key: str                            # run/identity.source_fingerprint
    label: str                          # e.g. "digits_0to4 / small_cnn"
    shape: str
    epochs: int
    batches: tuple[int, ...]
    cached: bool


@dataclass
class Timing:
    """What one probe measured for one shape of work (seconds)."""

    fixed_s: float                      # a run's cost outside its epochs (see the module docstring)
    epoch_s: float                      # per epoch, outside its batches and validation
    batch_s: dict[int, float]           # one training batch (forward, backward, optimizer step) by batch size
    val_s: float                        # one validation pass over the whole val split
    # the part of fixed_s a fit inside a point pays (a tuned point's candidate, a cv fold fit): its build, Trainer
    # and checkpoints, without the run's opening checks, its test and its record, which the point pays once;
    # None: not measured (every fit priced at fixed_s)
    fit_only_s: float | None = None
    test_s: float = 0.0                 # one test pass over the whole test split (a candidate's hindsight test)
    load_s: float = 0.0                 # reading a cached source model
    feature_s: float = 0.0              # one frozen-prefix pass over pool, val and test (once per key)
    save_s: float = 0.0                 # writing a source model to the cache (pretraining)
    report_s: float = 0.0               # the table a single run prints at its end (not a group's members)
    scores_s: float = 0.0               # transfer.scores at `scores_n` training examples (scaled by n)
    scores_n: int = 0
    stacked_epoch_s: float | None = None  # a stacked group's per-epoch work outside batches and validation
    stacked_batch_s: dict[int, tuple[float, float]] = field(default_factory=dict)  # b -> (a, c): a + c x K
    stacked_val_s: tuple[float, float] | None = None  # (a, c): a + c x K
    stack_reason: str | None = None     # why a vectorised group of this shape runs its members in turn
    warmup_s: float = 0.0               # one-time cost of the first fit in a process
    probe_s: float = 0.0                # how long the probe took
    measured_on: str = ""               # the data the probe ran on

    def batch(self, b: int) -> float:
        """One training batch of size b: measured, else the nearest measured size scaled by examples."""
        if b in self.batch_s:
            return self.batch_s[b]
        if not self.batch_s:
            return 0.0
        near = min(self.batch_s, key=lambda s: (abs(s - b), -s))
        return self.batch_s[near] * b / near


@dataclass
class Probe:
    """One shape to measure: the config and prepared data of its representative point."""

    key: str
    kind: str                           # target | pretrain
    cfg: Any
    prep: Any                           # run/setup.Prepared of the representative (pretrain: its source task)
    budget: Any                         # training/budget.StepBudget
    batch_sizes: tuple[int, ...]        # every batch size the shape's points train with
    stack: bool = False                 # time the stacked step (vectorize=seeds, or tuned candidates that stack)
    threads: int | None = None          # torch threads a job uses (local_parallel on CPUs: 1)
    first: bool = False                 # the first probe of the process: run twice, the first pass a warm-up
    stacked_epoch_s: float | None = None  # a stacked fit's per-epoch work, when an earlier probe measured it


@dataclass
class Launcher:
    kind: str                           # basic | local_parallel | slurm | other
    slots: int | None                   # jobs at once (None: depends on the queue / unknown)
    label: str                          # how the output names the parallelism
    fresh_process: bool = False         # each job (slurm) or worker (local_parallel) is a new process
    per_job_process: bool = False       # every job is a new process (slurm)
    threads: int | None = None          # torch threads per job, when the launcher fixes it


@dataclass
class Row:
    arm: str
    points: int = 0
    epochs: set = field(default_factory=set)
    checks: set = field(default_factory=set)
    compute_s: float = 0.0


@dataclass
class Estimate:
    rows: list[Row]
    pretrainings: list[Pretraining]
    pretrain_s: float                   # the pretrainings the sweep runs (missing from the cache)
    compute_s: float                    # everything: points, pretrainings, feature passes, per-job work
    wall_s: float | None                # None: depends on the queue (slurm without a known parallelism)
    launcher: Launcher
    units: int
    points: int
    failing: int
    startup_s: float
    notes: list[str] = field(default_factory=list)


def cv_fits(cfg, target) -> int:
    """Fits one candidate of a point makes: k fold fits and the fit on all n under train.select=cv (run/cv.py),
    else 1. The fold fits are priced as fits of the point's own shape (they train on (k-1)/k of its examples)."""
    if str(cfg.train.select) != "cv":
        return 1
    from transferlab.tasks import cv_folds

    return cv_folds.fold_count(cv_folds.subset_counts(target), cfg.train.get("cv_folds")) + 1


# ----------------------------------------------------------------------------------------------- pricing (pure)
def run_cost(w: Work, t: Timing) -> float:
    """One point alone: fixed + load + epochs x (epoch + its batches) + checks x val (+ scores, its table). A point
    that makes several fits (a tuned point's candidates, cv's fold fits) pays each fit's own part (`fit_only_s`)
    per fit, at the point's own budget and batch size (a grid over `max_epochs` or `batch_size` makes this rougher;
    a cv fit on all n, which stops at its chosen step, is priced whole), and once its opening, test and record, one
    hindsight test per other candidate, its scores and table; stacked candidates as `stacked_fit_cost`."""
    per_epoch = t.epoch_s + sum(t.batch(b) for b in w.batches)
    scores = t.scores_s * w.n_train / t.scores_n if t.scores_n else t.scores_s
    several = w.candidates > 1 or bool(w.stacked_fits)
    own = t.fit_only_s if several and t.fit_only_s is not None else t.fixed_s
    once = (t.fixed_s - own) + max(0, w.tuned - 1) * t.test_s
    fit = own + (t.load_s if w.source else 0.0) + w.epochs * per_epoch + w.checks * t.val_s
    if w.stacked_fits and t.stack_reason is None:  # the candidates' shared fits, then what runs alone
        stacked = w.stacked_fits * stacked_fit_cost(w, t, w.stack_size, fixed=own)
        return (w.candidates - w.stacked_fits * w.stack_size) * fit + stacked + once + scores + t.report_s
    return max(1, w.candidates) * fit + once + scores + t.report_s


def stacked_fit_cost(w: Work, t: Timing, k: int, fixed: float | None = None) -> float:
    """One stacked fit of k members of `w`'s shape and budget (without scores): each member's fixed cost (`fixed`,
    else a whole run's), the
    stacked batches and validation (measured at 2 and 4 members, a + c x k), Lightning's per-epoch work once;
    without stacked timings each member's batches and validation are priced as alone."""
    def batch(b: int) -> float:
        if b in t.stacked_batch_s:
            a, c = t.stacked_batch_s[b]
            return a + c * k
        return k * t.batch(b)

    val = t.stacked_val_s[0] + t.stacked_val_s[1] * k if t.stacked_val_s else k * t.val_s
    epoch = t.epoch_s if t.stacked_epoch_s is None else t.stacked_epoch_s
    own = k * ((t.fixed_s if fixed is None else fixed) + (t.load_s if w.source else 0.0))
    return own + w.epochs * (epoch + sum(batch(b) for b in w.batches)) + w.checks * val


def stacks(unit: Sequence[Work], t: Timing) -> bool:
    """Does this vectorised group train as one stacked model? (Not for a group of one, a shape the stacked model
    cannot hold, or members whose budgets differ: `training.stacked.why_sequential`.)"""
    first = unit[0]
    return (len(unit) > 1 and t.stack_reason is None  # tuned or cv members: one after the other
            and all(w.candidates == 1 and not w.stacked_fits for w in unit)
            and all((w.shape, w.epochs, w.batches, w.checks) == (first.shape, first.epochs, first.batches,
                                                                  first.checks) for w in unit))


def group_cost(unit: Sequence[Work], t: Timing) -> float:
    """A stacked group of K members (see the module docstring); without stacked timings each member's batches and
    validation are priced as alone, Lightning's per-epoch work once."""
    scores = sum((t.scores_s * m.n_train / t.scores_n if t.scores_n else t.scores_s) for m in unit)
    return stacked_fit_cost(unit[0], t, len(unit)) + scores  # members of one seed group: one cut, one shape


def unit_cost(unit: Sequence[Work], timings: Mapping[str, Timing]) -> float:
    """One launch unit's own work (without Hydra's per-job work, pretrainings and feature passes); a point that
    fails its config checks, or whose shape could not be probed, costs nothing here."""
    live = [w for w in unit if w.shape in timings]
    if not live:
        return 0.0
    t = timings[live[0].shape]
    if len(live) > 1 and stacks(live, t):
        return group_cost(live, t)
    return sum(run_cost(w, timings[w.shape]) for w in live)


def pretrain_cost(p: Pretraining, t: Timing) -> float:
    """A source pretraining: fixed + epochs x (epoch + batches + one validation) + writing the model."""
    return t.fixed_s + p.epochs * (t.epoch_s + sum(t.batch(b) for b in p.batches) + t.val_s) + t.save_s


def price(units: Sequence[Sequence[Work]], timings: Mapping[str, Timing], pretrainings: Mapping[str, Pretraining],
          *, launcher: Launcher, job_s: float = 0.0, startup_s: float = 0.0, worker_start_s: float = 0.0,
          warmup_s: float = 0.0) -> Estimate:
    """Compute per arm and in total, and the wall time, for `units` (launch order; each a point or a vectorised
    group). `pretrainings` holds every source model the points read (by key; `cached` ones cost nothing);
    `job_s` is Hydra's work per job, `startup_s` this sweep process's start-up until its first job,
    `worker_start_s` a new worker process's (local_parallel: once per worker; slurm: every task), `warmup_s` the
    first fit's one-time cost in a process."""
    rows: dict[str, Row] = {}
    pretrain_s = {k: (0.0 if p.cached or p.shape not in timings else pretrain_cost(p, timings[p.shape]))
                  for k, p in pretrainings.items()}
    feature_s: dict[str, float] = {}
    jobs: list[tuple[float, list[str]]] = []  # (own duration, source keys it reads) per unit, in launch order
    compute = 0.0
    for unit in units:
        own = unit_cost(unit, timings) + job_s
        shares = {id(w): own / len(unit) for w in unit}
        for w in unit:
            if w.features and w.features not in feature_s and w.shape in timings:
                feature_s[w.features] = timings[w.shape].feature_s
                shares[id(w)] += feature_s[w.features]
                own += feature_s[w.features]
        for w in unit:
            row = rows.setdefault(w.arm, Row(w.arm))
            row.points += 1
            row.compute_s += shares[id(w)]
            if w.shape in timings:
                row.epochs.add(w.epochs)
                row.checks.add(w.checks)
        compute += own
        jobs.append((own, list(dict.fromkeys(w.source for w in unit if w.source))))
    compute += sum(pretrain_s.values())
    wall = None
    if launcher.slots:
        span = schedule(jobs, launcher.slots, pretrain_s, worker_start_s=worker_start_s,
                        every_job=launcher.per_job_process)
        wall = startup_s + (0.0 if launcher.fresh_process else warmup_s) + span
    notes = []
    unprobed = sum(w.shape is not None and w.shape not in timings for u in units for w in u)
    unprobed_pre = sum(not p.cached and p.shape not in timings for p in pretrainings.values())
    if unprobed or unprobed_pre:
        notes.append(f"not priced (their probe failed): {unprobed} points, {unprobed_pre} pretrainings")
    return Estimate(rows=list(rows.values()), pretrainings=list(pretrainings.values()),
                    pretrain_s=sum(pretrain_s.values()), compute_s=compute, wall_s=wall, launcher=launcher,
                    units=len(units), points=sum(len(u) for u in units),
                    failing=sum(w.shape is None for u in units for w in u), startup_s=startup_s, notes=notes)


def schedule(jobs: Sequence[tuple[float, Sequence[str]]], slots: int, pretrain_s: Mapping[str, float], *,
             worker_start_s: float = 0.0, every_job: bool = False) -> float:
    """Makespan of `jobs` ((duration, source keys)) launched in order, each on the first free of `slots`; a job
    whose source model is not ready pretrains it (`pretrain_s[key]`, 0 when cached) unless another slot already
    is, then it waits for that one. A slot's first job (every job with `every_job`) pays `worker_start_s`."""
    free = [0.0] * max(1, int(slots))
    used = [False] * len(free)
    ready: dict[str, float] = {}
    for duration, sources in jobs:
        k = min(range(len(free)), key=lambda i: free[i])
        start = free[k] + (worker_start_s if every_job or not used[k] else 0.0)
        used[k] = True
        clock = start
        for key in sources:
            if key in ready:
                clock = max(clock, ready[key])
            else:
                clock += pretrain_s.get(key, 0.0)
                ready[key] = clock
        free[k] = clock + duration
    return max(free)


# ----------------------------------------------------------------------------------------------- output (pure)
def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 100:
        return f"{s:.1f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _span(values: Iterable[int]) -> str:
    v = sorted(values)
    if not v:
        return "-"
    return str(v[0]) if v[0] == v[-1] else f"{v[0]}-{v[-1]}"


def render(est: Estimate, *, probes: int = 0, probe_s: float = 0.0, machine: str = "this machine",
           data: Sequence[str] = ()) -> str:
    """The table the dry run prints: one row per arm, the pretrainings, the total and the wall time."""
    head = (f"cost estimate (an estimate, not a promise): measured by {probes} short probe"
            f"{'s' if probes != 1 else ''} in {probe_s:.1f} s on {machine}")
    if data:
        head += "\n  probed on " + "; ".join(data)
    rows = [(r.arm, str(r.points), _span(r.epochs), _span(r.checks),
             _duration(r.compute_s / r.points) if r.points else "-", _duration(r.compute_s)) for r in est.rows]
    needed = [p for p in est.pretrainings if not p.cached]
    if needed:
        by_label: dict[str, int] = {}
        for p in needed:
            by_label[p.label] = by_label.get(p.label, 0) + 1
        label = "source pretraining (" + ", ".join(f"{k}: {v}" for k, v in by_label.items()) + ")"
        rows.append((label, str(len(needed)), _span(p.epochs for p in needed), _span(p.epochs for p in needed),
                     _duration(est.pretrain_s / len(needed)), _duration(est.pretrain_s)))
    header = ("arm", "points", "epochs", "val checks", "per point", "compute")
    total = ("total", str(est.points), "", "", "", _duration(est.compute_s))
    table = [header, *rows, total]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    widths[0] = min(widths[0], 72)

    def line(r: Sequence[str]) -> str:
        first = r[0] if len(r[0]) <= widths[0] else r[0][:widths[0] - 1] + "~"
        return "  " + "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

    out = [head, line(header), *(line(r) for r in rows), line(total)]
    cached = sum(p.cached for p in est.pretrainings)
    out.append(f"source pretrainings needed: {len(needed)} (of {len(est.pretrainings)} source models the points read; "
               f"{cached} already in the cache)")
    L = est.launcher
    if est.wall_s is None:
        out.append(f"wall time: depends on the queue ({L.label}); the compute above is this machine's")
    else:
        pre = "at least " if L.kind == "slurm" else "~"
        what = f"{est.units} job{'s' if est.units != 1 else ''} {L.label}"
        out.append(f"wall time: {pre}{_duration(est.wall_s)} ({what}; start-up {_duration(est.startup_s)} included"
                   + ("; plus the queue's wait, and measured here, not on the cluster's nodes" if L.kind == "slurm"
                      else "") + ")")
    if est.failing:
        out.append(f"{est.failing} point{'s' if est.failing != 1 else ''} would fail their config checks "
                   "(priced at nothing)")
    out.extend(est.notes)
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- launchers
def launcher_of(hydra_cfg: Any, cfg: Any = None) -> Launcher:
    """The launcher's parallelism from `hydra.launcher` (and, for local_parallel, the point config's lease)."""
    spec = hydra_cfg.get("launcher") if hydra_cfg is not None else None
    target = str((spec or {}).get("_target_") or "")
    if target.endswith("BasicLauncher") or not target:
        return Launcher("basic", 1, "one at a time (basic launcher)")
    if "joblib" in target.lower():
        n = int(spec.get("n_jobs") or 1)
        if n < 0:
            n = max(1, (os.cpu_count() or 1) + 1 + n)
        slots, kind = _lease_slots(cfg)
        at_once = min(n, slots) if slots else n
        why = f"n_jobs={n}" + (f", {slots} {kind} lease slots" if slots else "")
        return Launcher("local_parallel", at_once, f"{at_once} at once (local_parallel: {why})", fresh_process=True,
                        threads=1 if kind == "cpu" else None)
    if "slurm" in target.lower() or "submitit" in target.lower():
        par = spec.get("array_parallelism")
        if par:
            return Launcher("slurm", int(par), f"at most {int(par)} at once (slurm array_parallelism)",
                            fresh_process=True, per_job_process=True)
        return Launcher("slurm", None, "slurm", fresh_process=True, per_job_process=True)
    return Launcher("other", 1, f"one at a time assumed ({target.rsplit('.', 1)[-1]})")


def _lease_slots(cfg: Any) -> tuple[int, str]:
    if cfg is None or not cfg.get("lease"):
        return 0, ""
    try:
        from transferlab.run.lease import slot_count

        return slot_count(cfg)
    except Exception:  # noqa: BLE001 - a bad lease is the run's config error, not the preview's
        return 0, ""


# ----------------------------------------------------------------------------------------------- describing points
def _plain(cfg: Any) -> Any:
    from transferlab.config import plain

    return plain(cfg)


def _without(d: dict, keys: Iterable[str]) -> dict:
    from transferlab.run.identity import drop

    d = copy.deepcopy(d)
    for k in keys:
        drop(d, k)
    return d


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def arm_labels(items: Sequence[tuple[Any, Any]]) -> dict[str, str]:
    """Point name -> its arm's label: the overrides that vary across the sweep, but for seeds and sample size (the
    grid's name first when the label does not say it), e.g. "transfer=finetune transfer.freeze=2"."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    skip = set(REPLICATES) | set(SAMPLE_SIZE)
    values: dict[str, set] = {}
    for p, _ in items:
        for o in p.overrides:
            values.setdefault(key(o), set()).add(o)
    varying = {k for k, v in values.items() if len(v) > 1 or sum(key(o) == k for p, _ in items
                                                                     for o in p.overrides) < len(items)}
    out = {}
    grids = {getattr(p, "grid", None) for p, _ in items} - {None}
    for p, _ in items:
        parts = [o.lstrip("+~") for o in p.overrides if key(o) in varying and key(o) not in skip]
        label = " ".join(parts) or "all points"
        grid = getattr(p, "grid", None)
        out[p.name] = f"{grid}: {label}" if grid and len(grids) > 1 and grid not in label else label
    return out


def _stand_in_state(cfg: Any, input_shape: tuple[int, ...]) -> dict:
    """Random source weights of the source model's architecture (its values do not change the time)."""
    from transferlab.backbones import build_backbone
    from transferlab.transfer.network import BACKBONE_PREFIX

    blocks = build_backbone(cfg.backbone, input_shape, load_weights=False).blocks.state_dict()
    return {BACKBONE_PREFIX + k: v for k, v in blocks.items()}


def _net_for(cfg: Any, prep: Any) -> Any:
    from transferlab.backbones import build_backbone
    from transferlab.transfer.plan import build_target_net

    target, plan = prep.target, prep.plan
    state = _stand_in_state(cfg, target.input_shape) if plan.reads_source_weights else None
    return build_target_net(build_backbone(cfg.backbone, target.input_shape, load_weights=False), plan, state,
                            target.num_classes, seed=0)


def _shape_key(cfg: Any, prep: Any, net: Any, decision: Any) -> str:
    """What one training batch and one validation pass compute (see the module docstring), as a string key."""
    c = _plain(cfg)
    plan, target = prep.plan, prep.target
    trains = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    params = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    return _key({
        "backbone": c.get("backbone"), "input": list(target.input_shape), "classes": target.num_classes,
        "params": params, "trains": trains, "start": decision.start, "pooled": decision.pooled,
        "strategy": plan.strategy, "l2sp": bool(plan.l2sp), "bn": plan.bn, "peft": c.get("peft"),
        "train": _without(c.get("train") or {}, BUDGET_KEYS),
        "trainer": _without(c.get("trainer") or {}, NEUTRAL_TRAINER),
        "val": len(target.val_y), "test": len(target.test_y), "pool": len(target.train_y),
        "logger": (c.get("logger") or {}).get("kind"), "scores": (c.get("transfer") or {}).get("scores"),
    })


def _pretrain_key(cfg: Any, source: Any) -> str:
    c = _plain(cfg)
    return _key({"pretrain": _without(c.get("pretrain") or {}, ("seed", "max_epochs", "lr", "weight_decay")),
                 "backbone": c.get("backbone"), "trainer": _without(c.get("trainer") or {}, NEUTRAL_TRAINER),
                 "input": list(source.input_shape), "classes": source.num_classes, "n": len(source.train_indices),
                 "val": len(source.val_y), "test": len(source.test_y), "logger": (c.get("logger") or {}).get("kind")})


def epoch_batches(n_train: int, batch_size: int) -> tuple[int, ...]:
    """The sizes of one epoch's training batches (training/batches.py: the batch is capped at the subset, the last
    partial batch kept)."""
    n = max(1, int(n_train))
    b = max(1, min(int(batch_size), n))
    full, rest = divmod(n, b)
    return (b,) * full + ((rest,) if rest else ())


def checks_of(budget: Any) -> int:
    """Validation passes the budget schedules (every epoch before there was a schedule)."""
    return len(getattr(budget, "val_epochs", None) or range(1, int(budget.epochs) + 1))


@dataclass
class _Arm:
    """What one arm (a config but for seeds and sample size) shares: its prepared representative and its net."""

    cfg: Any
    prep: Any
    net: Any
    sizes: dict = field(default_factory=dict)  # (n_per_class, n_train, data_seed) -> subset indices


def describe(items: Sequence[tuple[Any, Any]], *, cache_dir: str | None = None, stack: bool = False,
             threads: int | None = None) -> tuple[list[Work], dict[str, Probe], dict[str, Pretraining]]:
    """(one Work per item, the probes their shapes need, the source models they read) for `items`:
    (point, its composed config). Reads data (as a run's setup does); writes nothing."""
    import numpy as np

    from transferlab.errors import ConfigError
    from transferlab.run import identity
    from transferlab.run import tuning
    from transferlab.run.setup import plan_budget, prepare
    from transferlab.store import feature_cache
    from transferlab.tasks import build_task
    from transferlab.tasks.sampling import draw_subset

    labels = arm_labels(items)
    arms: dict[str, _Arm] = {}
    shapes: dict[tuple, str] = {}
    sources: dict[str, str] = {}
    works: list[Work] = []
    probes: dict[str, Probe] = {}
    best: dict[str, int] = {}
    pretrainings: dict[str, Pretraining] = {}
    with tempfile.TemporaryDirectory(prefix="transferlab-preview-") as tmp, _quiet():
        for point, cfg in items:
            real_cache = str(cache_dir or cfg.paths.cache_dir)
            work = Work(point.name, labels[point.name])
            works.append(work)
            c = _plain(cfg)
            arm_key = _key(_without(c, (*REPLICATES, *SAMPLE_SIZE, "paths")))
            try:
                arm = arms.get(arm_key)
                sample = (cfg.target.get("n_per_class"), cfg.target.get("n_train"), int(cfg.data_seed))
                if arm is None:  # outputs and caches of the checks in the temporary folder
                    probe_cfg = _probe_config(cfg, Path(tmp) / "describe", cache=Path(tmp) / "cache")
                    prep = prepare(probe_cfg)
                    arm = _Arm(probe_cfg, prep, _net_for(probe_cfg, prep))
                    arm.sizes[sample] = np.asarray(prep.target.train_indices)
                    arms[arm_key] = arm
                if sample not in arm.sizes:
                    arm.sizes[sample] = draw_subset(arm.prep.target.train_y.numpy(), n_per_class=sample[0],
                                                    n_train=sample[1], data_seed=sample[2],
                                                    n_policy=str(cfg.target.get("n_policy", "error")), key="target")
                prep = arm.prep
                target = replace(prep.target, train_indices=arm.sizes[sample])
                budget = plan_budget(cfg, prep.plan, target, prep.source)
            except ConfigError as e:  # this point fails at setup; another point of its arm prepares it again
                work.error = "; ".join(str(p) for p in e.items) or str(e)
                continue
            work.epochs, work.n_train = int(budget.epochs), len(target.train_indices)
            work.candidates = (len(tuning.candidates(cfg)) or 1) * cv_fits(cfg, target)
            work.tuned = len(tuning.candidates(cfg)) or 1
            if tuning.stack_expected(cfg):  # the candidates share one stacked fit (their fold fits, fold by fold)
                work.stack_size = len(tuning.candidates(cfg))
                work.stacked_fits = max(1, cv_fits(cfg, target) - 1)
            work.batches = epoch_batches(work.n_train, int(cfg.train.batch_size))
            work.checks = checks_of(budget)
            plan = prep.plan
            decision = feature_cache.decide(arm.cfg, plan, target, arm.net, budget.epochs)
            memo = (arm_key, decision.use, decision.start, decision.pooled)
            if memo not in shapes:
                shapes[memo] = _shape_key(arm.cfg, prep, arm.net, decision)
            work.shape = shapes[memo]
            if plan.reads_source_weights and prep.source is not None:
                skey = _key([c.get("source"), c["pretrain"].get("seed")])
                if skey not in sources:
                    src = build_task(cfg.source, key="source", data_seed=int(cfg.pretrain.seed),
                                     data_dir=cfg.paths.data_dir)
                    sources[skey] = src.fingerprint()
                work.source = identity.source_fingerprint(c, data=sources[skey])
                if work.source not in pretrainings:
                    pkey = "pretrain:" + _pretrain_key(arm.cfg, prep.source)
                    cached = (Path(real_cache) / "source" / work.source / "model.pt").exists()
                    pretrainings[work.source] = Pretraining(
                        key=work.source, label=f"{cfg.source.name} / {cfg.backbone.get('name', 'backbone')}",
                        shape=pkey, epochs=int(cfg.pretrain.max_epochs),
                        batches=epoch_batches(len(prep.source.train_indices), int(cfg.pretrain.batch_size)),
                        cached=cached)
                    if not cached and pkey not in probes:
                        probes[pkey] = Probe(pkey, "pretrain", arm.cfg, prep, None,
                                             tuple(sorted(set(pretrainings[work.source].batches))), threads=threads)
            if decision.use:
                work.features = _key([work.source, decision.depth, decision.pooled,
                                      _without(c.get("target") or {}, SAMPLE_SIZE)])
            if work.shape not in probes or work.n_train > best[work.shape]:
                old = probes.get(work.shape)
                sizes = set(old.batch_sizes) if old else set()
                probes[work.shape] = Probe(work.shape, "target", cfg, replace(prep, target=target), budget,
                                           tuple(sorted(sizes | set(work.batches))),
                                           stack=stack or bool(work.stacked_fits) or bool(old and old.stack),
                                           threads=threads)
                best[work.shape] = work.n_train
            else:
                p = probes[work.shape]
                p.batch_sizes = tuple(sorted(set(p.batch_sizes) | set(work.batches)))
                p.stack = p.stack or bool(work.stacked_fits)  # its stacked step, and why it may not stack
    return works, probes, pretrainings


# ----------------------------------------------------------------------------------------------- probing
def _probe_config(cfg: Any, out_dir: Path, *, cache: Path) -> Any:
    """The point's config with its outputs and caches in a temporary folder and no progress bar."""
    from omegaconf import open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.cache_dir = str(cache)
        cfg.trainer.enable_progress_bar = False
    return cfg


@contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's and transferlab's log lines and warnings stay out of the dry run's output while probing."""
    import warnings

    saved = {name: logging.getLogger(name).level for name in QUIET}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _typical(values: Sequence[float], default: float = 0.0) -> float:
    """A sample's typical time: the lower quartile (the smallest of up to three). Other processes on the machine
    only ever make a sample slower, in bursts; the lower quartile is what the same work takes between them."""
    v = sorted(float(x) for x in values)
    if not v:
        return default
    if len(v) <= 3:
        return v[0]
    return float(statistics.quantiles(v, n=4, method="inclusive")[0])


def _clock_class():
    """The timing callback (a class made on first use: Lightning is imported lazily)."""
    import lightning as L

    class Clock(L.Callback):
        """Times each epoch (start to next start), training batch (by size), validation pass and batch, and the
        test pass; stops the fit after PROBE_MIN_EPOCHS once the epochs took PROBE_FIT_S."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.end: float | None = None
            self.batches: list[list[tuple[int, float]]] = []  # per epoch: (size, seconds) of each batch
            self.gaps: list[float] = []  # from one batch's end to the next one's start (fetching it, the loop)
            self._end: float | None = None
            self.vals: dict[int, tuple[float, list[tuple[int, float]]]] = {}
            self.test: tuple[float, list[tuple[int, float]]] | None = None
            self._t = 0.0
            self._eval: list[tuple[int, float]] = []
            self._eval_t0 = 0.0
            self._size = 0

        @staticmethod
        def _n(batch: Any) -> int:
            try:
                return int(len(batch[1]))
            except Exception:  # noqa: BLE001 - an unusual batch: size unknown
                return 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.starts.append(time.perf_counter())
            self.batches.append([])
            self._end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._size, self._t = self._n(batch), time.perf_counter()
            if self._end is not None and len(self.starts) > 1:
                self.gaps.append(self._t - self._end)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._end = time.perf_counter()
            self.batches[-1].append((self._size, self._end - self._t))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if len(self.starts) >= PROBE_MIN_EPOCHS and time.perf_counter() - self.starts[0] > PROBE_FIT_S:
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module) -> None:
            self.end = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._eval, self._eval_t0 = [], time.perf_counter()

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._size, self._t = self._n(batch), time.perf_counter()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self._eval.append((self._size, time.perf_counter() - self._t))

        # a test pass is timed as a validation pass is (Lightning's hooks for both take the same arguments)
        on_test_start = on_validation_start
        on_test_batch_start = on_validation_batch_start
        on_test_batch_end = on_validation_batch_end

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.vals[len(self.starts)] = (time.perf_counter() - self._eval_t0, self._eval)

        def on_test_end(self, trainer, pl_module) -> None:
            self.test = (time.perf_counter() - self._eval_t0, self._eval)

    return Clock


def _final_trainable_class():
    import lightning as L

    from transferlab.transfer.plan import apply_epoch

    class FinalTrainable(L.Callback):
        """The plan's trainable set of its last epoch in every probe epoch (gradual / lp_ft: an upper bound), with
        the modes PlanSchedule keeps."""

        def __init__(self, plan: Any, epoch: int) -> None:
            self.plan, self.epoch = plan, int(epoch)

        def on_fit_start(self, trainer, pl_module) -> None:
            apply_epoch(pl_module.net, self.plan, self.epoch)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            apply_epoch(pl_module.net, self.plan, self.epoch)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if pl_module.training:
                pl_module.net.train(True)

    return FinalTrainable


def _eval_batches(batches: Sequence[tuple[int, float]], n: int) -> float:
    """The batches of an evaluation pass over `n` examples, from measured (size, seconds) batches: each full-size
    batch at their typical time, a partial one pro rata."""
    if not batches or n <= 0:
        return 0.0
    size = max(b for b, _ in batches) or 1
    per = _typical([t for b, t in batches if b == size])
    full, rest = divmod(int(n), size)
    return full * per + (per * rest / size if rest else 0.0)


def _scale_eval(passes: Sequence[tuple[float, list[tuple[int, float]]]], n_full: int) -> tuple[float, float]:
    """(the probe's pass, the same pass over all `n_full` examples): measured passes over part of a split, the
    missing batches added at the measured per-batch time."""
    if not passes:
        return 0.0, 0.0
    probe_pass = _typical([p for p, _ in passes])
    batches = [b for _, bs in passes for b in bs]
    measured = _typical([sum(t for _, t in bs) for _, bs in passes])
    return probe_pass, max(0.0, probe_pass - measured + _eval_batches(batches, n_full))


def _cut(x: Any, n: int) -> Any:
    return x[: max(1, int(n))] if len(x) else x


def _bare_steps(module: Any, x: Any, y: Any, sizes: Iterable[int], plan: Any, epoch: int) -> dict[int, float]:
    """Typical time of one bare optimizer step (forward, loss, backward, step) per batch size, outside Lightning,
    the sizes interleaved so that drift hits them alike."""
    import torch
    import torch.nn.functional as F

    from transferlab.transfer.plan import apply_epoch

    sizes = sorted({int(s) for s in sizes if 0 < int(s)})
    if not sizes or len(x) == 0:
        return {}
    module.train()
    if plan is not None:
        apply_epoch(module.net, plan, epoch)
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    device = next(module.parameters()).device
    reps = {b: [] for b in sizes}

    def batch(b: int) -> tuple[Any, Any]:
        idx = torch.arange(b) % len(x)
        return x[idx].to(device), y[idx].to(device)

    data = {b: batch(b) for b in sizes}
    for r in range(BARE_REPS + 1):
        for b in sizes:
            xb, yb = data[b]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(module(xb), yb).backward()
            opt.step()
            if r:  # the first round warms up
                reps[b].append(time.perf_counter() - t0)
    return {b: _typical(v) for b, v in reps.items()}


def _stacked(module: Any, arrays: tuple, full_bytes: int, cfg: Any, plan: Any, budget: Any, sizes: Iterable[int],
             n_val: int, lightning_step: float, single_epoch_s: float, tmp: Path,
             known_epoch_s: float | None = None
             ) -> tuple[float | None, dict[int, tuple[float, float]], tuple[float, float] | None, str | None]:
    """(per-epoch work outside batches and validation, b -> (a, c) per batch, (a, c) per validation pass, the
    reason it runs in turn) of a vectorised group of this shape (`training.stacked`): the stacked model's bare step
    and validation pass at 2 and 4 members, fitted as a + c x K, and two real `fit_stacked` runs of 2 members (1
    epoch, and 1 + m epochs, m such that the longer takes about STACK_FIT_S) for the per-epoch work."""
    import inspect

    import torch

    from transferlab.training import stacked
    from transferlab.training.batches import pick_device

    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    bs, seed = int(cfg.train.batch_size), int(cfg.seed)

    def member(i: int) -> Any:
        return stacked.Member(module=module, batches=_loaders(arrays, full_bytes, bs, seed + i, cfg, device),
                              plan=plan, ckpt_dir=tmp / f"member{i}", rng=torch.get_rng_state())

    pair = [member(0), member(1)]
    reason = stacked.why_sequential(pair, train_cfg=cfg.train, trainer_cfg=cfg.trainer,
                                    epochs=[int(budget.epochs)] * 2)
    if reason:
        return None, {}, None, reason
    x, y = arrays[0], arrays[1]
    vx, vy, eval_bs = pair[0].batches[1].x, pair[0].batches[1].y, pair[0].batches[1].batch_size
    sizes = sorted({int(s) for s in sizes if 0 < int(s)})
    steps: dict[int, dict[int, float]] = {b: {} for b in sizes}
    vals: dict[int, float] = {}
    for k in STACK_SIZES:
        sm = stacked.StackedModule([pair[0]] * k).to(device)
        opt = sm.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        sm.train()
        for b in sizes:
            idx = torch.arange(b) % len(x)
            xs = x[idx].to(device).unsqueeze(0).expand(k, *x[idx].shape).contiguous()
            ys = y[idx].to(device).unsqueeze(0).expand(k, b).contiguous()
            times = []
            for r in range(STACK_REPS + 1):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                sm.training_step((xs, ys), 0).backward()
                opt.step()
                if r:
                    times.append(time.perf_counter() - t0)
            steps[b][k] = _typical(times)
        sm.net.eval()
        sm._val_stacked = False  # every member validates on the same split (fixed by split_seed)
        times = []
        for r in range(3):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(vy), eval_bs):
                    sm._val_step(vx[i:i + eval_bs].to(device), vy[i:i + eval_bs].to(device))
            if r:
                times.append((time.perf_counter() - t0) * n_val / max(1, len(vy)))
        vals[k] = _typical(times)
    lo, hi = STACK_SIZES[0], STACK_SIZES[-1]

    def line(at: dict[int, float], extra: float = 0.0) -> tuple[float, float]:
        c = max(0.0, (at[hi] - at[lo]) / (hi - lo))
        return max(0.0, at[lo] - c * lo) + extra, c

    batch = {b: line(v, lightning_step) for b, v in steps.items()}
    val = line(vals)
    trainer_cfg = copy.deepcopy(cfg.trainer)
    from omegaconf import open_dict

    with open_dict(trainer_cfg):
        trainer_cfg.enable_progress_bar = False
    scheduled = "val_epochs" in inspect.signature(stacked.fit_stacked).parameters

    def fit(epochs: int) -> float:
        extra = {"val_epochs": (epochs,)} if scheduled else {}  # one check, at the end: the same in both fits
        t0 = time.perf_counter()
        stacked.fit_stacked([member(0), member(1)], max_epochs=epochs, trainer_cfg=trainer_cfg, **extra)
        return time.perf_counter() - t0

    in_batches = sum(batch.get(b, (0.0, 0.0))[0] + 2 * batch.get(b, (0.0, 0.0))[1]
                     for b in epoch_batches(len(y), bs))
    if known_epoch_s is not None:  # Lightning's per-epoch work in a stacked fit: the framework's, measured once
        return known_epoch_s, batch, val, None
    guess = max(1e-4, single_epoch_s + in_batches)
    m = int(min(STACK_EPOCHS[1], max(STACK_EPOCHS[0], STACK_FIT_S / guess)))
    short, long_ = fit(1), fit(1 + m)
    per_epoch = (long_ - short) / m
    checks = 0.0 if scheduled else val[0] + 2 * val[1]
    return max(0.0, per_epoch - in_batches - checks), batch, val, None


def _round_trip(state: dict, tmp: Path) -> tuple[float, float]:
    """(write, read) seconds of a state dict as the source cache stores it (checksummed, verified when read)."""
    from transferlab.store import verified

    path = tmp / "source-model" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    verified.save(path, {"state_dict": state, "meta": {}})
    t1 = time.perf_counter()
    verified.load(path, map_location="cpu")
    return t1 - t0, time.perf_counter() - t1


@dataclass
class _Fit:
    total_s: float
    epoch_s: float
    batch_s: dict[int, float]
    val_s: float
    test_s: float
    fixed_s: float      # the fit's own fixed part: Trainer, set-up, first-epoch warm-up, checkpoints at the end


PROBE_VAL_EVERY = 2     # a probe fit validates after every second epoch: epochs without a check time the epoch alone


def _timed_fit(module: Any, loaders: tuple, cfg: Any, plan: Any, epoch: int, *, ckpt_dir: Path, logger: Any,
               fingerprint: str | None, n_val: int, n_test: int) -> _Fit:
    """A real `fit_and_test` of PROBE_MIN_EPOCHS..PROBE_EPOCHS epochs, validating after every second one, timed
    by the Clock. The first epoch and the first check warm up (their excess goes to the fixed part); an epoch
    without a check gives the per-epoch work, one with a check minus that gives a check's (the validation pass,
    the selection and its best.ckpt, the callbacks)."""
    from omegaconf import open_dict

    from transferlab.training.fit import fit_and_test

    trainer_cfg = copy.deepcopy(cfg.trainer)
    with open_dict(trainer_cfg):
        trainer_cfg.check_val_every_n_epoch = PROBE_VAL_EVERY
        trainer_cfg.enable_progress_bar = False
    clock = _clock_class()()
    callbacks = [clock] if plan is None else [_final_trainable_class()(plan, epoch), clock]
    t0 = time.perf_counter()
    fit_and_test(module, loaders, max_epochs=PROBE_EPOCHS, trainer_cfg=trainer_cfg, ckpt_dir=ckpt_dir,
                 logger=logger, callbacks=callbacks, fingerprint=fingerprint, resume=False,
                 resume_every_s=float(cfg.checkpoint.every_s))
    total = time.perf_counter() - t0
    ends = [*clock.starts[1:], clock.end or clock.starts[-1]]
    epochs = [(number, end - start, bs) for number, (start, end, bs) in
              enumerate(zip(clock.starts, ends, clock.batches), start=1)]
    gap = _typical(clock.gaps)  # between batches: fetching the next one, the loop's own work; per batch
    sizes: dict[int, list[float]] = {}
    for number, _, bs in epochs[1:] or epochs:
        for b, t in bs:
            sizes.setdefault(b, []).append(t)
    batch = {b: _typical(v) + gap for b, v in sizes.items()}

    def batches(bs: list[tuple[int, float]]) -> float:
        return sum(batch.get(b, t + gap) for b, t in bs)

    plain_epochs = [p - batches(bs) for n, p, bs in epochs[1:] if n not in clock.vals]
    epoch_s = max(0.0, _typical(plain_epochs))
    checked = [n for n, _, _ in epochs if n in clock.vals]
    steady = checked[1:] or checked  # the first check warms up
    check_probe = _typical([p - batches(bs) - epoch_s for n, p, bs in epochs if n in steady])
    val_probe, val_full = _scale_eval([clock.vals[n] for n in steady], n_val)
    test_probe, test_full = _scale_eval([clock.test] if clock.test else [], n_test)
    modelled = sum(epoch_s + batches(bs) + (check_probe if n in clock.vals else 0.0) for n, _, bs in epochs)
    return _Fit(total_s=total, epoch_s=epoch_s, batch_s=batch, val_s=max(0.0, check_probe - val_probe + val_full),
                test_s=test_full, fixed_s=max(0.0, total - modelled - test_probe))


def _batch_table(fit: _Fit, bare: Mapping[int, float], sizes: Iterable[int]) -> dict[int, float]:
    """Per-batch time for every size: measured in the fit, else the nearest measured size plus the bare steps'
    difference."""
    out = dict(fit.batch_s)
    for b in sizes:
        if b in out or not fit.batch_s:
            continue
        ref = min(fit.batch_s, key=lambda s: (abs(s - b), -s))
        if b in bare and ref in bare:
            out[b] = max(0.0, fit.batch_s[ref] + bare[b] - bare[ref])
        else:
            out[b] = fit.batch_s[ref] * b / ref
    return out


def probe(spec: Probe) -> Timing:
    """Measure one shape (see the module docstring): a real build and a short real fit in a temporary folder."""
    import torch  # noqa: F401 - imported here, never at module import

    t0 = time.perf_counter()
    with _quiet(), _threads(spec.threads):
        if spec.first:  # the process's one-time costs land in this pass
            first = _probe_once(spec)
            timing = _probe_once(spec)
            timing.warmup_s = max(0.0, first.fixed_s - timing.fixed_s)
        else:
            timing = _probe_once(spec)
    timing.probe_s = time.perf_counter() - t0
    return timing


def _probe_once(spec: Probe) -> Timing:
    with tempfile.TemporaryDirectory(prefix="transferlab-preview-") as tmp:
        if spec.kind == "pretrain":
            return _probe_pretrain(spec, Path(tmp))
        return _probe_target(spec, Path(tmp))


def _logger(cfg: Any, run_dir: Path, job_type: str) -> Any:
    if str(cfg.logger.get("kind")) != "csv":
        return False  # wandb is not probed (its own process and files); none logs nothing
    from transferlab.training.loggers import make_logger

    return make_logger(cfg, run_dir, job_type)


def _loaders(arrays: tuple, full_bytes: int, bs: int, seed: int, cfg: Any, device: Any) -> tuple:
    from transferlab.training.batches import DEFAULT_MAX_IN_MEMORY_MB, arrays_loaders

    fits = full_bytes <= DEFAULT_MAX_IN_MEMORY_MB * 2**20  # the run's own choice: tensors, or a DataLoader
    return arrays_loaders(arrays, bs, seed, device=device, channels_last=bool(cfg.train.get("channels_last")),
                          max_in_memory_mb=DEFAULT_MAX_IN_MEMORY_MB if fits else 0)


def _probe_target(spec: Probe, tmp: Path) -> Timing:
    import lightning as L

    from transferlab.backbones import build_backbone
    from transferlab.config import plain
    from transferlab.run.experiment import Experiment
    from transferlab.run.scoring import methods_of, score_run
    from transferlab.store import feature_cache
    from transferlab.training import options
    from transferlab.training.batches import EVAL_BATCH, nbytes, pick_device
    from transferlab.training.module import TransferModule
    from transferlab.transfer.plan import build_target_net

    run_dir = tmp / "run"
    cfg = _probe_config(spec.cfg, run_dir, cache=tmp / "cache")
    t0 = time.perf_counter()
    exp = Experiment(cfg)  # identity, every check, the data: what a run pays before it builds
    open_s = time.perf_counter() - t0
    prep, budget = exp.prep, exp.prep.budget
    plan, target = prep.plan, prep.target
    seed, bs = int(cfg.seed), int(cfg.train.batch_size)
    t1 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    state = _stand_in_state(cfg, target.input_shape) if plan.reads_source_weights else None
    net = build_target_net(build_backbone(cfg.backbone, target.input_shape, load_weights=False), plan, state,
                           target.num_classes, seed=seed)
    decision = feature_cache.decide(cfg, plan, target, net, budget.epochs)
    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    sub_x, sub_y = target.subset()
    n_train = len(sub_y)
    parts = {"train": _cut(sub_x, PROBE_TRAIN_BATCHES * bs), "val": _cut(target.val_x, PROBE_EVAL_BATCHES * EVAL_BATCH),
             "test": _cut(target.test_x, PROBE_EVAL_BATCHES * EVAL_BATCH)}
    ys = {"train": _cut(sub_y, PROBE_TRAIN_BATCHES * bs), "val": _cut(target.val_y, PROBE_EVAL_BATCHES * EVAL_BATCH),
          "test": _cut(target.test_y, PROBE_EVAL_BATCHES * EVAL_BATCH)}
    feature_s = compute_s = 0.0
    if decision.use:  # the features of the probe's examples; the whole pass priced per example
        from transferlab.store import verified

        tc = time.perf_counter()
        feats = feature_cache.compute(net, decision.depth, parts, device=device, cfg=cfg, pooled=decision.pooled)
        compute_s = time.perf_counter() - tc
        done = sum(len(v) for v in parts.values())
        tw = time.perf_counter()
        verified.save(tmp / "features" / "features.pt", feats)
        write_s = time.perf_counter() - tw
        everything = len(target.train_y) + len(target.val_y) + len(target.test_y)
        feature_s = (compute_s + write_s) * everything / max(1, done)
        parts = feats
    arrays = (parts["train"], ys["train"], parts["val"], ys["val"], parts["test"], ys["test"])
    full = nbytes(sub_x, sub_y, target.val_x, target.val_y, target.test_x, target.test_y)
    loaders = _loaders(arrays, full, bs, seed, cfg, device)
    module = TransferModule(net, target.num_classes, optim={**plain(cfg.train), "max_epochs": budget.epochs},
                            plan=plan, input_block=decision.start)
    build_s = time.perf_counter() - t1 - compute_s
    scores_s = 0.0
    if methods_of(cfg):
        ts = time.perf_counter()
        try:
            score_run(cfg, prep, net, decision, state)
        except Exception:  # noqa: BLE001 - priced at what it took until it failed
            pass
        scores_s = time.perf_counter() - ts
    logger = _logger(cfg, run_dir, "target")
    last = max(0, int(budget.epochs) - 1)
    fit = _timed_fit(options.apply(module, cfg.train), loaders, cfg, plan, last, ckpt_dir=run_dir / "checkpoints",
                     logger=logger, fingerprint=exp.fingerprint, n_val=len(target.val_y),
                     n_test=len(target.test_y))
    tc = time.perf_counter()
    record = None
    try:  # the run's record: convergence, result.json (here in the temporary folder)
        exp.net, exp.module, exp.logger = net, module, logger
        exp.record.trainable_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        exp.record.total_params = sum(p.numel() for p in net.parameters())
        from transferlab.training.fit import FitOutcome

        record = exp.close(FitOutcome(test={"test/acc": 0.0}, best_val_acc=0.0, best_ckpt="", epochs=1,
                                      history={"val/acc": [0.0]}, steps=1, selected_epoch=1))
    except Exception:  # noqa: BLE001 - priced at what it took
        pass
    close_s = time.perf_counter() - tc
    report_s = 0.0
    if record is not None:  # a single run prints its table (train.py); a group's members do not
        import contextlib
        import io

        from transferlab.run.console import print_result

        tr = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                print_result(record, run_dir)
        except Exception:  # noqa: BLE001 - the probe's record holds no real metrics; priced at what it took
            pass
        report_s = time.perf_counter() - tr
    bare = _bare_steps(module, arrays[0], arrays[1], {*spec.batch_sizes, *fit.batch_s}, plan, last)
    stacked_epoch, stacked_batch, stacked_val, reason = None, {}, None, None
    if spec.stack:
        lightning_step = _typical([max(0.0, t - bare[b]) for b, t in fit.batch_s.items() if b in bare])
        try:
            stacked_epoch, stacked_batch, stacked_val, reason = _stacked(
                module, arrays, full, cfg, plan, budget, spec.batch_sizes, len(target.val_y), lightning_step,
                fit.epoch_s, tmp, known_epoch_s=spec.stacked_epoch_s)
        except Exception as e:  # noqa: BLE001 - priced as the members' batches alone, Lightning's epoch once
            log.debug("stacked probe failed: %s", e)
    load_s = _round_trip(state, tmp)[1] if state is not None else 0.0
    return Timing(fixed_s=open_s + build_s + fit.fixed_s + fit.test_s + close_s, report_s=report_s,
                  fit_only_s=build_s + fit.fixed_s, test_s=fit.test_s,
                  epoch_s=fit.epoch_s,
                  batch_s=_batch_table(fit, bare, spec.batch_sizes), val_s=fit.val_s, load_s=load_s,
                  feature_s=feature_s, scores_s=scores_s, scores_n=n_train if scores_s else 0,
                  stacked_epoch_s=stacked_epoch, stacked_batch_s=stacked_batch, stacked_val_s=stacked_val,
                  stack_reason=reason,
                  measured_on=f"{target.name}: {n_train} train, {len(target.val_y)} val, {len(target.test_y)} test "
                              f"{'x'.join(str(d) for d in target.input_shape)}")


def _probe_pretrain(spec: Probe, tmp: Path) -> Timing:
    import lightning as L

    from transferlab.backbones import build_backbone
    from transferlab.config import plain
    from transferlab.training.batches import EVAL_BATCH, nbytes, pick_device
    from transferlab.training.module import TransferModule
    from transferlab.transfer.network import TransferNet

    run_dir = tmp / "source"
    cfg = _probe_config(spec.cfg, tmp / "run", cache=tmp / "cache")
    source = spec.prep.source
    bs, seed = int(cfg.pretrain.batch_size), int(cfg.pretrain.seed)
    t1 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    net = TransferNet(build_backbone(cfg.backbone, source.input_shape), source.num_classes)
    module = TransferModule(net, source.num_classes, optim=plain(cfg.pretrain))
    sub_x, sub_y = source.subset()
    arrays = (_cut(sub_x, PROBE_TRAIN_BATCHES * bs), _cut(sub_y, PROBE_TRAIN_BATCHES * bs),
              _cut(source.val_x, PROBE_EVAL_BATCHES * EVAL_BATCH), _cut(source.val_y, PROBE_EVAL_BATCHES * EVAL_BATCH),
              _cut(source.test_x, PROBE_EVAL_BATCHES * EVAL_BATCH),
              _cut(source.test_y, PROBE_EVAL_BATCHES * EVAL_BATCH))
    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    full = nbytes(sub_x, sub_y, source.val_x, source.val_y, source.test_x, source.test_y)
    loaders = _loaders(arrays, full, bs, seed, cfg, device)
    build_s = time.perf_counter() - t1
    fit = _timed_fit(module, loaders, cfg, None, 0, ckpt_dir=run_dir / "checkpoints",
                     logger=_logger(cfg, run_dir, "source"), fingerprint=None, n_val=len(source.val_y),
                     n_test=len(source.test_y))
    bare = _bare_steps(module, arrays[0], arrays[1], {*spec.batch_sizes, *fit.batch_s}, None, 0)
    state = {k: v for k, v in module.state_dict().items() if k.startswith("net.")}
    save_s, load_s = _round_trip(state, tmp)
    return Timing(fixed_s=build_s + fit.fixed_s + fit.test_s + load_s, epoch_s=fit.epoch_s,
                  batch_s=_batch_table(fit, bare, spec.batch_sizes), val_s=fit.val_s, save_s=save_s,
                  measured_on=f"{source.name}: {len(sub_y)} train, {len(source.val_y)} val, {len(source.test_y)} "
                              f"test {'x'.join(str(d) for d in source.input_shape)}")


# ----------------------------------------------------------------------------------------------- the dry run's call
def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the sweep's start-up so far."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _import_training() -> float:
    """Import what the jobs import (torch, Lightning, the run); seconds it took (0 when already imported)."""
    t0 = time.perf_counter()
    import lightning  # noqa: F401
    import torch  # noqa: F401

    import transferlab.run.experiment  # noqa: F401
    import transferlab.sweep.group_job  # noqa: F401
    return time.perf_counter() - t0


def _worker_start() -> float:
    """A new worker process's start-up (local_parallel workers, SLURM tasks): Python and the imports of a job,
    timed in a child process."""
    import subprocess

    code = "import transferlab.train, transferlab.run.experiment, transferlab.sweep.group_job, lightning"
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return 0.0
    return time.perf_counter() - t0


def _job_overhead(cfg: Any, hydra_cfg: Any = None) -> float:
    """Hydra's work per job outside the run, timed on this config as `hydra.core.utils.run_job` does it: the job's
    config and its `hydra` node copied, the three `.hydra` files written, a log file opened; and the sweeper's per
    point: started.json written, the point's result.json read back."""
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory(prefix="transferlab-preview-") as tmp:
        t0 = time.perf_counter()
        job = copy.deepcopy(cfg)
        hydra = copy.deepcopy(hydra_cfg) if hydra_cfg is not None else None
        OmegaConf.save(job, Path(tmp) / "config.yaml")
        if hydra is not None:
            OmegaConf.save(hydra, Path(tmp) / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(list(hydra_cfg.get("overrides", {}).get("task", []) if hydra_cfg else [])),
                       Path(tmp) / "overrides.yaml")
        handler = logging.FileHandler(Path(tmp) / "train.log")
        handler.close()
        (Path(tmp) / "started.json").write_text(json.dumps({"pid": os.getpid()}))
        record = json.dumps(OmegaConf.to_container(job, resolve=True), default=str)
        (Path(tmp) / "result.json").write_text(record)
        json.loads((Path(tmp) / "result.json").read_text())
        return time.perf_counter() - t0


def machine(threads: int | None = None) -> str:
    """What the probes ran on, in a few words (`threads`: the torch threads they used, when the launcher fixed it)."""
    parts = []
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n = threads or torch.get_num_threads()
        parts.append(f"{cores} CPU cores, torch {torch.__version__.split('+')[0]}, {n} thread{'s' if n != 1 else ''}")
    except Exception:  # noqa: BLE001
        pass
    try:
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    except OSError:
        pass
    return "this machine (" + ", ".join(parts) + ")"


def estimate(items: Sequence[tuple[Any, Any]], *, hydra_cfg: Any = None, vectorize: str | None = None,
             vectorize_max: int = 16, measure: Callable[[Probe], Timing] = probe, launcher: Launcher | None = None,
             startup_s: float | None = None) -> tuple[Estimate, dict[str, Timing], float]:
    """(the estimate, the timings per shape, seconds spent probing) for `items`: (point, composed config) of the
    points still to run, in launch order. `measure` times one shape (default: `probe`)."""
    startup = _process_age() if startup_s is None else startup_s
    launcher = launcher or launcher_of(hydra_cfg, items[0][1] if items else None)
    t0 = time.perf_counter()
    import_s = _import_training() if measure is probe else 0.0
    works, probes, pretrainings = describe(items, stack=vectorize is not None, threads=launcher.threads)
    timings: dict[str, Timing] = {}
    failed: list[str] = []
    for i, (key, spec) in enumerate(probes.items()):
        spec.first = not timings  # the first probe that runs carries the process's one-time costs
        spec.stacked_epoch_s = next((t.stacked_epoch_s for t in timings.values()
                                     if t.stacked_epoch_s is not None), None)
        try:
            timings[key] = measure(spec)
            log.debug("probe %s (%s): %s", i, spec.kind, timings[key])
        except Exception as e:  # noqa: BLE001 - e.g. a point whose loss diverges: its points go unpriced
            log.debug("probe failed", exc_info=True)
            failed.append(f"{type(e).__name__}: {e}".splitlines()[0][:160])
    by_name = {w.name: w for w in works}
    if vectorize is not None:
        from transferlab.sweep import groups

        units = [[by_name[p.name] for p in unit] for unit in groups.group([p for p, _ in items], vectorize_max)]
    else:
        units = [[w] for w in works]
    real = measure is probe
    job_s = _job_overhead(items[0][1], hydra_cfg) if real and items else 0.0
    worker = _worker_start() if real and launcher.fresh_process and launcher.slots else 0.0
    warmup = max([t.warmup_s for t in timings.values()], default=0.0)
    est = price(units, timings, pretrainings, launcher=launcher, job_s=job_s,
                startup_s=startup + (0.0 if launcher.fresh_process else import_s),
                worker_start_s=worker + warmup, warmup_s=warmup)
    for unit in units:
        log.debug("unit %s (%d points): %.3f s", unit[0].name, len(unit), unit_cost(unit, timings) + job_s)
    log.debug("job %.3f s, worker start %.3f s, warm-up %.3f s, imports %.3f s, start-up %.3f s", job_s, worker,
              warmup, import_s, startup)
    if failed:
        est.notes.append("probe failures: " + "; ".join(dict.fromkeys(failed)))
    kinds = {w.shape for w in works if w.shape}
    if any("gradual" in k or "lp_ft" in k for k in kinds):
        est.notes.append("gradual / lp_ft arms are priced as if their final trainable set trained from epoch 1")
    return est, timings, time.perf_counter() - t0


def show(points: Sequence[Any], config_of: Callable[[Any], Any], *, hydra_cfg: Any = None,
         vectorize: str | None = None, vectorize_max: int = 16, measure: Callable[[Probe], Timing] = probe,
         out: Callable[[str], None] = print) -> Estimate | None:
    """The dry run's cost preview of the points still to run (`config_of(point)`: its composed config). Prints the
    table; never raises (a preview that fails says so in one line and the dry run goes on)."""
    if not points:
        return None
    startup = _process_age()
    try:
        items = [(p, config_of(p)) for p in points]
        est, timings, spent = estimate(items, hydra_cfg=hydra_cfg, vectorize=vectorize,
                                       vectorize_max=vectorize_max, measure=measure, startup_s=startup)
    except Exception as e:  # noqa: BLE001 - the listing above stands; the estimate is extra
        log.debug("cost estimate failed", exc_info=True)
        out(f"cost estimate unavailable: {type(e).__name__}: {e}".splitlines()[0])
        return None
    data = sorted({t.measured_on for t in timings.values() if t.measured_on})
    out(render(est, probes=len(timings), probe_s=spent, data=data,
               machine=machine(est.launcher.threads) if measure is probe else "injected timings"))
    return est
