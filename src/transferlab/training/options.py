"""Opt-in GPU speed options for target training: channels_last memory format and torch.compile.

Both are off by default (`train.channels_last`, `train.compile`); mixed precision is Lightning's own
`trainer.precision=bf16-mixed`. They change speed, not what is trained: checkpoints keep the same keys.
"""

from __future__ import annotations

import os

import torch

from transferlab.errors import Problem, problem


def apply(module, train_cfg):
    """Return the module to hand to the Trainer (compiled when asked; channels_last applied in place)."""
    if train_cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    if train_cfg.compile:
        # Compile the LightningModule, not the inner net: parameter names (net.backbone.blocks.*) stay unchanged.
        return torch.compile(module)
    return module


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def cuda_check_without_failing_nvml() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 at import (a CUDA check that does not poison forks), so every
    `torch.cuda.is_available()` first loads NVML through ctypes. Where NVML cannot be loaded (no NVIDIA driver:
    CPU machines) that load fails again on every call and torch falls back to the CUDA runtime's device count,
    the same answer the default check gives. torch asks on every optimizer step (`torch.optim`'s graph-capture
    check), so a CPU run paid a failing library load per step. Then (only then) the default check is switched
    back on: same answer, same fork behaviour, no library load. With a loadable NVML nothing changes."""
    if os.environ.get(NVML_CHECK) != "1" or not torch.cuda._is_compiled() or torch.cuda.is_initialized():
        return
    try:
        nvml_failed = torch.cuda._device_count_nvml() < 0
    except Exception:  # a private torch helper: if it is gone or changed, keep Lightning's setting
        return
    if nvml_failed:
        os.environ[NVML_CHECK] = "0"


PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


def check(cfg) -> list[Problem]:
    """`trainer.precision` and `train.feature_cache_max_gb` > 0, before anything runs (Lightning would only
    complain about the precision when the Trainer is built, after the source model was pretrained). A closed
    choice the schema cannot hold as an enum: its values are no identifiers. The other speed options' types and
    choices are the schema's."""
    out = []
    if str(cfg.trainer.precision) not in PRECISIONS:
        out.append(problem("trainer.precision", cfg.trainer.precision, f"one of {list(PRECISIONS)}"))
    limit = cfg.train.get("feature_cache_max_gb")
    if limit is not None and not limit > 0:
        out.append(problem("train.feature_cache_max_gb", limit, "a number of GiB > 0 (the most cached features "
                                                                "may take)"))
    return out
