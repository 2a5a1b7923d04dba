"""NCE: the negative conditional entropy of the target labels given the source model's labels (Tran et al. 2019)."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.scores._input import guarded
from transferlab.scores._input import labels as _labels


def nce(source_pred: Any, labels: Any, *, on_degenerate: str = "nan") -> float:
    r"""NCE of the source model's hard predictions `source_pred` [N] (its argmax class on each target example) for
    target `labels` [N] (higher is better; <= 0).

    Tran, Nguyen & Hassner 2019, "Transferability and Hardness of Supervised Classification Tasks" (ICCV):

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log( P(y, z) / P(z) ),

    with P the empirical joint distribution of target label Y and source label Z over the N examples. The
    entropy is of the *target* given the *source* label, H(Y | Z), not H(Z | Y): swapping the two arguments is the
    known bug of early public implementations (it scores how well target labels predict source labels).
    Source labels that determine the target label score 0; a source model that predicts one class for every
    example scores -H(Y), -log K for K balanced classes.

    `source_pred` holds class ids (a 2-D array of probabilities is refused: pass its argmax). NaN (reason
    logged; `on_degenerate="raise"` raises `Degenerate`) for a single class or one example per class.
    """
    return guarded("nce", on_degenerate, _nce, source_pred, labels)


def _nce(source_pred: Any, labels: Any) -> float:
    z = np.asarray(source_pred)
    if z.ndim != 1:
        raise ValueError(f"source_pred must be 1-D (the source model's class per example; the argmax of its "
                         f"probabilities), got shape {z.shape}")
    if z.dtype.kind == "f" and (not np.all(np.isfinite(z)) or np.any(z != np.round(z))):
        raise ValueError("source_pred must be class ids, not probabilities or scores: pass the argmax")
    y, _ = _labels(labels, len(z))
    _, z = np.unique(z, return_inverse=True)
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(z)
    marginal = joint.sum(axis=0)  # P(z)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / marginal)[nz])))
