"""Fisher's iris (150 flowers, 4 measurements, 3 species) from sklearn: the tabular task for the `mlp` backbone.

Inputs are N x 4 feature vectors; the config standardises them with train-pool statistics (`normalize: pool`).
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_iris

from transferlab.tasks.arrays import task_from_arrays
from transferlab.tasks.base import TaskData


def load(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    iris = load_iris()
    return task_from_arrays(cfg, key=key, data_seed=data_seed, x=iris.data.astype(np.float32),
                            y=iris.target.astype(np.int64), class_names=[str(n) for n in iris.target_names],
                            info={"kind": "iris", "features": list(iris.feature_names)})
