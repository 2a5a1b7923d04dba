"""One Lightning fit + test, shared by source pretraining and target training.

Every training run goes through `fit_and_test`: it continues a killed run from its `last.ckpt` (`checkpoints`),
keeps the selected model (`best.ckpt`, weights only: the best on val/acc by default, `train.select`) and tests it
once; the callbacks (`callbacks`) write
the resume state at most every `checkpoint.every_s` seconds, store the run fingerprint and RNG states in every
checkpoint, and stop a NaN/inf loss with `NonFiniteLossError` (the caller records status `failed`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from transferlab.compat import patch_result_metric_to
from transferlab.config import plain
from transferlab.training.callbacks import (
    LAST,
    BlockModelSummary,
    FailOnNonFinite,
    MetricHistory,
    ResumePoint,
    RunIdentity,
    RunLocalCheckpoint,
    ValidationSchedule,
)
from transferlab.training.checkpoints import (
    SafeCheckpointIO,
    check_selected_file,
    restore_train_order,
    resume_state,
)
from transferlab.training.options import cuda_check_without_failing_nvml
from transferlab.training.progress import ProgressLine

# Frozen blocks are in eval mode on purpose (BN statistics and dropout frozen with the weights).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


@dataclass
class FitOutcome:
    test: dict[str, float]
    best_val_acc: float
    best_ckpt: str
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: str | None = None
    steps: int | None = None  # optimizer steps done (Lightning's global_step, a resumed attempt's included)
    selected_epoch: int | None = None  # 1-based epoch of the tested model
    # history: "val/acc", "val/loss" per validation check and "epoch", the 1-based epoch each check followed


def own_processes():
    """The cluster environment of every Trainer transferlab builds: Lightning's own (`LightningEnvironment`: ranks
    from LOCAL_RANK, WORLD_SIZE, NODE_RANK and MASTER_*), never one it detects. transferlab decides a run's
    processes itself (run/ddp.py starts the ranks and sets those variables). Left to detect it, Lightning takes an
    srun task's SLURM_NTASKS and SLURM_PROCID for every process, so each rank of a DDP run started inside a SLURM
    job would train alone, as rank 0 of 1, into the same folder."""
    from lightning.pytorch.plugins.environments import LightningEnvironment

    return LightningEnvironment()


def trainer_plugins(kwargs: dict) -> list:
    """The plugins of a Trainer: the config's own (`+trainer.plugins=[...]`, popped from `kwargs`), checkpoints
    through `SafeCheckpointIO`, and `own_processes()`."""
    return [*(kwargs.pop("plugins", None) or []), SafeCheckpointIO(), own_processes()]


def fit_and_test(module: L.LightningModule, loaders, *, max_epochs: int, trainer_cfg, ckpt_dir: Path,
                 logger=False, callbacks=(), fingerprint: str | None = None, resume: bool = True,
                 resume_every_s: float = 0.0, select: str = "best_val", select_epoch: int | None = None,
                 val_epochs=None, test: bool = True) -> FitOutcome:
    """Train (continuing from `ckpt_dir/last.ckpt` when present), keep the model `select` picks (`best_val`,
    `last`, `fixed_epoch` with `select_epoch`: `callbacks.RunLocalCheckpoint`) among the validation checks, test
    it once. `val_epochs`: the 1-based epochs after which validation runs (training/budget.py; None: every epoch).
    `test=False`: no test (`test` in the outcome is {}): a tuned point's candidate, tested later
    (`test_checkpoint`): the selected one for the point's result, the others after that choice for hindsight only
    (run/tuning.py, run/hindsight.py).

    `best.ckpt` holds weights only (what the result needs), written with each resume point and at the fit's end;
    `last.ckpt` the full state, every `resume_every_s`.
    """
    train, val, test_loader = loaders
    module.train_log_epochs = frozenset(int(e) for e in val_epochs) if val_epochs else None
    patch_result_metric_to()
    cuda_check_without_failing_nvml()
    history = MetricHistory()
    # Selects at validation end, not Lightning's default train-epoch end (which comes after validation end): then
    # it runs before ResumePoint, and the tracker state in last.ckpt is this epoch's; ResumePoint has the tracker
    # write best.ckpt just before last.ckpt, so the two agree (RunLocalCheckpoint: when best.ckpt is written).
    ckpt = RunLocalCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                              save_weights_only=True, enable_version_counter=False, save_on_train_epoch_end=False,
                              select=select, select_epoch=select_epoch)
    kwargs = dict(plain(trainer_cfg))  # Lightning gets "cpu", not Accelerator.cpu
    plugins = trainer_plugins(kwargs)
    trainer = L.Trainer(max_epochs=int(max_epochs), logger=logger, default_root_dir=str(ckpt_dir),
                        callbacks=[ckpt, ResumePoint(ckpt_dir, resume_every_s, tracker=ckpt), history,
                                   BlockModelSummary(), RunIdentity(fingerprint), FailOnNonFinite(),
                                   ProgressLine(label=Path(ckpt_dir).parent.name or None),  # without a bar
                                   *([ValidationSchedule(val_epochs)] if val_epochs else []), *callbacks],
                        plugins=plugins, **kwargs)
    saved = resume_state(Path(ckpt_dir), fingerprint) if resume else None
    resume_from = str(Path(ckpt_dir) / LAST) if saved is not None else None
    if saved is not None:
        restore_train_order(train, saved)
    trainer.fit(module, train, val, ckpt_path=resume_from, weights_only=True)
    # Copy now: testing from the best checkpoint restores the callback state saved at that (earlier) epoch.
    curves = {k: list(v) for k, v in history.history.items()}
    steps, selected = int(trainer.global_step), ckpt.selected_epoch
    best = ckpt.best_model_path
    if best and Path(best).resolve().parent != Path(ckpt_dir).resolve():  # RunLocalCheckpoint rules this out
        raise RuntimeError(f"best checkpoint {best} is outside this run's checkpoint folder {ckpt_dir}")
    if resume_from is not None:  # a killed attempt may have left a later model in best.ckpt
        check_selected_file(Path(ckpt_dir), best, selected)
    # A best.ckpt that fails its checksum here raises CorruptFileError: the run fails, it is never tested.
    tested = trainer.test(module, test_loader, ckpt_path=best or None, verbose=False,
                          weights_only=True)[0] if test else {}
    return FitOutcome(
        test={k: float(v) for k, v in tested.items()},
        best_val_acc=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        best_ckpt=ckpt.best_model_path,
        epochs=int(trainer.current_epoch),
        history=curves,
        resumed_from=resume_from,
        steps=steps,
        selected_epoch=selected,
    )


def test_checkpoint(module: L.LightningModule, test_loader, *, ckpt: str | Path, trainer_cfg, logger=False
                    ) -> dict[str, float]:
    """Test the model in `ckpt` (a best.ckpt `fit_and_test` wrote, checksum verified on loading) once, as
    `fit_and_test` tests it: `trainer.test` loading the file into `module`. For a fit that ran with `test=False`
    (a tuned point's selected candidate, run/tuning.py)."""
    patch_result_metric_to()
    cuda_check_without_failing_nvml()
    kwargs = dict(plain(trainer_cfg))
    plugins = trainer_plugins(kwargs)
    kwargs.setdefault("enable_checkpointing", False)  # a test writes no checkpoint
    kwargs.setdefault("enable_model_summary", False)
    trainer = L.Trainer(logger=logger, plugins=plugins, **kwargs)
    tested = trainer.test(module, test_loader, ckpt_path=str(ckpt), verbose=False, weights_only=True)[0]
    return {k: float(v) for k, v in tested.items()}
