"""Tuning inside a point: `tune.train.lr=[1e-4,1e-3,1e-2]` trains one candidate per value, selects one by the
point's own protocol and reports that one's test (the others' are measured after the choice, for hindsight only).

Why: arms of a transfer study have different best learning rates (and weight decays); one rate for every arm makes
"arm A beats arm B at n" partly a statement about the rate. Each point therefore tunes within itself, on the labels
its protocol already reads, and no test number reaches the choice: the test split is read only after it.

The candidates are the product of the tuned keys' lists (`config.tune_grid`, in `tune.train`'s key order). Each is
a full fit with its own identity: the point's config with the candidate's values and nothing tuned, so its
fingerprint is that of the separate point `train.lr=<value>` (tests/test_tuning.py holds them equal). It trains in
`<point>/candidates/<its fingerprint>/` (checkpoints, logs, `candidate.json`), built and fitted exactly as that
separate run (`Experiment.build`, `Experiment.fit`), minus the test. Its score is the val/acc of the model its
`train.select` kept: under `best_val` the best epoch's on the task's validation split, under `val_in_budget` the same
on the split carved out of the n (tasks/budget_val.py: one split, the same for every candidate, since it depends on
`data_seed` only), under `last`/`fixed_epoch` the final or fixed epoch's, under `cv` the mean held-out val/acc of
its k fold fits at the check they chose (run/cv.py: the candidate is then its fit on all n stopped at that step; the
folds depend on `data_seed` only, so every candidate is judged on the same folds; k + 1 fits per candidate). The
highest score wins; ties go to the lower val/loss of that model, then to the earlier candidate. A candidate whose
loss turns NaN/inf has lost (its failure is recorded); the point fails only if every candidate does.

The selected candidate is then tested from its best.ckpt with the point's own logger, and the point's result.json is
that candidate's record with the point's identity (fingerprint and config, the grid included), `labels_used` that
counts the validation split (the choice read it, run/labels.py; under cv it is n) and the `tuning` block
(run/record.py), plus the chosen candidate's `cv` block under cv. After that test, and only then, each other
finished candidate's kept model is tested once, unlogged, for the report's oracle (`hindsight_test` in the block,
run/hindsight.py); nothing reads those numbers to choose.

Candidates that can share a fit train as one stacked model (`train_candidates`, `tune.stack`; under cv their fold
fits, fold by fold): the candidates of a point differ only in their learning rate or weight decay, which the stacked
model gives each member through its own optimizer groups (training/stacked.py); each equals its separate fit within
float tolerance. The rest train one after the other, each as its separate run.

Resume: a killed point starts again and reuses a candidate only when its candidate.json says ok under the expected
fingerprint and values and its best.ckpt verifies (checksum) as the model of the recorded epoch; anything else is
trained again, from the candidate's own last.ckpt when that verifies (training/checkpoints.py; such a candidate trains
alone: a stacked fit writes no last.ckpt, so a killed stacked fit starts again from epoch 0).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import versions
from transferlab.config import TUNABLE, plain, tune_grid, unknown_tune_key
from transferlab.errors import ConfigError, NonFiniteLossError, Problem, failure_text, problem
from transferlab.run import hindsight, identity, labels
from transferlab.run.record import RunRecord

log = logging.getLogger(__name__)

CANDIDATES_DIR = "candidates"
CANDIDATE_FILE = "candidate.json"
RULE = "highest score; ties: lower val/loss of the kept model, then the earlier candidate"


# ---------------------------------------------------------------- the grid and its checks (no data read)
def check_grid(cfg: Any) -> list[Problem]:
    """The `tune` node's own problems: keys that are not tunable (added with `+tune...`), values that are not a
    non-empty list of distinct values, and a run over several devices (a DDP run trains one model)."""
    node = plain(cfg.get("tune")) if cfg.get("tune") is not None else {}
    out = [unknown_tune_key([str(k)]) for k in node if k not in ("train", "stack")]
    train = node.get("train") or {}
    out += [unknown_tune_key(["train", str(k)]) for k, v in train.items() if k not in TUNABLE and v is not None]
    grid = {k: v for k, v in tune_grid(cfg).items() if k.split(".", 1)[1] in TUNABLE}
    for key, values in grid.items():
        what = f"tune.{key}"
        if not isinstance(values, list):
            out.append(problem(what, values, "a list of the values to try, e.g. [1e-4,1e-3] (null: not tuned)"))
        elif not values:
            out.append(problem(what, values, "a non-empty list of the values to try (null: not tuned)"))
        elif len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            out.append(problem(what, values, "distinct values (a repeated value would train the same candidate "
                                             "twice)"))
    if grid and not out:
        from transferlab.run import ddp

        if ddp.processes(cfg.trainer) > 1:
            out.append(problem("tune", {f"tune.{k}": v for k, v in grid.items()},
                               "null with trainer.devices > 1: a tuned point trains its candidates one after the "
                               "other on one device"))
    return out


def candidates(cfg: Any) -> list[dict[str, Any]]:
    """Each candidate's values ({"train.lr": 1e-3, ...}), the product of the tuned keys' lists, the first key's
    values varying slowest."""
    grid = tune_grid(cfg)
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def candidate_config(cfg: DictConfig, values: dict[str, Any], out_dir: str | Path) -> DictConfig:
    """The point's config with the candidate's values, nothing tuned, and `out_dir` as its output folder: the
    config of the separate run this candidate is."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        for key, value in values.items():
            OmegaConf.update(out, key, value, merge=False)
        for key in list(out.tune.train.keys()):
            out.tune.train[key] = None
        out.paths.output_dir = str(out_dir)
    return out


def _candidate_dir(run_dir: Path, fingerprint: str) -> Path:
    return run_dir / CANDIDATES_DIR / fingerprint


def stack_expected(cfg: Any) -> bool:
    """Will this point's candidates share stacked fits (`train_candidates`), as far as the config tells? Only
    when `tune.stack` is on and every tuned key reaches the fit as an optimizer-group option
    (`training.stacked.GROUP_OPTIONS`); the shape of the net can still keep them apart (the dry run's probe says)."""
    from transferlab.training.stacked import GROUP_OPTIONS

    grid = tune_grid(cfg)
    return (bool((plain(cfg.get("tune")) or {}).get("stack", True)) and len(candidates(cfg)) > 1
            and all(k.split(".", 1)[1] in GROUP_OPTIONS for k in grid))


def check_candidates(cfg: DictConfig, inputs: dict) -> list[tuple[dict[str, Any], str]]:
    """(values, fingerprint) of every candidate, after validating each candidate's config as its own run would
    (`run/setup.prepare`: ranges, cross-key checks, the data). A problem with a tuned key is named as the
    `tune.*` key that gave the value; a problem every candidate shares is listed once. ConfigError before anything
    is written."""
    from transferlab.run.setup import check_resume, prepare

    problems = check_grid(cfg)
    if problems:
        raise ConfigError(problems)
    problems = check_resume(cfg)  # the point itself never writes checkpoints/: any there belong to another run
    if problems:
        raise ConfigError(problems)
    run_dir = Path(str(cfg.paths.output_dir))
    out, found = [], {}
    for values in candidates(cfg):
        fp = identity.fingerprint(candidate_config(cfg, values, run_dir), inputs)
        ccfg = candidate_config(cfg, values, _candidate_dir(run_dir, fp))
        try:
            prepare(ccfg)
        except ConfigError as e:
            for p in e.items:
                p = Problem(f"tune.{p.key}", p.value, p.allowed) if p.key in values else p
                found.setdefault(str(p), p)
        out.append((values, fp))
    if found:
        raise ConfigError(list(found.values()))
    return out


# ---------------------------------------------------------------- one candidate
@dataclass
class Candidate:
    """One candidate's fit as `candidate.json` holds it (what selection and the point's record need)."""

    index: int
    values: dict[str, Any]
    fingerprint: str
    dir: str
    status: str = "ok"  # ok | failed (its loss turned NaN/inf: it lost)
    score: float | None = None  # val/acc of the model its train.select kept
    val_loss: float | None = None  # val/loss of that model (the tie-break)
    selected_epoch: int | None = None
    epochs: int | None = None
    steps: int | None = None
    best_ckpt: str | None = None
    resumed_from: str | None = None
    history: dict[str, list] = field(default_factory=dict)
    wall_s: float | None = None
    error: str | None = None
    reused: bool = False  # read back from an earlier attempt's candidate.json, not trained by this one
    # its kept model's test numbers, measured after the choice and never read by it (run/hindsight.py); None: not
    # measured (a failed candidate, or before the point's test)
    hindsight_test: dict[str, float] | None = None
    cv: dict[str, Any] | None = None  # train.select=cv: the candidate's folds and choice (run/cv.py)

    def summary(self) -> dict[str, Any]:
        """The candidate as the point's `tuning` block lists it (no curves: they are in its candidate.json)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("history", "best_ckpt", "resumed_from", "cv")}
        if self.cv is not None:
            out["cv_chosen"] = self.cv["chosen"]  # the step its mean fold curve chose
        return out

    def write(self) -> None:
        """candidate.json, sealed like result.json (its score decides the choice: a hand edit must not)."""
        from transferlab.store import verified

        text = json.dumps({k: v for k, v in asdict(self).items() if k not in ("reused", hindsight.FIELD)}, indent=2,
                          default=str)
        verified.write_with(Path(self.dir) / CANDIDATE_FILE, lambda tmp: tmp.write_text(text))


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _loss_at(history: dict[str, list], epoch: int | None) -> float | None:
    epochs, losses = history.get("epoch") or [], history.get("val/loss") or []
    if epoch is None or epoch not in epochs or len(losses) != len(epochs):
        return None
    return _finite(losses[epochs.index(epoch)])


def reusable(index: int, values: dict[str, Any], fp: str, cdir: Path) -> Candidate | None:
    """The finished candidate an earlier attempt left in `cdir`, or None (then it is trained): its candidate.json
    must say ok under this fingerprint and these values, and its best.ckpt verify as the model of the recorded
    epoch. When in doubt, None."""
    from transferlab.store import verified
    from transferlab.store.safe_load import WeightsError

    try:
        data = (cdir / CANDIDATE_FILE).read_bytes()
        if verified.bytes_problem(cdir / CANDIDATE_FILE, data) is not None:  # edited, damaged or half-written
            return None
        stored = json.loads(data)
        cand = Candidate(**{**stored, "index": index, "dir": str(cdir), "reused": True})
    except (OSError, ValueError, TypeError):
        return None
    same = json.dumps(cand.values, sort_keys=True) == json.dumps(values, sort_keys=True)
    if cand.status != "ok" or cand.fingerprint != fp or not same or not cand.best_ckpt:
        return None
    best = cdir / "checkpoints" / Path(cand.best_ckpt).name
    if verified.problem(best) is not None:
        log.warning("tune: %s fails its checksum; candidate %s is trained again", best, values)
        return None
    try:
        saved = verified.load(best)
    except WeightsError:
        return None
    epoch = saved.get("epoch") if isinstance(saved, dict) else None
    if epoch is None or cand.selected_epoch is None or int(epoch) + 1 != int(cand.selected_epoch):
        log.warning("tune: %s is not the model of epoch %s; candidate %s is trained again", best,
                    cand.selected_epoch, values)
        return None
    cand.best_ckpt = str(best)
    return cand


def _open(cfg: DictConfig, index: int, values: dict[str, Any], fp: str, inputs: dict):
    """The candidate's run (not built) in its own folder, and its record to fill."""
    from transferlab.run.experiment import Experiment

    cdir = _candidate_dir(Path(str(cfg.paths.output_dir)), fp)
    exp = Experiment(candidate_config(cfg, values, cdir), inputs=inputs)
    if exp.fingerprint != fp:  # the same derivation as check_candidates; a mismatch is a bug, never a result
        raise RuntimeError(f"candidate {values}: fingerprint {exp.fingerprint}, expected {fp}")
    return exp, Candidate(index=index, values=values, fingerprint=fp, dir=str(cdir))


def _lost(exp, cand: Candidate, error: BaseException, wall_s: float, finish: bool = True) -> Candidate:
    """A candidate whose loss turned NaN/inf: it lost (recorded); the others go on. `finish`: end its logger
    (False when it never opened one: its loss turned in a stacked fold fit, whose logger is the fold's)."""
    from transferlab.training.loggers import finish_logger

    if finish:
        finish_logger(exp.logger, failed=True)
    cand.status, cand.error, cand.wall_s = "failed", failure_text(error), wall_s
    cand.write()
    log.warning("tune: candidate %s lost: %s", cand.values, cand.error)
    return cand


def _done(exp, cand: Candidate, outcome, wall_s: float) -> Candidate:
    """A fitted candidate's score, curves and kept model into candidate.json."""
    from transferlab.training.loggers import finish_logger

    finish_logger(exp.logger, failed=False, summary={"val/acc": outcome.best_val_acc})
    cand.score = _finite(outcome.best_val_acc)
    cand.selected_epoch, cand.epochs, cand.steps = outcome.selected_epoch, outcome.epochs, outcome.steps
    cand.history = {k: list(v) for k, v in outcome.history.items()}
    cand.val_loss = cand.cv["chosen"]["val/loss"] if cand.cv else _loss_at(cand.history, cand.selected_epoch)
    cand.best_ckpt, cand.resumed_from = outcome.best_ckpt, outcome.resumed_from
    cand.wall_s = wall_s
    cand.write()
    return cand


def _fit(exp, cand: Candidate, t0: float, folds: dict | None = None) -> Candidate:
    """Fit one opened candidate as its separate run fits (no test); `folds`: its cv fold fits made already."""
    try:
        if str(exp.cfg.train.select) == "cv":  # k fold fits choose its steps, then its fit on all n (run/cv.py)
            from transferlab.run import cv

            outcome, cand.cv = cv.fit(exp, test=False, score=False, job_type="candidate", trained=folds)
        else:
            if exp.module is None:  # not built yet (candidates stacked or not are built before their fits)
                exp.build(score=False)  # scores do not depend on the candidate: the point records them once
            outcome = exp.fit(logger=exp.open_logger(job_type="candidate"), test=False)
    except NonFiniteLossError as e:
        return _lost(exp, cand, e, time.perf_counter() - t0)
    return _done(exp, cand, outcome, time.perf_counter() - t0)


def train_candidate(cfg: DictConfig, index: int, values: dict[str, Any], fp: str, inputs: dict) -> Candidate:
    """Fit one candidate as its separate run fits (no test) in its own folder; a NaN/inf loss is a lost candidate."""
    t0 = time.perf_counter()
    exp, cand = _open(cfg, index, values, fp, inputs)
    return _fit(exp, cand, t0)


def train_candidates(cfg: DictConfig, todo: list[tuple[int, dict[str, Any], str]], inputs: dict
                     ) -> tuple[list[Candidate], str]:
    """Fit the candidates `todo` ((index, values, fingerprint) each): as one stacked model when they can share
    one (`stack_expected` from the config, then `run/stack.py` from the built runs; under cv their fold fits j
    stack, fold by fold, and the fits on all n, which stop at different steps, run one after the other), else one
    after the other. A candidate whose earlier attempt left a last.ckpt resumes it alone (a stacked fit starts from
    epoch 0). Returns them and how they were fitted, in words (the tuning block's `fitted`)."""
    if not todo:
        return [], "none trained: every candidate was done already"
    if not bool((plain(cfg.get("tune")) or {}).get("stack", True)):
        return [train_candidate(cfg, i, v, fp, inputs) for i, v, fp in todo], "one after the other (tune.stack=false)"
    if len(todo) < 2 or not stack_expected(cfg):
        why = "one candidate to train" if len(todo) < 2 else "a tuned key other than " + ", ".join(_group_options())
        return [train_candidate(cfg, i, v, fp, inputs) for i, v, fp in todo], f"one after the other: {why}"
    run_dir = Path(str(cfg.paths.output_dir))
    from transferlab.training.callbacks import LAST

    resumes = [t for t in todo if (_candidate_dir(run_dir, t[2]) / "checkpoints" / LAST).exists()]
    alone = [train_candidate(cfg, i, v, fp, inputs) for i, v, fp in resumes]
    rest = [t for t in todo if t not in resumes]
    if len(rest) < 2:
        return alone + [train_candidate(cfg, i, v, fp, inputs) for i, v, fp in rest], (
            "one after the other: resuming the earlier attempt's fits")
    t0 = time.perf_counter()
    opened = [_open(cfg, i, v, fp, inputs) for i, v, fp in rest]
    if str(cfg.train.select) == "cv":
        cands, how = _stacked_folds(opened)
    else:
        cands, how = _stacked(cfg, opened, inputs, t0)
    return alone + cands, how + (f" ({len(alone)} resumed alone)" if alone else "")


def _group_options() -> tuple[str, ...]:
    from transferlab.training.stacked import GROUP_OPTIONS

    return GROUP_OPTIONS


def _release(exp) -> None:
    """Drop a fitted run's net, module and batches (its kept model is on disk): candidates built together are
    not all held while the others train."""
    exp.module = exp.net = exp.batches = None


def _stacked(cfg: DictConfig, opened: list, inputs: dict, t0: float) -> tuple[list[Candidate], str]:
    """Candidates (not cv) built, then one stacked fit; one after the other with the reason when the built runs
    cannot share one, or when the stacked fit itself breaks (each then trained afresh)."""
    from transferlab.run import stack
    from transferlab.training import stacked
    from transferlab.training.callbacks import _set_rng_state
    from transferlab.training.loggers import finish_logger

    exps = [e for e, _ in opened]
    rngs = stack.build(exps)
    mem = stack.members(exps, rngs)
    reason = stack.why_apart(exps, mem)
    if reason:
        log.warning("tune: the %d candidates train one after the other: %s", len(exps), reason)
        out = []
        for (e, cand), r in zip(opened, rngs):
            _set_rng_state(r)
            out.append(_fit(e, cand, time.perf_counter()))
            _release(e)
        return out, f"one after the other: {reason}"
    log.info("tune: the %d candidates train as one stacked model", len(exps))
    try:
        fits = stack.fit_logged(exps, mem, job_type="candidate")
    except Exception as err:  # e.g. out of memory for K models at once: each candidate trained afresh, alone
        del mem, exps
        log.warning("tune: the stacked fit of the candidates broke (%s: %s); they train one after the other",
                    type(err).__name__, err)
        return ([train_candidate(cfg, c.index, c.values, c.fingerprint, inputs) for _, c in opened],
                f"one after the other: the stacked fit broke ({type(err).__name__})")
    share = (time.perf_counter() - t0) / len(exps)
    out = []
    for (e, cand), m, f in zip(opened, mem, fits):
        t1 = time.perf_counter()
        try:
            kept = stacked.keep_member(m, f)
        except NonFiniteLossError as err:
            out.append(_lost(e, cand, err, share + time.perf_counter() - t1))
            continue
        except Exception:
            finish_logger(m.logger, failed=True)
            raise
        out.append(_done(e, cand, kept, share + time.perf_counter() - t1))
    return out, f"{len(exps)} candidates in one stacked fit"


def _stacked_folds(opened: list) -> tuple[list[Candidate], str]:
    """Cv candidates: fold fit j of every candidate still to train it, as one stacked fit per fold; then each
    candidate's choice and fit on all n (run/cv.py) one after the other. A candidate whose fold fit lost (NaN/inf)
    has lost and trains no further fold. A fold fit an earlier attempt can resume (its last.ckpt), a fold left to
    fewer than two candidates, and every fold after one the stacked model cannot hold (or whose stacked fit
    broke) train in `cv.fit`, one after the other."""
    from transferlab.run import cv, stack
    from transferlab.run.experiment import source_weights
    from transferlab.training import stacked
    from transferlab.training.callbacks import LAST
    from transferlab.training.loggers import finish_logger

    exps = [e for e, _ in opened]
    plans = [cv.plan(e.cfg, e.prep) for e in exps]
    source_weights(exps[0].cfg, exps[0].prep, exps[0].run_dir)  # a cold source model: pretrained once, here
    folds: list[dict[int, cv.FoldFit]] = [{} for _ in exps]
    lost: dict[int, BaseException] = {}
    reason = None
    stacked_folds = 0
    if len({p.k for p in plans}) > 1 or any(not np.array_equal(p.folds, plans[0].folds) for p in plans):
        reason = "the candidates' folds differ"
    for j in range(plans[0].k):
        if reason:
            break
        todo = [c for c in range(len(exps)) if c not in lost and cv.reusable_fold(exps[c], plans[c], j) is None
                and not (exps[c].run_dir / cv.FOLDS_DIR / str(j) / "checkpoints" / LAST).exists()]
        if len(todo) < 2:
            continue  # cv.fit trains (or resumes, or reuses) it
        t1 = time.perf_counter()
        runs = [cv.fold_experiment(exps[c], plans[c], j) for c in todo]
        mem = stack.members(runs, stack.build(runs))
        reason = stack.why_apart(runs, mem)
        if reason:
            break
        log.info("cv: fold %d/%d of %d candidates as one stacked model", j + 1, plans[0].k, len(todo))
        try:
            fits = stack.fit_logged(runs, mem, job_type="cv_fold")
        except Exception as err:  # e.g. out of memory for K models at once: cv.fit trains the folds left alone
            reason = f"the stacked fit of fold {j + 1} broke ({type(err).__name__}: {err})"
            break
        share = (time.perf_counter() - t1) / len(runs)
        for c, r, m, f in zip(todo, runs, mem, fits):
            try:
                kept = stacked.keep_member(m, f)
            except NonFiniteLossError as err:
                finish_logger(r.logger, failed=True)
                lost[c] = err
                continue
            finish_logger(r.logger, failed=False)
            folds[c][j] = cv.fold_record(r, plans[c], j, kept, share)
        stacked_folds += 1
        del runs, mem, fits
    if reason:
        log.warning("tune: the candidates' cv fold fits train one after the other: %s", reason)
    out = []
    for c, (e, cand) in enumerate(opened):
        t1 = time.perf_counter()
        if c in lost:
            out.append(_lost(e, cand, lost[c], sum(f.wall_s or 0.0 for f in folds[c].values()), finish=False))
            continue
        done = _fit(e, cand, t1, folds=folds[c])
        done.wall_s = (done.wall_s or 0.0) + sum(f.wall_s or 0.0 for f in folds[c].values())  # its stacked shares
        done.write()
        out.append(done)
        _release(e)
    how = (f"{len(exps)} candidates' cv fold fits stacked fold by fold ({stacked_folds} of {plans[0].k} folds); "
           "their fits on all n one after the other")
    if reason:
        how += f"; the rest one after the other: {reason}"
    return out, how


def choose(cands: list[Candidate]) -> Candidate | None:
    """The candidate the protocol selects (`RULE`); None when no candidate has a score."""
    scored = [c for c in cands if c.status == "ok" and c.score is not None]
    if not scored:
        return None
    return min(scored, key=lambda c: (-c.score, math.inf if c.val_loss is None else c.val_loss, c.index))


def tuning_block(cfg: DictConfig, cands: list[Candidate], chosen: Candidate, fitted: str | None = None
                 ) -> dict[str, Any]:
    """The `tuning` block of the point's result.json (run/record.py)."""
    select = str(cfg.train.select)
    split = ("the validation split carved out of the n (tasks/budget_val.py)" if select == "val_in_budget"
             else "the task's validation split")
    kept = {"best_val": "best", "val_in_budget": "best", "last": "last", "fixed_epoch": "fixed"}.get(select)
    score = (f"val/acc on {split} of each candidate's {kept} epoch (train.select={select})" if kept else
             "each candidate's mean held-out val/acc over its k folds at the check they chose (train.select=cv, "
             "run/cv.py)")
    return {"keys": list(chosen.values), "grid": tune_grid(cfg),
            "protocol": {"select": select, "select_epoch": cfg.train.get("select_epoch"),
                         "cv_folds": cfg.train.get("cv_folds")},
            "score": score,
            "rule": RULE, "hindsight": hindsight.WHAT, "candidates": [c.summary() for c in cands],
            "chosen": dict(chosen.values), "chosen_index": chosen.index,
            "fitted": fitted}  # how this attempt fitted the candidates it trained (`train_candidates`)


# ---------------------------------------------------------------- the point
def _failed(cfg: DictConfig, fp: str, inputs: dict, t0: float, error: BaseException,
            cands: list[Candidate]) -> None:
    """A failed result.json for the point (no candidate could be tested, or testing failed before the tested
    candidate's own record existed): its identity, the error and the candidates so far."""
    resolved = plain(cfg)
    rec = RunRecord(status="failed", error=failure_text(error), name=str(cfg.name),
                    target=str(cfg.target.name), transfer=str(cfg.transfer.name),
                    is_baseline=identity.is_baseline(resolved), copies_nothing=identity.copies_nothing(resolved),
                    seed_group=identity.seed_group_key(resolved, inputs), select=str(cfg.train.select),
                    seed=int(cfg.seed), data_seed=int(cfg.data_seed), config=resolved, fingerprint=fp,
                    inputs=inputs, environment=versions.environment(), wall_s=time.perf_counter() - t0,
                    tuning={"grid": tune_grid(cfg), "rule": RULE, "candidates": [c.summary() for c in cands]})
    rec.write(Path(str(cfg.paths.output_dir)))


class NoCandidateLeft(RuntimeError):
    """Every candidate of a tuned point failed (NaN/inf loss): there is nothing to test."""


def run_tuned(cfg: DictConfig) -> dict[str, Any]:
    """Train the point's candidates (reusing finished ones), select one, test it, write the point's result.json;
    returns the record as written. ConfigError (nothing written) for a bad grid or a candidate's bad config."""
    from transferlab.run.experiment import Experiment
    from transferlab.training import options
    from transferlab.training.fit import FitOutcome, test_checkpoint

    t0 = time.perf_counter()
    inputs = identity.inputs(cfg)
    fp = identity.fingerprint(cfg, inputs)
    planned = check_candidates(cfg, inputs)  # raises ConfigError: nothing written yet
    run_dir = Path(str(cfg.paths.output_dir))
    log.info("tune: %d candidates of %s (train.select=%s)", len(planned), tune_grid(cfg), cfg.train.select)
    cands: list[Candidate] = []
    try:
        found: dict[int, Candidate] = {}
        for i, (values, cfp) in enumerate(planned):
            cand = reusable(i, values, cfp, _candidate_dir(run_dir, cfp))
            if cand is not None:
                log.info("tune: candidate %d/%d %s is done already (val/acc %s); not trained again", i + 1,
                         len(planned), values, cand.score)
                found[i] = cand
        todo = [(i, values, cfp) for i, (values, cfp) in enumerate(planned) if i not in found]
        trained, how = train_candidates(cfg, todo, inputs)
        found.update({c.index: c for c in trained})
        cands = [found[i] for i in range(len(planned))]
        chosen = choose(cands)
        if chosen is None:
            raise NoCandidateLeft(f"all {len(cands)} candidates failed: "
                                  + "; ".join(f"{c.values}: {c.error}" for c in cands))
        log.info("tune: selected candidate %d %s (val/acc %.4f)", chosen.index, chosen.values, chosen.score)
        exp = Experiment(candidate_config(cfg, chosen.values, run_dir), inputs=inputs)
    except Exception as e:
        _failed(cfg, fp, inputs, t0, e, cands)
        raise
    exp.t0 = t0  # the point's wall time: every candidate's fit, the test and the hindsight tests
    rec = exp.record
    rec.fingerprint, rec.config = fp, plain(cfg)  # the point's identity: the grid and the protocol
    rec.seed_group = identity.seed_group_key(cfg, inputs)
    rec.labels_used = labels.labels_used(str(cfg.train.select), cfg.train.get("scheduler"), rec.n_train, rec.n_val,
                                         tuned=True)
    rec.tuning = tuning_block(cfg, cands, chosen, how)
    rec.cv = chosen.cv  # train.select=cv: the chosen candidate's folds and step (run/cv.py)
    try:
        exp.build()  # the point's transferability scores, its net and test batches (the chosen candidate's)
        tested = test_checkpoint(options.apply(exp.module, cfg.train), exp.batches[2], ckpt=chosen.best_ckpt,
                                 trainer_cfg=cfg.trainer, logger=exp.open_logger())
        # chosen and tested: only now the other candidates' test numbers, for the report's oracle
        hindsight.test_candidates(cands, chosen, tested, lambda c: candidate_config(cfg, c.values, c.dir), inputs)
        rec.tuning = tuning_block(cfg, cands, chosen, how)
        return exp.close(FitOutcome(test=tested, best_val_acc=float("nan") if chosen.score is None else chosen.score,
                                    best_ckpt=str(chosen.best_ckpt), epochs=int(chosen.epochs or 0),
                                    history=chosen.history, resumed_from=chosen.resumed_from, steps=chosen.steps,
                                    selected_epoch=chosen.selected_epoch))
    except Exception as e:
        exp.fail(e)
        raise
