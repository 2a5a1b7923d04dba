"""L2-SP: keep transferred weights near their source values (Li, Grandvalet & Davoine 2018, "Explicit Inductive
Bias for Transfer Learning with Convolutional Networks", ICML).

Plain weight decay pulls every weight toward zero, which for a transferred weight means toward forgetting what the
source taught it. L2-SP pulls the transferred weights w_S toward their starting point w_S^0 instead:

    Omega(w) = alpha/2 * ||w_S - w_S^0||_2^2

over the copied parameters that train (`transfer.l2sp` = alpha; 0 = off). The new parameters (head, re-initialised
blocks) keep ordinary weight decay, the paper's beta/2 * ||w_new||^2 term; transferred parameters under L2-SP get no
weight decay, since the penalty replaces it (`training.module` puts them in their own optimizer group). Only
parameters that train in the current epoch count (a gradual schedule adds blocks to the penalty as it releases them).
"""

from __future__ import annotations

from typing import Iterable

import torch

from transferlab.transfer.plan import TransferPlan


class L2SP:
    """The anchor (source values, taken right after the copy) and the penalty of one run."""

    def __init__(self, plan: TransferPlan, named_parameters: Iterable[tuple[str, torch.Tensor]]):
        self.alpha = float(plan.l2sp)
        self.plan = plan
        # A plain dict of detached copies: neither parameters nor part of any checkpoint.
        self.anchor: dict[str, torch.Tensor] = {} if not self.alpha else {
            n: p.detach().clone() for n, p in named_parameters
            if n.split(".", 1)[0] in plan.copied and plan.trains(n)
            and not (plan.peft is not None and n in plan.peft.params)}  # PEFT parameters have no source value

    def __bool__(self) -> bool:
        return bool(self.anchor)

    def anchored(self, name: str) -> bool:
        """Is this backbone parameter pulled toward its source value (so it takes no weight decay)?"""
        return name in self.anchor

    def penalty(self, named_parameters: Iterable[tuple[str, torch.Tensor]], epoch: int) -> torch.Tensor:
        """alpha/2 * ||w - w_source||^2 over the anchored parameters that train in `epoch`."""
        params = dict(named_parameters)
        total = None
        for name, w0 in self.anchor.items():
            if self.plan.trainable_at(name, epoch):
                w = params[name]
                term = (w - w0.to(w.device)).pow(2).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.alpha * total
