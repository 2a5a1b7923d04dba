"""The network every run trains: transferred backbone blocks + a new head.

Trainability is per parameter and decided by the plan (`transfer/plan.py`); the net only receives it, as a
predicate over parameter names (`set_trainable`), and never reads it back from `requires_grad`, which it sets
because autograd needs it. From that set it enforces the modes that go with it: blocks with no parameter training
now stay in eval mode whatever Lightning does (`train()` is overridden, and strategies re-apply it every epoch),
so BatchNorm statistics and dropout are frozen with the weights: frozen means byte-identical. The BN policy
decides BatchNorm layers inside blocks that do train: `frozen` (default) keeps a BN layer whose own affine
parameters are frozen in eval mode (e.g. `trainable=["*conv*"]`); `train` lets every BN layer in a training block
re-estimate its statistics.

`forward(x, start)` runs blocks [start, N) and the head, so a fit on cached outputs of a frozen prefix enters at
block `start` while the net (and its state dict) stays whole. `start = head_input_start` (N + 1) enters past the
head's parameter-free reduction (token pool, average pool, flatten): a linear probe on a frozen transformer then
trains on one pooled vector per example instead of its whole token tensor.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.backbones.base import BlockBackbone
from transferlab.config import BNPolicy

# Source and target checkpoints (LightningModule state dicts) both store the backbone under this prefix.
BACKBONE_PREFIX = "net.backbone.blocks."
BN_POLICIES = tuple(BNPolicy.values())  # the schema's choices (transferlab.config)


class TokenPool(nn.Module):
    """Tokens [N, T, D] -> [N, D]: the class token (`cls`, token 0) or the mean of the tokens after the first
    `skip` (`mean`: the patch tokens, past class, register and prompt tokens)."""

    def __init__(self, kind: str, skip: int = 0):
        super().__init__()
        if kind not in ("cls", "mean"):
            raise ValueError(f"token pool {kind!r}: cls or mean")
        self.kind, self.skip = kind, int(skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.kind == "cls" else x[:, self.skip:].mean(dim=1)

    def extra_repr(self) -> str:
        return f"{self.kind}" + (f", skip={self.skip}" if self.kind == "mean" else "")


def make_head(in_shape: tuple[int, ...], pool: str, num_classes: int, prefix_tokens: int = 0) -> nn.Sequential:
    """A linear classifier whose input size is computed from the block output shape; token outputs [T, D] are
    read by `pool` (cls | mean, skipping `prefix_tokens`)."""
    if len(in_shape) == 2 and pool in ("cls", "mean"):
        return nn.Sequential(TokenPool(pool, prefix_tokens), nn.Linear(in_shape[-1], num_classes))
    if len(in_shape) == 3 and pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_shape[0], num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


class TransferNet(nn.Module):
    def __init__(self, backbone: BlockBackbone, num_classes: int, bn: str = "frozen"):
        super().__init__()
        if bn not in BN_POLICIES:
            raise ValueError(f"bn={bn!r}: one of {BN_POLICIES}")
        self.backbone = backbone
        self.head = make_head(backbone.output_shape(len(backbone)), backbone.pool, num_classes,
                              prefix_tokens=backbone.prefix_tokens)
        self.bn = bn
        self._training: frozenset[str] = frozenset()
        self.set_trainable(lambda name: True)  # until told otherwise (source pretraining): everything trains

    @property
    def frozen(self) -> tuple[str, ...]:
        """Blocks none of whose parameters train now, by the last `set_trainable` (they run in eval mode)."""
        return tuple(n for n, b in self.backbone.blocks.items()
                     if self._training.isdisjoint(p for p, _ in b.named_parameters(prefix=n)))

    def backbone_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(block-relative name such as 'layer1.0.bn1.weight', parameter)."""
        return self.backbone.blocks.named_parameters()

    def set_trainable(self, trains: Callable[[str], bool]) -> None:
        """Which backbone parameters train now: a predicate over block-relative names (the plan's, for the current
        epoch). Kept as the set of names it accepts, which decides the modes; `requires_grad` is set from it for
        autograd only. The head always trains."""
        self._training = frozenset(name for name, _ in self.backbone_parameters() if trains(name))
        for name, p in self.backbone_parameters():
            p.requires_grad_(name in self._training)
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
                for path, m in block.named_modules(prefix=name):
                    own = [p for p, _ in m.named_parameters(prefix=path, recurse=False)]
                    if isinstance(m, _BatchNorm) and own and self._training.isdisjoint(own):
                        m.eval()
        return self

    @property
    def head_input_start(self) -> int:
        """The `start` at which `forward` takes the head's input: what a pooled feature cache holds."""
        return len(self.backbone) + 1

    def head_reduction(self) -> nn.Module | None:
        """The head's layers before its Linear (token pool, average pool, flatten) when they hold no parameter
        and no buffer, so their output over a fully frozen backbone is as fixed as the backbone's; else None."""
        reduce = self.head[:-1]
        if len(reduce) == 0 or next(reduce.parameters(), None) is not None or next(reduce.buffers(), None) is not None:
            return None
        return reduce

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Blocks [start, N) then the head; `x` is the input (start=0), the output of block start-1, or the head's
        input (start = head_input_start: the pooled features of the whole backbone)."""
        if start == self.head_input_start:
            return self.head[-1](x)
        return self.head(self.backbone(x, start))


def block_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of one backbone block out of a LightningModule state dict."""
    prefix = f"{BACKBONE_PREFIX}{name}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
