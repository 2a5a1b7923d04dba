"""Opt-in GPU speed options for target training: channels_last memory format and torch.compile.

Both are off by default (`train.channels_last`, `train.compile`); mixed precision is Lightning's own
`trainer.precision=bf16-mixed`. They change speed, not what is trained: checkpoints keep the same keys.
"""

from __future__ import annotations

import torch


def apply(module, train_cfg):
    """Return the module to hand to the Trainer (compiled when asked; channels_last applied in place)."""
    if bool(train_cfg.get("channels_last", False)):
        module.to(memory_format=torch.channels_last)
    if bool(train_cfg.get("compile", False)):
        # Compile the LightningModule, not the inner net: parameter names (net.backbone.blocks.*) stay unchanged.
        return torch.compile(module)
    return module


PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


def check(cfg) -> list[str]:
    """Problems with the speed options, one line each, before anything runs (Lightning would only complain when
    the Trainer is built, after the source model was pretrained)."""
    from transferlab.errors import ConfigError, problem
    from transferlab.store import feature_cache

    out = []
    try:
        feature_cache.check_config(cfg, task=None)
    except ConfigError as e:
        out += e.problems
    for key in ("channels_last", "compile"):
        if not isinstance(cfg.train.get(key, False), bool):
            out.append(problem(f"train.{key}", cfg.train.get(key), "true or false"))
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        out.append(problem("trainer.precision", cfg.trainer.get("precision"), f"one of {list(PRECISIONS)}"))
    return out
