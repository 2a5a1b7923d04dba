"""Turn labelled arrays into a TaskData: class selection, fixed splits, the labelled subset, leakage checks.

Every task kind ends here, so splitting and sampling rules are the same for all of them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from transferlab.errors import ConfigError, problem
from transferlab.tasks.base import TaskData
from transferlab.tasks.sampling import check_disjoint, draw_subset, fixed_split


def _select_classes(cfg, key: str, labels: np.ndarray, class_names: Sequence[str]) -> list[int]:
    """Original label ids of the classes this task keeps (in the order given)."""
    wanted = cfg.get("classes")
    if wanted is None:
        return sorted(int(c) for c in np.unique(labels))
    ids = []
    by_name = {str(n): i for i, n in enumerate(class_names)}
    for c in wanted:
        if isinstance(c, (int, np.integer)) and 0 <= int(c) < len(class_names):
            ids.append(int(c))
        elif str(c) in by_name:
            ids.append(by_name[str(c)])
        else:
            raise ConfigError(problem(f"{key}.classes", list(wanted),
                                      f"{c!r} is not a class; valid: {list(class_names)}"))
    if len(set(ids)) != len(ids) or len(ids) < 2:
        raise ConfigError(problem(f"{key}.classes", list(wanted),
                                  "at least two distinct classes"))
    return ids


def _keep(x: np.ndarray, y: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    remap = {orig: new for new, orig in enumerate(ids)}
    mask = np.isin(y, ids)
    return x[mask], np.array([remap[int(v)] for v in y[mask]], dtype=np.int64)


def task_from_arrays(
    cfg,
    *,
    key: str,
    data_seed: int,
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> TaskData:
    """Build the task's fixed splits and this run's labelled subset.

    Missing test/val splits are carved from `x` with the task's `split_seed` (stratified), so they are the same
    for every run seed and every n. `x` arrays are float tensors shaped N x C x H x W (or N x D).
    """
    ids = _select_classes(cfg, key, y, class_names)
    names = [str(class_names[i]) for i in ids]
    x, y = _keep(x, y, ids)
    split_seed = int(cfg.get("split_seed", 0))
    if x_test is None:
        rest, test = fixed_split(y, float(cfg.get("test_fraction", 0.25)), split_seed)
        x_test, y_test = x[test], y[test]
        x, y = x[rest], y[rest]
    else:
        x_test, y_test = _keep(x_test, y_test, ids)
    if x_val is None:
        pool, val = fixed_split(y, float(cfg.get("val_fraction", 0.2)), split_seed + 1)
        check_disjoint(str(cfg.name), pool=pool, val=val)
        x_val, y_val = x[val], y[val]
        x, y = x[pool], y[pool]
    else:
        x_val, y_val = _keep(x_val, y_val, ids)
    indices = draw_subset(
        y,
        n_per_class=cfg.get("n_per_class"),
        n_train=cfg.get("n_train"),
        data_seed=data_seed,
        n_policy=str(cfg.get("n_policy", "error")),
        key=key,
    )
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    as_l = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return TaskData(
        name=str(cfg.name), class_names=names,
        train_x=as_t(x), train_y=as_l(y), val_x=as_t(x_val), val_y=as_l(y_val),
        test_x=as_t(x_test), test_y=as_l(y_test), train_indices=indices,
    )
