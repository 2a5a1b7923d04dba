"""Frozen-prefix feature caching: compute the frozen blocks' outputs once, train only the rest on them.

When the first f kept blocks are frozen (no trainable parameter, eval mode so BatchNorm and dropout are fixed) and
the inputs are deterministic (no random augmentation), those blocks map every example to the same tensor in every
epoch. Recomputing them is wasted work: we run them once over the task's whole train pool, val and test, store the
outputs under `paths.cache_dir/features/<key>/`, and train the suffix (blocks f.. + head) on those tensors.

The key hashes the prefix's actual weights and buffers, the block names, the input tensors (pool/val/test) and the
precision, so every seed's and every n's subset of one pool shares one feature pass, and anything that changes the
prefix's outputs changes the key. Writes are atomic and file-locked (parallel sweep jobs compute a key once); each
entry carries a checksum verified on every read, and a damaged one is set aside and recomputed (`verified`).

`train.feature_cache=auto|on|off`. Only blocks that cannot change are cached: the leading blocks with no parameter
that trains at any epoch and every submodule in eval mode. Under every BN policy and strategy of transfer.py such
blocks stay fixed (bn=train only touches training blocks; gradual/lp_ft only release blocks the plan trains), so
the cache stays exact there and covers just the blocks frozen for the whole fit. It is off (logged once per reason)
under random augmentation, or when no leading block is frozen throughout (freeze=0, a trainable glob inside
block 0, gradual/lp_ft releasing every block, a frozen block left in training mode). `auto` also skips it when one
pass over the pool costs more than the run saves and no stored pass exists; `on` insists (error under augmentation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from transferlab.errors import ConfigError, problem

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
FEATURES_FILE = "features.pt"
FORMAT_VERSION = 1
MAX_FEATURE_BYTES = 4 * 2**30      # never hold more than this in memory as cached features
MEMORY_BYTES = 2**30               # features kept in this process for later jobs of a multirun
_AUGMENT_KEYS = ("augment", "augmentation", "augmentations", "train_transforms", "random_transforms")
_logged: set[str] = set()
_memory: "OrderedDict[str, dict[str, torch.Tensor]]" = OrderedDict()


@dataclass
class Decision:
    use: bool
    depth: int                     # number of leading blocks whose outputs are cached
    reason: str
    status: str = "off"           # off | memory | hit | miss
    key: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"status": self.status, "depth": self.depth, "reason": self.reason, "key": self.key, "path": self.path}


def mode_of(train_cfg) -> str:
    mode = str(train_cfg.get("feature_cache", "auto")).lower()
    if mode in ("true", "false"):  # YAML on/off become booleans when unquoted
        mode = "on" if mode == "true" else "off"
    if mode not in MODES:
        raise ConfigError(problem("train.feature_cache", train_cfg.get("feature_cache"), f"one of {list(MODES)}"))
    return mode


def _log_once(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        log.info("feature cache off: %s", reason)


def frozen_prefix(net, strategy: str = "fixed") -> tuple[int, str]:
    """(depth, why it stops there): leading backbone blocks frozen for the whole fit. A block counts when no
    parameter of it ever trains (`requires_grad` as the plan set it before any strategy narrows it; strategies only
    release blocks the plan trains) and every submodule stays in eval mode after `net.train()`, so neither
    BatchNorm statistics nor dropout can change its output."""
    was_training = net.training
    net.train()
    depth, why = 0, "every backbone block is frozen"
    try:
        for name, block in net.backbone.blocks.items():
            if any(p.requires_grad for p in block.parameters()):
                why = (f"transfer.strategy={strategy} trains block {name} during the fit" if strategy != "fixed"
                       else f"block {name} has trainable parameters (transfer.freeze / transfer.trainable)")
                break
            moving = [type(m).__name__ for m in block.modules() if m.training]
            if moving:
                why = (f"block {name} is frozen but has modules in training mode ({moving[0]}): BatchNorm "
                       "statistics or dropout would change its outputs")
                break
            depth += 1
    finally:
        net.train(was_training)
    return depth, why


def frozen_prefix_depth(net) -> int:
    return frozen_prefix(net)[0]


def _augmentation(cfg, task) -> str | None:
    for group in ("target", "train"):
        g = cfg.get(group) or {}
        for k in _AUGMENT_KEYS:
            v = g.get(k) if hasattr(g, "get") else None
            if v not in (None, False, "none", [], {}) and not (hasattr(v, "__len__") and len(v) == 0):
                return f"{group}.{k}={v} draws random inputs every epoch"
    for attr in ("train_transform", "augment"):
        if getattr(task, attr, None) is not None:
            return f"the target task has a random train transform ({attr})"
    return None


def _blocker(cfg, task) -> str | None:
    """Why caching any prefix would change results (None = it would not). BatchNorm policy and strategies are
    checked on the built net (`frozen_prefix`): blocks frozen for the whole fit stay in eval mode under every BN
    policy and are never released by gradual/lp_ft, so only blocks that could change are left out."""
    return _augmentation(cfg, task)


def decide(cfg, task, net) -> Decision:
    """Whether this run trains on cached prefix features, and why (or why not)."""
    mode = mode_of(cfg.train)
    if mode == "off":
        return Decision(False, 0, "train.feature_cache=off")
    blocker = _blocker(cfg, task)
    if blocker:
        if mode == "on":
            raise ConfigError(problem("train.feature_cache", "on", f"cannot be used here: {blocker}; use auto or off"))
        _log_once(blocker)
        return Decision(False, 0, blocker)
    strategy = str(cfg.transfer.get("strategy", "fixed") or "fixed")
    depth, why = frozen_prefix(net, strategy)
    if depth == 0:
        reason = f"no frozen leading block: {why}"
        _log_once(reason)
        return Decision(False, 0, reason)
    shape = tuple(net.backbone.output_shape(depth))
    n_pool, n_val, n_test = len(task.train_y), len(task.val_y), len(task.test_y)
    size = 4 * (n_pool + n_val + n_test) * int(torch.tensor(shape).prod())
    if size > MAX_FEATURE_BYTES:
        reason = (f"features after {depth} blocks would take {size / 2**30:.1f} GiB "
                  f"(limit {MAX_FEATURE_BYTES / 2**30:.0f} GiB)")
        if mode == "on":
            raise ConfigError(problem("train.feature_cache", "on", reason))
        _log_once(reason)
        return Decision(False, depth, reason)
    if mode == "auto":
        # One pass over pool+val+test against the prefix passes this run would do (epochs x (subset + val) + test).
        epochs, n_train = int(cfg.train.max_epochs), len(task.train_indices)
        once, per_run = n_pool + n_val + n_test, epochs * (n_train + n_val) + n_test
        if once > per_run and not _stored(cfg, task, net, depth):
            reason = (f"one pass over the pool ({once} examples) costs more than this run's {per_run} prefix passes "
                      "(set train.feature_cache=on to share the pass across a sweep)")
            return Decision(False, depth, reason, extra={"auto_skip": True})
    return Decision(True, depth, f"blocks {list(net.backbone.block_names[:depth])} frozen for the whole fit, "
                                 f"inputs deterministic; the rest trains ({why})")


def _stored(cfg, task, net, depth: int) -> bool:
    """Features for this prefix and pool already exist (in this process or on disk): using them is free."""
    key = feature_key(cfg, task, net, depth)
    return key in _memory or (Path(cfg.paths.cache_dir) / "features" / key / FEATURES_FILE).exists()


def _hash_tensors(h, tensors: dict[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _precision(cfg) -> str:
    return str(cfg.trainer.get("precision", "32-true") or "32-true")


def feature_key(cfg, task, net, depth: int) -> str:
    """Content hash of what the prefix outputs depend on: prefix weights+buffers, block names, input tensors, and
    the settings of the forward pass (precision, memory format, deterministic kernels), format version."""
    h = hashlib.sha256()
    names = list(net.backbone.block_names[:depth])
    h.update(json.dumps({"v": FORMAT_VERSION, "blocks": names, "precision": _precision(cfg),
                         "channels_last": bool(cfg.train.get("channels_last", False)),
                         "deterministic": cfg.trainer.get("deterministic")}, sort_keys=True, default=str).encode())
    prefix = {f"{n}.{k}": v for n in names for k, v in net.backbone.blocks[n].state_dict().items()}
    _hash_tensors(h, prefix)
    _hash_tensors(h, {"pool_x": task.train_x, "val_x": task.val_x, "test_x": task.test_x})
    return h.hexdigest()[:20]


def _autocast(cfg, device: torch.device):
    p = _precision(cfg)
    if p.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if p.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def compute(net, depth: int, xs: dict[str, torch.Tensor], *, device: torch.device, cfg=None,
            batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Outputs of the first `depth` blocks (eval mode) for each tensor in `xs`, as float32 on the CPU."""
    backbone = net.backbone
    was_training = backbone.training
    backbone.eval()
    moved = backbone.to(device)
    out = {}
    try:
        for name, x in xs.items():
            parts = []
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(device)
                if cfg is not None and cfg.train.get("channels_last", False) and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(cfg, device) if cfg is not None else contextlib.nullcontext():
                    parts.append(moved(xb, upto=depth).float().cpu())
            out[name] = torch.cat(parts) if parts else torch.empty((0, *backbone.output_shape(depth)))
    finally:
        backbone.to("cpu")
        backbone.train(was_training)
    return {k: v.contiguous() for k, v in out.items()}


def _remember(key: str, feats: dict[str, torch.Tensor]) -> None:
    _memory[key] = feats
    _memory.move_to_end(key)
    while len(_memory) > 1 and sum(sum(t.nelement() * t.element_size() for t in f.values())
                                   for f in _memory.values()) > MEMORY_BYTES:
        _memory.popitem(last=False)


def get_or_compute(cfg, task, net, decision: Decision, *, device: torch.device) -> dict[str, torch.Tensor]:
    """{'train','val','test'} prefix features over the whole pool, val and test: from this process, the disk
    cache (verified against its checksum; a damaged entry is set aside and recomputed), or computed now (under a
    file lock, written atomically). Updates `decision` with status/key/path."""
    from transferlab.store import verified

    key = feature_key(cfg, task, net, decision.depth)
    path = Path(cfg.paths.cache_dir) / "features" / key / FEATURES_FILE
    decision.key, decision.path = key, str(path)
    if key in _memory:  # computed or verified by this process: no disk read to check
        decision.status = "memory"
        _memory.move_to_end(key)
        return _memory[key]

    def make() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        feats = compute(net, decision.depth, {"train": task.train_x, "val": task.val_x, "test": task.test_x},
                        device=device, cfg=cfg)
        return feats, {"blocks": list(net.backbone.block_names[:decision.depth]), "task": str(task.name),
                       "shape": list(feats["train"].shape[1:]), "n": {k: len(v) for k, v in feats.items()},
                       "precision": _precision(cfg)}

    feats, decision.status = verified.get_or_make(path, make)
    _remember(key, feats)
    return feats


def feature_arrays(task, feats: dict[str, torch.Tensor]):
    """(train_x, train_y, val_x, val_y, test_x, test_y) with features in place of inputs; train is the subset."""
    idx = torch.as_tensor(task.train_indices, dtype=torch.long)
    return feats["train"][idx], task.train_y[idx], feats["val"], task.val_y, feats["test"], task.test_y


def _suffix_forward(self, x: torch.Tensor) -> torch.Tensor:
    for block in list(self.backbone.blocks.values())[self._feature_depth:]:
        x = block(x)
    return self.head(x)


@contextlib.contextmanager
def suffix_forward(net, depth: int) -> Iterator[Any]:
    """Inside: `net(features)` runs blocks [depth:] and the head only. The net keeps every block (its state dict
    and checkpoints are the whole network, the frozen prefix included); outside, `net(images)` is restored."""
    net._feature_depth = depth
    net.forward = types.MethodType(_suffix_forward, net)
    try:
        yield net
    finally:
        del net.forward
        del net._feature_depth


@torch.no_grad()
def check_equivalent(net, depth: int, x: torch.Tensor, *, atol: float = 1e-4) -> str | None:
    """Run a few examples through the whole net and through prefix-then-suffix (eval mode); a difference means the
    backbone's forward is not its blocks in order, so caching would be wrong. Returns the problem or None."""
    was_training = net.training
    net.eval()
    try:
        full = net(x)
        with suffix_forward(net, depth):
            split = net(net.backbone(x, upto=depth))
    finally:
        net.train(was_training)
    err = float((full - split).abs().max()) if full.numel() else 0.0
    if not err <= atol * max(1.0, float(full.abs().max())):
        return f"the backbone's forward differs from its blocks applied in order (max diff {err:.2e})"
    return None


def clear_memory() -> None:
    """Forget features held in this process (tests; a multirun keeps them between jobs)."""
    _memory.clear()


def check_config(cfg, task) -> None:
    """Config-level problems, raised before anything runs: a bad mode, or `on` where caching would be wrong."""
    mode = mode_of(cfg.train)
    if mode == "on":
        blocker = _blocker(cfg, task)
        if blocker:
            raise ConfigError(problem("train.feature_cache", "on", f"cannot be used here: {blocker}; use auto or off"))


def target_loaders(cfg, task, net):
    """(train, val, test) batches for target training and the Decision: cached prefix features when that is exact
    (then train inside `training_on(net, decision)`), else the task's inputs."""
    from transferlab.training.batches import arrays_loaders, loaders, pick_device

    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    opts = {"device": device, "channels_last": bool(cfg.train.get("channels_last", False))}
    bs, seed = int(cfg.train.batch_size), int(cfg.seed)
    decision = decide(cfg, task, net)
    if decision.use:
        sample = task.val_x[:4] if len(task.val_x) else task.train_x[:4]
        bad = check_equivalent(net, decision.depth, sample)
        if bad:
            _log_once(bad)
            decision = Decision(False, 0, bad)
    if not decision.use:
        return loaders(task, bs, seed, **opts), decision
    feats = get_or_compute(cfg, task, net, decision, device=device)
    log.info("feature cache %s: %d frozen blocks, key %s", decision.status, decision.depth, decision.key)
    return arrays_loaders(feature_arrays(task, feats), bs, seed, **opts), decision


def training_on(net, decision: Decision):
    """Context for fit/test: the suffix forward when training on cached features, else nothing."""
    return suffix_forward(net, decision.depth) if decision.use else contextlib.nullcontext(net)
