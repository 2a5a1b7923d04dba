"""A task from folders of images, one subfolder per class (torchvision's ImageFolder layout).

Either `root/train/<class>/*.png` with optional `root/val/` and `root/test/` (same class names), or one
`root/<class>/*.png` folder that is split by ratio (`test_fraction`, `val_fraction`) with `split_seed`.
Images are read once into memory as `channels` (1 = grey, 3 = RGB; null = RGB unless every image is grey) and
resized to `image_size` x `image_size` (required when the images differ in size; the aspect ratio is not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from transferlab.errors import ConfigError, problem
from transferlab.tasks.arrays import task_from_arrays
from transferlab.tasks.base import TaskData
from transferlab.tasks.npz import resolve_path

SPLITS = ("train", "val", "test")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _index(folder: Path, class_to_idx: dict[str, int], key: str) -> list[tuple[str, int]]:
    extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in class_to_idx)
    if extra:
        raise ConfigError(problem(f"{key}.root", str(folder.parent), f"the same class folders in every split; "
                                  f"{folder.name}/ has {extra}, not in train/ {sorted(class_to_idx)}"))
    return make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def _read(samples: list[tuple[str, int]], channels: int, size: int | None, key: str) -> np.ndarray:
    """uint8 N x C x H x W."""
    images = []
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except OSError as e:
            raise ConfigError(problem(f"{key}.root", path, f"a readable image ({e})")) from None
    mode = "L" if channels == 1 else "RGB"
    sizes = {im.size for im in images}
    if size is None and len(sizes) > 1:
        raise ConfigError(problem(f"{key}.image_size", None, f"an integer: the images have {len(sizes)} different "
                                  f"sizes, e.g. {sorted(sizes)[:3]}"))
    out = []
    for im in images:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    root = resolve_path(cfg.get("root"), key, "root")
    if not root.is_dir():
        raise ConfigError(problem(f"{key}.root", str(root), "a folder"))
    explicit = (root / "train").is_dir()
    if not explicit and any((root / s).is_dir() for s in ("val", "test")):
        raise ConfigError(problem(f"{key}.root", str(root), "a train/ folder next to val/ and test/ (or only class "
                                  "folders, to split by ratio)"))
    base = root / "train" if explicit else root
    try:
        classes, class_to_idx = find_classes(str(base))
    except FileNotFoundError as e:
        raise ConfigError(problem(f"{key}.root", str(root), f"class subfolders of images ({e})")) from None
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} if explicit else {"train": root}
    samples = {s: _index(d, class_to_idx, key) for s, d in split_dirs.items()}
    if not samples["train"]:
        raise ConfigError(problem(f"{key}.root", str(root), f"image files ({', '.join(IMG_EXTENSIONS)}) "
                                  "inside the class folders"))
    # Read every split at one channel count so they agree (decided over all images when channels=null).
    channels = cfg.get("channels")
    if channels is None:
        channels = 1 if all(_is_grey(p) for s in samples.values() for p, _ in s) else 3
    size = cfg.get("image_size")
    arrays = {s: (_read(v, channels, size, key), np.array([c for _, c in v], dtype=np.int64))
              for s, v in samples.items() if v}
    shapes = {s: a[0].shape[1:] for s, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError(problem(f"{key}.image_size", size, f"an integer: splits differ in image size {shapes}"))
    val, test = arrays.get("val", (None, None)), arrays.get("test", (None, None))
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=arrays["train"][0], y=arrays["train"][1],
                            x_val=val[0], y_val=val[1], x_test=test[0], y_test=test[1], class_names=classes,
                            info={"kind": "image_folder", "root": str(root),
                                  "splits": "explicit" if explicit else "by ratio"})


def _is_grey(path: str) -> bool:
    try:
        with Image.open(path) as im:
            return im.mode in GREY_MODES
    except OSError as e:
        raise ConfigError(problem("image", path, f"a readable image ({e})")) from None
