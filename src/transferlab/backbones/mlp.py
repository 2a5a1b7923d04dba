"""Dense blocks on flattened inputs (Heaton's 50-25 net is hidden=[50, 25])."""

from __future__ import annotations

import math

from torch import nn

from transferlab.backbones.base import BlockBackbone


def dense_blocks(features: int, hidden, dropout: float) -> list[tuple[str, nn.Module]]:
    """fc1..fcN (Linear-ReLU[-Dropout]); fc1 flattens its input. Shared by mlp and small_cnn's top."""
    blocks = []
    for j, width in enumerate(hidden, start=1):
        layers = [nn.Flatten()] if j == 1 else []
        layers += [nn.Linear(features, int(width)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        blocks.append((f"fc{j}", nn.Sequential(*layers)))
        features = int(width)
    return blocks


def build(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    blocks = dense_blocks(math.prod(input_shape), cfg.hidden, float(cfg.dropout))
    return BlockBackbone(blocks, input_shape, pool="flatten")
