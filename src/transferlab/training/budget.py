"""The step budget of a target fit: how many epochs it runs, from the number of optimizer steps it should get.

Why steps and not epochs: with n examples per class and a batch of B, an epoch is ceil(n·C / B) optimizer steps,
so a fixed number of epochs gives a small-n point far fewer steps than a large one (at n <= 16 per class on a
two-class task with B = 32, an epoch is one step). A new head trained from random weights then measures the
training budget as much as the transfer (docs/experiments.md, recipe 1). `train.budget` says what the budget is
counted in, and `train.min_steps` gives every point a floor however small n is:

    steps per epoch  s = ceil(n_train / min(batch_size, n_train)), / accumulate_grad_batches (rounded up)
    asked            a = max_epochs · s   (budget=epochs)   or   max_steps   (budget=steps)
    floor and cap    a = max(a, min_steps);  budget=epochs: a = min(a, max_steps)
    matched compute  a = a + extra   (transfer=scratch_long: the source pretraining's steps, training/scratch_long.py)
    epochs           E = ceil(a / s)  (at least 1): the fewest whole epochs that give at least a steps
    steps            E · s

Whole epochs, never a fit stopped inside one: validation, model selection (`train.select`) and the resume state
all work per epoch, and an epoch cut short would be trained on part of the subset. The steps done may therefore
exceed the steps asked by less than one epoch; result.json records both (`budget`, and `metrics.steps`, counted
by Lightning). Under budget=steps, `train.max_epochs` is not read.

Torch-free: run/setup.py plans the budget while validating (a select_epoch or lp_epochs beyond the planned epochs
is a config error before any training).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

RULE = ("epochs = ceil(steps asked / steps per epoch); steps asked = max_epochs x steps per epoch (budget=epochs) "
        "or max_steps (budget=steps), at least min_steps, at most max_steps (budget=epochs), plus source_steps "
        "(scratch_long)")


@dataclass(frozen=True)
class StepBudget:
    """One fit's plan, as recorded in result.json (`RunRecord.budget`)."""

    budget: str                  # epochs | steps: what train.* counts the fit in
    max_epochs: int | None       # train.max_epochs (None under budget=steps: not read)
    min_steps: int | None        # train.min_steps (None: no floor)
    max_steps: int | None        # train.max_steps (None: no cap)
    n_train: int                 # examples in the training subset
    batch_size: int              # train.batch_size
    steps_per_epoch: int         # optimizer steps in one epoch
    target_steps: int            # steps asked for this run's own training (after floor and cap)
    source_steps: int            # steps added for matched compute (scratch_long), else 0
    epochs: int                  # epochs the fit runs
    steps: int                   # epochs x steps_per_epoch: optimizer steps the fit does
    rule: str = RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_epoch(n_train: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch over `n_train` examples: the loaders' batches (`training/batches.py` caps the
    batch at the subset, keeps the last partial batch), one step per `accumulate` of them (Lightning steps on the
    last, partial accumulation of an epoch too)."""
    batches = math.ceil(max(1, int(n_train)) / max(1, min(int(batch_size), max(1, int(n_train)))))
    return math.ceil(batches / max(1, int(accumulate)))


def plan(train: Mapping[str, Any], n_train: int, *, extra_steps: int = 0, accumulate: int = 1) -> StepBudget:
    """The budget for a fit on `n_train` examples under the `train` config (keys budget, max_epochs, min_steps,
    max_steps, batch_size; already validated: run/setup.py). `extra_steps` is added after the floor and the cap."""
    kind = str(train.get("budget") or "epochs")
    spe = steps_per_epoch(n_train, int(train["batch_size"]), accumulate)
    min_steps, max_steps = train.get("min_steps"), train.get("max_steps")
    asked = int(max_steps) if kind == "steps" else int(train["max_epochs"]) * spe
    if min_steps is not None:
        asked = max(asked, int(min_steps))
    if kind == "epochs" and max_steps is not None:
        asked = min(asked, int(max_steps))
    total = asked + int(extra_steps)
    epochs = max(1, math.ceil(total / spe))
    return StepBudget(budget=kind, max_epochs=int(train["max_epochs"]) if kind == "epochs" else None,
                      min_steps=None if min_steps is None else int(min_steps),
                      max_steps=None if max_steps is None else int(max_steps), n_train=int(n_train),
                      batch_size=int(train["batch_size"]), steps_per_epoch=spe, target_steps=asked,
                      source_steps=int(extra_steps), epochs=epochs, steps=epochs * spe)
