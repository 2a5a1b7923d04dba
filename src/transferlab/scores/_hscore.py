"""H-score: how much of the features' variance lies between the classes (Bao et al. 2019), with a shrunk covariance."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.scores._input import Degenerate, guarded
from transferlab.scores._input import features as _features
from transferlab.scores._input import labels as _labels

SHRINKAGE = ("ledoit_wolf", None)


def hscore(features: Any, labels: Any, *, shrinkage: str | None = "ledoit_wolf", on_degenerate: str = "nan") -> float:
    r"""H-score of `features` [N, D] for `labels` [N] (higher: the features separate the classes better).

    Bao, Li, Huang, Xu, Cao, Ma & Zhang 2019, "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning" (ICIP):

        H(f) = tr( cov(f)^-1 cov(E[f | y]) ),

    with cov(f) the covariance of the features and cov(E[f | y]) that of each example's class mean (the
    between-class covariance), both empirical (1/N: the normalisation cancels). 0 <= H <= K - 1.

    `shrinkage="ledoit_wolf"` (default): the shrinkage H-score of Ibrahim, Ponomareva & Mazumder 2022 ("Newer is
    not always better: rethinking transferability metrics, their peculiarities, stability and performance"):
    cov(f) is replaced by the Ledoit-Wolf estimate (1 - a) cov(f) + a (tr cov(f) / D) I, with a the Ledoit-Wolf
    (2004) coefficient (`sklearn.covariance.ledoit_wolf`; for D > N the same estimator is computed in the
    N-dimensional dual, so wide features cost O(N^2 D), not O(D^3)), and the between-class covariance by
    (1 - a) cov(E[f | y]). With N <= D the empirical cov(f) is singular and the plain score saturates at K - 1
    whatever the features; a -> 0 as N grows past D, where both agree. It is the default in every case, not only
    for N <= D, so that features of different widths compared at one N (the cuts of one network) are scored by
    one estimator. `shrinkage=None`: the plain estimator with a pseudo-inverse, as in the paper's code; NaN with
    a reason when N <= D.

    Unchanged by a constant shift of the features (both covariances are centred) and by renaming classes.
    NaN (reason logged; `on_degenerate="raise"` raises `Degenerate`) for a single class, one example per class,
    constant or non-finite features.
    """
    if shrinkage not in SHRINKAGE:
        raise ValueError(f"shrinkage={shrinkage!r}: one of {SHRINKAGE}")
    return guarded("hscore", on_degenerate, _hscore, features, labels, shrinkage)


def _hscore(features: Any, labels: Any, shrinkage: str | None) -> float:
    f = _features(features)
    y, k = _labels(labels, len(f))
    n, d = f.shape
    f = f - f.mean(axis=0)
    means = np.zeros((k, d))
    np.add.at(means, y, f)
    means /= np.bincount(y, minlength=k)[:, None]
    g = means[y]  # each example's class mean (centred, since f is)
    between = g.T @ g / n
    if shrinkage is None:
        if n <= d:
            raise Degenerate(f"N={n} <= D={d}: the empirical feature covariance is singular and the plain H-score "
                             "saturates at K-1; use shrinkage='ledoit_wolf'")
        cov = f.T @ f / n
        return float(np.trace(np.linalg.pinv(cov, rcond=1e-15, hermitian=True) @ between))
    if d > n:
        return _shrunk_dual(f, g)
    from sklearn.covariance import ledoit_wolf

    cov, a = ledoit_wolf(f, assume_centered=True)
    return float(np.trace(np.linalg.solve(cov, (1.0 - a) * between)))


def ledoit_wolf_gram(f: np.ndarray, gram: np.ndarray) -> float:
    """The Ledoit-Wolf coefficient of centred features f [N, D] from their Gram matrix f f^T (N x N): the same
    formula as `sklearn.covariance.ledoit_wolf_shrinkage(f, assume_centered=True)`, in O(N^2) memory instead of
    O(D^2) (wide feature maps)."""
    n, d = f.shape
    sq = np.einsum("ij,ij->i", f, f)  # ||x_i||^2, the Gram's diagonal
    mu = sq.sum() / n / d  # tr(S) / D
    fro = float(np.sum(gram ** 2)) / n ** 2  # ||S||_F^2 = ||f^T f||_F^2 / N^2 = ||f f^T||_F^2 / N^2
    beta = (float(np.sum(sq ** 2)) / n - fro) / (d * n)
    delta = (fro - 2.0 * mu * sq.sum() / n + d * mu ** 2) / d  # ||S - mu I||_F^2 / D
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def _shrunk_dual(f: np.ndarray, g: np.ndarray) -> float:
    """The shrinkage H-score for D > N in the N-dimensional dual, by the push-through identity:
    with cov_a = c I + e f^T f (c = a mu, e = (1 - a) / N), cov_a^-1 = (I - f^T (c/e I + f f^T)^-1 f) / c, so
    tr(cov_a^-1 (1 - a) g^T g / N) = (1 - a) / (N c) (tr(g^T g) - tr((c/e I + f f^T)^-1 P P^T)), P = f g^T."""
    n, d = f.shape
    gram = f @ f.T
    a = ledoit_wolf_gram(f, gram)
    if a >= 1.0:
        return 0.0  # the shrunk covariance is all target: nothing left between the classes
    c = a * float(np.trace(gram)) / n / d
    if c <= 0:
        raise Degenerate(f"N={n} < D={d} and a Ledoit-Wolf coefficient of 0: the covariance stays singular")
    e = (1.0 - a) / n
    p = f @ g.T
    inner = np.linalg.solve(c / e * np.eye(n) + gram, p @ p.T)
    return float((1.0 - a) / (n * c) * (np.sum(g * g) - np.trace(inner)))
