"""A task from a user's .npz file: images (NHW / NHWC / NCHW, uint8 or float) or feature vectors.

Two key namings are read: `x_train, y_train[, x_val, y_val][, x_test, y_test]` and MedMNIST's
`train_images, train_labels, val_images, ...`. Missing val/test splits are carved from train with `split_seed`.
Class names come from `class_names` in the config, else a `class_names` array in the file, else "0".."K-1".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferlab.errors import ConfigError, problem
from transferlab.tasks.arrays import task_from_arrays
from transferlab.tasks.base import TaskData

NAMINGS = {
    "x_/y_": {s: (f"x_{s}", f"y_{s}") for s in ("train", "val", "test")},
    "medmnist": {s: (f"{s}_images", f"{s}_labels") for s in ("train", "val", "test")},
}


def resolve_path(value, key: str, what: str = "path") -> Path:
    if not value:
        raise ConfigError(problem(f"{key}.{what}", value, "the path of your data (e.g. /data/mine.npz)"))
    path = Path(os.path.expanduser(str(value))).resolve()
    if not path.exists():
        raise ConfigError(problem(f"{key}.{what}", str(value), f"an existing path; {path} does not exist"))
    return path


def _images(x: np.ndarray, layout: str, key: str, split: str) -> np.ndarray:
    """N x C x H x W (images) or N x D (features), dtype kept (uint8 is scaled later)."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if layout == "auto":
            layout = "nhwc" if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4) else "nchw"
        if layout == "nhwc":
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] == 4:  # RGBA: the alpha channel carries no class information
            x = x[:, :3]
        if x.shape[1] not in (1, 3):
            raise ConfigError(problem(f"{key}.layout", layout, f"a layout giving 1 or 3 channels; {split} array "
                                      f"has shape {x.shape} after it"))
        return np.ascontiguousarray(x)
    raise ConfigError(problem(key, f"{split} inputs of shape {x.shape}", "N x D, N x H x W or N x H x W x C"))


def _labels(y: np.ndarray, key: str, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores N x 1
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(problem(key, f"{split} labels of shape {y.shape}",
                                  "one integer label per example (multi-label files are not supported)"))
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ConfigError(problem(key, f"{split} labels of dtype {y.dtype}", "integer class ids 0..K-1"))
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ConfigError(problem(key, f"{split} label {int(y.min())}", "integer class ids 0..K-1"))
    return y


def read_npz(path: Path, key: str, layout: str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """{'train': (x, y), 'val': (x, y) | None, 'test': (x, y) | None} from either key naming."""
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickle a user's file
            files = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ConfigError(problem(f"{key}.path", str(path), f"a readable .npz file ({e})")) from None
    naming = next((n for n, keys in NAMINGS.items() if set(keys["train"]) <= set(files)), None)
    if naming is None:
        allowed = " or ".join(f"{k['train'][0]},{k['train'][1]}[,{k['test'][0]},...]" for k in NAMINGS.values())
        raise ConfigError(problem(f"{key}.path", str(path), f"an .npz with keys {allowed}; it has {sorted(files)}"))
    out: dict = {"class_names": files.get("class_names")}
    for split, (kx, ky) in NAMINGS[naming].items():
        if (kx in files) != (ky in files):
            raise ConfigError(problem(f"{key}.path", str(path), f"both {kx} and {ky}, or neither"))
        if kx not in files:
            out[split] = None
            continue
        x, y = _images(files[kx], layout, key, split), _labels(files[ky], key, split)
        if len(x) != len(y):
            raise ConfigError(problem(f"{key}.path", str(path), f"as many {ky} as {kx} ({len(y)} vs {len(x)})"))
        out[split] = (x, y)
    shapes = {s: out[s][0].shape[1:] for s in NAMINGS[naming] if out[s] is not None}
    if len(set(shapes.values())) > 1:
        raise ConfigError(problem(f"{key}.path", str(path), f"one input shape in every split; got {shapes}"))
    out["naming"] = naming
    return out


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    path = resolve_path(cfg.path, key)
    d = read_npz(path, key, str(cfg.layout))  # auto | nchw | nhwc: the schema's choice
    labels = np.concatenate([d[s][1] for s in ("train", "val", "test") if d[s] is not None])
    n_classes = int(labels.max()) + 1
    names = cfg.get("class_names")
    if names is None and d["class_names"] is not None:
        names = [str(v) for v in d["class_names"]]
    names = [str(v) for v in names] if names is not None else [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise ConfigError(problem(f"{key}.class_names", names, f"{n_classes} names (labels go up to {n_classes - 1})"))
    val, test = d["val"] or (None, None), d["test"] or (None, None)
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=d["train"][0], y=d["train"][1],
                            x_val=val[0], y_val=val[1], x_test=test[0], y_test=test[1], class_names=names,
                            info={"kind": "npz", "path": str(path), "naming": d["naming"]},
                            array_names={s: f"{kx} ({s} split)" for s, (kx, _) in NAMINGS[d["naming"]].items()})
