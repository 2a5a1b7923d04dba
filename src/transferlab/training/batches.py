"""Batches from a TaskData.

Small tasks stay whole tensors (on the training device when it fits) and are cut into batches by `TensorBatches`,
a seeded iterator with no per-sample Dataset/collate work: on tiny sweep points the DataLoader machinery costs more
than the model. Large tasks (bigger than `max_in_memory_mb`) go through a DataLoader with worker processes; workers
use the 'fork' context, which also works inside joblib (loky) workers, where the default context fails.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from transferlab.tasks.base import TaskData

EVAL_BATCH = 512
DEFAULT_MAX_IN_MEMORY_MB = 512


class TensorBatches:
    """(x, y) batches of whole tensors; shuffled with its own seeded generator, never the global RNG.

    Every `iter()` is one epoch with a fresh permutation. It keeps `state_dict`/`load_state_dict`, so Lightning
    stores the shuffle state in checkpoints and a resumed fit sees the same batch order as an uninterrupted one.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.batch_size = max(1, min(int(batch_size), len(y))) if len(y) else max(1, int(batch_size))
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(int(seed))
        self._epoch_start_state = self.generator.get_state()
        self._served = 0
        self._skip = 0
        self._in_epoch = False

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = None
        if self.shuffle:
            self._epoch_start_state = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        skip, self._skip = self._skip, 0
        self._served, self._in_epoch = skip, True
        for b in range(skip, len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else None
            self._served = b + 1
            if idx is None:
                yield self.x[sl], self.y[sl]
            else:
                yield self.x[idx], self.y[idx]
        self._in_epoch = False

    def state_dict(self) -> dict:
        if self.shuffle and self._in_epoch and self._served < len(self):
            return {"generator": self._epoch_start_state.clone(), "skip": self._served}
        return {"generator": self.generator.get_state(), "skip": 0}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._skip = int(state.get("skip", 0)) if self.shuffle else 0


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


def pick_device(accelerator: str | None = "auto", devices=None) -> torch.device:
    """The device Lightning will train on for a single-device run (cpu unless a GPU is asked for and present);
    `devices=[k]` (a leased GPU) means cuda:k, so the data lands on the job's own GPU, never on GPU 0."""
    acc = str(accelerator or "auto")
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
            ids = list(devices)
            if len(ids) == 1:
                return torch.device("cuda", int(ids[0]))
        return torch.device("cuda", torch.cuda.current_device())
    if acc in ("auto", "gpu", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _fits_on(device: torch.device, size: int) -> bool:
    if device.type != "cuda":
        return device.type == "cpu" or size < 2**30
    free, _ = torch.cuda.mem_get_info(device)
    return size < 0.25 * free  # leave room for activations


def splits(task: TaskData, *, train_subset: bool = True):
    """(train_x, train_y, val_x, val_y, test_x, test_y); the train part is this run's labelled subset."""
    x, y = task.subset() if train_subset else (task.train_x, task.train_y)
    return x, y, task.val_x, task.val_y, task.test_x, task.test_y


def tensor_loaders(arrays, batch_size: int, seed: int, *, device: torch.device | str = "cpu",
                   channels_last: bool = False):
    """(train, val, test) TensorBatches over the given six tensors, moved to `device` once."""
    device = torch.device(device)
    moved = []
    for t in arrays:
        t = t.to(device, non_blocking=True)
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        moved.append(t)
    tx, ty, vx, vy, sx, sy = moved
    return (TensorBatches(tx, ty, batch_size, shuffle=True, seed=seed),
            TensorBatches(vx, vy, EVAL_BATCH), TensorBatches(sx, sy, EVAL_BATCH))


def dataloaders(arrays, batch_size: int, seed: int, *, num_workers: int = 2):
    """(train, val, test) torch DataLoaders with workers, for tasks too large to copy to the device whole."""
    from torch.utils.data import DataLoader, TensorDataset

    tx, ty, vx, vy, sx, sy = arrays
    extra = {"num_workers": num_workers, "persistent_workers": num_workers > 0,
             "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        extra["multiprocessing_context"] = "fork"
    generator = torch.Generator().manual_seed(int(seed))
    return (DataLoader(TensorDataset(tx, ty), batch_size=min(batch_size, len(ty)), shuffle=True,
                       generator=generator, **extra),
            DataLoader(TensorDataset(vx, vy), batch_size=EVAL_BATCH, **extra),
            DataLoader(TensorDataset(sx, sy), batch_size=EVAL_BATCH, **extra))


def loaders(task: TaskData, batch_size: int, seed: int, *, train_subset: bool = True,
            device: torch.device | str | None = None, max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB,
            num_workers: int = 2, channels_last: bool = False):
    """(train, val, test) batches for `task`. Shuffling uses its own seeded generator, not the global RNG.

    Tensors that fit (`max_in_memory_mb`, and a quarter of free GPU memory) become TensorBatches on `device`;
    otherwise DataLoaders with `num_workers` workers.
    """
    arrays = splits(task, train_subset=train_subset)
    return arrays_loaders(arrays, batch_size, seed, device=device, max_in_memory_mb=max_in_memory_mb,
                          num_workers=num_workers, channels_last=channels_last)


def arrays_loaders(arrays, batch_size: int, seed: int, *, device: torch.device | str | None = None,
                   max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB, num_workers: int = 2,
                   channels_last: bool = False):
    """`loaders` over six ready tensors (e.g. cached frozen-prefix features instead of images)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    size = nbytes(*arrays)
    if size <= max_in_memory_mb * 2**20:
        if not _fits_on(device, size):
            device = torch.device("cpu")
        return tensor_loaders(arrays, batch_size, seed, device=device, channels_last=channels_last)
    return dataloaders(arrays, batch_size, seed, num_workers=num_workers)
