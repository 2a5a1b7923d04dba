"""The optimizer and LR schedule of a fit, built from the config's `_target_` nodes.

`train.optimizer` and `train.scheduler` (and the same under `pretrain`) are Hydra `_target_` + `_partial_: true`
nodes, chosen with `train/optimizer=sgd`, `train/scheduler=plateau` (conf/train/optimizer/, conf/train/scheduler/)
or written by hand: any torch.optim class or a factory that returns one (timm's `create_optimizer_v2` with `opt`),
any torch LR scheduler. The framework completes them with what only it knows, and with nothing else:
- the optimizer gets the parameter groups (`TransferModule.param_groups`): what trains (frozen blocks never,
  blocks a schedule releases later from the start), each block's rate from `lr` and `lr_decay`, weight decay
  `weight_decay` except on 1-D parameters. `lr` and `weight_decay` stay keys of the group, which sweeps and tuning
  vary, so a node that sets them is refused rather than silently overridden by the groups;
- the scheduler gets the optimizer and steps once per epoch; `T_max` is the fit's epochs (the step budget's) when
  the class takes one and the node leaves it out, so cosine annealing spans the fit at every n; a scheduler that
  reads a metric (ReduceLROnPlateau) gets val/acc, which it maximises, so `mode` is the framework's too.
No argument has a default here: the group files hold them (defaults live in the config only).

`check` builds both on one dummy parameter before anything is trained, so a target that does not import, that is
not an optimizer or scheduler, or that refuses an argument or value is one line: key, value, what is allowed.

A target outside the libraries in `own_code.LIBRARY_PACKAGES` (torch, torchvision, timm: their versions are recorded
with every result) is a
researcher's own code: its module is hashed into the run's identity like a backbone's of one's own
(`optim_code_inputs`, run/identity.py), so editing the optimizer re-runs its points.

A vectorised seed group (training/stacked.py) steps its members' stacked tensors with one optimizer, which is each
member's own only when the update is elementwise. `ELEMENTWISE` lists the torch.optim classes that are (each
checked against separate members in tests/test_optim.py); any other (LAMB, LARS, Adafactor: per-tensor norms or
factored moments) would mix the members, and `why_not_stacked` says so, so the group runs them one by one.

Torch is imported inside the functions: the identity reads the nodes without it (the sweeper fingerprints every
point torch-free).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from transferlab.errors import Problem, problem

KEYS = tuple(f"{group}.{kind}" for group in ("train", "pretrain") for kind in ("optimizer", "scheduler"))
TORCH_SCHEDULERS = "torch.optim.lr_scheduler."  # told apart by name, without importing torch (`reads_metric`)
# Arguments the framework gives, never the node (see the module docstring).
OPTIMIZER_OWN = {"params": "the framework passes the parameter groups",
                 "model_or_params": "the framework passes the parameter groups",
                 "lr": "set {group}.lr: every parameter group gets its rate from it (per block with train.lr_decay)",
                 "weight_decay": "set {group}.weight_decay: every parameter group gets it (none on 1-D parameters "
                                 "unless {group}.decay_norm_and_bias)"}
SCHEDULER_OWN = {"optimizer": "the framework passes the optimizer"}
METRIC = "val/acc"  # what a metric-reading scheduler follows; maximised
METRIC_OWN = {"mode": f"the scheduler follows {METRIC}, which is maximised (mode max)"}
BASES = {"optimizer": "torch.optim.Optimizer", "scheduler": "torch.optim.lr_scheduler.LRScheduler"}
EPOCHS_ARG = "T_max"  # given the fit's epochs when the scheduler takes it and the node leaves it out
# Optimizers whose update of every tensor element reads only that element's gradient and state (and the step
# count): stacked members step as they would alone. By exact class: a subclass may override `step`.
ELEMENTWISE = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "ASGD",
               "Rprop")


def node(value: Any) -> dict | None:
    """A node as plain data; None for no node: null, or `_target_: null` with no argument (`train/scheduler=none`,
    whose target a command line can then set: `train.scheduler._target_=...`)."""
    from transferlab.config import plain

    data = plain(value)
    if not isinstance(data, Mapping) or (data.get("_target_") is None and not _arguments(data)):
        return None
    return dict(data)


def target(value: Any) -> str | None:
    n = node(value)
    return str(n["_target_"]) if n and n.get("_target_") is not None else None


def describe(value: Any) -> str:
    """A node as a report's cell says it: "AdamW", "SGD(momentum=0.9)", "none"; a record's name from before the
    nodes ("sgd") as it is."""
    if isinstance(value, str):
        return value
    n = node(value)
    if n is None:
        return "none"
    args = ", ".join(f"{k}={v}" for k, v in sorted(_arguments(n).items()))
    return str(n.get("_target_")).rsplit(".", 1)[-1] + (f"({args})" if args else "")


def _object(path: str) -> Any:
    """The object a `_target_` names, resolved as a backbone's or task's is (`own_code`, without Hydra's log line)."""
    from transferlab.own_code import resolve

    return resolve(str(path))


def _arguments(n: dict) -> dict:
    return {k: v for k, v in n.items() if not (k.startswith("_") and k.endswith("_"))}


def _takes(obj: Any, name: str) -> bool:
    try:
        return name in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def _partial(n: dict):
    """The node as a callable still waiting for what the framework gives (Hydra's `_partial_` instantiation)."""
    from hydra.utils import instantiate

    return instantiate(n, _convert_="all")


def own_target(value: Any) -> str | None:
    """The node's target when it is a researcher's own code (outside `own_code.LIBRARY_PACKAGES`), else None."""
    path = target(value)
    from transferlab.own_code import is_library

    return path if path is not None and not is_library(path) else None


def reads_metric(value: Any) -> bool:
    """Does this scheduler node follow a validation metric (ReduceLROnPlateau or a subclass)? Then validation
    runs every epoch and the labels of the val split shape the model (run/labels.py)."""
    path = target(value)
    if path is None:
        return False
    if path.startswith(TORCH_SCHEDULERS):  # torch's own say it by name: no torch import (the report)
        return path.rsplit(".", 1)[1] == "ReduceLROnPlateau"
    import torch

    try:
        obj = _object(path)
    except Exception:  # noqa: BLE001 - `check` reports a target that does not import
        return False
    return isinstance(obj, type) and issubclass(obj, torch.optim.lr_scheduler.ReduceLROnPlateau)


# ---------------------------------------------------------------- building
def build_optimizer(value: Any, groups: list[dict[str, Any]]):
    """The optimizer of this node over the framework's parameter groups."""
    import torch

    n = node(value)
    if n is None:
        raise ValueError("no optimizer node")
    opt = _partial(n)(groups)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"{n['_target_']} returned a {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def build_scheduler(value: Any, opt, epochs: int):
    """(scheduler, reads a metric) of this node on `opt` for a fit of `epochs` epochs; (None, False) without one."""
    import torch

    n = node(value)
    if n is None:
        return None, False
    obj = _object(str(n["_target_"]))
    given: dict[str, Any] = {}
    metric = isinstance(obj, type) and issubclass(obj, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if metric:
        given["mode"] = "max"
    if EPOCHS_ARG not in n and _takes(obj, EPOCHS_ARG):
        given[EPOCHS_ARG] = max(1, int(epochs))
    sched = _partial(n)(opt, **given)
    if not isinstance(sched, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"{n['_target_']} returned a {type(sched).__name__}, not a torch LR scheduler")
    return sched, metric


def configure(optim: Mapping[str, Any], groups: list[dict[str, Any]]):
    """What Lightning's `configure_optimizers` returns for the group config `optim` (`train` or `pretrain`, with
    `max_epochs` the fit's epochs) over `groups`: the optimizer, and its schedule stepped once per epoch."""
    opt = build_optimizer(optim["optimizer"], groups)
    sched, metric = build_scheduler(optim["scheduler"], opt, int(optim["max_epochs"]))
    if sched is None:
        return opt
    schedule = {"scheduler": sched, "interval": "epoch"} | ({"monitor": METRIC} if metric else {})
    return {"optimizer": opt, "lr_scheduler": schedule}


# ---------------------------------------------------------------- what a vectorised group can stack
def why_not_stacked(value: Any) -> str | None:
    """Why one optimizer over the members' stacked tensors would not step each member as alone, or None."""
    import torch

    opt = build_optimizer(value, [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3, "weight_decay": 0.0}])
    cls = type(opt)
    if cls in {getattr(torch.optim, name) for name in ELEMENTWISE}:
        return None
    return (f"the optimizer {cls.__module__}.{cls.__name__} is not known to be elementwise (only torch.optim "
            f"{', '.join(ELEMENTWISE)} are stacked): it could mix the members' updates")


# ---------------------------------------------------------------- checks before any training
def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _check_node(key: str, n: Any, own: dict[str, str], group: str, kind: str, base: type) -> list[Problem]:
    if not isinstance(n, Mapping):
        return [problem(key, n, f"a mapping with `_target_` (the {kind} class) and `_partial_: true`")]
    if not n.get("_target_"):
        return [problem(f"{key}._target_", n.get("_target_"), f"the {kind} class its arguments "
                                                            f"{sorted(_arguments(n))} are for")]
    out = []
    if n.get("_partial_") is not True:
        out.append(problem(f"{key}._partial_", n.get("_partial_"), f"true: the framework completes the {kind}"))
    for arg, why in own.items():
        if arg in n:
            out.append(problem(f"{key}.{arg}", n[arg], "not an argument of the node: " + why.format(group=group)))
    try:
        obj = _object(str(n["_target_"]))
    except Exception as e:  # noqa: BLE001 - any import failure is the user's target
        return out + [problem(f"{key}._target_", n["_target_"], f"an importable {kind} class or factory: "
                                                              f"{_first_line(e)}")]
    if isinstance(obj, type) and not issubclass(obj, base):
        out.append(problem(f"{key}._target_", n["_target_"], f"a {BASES[kind]} class or a factory returning one, "
                                                           f"not a {obj.__qualname__}"))
    elif not callable(obj):
        out.append(problem(f"{key}._target_", n["_target_"], f"a {kind} class or factory, not a {type(obj).__name__}"))
    return out


def check_group(cfg: Any, group: str) -> list[Problem]:
    """The optimizer and scheduler nodes of `cfg[group]`, each built once on a dummy parameter."""
    import torch

    g = cfg[group]
    opt_key, sched_key = f"{group}.optimizer", f"{group}.scheduler"
    opt_node, sched_node = node(g.get("optimizer")), node(g.get("scheduler"))
    out = _check_node(opt_key, opt_node, OPTIMIZER_OWN, group, "optimizer", torch.optim.Optimizer)
    if sched_node is not None:
        sched_own = SCHEDULER_OWN | (METRIC_OWN if reads_metric(sched_node) else {})
        out += _check_node(sched_key, sched_node, sched_own, group, "scheduler", torch.optim.lr_scheduler.LRScheduler)
    if out:
        return out
    param = torch.nn.Parameter(torch.zeros(2))
    try:
        opt = build_optimizer(opt_node, [{"params": [param], "lr": 1e-3, "weight_decay": 0.0}])
    except Exception as e:  # noqa: BLE001 - an argument or value the optimizer refuses
        return [problem(opt_key, opt_node, f"an optimizer built from these arguments: {_first_line(e)}")]
    try:
        build_scheduler(sched_node, opt, int(g.max_epochs) if isinstance(g.max_epochs, int) else 1)
    except Exception as e:  # noqa: BLE001 - an argument or value the scheduler refuses
        return [problem(sched_key, sched_node, f"a scheduler built from these arguments: {_first_line(e)}")]
    return []


def check(cfg: Any) -> list[Problem]:
    """`train` and `pretrain` (run/setup.py's CONFIG_CHECKS)."""
    return check_group(cfg, "train") + check_group(cfg, "pretrain")

