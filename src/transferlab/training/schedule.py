"""Fine-tuning strategies as Lightning callbacks: what trains in each epoch, applied at every epoch start.

The schedule itself lives in the TransferPlan (`plan.unfreeze_epoch`): `fixed` trains its set from epoch 0,
`gradual` (ULMFiT) starts with the head alone and releases one block from the top every `unfreeze_every`
epochs, `lp_ft` (Kumar et al. 2022) trains the head alone for `lp_epochs`, then the whole set. This callback only
applies it: `requires_grad` per parameter, then the BN policy's modes (frozen blocks back in eval mode).

Why not Lightning's BaseFinetuning: its `freeze` puts BatchNorm in a mode of its own (track_running_stats off,
Lightning #15062), and `unfreeze_and_add_param_group` adds optimizer groups mid-fit, which breaks schedulers
(#12141) and resuming (#6891). Here every parameter that will ever train sits in the optimizer from the start
(grad None until released, so the optimizer skips it), and the epoch -> set map is a pure function of the epoch,
so a run resumed at epoch e gets exactly the set of epoch e.
"""

from __future__ import annotations

import logging

import lightning as L

from transferlab.transfer.plan import TransferPlan, apply_epoch

log = logging.getLogger(__name__)


class PlanSchedule(L.Callback):
    """Applies the plan's trainable set for the current epoch; logs which blocks train."""

    def __init__(self, plan: TransferPlan):
        self.plan = plan
        self.history: list[tuple[int, tuple[str, ...]]] = []  # (epoch, training blocks) whenever the set changes

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
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


def strategy_callbacks(plan: TransferPlan) -> list[L.Callback]:
    """The callbacks a target fit needs for this plan (always one: it also enforces the BN policy each epoch)."""
    return [PlanSchedule(plan)]
