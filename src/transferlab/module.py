"""The LightningModule: a TransferNet, cross-entropy, torchmetrics accuracy, an optimizer over trainable params only."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transferlab.network import TransferNet

OPTIMIZERS = ("adamw", "adam", "sgd")


class TransferModule(L.LightningModule):
    def __init__(self, net: TransferNet, num_classes: int, optim: dict[str, Any]):
        super().__init__()
        self.net = net
        self.optim = dict(optim)
        self.loss = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        metric(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y), prog_bar=not on_step)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, batch_size=len(y), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def configure_optimizers(self):
        name = self.optim.get("optimizer", "adamw")
        params = self.trainable_parameters()
        lr, wd = float(self.optim["lr"]), float(self.optim.get("weight_decay", 0.0))
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(self.optim.get("momentum", 0.9)))
        raise ValueError(f"unknown optimizer {name!r}; one of {OPTIMIZERS}")
