"""A task: a labelled dataset with a fixed train pool, val split and test split, as in-memory tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TaskData:
    """Everything a run needs from a task. Labels are remapped to 0..C-1 in `class_names` order.

    `train_x/train_y` hold the whole train pool; `train_indices` (into that pool) is the labelled subset
    this run trains on. Val and test never depend on the run seed or on n.
    `origins[split] = (array, indices)` says where each split's examples sit in the arrays the task was read
    from (e.g. val carved from "train"), so leakage is checkable; `info` records how inputs were adapted.
    """

    name: str
    class_names: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_indices: np.ndarray = field(default=None)  # type: ignore[assignment]
    origins: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # The val split's positions in the train pool when it was taken from the pool (a cv fold, tasks/cv_folds.py),
    # else None: its cached prefix features are then the pool's own (store/feature_cache.py), not computed again.
    val_from_pool: np.ndarray | None = None

    def __post_init__(self):
        if self.train_indices is None:
            self.train_indices = np.arange(len(self.train_y))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(self.train_indices, dtype=torch.long)
        return self.train_x[idx], self.train_y[idx]

    @property
    def train_origin_indices(self) -> np.ndarray | None:
        """The labelled subset as indices into the dataset's own train array (None if unknown)."""
        if "train" not in self.origins:
            return None
        return self.origins["train"][1][self.train_indices]

    def fingerprint(self) -> str:
        """Hash of the data itself (pool, val, test, labels): changes when a user's file changes."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        h.update(",".join(self.class_names).encode())
        return h.hexdigest()[:16]
