"""k-fold cross-validation folds inside the labelled subset (`train.select=cv`, run/cv.py).

Why: under `cv` the n labelled examples are the whole budget. Each fold fit trains on k−1 folds and validates on
the held-out one; the number of training steps (and, for a tuned point, its values) is chosen on the mean of the
k held-out curves, and the tested model then trains on all n. No label outside the n is read to choose anything.

The design (`DESIGN`, in the run identity: run/identity.py), per class c: the subset is a prefix of the class's
seeded order (tasks/sampling.py `class_orders`, the order that draws the subset), and the example of rank r in that
order is in fold

    fold(c, r) = (r + s + c) mod k,   s = a number in 0..k−1 drawn from `data_seed` alone

so that
- every fold holds floor(n_c / k) or ceil(n_c / k) examples of every class c (stratified), and, since the classes'
  starting folds are rotated by c, fold sizes differ by at most one example when every class has the same n_c;
- an example's fold depends on its class, its rank and k only, not on n: at equal k the folds of a subset are the
  folds of any larger subset of the same data_seed, restricted to it (nested, as the subsets are);
- the folds are disjoint, cover the subset exactly, and lie in the train pool (disjoint from val and test).

k: `train.cv_folds`, or, when null, min(`DEFAULT_FOLDS`, the smallest class's count in the subset). Every class
needs at least k examples (else a fold would hold none of it) and k >= 2, so cv needs n_c >= 2.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from transferlab.config import CV_FOLD_DESIGN
from transferlab.errors import ConfigError, problem
from transferlab.tasks.base import TaskData
from transferlab.tasks.sampling import class_orders

DEFAULT_FOLDS = 5
DESIGN = CV_FOLD_DESIGN  # the rule above in words, in every cv run's identity: change both together
SALT = 2147483647  # keeps the fold offset's random stream apart from the subset draw's (same data_seed)


def fold_count(counts: dict[int, int], cv_folds: int | None) -> int:
    """k: `cv_folds`, or min(DEFAULT_FOLDS, smallest class count) when it is None (not checked here)."""
    if cv_folds is not None:
        return int(cv_folds)
    return min(DEFAULT_FOLDS, min(counts.values()) if counts else 0)


def subset_counts(task: TaskData) -> dict[int, int]:
    """Labelled examples of every class of the task in its subset (0 for a class the subset lacks)."""
    sub = task.train_y[torch.as_tensor(np.asarray(task.train_indices, dtype=np.int64))].numpy()
    return {c: int(np.sum(sub == c)) for c in range(task.num_classes)}


def check_counts(counts: dict[int, int], cv_folds: int | None, *, size_key: str, size_value) -> int:
    """k for these per-class counts, or ConfigError naming the key at fault: `train.cv_folds` when it is set and
    larger than a class's count, else the key that set the subset's size (`size_key`, e.g. target.n_per_class)."""
    smallest = min(counts.values()) if counts else 0
    if smallest < 2:
        raise ConfigError(problem(size_key, size_value, f"at least 2 labelled examples of every class with "
                                  f"train.select=cv (the smallest class has {smallest}): each of the k >= 2 folds "
                                  "needs one of each class; or another train.select"))
    k = fold_count(counts, cv_folds)
    if k > smallest:
        raise ConfigError(problem("train.cv_folds", cv_folds, f"an integer in 2..{smallest} (the smallest class "
                                  f"has {smallest} labelled examples and every fold needs one of each class), or "
                                  f"null (min({DEFAULT_FOLDS}, that count))"))
    return k


def assign(pool_labels: np.ndarray, subset: np.ndarray, k: int, data_seed: int) -> np.ndarray:
    """The fold (0..k−1) of every example of `subset` (positions into the pool whose labels are `pool_labels`),
    by the rule above. RuntimeError when the subset is not a prefix of each class's order (not drawn by
    tasks/sampling.py: its folds could not be nested)."""
    pool_labels, subset = np.asarray(pool_labels), np.asarray(subset, dtype=np.int64)
    orders = class_orders(pool_labels, data_seed)
    s = int(np.random.default_rng([int(data_seed), SALT]).integers(k))
    folds = np.full(len(subset), -1, dtype=np.int64)
    where = {int(p): i for i, p in enumerate(subset)}
    for c, order in enumerate(orders):
        inside = np.array([int(p) in where for p in order], dtype=bool)
        n_c = int(inside.sum())
        if not inside[:n_c].all():
            raise RuntimeError(f"class {c}: the labelled subset is not a prefix of its seeded order")
        for r in range(n_c):
            folds[where[int(order[r])]] = (r + s + c) % k
    assert (folds >= 0).all()
    return folds


def task_folds(task: TaskData, k: int, data_seed: int) -> np.ndarray:
    """The fold of every example of the task's subset, in `train_indices` order."""
    return assign(task.train_y.numpy(), np.asarray(task.train_indices, dtype=np.int64), k, data_seed)


def fold_task(task: TaskData, folds: np.ndarray, j: int) -> TaskData:
    """The task of fold fit j: trains on the subset minus fold j, validates on fold j (taken from the train pool);
    pool and test unchanged. The task's own validation split is not in it."""
    idx = np.asarray(task.train_indices, dtype=np.int64)
    val_idx, train_idx = idx[folds == j], idx[folds != j]
    origins = dict(task.origins)
    if "train" in origins:
        array, pool_pos = origins["train"]
        origins["val"] = (array, np.asarray(pool_pos)[val_idx])
    sizes = {**task.info.get("sizes", {}), "val": len(val_idx), "train": len(train_idx)}
    val_t = torch.as_tensor(val_idx)
    return dataclasses.replace(task, val_x=task.train_x[val_t], val_y=task.train_y[val_t],
                               train_indices=np.sort(train_idx), origins=origins, val_from_pool=val_idx,
                               info={**task.info, "sizes": sizes, "cv_fold": int(j)})
