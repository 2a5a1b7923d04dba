"""What every score checks before it computes: arrays of the right shape, and inputs on which a score is defined.

Two kinds of bad input are kept apart. A *malformed* input (wrong shape, lengths that disagree, logits where
probabilities belong) is the caller's bug: ValueError. A *degenerate* input is well-formed data on which no score
is defined (a single class, one example per class, constant or non-finite features): `Degenerate`, whose message
is the reason; the public functions turn it into NaN and log the reason (`on_degenerate="raise"` keeps it).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

log = logging.getLogger("transferlab.scores")

ON_DEGENERATE = ("nan", "raise")


class Degenerate(ValueError):
    """Well-formed input on which the score is not defined; `str()` is the reason."""


def guarded(name: str, on_degenerate: str, compute: Callable[..., float], *args: Any) -> float:
    """`compute(*args)` as a float; on `Degenerate`, NaN with the reason logged (or re-raised when asked)."""
    if on_degenerate not in ON_DEGENERATE:
        raise ValueError(f"on_degenerate={on_degenerate!r}: one of {ON_DEGENERATE}")
    try:
        return float(compute(*args))
    except Degenerate as e:
        if on_degenerate == "raise":
            raise
        log.warning("%s is NaN: %s", name, e)
        return math.nan


def labels(values: Any, n: int | None = None) -> tuple[np.ndarray, int]:
    """(labels as 0..K-1 in sorted order of the given values, K). Any hashable label values; integer-valued floats
    are accepted. Degenerate when there are no examples, a single class, or one example in every class."""
    y = np.asarray(values)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per example), got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} examples")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("labels must be class ids (integers or names), not fractional or non-finite numbers")
    if len(y) == 0:
        raise Degenerate("no examples")
    classes, y = np.unique(y, return_inverse=True)
    k = len(classes)
    if k < 2:
        raise Degenerate(f"a single class ({classes.tolist()[0]!r}): a score compares classes")
    counts = np.bincount(y, minlength=k)
    if counts.max() < 2:
        raise Degenerate(f"one example per class ({k} classes, {len(y)} examples): no class has a second example "
                         "to tell its spread from the others'")
    return y.astype(np.int64), k


def features(values: Any) -> np.ndarray:
    """[N, D] float64 features. Degenerate when any value is non-finite or every example has the same vector."""
    f = np.asarray(values, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-D [examples, dimensions], got shape {f.shape} (pool or flatten "
                         "feature maps first)")
    if f.shape[1] == 0:
        raise ValueError("features have no dimensions")
    if not np.all(np.isfinite(f)):
        bad = int((~np.isfinite(f)).any(axis=1).sum())
        raise Degenerate(f"{bad} of {len(f)} feature vectors hold NaN or inf")
    if len(f) and np.all(f == f[0]):
        raise Degenerate("constant features: every example has the same feature vector")
    return f
