"""The network every run trains: transferred backbone blocks + a new head.

Frozen blocks stay in eval mode whatever Lightning does (`train()` is overridden), so BatchNorm statistics and
dropout are frozen with the weights: frozen means frozen.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from transferlab.backbones.base import BlockBackbone

# Source and target checkpoints (LightningModule state dicts) both store the backbone under this prefix.
BACKBONE_PREFIX = "net.backbone.blocks."


def make_head(in_shape: tuple[int, ...], pool: str, num_classes: int) -> nn.Sequential:
    """A linear classifier whose input size is computed from the block output shape."""
    if len(in_shape) == 3 and pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_shape[0], num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


class TransferNet(nn.Module):
    def __init__(self, backbone: BlockBackbone, num_classes: int, frozen: Iterable[str] = ()):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(backbone.output_shape(len(backbone)), backbone.pool, num_classes)
        self.frozen: tuple[str, ...] = ()
        self.freeze(frozen)

    def freeze(self, names: Iterable[str]) -> None:
        """Freeze whole blocks: no gradients, eval mode from now on (re-applied by `train`)."""
        self.frozen = tuple(dict.fromkeys([*self.frozen, *names]))
        for name in self.frozen:
            block = self.backbone.blocks[name]
            block.requires_grad_(False)
            block.eval()

    def unfreeze(self, names: Iterable[str]) -> None:
        names = set(names)
        for name in names:
            self.backbone.blocks[name].requires_grad_(True)
        self.frozen = tuple(n for n in self.frozen if n not in names)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferNet":
        super().train(mode)
        for name in self.frozen:
            self.backbone.blocks[name].eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def block_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of one backbone block out of a LightningModule state dict."""
    prefix = f"{BACKBONE_PREFIX}{name}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
