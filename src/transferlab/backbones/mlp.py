"""Dense blocks on flattened inputs (Heaton's 50-25 net is hidden=[50, 25])."""

from __future__ import annotations

import math

from torch import nn

from transferlab.backbones.base import BlockBackbone


def build(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    features = math.prod(input_shape)
    blocks = []
    for j, width in enumerate(cfg.hidden, start=1):
        layers = [nn.Flatten()] if j == 1 else []
        layers += [nn.Linear(features, int(width)), nn.ReLU(inplace=True)]
        if float(cfg.get("dropout", 0.0)) > 0:
            layers.append(nn.Dropout(float(cfg.dropout)))
        blocks.append((f"fc{j}", nn.Sequential(*layers)))
        features = int(width)
    return BlockBackbone(blocks, input_shape, pool="flatten")
