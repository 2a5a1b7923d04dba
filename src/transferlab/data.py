"""Batches from a TaskData: small tasks live as tensors, so a plain TensorDataset loader suffices."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.tasks.base import TaskData


def loaders(task: TaskData, batch_size: int, seed: int, *, train_subset: bool = True):
    """(train, val, test) loaders. Shuffling uses its own seeded generator, not the global RNG."""
    x, y = task.subset() if train_subset else (task.train_x, task.train_y)
    generator = torch.Generator().manual_seed(int(seed))
    train = DataLoader(TensorDataset(x, y), batch_size=min(batch_size, len(y)), shuffle=True, generator=generator)
    val = DataLoader(TensorDataset(task.val_x, task.val_y), batch_size=512)
    test = DataLoader(TensorDataset(task.test_x, task.test_y), batch_size=512)
    return train, val, test
