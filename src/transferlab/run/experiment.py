"""One experiment: validate -> source model (cached) -> cut + freeze -> target fine-tune -> result record."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from transferlab.backbones import backbone_label, build_backbone
from transferlab.run import identity
from transferlab.run.record import write_result
from transferlab.run.setup import Prepared, prepare
from transferlab.store import feature_cache, source_cache
from transferlab.tasks import TaskData
from transferlab.training import options
from transferlab.training.batches import loaders, pick_device
from transferlab.training.callbacks import PlanSchedule
from transferlab.training.fit import fit_and_test
from transferlab.training.loggers import finish_logger, make_logger
from transferlab.training.module import TransferModule
from transferlab.transfer.network import BACKBONE_PREFIX, TransferNet
from transferlab.transfer.plan import build_target_net

log = logging.getLogger(__name__)


def resume_every_s(cfg: DictConfig) -> float:
    return float((cfg.get("checkpoint") or {}).get("every_s", 0))


def pretrain_source(cfg: DictConfig, source: TaskData, work_dir: Path) -> tuple[dict, dict]:
    """Train backbone + source head on the whole source task; return (state_dict, meta)."""
    L.seed_everything(int(cfg.pretrain.seed), workers=True, verbose=False)
    net = TransferNet(build_backbone(cfg.backbone, source.input_shape), source.num_classes)
    module = TransferModule(net, source.num_classes, optim=OmegaConf.to_container(cfg.pretrain, resolve=True))
    t0 = time.perf_counter()
    outcome = fit_and_test(
        module, loaders(source, int(cfg.pretrain.batch_size), int(cfg.pretrain.seed),
                        device=pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))),
        max_epochs=int(cfg.pretrain.max_epochs), trainer_cfg=cfg.trainer, ckpt_dir=work_dir / "checkpoints",
        logger=(src_logger := make_logger(cfg, work_dir, "source")),  # its own W&B run, job_type=source
        fingerprint=source_cache.source_key(cfg, source.fingerprint()),  # a killed pretraining resumes
        resume_every_s=resume_every_s(cfg),
    )
    state = source_cache.load_state(outcome.best_ckpt)["state_dict"]
    meta = {"source": str(cfg.source.name), "backbone": backbone_label(cfg.backbone), "test/acc": outcome.test["test/acc"],
            "val/acc": outcome.best_val_acc, "epochs": outcome.epochs, "wall_s": time.perf_counter() - t0,
            "block_names": list(net.backbone.block_names)}
    finish_logger(src_logger, failed=False, summary=meta)
    return {k: v for k, v in state.items() if k.startswith("net.")}, meta


def source_weights(cfg: DictConfig, prep: Prepared, run_dir: Path) -> tuple[dict | None, str, str | None, dict]:
    """(state_dict, cache status, checkpoint path, meta) of the model whose blocks are copied."""
    if prep.plan.cut == 0:
        return None, "unused", None, {}
    if prep.source is None:  # source=none: the backbone's own initial weights are the "source"
        L.seed_everything(int(cfg.pretrain.seed), workers=True, verbose=False)
        blocks = build_backbone(cfg.backbone, prep.target.input_shape).blocks.state_dict()
        return {BACKBONE_PREFIX + k: v for k, v in blocks.items()}, "none", None, {}
    key = source_cache.source_key(cfg, prep.source.fingerprint())
    obj, status, path = source_cache.get_or_train(
        cfg.paths.cache_dir, key, lambda: pretrain_source(cfg, prep.source, run_dir / "source"))
    log.info("source model %s (%s): %s", key, status, path)
    return obj["state_dict"], status, str(path), obj["meta"]


def _count(net: TransferNet) -> tuple[int, int]:
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment and write result.json atomically; config errors raise before anything is written."""
    t0 = time.perf_counter()
    inputs = identity.inputs(cfg)  # content of every file the run reads, hashed before anything else
    fingerprint = identity.fingerprint(cfg, inputs)
    prep = prepare(cfg)  # raises ConfigError: nothing written yet
    feature_cache.check_config(cfg, prep.target)  # bad train.feature_cache: ConfigError, nothing written
    run_dir = Path(cfg.paths.output_dir)
    plan, target = prep.plan, prep.target
    record: dict[str, Any] = {
        "status": "running", "error": None, "name": str(cfg.get("name", "default")),
        "source": str(cfg.source.name) if plan.cut else None,  # a baseline that copies nothing has no source
        "target": str(cfg.target.name), "backbone": backbone_label(cfg.backbone),
        "transfer": str(cfg.transfer.get("name", "custom")), "strategy": str(cfg.transfer.get("strategy", "fixed")),
        "cut": plan.cut, "upper": plan.upper, "freeze": plan.freeze_depth, "frozen_blocks": list(plan.frozen),
        "trainable_set": plan.label, "bn": plan.bn,  # freeze is None for a transfer.trainable set (not a depth)
        "unfreeze_epochs": {b: plan.unfreeze_epoch(b) for b in plan.trainable},  # gradual / lp_ft schedule
        "trainable_blocks": list(plan.trainable), "trainable_params": None, "total_params": None,
        "n_per_class": cfg.target.get("n_per_class"), "n_train": int(len(target.train_indices)),
        "num_classes": target.num_classes,
        "n_val": int(len(target.val_y)), "n_test": int(len(target.test_y)),
        "seed": int(cfg.seed), "data_seed": int(cfg.data_seed), "metrics": {}, "source_cache": None,
        "source_ckpt": None, "target_ckpt": None, "train_indices": [int(i) for i in target.train_indices],
        "target_data": target.info,  # files read, input adaptation (channels/size/normalisation stats), split sizes
        "wall_s": None, "config": OmegaConf.to_container(cfg, resolve=True),
        "fingerprint": fingerprint, "inputs": inputs, "environment": identity.environment(),
    }
    logger = None
    try:
        state, status, source_ckpt, source_meta = source_weights(cfg, prep, run_dir)
        record.update(source_cache=status, source_ckpt=source_ckpt, source_metrics=source_meta)
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        # No backbone.weights here: copied blocks come from the source model, the rest stay random (reinit/scratch).
        net = build_target_net(build_backbone(cfg.backbone, target.input_shape, load_weights=False), plan, state,
                               target.num_classes)
        record["trainable_params"], record["total_params"] = _count(net)
        module = TransferModule(net, target.num_classes, optim=OmegaConf.to_container(cfg.train, resolve=True),
                                plan=plan)  # param groups of plan.trains, lr_decay, L2-SP toward the source
        axes = {k: record[k] for k in ("n_per_class", "n_train", "freeze", "cut", "trainable_params")}
        logger = make_logger(cfg, run_dir, "target", axes=axes)
        # Frozen prefix computed once (cached features) when exact; the net and its checkpoint stay whole.
        batches, cache = feature_cache.target_loaders(cfg, target, net)
        record["feature_cache"] = cache.record()
        with feature_cache.training_on(net, cache):
            outcome = fit_and_test(options.apply(module, cfg.train), batches,
                                   max_epochs=int(cfg.train.max_epochs), trainer_cfg=cfg.trainer,
                                   ckpt_dir=run_dir / "checkpoints", logger=logger,
                                   callbacks=[PlanSchedule(plan)],  # what trains per epoch, BN policy
                                   fingerprint=fingerprint,  # resumes a killed run of this run identity
                                   resume_every_s=resume_every_s(cfg))
        record["metrics"] = {**outcome.test, "val/acc": outcome.best_val_acc,
                             "val/acc_history": outcome.history.get("val/acc", []),
                             "val/loss_history": outcome.history.get("val/loss", []), "epochs": outcome.epochs}
        record.update(status="ok", target_ckpt=outcome.best_ckpt, wall_s=time.perf_counter() - t0,
                      resumed_from=outcome.resumed_from)  # last.ckpt of a killed earlier attempt, else None
        write_result(run_dir, record)
        finish_logger(logger, failed=False, summary=record["metrics"])
        return record
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", wall_s=time.perf_counter() - t0)
        write_result(run_dir, record)
        finish_logger(logger, failed=True, summary=record["metrics"])
        raise
