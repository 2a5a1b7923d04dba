"""A validation split carved out of the labelled subset itself (`train.select=val_in_budget`).

Why: under `train.select=best_val` the epoch is chosen on the task's validation split, whatever n is. At n = 1 per
class that is dozens of labelled examples per class the x axis does not show, and a reader compares arms that were
each selected with far more labels than "n" says (FEWTRANS, arXiv 2603.00478, calls this the validation-set
illusion). Under `val_in_budget` the n labelled examples per class are the whole budget: a fixed share of each
class's examples is held out of training and the epoch is selected on those, so every label that shaped the model
is counted in n. The task's own validation split is not read at all.

The rule, per class c with n_c labelled examples: v_c = max(1, floor(f · n_c)) examples validate and n_c − v_c
train, f = `train.val_in_budget_fraction`; each class needs n_c ≥ 2 (one to train, one to select on), else the run
is a config error before anything is built. Which examples validate is a seeded choice (the run's `data_seed`, the
seed that drew the subset), the same for every training seed. The split is not nested across n (a larger n holds
out more examples); the subsets themselves still are.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from transferlab.errors import ConfigError, problem
from transferlab.tasks.base import TaskData

SALT = 6700417  # keeps this choice's random stream apart from the subset draw's (same data_seed)


def held_out_counts(counts: dict[int, int], fraction: float) -> dict[int, int]:
    """Validation examples per class: max(1, floor(fraction · n_c)) of each class's n_c labelled examples."""
    return {c: max(1, math.floor(float(fraction) * n)) for c, n in counts.items()}


def split_subset(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions into `labels` (the labelled subset's labels): per class the rule above. ValueError
    when a class has fewer than 2 examples."""
    labels = np.asarray(labels)
    classes = [int(c) for c in np.unique(labels)]
    counts = {c: int(np.sum(labels == c)) for c in classes}
    short = sorted(c for c, n in counts.items() if n < 2)
    if short:
        raise ValueError(f"class(es) {short} have {min(counts[c] for c in short)} labelled example(s); "
                         "val_in_budget needs at least 2 per class (one to train, one to select on)")
    held = held_out_counts(counts, fraction)
    val = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(seed), SALT, c])
        val.append(members[rng.permutation(len(members))[:held[c]]])
    val_pos = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val_pos), val_pos


def with_budget_val(task: TaskData, fraction: float, seed: int, *, size_key: str, size_value) -> TaskData:
    """The task whose validation split is carved out of its labelled subset (the rule above) and whose subset is
    what remains; train pool and test split unchanged. A short class is a ConfigError naming `size_key` (the key
    that set the subset's size, e.g. target.n_per_class) and its value."""
    sub_y = task.train_y[torch.as_tensor(np.asarray(task.train_indices, dtype=np.int64))].numpy()
    try:
        train_pos, val_pos = split_subset(sub_y, fraction, seed)
    except ValueError as e:
        raise ConfigError(problem(size_key, size_value, f"a subset train.select=val_in_budget can split ({e}); "
                                  "or another train.select")) from None
    idx = np.asarray(task.train_indices, dtype=np.int64)
    val_idx, train_idx = idx[val_pos], idx[train_pos]
    origins = dict(task.origins)
    if "train" in origins:
        array, pool_pos = origins["train"]
        origins["val"] = (array, np.asarray(pool_pos)[val_idx])
    sizes = {**task.info.get("sizes", {}), "val": len(val_idx), "train": len(train_idx)}
    info = {**task.info, "sizes": sizes,
            "val_in_budget": {"fraction": float(fraction), "val": len(val_idx), "train": len(train_idx),
                              "rule": "per class max(1, floor(fraction x n_c)) held out, seeded by data_seed"}}
    val_t = torch.as_tensor(val_idx)
    return dataclasses.replace(task, val_x=task.train_x[val_t], val_y=task.train_y[val_t],
                               train_indices=np.sort(train_idx), origins=origins, info=info)
