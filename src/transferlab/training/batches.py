"""Batches from a TaskData.

Small tasks stay whole tensors (on the training device when it fits) and are cut into batches by `TensorBatches`,
a seeded iterator with no per-sample Dataset/collate work: on tiny sweep points the DataLoader machinery costs more
than the model. Large tasks (bigger than `max_in_memory_mb`) go through a DataLoader with worker processes; workers
use the 'fork' context, which also works inside joblib (loky) workers, where the default context fails.

Under DDP (run/ddp.py) both kinds shard themselves when iterated, by the rank and world size of the process group
(`ranks`); Lightning's sampler injection is off in the ranks (it pads val and test with repeated examples, and
TensorBatches is no DataLoader, so Lightning would not shard it at all). The rule, one for both:
- training: each global batch of `batch_size` examples (the same shuffled batches a one-process run draws) is
  split across the ranks, rank r taking its rows r, r + W, ... So an epoch has the same number of optimizer steps
  as on one process and `train.batch_size` keeps its meaning (the step budget, training/budget.py, is unchanged).
  A batch with fewer rows than ranks gives the ranks without a row of their own a repeated row: every rank must
  take every step (DDP's gradient all-reduce waits for all of them).
- evaluation (val, test): the examples are dealt out, rank r evaluating examples r, r + W, ..., each exactly
  once and none repeated; the module's torchmetrics states are summed across ranks when computed, so val/test
  metrics are those of one process evaluating the same weights on the whole split.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import torch
from torch.utils.data import Sampler

from transferlab.tasks.base import TaskData

EVAL_BATCH = 512
DEFAULT_MAX_IN_MEMORY_MB = 512


TRAIN, EVAL = "batches", "examples"  # how a loader shards under DDP: split each global batch, or deal out examples


def ranks() -> tuple[int, int]:
    """(rank, world size) of the DDP process group this process is in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_share(rows: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of one global training batch: rows rank, rank + world, ...; a batch with fewer rows than
    ranks gives a rank without a row its repeated row `rank % len(rows)`, so that every rank takes the step."""
    own = rows[rank::world]
    return own if len(own) or not len(rows) else rows[rank % len(rows)].reshape(1)


class TensorBatches:
    """(x, y) batches of whole tensors; shuffled with its own seeded generator, never the global RNG.

    Every `iter()` is one epoch with a fresh permutation. It keeps `state_dict`/`load_state_dict`, so Lightning
    stores the shuffle state in checkpoints and a resumed fit sees the same batch order as an uninterrupted one.
    `shard`: how it splits under DDP (module docstring): `batches` (training, the default when shuffled) or
    `examples` (evaluation).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, shard: str | None = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.batch_size = max(1, min(int(batch_size), len(y))) if len(y) else max(1, int(batch_size))
        self.shuffle, self.drop_last = shuffle, drop_last
        self.shard = shard or (TRAIN if shuffle else EVAL)
        if self.shard not in (TRAIN, EVAL):
            raise ValueError(f"shard={shard!r}: {TRAIN!r} or {EVAL!r}")
        self.generator = torch.Generator().manual_seed(int(seed))
        self._epoch_start_state = self.generator.get_state()
        self._served = 0
        self._skip = 0
        self._in_epoch = False

    def _examples(self) -> torch.Tensor | None:
        """The examples this process evaluates under DDP (`shard=examples`), or None: all of them."""
        rank, world = ranks()
        if world == 1 or self.shard != EVAL:
            return None
        return torch.arange(rank, len(self.y), world, device=self.x.device)

    def __len__(self) -> int:
        own = self._examples()
        n = len(self.y) if own is None else len(own)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        own = self._examples()
        n = len(self.y) if own is None else len(own)
        rank, world = ranks()
        split = world > 1 and self.shard == TRAIN
        order = own
        if self.shuffle:
            self._epoch_start_state = self.generator.get_state()
            perm = torch.randperm(n, generator=self.generator).to(self.x.device)
            order = perm if own is None else own[perm]
        skip, self._skip = self._skip, 0
        self._served, self._in_epoch = skip, True
        for b in range(skip, len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else None
            if split:
                idx = batch_share(torch.arange(sl.start, sl.stop, device=self.x.device) if idx is None else idx,
                                  rank, world)
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


class RankBatches(Sampler[list[int]]):
    """A DataLoader's index batches (`batches`, a BatchSampler), sharded under DDP by the rule TensorBatches
    follows (module docstring): `batches` splits each global batch across the ranks, `examples` deals the examples
    out (rank r evaluates r, r + W, ... in batches of the same size). On one process, `batches` unchanged."""

    def __init__(self, batches, shard: str):
        self.batches, self.shard = batches, shard

    def _own(self) -> list[int] | None:
        rank, world = ranks()
        return None if world == 1 or self.shard != EVAL else list(range(rank, len(self.batches.sampler), world))

    def __len__(self) -> int:
        own = self._own()
        return len(self.batches) if own is None else math.ceil(len(own) / self.batches.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = ranks()
        own = self._own()
        if own is not None:
            size = self.batches.batch_size
            yield from (own[i:i + size] for i in range(0, len(own), size))
            return
        for batch in self.batches:
            yield batch if world == 1 else batch_share(torch.as_tensor(batch), rank, world).tolist()


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


def pick_device(accelerator: str | None = "auto", devices=None) -> torch.device:
    """The device Lightning will train on for a single-device run (cpu unless a GPU is asked for and present);
    `devices=[k]` (a leased GPU) means cuda:k, so the data lands on the job's own GPU, never on GPU 0. In a DDP
    rank (LOCAL_RANK set by run/ddp.py) it is the rank's own device, as Lightning assigns them: the rank-th listed
    id, or cuda:rank."""
    acc = str(accelerator or "auto")
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        ids = None
        if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
            ids = list(devices)
            if len(ids) == 1:
                return torch.device("cuda", int(ids[0]))
        rank = os.environ.get("LOCAL_RANK")
        if rank is not None:
            return torch.device("cuda", int(ids[int(rank)]) if ids else int(rank))
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
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    tx, ty, vx, vy, sx, sy = arrays
    extra = {"num_workers": num_workers, "persistent_workers": num_workers > 0,
             "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        extra["multiprocessing_context"] = "fork"
    generator = torch.Generator().manual_seed(int(seed))
    train = TensorDataset(tx, ty)
    # The samplers DataLoader(shuffle=True, generator=..., batch_size=...) builds itself, wrapped to shard under
    # DDP: on one process the same batches in the same order, drawn from the same generator.
    shuffled = BatchSampler(RandomSampler(train, generator=generator), min(batch_size, len(ty)), drop_last=False)
    return (DataLoader(train, batch_sampler=RankBatches(shuffled, TRAIN), generator=generator, **extra),
            *(DataLoader(ds, batch_sampler=RankBatches(BatchSampler(SequentialSampler(ds), EVAL_BATCH, False), EVAL),
                         **extra) for ds in (TensorDataset(vx, vy), TensorDataset(sx, sy))))


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
