"""A small conv net for small images: conv blocks (conv-BN-ReLU[-maxpool]) then dense blocks."""

from __future__ import annotations

import math

from torch import nn

from transferlab.backbones.base import BlockBackbone
from transferlab.backbones.mlp import dense_blocks


def build(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn needs C x H x W inputs, got {input_shape}")
    c, h, w = input_shape
    blocks = []
    for i, width in enumerate(cfg.channels, start=1):
        layers = [nn.Conv2d(c, int(width), 3, padding=1, bias=False), nn.BatchNorm2d(int(width)), nn.ReLU(inplace=True)]
        if min(h, w) > 2:  # pool while the map is larger than 2x2
            layers.append(nn.MaxPool2d(2))
            h, w = math.floor(h / 2), math.floor(w / 2)
        blocks.append((f"conv{i}", nn.Sequential(*layers)))
        c = int(width)
    blocks += dense_blocks(c * h * w, cfg.hidden, float(cfg.dropout))
    return BlockBackbone(blocks, input_shape, pool="flatten")
