"""Opt-in GPU speed options for target training: channels_last memory format and torch.compile.

Both are off by default (`train.channels_last`, `train.compile`); mixed precision is Lightning's own
`trainer.precision=bf16-mixed`. They change speed, not what is trained: checkpoints keep the same keys.
"""

from __future__ import annotations

import torch


def prepare(module, train_cfg):
    """Return the module to hand to the Trainer (compiled when asked; channels_last applied in place)."""
    if bool(train_cfg.get("channels_last", False)):
        module.to(memory_format=torch.channels_last)
    if bool(train_cfg.get("compile", False)):
        # Compile the LightningModule, not the inner net: parameter names (net.backbone.blocks.*) stay unchanged.
        return torch.compile(module)
    return module
