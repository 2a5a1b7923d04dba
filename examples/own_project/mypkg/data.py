"""An own task: synthetic gratings (nothing downloads). A class is an orientation; images are 1 x 12 x 12 sine
gratings with a random phase and pixel noise, floats in [0, 1].

transferlab calls `gratings(**<task>.kwargs)` and does the rest (fixed val/test splits, nested labelled subsets,
input checks), as for its own tasks. The data must be the same on every call: it is seeded from the arguments.
"""

from __future__ import annotations

import numpy as np


def gratings(angles: list[float], frequency: float = 0.2, n_per_class: int = 150, noise: float = 0.25,
             size: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, labels = [], []
    for k, angle in enumerate(angles):
        theta = np.deg2rad(angle)
        along = xx * np.cos(theta) + yy * np.sin(theta)
        phase = rng.uniform(0.0, 2 * np.pi, size=(n_per_class, 1, 1))
        x = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along[None] + phase)
        x = x + rng.normal(0.0, noise, size=x.shape)
        images.append(np.clip(x, 0.0, 1.0).astype(np.float32)[:, None])  # N x 1 x H x W
        labels.append(np.full(n_per_class, k, dtype=np.int64))
    return {"train": (np.concatenate(images), np.concatenate(labels)), "classes": [f"{a:g}deg" for a in angles]}
