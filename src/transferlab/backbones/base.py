"""The one backbone abstraction: an ordered list of named blocks with a known output shape at every cut.

Cut k keeps blocks [0, k); the head's input size is computed from `output_shape(k)`, never hand-entered.
A backbone knows nothing about freezing or transfer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn


class BlockBackbone(nn.Module):
    """Named blocks applied in order.

    `pool` tells a head how to read a block's output: "flatten" (small inputs: keep spatial layout) or
    "avg" (global average pool, as ResNets do).
    """

    def __init__(self, blocks: Iterable[tuple[str, nn.Module]], input_shape: tuple[int, ...], pool: str = "flatten"):
        super().__init__()
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        self.input_shape = tuple(int(s) for s in input_shape)
        self.pool = pool
        self._shapes: list[tuple[int, ...]] | None = None

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks.values()):
            if upto is not None and i >= upto:
                break
            x = block(x)
        return x

    def output_shapes(self) -> list[tuple[int, ...]]:
        """shapes[k] = per-example shape after the first k blocks (shapes[0] is the input shape)."""
        if self._shapes is None:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                x = torch.zeros((1, *self.input_shape))
                shapes = [tuple(x.shape[1:])]
                for block in self.blocks.values():
                    x = block(x)
                    shapes.append(tuple(x.shape[1:]))
            self.train(was_training)
            self._shapes = shapes
        return self._shapes

    def output_shape(self, cut: int) -> tuple[int, ...]:
        return self.output_shapes()[cut]

    def truncate(self, cut: int) -> "BlockBackbone":
        """Drop blocks [cut, N) in place (their shapes stay known)."""
        shapes = self.output_shapes()[: cut + 1]
        for name in self.block_names[cut:]:
            del self.blocks[name]
        self._shapes = shapes
        return self
