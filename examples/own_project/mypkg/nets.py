"""An own backbone: a plain torch module that satisfies transferlab's backbone protocol.

transferlab calls `TinyConvNet(input_shape=..., **backbone.kwargs)` and reads two things back:
`blocks`, the ordered named blocks (cut k keeps the first k, `transfer.freeze=f` freezes the first f), and
`input_shape`, the per-example input it takes. Nothing here imports transferlab.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class TinyConvNet(nn.Module):
    """conv1 (conv-BN-ReLU), conv2 (conv-BN-ReLU-maxpool), fc (flatten-linear-ReLU)."""

    pool = "flatten"  # how transferlab's head reads the last kept block (flatten | avg | cls | mean)

    def __init__(self, input_shape: tuple[int, ...], width: int = 8, hidden: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.input_shape = tuple(input_shape)
        self.blocks = nn.ModuleDict(OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
            conv2=nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                nn.MaxPool2d(2)),
            fc=nn.Sequential(nn.Flatten(), nn.Linear(width * (h // 2) * (w // 2), hidden), nn.ReLU()),
        ))

    def forward(self, x):  # transferlab runs the blocks itself; a forward keeps the module usable on its own
        for block in self.blocks.values():
            x = block(x)
        return x
