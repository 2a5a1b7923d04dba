"""The LightningModule: a TransferNet, cross-entropy, torchmetrics accuracy, an optimizer over trainable params only.

What trains comes from the plan (`trains`), never from `requires_grad`; without a plan (source pretraining) every
parameter trains. The test split, measured once on the tested model, also gets the metrics that see class
imbalance (balanced accuracy, macro-F1, AUROC) and the class counts of the truth and of the predictions.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassStatScores,
)

from transferlab.training import optim as optim_nodes
from transferlab.transfer.l2sp import L2SP
from transferlab.transfer.network import TransferNet
from transferlab.transfer.plan import TransferPlan

STAGES = ("train", "val", "test")


class TransferModule(L.LightningModule):
    def __init__(self, net: TransferNet, num_classes: int, optim: dict[str, Any], plan: TransferPlan | None = None,
                 input_block: int = 0):
        """`input_block`: where the batches enter the net, 0 for the task's inputs, d for cached outputs of the
        frozen blocks [0, d) (`store.feature_cache`); the net and its checkpoints stay whole either way."""
        super().__init__()
        self.net = net
        self.optim = dict(optim)
        self.plan = plan
        self.input_block = int(input_block)
        self.l2sp = L2SP(plan, net.backbone_parameters()) if plan is not None else None  # transfer/l2sp.py
        self.loss = nn.CrossEntropyLoss()
        # Per stage: accuracy and mean loss accumulate over the epoch (`update`, not `forward`) and are logged once
        # at its end: per batch, `self.log` (Lightning's result collection) and metric `forward` cost more than a
        # small sweep point's training steps (docs/speed.md).
        for stage in STAGES:  # train_acc, train_mean_loss, val_acc, ...
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=num_classes, average="micro"))
            setattr(self, f"{stage}_mean_loss", MeanMetric())
        self.train_l2sp = MeanMetric() if self.l2sp else None
        # Test only (once per run, so no cost per training step): F1 and the per-class counts share one state
        # (a compute group); AUROC keeps every test score (exact, thresholds=None).
        self.test_classes = MetricCollection({"macro_f1": MulticlassF1Score(num_classes, average="macro"),
                                              "stats": MulticlassStatScores(num_classes, average=None)})
        self.test_auroc = BinaryAUROC() if num_classes == 2 else MulticlassAUROC(num_classes, average="macro")
        self.test_counts: dict[str, list[int]] = {}  # "test/class_counts", "test/pred_counts" after testing
        # 1-based epochs after which train/* is logged: the validation checks (fit.fit_and_test sets them from the
        # schedule, training/budget.py); None: every epoch. In between, the epoch metrics keep accumulating.
        self.train_log_epochs: frozenset[int] | None = None

    def trains(self, name: str) -> bool:
        """Does this backbone parameter (block-relative, 'layer1.0.bn1.weight') train at some point of the fit?"""
        return self.plan is None or self.plan.trains(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, start=self.input_block)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a batch; its accuracy and loss accumulate into the stage's epoch metrics."""
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        getattr(self, f"{stage}_acc").update(logits.detach(), y)
        getattr(self, f"{stage}_mean_loss").update(loss.detach(), weight=len(y))
        return loss, logits

    def _log_epoch(self, stage: str) -> None:
        """`<stage>/loss` (example-weighted mean) and `<stage>/acc` over the epoch, then reset for the next one."""
        acc, loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_mean_loss")
        if not acc.update_called:
            return
        self.log(f"{stage}/loss", loss.compute(), prog_bar=stage != "train")
        self.log(f"{stage}/acc", acc.compute(), prog_bar=True)
        acc.reset()
        loss.reset()

    def training_step(self, batch, batch_idx):
        loss, _ = self._step(batch, "train")
        if self.l2sp:
            penalty = self.l2sp.penalty(self.net.backbone_parameters(), self.current_epoch).to(loss.device)
            self.train_l2sp.update(penalty.detach())
            loss = loss + penalty
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        _, logits = self._step(batch, "test")
        logits, y = logits.detach(), batch[1]
        probs = logits.float().softmax(-1)
        self.test_classes.update(logits, y)
        self.test_auroc.update(probs[:, 1] if isinstance(self.test_auroc, BinaryAUROC) else probs, y)

    def on_train_epoch_end(self) -> None:
        """Logs train/loss and train/acc over the training since the previous check (`train_log_epochs`), not
        after every epoch: on one-step epochs under a step floor, computing, logging and resetting them every epoch
        was a large part of the per-epoch cost that the validation schedule exists to remove, and a curve of
        one-batch values says less than the mean over the steps between two checks."""
        if self.train_log_epochs is not None and int(self.current_epoch) + 1 not in self.train_log_epochs:
            return
        self._log_epoch("train")
        if self.train_l2sp is not None and self.train_l2sp.update_called:
            self.log("train/l2sp", self.train_l2sp.compute())
            self.train_l2sp.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self._log_test_classes()

    def _log_test_classes(self) -> None:
        """`test/balanced_acc`, `test/macro_f1`, `test/auroc` and `test_counts`, then reset.

        Balanced accuracy is the mean recall over the classes present in the test split (sklearn's
        `balanced_accuracy_score`): torchmetrics' macro recall would also average in, as 0, a class that is only
        predicted. AUROC is left out when a class is absent from the test split, where it is undefined."""
        if not self.test_auroc.update_called:
            return
        out = self.test_classes.compute()
        tp, fp, support = out["stats"][:, 0], out["stats"][:, 1], out["stats"][:, 4]  # tp, fp, tn, fn, support
        present = support > 0
        self.log("test/balanced_acc", (tp[present].float() / support[present]).mean())
        self.log("test/macro_f1", out["macro_f1"])
        if bool(present.all()):
            self.log("test/auroc", self.test_auroc.compute())
        self.test_counts = {"test/class_counts": support.tolist(), "test/pred_counts": (tp + fp).tolist()}
        self.test_classes.reset()
        self.test_auroc.reset()

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups per block that trains at some point of the fit (plus the head), built once.

        Parameters a strategy keeps frozen for now are in their group from the start: their grad stays None, so
        the optimizer (and weight decay) skips them until they unfreeze, and the group count never changes; LR
        schedulers and resumed optimizer states stay valid (Lightning #12141, #6891). `lr_decay`=gamma gives the
        block at depth d from the top lr * gamma**d (ULMFiT's 1/2.6, timm's layer decay); the head is depth 0.
        Each block's parameters split by weight decay, all at the block's rate: `<block>` gets `weight_decay`;
        `<block>.no_decay` holds its 1-D parameters (biases, norm weights) and a transformer's token embeddings
        (class token, position embeddings, VPT prompts: `BlockBackbone.no_weight_decay`), which get none unless
        `decay_norm_and_bias` (as timm: under BitFit or `@norm` they are all that trains, and decay would only
        pull them toward zero); `<block>.l2sp` holds transferred parameters under L2-SP, whose penalty replaces
        weight decay (Li et al.).
        """
        lr, wd = float(self.optim["lr"]), float(self.optim["weight_decay"])
        # pretrain has no lr_decay key: the source network trains as one, layer-wise rates are a transfer setting
        gamma = float(self.optim["lr_decay"]) if "lr_decay" in self.optim else 1.0
        decay_1d = bool(self.optim["decay_norm_and_bias"])
        by_block = {"head": [(f"head.{n}", p) for n, p in self.net.head.named_parameters()]}  # it always trains
        no_decay = self.net.backbone.no_weight_decay  # a ViT's embeddings, as timm's no_weight_decay()
        for name, p in self.net.backbone_parameters():
            if self.trains(name):
                by_block.setdefault(name.split(".", 1)[0], []).append((name, p))
        groups = []
        for depth, block in enumerate(["head", *reversed(self.net.backbone.block_names)]):
            split: dict[str, list[nn.Parameter]] = {block: [], f"{block}.no_decay": [], f"{block}.l2sp": []}
            for name, p in by_block.get(block, []):
                if self.l2sp and self.l2sp.anchored(name):
                    kind = ".l2sp"
                else:
                    flat = p.ndim <= 1 or name in no_decay  # token embeddings (class token, position, prompts)
                    kind = ".no_decay" if flat and not decay_1d else ""
                split[block + kind].append(p)
            for group, params in split.items():
                if params:
                    groups.append({"name": group, "params": params, "lr": lr * gamma ** depth,
                                   "weight_decay": wd if group == block else 0.0})
        return groups

    def configure_optimizers(self):
        """The config's optimizer over `param_groups` and its schedule (training/optim.py)."""
        return optim_nodes.configure(self.optim, self.param_groups())
