"""One Lightning fit + test, shared by source pretraining and target training.

Reliability lives here because every training run goes through it:
- resume: if `ckpt_dir/last.ckpt` exists (a killed run), `trainer.fit(ckpt_path=...)` continues from it; the
  checkpoint carries a fingerprint of the config, and a different config is refused, never silently resumed.
  `last.ckpt` is written at most every `checkpoint.every_s` seconds (and after the last epoch): a full save of
  weights + optimizer costs more than a small sweep point's epoch;
- checkpoints are written atomically (temp file + rename) and read with `weights_only=True` only;
- a NaN/inf training loss stops the run with `NonFiniteLossError` (the caller records status `failed`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from transferlab.atomic import atomic_path
from transferlab.callbacks import BlockModelSummary, MetricHistory
from transferlab.errors import ConfigError, problem
from transferlab.safe_load import WeightsError, load_checkpoint

# Frozen blocks are in eval mode on purpose (BN statistics and dropout frozen with the weights).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

LAST = "last.ckpt"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run cannot recover, so it fails with the reason."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes via temp file + rename and reads with `weights_only=True` only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors/ints (loadable with weights_only=True): dropout etc. continue as if unbroken."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunIdentity(L.Callback):
    """Stores the config fingerprint and the global RNG states in every checkpoint.

    The fingerprint lets a resume tell whose checkpoint it is; the RNG states make a resumed fit continue with
    the same random stream (dropout, augmentation) as an uninterrupted one. Batch order is the loaders' own
    state (`data.TensorBatches.state_dict`), which Lightning checkpoints itself.
    """

    def __init__(self, fingerprint: str | None):
        self.fingerprint = fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("fingerprint")
        if self.fingerprint is not None and saved not in (None, self.fingerprint):
            raise ConfigError(problem("checkpoint", saved, f"fingerprint {self.fingerprint} of this config"))
        if state_dict.get("rng"):
            _set_rng_state(state_dict["rng"])


class FailOnNonFinite(L.Callback):
    """Raises before backward when the training loss is NaN/inf (no anomaly detection needed, one check/step)."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"train/loss is {value} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"lower the learning rate or check the inputs for NaN/inf")


class ResumePoint(Checkpoint):
    """Writes `last.ckpt` (full state: weights, optimizer, loops, callbacks) at epoch ends, at most every
    `every_s` seconds of the fit, and always after the last epoch, so a finished fit's `last.ckpt` is its end.

    `every_s=0` writes after every epoch (a killed run loses at most one epoch). Being a `Checkpoint`, Lightning
    runs it after the other callbacks, so the best-model tracker's state it saves is this epoch's.
    """

    def __init__(self, dirpath: Path, every_s: float = 0.0):
        self.path = Path(dirpath) / LAST
        self.every_s = float(every_s)
        self._since = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        final = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if final or time.monotonic() - self._since >= self.every_s:
            trainer.save_checkpoint(self.path)
            self._since = time.monotonic()


def saved_fingerprint(ckpt: dict[str, Any]) -> str | None:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(RunIdentity.__name__) and isinstance(state, dict):
            return state.get("fingerprint")
    return None


def checkpoint_mismatch(ckpt_dir: Path, fingerprint: str | None) -> str | None:
    """Why `ckpt_dir/last.ckpt` cannot be resumed by a run with `fingerprint` (None when it can, or is absent)."""
    last = Path(ckpt_dir) / LAST
    if not last.exists():
        return None
    try:
        ckpt = load_checkpoint(last)
    except WeightsError as e:
        return f"its {LAST} cannot be resumed ({e}); delete {last} to start over"
    saved = saved_fingerprint(ckpt)
    if fingerprint is not None and saved is not None and saved != fingerprint:
        return (f"holds a checkpoint of a different configuration (fingerprint {saved}, this run {fingerprint}); "
                f"use a new output dir, or delete {last} to start over")
    return None


def _restore_train_order(train, ckpt: dict[str, Any]) -> None:
    """Give a stateful train loader its saved shuffle state before a resume.

    Lightning restores loader states only when resuming *inside* an epoch; our checkpoints are written at epoch
    ends, so without this the resumed fit would replay the first epoch's batch order.
    """
    states = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("state_dict", {}).get("combined_loader") or []
    if states and hasattr(train, "load_state_dict"):
        train.load_state_dict(states[0])


@dataclass
class FitOutcome:
    test: dict[str, float]
    best_val_acc: float
    best_ckpt: str
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: str | None = None


def fit_and_test(module: L.LightningModule, loaders, *, max_epochs: int, trainer_cfg, ckpt_dir: Path,
                 logger=False, callbacks=(), fingerprint: str | None = None, resume: bool = True,
                 resume_every_s: float = 0.0) -> FitOutcome:
    """Train (continuing from `ckpt_dir/last.ckpt` when present), keep the best model on val/acc, test it once.

    `best.ckpt` holds weights only (what the result needs); `last.ckpt` the full state, every `resume_every_s`.
    """
    train, val, test = loaders
    history = MetricHistory()
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                           save_weights_only=True, enable_version_counter=False)
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True) if not isinstance(trainer_cfg, dict) else trainer_cfg
    kwargs = dict(kwargs)
    plugins = [*(kwargs.pop("plugins", None) or []), SafeCheckpointIO()]
    trainer = L.Trainer(max_epochs=int(max_epochs), logger=logger, default_root_dir=str(ckpt_dir),
                        callbacks=[ckpt, ResumePoint(ckpt_dir, resume_every_s), history, BlockModelSummary(),
                                   RunIdentity(fingerprint), FailOnNonFinite(), *callbacks],
                        plugins=plugins, **kwargs)
    last = Path(ckpt_dir) / LAST
    resume_from = None
    if resume and last.exists():
        why = checkpoint_mismatch(Path(ckpt_dir), fingerprint)
        if why:
            raise ConfigError(problem("paths.output_dir", str(Path(ckpt_dir).parent), why))
        resume_from = str(last)
        _restore_train_order(train, load_checkpoint(last))
    trainer.fit(module, train, val, ckpt_path=resume_from, weights_only=True)
    # Copy now: testing from the best checkpoint restores the callback state saved at that (earlier) epoch.
    curves = {k: list(v) for k, v in history.history.items()}
    tested = trainer.test(module, test, ckpt_path=ckpt.best_model_path or None, verbose=False, weights_only=True)[0]
    return FitOutcome(
        test={k: float(v) for k, v in tested.items()},
        best_val_acc=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        best_ckpt=ckpt.best_model_path,
        epochs=int(trainer.current_epoch),
        history=curves,
        resumed_from=resume_from,
    )
