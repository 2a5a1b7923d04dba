"""LEEP: the log expected empirical prediction of the source model's soft outputs (Nguyen et al. 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.scores._input import Degenerate, guarded
from transferlab.scores._input import labels as _labels


def leep(source_probs: Any, labels: Any, *, on_degenerate: str = "nan") -> float:
    r"""LEEP of the source model's class probabilities `source_probs` [N, Cs] for target `labels` [N] (higher is
    better; <= 0).

    Nguyen, Hassner, Seeger & Archambeau 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations" (ICML). With theta(x_i) the source model's softmax output on target example i (over its
    own Cs source classes z), the empirical joint and conditional of target label y and source label z are

        P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z,     P(y | z) = P(y, z) / sum_y' P(y', z),

    and LEEP = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z ): the mean log-likelihood of the "expected empirical
    predictor" that maps source outputs to target labels through P(y | z). Conditioned on the *source* label z
    (P(y | z), not P(z | y): swapping them is the argument-order bug of early public implementations).
    A source model that carries no information about y (equal outputs for every example) scores the target's
    negative label entropy, -log K for K balanced classes; source outputs that determine y score 0.

    `source_probs` must be probabilities (rows >= 0 summing to 1; pass softmax(logits)): ValueError otherwise.
    NaN (reason logged; `on_degenerate="raise"` raises `Degenerate`) for a single class, one example per class
    or non-finite probabilities.
    """
    return guarded("leep", on_degenerate, _leep, source_probs, labels)


def _probs(values: Any) -> np.ndarray:
    p = np.asarray(values, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"source_probs must be 2-D [examples, source classes], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise Degenerate(f"{int((~np.isfinite(p)).any(axis=1).sum())} rows of source_probs hold NaN or inf")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be probabilities (rows >= 0 summing to 1): pass softmax(logits)")
    return p


def _leep(source_probs: Any, labels: Any) -> float:
    p = _probs(source_probs)
    y, k = _labels(labels, len(p))
    joint = np.zeros((k, p.shape[1]))
    np.add.at(joint, y, p)
    joint /= len(p)
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = np.sum(p * conditional[y], axis=1)  # sum_z theta(x_i)_z P(y_i | z), > 0 for every i
    return float(np.mean(np.log(expected)))
