"""What the copied blocks [0, cut) hold when they are not the source's weights: two control arms
(`transfer.init`), the baselines a reviewer asks for before crediting transfer with a gain.

- `source` (default): the source model's weights and BatchNorm statistics, copied (`plan.build_target_net`).
- `meanvar`: Raghu, Zhang, Kleinberg and Bengio 2019 ("Transfusion: Understanding Transfer Learning for Medical
  Imaging", NeurIPS), "Mean Var Init": every parameter tensor of the copied blocks is replaced by random values
  with that tensor's mean and variance in the source model. They found much of the speed-up of ImageNet
  pretraining on medical images came from this weight scaling alone; the arm separates feature reuse from the
  scale of the weights. Here the draw is standardised before scaling, (z - mean z) / std z, so each tensor's mean
  and standard deviation match the source's exactly, not just in expectation (an iid draw misses them by a
  sampling error of order 1/sqrt(size), large for a bias of a few dozen entries). A tensor with fewer than two
  entries keeps its source value (it has no variance).
- `random_frozen`: Yosinski, Clune, Bengio and Lipson 2014 ("How transferable are features in deep neural
  networks?", NeurIPS, section 4.3, random weights): the copied blocks keep the target network's fresh random
  initialisation (seeded by `seed`: the scratch arm's weights at the same seed) and stay frozen all fit, the head
  and any blocks above the cut train. The gain of a frozen transferred prefix over this arm is what its learned
  features are worth; `transfer/plan.py` requires every copied block frozen (`transfer.freeze=all`).

BatchNorm statistics of re-initialised blocks (both arms): re-estimated on the run's training subset before
training (`recalibrate`: one pass, no gradient, a cumulative average; training inputs only, never val or test).
The source's statistics describe the source weights' activations and the init's (mean 0, variance 1) describe
none, so without this frozen random blocks would pass unnormalised activations upward and the arm would measure
that scale mismatch rather than the absence of learned features. The choice is conservative for "transfer beats
the control": the control gets statistics of the target data, transferred blocks keep the source's. Blocks that
train update their statistics as usual from there; frozen ones keep them, byte-identical, for the whole fit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.backbones.base import BlockBackbone

if TYPE_CHECKING:  # the plan calls in here; it is read, never built
    from transferlab.transfer.plan import TransferPlan

log = logging.getLogger(__name__)

SOURCE, MEANVAR, RANDOM_FROZEN = "source", "meanvar", "random_frozen"  # transferlab.config.Init
CALIBRATION_BATCH = 512


def copies_weights(init: str) -> bool:
    """Do the copied blocks start from the source's tensors (source, meanvar: its statistics)? random_frozen reads
    no source weight at all."""
    return str(init) != RANDOM_FROZEN


@torch.no_grad()
def meanvar_(module: nn.Module, generator: torch.Generator) -> None:
    """Replace every floating parameter of `module` (holding the source's values) by a random tensor with the same
    mean and standard deviation (torch's default, unbiased), drawn from `generator`. Buffers are left alone."""
    for p in module.parameters():
        if not p.is_floating_point() or p.numel() < 2:
            continue
        mu, sigma = p.mean(), p.std()
        z = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        z = (z - z.mean()) / z.std()
        p.copy_((mu.double() + sigma.double() * z).to(p.dtype))


def fill(backbone: BlockBackbone, plan: TransferPlan, generator: torch.Generator) -> None:
    """After the copy (`plan.build_target_net`): give the copied blocks what `plan.init` says."""
    if plan.init == MEANVAR:
        for name in plan.copied:
            meanvar_(backbone.blocks[name], generator)


def _norms(backbone: BlockBackbone, names: Iterable[str]) -> list[_BatchNorm]:
    return [m for n in names if n in backbone.blocks for m in backbone.blocks[n].modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recalibrate(backbone: BlockBackbone, plan: TransferPlan, x: torch.Tensor) -> str:
    """Re-estimate the running statistics of the BatchNorm layers in re-initialised copied blocks on the inputs `x`
    (the run's training subset); everything else (weights, other buffers, modes) is left as it was. Returns what
    was done, for the log."""
    if plan.init == SOURCE or not plan.copied:
        return "source statistics kept"
    norms = _norms(backbone, plan.copied)
    if not norms:
        return "no BatchNorm layer in the re-initialised blocks"
    if len(x) < 2:
        return "one training example: BatchNorm statistics left at their initial values"
    modes = {m: m.training for m in backbone.modules()}
    momenta = {m: m.momentum for m in norms}
    backbone.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the chunks
            m.train()
        stop = max(backbone.block_names.index(n) for n in plan.copied) + 1
        for chunk in torch.tensor_split(x, max(1, -(-len(x) // CALIBRATION_BATCH))):
            backbone(chunk, 0, stop)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.train(mode)
    return f"BatchNorm statistics of {list(plan.copied)} re-estimated on {len(x)} training examples"
