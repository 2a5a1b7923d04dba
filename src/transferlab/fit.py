"""One Lightning fit + test, shared by source pretraining and target training."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from transferlab.callbacks import BlockModelSummary, MetricHistory


# Frozen blocks are in eval mode on purpose (BN statistics and dropout frozen with the weights).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


@dataclass
class FitOutcome:
    test: dict[str, float]
    best_val_acc: float
    best_ckpt: str
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)


def fit_and_test(module: L.LightningModule, loaders, *, max_epochs: int, trainer_cfg, ckpt_dir: Path,
                 logger=False, callbacks=()) -> FitOutcome:
    """Train, keep the best model on val/acc, and test it once on the fixed test split."""
    train, val, test = loaders
    history = MetricHistory()
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                           save_last=True, enable_version_counter=False)
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True) if not isinstance(trainer_cfg, dict) else trainer_cfg
    trainer = L.Trainer(max_epochs=int(max_epochs), logger=logger, default_root_dir=str(ckpt_dir),
                        callbacks=[ckpt, history, BlockModelSummary(), *callbacks], **kwargs)
    trainer.fit(module, train, val)
    # Copy now: testing from the best checkpoint restores the callback state saved at that (earlier) epoch.
    curves = {k: list(v) for k, v in history.history.items()}
    tested = trainer.test(module, test, ckpt_path=ckpt.best_model_path or None, verbose=False)[0]
    return FitOutcome(
        test={k: float(v) for k, v in tested.items()},
        best_val_acc=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        best_ckpt=ckpt.best_model_path,
        epochs=int(trainer.current_epoch),
        history=curves,
    )
