"""torchvision datasets (MNIST, FashionMNIST, KMNIST, CIFAR-10/100, SVHN) as tasks with class subsets.

Files live in `paths.data_dir`. If they are missing the loader downloads them (under a file lock, so parallel
jobs download once) when a network answers; offline it fails at once with one ConfigError that names the files,
the folder to put them in and where to get them. An archive already in the folder is unpacked without network.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from transferlab.errors import ConfigError, problem
from transferlab.store.atomic import shared_lock
from transferlab.tasks import cifar100_meta as c100
from transferlab.tasks.arrays import _select_classes, task_from_arrays
from transferlab.tasks.base import TaskData

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0
DOWNLOAD_TIMEOUT_S = 60.0
DIGITS = [str(i) for i in range(10)]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
KMNIST = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]


@dataclass(frozen=True)
class Spec:
    cls: str            # torchvision.datasets class name
    classes: list[str]  # label id -> name
    kind: str           # "idx" (MNIST family) | "cifar" | "svhn"


DATASETS = {
    "mnist": Spec("MNIST", DIGITS, "idx"),
    "fashion_mnist": Spec("FashionMNIST", FASHION, "idx"),
    "kmnist": Spec("KMNIST", KMNIST, "idx"),
    "cifar10": Spec("CIFAR10", CIFAR10, "cifar"),
    "cifar100": Spec("CIFAR100", c100.FINE_NAMES, "cifar"),
    "svhn": Spec("SVHN", DIGITS, "svhn"),
}


def _tv(spec: Spec):
    import torchvision.datasets as D

    return getattr(D, spec.cls)


def needed_files(spec: Spec, root: Path) -> tuple[Path, list[str], str]:
    """(folder, file names, where to download them) a user must provide for this dataset."""
    cls = _tv(spec)
    if spec.kind == "idx":
        return root / spec.cls / "raw", [name for name, _ in cls.resources], cls.mirrors[0]
    if spec.kind == "cifar":
        return root, [cls.filename], cls.url
    entries = [cls.split_list[s] for s in ("train", "test")]
    return root, [e[1] for e in entries], entries[0][0].rsplit("/", 1)[0] + "/"


def _open(spec: Spec, root: Path, train: bool, download: bool):
    split = {"split": "train" if train else "test"} if spec.kind == "svhn" else {"train": train}
    return _tv(spec)(str(root), download=download, **split)


def _online(url: str) -> bool:
    """Does the dataset's server answer within a few seconds? (Any HTTP status counts as online.)"""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def open_splits(spec: Spec, name: str, root: Path, *, key: str, download: bool):
    """(train, test) torchvision datasets from `root`, fetching missing files if allowed and possible;
    otherwise one ConfigError saying which files to put where."""
    try:
        return _open(spec, root, True, False), _open(spec, root, False, False)
    except RuntimeError:
        pass
    folder, files, url = needed_files(spec, root)

    def missing(reason: str) -> ConfigError:
        return ConfigError(problem(
            f"{key}.dataset", name,
            f"files {files} not found in {folder} and {reason}; put them there (from {url}) "
            f"or set paths.data_dir to a folder that has them"))

    have_archives = all((folder / f).exists() for f in files)
    if not have_archives:
        if not download:
            raise missing(f"downloading is off ({key}.download=false)")
        probe = url if url.endswith(files[0]) else url + files[0]
        if not _online(probe):
            raise missing("the download server does not answer (offline?)")
    root.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    try:
        with shared_lock(root / f".{spec.cls}.download.lock"):
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            log.info("%s: %s %s into %s", key, "unpacking" if have_archives else "downloading", name, root)
            return _open(spec, root, True, True), _open(spec, root, False, True)
    except ConfigError:
        raise
    except Exception as e:  # network drop, bad checksum, full disk: one line, not a traceback
        raise missing(f"getting them failed ({type(e).__name__}: {e})") from None
    finally:
        socket.setdefaulttimeout(old)


def _arrays(spec: Spec, ds) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x C x H x W, int64 labels) from a torchvision dataset object."""
    if spec.kind == "idx":
        return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64)
    if spec.kind == "cifar":
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)
    return ds.data, np.asarray(ds.labels, dtype=np.int64)


def _cifar100_coarse(ds, root: Path, train: bool, fine: np.ndarray) -> np.ndarray:
    """Superclass labels from the dataset file, checked against the known fine -> coarse table."""
    with open(Path(root) / ds.base_folder / ("train" if train else "test"), "rb") as f:
        coarse = np.asarray(pickle.load(f, encoding="latin1")["coarse_labels"], dtype=np.int64)
    if not np.array_equal(coarse, np.asarray(c100.FINE_TO_COARSE)[fine]):
        raise RuntimeError("CIFAR-100 coarse labels disagree with the known superclass table")
    return coarse


def _class_setup(cfg, key: str, name: str) -> tuple[object, list[str], bool]:
    """(cfg with `superclasses` expanded into `classes`, label names, use coarse labels?)."""
    label, supers = str(cfg.label), cfg.superclasses  # fine | coarse: the schema's choice
    if name != "cifar100":
        if supers is not None or label != "fine":
            raise ConfigError(problem(f"{key}.superclasses/label", [None if supers is None else list(supers), label],
                                      "null / fine unless dataset=cifar100"))
        return cfg, DATASETS[name].classes, False
    if supers is None:
        return cfg, (c100.COARSE_NAMES if label == "coarse" else c100.FINE_NAMES), label == "coarse"
    bad = [s for s in supers if s not in c100.SUPERCLASSES]
    if bad or label == "coarse" or cfg.get("classes") is not None:
        raise ConfigError(problem(f"{key}.superclasses", list(supers),
                                  f"names from {c100.COARSE_NAMES}, with {key}.classes=null and label=fine"))
    fine = [f for s in supers for f in c100.SUPERCLASSES[s]]
    return OmegaConf.merge(cfg, {"classes": fine}), c100.FINE_NAMES, False


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    name = str(cfg.dataset)
    if name not in DATASETS:
        raise ConfigError(problem(f"{key}.dataset", name, f"one of {sorted(DATASETS)}"))
    spec = DATASETS[name]
    cfg, class_names, coarse = _class_setup(cfg, key, name)
    # Check class names before touching files: a typo should not wait for a download.
    _select_classes(cfg, key, np.arange(len(class_names)), class_names)
    if not data_dir:
        raise ConfigError(problem("paths.data_dir", data_dir, "a folder for dataset files"))
    root = Path(os.path.expanduser(str(data_dir))).resolve()
    train, test = open_splits(spec, name, root, key=key, download=bool(cfg.download))
    x, y = _arrays(spec, train)
    x_test, y_test = _arrays(spec, test)
    if name == "cifar100" and list(train.classes) != c100.FINE_NAMES:
        raise RuntimeError(f"CIFAR-100 fine class names in {root} differ from the known list")
    if coarse:
        y, y_test = _cifar100_coarse(train, root, True, y), _cifar100_coarse(test, root, False, y_test)
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=x, y=y, x_test=x_test, y_test=y_test,
                            class_names=class_names, info={"kind": "torchvision", "dataset": name,
                                                           "files": str(root)})
