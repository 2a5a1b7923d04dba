"""How many labelled target examples shaped a run's model: `labels_used` in result.json.

The x axis of a transfer study is n, the labelled examples a model was trained on. A model is also shaped by every
label its selection read: `train.select=best_val` picks the epoch on the task's validation split, and
`train/scheduler=plateau` (any scheduler that reads a metric) lowers the rate when val/acc stalls, so those
validation labels count too, however small
n is (FEWTRANS, arXiv 2603.00478). `last` and `fixed_epoch` read no validation label to decide anything (their
curves are recorded, not used), and under `val_in_budget` the validation examples are part of the n themselves
(tasks/budget_val.py), so there labels_used is n: the honest budget.

Under `cv` (run/cv.py) the step count, and a tuned point's values, are chosen on folds of the n themselves and the
tested model trains on all n; the task's validation split is not read: labels_used is n.

A tuned point (run/tuning.py) chooses among its candidates on the validation split whatever `train.select` is (but
cv, whose candidates are judged on their folds), so under `last` and `fixed_epoch` too its val split counts, once:
every candidate is judged on the same split.
"""

from __future__ import annotations

from typing import Any

from transferlab.training.optim import reads_metric

READS_VAL = ("best_val", "val_in_budget")  # train.select rules that pick the tested epoch on val/acc


def reads_validation(select: str, scheduler: Any, tuned: bool = False) -> bool:
    """Does the validation split influence the tested model (the epoch chosen, the learning rate, or, for a tuned
    point, which candidate is tested)? `scheduler` is the `train.scheduler` node, or a record's name from before
    schedulers were nodes ("plateau", "none")."""
    if str(select) == "cv":
        return False  # the folds are the n themselves; setup refuses a scheduler that reads val/acc with cv
    if tuned or str(select) in READS_VAL:
        return True
    return scheduler == "plateau" if isinstance(scheduler, str) else reads_metric(scheduler)


def labels_used(select: str, scheduler: Any, n_train: int, n_val: int, tuned: bool = False) -> int:
    """Labelled target examples that influenced the tested model: the training subset, plus the validation split
    when the selection, the LR schedule or the choice among a tuned point's candidates read it."""
    return int(n_train) + (int(n_val) if reads_validation(select, scheduler, tuned) else 0)
