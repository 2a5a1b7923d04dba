"""`transfer=scratch_long`: the scratch baseline at the compute of pretraining + fine-tuning.

He, Girshick and Dollár 2019 ("Rethinking ImageNet Pre-training", ICCV) showed that much of what pretraining
seems to buy is training time: a network trained from scratch for as long as pretraining plus fine-tuning together
often catches up. So "transfer beats scratch" is only a claim about transfer when scratch had the same compute.
This arm copies nothing (it is a baseline: cut 0, everything trained from random weights, no `transfer.*` override
of the other arms reaches it in a sweep) and trains for the optimizer steps the transfer arms' source model was
pretrained with, added to the steps the plain scratch arm gets at the same n (`training/budget.py`).

Compute is counted in optimizer steps, as the budget is: the source pretraining runs `pretrain.max_epochs` epochs
of steps_per_epoch(source training subset, `pretrain.batch_size`) steps each, with no early stop, so its steps
follow from the config and the source task alone and are known before anything trains (a source model already
in the cache has the same count). Not compute in FLOPs: one step of a batch of 64 source images and one of 32
target images count the same. With `source=none` (the backbone's own weights, e.g. ImageNet) the pretraining's
steps are unknown to the framework: a config error.
"""

from __future__ import annotations

from typing import Any, Mapping

from transferlab.training.budget import steps_per_epoch


def source_steps(pretrain: Mapping[str, Any], n_source_train: int, accumulate: int = 1) -> int:
    """Optimizer steps of the source pretraining: `pretrain.max_epochs` epochs over the source's training subset
    (`n_source_train` examples) in batches of `pretrain.batch_size`."""
    return int(pretrain["max_epochs"]) * steps_per_epoch(n_source_train, int(pretrain["batch_size"]), accumulate)
