"""A task whose data comes from a function of your own: `target=custom target._target_=mypkg.data.load`.

The function is called with `<task>.kwargs` (and `data_dir=`, `paths.data_dir`, when it takes that argument) and
returns the data only; everything else is what every built-in task gets from `arrays.task_from_arrays`: class
selection (`classes`, `part`, `relabel`), the fixed val/test splits carved with `split_seed` when it gives none,
the nested labelled subsets (`n_per_class`, `n_train`), input checks and adaptation (`channels`, `image_size`,
`normalize`). It may return:

- `(x, y)`: inputs and integer labels 0..K-1 (numpy arrays or tensors), one train array the splits are carved from;
- a torch `Dataset` of `(x, y)` items, with `classes` (class names, torchvision's convention) if it has them;
- a mapping `{"train": ..., "val": ..., "test": ..., "classes": [...]}`, each split an `(x, y)` pair or a Dataset;
  `val` and `test` are optional (carved from train when absent), `classes` too ("0".."K-1").

Inputs are N x D feature vectors or N x C x H x W images (N x H x W gets one channel), uint8 0..255 or float in
[0, 1] (or `normalize: prenormalized`); a Dataset is read into memory once, as every task is. The data must be the
same on every call (seed any random generation from your own kwargs): the run's identity holds the function's
code and `files`, not its output, so a function that takes `data_dir` must list what it reads there in `files`
(`reads_data_dir`). A return that breaks this is one ConfigError line on `<task>._target_`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from transferlab import own_code
from transferlab.config import plain
from transferlab.errors import ConfigError, problem
from transferlab.tasks.arrays import task_from_arrays
from transferlab.tasks.base import TaskData

SPLITS = ("train", "val", "test")
SHAPE = "(x, y) arrays, a torch Dataset of (x, y) items, or {train: ..., val: ..., test: ..., classes: [...]}"


def _array(a, what: str, fail) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        out = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise fail(f"{what} as an array or tensor ({e})") from None
    if out.dtype == object:
        raise fail(f"{what} as a numeric array or tensor; got {type(a).__name__} of dtype object (ragged?)")
    return out


def _from_dataset(ds, split: str, fail) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = [ds[i] for i in range(len(ds))]
    except Exception as e:  # noqa: BLE001 - the user's Dataset: its error, one line
        raise fail(f"a {split} Dataset whose items ds[i] read; {type(e).__name__}: {e}") from None
    if not items:
        raise fail(f"a {split} split with examples; the Dataset is empty")
    if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise fail(f"{split} Dataset items (x, y); item 0 is {type(items[0]).__name__}")
    try:
        x = np.stack([_array(it[0], f"{split} inputs", fail) for it in items])
    except ValueError as e:
        raise fail(f"{split} inputs of one shape ({e})") from None
    y = np.array([int(it[1]) for it in items])
    return x, y


def _split(value, split: str, fail) -> tuple[np.ndarray, np.ndarray]:
    """(x as N x D or N x C x H x W, y as int64 labels) of one split, checked."""
    if isinstance(value, torch.utils.data.Dataset):
        x, y = _from_dataset(value, split, fail)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = _array(value[0], f"{split} inputs", fail), _array(value[1], f"{split} labels", fail)
    else:
        raise fail(f"{split} as an (x, y) pair or a torch Dataset; got {type(value).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise fail(f"{split} inputs N x D or N x C x H x W (N x H x W gets one channel); got shape {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise fail(f"one integer label per {split} example; labels have shape {y.shape}")
    if len(x) != len(y):
        raise fail(f"as many {split} labels as inputs; got {len(x)} inputs and {len(y)} labels")
    if not len(y):
        raise fail(f"a {split} split with examples; it is empty")
    integral = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))
    if not integral or y.min() < 0:
        raise fail(f"{split} labels as integer class ids 0..K-1; got dtype {y.dtype}, min {y.min()}")
    return x, y.astype(np.int64)


def _parts(data, fail) -> tuple[dict[str, tuple[np.ndarray, np.ndarray] | None], list[str] | None]:
    if isinstance(data, Mapping):
        unknown = sorted(set(map(str, data)) - {*SPLITS, "classes"})
        if unknown or "train" not in data:
            raise fail(f"{SHAPE}; the mapping has keys {sorted(map(str, data))}")
        classes = data.get("classes")
        if classes is None and isinstance(data["train"], torch.utils.data.Dataset):
            classes = getattr(data["train"], "classes", None)
        splits = {s: _split(data[s], s, fail) if data.get(s) is not None else None for s in SPLITS}
    elif isinstance(data, torch.utils.data.Dataset) or (isinstance(data, tuple) and len(data) == 2):
        classes = getattr(data, "classes", None)
        splits = {"train": _split(data, "train", fail), "val": None, "test": None}
    else:
        raise fail(f"{SHAPE}; it returned a {type(data).__name__}")
    shapes = {s: v[0].shape[1:] for s, v in splits.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise fail(f"one input shape in every split; got {shapes}")
    return splits, None if classes is None else [str(c) for c in classes]


def reads_data_dir(fn) -> bool:
    """A loader that names `data_dir` among its parameters reads files there. The run's identity holds a task's
    code and `files`, not what it returns, so such a loader without `files` would keep its fingerprint when its data
    changed and a sweep would skip its points as done: refused (when in doubt, a result is not reused), here and up
    front by the sweeper (`run.values.check_custom_files`, from the module's source). A loader taking only
    `**kwargs` is not offered data_dir."""
    import inspect

    try:
        param = inspect.signature(fn).parameters.get("data_dir")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    target = cfg.get("_target_")
    kwargs = plain(cfg.get("kwargs") or {})

    def fail(what: str) -> ConfigError:
        return ConfigError(problem(f"{key}._target_", target, f"a function returning {what}"))

    files = list(cfg.get("files") or [])
    reads = reads_data_dir(own_code.locate(target, f"{key}._target_"))
    if not files and reads:
        raise ConfigError(own_code.unlisted_data(target, key, data_dir))
    missing = [str(f) for f in files if not Path(os.path.expanduser(str(f))).exists()]
    if missing:
        raise ConfigError(problem(f"{key}.files", missing, "files and folders that exist (what your function reads: "
                                                           "their bytes are in the run's identity)"))
    # data_dir is offered only to a loader that names it (a **kwargs loader is not taken to read it, so it gets none)
    data = own_code.call(target, kwargs, f"{key}._target_", **({"data_dir": data_dir} if reads else {}))
    splits, classes = _parts(data, fail)
    top = max(int(v[1].max()) for v in splits.values() if v is not None)
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    elif len(classes) <= top:
        raise fail(f"a class name for every label; {len(classes)} classes {classes[:5]} but labels go up to {top}")
    val, test = splits["val"] or (None, None), splits["test"] or (None, None)
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=splits["train"][0], y=splits["train"][1],
                            x_val=val[0], y_val=val[1], x_test=test[0], y_test=test[1], class_names=classes,
                            info={"kind": "custom", "_target_": str(target)},
                            array_names={s: f"{target} {s} inputs" for s in SPLITS})
