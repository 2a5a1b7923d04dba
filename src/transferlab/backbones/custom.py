"""A backbone of your own: `backbone=custom backbone._target_=mypkg.nets.MyNet` (docs/extending_components.md).

The class or function is called with `backbone.kwargs` (and `input_shape=`, the task's per-example input shape,
when it takes that argument) and returns a `torch.nn.Module` that satisfies this protocol:

- `blocks`: its ordered, named blocks: an `nn.ModuleDict`, an `nn.Sequential` built from an OrderedDict, or a list
  of (name, module) pairs. Block i's output is block i+1's input; cut k keeps blocks [0, k). Names are what
  `transfer.trainable`, checkpoints and the report use, so positions (a ModuleList, a Sequential's 0, 1, ...) are
  refused;
- `input_shape`: the per-example input shape it takes (C x H x W, or D), equal to the task's;
- optional `pool`: how a head reads the last kept block's output: `flatten` (default), `avg` (global average pool
  of C x H x W maps), `cls` / `mean` (token outputs T x D), with optional `prefix_tokens`;
- optional `native_prefixes`: {prefix in your model's own state dict: block prefix}, so a weights file saved from
  your original model loads (`backbone.weights`, backbones/weights.py).

Anything else of the module (its forward, a classifier outside `blocks`) is not used: the blocks are wrapped in a
`BlockBackbone` (a `BlockBackbone` returned as is is checked the same way), so cut, freeze, trainable sets, the BN
policy, the feature cache, vectorised seed groups and LoRA on its Linear layers work on it unchanged. The checks
run when setup builds it (run/setup.py), before anything is written: one ConfigError line on `backbone._target_`
naming what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from transferlab import own_code
from transferlab.backbones.base import BlockBackbone
from transferlab.config import plain
from transferlab.errors import ConfigError, problem

KEY = "backbone._target_"
POOLS = ("flatten", "avg", "cls", "mean")
NOMINAL_SHAPE = (3, 32, 32)  # block_count builds without data: the count must not depend on the input shape


def _fail(target, what: str) -> ConfigError:
    return ConfigError(problem(KEY, target, what))


def _named_blocks(obj: nn.Module, target) -> list[tuple[str, nn.Module]]:
    kind = type(obj).__name__
    blocks = getattr(obj, "blocks", None)
    if blocks is None:
        raise _fail(target, f"a module with `blocks`, its ordered named blocks (nn.ModuleDict, or an OrderedDict / "
                            f"list of (name, module) pairs); the {kind} it returned has no `blocks`")
    if isinstance(blocks, (nn.ModuleDict, nn.Sequential)):
        pairs = list(blocks.named_children())
    elif isinstance(blocks, Mapping):
        pairs = list(blocks.items())
    elif isinstance(blocks, Sequence) and not isinstance(blocks, (str, nn.ModuleList)) and all(
            isinstance(p, tuple) and len(p) == 2 for p in blocks):
        pairs = list(blocks)
    else:
        raise _fail(target, f"named blocks: `blocks` as nn.ModuleDict, or an OrderedDict / list of (name, module) "
                            f"pairs; {kind}.blocks is an unnamed {type(blocks).__name__}")
    if not pairs:
        raise _fail(target, f"at least one block; {kind}.blocks is empty")
    unnamed = [str(n) for n, _ in pairs if not isinstance(n, str) or not n.isidentifier()]
    if unnamed:
        raise _fail(target, f"named blocks (identifiers such as conv1, stage2, fc); {kind}.blocks has "
                            f"{unnamed[:5]} (positions, as nn.Sequential or nn.ModuleList number their children: "
                            f"build them from an OrderedDict of name -> module)")
    not_modules = [n for n, m in pairs if not isinstance(m, nn.Module)]
    if not_modules:
        raise _fail(target, f"blocks that are torch.nn.Module; {not_modules[:5]} are not")
    return pairs


def _input_shape(obj: nn.Module, target, task_shape: tuple[int, ...]) -> tuple[int, ...]:
    kind = type(obj).__name__
    shape = getattr(obj, "input_shape", None)
    try:
        shape = tuple(int(s) for s in shape) if shape is not None else None
    except (TypeError, ValueError):
        shape = None
    if shape is None or not shape or any(s < 1 for s in shape):
        raise _fail(target, f"a module with `input_shape`, the per-example input shape it takes (e.g. (1, 8, 8) or "
                            f"(4,)); the {kind} it returned has {getattr(obj, 'input_shape', None)!r}")
    if shape != tuple(task_shape):
        raise _fail(target, f"input_shape equal to the task's inputs {tuple(task_shape)} (take `input_shape` as an "
                            f"argument, or adapt the task: channels, image_size); {kind} has {shape}")
    return shape


def _options(obj: nn.Module, target, names: list[str]) -> tuple[str, dict[str, str], int]:
    kind = type(obj).__name__
    pool = getattr(obj, "pool", "flatten")
    if pool not in POOLS:
        raise _fail(target, f"`pool` one of {list(POOLS)} (or no `pool`: flatten); {kind} has {pool!r}")
    native = getattr(obj, "native_prefixes", None) or {}
    if not isinstance(native, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in native.items()):
        raise _fail(target, f"`native_prefixes` a mapping {{prefix in your model's keys: block prefix}}; {kind} has "
                            f"{native!r}")
    outside = [v for v in native.values() if v.split(".", 1)[0] not in names]
    if outside:
        raise _fail(target, f"`native_prefixes` mapping to blocks {names}; {outside[:3]} are not in a block")
    tokens = getattr(obj, "prefix_tokens", 0)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise _fail(target, f"`prefix_tokens` an integer >= 0; {kind} has {tokens!r}")
    return str(pool), dict(native), tokens


def as_block_backbone(obj: object, target, task_shape: tuple[int, ...]) -> BlockBackbone:
    """The module your `_target_` returned, checked against the protocol (module docstring) and wrapped as a
    BlockBackbone; one ConfigError naming the first part that is missing."""
    if not isinstance(obj, nn.Module):
        raise _fail(target, f"a torch.nn.Module with named `blocks` and `input_shape`; it returned a "
                            f"{type(obj).__name__}")
    pairs = _named_blocks(obj, target)
    shape = _input_shape(obj, target, task_shape)
    pool, native, tokens = _options(obj, target, [n for n, _ in pairs])
    if isinstance(obj, BlockBackbone):
        backbone = obj
    else:
        backbone = BlockBackbone(pairs, shape, pool=pool, native_prefixes=native)
        backbone.prefix_tokens = tokens
    _check_runs(backbone, target)
    return backbone


def _check_runs(backbone: BlockBackbone, target) -> None:
    """The blocks run in order on one example of the input shape, each returning a tensor (what every cut's head
    size is computed from, `BlockBackbone.output_shapes`)."""
    device = next(backbone.parameters(), torch.empty(0)).device
    x = torch.zeros((1, *backbone.input_shape), device=device)
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.no_grad():
            for name, block in backbone.blocks.items():
                try:
                    x = block(x)
                except Exception as e:  # noqa: BLE001 - the user's block: its error, one line
                    raise _fail(target, f"blocks that run in order on inputs of shape {backbone.input_shape}; block "
                                        f"{name!r} got {tuple(x.shape[1:])} and raised {type(e).__name__}: "
                                        f"{' '.join(str(e).split())}") from None
                if not isinstance(x, torch.Tensor) or x.dim() < 2:
                    raise _fail(target, f"blocks that each return one tensor (batch first); block {name!r} returned "
                                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    finally:
        for m, mode in modes.items():
            m.training = mode


def build(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    target = cfg.get("_target_")
    kwargs = plain(cfg.get("kwargs") or {})
    obj = own_code.call(target, kwargs, KEY, input_shape=tuple(input_shape))
    return as_block_backbone(obj, target, tuple(input_shape))


def block_count(cfg) -> int:
    """Blocks of this backbone without data (the sweeper's `transfer.freeze=all_depths`): built on the meta
    device at a nominal input shape (no tensor allocated, no random number drawn)."""
    target = cfg.get("_target_")
    try:
        with torch.device("meta"):
            obj = own_code.call(target, plain(cfg.get("kwargs") or {}), KEY, input_shape=NOMINAL_SHAPE)
    except ConfigError as e:
        raise ConfigError(problem(KEY, target, f"a backbone that builds without data to count its blocks "
                                               f"(transfer.freeze=all_depths), at input_shape={NOMINAL_SHAPE}; "
                                               f"{e.items[0].allowed}; list the depths instead")) from None
    if not isinstance(obj, nn.Module):
        raise _fail(target, f"a torch.nn.Module with named `blocks`; it returned a {type(obj).__name__}")
    return len(_named_blocks(obj, target))
