"""Every Lightning callback a fit uses, in one place; `fit.fit_and_test` puts them together.

- `PlanSchedule`: applies the plan's trainable set at every epoch start (the schedule itself lives in the plan).
  Why not Lightning's BaseFinetuning: its `freeze` puts BatchNorm in a mode of its own (track_running_stats off,
  Lightning #15062), and `unfreeze_and_add_param_group` adds optimizer groups mid-fit, which breaks schedulers
  (#12141) and resuming (#6891). Here every parameter that will ever train sits in the optimizer from the start
  (grad None until released, so the optimizer skips it), and the epoch -> set map is a pure function of the
  epoch, so a run resumed at epoch e gets exactly the set of epoch e.
- `RunLocalCheckpoint` (the selected model, `train.select`: best val/acc with its tie rule, last, or a fixed
  epoch; files named inside the run's folder), `ResumePoint` (last.ckpt at
  most every `checkpoint.every_s`), `RunIdentity` (the run fingerprint and RNG states in every checkpoint);
- `ValidationSchedule` (validation after the planned epochs only: training/budget.py `val_epochs`);
- `FailOnNonFinite` (a NaN/inf loss stops the fit), `MetricHistory` (curves per validation check for result.json),
  `BlockModelSummary` (trainable and frozen parameters per block).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import ModelSummary as Summary
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from transferlab.compat import checkpoint_contents, overrides_private
from transferlab.errors import ConfigError, NonFiniteLossError, problem
from transferlab.store import verified
from transferlab.transfer.network import BACKBONE_PREFIX
from transferlab.transfer.plan import TransferPlan, apply_epoch

log = logging.getLogger(__name__)

LAST = "last.ckpt"
COMMITTED = "best.committed.ckpt"  # the selected model as of the last resume point, while best.ckpt has moved on


class PlanSchedule(L.Callback):
    """Applies the plan's trainable set for the current epoch; logs which blocks train."""

    def __init__(self, plan: TransferPlan):
        self.plan = plan
        self.history: list[tuple[int, tuple[str, ...]]] = []  # (epoch, training blocks) whenever the set changes

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        if self.history and self.plan.strategy == "fixed":
            return  # one trainable set all fit, applied at fit start (modes kept by TransferNet.train and Lightning)
        training = tuple(apply_epoch(pl_module.net, self.plan, epoch))
        if not self.history or self.history[-1][1] != training:
            self.history.append((epoch, training))
            log.info("epoch %d (%s): training blocks %s + head", epoch, self.plan.strategy, list(training))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume, current_epoch is already the restored one.
        apply_epoch(pl_module.net, self.plan, int(trainer.current_epoch))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores module modes after validation; re-assert the policy so nothing drifts.
        if pl_module.training:
            pl_module.net.train(True)


class ValidationSchedule(L.Callback):
    """Runs Lightning's validation after the epochs of the plan's schedule only (`StepBudget.val_epochs`,
    training/budget.py), not after every epoch.

    Lightning validates after epoch e (0-based) when `(e + 1) % trainer.check_val_every_n_epoch == 0`, reading the
    public `check_val_every_n_epoch` attribute at every epoch end. Setting it per epoch (1 for a scheduled epoch,
    e + 2 otherwise) gives any set of epochs while everything keyed to validation (the selection tracker, the
    resume point, the curves, the logged metrics) keeps running at validation end as before. It is set at train
    start too, so a fit resumed from a resume point written at a scheduled validation (`ResumePoint`) sees that
    epoch's value before Lightning decides whether to validate again (it does not: it saved on that check)."""

    def __init__(self, epochs):
        self.epochs = frozenset(int(e) for e in epochs)

    def _set(self, trainer: L.Trainer) -> None:
        epoch = int(trainer.current_epoch) + 1
        trainer.check_val_every_n_epoch = 1 if epoch in self.epochs else epoch + 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(trainer)


class FailOnNonFinite(L.Callback):
    """Raises before backward when the training loss is NaN/inf (no anomaly detection needed, one check/step)."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise non_finite(value, trainer.current_epoch, trainer.global_step)


def non_finite(value: float, epoch: int, step: int) -> NonFiniteLossError:
    """The error of a run whose training loss became NaN/inf (one run, or one member of a vectorised group)."""
    return NonFiniteLossError(f"train/loss is {value} at epoch {epoch}, step {step}; "
                              f"lower the learning rate or check the inputs for NaN/inf")


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


def _cpu_copy(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checkpoint whose state_dict tensors are CPU copies (detached, same dtype, shape and strides),
    the rest deep-copied: what it holds no longer changes with the module."""
    memo = {id(t): t.detach().to("cpu", copy=True) for t in (checkpoint.get("state_dict") or {}).values()
            if isinstance(t, torch.Tensor)}
    return copy.deepcopy(checkpoint, memo)


def replaces(select: str, select_epoch: int | None, epoch: int, acc: float, loss: float | None,
             kept_acc: float | None, kept_loss: float | None) -> bool:
    """The selection rule (`train.select`, see `RunLocalCheckpoint`), shared with a vectorised group's members
    (`training.stacked`): does the model after 1-based `epoch` (val/acc `acc`, val/loss `loss`) replace the kept
    one (`kept_acc`, `kept_loss`; None when nothing is kept yet)?"""
    if select in ("last", "cv"):
        return True
    if select == "fixed_epoch":
        return epoch == select_epoch
    if kept_acc is None:
        return True
    if acc != kept_acc:  # a NaN accuracy never replaces
        return acc > kept_acc
    return loss is not None and kept_loss is not None and loss < kept_loss


@overrides_private("_update_best_and_save", "_save_checkpoint")
class RunLocalCheckpoint(ModelCheckpoint):
    """The model-selection tracker (`train.select`: which epoch's model is tested), with its saved state naming
    files relative to its own folder. One file, `best.ckpt`, holds the selected model; the selection changes when:

    - `best_val` (default): val/acc is higher than the kept model's, or equal with a lower val/loss. On a full tie
      the earlier epoch stays. Validation accuracy on a few dozen examples moves in steps of one example, so ties
      are common; Lightning's own rule keeps the first maximum and ignores the loss, which would pick an epoch
      whose predictions are equally often right but less confident;
    - `last`: always (the model after the last epoch);
    - `fixed_epoch`: at the end of epoch `select_epoch` (1-based: the model after that many epochs), only.

    `selected_epoch` (1-based) and the kept model's val/loss are part of the saved state, so a resumed fit applies
    the same rule to the same history.

    When best.ckpt is written. A change of selection only takes the checkpoint Lightning's weights-only save would
    write (`compat.checkpoint_contents`: the module's state_dict, epoch, global_step, the loops' state, the
    Lightning version), at that validation end, with the module's own tensors; before the next training step
    moves them, the tensors are copied to CPU (`on_train_batch_start`). That checkpoint is written to best.ckpt
    (`write_selected`, through the trainer's checkpoint IO: the same bytes as Lightning's save of that epoch) only
    when a resume point is written (`ResumePoint`, just before last.ckpt) and when the fit ends (`on_train_end`),
    so it is on disk before the test and whenever last.ckpt's selection names it. Writing the whole network at
    every change of selection (a linear probe's tie rule changes it in almost every epoch) cost a resnet18 probe
    a large share of its run (docs/speed.md); a copy in memory is much cheaper than a write, and a resume point
    of every epoch (`checkpoint.every_s=0`) writes best.ckpt from the module's own tensors, copying nothing.

    best.ckpt is written just before last.ckpt, so a kill between the two leaves a best.ckpt newer than the resume
    point's selection (and so can the end of a fit whose last epoch wrote no resume point). So a write that
    replaces the model the last resume point committed to keeps that file as `best.committed.ckpt` instead of
    overwriting it; the next resume point deletes it (`commit`), and a resume puts it back as best.ckpt
    (`training/checkpoints.py`). A run folder killed while best.ckpt was still written at every change (before
    this deferral) has the same files and resumes the same way.

    Lightning's ModelCheckpoint saves absolute paths (best_model_path, ...) in last.ckpt and restores them as they
    are; a run dir copied or moved elsewhere would then re-test the *original* folder's best.ckpt (another run's
    weights, or a deleted file), and since the folder differs Lightning also drops the best score (val/acc NaN).
    Here the state holds file names only, and loading resolves each inside this tracker's own dirpath (any folder
    part, absolute or `..`, is dropped) and restores the scores, so re-testing a finished run gives its numbers.
    """

    # transferlab.config.Select; val_in_budget is best_val's rule on a val split carved out of the n
    # (tasks/budget_val.py); cv keeps the last model: its fold fits only record curves, its final fit stops at the
    # chosen step (run/cv.py)
    RULES = ("best_val", "last", "fixed_epoch", "val_in_budget", "cv")

    def __init__(self, *args: Any, select: str = "best_val", select_epoch: int | None = None,
                 loss: str = "val/loss", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if str(select) not in self.RULES or (str(select) == "fixed_epoch") != (select_epoch is not None):
            raise ValueError(f"select={select!r}, select_epoch={select_epoch!r}: one of {self.RULES}, with an epoch "
                             "for fixed_epoch only")
        self.select, self.select_epoch, self.loss_key = str(select), select_epoch, loss
        self.selected_epoch: int | None = None  # 1-based epoch of the kept model
        self.selected_loss: float | None = None  # its val/loss (the best_val tie-break)
        self.committed_on_disk = False  # best.ckpt is the model the last resume point's state selected
        self._unwritten: dict[str, Any] | None = None  # the selected model's checkpoint, not yet in best.ckpt
        self._unwritten_path = ""
        self._live = False  # _unwritten holds the module's own tensors (selected at this validation end)

    def replaces(self, epoch: int, acc: float, loss: float | None) -> bool:
        """Does the model after 1-based `epoch`, with this val/acc and val/loss, replace the kept one?"""
        kept = None if self.best_model_score is None else float(self.best_model_score)
        return replaces(self.select, self.select_epoch, epoch, acc, loss, kept, self.selected_loss)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        loss = trainer.callback_metrics.get(self.loss_key)
        decision = self.replaces(int(trainer.current_epoch) + 1, float(current),
                                 None if loss is None else float(loss))
        return trainer.strategy.reduce_boolean_decision(bool(decision))  # every process agrees (DDP)

    def _update_best_and_save(self, current: torch.Tensor, trainer: L.Trainer, monitor_candidates) -> None:
        loss = monitor_candidates.get(self.loss_key)
        self.selected_epoch = int(trainer.current_epoch) + 1
        self.selected_loss = None if loss is None else float(loss)
        super()._update_best_and_save(current, trainer, monitor_candidates)  # -> _save_checkpoint

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's save of the newly selected model, deferred: its checkpoint is taken now and written by
        `write_selected`. Only rank 0 writes, so only rank 0 keeps it; every rank knows one is pending."""
        checkpoint = checkpoint_contents(trainer, self.save_weights_only)
        self._unwritten = checkpoint if trainer.is_global_zero else {}
        self._unwritten_path, self._live = filepath, True
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._live:  # the selected model's tensors are about to move: keep a copy
            self._unwritten = _cpu_copy(self._unwritten)
            self._live = False

    def write_selected(self, trainer: L.Trainer) -> None:
        """Write the selected model's checkpoint to best.ckpt if it is not there yet (collective under DDP: every
        rank calls it, rank 0 writes). The model the last resume point committed to is kept as
        `best.committed.ckpt` until the next resume point (`commit`)."""
        if self._unwritten is None:
            return
        best, kept = Path(self._unwritten_path), Path(self.dirpath) / COMMITTED
        if self.committed_on_disk and trainer.is_global_zero and best.exists() and not kept.exists():
            verified.move(best, kept)  # the resume point's model, until the next resume point commits the new one
        self.committed_on_disk = False
        trainer.strategy.save_checkpoint(self._unwritten, best)  # rank 0's checkpoint IO (SafeCheckpointIO)
        trainer.strategy.barrier("RunLocalCheckpoint.write_selected")
        self._unwritten, self._live = None, False
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.write_selected(trainer)  # the fit's selection on disk before it is tested

    def _here(self, name: str | None) -> str:
        return str(Path(self.dirpath) / Path(name).name) if name else ""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        name = lambda p: Path(p).name if p else ""  # noqa: E731
        state.update(dirpath=".", best_model_path=name(self.best_model_path),
                     kth_best_model_path=name(self.kth_best_model_path), last_model_path=name(self.last_model_path),
                     best_k_models={name(k): v for k, v in self.best_k_models.items()},
                     select=self.select, selected_epoch=self.selected_epoch, selected_loss=self.selected_loss)
        return state

    def commit(self) -> None:
        """A resume point (last.ckpt, holding this tracker's state) was just written: best.ckpt is its model."""
        verified.remove(Path(self.dirpath) / COMMITTED)
        self.committed_on_disk = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.committed_on_disk = True  # resumed from a resume point, whose best.ckpt `resume_state` restored
        self.best_model_score = state_dict.get("best_model_score")
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        self.best_k_models = {self._here(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
        self.kth_best_model_path = self._here(state_dict.get("kth_best_model_path"))
        self.last_model_path = self._here(state_dict.get("last_model_path"))
        self.best_model_path = self._here(state_dict.get("best_model_path"))
        self.selected_epoch = state_dict.get("selected_epoch")
        self.selected_loss = state_dict.get("selected_loss")


class ResumePoint(Checkpoint):
    """Writes `last.ckpt` (full state: weights, optimizer, loops, callbacks) at epoch ends, at most every
    `every_s` seconds of the fit, and always after the last epoch, so a finished fit's `last.ckpt` is its end.

    `every_s=0` writes after every epoch (a killed run loses at most one epoch). Being a `Checkpoint`, Lightning
    runs it after the other callbacks and after the best-model tracker listed before it (which selects at validation
    end too, see `fit_and_test`), so the tracker state it saves is this epoch's. The tracker's selected model is
    written to best.ckpt just before (`RunLocalCheckpoint.write_selected`), so a resume finds it on disk.
    """

    def __init__(self, dirpath: Path, every_s: float = 0.0, tracker: RunLocalCheckpoint | None = None):
        self.path = Path(dirpath) / LAST
        self.every_s = float(every_s)
        self.tracker = tracker  # writes its best.ckpt before, and is told after, each resume point
        self._since = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        final = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        # rank 0's clock decides for every DDP rank: save_checkpoint is collective (a barrier) under DDP
        if trainer.strategy.broadcast(final or time.monotonic() - self._since >= self.every_s, src=0):
            if self.tracker is not None:
                self.tracker.write_selected(trainer)  # best.ckpt first: last.ckpt's selection names its model
            trainer.save_checkpoint(self.path)
            if self.tracker is not None and trainer.is_global_zero:
                self.tracker.commit()
            self._since = time.monotonic()


class MetricHistory(L.Callback):
    """Records `val/acc` (and loss) after every validation check, with the 1-based epoch it followed (`epoch`),
    for learning curves in result.json."""

    def __init__(self, keys: tuple[str, ...] = ("val/acc", "val/loss")):
        self.keys = keys
        self.history: dict[str, list[float]] = {k: [] for k in (*keys, "epoch")}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch-end hooks: the module logs its epoch metrics in its own on_validation_epoch_end
        if trainer.sanity_checking:
            return
        for k in self.keys:
            if k in trainer.callback_metrics:
                self.history[k].append(float(trainer.callback_metrics[k]))
        self.history["epoch"].append(int(trainer.current_epoch) + 1)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.history.setdefault("epoch", [])


@overrides_private("_get_summary_data")
class _BlockSummary(Summary):
    """Lightning's summary, one row per backbone block and the head, with trainable and frozen counts: trainable
    means trains at some point of the fit, as the module's plan says (the head always trains)."""

    def summarize(self):
        full = super().summarize()
        return {k: v for k, v in full.items()
                if k == "net.head" or (k.startswith(BACKBONE_PREFIX) and "." not in k[len(BACKBONE_PREFIX):])}

    def _counts(self) -> list[tuple[int, int]]:
        """(trainable, frozen) parameter counts per row."""
        out = []
        for row, layer in self._layer_summary.items():
            block = row[len(BACKBONE_PREFIX):] if row.startswith(BACKBONE_PREFIX) else None
            sizes = [(block is None or self._model.trains(f"{block}.{n}"), p.numel())
                     for n, p in layer._module.named_parameters()]
            out.append((sum(k for t, k in sizes if t), sum(k for t, k in sizes if not t)))
        return out

    @property
    def trainable_parameters(self) -> int:
        return sum(t for t, _ in self._counts())

    def _get_summary_data(self):
        arrays = super()._get_summary_data()
        trainable, frozen = zip(*self._counts()) if self._layer_summary else ((), ())
        arrays = [a for a in arrays if a[0] != "FLOPs"]
        arrays.insert(4, ("Trainable", [get_human_readable_count(n) for n in trainable]))
        arrays.insert(5, ("Frozen", [get_human_readable_count(n) for n in frozen]))
        return arrays


@overrides_private("_summary")
class BlockModelSummary(ModelSummary):
    """Prints total vs trainable parameters per block at fit start (Heaton's summary)."""

    def __init__(self):
        super().__init__(max_depth=-1)

    def _summary(self, trainer, pl_module):
        return _BlockSummary(pl_module, max_depth=-1)
