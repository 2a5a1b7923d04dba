"""The network every run trains: transferred backbone blocks + a new head.

Trainability is per parameter (`requires_grad`); `transfer.py` decides it, this module only enforces the modes
that go with it. Blocks with no trainable parameter stay in eval mode whatever Lightning does (`train()` is
overridden, and strategies re-apply it every epoch), so BatchNorm statistics and dropout are frozen with the
weights: frozen means byte-identical. The BN policy decides BatchNorm layers inside blocks that do train:
`frozen` (default) keeps a BN layer whose own affine parameters are frozen in eval mode (e.g. `trainable=
["*conv*"]`); `train` lets every BN layer in a training block re-estimate its statistics.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.backbones.base import BlockBackbone

# Source and target checkpoints (LightningModule state dicts) both store the backbone under this prefix.
BACKBONE_PREFIX = "net.backbone.blocks."
BN_POLICIES = ("frozen", "train")


def make_head(in_shape: tuple[int, ...], pool: str, num_classes: int) -> nn.Sequential:
    """A linear classifier whose input size is computed from the block output shape."""
    if len(in_shape) == 3 and pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_shape[0], num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


class TransferNet(nn.Module):
    def __init__(self, backbone: BlockBackbone, num_classes: int, frozen: Iterable[str] = (), bn: str = "frozen"):
        super().__init__()
        if bn not in BN_POLICIES:
            raise ValueError(f"bn={bn!r}: one of {BN_POLICIES}")
        self.backbone = backbone
        self.head = make_head(backbone.output_shape(len(backbone)), backbone.pool, num_classes)
        self.bn = bn
        self.freeze(frozen)

    @property
    def frozen(self) -> tuple[str, ...]:
        """Blocks with no trainable parameter (they run in eval mode)."""
        return tuple(n for n, b in self.backbone.blocks.items() if not any(p.requires_grad for p in b.parameters()))

    def backbone_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(block-relative name such as 'layer1.0.bn1.weight', parameter)."""
        return self.backbone.blocks.named_parameters()

    def set_trainable(self, trains: Callable[[str], bool]) -> None:
        """Set `requires_grad` of every backbone parameter from a predicate over its name; re-apply modes."""
        for name, p in self.backbone_parameters():
            p.requires_grad_(bool(trains(name)))
        self.train(self.training)

    def freeze(self, names: Iterable[str]) -> None:
        """Freeze whole blocks: no gradients, eval mode from now on (re-applied by `train`)."""
        for name in names:
            self.backbone.blocks[name].requires_grad_(False)
        self.train(self.training)

    def unfreeze(self, names: Iterable[str]) -> None:
        for name in names:
            self.backbone.blocks[name].requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferNet":
        super().train(mode)
        if not mode:
            return self
        frozen = set(self.frozen)
        for name, block in self.backbone.blocks.items():
            if name in frozen:
                block.eval()
            elif self.bn == "frozen":
                for m in block.modules():
                    params = list(m.parameters(recurse=False))
                    if isinstance(m, _BatchNorm) and params and not any(p.requires_grad for p in params):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def block_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of one backbone block out of a LightningModule state dict."""
    prefix = f"{BACKBONE_PREFIX}{name}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
