"""`train.select=cv`: k-fold cross-validation inside the n labelled examples chooses how long to train, then the
model trains on all n and only that model is tested.

Why: `best_val` chooses the epoch on the task's validation split, labels the x axis (n) does not count, and
`val_in_budget` spends a share of the n on selection alone. Under cv every one of the n labels trains the tested
model and every one also took part in choosing its training length: `labels_used` is n (run/labels.py).

The protocol, for a point whose subset has n examples (`tasks/cv_folds.py`: the folds, stratified, nested in n):

1. k fold fits. Fold fit j trains on the subset minus fold j and validates on fold j, as the point's own fit would
   train (same net and seed, same schedules), in `<point>/folds/<j>/` (checkpoints, logs, `fold.json`). All k
   follow one step plan: the point's budget planned on the smallest fold's training set (training/budget.py), so
   their validation checks fall after the same epochs. Nothing is tested.
2. The choice. At each check epoch e the k held-out accuracies are averaged (and the losses); the check with the
   highest mean val/acc wins, ties to the lower mean val/loss, then to the earlier check (best_val's rule on the
   mean curve). Its step count is t* = e* x the folds' steps per epoch (the largest, should fold sizes straddle a
   batch boundary).
3. The fit on all n: the point's own fit, planned on n as usual, stopped after the fewest whole epochs giving at
   least t* steps, E* = ceil(t* / steps per epoch on n) (whole epochs, as every budget here). Its LR schedule and
   unfreezing schedule are those of the whole plan (it is the planned fit, cut short; should the chosen steps
   exceed the plan on n, which fold fits planned on fewer examples per epoch can do by less than an epoch, the
   plan is extended to them), and its model is the last one. That model is tested once. The task's validation split
   is still evaluated at its checks for the curves
   and the convergence verdict in result.json; it chooses nothing.

Cost: k + 1 fits per point (a tuned point: that per candidate, run/tuning.py). `result.json` carries `cv`: the fold
of every subset example, the fold sizes, each fold's curve, the mean curve, the choice and the fit on all n.
`metrics.val/acc` is the mean held-out accuracy at the chosen check (the selection score).

Resume: a killed point reuses a fold fit whose sealed fold.json says ok under its fingerprint (a hash of the
point's and the fold's index and count); an unfinished one resumes from its own last.ckpt (one a tuned point's
candidates fitted stacked left none: it starts again), the fit on all n from
the point's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.run.experiment import Experiment, source_weights
from transferlab.run.setup import Prepared, plan_budget
from transferlab.tasks import cv_folds
from transferlab.training import budget as budget_mod
from transferlab.training.fit import FitOutcome
from transferlab.training.loggers import finish_logger

log = logging.getLogger(__name__)

FOLDS_DIR = "folds"
FOLD_FILE = "fold.json"
RULE = ("highest mean held-out val/acc over the k folds at a check; ties: lower mean val/loss, then the earlier "
        "check; steps = that check's epoch x the folds' steps per epoch; the fit on all n runs the fewest whole "
        "epochs giving at least those steps")


@dataclass
class FoldFit:
    """One fold fit as `fold.json` holds it: its curve is what the choice reads."""

    index: int
    fingerprint: str
    dir: str
    n_train: int
    n_val: int
    steps_per_epoch: int
    status: str = "ok"
    epochs: int | None = None
    steps: int | None = None
    history: dict[str, list] = field(default_factory=dict)  # epoch, val/acc, val/loss per check
    wall_s: float | None = None
    reused: bool = False

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("dir",)}

    def write(self) -> None:
        """fold.json, sealed like result.json (its curve decides the choice: a hand edit must not)."""
        from transferlab.store import verified

        text = json.dumps({k: v for k, v in asdict(self).items() if k != "reused"}, indent=2, default=str)
        verified.write_with(Path(self.dir) / FOLD_FILE, lambda tmp: tmp.write_text(text))


def fold_fingerprint(point_fp: str, k: int, j: int) -> str:
    """The checkpoint identity of fold fit j of k of the point `point_fp`."""
    return hashlib.sha256(f"{point_fp}/cv/{k}/{j}".encode()).hexdigest()[:16]


def _reusable(j: int, fp: str, fdir: Path) -> FoldFit | None:
    """The finished fold fit an earlier attempt left, or None (then it is trained): its fold.json must verify and
    say ok under this fingerprint."""
    from transferlab.store import verified

    try:
        data = (fdir / FOLD_FILE).read_bytes()
        if verified.bytes_problem(fdir / FOLD_FILE, data) is not None:
            return None
        fit = FoldFit(**{**json.loads(data), "index": j, "dir": str(fdir), "reused": True})
    except (OSError, ValueError, TypeError):
        return None
    return fit if fit.status == "ok" and fit.fingerprint == fp and fit.history.get("epoch") else None


@dataclass
class Plan:
    """The folds of one point: k, each subset example's fold, each fold's task and the shared fold budget."""

    k: int
    folds: np.ndarray  # fold of every example, in train_indices order
    tasks: list
    budget: budget_mod.StepBudget
    steps_per_epoch: list[int]


def plan(cfg: DictConfig, prep: Prepared) -> Plan:
    """The folds (tasks/cv_folds.py) and the step plan every fold fit follows: the point's budget rule on the
    smallest fold's training set."""
    k = cv_folds.check_counts(cv_folds.subset_counts(prep.target), cfg.train.get("cv_folds"),
                              size_key="target.n_per_class", size_value=cfg.target.get("n_per_class"))
    folds = cv_folds.task_folds(prep.target, k, int(cfg.data_seed))
    tasks = [cv_folds.fold_task(prep.target, folds, j) for j in range(k)]
    smallest = min(tasks, key=lambda t: len(t.train_indices))
    shared = plan_budget(cfg, prep.plan, smallest, prep.source)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    spe = [budget_mod.steps_per_epoch(len(t.train_indices), int(cfg.train.batch_size), accumulate) for t in tasks]
    return Plan(k=k, folds=folds, tasks=tasks, budget=shared, steps_per_epoch=spe)


def _fold_config(cfg: DictConfig, fdir: Path) -> DictConfig:
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        out.paths.output_dir = str(fdir)
    return out


def reusable_fold(exp: Experiment, p: Plan, j: int) -> FoldFit | None:
    """Fold fit j of the point `exp` as an earlier attempt finished it, or None (then it is trained)."""
    return _reusable(j, fold_fingerprint(exp.fingerprint, p.k, j), exp.run_dir / FOLDS_DIR / str(j))


def fold_experiment(exp: Experiment, p: Plan, j: int) -> Experiment:
    """Fold fit j of the point `exp` as a run of its own (not built): the point's config and net, trained on the
    subset minus fold j and validated on fold j, under the shared fold budget, in `<point>/folds/<j>/`."""
    fdir = exp.run_dir / FOLDS_DIR / str(j)
    prep = dataclasses.replace(exp.prep, target=p.tasks[j], budget=p.budget)
    return Experiment(_fold_config(exp.cfg, fdir), inputs=exp.inputs, prepared=prep,
                      fingerprint=fold_fingerprint(exp.fingerprint, p.k, j),
                      features_of=exp.prep.target)  # the point's cached prefix features serve every fold


def fold_record(fold: Experiment, p: Plan, j: int, outcome: FitOutcome, wall_s: float) -> FoldFit:
    """The finished fold fit's fold.json, written (sealed)."""
    fit = FoldFit(index=j, fingerprint=fold.fingerprint, dir=str(fold.run_dir), n_train=len(p.tasks[j].train_indices),
                  n_val=len(p.tasks[j].val_y), steps_per_epoch=p.steps_per_epoch[j], epochs=outcome.epochs,
                  steps=outcome.steps, history={k: list(v) for k, v in outcome.history.items()}, wall_s=wall_s)
    fit.write()
    return fit


def fit_fold(exp: Experiment, p: Plan, j: int) -> FoldFit:
    """Train fold fit j of the point `exp` (no test) in `<point>/folds/<j>/`, or reuse a finished one."""
    done = reusable_fold(exp, p, j)
    if done is not None:
        log.info("cv: fold %d/%d is done already; not trained again", j + 1, p.k)
        return done
    log.info("cv: fold %d/%d (train %d, validate %d)", j + 1, p.k, len(p.tasks[j].train_indices),
             len(p.tasks[j].val_y))
    t0 = time.perf_counter()
    fold = fold_experiment(exp, p, j)
    fold.build(score=False)
    try:
        outcome = fold.fit(logger=fold.open_logger(job_type="cv_fold"), test=False)
    except Exception:
        finish_logger(fold.logger, failed=True)
        raise
    finish_logger(fold.logger, failed=False)
    return fold_record(fold, p, j, outcome, time.perf_counter() - t0)


def mean_curve(fits: list[FoldFit]) -> dict[str, list]:
    """The k held-out curves averaged at the check epochs every fold has: epoch, step, val/acc, val/loss."""
    common = sorted(set.intersection(*(set(f.history["epoch"]) for f in fits)))
    spe = max(f.steps_per_epoch for f in fits)

    def at(f: FoldFit, key: str, e: int) -> float:
        return float(f.history[key][f.history["epoch"].index(e)])

    return {"epoch": common, "step": [e * spe for e in common],
            "val/acc": [float(np.mean([at(f, "val/acc", e) for f in fits])) for e in common],
            "val/loss": [float(np.mean([at(f, "val/loss", e) for f in fits])) for e in common]}


def choose(curve: dict[str, list]) -> int:
    """Index of the chosen check in `curve` (`RULE`); a NaN mean never wins while a number is there."""
    def key(i: int) -> tuple:
        acc, loss = curve["val/acc"][i], curve["val/loss"][i]
        return (-acc if math.isfinite(acc) else math.inf, loss if math.isfinite(loss) else math.inf, i)

    return min(range(len(curve["epoch"])), key=key)


def fit(exp: Experiment, test: bool = True, score: bool = True, job_type: str = "target",
        trained: dict[int, FoldFit] | None = None) -> tuple[FitOutcome, dict[str, Any]]:
    """The protocol on an opened Experiment (the point's, or a tuned point's candidate's): k fold fits, the
    choice, the fit on all n stopped at the chosen step (tested when `test`; `score` and `job_type` as
    `Experiment.build` and `open_logger` take them). `trained`: fold fits this attempt already made elsewhere (a
    tuned point's candidates stack theirs, run/tuning.py). Returns its outcome, whose `best_val_acc` is the mean
    held-out accuracy at the chosen check, and the record's `cv` block."""
    p = plan(exp.cfg, exp.prep)
    # The source model first, as the point's own (pretrained in its folder on a cache miss): the fold fits and the
    # fit on all n then load it from the cache, and the record says whether this point trained it.
    source_status = source_weights(exp.cfg, exp.prep, exp.run_dir)[1]
    fits = [(trained or {}).get(j) or fit_fold(exp, p, j) for j in range(p.k)]
    curve = mean_curve(fits)
    i = choose(curve)
    steps = curve["step"][i]
    spe = exp.prep.budget.steps_per_epoch
    epochs = max(1, math.ceil(steps / spe))
    if epochs > exp.prep.budget.epochs:  # fold fits planned on fewer examples can run a few steps more
        b = exp.prep.budget
        exp.prep = dataclasses.replace(exp.prep, budget=dataclasses.replace(
            b, epochs=epochs, steps=epochs * spe, val_epochs=tuple(sorted({*b.val_epochs, epochs}))))
        exp.record.budget = exp.prep.budget.to_dict()
    log.info("cv: chose step %d (epoch %d of the folds, mean held-out val/acc %.4f); the fit on all n stops after "
             "epoch %d (%d steps)", steps, curve["epoch"][i], curve["val/acc"][i], epochs, epochs * spe)
    block = {"k": p.k, "cv_folds": exp.cfg.train.get("cv_folds"), "design": cv_folds.DESIGN, "rule": RULE,
             "fold_of": [int(f) for f in p.folds], "fold_budget": p.budget.to_dict(),
             "folds": [f.summary() for f in fits], "mean": curve,
             "chosen": {"index": i, "epoch": curve["epoch"][i], "step": steps, "val/acc": curve["val/acc"][i],
                        "val/loss": curve["val/loss"][i]},
             "final": {"n_train": len(exp.prep.target.train_indices), "steps_per_epoch": spe, "epochs": epochs,
                       "steps": epochs * spe, "planned_epochs": exp.prep.budget.epochs},
             "fits": p.k + 1}
    if not all(f.reused for f in fits):
        # A fold trained by this attempt may have moved the chosen stop: an earlier attempt's fit on all n (its
        # last.ckpt, keyed on the point's fingerprint only) was trained toward another stop, so it is not resumed.
        shutil.rmtree(exp.run_dir / "checkpoints", ignore_errors=True)
    exp.build(score=score)
    exp.record.source_cache = source_status
    outcome = exp.fit(logger=exp.open_logger(job_type=job_type), test=test, stop_after=epochs)
    return dataclasses.replace(outcome, best_val_acc=curve["val/acc"][i]), block


def run_cv(cfg: DictConfig) -> dict[str, Any]:
    """One untuned cv point: `fit` with the test, then result.json (the `cv` block, labels_used = n)."""
    exp = Experiment(cfg)  # raises ConfigError before anything is written
    try:
        outcome, block = fit(exp)
        exp.record.cv = block
        return exp.close(outcome)
    except Exception as e:
        exp.fail(e)
        raise
