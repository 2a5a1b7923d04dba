"""Frozen-prefix feature caching: compute the frozen blocks' outputs once, train only the rest on them.

When the plan keeps the first f kept blocks frozen for the whole fit (no parameter trains in any epoch, so the net
runs them in eval mode and BatchNorm and dropout are fixed), and a task's inputs are fixed tensors, those blocks
map every example to the same tensor in every epoch. Recomputing them is wasted work: we run them once over the
task's whole train pool, val and test, store the outputs under `paths.cache_dir/features/<key>/`, and train the
suffix on those tensors (the module's `input_block=f`: `net(x, start=f)` runs blocks f.. and the head).

The key hashes the prefix's actual weights and buffers, the block names, the backbone's architecture settings (its
config without the weights: a ViT's num_heads changes the outputs of the same tensors), the input tensors
(pool/val/test), the precision and the versions of the libraries that run the blocks, so every seed's and every
n's subset of one pool shares one feature pass, and anything that changes the prefix's outputs changes the key.
Writes are atomic and file-locked (parallel sweep jobs compute a key once); each entry carries a checksum verified
on every read, and a damaged one is set aside and recomputed (`verified`).

When every backbone block is fixed (a linear probe) and the head reduces the last block's output without
parameters (a transformer's class token or token mean; a CNN's global average pool), the cache holds the reduced
vector, the Linear's input, instead: for a ViT that is one D-vector per example rather than T x D tokens, and the
fit enters the net past the reduction (`TransferNet.head_input_start`). The key then also names the reduction.

`train.feature_cache=auto|on|off`, decided once by `decide`. Which blocks may be cached is a pure function of the
plan (`eligible`): the leading blocks in `plan.frozen`. Under every BN policy and strategy such blocks stay fixed
(bn=train only touches training blocks; gradual/lp_ft only release blocks the plan trains), so the cache stays
exact there and covers just the blocks frozen for the whole fit. It is off (logged once per reason) when no leading
block is frozen throughout (freeze=0, a trainable glob inside block 0, gradual/lp_ft releasing every block).
`auto` also skips it when one pass over the pool costs more than the run saves and no stored pass exists; `on`
insists (and fails only when the features would not fit in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from transferlab.errors import ConfigError, problem

if TYPE_CHECKING:  # the plan is read, never built here
    from transferlab.transfer.plan import TransferPlan

log = logging.getLogger(__name__)

FEATURES_FILE = "features.pt"
FORMAT_VERSION = 1
MAX_FEATURE_BYTES = 4 * 2**30      # cached features larger than this are not held (`train.feature_cache_max_gb`)
MEMORY_BYTES = 2**30               # features kept in this process for later jobs of a multirun
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
    pooled: bool = False          # the cache holds the head's reduced input, not block `depth`'s output

    @property
    def start(self) -> int:
        """Where training batches enter the net: block `depth` on cached features (past the head's reduction,
        depth + 1 = `TransferNet.head_input_start`, when pooled), else 0 (the inputs)."""
        return (self.depth + int(self.pooled)) if self.use else 0

    def record(self) -> dict[str, Any]:
        return {"status": self.status, "depth": self.depth, "pooled": self.pooled, "reason": self.reason,
                "key": self.key, "path": self.path}


def pools(net, depth: int) -> bool:
    """Cache the head's reduced input rather than block `depth`'s output? Only past the whole backbone, through a
    parameter-free reduction, and only where it makes the cache smaller (a flatten of a vector changes nothing)."""
    if depth != len(net.backbone) or net.head_reduction() is None:
        return False
    return net.head[-1].in_features < int(torch.tensor(net.backbone.output_shape(depth)).prod())


def max_bytes(train_cfg) -> int:
    """The most cached features may take (`train.feature_cache_max_gb`; the default for older configs)."""
    gb = train_cfg.get("feature_cache_max_gb")
    return MAX_FEATURE_BYTES if gb is None else int(float(gb) * 2**30)


def mode_of(train_cfg) -> str:
    return str(train_cfg.feature_cache)  # auto | on | off: the schema's choice (transferlab.config.FeatureCache)


def _log_once(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        log.info("feature cache off: %s", reason)


def decide(cfg, plan: TransferPlan, task, net, epochs: int | None = None) -> Decision:
    """Whether this run trains on cached prefix features, and why (or why not): the prefix the plan keeps fixed
    (`TransferPlan.fixed_prefix`), then the mode, the memory limit and, for `auto`, whether one pass over the pool
    pays off over the fit's `epochs` (default `train.max_epochs`; a run passes its step budget's)."""
    mode = mode_of(cfg.train)
    if mode == "off":
        return Decision(False, 0, "train.feature_cache=off")
    depth, why = plan.fixed_prefix()
    if depth == 0:
        reason = f"no frozen leading block: {why}"
        _log_once(reason)
        return Decision(False, 0, reason)
    pooled = pools(net, depth)
    # a transformer's: tokens x width; pooled: the head's input
    shape = (net.head[-1].in_features,) if pooled else tuple(net.backbone.output_shape(depth))
    n_pool, n_val, n_test = len(task.train_y), len(task.val_y), len(task.test_y)
    size = 4 * (n_pool + n_val + n_test) * int(torch.tensor(shape).prod())  # estimated before anything is run
    limit = max_bytes(cfg.train)
    if size > limit:
        reason = (f"features after {depth} blocks ({list(shape)} per example) would take {size / 2**30:.3g} GiB "
                  f"(train.feature_cache_max_gb={cfg.train.get('feature_cache_max_gb', limit / 2**30):g})")
        if mode == "on":
            raise ConfigError(problem("train.feature_cache", "on", reason))
        _log_once(reason)
        return Decision(False, depth, reason)
    if mode == "auto":
        # One pass over pool+val+test against the prefix passes this run would do (epochs x (subset + val) + test).
        epochs, n_train = int(epochs or cfg.train.max_epochs), len(task.train_indices)
        once, per_run = n_pool + n_val + n_test, epochs * (n_train + n_val) + n_test
        if once > per_run and not _stored(cfg, task, net, depth, pooled):
            reason = (f"one pass over the pool ({once} examples) costs more than this run's {per_run} prefix passes "
                      "(set train.feature_cache=on to share the pass across a sweep)")
            return Decision(False, depth, reason)
    what = " (cached pooled, as the head reads them)" if pooled else ""
    return Decision(True, depth, f"blocks {list(net.backbone.block_names[:depth])} frozen for the whole fit{what}; "
                                 f"the rest trains ({why})", pooled=pooled)


def _stored(cfg, task, net, depth: int, pooled: bool = False) -> bool:
    """Features for this prefix and pool already exist (in this process or on disk): using them is free."""
    key = feature_key(cfg, task, net, depth, pooled)
    return key in _memory or (Path(cfg.paths.cache_dir) / "features" / key / FEATURES_FILE).exists()


def _hash_tensors(h, tensors: dict[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _precision(cfg) -> str:
    return str(cfg.trainer.precision)


def _architecture(cfg) -> Any:
    """The backbone config without its weights (their values are hashed as tensors): what the blocks compute with
    those tensors. Not every architecture setting shows in a tensor's name or shape (a ViT's `num_heads` splits
    the same qkv weight into other heads, an activation has no parameter), so the tensors alone do not say it. A
    backbone of your own computes with its code: the digest of the module its `_target_` names (`own_code`), and of
    `_target_` nodes of your own in its kwargs."""
    from transferlab import own_code
    from transferlab.config import plain

    arch = plain(cfg.backbone) if cfg.get("backbone") is not None else None
    if isinstance(arch, dict):
        arch.pop("weights", None)
        if arch.get("family") == "custom":
            arch["code"] = own_code.code_digest(arch.get("_target_"))
            nested = own_code.nested_targets(arch.get("kwargs") or {}, "kwargs")
            if nested:  # `_target_` nodes of your own in its kwargs: their code computes in the blocks too
                arch["nested_code"] = {key: own_code.code_digest(t) for key, t in nested}
    return arch


def _libraries() -> dict[str, str | None]:
    """Versions of the code that computes the blocks' outputs (from the run's environment record, read once per
    process): an upgrade may change a kernel or a layer's forward pass, and features are then computed again
    rather than mixed with the new ones."""
    from transferlab.versions import environment

    env = environment()
    return {name: env.get(name) for name in ("torch", "torchvision", "timm")}


def feature_key(cfg, task, net, depth: int, pooled: bool = False) -> str:
    """Content hash of what the prefix outputs depend on: prefix weights+buffers, block names, the backbone's
    architecture settings (its config without the weights), input tensors, the settings of the forward pass
    (precision, memory format, deterministic kernels), library versions and the format version; for a pooled
    entry, the head's reduction too (its repr says the pool and the tokens it skips)."""
    h = hashlib.sha256()
    names = list(net.backbone.block_names[:depth])
    meta = {"v": FORMAT_VERSION, "blocks": names, "precision": _precision(cfg),
            "channels_last": bool(cfg.train.channels_last), "deterministic": cfg.trainer.get("deterministic"),
            "backbone": _architecture(cfg), "libraries": _libraries()}
    if pooled:
        meta["reduced_by"] = repr(net.head_reduction())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
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
            batch_size: int = 512, pooled: bool = False) -> dict[str, torch.Tensor]:
    """Outputs of the first `depth` blocks (eval mode) for each tensor in `xs`, as float32 on the CPU; `pooled`:
    through the head's reduction as well (the head Linear's input)."""
    backbone = net.backbone
    was_training = net.training
    net.eval()
    moved = backbone.to(device)
    reduce = net.head_reduction() if pooled else None
    out = {}
    try:
        for name, x in xs.items():
            parts = []
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(device)
                if cfg is not None and cfg.train.channels_last and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(cfg, device) if cfg is not None else contextlib.nullcontext():
                    y = moved(xb, 0, depth)
                    parts.append((reduce(y) if reduce is not None else y).float().cpu())
            empty = (net.head[-1].in_features,) if reduce is not None else backbone.output_shape(depth)
            out[name] = torch.cat(parts) if parts else torch.empty((0, *empty))
    finally:
        backbone.to("cpu")
        net.train(was_training)  # the net's own modes again (frozen blocks in eval)
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

    key = feature_key(cfg, task, net, decision.depth, decision.pooled)
    path = Path(cfg.paths.cache_dir) / "features" / key / FEATURES_FILE
    decision.key, decision.path = key, str(path)
    if key in _memory:  # computed or verified by this process: no disk read to check
        decision.status = "memory"
        _memory.move_to_end(key)
        return _memory[key]

    def make() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        feats = compute(net, decision.depth, {"train": task.train_x, "val": task.val_x, "test": task.test_x},
                        device=device, cfg=cfg, pooled=decision.pooled)
        return feats, {"blocks": list(net.backbone.block_names[:decision.depth]), "pooled": decision.pooled,
                       "task": str(task.name),
                       "shape": list(feats["train"].shape[1:]), "n": {k: len(v) for k, v in feats.items()},
                       "precision": _precision(cfg)}

    feats, decision.status = verified.get_or_make(path, make)
    _remember(key, feats)
    return feats


def forget() -> None:
    """Drop the features this process holds (a DDP launcher, before its ranks start: run/ddp.py)."""
    _memory.clear()


def remembered(key: str | None) -> dict[str, torch.Tensor] | None:
    """The features this process computed or verified under `key` (a Decision's), or None (not held, evicted)."""
    return _memory.get(key) if key else None


def stored(cfg, task, net, depth: int) -> dict[str, torch.Tensor] | None:
    """{'train','val','test'} outputs of the first `depth` blocks of `net` if this process holds them or the disk
    cache has a sound entry for them; None otherwise (nothing is computed, written or set aside)."""
    from transferlab.store import verified

    key = feature_key(cfg, task, net, depth)
    if key in _memory:
        return _memory[key]
    path = Path(cfg.paths.cache_dir) / "features" / key / FEATURES_FILE
    if not path.exists():
        return None
    try:
        feats, why = verified.load_and_check(path)
    except Exception:  # noqa: BLE001 - unreadable or unsafe: not ours to judge here; get_or_compute sets it aside
        return None
    if why is not None or not isinstance(feats, dict):
        return None
    _remember(key, feats)
    return feats


def feature_arrays(task, feats: dict[str, torch.Tensor]):
    """(train_x, train_y, val_x, val_y, test_x, test_y) with features in place of inputs; train is the subset. A
    val split taken from the pool (`task.val_from_pool`: a cv fold) reads the pool's features at its positions, so
    `feats` may be those of the task it was taken from (same pool and test)."""
    idx = torch.as_tensor(task.train_indices, dtype=torch.long)
    pool_val = getattr(task, "val_from_pool", None)
    val = feats["val"] if pool_val is None else feats["train"][torch.as_tensor(pool_val, dtype=torch.long)]
    return feats["train"][idx], task.train_y[idx], val, task.val_y, feats["test"], task.test_y


def clear_memory() -> None:
    """Forget features held in this process (tests; a multirun keeps them between jobs)."""
    _memory.clear()
