"""One Lightning fit + test, shared by source pretraining and target training.

Reliability lives here because every training run goes through it:
- resume: if `ckpt_dir/last.ckpt` exists (a killed run), `trainer.fit(ckpt_path=...)` continues from it; the
  checkpoint carries a fingerprint of the config, and a different config is refused, never silently resumed.
  `last.ckpt` is written at most every `checkpoint.every_s` seconds (and after the last epoch): a full save of
  weights + optimizer costs more than a small sweep point's epoch;
- checkpoints are written atomically (temp file + rename) with a checksum sidecar, and read with
  `weights_only=True` only, checked against it (`transferlab.store.verified`). A damaged `last.ckpt` (or the best.ckpt
  it would re-test) is moved aside and the fit starts over from epoch 0 with one warning: a point is never stuck
  on a broken file. One holding pickled code is refused (someone put it there);
- files are found by name inside the run's own checkpoint folder (`RunLocalCheckpoint`), so a copied or moved
  run dir re-tests its own best.ckpt, never the one at the folder it was copied from;
- a NaN/inf training loss stops the run with `NonFiniteLossError` (the caller records status `failed`).
"""

from __future__ import annotations

import logging
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

from transferlab.errors import ConfigError, problem
from transferlab.store import verified
from transferlab.store.safe_load import UnsafeFileError, WeightsError
from transferlab.training.callbacks import BlockModelSummary, MetricHistory

# Frozen blocks are in eval mode on purpose (BN statistics and dropout frozen with the weights).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run cannot recover, so it fails with the reason."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: writes via temp file + rename with a checksum sidecar; reads with
    `weights_only=True` only and checks the checksum (a damaged file raises CorruptFileError, never loads)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        verified.write_with(path, lambda tmp: TorchCheckpointIO.save_checkpoint(self, checkpoint, tmp,
                                                                               storage_options))

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        return verified.load(path, map_location=map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        verified.sidecar(path).unlink(missing_ok=True)


class RunLocalCheckpoint(ModelCheckpoint):
    """The best-model tracker, with its saved state naming files relative to its own folder.

    Lightning's ModelCheckpoint saves absolute paths (best_model_path, ...) in last.ckpt and restores them as they
    are; a run dir copied or moved elsewhere would then re-test the *original* folder's best.ckpt (another run's
    weights, or a deleted file), and since the folder differs Lightning also drops the best score (val/acc NaN).
    Here the state holds file names only, and loading resolves each inside this tracker's own dirpath (any folder
    part, absolute or `..`, is dropped) and restores the scores, so re-testing a finished run gives its numbers.
    """

    def _here(self, name: str | None) -> str:
        return str(Path(self.dirpath) / Path(name).name) if name else ""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        name = lambda p: Path(p).name if p else ""  # noqa: E731
        state.update(dirpath=".", best_model_path=name(self.best_model_path),
                     kth_best_model_path=name(self.kth_best_model_path), last_model_path=name(self.last_model_path),
                     best_k_models={name(k): v for k, v in self.best_k_models.items()})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_model_score = state_dict.get("best_model_score")
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        self.best_k_models = {self._here(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
        self.kth_best_model_path = self._here(state_dict.get("kth_best_model_path"))
        self.last_model_path = self._here(state_dict.get("last_model_path"))
        self.best_model_path = self._here(state_dict.get("best_model_path"))


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
    runs it after the other callbacks and after the best-model tracker listed before it (which saves at validation
    end too, see `fit_and_test`), so the tracker state it saves is this epoch's.
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


def _tested_file(ckpt_dir: Path, ckpt: dict[str, Any]) -> Path | None:
    """The best.ckpt a resume of `ckpt` would test, inside `ckpt_dir` (None if it names none)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(RunLocalCheckpoint.__name__) and isinstance(state, dict):
            name = state.get("best_model_path")
            return Path(ckpt_dir) / Path(name).name if name else None
    return None


@dataclass
class _Last:
    ckpt: dict[str, Any] | None = None   # the verified last.ckpt, resumable
    refused: str | None = None           # why it must not be resumed: a config problem (unsafe, other config)
    damaged: str | None = None           # why it cannot be read: set aside, the fit starts over


def _read_last(ckpt_dir: Path, fingerprint: str | None) -> _Last:
    last = Path(ckpt_dir) / LAST
    if not last.exists():
        return _Last()
    try:
        ckpt, bad = verified.load_and_check(last)
    except UnsafeFileError as e:
        return _Last(refused=f"its {LAST} cannot be resumed ({e}); delete {last} to start over")
    except WeightsError as e:
        return _Last(damaged=str(e))
    # Another configuration's checkpoint is refused even without a checksum (written before checksums existed):
    # this output dir belongs to another run, which must not be overwritten.
    saved = saved_fingerprint(ckpt) if isinstance(ckpt, dict) else None
    if fingerprint is not None and saved is not None and saved != fingerprint:
        return _Last(refused=f"holds a checkpoint of a different configuration (fingerprint {saved}, this run "
                             f"{fingerprint}); use a new output dir, or delete {last} to start over")
    if bad:
        return _Last(damaged=bad)
    if not isinstance(ckpt, dict):
        return _Last(damaged=f"{last}: holds a {type(ckpt).__name__}, not a checkpoint")
    return _Last(ckpt=ckpt)


def checkpoint_mismatch(ckpt_dir: Path, fingerprint: str | None) -> str | None:
    """Why `ckpt_dir/last.ckpt` cannot be resumed by a run with `fingerprint` (None when it can, or is absent).

    Only config problems count (pickled code, another configuration's checkpoint): a damaged last.ckpt is not
    one, the fit sets it aside and starts over (`resume_state`)."""
    return _read_last(Path(ckpt_dir), fingerprint).refused


def _start_over(files: list[Path], why: str) -> None:
    moved = [f"{f.name} -> {verified.set_aside(f).name}" for f in files if f.exists()]
    log.warning("%s; moved aside (kept, not deleted): %s; this fit starts over from epoch 0", why, ", ".join(moved))


def resume_state(ckpt_dir: Path, fingerprint: str | None) -> dict[str, Any] | None:
    """The verified `ckpt_dir/last.ckpt` to resume from, or None to start from epoch 0.

    Raises ConfigError for a config problem (`checkpoint_mismatch`). A last.ckpt that fails to read or verify, or
    whose best.ckpt (the model a resumed run tests) does, is moved aside with one warning and the fit starts
    over: those are damaged derived files, recomputed rather than used or left to fail every later attempt."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / LAST
    state = _read_last(ckpt_dir, fingerprint)
    if state.refused:
        raise ConfigError(problem("paths.output_dir", str(ckpt_dir.parent), state.refused))
    if state.damaged:
        _start_over([last], state.damaged)
        return None
    if state.ckpt is None:
        return None
    best = _tested_file(ckpt_dir, state.ckpt)
    bad = verified.problem(best) if best is not None else None
    if bad:
        _start_over([best, last], f"{bad} (the best model {last} would re-test)")
        return None
    return state.ckpt


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
    # Saved at validation end, not Lightning's default train-epoch end (which comes after validation end): then it
    # runs before ResumePoint, and the tracker state in last.ckpt is this epoch's, agreeing with best.ckpt.
    ckpt = RunLocalCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                              save_weights_only=True, enable_version_counter=False, save_on_train_epoch_end=False)
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True) if not isinstance(trainer_cfg, dict) else trainer_cfg
    kwargs = dict(kwargs)
    plugins = [*(kwargs.pop("plugins", None) or []), SafeCheckpointIO()]
    trainer = L.Trainer(max_epochs=int(max_epochs), logger=logger, default_root_dir=str(ckpt_dir),
                        callbacks=[ckpt, ResumePoint(ckpt_dir, resume_every_s), history, BlockModelSummary(),
                                   RunIdentity(fingerprint), FailOnNonFinite(), *callbacks],
                        plugins=plugins, **kwargs)
    saved = resume_state(Path(ckpt_dir), fingerprint) if resume else None
    resume_from = str(Path(ckpt_dir) / LAST) if saved is not None else None
    if saved is not None:
        _restore_train_order(train, saved)
    trainer.fit(module, train, val, ckpt_path=resume_from, weights_only=True)
    # Copy now: testing from the best checkpoint restores the callback state saved at that (earlier) epoch.
    curves = {k: list(v) for k, v in history.history.items()}
    best = ckpt.best_model_path
    if best and Path(best).resolve().parent != Path(ckpt_dir).resolve():  # RunLocalCheckpoint rules this out
        raise RuntimeError(f"best checkpoint {best} is outside this run's checkpoint folder {ckpt_dir}")
    # A best.ckpt that fails its checksum here raises CorruptFileError: the run fails, it is never tested.
    tested = trainer.test(module, test, ckpt_path=best or None, verbose=False, weights_only=True)[0]
    return FitOutcome(
        test={k: float(v) for k, v in tested.items()},
        best_val_acc=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        best_ckpt=ckpt.best_model_path,
        epochs=int(trainer.current_epoch),
        history=curves,
        resumed_from=resume_from,
    )
