"""Transferability scores of a run's copied features, measured before training (`transfer.scores`).

The scores themselves are `transferlab.scores` (numpy in, float out); this module computes what they read and
records what they return, for one run (`score_run`) and for the score-only command (`run/score_only.py`):

- the examples: the run's own *training subset* (its n per class; never val or test), with their labels;
- LogME and H-score read the output of the copied blocks [0, cut), i.e. the source model's features at the run's
  cut, reduced to a vector the way the run's new head reads it (`BlockBackbone.pool`): conv maps
  global-average-pooled ([C, H, W] -> C) for backbones whose head pools (resnet, timm), flattened for those whose
  head flattens (small_cnn keeps the spatial layout of its small maps; mlp outputs are vectors already). When
  the feature cache holds a frozen prefix of those blocks, its outputs are the starting point;
- NCE and LEEP read the source model's own predictions on those examples (its full depth and the head it was
  pretrained with): softmax probabilities for LEEP, their argmax for NCE. They need a source model trained in
  the framework: with `source=none` (a backbone's own weights, no head over source classes) they are skipped with
  that reason, and a run that copies nothing (`transfer.cut=0`, the scratch baseline) scores nothing.

No effect on the run: forward passes without gradients in eval mode, the net's train/eval modes restored, the
source network built in a forked random state. The trained model is the one a run without scores trains
(`transfer.scores` is a neutral key: tests/test_identity.py). A failure while scoring is logged and recorded under
`scores.error`; it never fails the run.

The record (`RunRecord.scores`):

    {"methods": {"logme": {"value": 0.61, "time_s": 0.004, "reason": null}, "nce": {"value": null, ...,
                 "reason": "source=none: ..."}, ...},
     "inputs": {"split": "train", "n": 25, "cut": 3, "features": {block, shape, dim, pooling, from, time_s},
                "source_predictions": {classes, time_s}},
     "time_s": 0.05}

`value` is null exactly when `reason` says why (a skipped score, or input on which it is not defined).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from transferlab.backbones import build_backbone
from transferlab.scores import METHODS, evaluate
from transferlab.transfer.network import BACKBONE_PREFIX, TransferNet

log = logging.getLogger(__name__)

HEAD_PREFIX = "net.head."
BATCH = 512
NOTHING_COPIED = "transfer.cut=0 copies nothing: no transferred features and no source model to score"
CONTROL_ARM = ("transfer.init={}: a control arm, its copied blocks do not hold the source's weights "
               "(transfer/init.py); nothing transferred to score")
NO_SOURCE_HEAD = ("source=none: the source weights are the backbone's own, with no head over source classes "
                  "(NCE and LEEP need a source model trained in the framework)")


def methods_of(cfg) -> list[str]:
    """The scores `transfer.scores` asks for, in its order, each once."""
    names = [str(m) for m in (cfg.transfer.get("scores") or [])]
    return list(dict.fromkeys(names))


def needs_source(methods: list[str]) -> bool:
    return any(METHODS[m].needs != "features" for m in methods)


POOLING = {"avg": "global average", "flatten": "flatten", "cls": "class token", "mean": "token mean"}
TOKEN_POOLS = ("cls", "mean")


def pooled(x: torch.Tensor, pool: str, prefix_tokens: int = 0) -> np.ndarray:
    """[N, D] float64 as a head on this output reads it (`BlockBackbone.pool`): conv maps [N, C, H, W] averaged
    over H and W with pool="avg", flattened with pool="flatten"; tokens [N, T, D] read as the class token
    (pool="cls") or the mean of the tokens after the first `prefix_tokens` (pool="mean"); anything else,
    flattened."""
    x = x.float()
    if x.dim() == 3 and pool in TOKEN_POOLS:
        x = x[:, 0] if pool == "cls" else x[:, prefix_tokens:].mean(dim=1)
    else:
        x = x.mean(dim=(2, 3)) if x.dim() == 4 and pool == "avg" else x.reshape(len(x), -1)
    return x.double().numpy()


def pooling(x: torch.Tensor, pool: str) -> str:
    """How `pooled` reduced this output, for the record."""
    if x.dim() == 3 and pool in TOKEN_POOLS:
        return POOLING[pool]
    return POOLING[pool] if x.dim() == 4 and pool in POOLING else "flatten"


@torch.no_grad()
def block_outputs(net: TransferNet, x: torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Outputs of blocks [start, stop) of `net.backbone` for `x` (the output of block start-1), in eval mode, as
    float32 on the CPU; the net's modes and device (CPU) are restored."""
    was_training = net.training
    net.eval()
    backbone = net.backbone.to(device)
    try:
        parts = [backbone(x[i:i + BATCH].to(device), start, stop).float().cpu() for i in range(0, len(x), BATCH)]
    finally:
        backbone.to("cpu")
        net.train(was_training)
    return torch.cat(parts) if parts else torch.empty((0, *net.backbone.output_shape(stop)))


@torch.no_grad()
def predict_probs(net: TransferNet, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """Softmax outputs [N, classes] of the whole `net` (eval mode; modes and device restored), float64."""
    was_training = net.training
    net.eval()
    moved = net.to(device)
    try:
        parts = [torch.softmax(moved(x[i:i + BATCH].to(device)).float(), dim=1).cpu() for i in range(0, len(x), BATCH)]
    finally:
        net.to("cpu")
        net.train(was_training)
    return torch.cat(parts).double().numpy()


def source_network(cfg, state: dict[str, torch.Tensor], input_shape: tuple[int, ...],
                   num_classes: int | None) -> TransferNet:
    """The source model as a network: every backbone block from `state` and, with `num_classes`, the head it was
    pretrained with (else a placeholder head that nothing reads). Built in a forked random state: constructing it
    draws initial weights, which must not move the run's random stream."""
    with torch.random.fork_rng(devices=[]):
        backbone = build_backbone(cfg.backbone, input_shape, load_weights=False)
        blocks = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        backbone.blocks.load_state_dict(blocks, strict=True)
        net = TransferNet(backbone, num_classes or 1)
    if num_classes:
        net.head.load_state_dict({k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)},
                                 strict=True)
    return net


def _skipped(reason: str) -> dict[str, Any]:
    return {"value": None, "time_s": None, "reason": reason}


def score(methods: list[str], labels: np.ndarray, features: np.ndarray | None, probs: np.ndarray | None,
          missing: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{method: {"value", "time_s", "reason"}}: each score on what it reads (pooled features, or the source
    model's probabilities / their argmax); `missing` says why an input is absent ("features", "source")."""
    missing = missing or {}
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        needs = METHODS[name].needs
        x = features if needs == "features" else probs
        if x is None:
            out[name] = _skipped(missing.get("features" if needs == "features" else "source", "no input"))
            continue
        if needs == "source_pred":
            x = x.argmax(axis=1)
        t0 = time.perf_counter()
        value, reason = evaluate(name, x, labels)
        out[name] = {"value": None if math.isnan(value) else value, "time_s": time.perf_counter() - t0,
                     "reason": reason}
    return out


def _run_features(cfg, task, net: TransferNet, cache, cut: int, device: torch.device) -> tuple[np.ndarray, dict]:
    """Pooled features at the cut of the run's training subset, starting from the feature cache's prefix outputs
    when this process holds them (they are the copied blocks' outputs too). A pooled entry (a linear probe's: the
    head's input, past every block) is these features themselves when the cut is the top: read as they are, no
    block runs; at a cut below the top only an unpooled entry is usable."""
    from transferlab.store import feature_cache

    idx = torch.as_tensor(task.train_indices, dtype=torch.long)
    top = cache.pooled and cache.depth == cut  # the head's reduction is `pooled`'s (tests/test_transferability.py)
    usable = cache.use and cache.depth <= cut and (top or not cache.pooled)
    held = feature_cache.remembered(cache.key) if usable else None
    if held is not None and top:
        t0 = time.perf_counter()
        feats = held["train"][idx].float().double().numpy()
        pool = str(net.backbone.pool)
        return feats, {"block": net.backbone.block_names[cut - 1], "shape": list(net.backbone.output_shape(cut)),
                       "dim": feats.shape[1], "pooling": POOLING.get(pool, "flatten"),
                       "from": f"feature cache ({cache.status}), pooled as the head reads it",
                       "time_s": time.perf_counter() - t0}
    if held is not None:
        x, start = held["train"][idx], cache.depth
        source = f"feature cache ({cache.status}) after {cache.depth} block(s)"
    else:
        x, start, source = task.train_x[idx], 0, "inputs"
    t0 = time.perf_counter()
    out = block_outputs(net, x, start, cut, device)
    feats = pooled(out, net.backbone.pool, net.backbone.prefix_tokens)
    return feats, {"block": net.backbone.block_names[cut - 1], "shape": list(out.shape[1:]), "dim": feats.shape[1],
                   "pooling": pooling(out, net.backbone.pool), "from": source, "time_s": time.perf_counter() - t0}


def score_run(cfg, prep, net: TransferNet, cache, state: dict[str, torch.Tensor] | None) -> dict[str, Any] | None:
    """The run's `scores` record (None when `transfer.scores` is empty). `net` is the target network as built,
    before any training (its blocks [0, cut) are the source's); `cache` the feature-cache Decision; `state` the
    source model's state dict (with its head when the source was pretrained here)."""
    from transferlab.training.batches import pick_device

    methods = methods_of(cfg)
    if not methods:
        return None
    t0 = time.perf_counter()
    plan, task = prep.plan, prep.target
    idx = torch.as_tensor(task.train_indices, dtype=torch.long)
    inputs: dict[str, Any] = {"split": "train", "n": len(idx), "cut": plan.cut}
    if plan.cut == 0 or state is None or plan.init != "source":
        why = NOTHING_COPIED if plan.cut == 0 else CONTROL_ARM.format(plan.init)
        return {"methods": {m: _skipped(why) for m in methods}, "inputs": inputs,
                "time_s": time.perf_counter() - t0}
    try:
        device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
        labels = task.train_y[idx].numpy()
        features, inputs["features"] = _run_features(cfg, task, net, cache, plan.cut, device)
        probs, missing = None, {}
        if needs_source(methods):
            if prep.source is None:
                missing["source"] = NO_SOURCE_HEAD
            else:
                t1 = time.perf_counter()
                source = source_network(cfg, state, task.input_shape, prep.source.num_classes)
                probs = predict_probs(source, task.train_x[idx], device)
                inputs["source_predictions"] = {"classes": int(probs.shape[1]), "time_s": time.perf_counter() - t1}
        values = score(methods, labels, features, probs, missing)
    except Exception as e:  # noqa: BLE001 - a measurement beside the run: logged and recorded, never fatal
        log.warning("transferability scores failed: %s: %s", type(e).__name__, e, exc_info=True)
        error = f"{type(e).__name__}: {e}"
        return {"methods": {m: _skipped(error) for m in methods}, "inputs": inputs, "error": error,
                "time_s": time.perf_counter() - t0}
    return {"methods": values, "inputs": inputs, "time_s": time.perf_counter() - t0}
