"""Every cross-field check, right after config composition and before any training or writing.

`prepare` returns what the run needs (tasks loaded, transfer plan resolved) or raises one ConfigError listing
every problem, one line each: key, value, what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from transferlab.backbones import FAMILIES, build_backbone, family_of
from transferlab.errors import ConfigError, problem
from transferlab.module import OPTIMIZERS
from transferlab.tasks import KINDS, TaskData, build_task
from transferlab.transfer import TransferPlan, resolve_plan

LOGGERS = ("csv", "wandb", "none")


@dataclass
class Prepared:
    plan: TransferPlan
    target: TaskData
    source: TaskData | None  # None when nothing is pretrained (scratch, or source=none)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_numbers(cfg: DictConfig) -> list[str]:
    out = []
    for key in ("seed", "data_seed", "pretrain.seed"):
        v = cfg.get(key) if "." not in key else cfg.pretrain.get("seed")
        if not _is_int(v):
            out.append(problem(key, v, "an integer (0 is a valid seed)"))
    for group in ("pretrain", "train"):
        g = cfg[group]
        if not _is_int(g.get("max_epochs")) or g.max_epochs < 1:
            out.append(problem(f"{group}.max_epochs", g.get("max_epochs"), "an integer >= 1"))
        if not isinstance(g.get("lr"), (int, float)) or isinstance(g.get("lr"), bool) or g.lr <= 0:
            out.append(problem(f"{group}.lr", g.get("lr"), "a number > 0"))
        if not _is_int(g.get("batch_size")) or g.batch_size < 1:
            out.append(problem(f"{group}.batch_size", g.get("batch_size"), "an integer >= 1"))
        if g.get("optimizer") not in OPTIMIZERS:
            out.append(problem(f"{group}.optimizer", g.get("optimizer"), f"one of {list(OPTIMIZERS)}"))
    for key in ("n_per_class", "n_train"):
        v = cfg.target.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            out.append(problem(f"target.{key}", v, "null (all) or an integer >= 1"))
    if cfg.target.get("n_per_class") is not None and cfg.target.get("n_train") is not None:
        out.append(problem("target.n_train", cfg.target.n_train, "null when target.n_per_class is set (pick one)"))
    if cfg.target.get("n_policy", "error") not in ("error", "cap"):
        out.append(problem("target.n_policy", cfg.target.n_policy, "one of ['error', 'cap']"))
    if cfg.logger.get("kind") not in LOGGERS:
        out.append(problem("logger", cfg.logger.get("kind"), f"one of {list(LOGGERS)}"))
    return out


def prepare(cfg: DictConfig) -> Prepared:
    problems = _check_numbers(cfg)
    target_kind, source_kind = cfg.target.get("kind"), cfg.source.get("kind")
    if target_kind not in KINDS:
        problems.append(problem("target.kind", target_kind, f"one of {sorted(KINDS)}"))
    if source_kind not in (*KINDS, "none"):
        problems.append(problem("source.kind", source_kind, f"one of {sorted(KINDS)} or none"))
    if family_of(cfg.backbone) not in FAMILIES:
        problems.append(problem("backbone.name", family_of(cfg.backbone), f"one of {sorted(FAMILIES)}"))
    if problems:
        raise ConfigError(problems)

    data_dir = cfg.paths.get("data_dir")
    target = build_task(cfg.target, key="target", data_seed=int(cfg.data_seed), data_dir=data_dir)
    try:
        backbone = build_backbone(cfg.backbone, target.input_shape)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(problem("backbone", family_of(cfg.backbone),
                                  f"cannot take target inputs of shape {target.input_shape}: {e}")) from e
    plan = resolve_plan(cfg.transfer, backbone.block_names)
    source = None
    if plan.cut > 0 and source_kind != "none":
        source = build_task(cfg.source, key="source", data_seed=int(cfg.pretrain.seed), data_dir=data_dir)
        if source.input_shape != target.input_shape:
            raise ConfigError(problem("source", cfg.source.name,
                                      f"inputs of shape {source.input_shape} but target {cfg.target.name} has "
                                      f"{target.input_shape}; both must match the backbone's input"))
    return Prepared(plan=plan, target=target, source=source)
