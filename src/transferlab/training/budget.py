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

**When it validates** (`val_epochs`, the validation schedule): a validation pass is a forward over the whole val
split, and under the step floor a small n trains hundreds of one-step epochs, so validating after every epoch
makes validation most of a small point's cost while adding checks 1 step apart that the selection hardly needs.
Validation therefore runs on a schedule of optimizer steps, at epoch ends (whole epochs, as above):

    train.val_checks = C   C checks spread over the fit: after epoch ceil(i·E/C), i = 1..C (val_spacing=linear)
                           or round(E^((i-1)/(C-1))) (log: dense early, where curves move fastest); duplicates
                           merged, so a fit of fewer than C epochs validates every epoch
    else val_every_steps=V after every epoch in which the step count passes a multiple of V: one check per V
                           steps on short epochs, every epoch once an epoch holds V steps or more (today's
                           behaviour for long epochs); V = 1 validates every epoch
    always                 the last epoch; train.select=fixed_epoch's select_epoch; and every epoch under a
                           scheduler that reads val/acc (train/scheduler=plateau, whose patience counts
                           validated epochs)

Model selection (`train.select`), the learning curves in result.json (`val/acc_history` with
`val/epoch_history`) and the convergence verdict (run/convergence.py) are all on these checks. The schedule is
part of the run's identity (its keys are train.* keys).

Torch-free (but for a scheduler node, whose class is imported to know whether it reads val/acc): run/setup.py plans
the budget while validating (a select_epoch or lp_epochs beyond the planned epochs
is a config error before any training).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from transferlab.training.optim import reads_metric

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
    val_epochs: tuple[int, ...] = ()  # 1-based epochs after which validation runs (the schedule, see above)
    val_rule: str = ""           # the schedule in words ("every 8 steps", "12 log-spaced checks", "every epoch")
    rule: str = RULE

    def validates(self, epoch: int) -> bool:
        """Does validation run after 1-based `epoch`? (An empty schedule, from a record made before there was
        one, validated every epoch.)"""
        return not self.val_epochs or epoch in self.val_epochs

    def to_dict(self) -> dict[str, Any]:
        """As result.json stores it (lists, not tuples: a record reads back equal to the one written)."""
        return {**asdict(self), "val_epochs": list(self.val_epochs)}


def steps_per_epoch(n_train: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch over `n_train` examples: the loaders' batches (`training/batches.py` caps the
    batch at the subset, keeps the last partial batch), one step per `accumulate` of them (Lightning steps on the
    last, partial accumulation of an epoch too)."""
    batches = math.ceil(max(1, int(n_train)) / max(1, min(int(batch_size), max(1, int(n_train)))))
    return math.ceil(batches / max(1, int(accumulate)))


def val_schedule(train: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> tuple[tuple[int, ...], str]:
    """(1-based epochs after which validation runs, the rule in words) for a fit of `epochs` epochs of
    `steps_per_epoch` optimizer steps under the `train` config (keys val_every_steps, val_checks, val_spacing,
    select, select_epoch, scheduler; validated by run/setup.py). The rule: this module's docstring."""
    epochs, spe = max(1, int(epochs)), max(1, int(steps_per_epoch))
    checks, every = train.get("val_checks"), train.get("val_every_steps")
    if reads_metric(train.get("scheduler")):
        chosen, rule = set(range(1, epochs + 1)), "every epoch (the scheduler reads val/acc)"
    elif checks is not None:
        c = int(checks)
        if str(train.get("val_spacing") or "linear") == "log" and c > 1:
            chosen = {int(round(epochs ** ((i - 1) / (c - 1)))) for i in range(1, c + 1)}
            rule = f"{c} log-spaced checks"
        else:
            chosen = {math.ceil(i * epochs / c) for i in range(1, c + 1)}
            rule = f"{c} evenly spaced checks"
    else:
        v = 1 if every is None else int(every)
        chosen = {e for e in range(1, epochs + 1) if (e * spe) // v > ((e - 1) * spe) // v}
        rule = "every epoch" if len(chosen) == epochs else f"every {v} steps"
    chosen.add(epochs)
    if str(train.get("select") or "best_val") == "fixed_epoch" and train.get("select_epoch") is not None:
        chosen.add(int(train["select_epoch"]))
    out = tuple(sorted(e for e in chosen if 1 <= e <= epochs))
    return out, f"{rule}: {len(out)} of {epochs} epochs"


def plan(train: Mapping[str, Any], n_train: int, *, extra_steps: int = 0, accumulate: int = 1) -> StepBudget:
    """The budget for a fit on `n_train` examples under the `train` config (keys budget, max_epochs, min_steps,
    max_steps, batch_size, and the validation schedule's; already validated: run/setup.py). `extra_steps` is added
    after the floor and the cap."""
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
    val_epochs, val_rule = val_schedule(train, epochs, spe)
    return StepBudget(budget=kind, max_epochs=int(train["max_epochs"]) if kind == "epochs" else None,
                      min_steps=None if min_steps is None else int(min_steps),
                      max_steps=None if max_steps is None else int(max_steps), n_train=int(n_train),
                      batch_size=int(train["batch_size"]), steps_per_epoch=spe, target_steps=asked,
                      source_steps=int(extra_steps), epochs=epochs, steps=epochs * spe,
                      val_epochs=val_epochs, val_rule=val_rule)
