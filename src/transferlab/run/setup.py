"""Every check the schema cannot make, right after config composition and before any training or writing.

Types and closed choices are the schema's (`transferlab.config`): OmegaConf refuses `train.lr=abc` while Hydra
composes, before anything here runs. What is left is here: ranges (`lr > 0`), checks across keys (`freeze <= cut`),
and checks against the machine and the data (devices present, classes in the dataset, writable folders).

`prepare` returns what the run needs (tasks loaded, transfer plan resolved) or raises one ConfigError listing
every problem, one line each: key, value, what is allowed. It steers on the problems' keys (a target problem means
the target task is not loaded), never on their text.

Checks are small functions in two lists, so adding one is one function and one list entry:
- `CONFIG_CHECKS`: `(cfg) -> list[Problem]`, the config alone (no data read); those that read neither the machine
  nor torch live in `run/values.py` (`VALUE_CHECKS`), which the sweeper also runs on every point before launching;
- `PLAN_CHECKS`: `(cfg, ctx) -> list[Problem]`, once the target task, backbone and transfer plan are known.
A check may also raise ConfigError; its problems are collected like returned ones, and every check still runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from transferlab.backbones import FAMILIES, BlockBackbone, build_structure, family_of
from transferlab.errors import ConfigError, Problem, problem
from transferlab.run import identity
from transferlab.run.values import (
    VALUE_CHECKS,
    _is_int,
    _is_num,
    _seed_ok,
    check_added_keys,
    check_budget,
    check_checkpoint,
    check_custom_files,
    check_cv,
    check_cv_scheduler,
    check_optim,
    check_seeds,
    check_task_sizes,
)
from transferlab.tasks import TaskData, build_task, cv_folds
from transferlab.tasks.budget_val import with_budget_val
from transferlab.training import budget as budget_mod
from transferlab.training import optim, options
from transferlab.training.scratch_long import source_steps
from transferlab.transfer.plan import TransferPlan, resolve_plan


@dataclass
class Prepared:
    plan: TransferPlan
    target: TaskData
    source: TaskData | None  # None when the run reads no source task (scratch, or source=none)
    budget: budget_mod.StepBudget  # the target fit's epochs and steps (training/budget.py)


@dataclass
class Context:
    """What plan checks can look at; a field is None when an earlier step already failed."""

    target: TaskData | None = None
    source: TaskData | None = None
    backbone: BlockBackbone | None = None
    plan: TransferPlan | None = None
    budget: budget_mod.StepBudget | None = None


def check_kinds(cfg: DictConfig) -> list[Problem]:
    """What the schema's types leave open: `none` is a source kind only, and small_cnn/mlp name their family."""
    out = []
    if cfg.target.kind == "none":
        out.append(problem("target.kind", cfg.target.kind, "a task kind; none only means source=none (no source)"))
    if family_of(cfg.backbone) not in FAMILIES:
        out.append(problem("backbone.name", family_of(cfg.backbone), f"one of {sorted(FAMILIES)}"))
    return out


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def check_devices(cfg: DictConfig) -> list[Problem]:
    """A Trainer asking for more devices than this machine has fails here, not after data loading."""
    t = cfg["trainer"]
    acc, devices = str(t["accelerator"]), t["devices"]
    gpus = _visible_gpus()
    if acc in ("gpu", "cuda") and gpus == 0:
        return [problem("trainer.accelerator", acc, "no GPU is visible here; use auto or cpu")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    have = gpus if acc in ("gpu", "cuda") or (acc == "auto" and gpus) else cores  # cores this job may use
    what = "GPU(s)" if have == gpus and gpus else "CPU core(s)"
    if devices in ("auto", -1, "-1"):
        return []
    if _is_int(devices):
        if not 1 <= devices <= have:
            return [problem("trainer.devices", devices, f"1..{have} ({have} {what} here), auto or -1")]
        return []
    if isinstance(devices, str) and devices.isdigit():
        return check_devices({"trainer": {**dict(t), "devices": int(devices)}})  # type: ignore[arg-type]
    try:
        ids = [int(i) for i in devices]
    except (TypeError, ValueError):
        return [problem("trainer.devices", devices, "an int, a list of device ids, auto or -1")]
    if any(not 0 <= i < have for i in ids) or len(set(ids)) != len(ids):
        return [problem("trainer.devices", list(devices), f"distinct ids in 0..{have - 1} ({have} {what} here)")]
    return []


def check_ddp(cfg: DictConfig) -> list[Problem]:
    """Several devices: one DDP run whose ranks transferlab starts (run/ddp.py)."""
    from transferlab.run import ddp

    return ddp.check(cfg)


def check_lease(cfg: DictConfig) -> list[Problem]:
    """`lease.slots` (concurrent jobs per machine) within the devices there are; raises ConfigError otherwise."""
    from transferlab.run.lease import slot_count

    slot_count(cfg)
    return []


def check_resume(cfg: DictConfig) -> list[Problem]:
    """A run dir holding checkpoints of a *different* configuration is never silently resumed."""
    from transferlab.training.checkpoints import checkpoint_mismatch

    out_dir = cfg.paths.output_dir
    if not out_dir:
        return []
    why = checkpoint_mismatch(Path(str(out_dir)) / "checkpoints", identity.fingerprint(cfg))
    return [problem("paths.output_dir", str(out_dir), why)] if why else []


def check_cache_dir(cfg: DictConfig) -> list[Problem]:
    """`paths.cache_dir` is a folder this process can create files in, or can be created (its nearest existing
    parent is such a folder); else the source cache fails after validation, with a traceback and a failed record.

    Tested by creating an unnamed temp file there (O_TMPFILE where the file system has it, else created and removed
    at once): permission bits and os.access say yes to root, while a read-only or root-squashed share, an immutable
    folder or a path under a regular file only say no when tried. Nothing is left behind.
    """
    import tempfile

    value = cfg.paths.cache_dir
    if not value:
        return [problem("paths.cache_dir", value, "a folder path (for the source and feature caches)")]
    path = Path(str(value))  # as the caches use it (relative to the working directory)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "it is a file" if probe == path else f"{probe} is a file, so no folder can be made under it"
        return [problem("paths.cache_dir", str(value), f"a folder (or a path where one can be created); {where}")]
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return [problem("paths.cache_dir", str(value), f"a folder this user can write; creating a file in {probe} "
                        f"failed ({e.strerror or e}); pick another folder or fix its permissions")]
    return []


def check_tune(cfg: DictConfig) -> list[Problem]:
    """The `tune` node (run/tuning.py): tunable keys, non-empty lists of distinct values, one device. Each
    candidate's values are checked as its own run's config when the point starts (`tuning.check_candidates`)."""
    from transferlab.run.tuning import check_grid

    return check_grid(cfg)


def check_own_cv_scheduler(cfg: DictConfig) -> list[Problem]:
    """`values.check_cv_scheduler` for a scheduler class of your own (imported here to ask whether it follows
    val/acc); torch's are told by name before a sweep launches."""
    target = optim.target(cfg.train.get("scheduler"))
    if str(cfg.train.select) != "cv" or target is None or target.startswith(optim.TORCH_SCHEDULERS) \
            or not optim.reads_metric(cfg.train.get("scheduler")):
        return []
    return [problem("train.scheduler", optim.target(cfg.train.scheduler),
                    "a scheduler that does not read val/acc with train.select=cv (the fit on all n has no "
                    "validation split to read): train/scheduler=none or cosine")]


def check_cv_ddp(cfg: DictConfig) -> list[Problem]:
    """A cv point trains its fold fits and its final fit one after the other on one device (run/cv.py)."""
    from transferlab.run import ddp

    if str(cfg.train.select) == "cv" and ddp.processes(cfg.trainer) > 1:
        return [problem("train.select", "cv", "another train.select with trainer.devices > 1: a cv point trains "
                                              "its k fold fits and its final fit one after the other on one device")]
    return []


CONFIG_CHECKS: list[Callable[[DictConfig], list[Problem]]] = [
    check_added_keys, check_seeds, check_optim, check_budget, check_task_sizes, check_cv, check_kinds, check_devices,
    check_ddp,
    check_lease, check_checkpoint, check_resume, options.check, optim.check, check_cache_dir, check_tune,
    check_custom_files, check_cv_scheduler, check_own_cv_scheduler, check_cv_ddp,
]
assert set(VALUE_CHECKS) <= set(CONFIG_CHECKS)  # a sweep's per-point checks are a subset of the run's


# ---------------------------------------------------------------- checks that need the tasks / backbone / plan


def check_input_shapes(cfg: DictConfig, ctx: Context) -> list[Problem]:
    if ctx.source is None or ctx.target is None or ctx.source.input_shape == ctx.target.input_shape:
        return []
    return [problem("source", str(cfg.source.name),
                    f"inputs of shape {ctx.source.input_shape} but target {cfg.target.name} has "
                    f"{ctx.target.input_shape}; both must match the backbone's input")]


def plan_budget(cfg: DictConfig, plan: TransferPlan, target: TaskData, source: TaskData | None
                ) -> budget_mod.StepBudget:
    """The target fit's budget (training/budget.py) on this run's training subset; scratch_long adds the source
    pretraining's steps (training/scratch_long.py)."""
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    extra = 0
    if plan.source_compute and source is not None:
        extra = source_steps(cfg.pretrain, len(source.train_indices), accumulate)
    return budget_mod.plan(cfg.train, len(target.train_indices), extra_steps=extra, accumulate=accumulate)


def _epochs(cfg: DictConfig, ctx: Context) -> tuple[int, str]:
    """(epochs the fit runs, how to say where that number comes from) for the checks below."""
    if ctx.budget is None or (ctx.budget.epochs == cfg.train.max_epochs and str(cfg.train.budget) == "epochs"):
        return int(cfg.train.max_epochs), f"train.max_epochs={cfg.train.max_epochs}"
    b = ctx.budget
    return b.epochs, f"the {b.epochs} epochs of the step budget ({b.steps} steps of {b.steps_per_epoch} per epoch)"


def check_strategy(cfg: DictConfig, ctx: Context) -> list[Problem]:
    """Schedules that fit in the epochs the fit runs; the discriminative LR's range."""
    out = []
    epochs, within = _epochs(cfg, ctx)
    gamma = cfg.train.lr_decay
    if not _is_num(gamma) or not 0 < gamma <= 1:
        out.append(problem("train.lr_decay", gamma, "a number in (0, 1] (1 = one rate for all blocks; ULMFiT 0.385)"))
    plan = ctx.plan
    if plan is None:
        return out
    if plan.strategy == "lp_ft" and plan.lp_epochs >= epochs:
        out.append(problem("transfer.lp_epochs", plan.lp_epochs,
                           f"fewer than {within} (else the fine-tuning phase never starts)"))
    if plan.strategy == "gradual":
        last = max(plan.unfreeze_epoch(b) for b in plan.unfreeze_order)
        if last >= epochs:
            out.append(problem("transfer.unfreeze_every", plan.unfreeze_every,
                               f"small enough to release all {len(plan.unfreeze_order)} training blocks "
                               f"{list(plan.unfreeze_order)} within {within} (the last is released "
                               f"at epoch {last}); raise train.max_epochs or narrow transfer.trainable"))
    return out


def check_select_epoch(cfg: DictConfig, ctx: Context) -> list[Problem]:
    """train.select=fixed_epoch names an epoch the fit reaches."""
    v = cfg.train.select_epoch
    if str(cfg.train.select) != "fixed_epoch" or v is None or v < 1:
        return []  # check_budget's
    epochs, within = _epochs(cfg, ctx)
    return [problem("train.select_epoch", v, f"at most {within}")] if v > epochs else []


def check_source_resume(cfg: DictConfig, ctx: Context) -> list[Problem]:
    """Same for a source pretraining killed in this run dir (its key includes the source data's fingerprint)."""
    from transferlab.training.checkpoints import checkpoint_mismatch

    out_dir = cfg.paths.output_dir
    if not out_dir or ctx.source is None:
        return []
    why = checkpoint_mismatch(Path(str(out_dir)) / "source" / "checkpoints",
                              identity.source_fingerprint(cfg, data=ctx.source.fingerprint()))
    return [problem("paths.output_dir", str(out_dir), why)] if why else []


def check_ddp_plan(cfg: DictConfig, ctx: Context) -> list[Problem]:
    from transferlab.run import ddp

    return ddp.check_prepared(cfg, ctx.plan, ctx.target)


PLAN_CHECKS: list[Callable[[DictConfig, Context], list[Problem]]] = [
    check_ddp_plan,
    check_input_shapes,
    check_strategy,
    check_select_epoch,
    check_source_resume,
]


# ---------------------------------------------------------------- driver


def _collect(problems: list[Problem], fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Call fn; the problems of a ConfigError it raises go to `problems` and None is returned."""
    try:
        result = fn(*args, **kwargs)
    except ConfigError as e:
        problems.extend(e.items)
        return None
    return result


UNBUILDABLE = ("target.kind", "backbone.name")  # with a problem here, no task or backbone can be built


def prepare(cfg: DictConfig) -> Prepared:
    problems: list[Problem] = []
    for check in CONFIG_CHECKS:
        problems.extend(_collect(problems, check, cfg) or [])
    if any(p.key in UNBUILDABLE for p in problems):
        raise ConfigError(problems)  # nothing below can be built

    ctx = Context()
    data_dir = cfg.paths.data_dir
    has_source = cfg.source.kind != "none"

    def about(group: str) -> bool:
        return any(p.about(group) for p in problems)

    def load_source() -> None:
        if _seed_ok(cfg.pretrain.seed) and not about("source"):
            ctx.source = _collect(problems, build_task, cfg.source, key="source", data_seed=int(cfg.pretrain.seed),
                                  data_dir=data_dir)

    if _seed_ok(cfg.data_seed) and not about("target"):
        ctx.target = _collect(problems, build_task, cfg.target, key="target", data_seed=int(cfg.data_seed),
                              data_dir=data_dir)
    in_budget = str(cfg.train.select) == "val_in_budget"
    if ctx.target is not None and in_budget and not about("train.val_in_budget_fraction"):
        size_key = "target.n_train" if cfg.target.get("n_train") is not None else "target.n_per_class"
        ctx.target = _collect(problems, with_budget_val, ctx.target, float(cfg.train.val_in_budget_fraction),
                              int(cfg.data_seed), size_key=size_key, size_value=cfg.target.get(size_key[7:]))
    if ctx.target is not None and str(cfg.train.select) == "cv" and not about("train.cv_folds") \
            and not about("target.n_per_class"):
        size_key = "target.n_train" if cfg.target.get("n_train") is not None else "target.n_per_class"
        _collect(problems, cv_folds.check_counts, cv_folds.subset_counts(ctx.target), cfg.train.get("cv_folds"),
                 size_key=size_key, size_value=cfg.target.get(size_key[7:]))
    if ctx.target is None and has_source:
        load_source()  # its input shape lets the backbone and transfer checks still run
    shaped = ctx.target or ctx.source
    if shaped is not None:
        try:
            # structure only (meta device where the family allows it): the run builds the real one, once
            ctx.backbone = build_structure(cfg.backbone, shaped.input_shape)
        except ConfigError as e:
            problems.extend(e.items)
        except (ValueError, RuntimeError) as e:
            problems.append(problem("backbone", family_of(cfg.backbone),
                                    f"cannot take inputs of shape {shaped.input_shape} ({shaped.name}): {e}"))
    if ctx.backbone is not None:
        ctx.plan = _collect(problems, resolve_plan, cfg.transfer, ctx.backbone,  # globs need parameter names
                            peft=cfg.get("peft"))  # PEFT targets need the modules
    if ctx.source is None and has_source and (ctx.plan is None or ctx.plan.reads_source_task):
        load_source()
    budget_ok = not any(p.key.startswith(("train.", "pretrain.", "trainer.")) for p in problems)
    if ctx.plan is not None and ctx.target is not None and budget_ok:
        ctx.budget = plan_budget(cfg, ctx.plan, ctx.target, ctx.source)
    for check in PLAN_CHECKS:
        problems.extend(_collect(problems, check, cfg, ctx) or [])
    if problems:
        raise ConfigError(list({str(p): p for p in problems}.values()))  # a problem found twice is listed once
    assert ctx.plan is not None and ctx.target is not None and ctx.budget is not None
    source = ctx.source if ctx.plan.reads_source_task else None
    return Prepared(plan=ctx.plan, target=ctx.target, source=source, budget=ctx.budget)
