"""sklearn's bundled handwritten digits: 1 797 real 8x8 images, available offline."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from transferlab.tasks.arrays import task_from_arrays
from transferlab.tasks.base import TaskData


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = digits.target.astype(np.int64)
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=x, y=y,
                            class_names=[str(i) for i in range(10)])
