"""LogME: the log of the maximum evidence of a Bayesian linear model on the features (You et al. 2021)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from transferlab.scores._input import features as _features
from transferlab.scores._input import guarded
from transferlab.scores._input import labels as _labels

MAX_ITER = 300  # a cap: the fixed point usually settles in a few steps, slower when N <= D
TOL = 1e-10     # stop once the per-sample evidence changes by less than this
TINY = 1e-12  # floor of the denominators: an exact linear fit (zero residual) has unbounded evidence


def logme(features: Any, labels: Any, *, on_degenerate: str = "nan") -> float:
    r"""LogME of `features` [N, D] for `labels` [N] (higher: the features suit the task better).

    You, Liu, Wang & Long 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning" (ICML).
    Each class k is a regression target y = one-hot column k in {0, 1}^N, modelled as y = F w + noise with
    w ~ N(0, alpha^-1 I_D) and noise ~ N(0, beta^-1 I_N). Its log evidence is

        L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m
                         - 1/2 log |A|,      A = alpha I + beta F^T F,   m = beta A^-1 F^T y,

    maximised by MacKay's fixed point: gamma = sum_i beta s_i / (alpha + beta s_i) over the eigenvalues s_i of
    F^T F, then alpha <- gamma / m^T m and beta <- (N - gamma) / ||F m - y||^2, iterated from alpha = beta = 1
    until the per-sample evidence changes by < 1e-10 (at most 300 steps; the reference code stops after at most
    11 steps at a 1e-2 relative change of alpha/beta, so its values can differ from these in the third decimal).
    Computed in the eigenbasis of the smaller Gram matrix (F^T F or F F^T), once for all classes. LogME is the
    mean over the K classes of max L / N (per-sample log evidence). Features are used as given (no centring or
    scaling: the paper's choice; the score is not invariant to a shift or scale of the features), labels only
    through their classes, so renaming or permuting classes leaves it unchanged.

    Checked against the authors' repository (thuml/LogME) on random features: equal to its `_fit_icml` (the
    paper's computation) to the third decimal for N > D and N < D. Its default `_fit_fixed_point` agrees for N > D
    but, for N < D, sums log|A| over the N non-zero eigenvalues only, dropping the (D - N)/2 log alpha of A's null
    space, so its values are larger there; this implementation keeps the full log-determinant.

    NaN (reason logged; `on_degenerate="raise"` raises `Degenerate`) for a single class, one example per class,
    constant or non-finite features. A noiseless exact fit has unbounded evidence; the denominators are floored
    at 1e-12, which caps it.
    """
    return guarded("logme", on_degenerate, _logme, features, labels)


def _evidence(sigma: np.ndarray, z2: np.ndarray, outside: float, n: int, d: int, alpha: float,
              beta: float) -> tuple[float, float, float, float]:
    """(per-sample log evidence, gamma, m^T m, residual) at (alpha, beta), in the SVD basis: `sigma` the non-zero
    eigenvalues of F^T F, `z2` the squared coordinates of y on the matching left singular vectors, `outside` the
    squared norm of the part of y outside F's column space."""
    den = alpha + beta * sigma
    gamma = float(np.sum(beta * sigma / den))
    mm = float(np.sum(beta ** 2 * sigma * z2 / den ** 2))
    res = float(np.sum(alpha ** 2 * z2 / den ** 2)) + outside
    logdet = float(np.sum(np.log(den))) + (d - len(sigma)) * math.log(alpha)
    ev = (d * math.log(alpha) + n * math.log(beta) - n * math.log(2 * math.pi) - beta * res - alpha * mm
          - logdet) / 2
    return ev / n, gamma, mm, res


def _class_evidence(sigma: np.ndarray, z: np.ndarray, y_norm2: float, n: int, d: int) -> float:
    z2 = z ** 2
    outside = max(y_norm2 - float(z2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    ev, gamma, mm, res = _evidence(sigma, z2, outside, n, d, alpha, beta)
    for _ in range(MAX_ITER):
        new_alpha = max(gamma, TINY) / max(mm, TINY)
        new_beta = max(n - gamma, TINY) / max(res, TINY)
        alpha, beta = new_alpha, new_beta
        new_ev, gamma, mm, res = _evidence(sigma, z2, outside, n, d, alpha, beta)
        done = abs(new_ev - ev) < TOL
        ev = new_ev
        if done:
            break
    return ev


def _logme(features: Any, labels: Any) -> float:
    f = _features(features)
    y, k = _labels(labels, len(f))
    n, d = f.shape
    # Eigen-decomposition of the smaller Gram matrix (F^T F or F F^T): the SVD of F without computing both sides.
    sigma, vecs = np.linalg.eigh(f.T @ f if n >= d else f @ f.T)
    keep = sigma > sigma.max() * max(n, d) * np.finfo(np.float64).eps  # the numerical rank of F
    sigma, vecs = sigma[keep], vecs[:, keep]
    per_class = []
    for c in range(k):
        target = (y == c).astype(np.float64)
        # coordinates of y on the left singular vectors u_i = F v_i / sqrt(sigma_i) (or the eigenvectors of F F^T)
        z = (vecs.T @ (f.T @ target)) / np.sqrt(sigma) if n >= d else vecs.T @ target
        per_class.append(_class_evidence(sigma, z, float(target @ target), n, d))
    return float(np.mean(per_class))
