"""Transferability scores (`transferlab.scores`): values checked by hand on small inputs, against an independent
evidence maximisation for LogME, invariances, and degenerate inputs -> NaN with a reason (never a crash)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from transferlab.config import Score
from transferlab.scores import METHODS, Degenerate, evaluate, hscore, leep, logme, nce

# Two classes of four, D = 2: class 0 around (1, 0), class 1 around (0, 1), the same within-class offsets.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
OFF = np.array([[.1, -.1], [-.1, .1], [.05, .05], [-.05, -.05]])
SEPARABLE = np.vstack([np.array([1.0, 0.0]) + OFF, np.array([0.0, 1.0]) + OFF])
UNINFORMATIVE = np.sin(np.arange(16) * 1.7).reshape(8, 2)  # a fixed pattern unrelated to the labels


def test_the_config_offers_exactly_the_implemented_scores():
    assert set(Score.values()) == set(METHODS)


# ---------------------------------------------------------------- H-score
def test_hscore_known_two_class_case():
    # Centred, the class means are +-(0.5, -0.5): between-class covariance B = 0.25 [[1, -1], [-1, 1]], variance
    # 0.5 along u = (1, -1)/sqrt2 and 0 along v = (1, 1)/sqrt2. The within-class offsets o have mean (o.u)^2 =
    # (0.02 + 0.02 + 0 + 0) / 4 = 0.01 and mean (o.v)^2 = (0 + 0 + 0.005 + 0.005) / 4 = 0.0025, no cross term, so
    # u and v diagonalise cov f = B + W as well: H = tr((B + W)^-1 B) = 0.5 / (0.5 + 0.01) = 50/51.
    assert hscore(SEPARABLE, Y, shrinkage=None) == pytest.approx(50 / 51, rel=1e-12)
    # 1-D: classes {-2, 0} and {0, 2}: var f = 2, var E[f|y] = 1 -> 0.5 (Ledoit-Wolf leaves one dimension as is)
    f1 = np.array([[-2.0], [0.0], [0.0], [2.0]])
    assert hscore(f1, [0, 0, 1, 1], shrinkage=None) == pytest.approx(0.5)
    assert hscore(f1, [0, 0, 1, 1]) == pytest.approx(0.5)
    # class means that coincide: nothing between the classes
    same_means = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    assert hscore(same_means, [0, 0, 1, 1], shrinkage=None) == pytest.approx(0.0, abs=1e-12)


def test_hscore_shrinkage_is_ledoit_wolf_applied_as_in_ibrahim_et_al():
    from sklearn.covariance import ledoit_wolf_shrinkage

    f = SEPARABLE - SEPARABLE.mean(axis=0)
    a = ledoit_wolf_shrinkage(f, assume_centered=True)
    cov = f.T @ f / len(f)
    shrunk = (1 - a) * cov + a * np.trace(cov) / 2 * np.eye(2)
    g = np.vstack([np.repeat(f[:4].mean(0, keepdims=True), 4, 0), np.repeat(f[4:].mean(0, keepdims=True), 4, 0)])
    expected = np.trace(np.linalg.solve(shrunk, (1 - a) * g.T @ g / len(f)))
    assert 0 < a < 1 and hscore(SEPARABLE, Y) == pytest.approx(expected, rel=1e-10)
    assert hscore(SEPARABLE, Y) == pytest.approx(0.9694637325063273, rel=1e-9)
    assert hscore(UNINFORMATIVE, Y) < 0.01 and hscore(SEPARABLE, Y) > 0.9


def test_hscore_wide_features_use_the_same_estimator_in_the_dual():
    """D > N is computed from the N x N Gram matrix: the same Ledoit-Wolf coefficient and the same score as the
    D x D computation (sklearn's estimator), to rounding."""
    from sklearn.covariance import ledoit_wolf

    from transferlab.scores._hscore import ledoit_wolf_gram

    rng = np.random.default_rng(3)
    y = np.arange(30) % 3
    f = rng.standard_normal((30, 200)) + 2 * np.eye(3, 200)[y]
    c = f - f.mean(axis=0)
    cov, a = ledoit_wolf(c, assume_centered=True)
    g = np.stack([c[y == k].mean(axis=0) for k in range(3)])[y]
    primal = np.trace(np.linalg.solve(cov, (1 - a) * g.T @ g / 30))
    assert ledoit_wolf_gram(c, c @ c.T) == pytest.approx(a, rel=1e-10)
    assert hscore(f, y) == pytest.approx(primal, rel=1e-9)


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", None])
def test_hscore_is_unchanged_by_a_shift_of_the_features_and_by_renaming_classes(shrinkage):
    base = hscore(SEPARABLE, Y, shrinkage=shrinkage)
    assert hscore(SEPARABLE + np.array([100.0, -7.0]), Y, shrinkage=shrinkage) == pytest.approx(base, rel=1e-8)
    assert hscore(SEPARABLE, np.where(Y == 0, "dog", "cat"), shrinkage=shrinkage) == pytest.approx(base)


def test_hscore_plain_estimator_refuses_n_at_most_d(caplog):
    f = np.cos(np.outer(np.arange(6) + 1, np.arange(10) + 1) * 0.7)
    y = [0, 0, 0, 1, 1, 1]
    with caplog.at_level(logging.WARNING, logger="transferlab.scores"):
        assert math.isnan(hscore(f, y, shrinkage=None))
    assert "N=6 <= D=10" in caplog.text
    assert 0 <= hscore(f, y) <= 1  # the shrunk estimator is defined there, within [0, K - 1]


# ---------------------------------------------------------------- LogME
def _dense_evidence(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """The paper's per-sample log evidence written out with dense matrices (no SVD, no fixed point)."""
    a, b = math.exp(log_alpha), math.exp(log_beta)
    n, d = f.shape
    A = a * np.eye(d) + b * f.T @ f
    m = b * np.linalg.solve(A, f.T @ y)
    _, logdet = np.linalg.slogdet(A)
    return (d * math.log(a) + n * math.log(b) - n * math.log(2 * math.pi) - b * np.sum((f @ m - y) ** 2)
            - a * m @ m - logdet) / 2 / n


def _max_evidence(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME by brute force: maximise the dense evidence over (log alpha, log beta) per class, then average."""
    best = []
    for k in np.unique(labels):
        y = (labels == k).astype(float)
        r = minimize(lambda p, y=y: -_dense_evidence(f, y, *p), [0.0, 0.0], method="Nelder-Mead",
                     options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 20000})
        best.append(-r.fun)
    return float(np.mean(best))


def test_logme_is_the_maximum_evidence():
    for f, y in ((SEPARABLE, Y), (UNINFORMATIVE, Y)):
        assert logme(f, y) == pytest.approx(_max_evidence(f, y), abs=1e-6)
    # fixed values (the fixed point above, pinned): separable features score far higher
    assert logme(SEPARABLE, Y) == pytest.approx(0.2975714474188771, abs=1e-7)
    assert logme(UNINFORMATIVE, Y) == pytest.approx(-1.0723652201552993, abs=1e-7)


def test_logme_with_fewer_examples_than_dimensions():
    f = np.cos(np.outer(np.arange(6) + 1, np.arange(10) + 1) * 0.7)  # N = 6 < D = 10
    y = np.array([0, 0, 0, 1, 1, 1])
    value = logme(f, y)
    assert math.isfinite(value) and value == pytest.approx(_max_evidence(f, y), abs=1e-5)


def test_logme_is_unchanged_by_permuting_or_renaming_classes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    f = rng.standard_normal((18, 4)) + np.eye(3, 4)[y]
    base = logme(f, y)
    for perm in ([1, 2, 0], [2, 0, 1], [0, 2, 1]):
        assert logme(f, np.array(perm)[y]) == pytest.approx(base, abs=1e-12)
    assert logme(f, np.array(["c", "a", "b"])[y]) == pytest.approx(base, abs=1e-12)
    assert logme(f[::-1], y[::-1]) == pytest.approx(base, abs=1e-10)  # order of the examples


# ---------------------------------------------------------------- NCE and LEEP
def test_nce_known_values_and_argument_order():
    y = [0, 0, 1, 1]
    assert nce([0, 0, 1, 1], y) == pytest.approx(0.0)  # the source label determines the target label
    assert nce([3, 3, 7, 7], y) == pytest.approx(0.0)  # whatever the source classes are called
    assert nce([0, 0, 0, 0], y) == pytest.approx(-math.log(2))  # no information: -H(Y)
    # z = (0, 0, 0, 1): P(z=0) = 3/4 with y split 2:1, P(z=1) = 1/4 with y = 1: H(Y|Z) = 3/4 H(2/3, 1/3)
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert nce([0, 0, 0, 1], y) == pytest.approx(-0.75 * h)
    # the swapped (buggy) argument order would give -H(Z|Y) = -1/2 log 2: not this
    assert nce([0, 0, 0, 1], y) != pytest.approx(-0.5 * math.log(2))


def test_leep_known_values_and_argument_order():
    y = [0, 0, 1, 1]
    soft = [[.9, .1], [.9, .1], [.1, .9], [.1, .9]]
    # P(y=0, z=0) = 1.8/4, P(z=0) = 2/4 -> P(y=0|z=0) = 0.9; each example: 0.9*0.9 + 0.1*0.1 = 0.82
    assert leep(soft, y) == pytest.approx(math.log(0.82))
    assert leep(np.full((4, 2), 0.5), y) == pytest.approx(-math.log(2))  # no information: -H(Y)
    assert leep(np.eye(2)[[0, 0, 1, 1]], y) == pytest.approx(0.0)
    # one-hot source outputs: LEEP is NCE; the swapped conditional P(z|y) would give -1/2 log 2
    one_hot = np.eye(2)[[0, 0, 0, 1]]
    assert leep(one_hot, y) == pytest.approx(nce([0, 0, 0, 1], y))
    assert leep(one_hot, y) != pytest.approx(-0.5 * math.log(2))
    assert leep(soft, ["b", "b", "a", "a"]) == pytest.approx(math.log(0.82))


# ---------------------------------------------------------------- degenerate and malformed input
@pytest.mark.parametrize("fn,args,reason", [
    (logme, (SEPARABLE[:2], [0, 1]), "one example per class"),
    (hscore, (SEPARABLE[:2], [0, 1]), "one example per class"),
    (logme, (SEPARABLE, np.zeros(8)), "a single class"),
    (hscore, (SEPARABLE, np.zeros(8)), "a single class"),
    (nce, ([0, 1, 0, 1], [5, 5, 5, 5]), "a single class"),
    (leep, (np.full((2, 3), 1 / 3), [0, 1]), "one example per class"),
    (logme, (np.ones((8, 3)), Y), "constant features"),
    (hscore, (np.ones((8, 3)), Y), "constant features"),
    (logme, (np.where(np.eye(8, 2) > 0, np.nan, 1.0), Y), "NaN or inf"),
    (logme, (np.empty((0, 3)), []), "no examples"),
])
def test_degenerate_input_is_nan_with_a_logged_reason(fn, args, reason, caplog):
    with caplog.at_level(logging.WARNING, logger="transferlab.scores"):
        assert math.isnan(fn(*args))
    assert reason in caplog.text and fn.__name__ in caplog.text
    with pytest.raises(Degenerate, match=reason):
        fn(*args, on_degenerate="raise")
    value, why = evaluate(fn.__name__, *args)
    assert math.isnan(value) and reason in why


@pytest.mark.parametrize("call", [
    lambda: logme(np.ones(8), Y),  # 1-D features
    lambda: logme(SEPARABLE, Y[:5]),  # lengths differ
    lambda: hscore(SEPARABLE, Y, shrinkage="oas"),
    lambda: leep(np.array([[2.0, -1.0]] * 4), [0, 0, 1, 1]),  # logits, not probabilities
    lambda: nce(np.full((4, 2), 0.5), [0, 0, 1, 1]),  # probabilities, not the argmax
    lambda: logme(SEPARABLE, Y + 0.5),  # fractional labels
])
def test_malformed_input_is_the_callers_error(call):
    with pytest.raises(ValueError):
        call()


def test_evaluate_reports_values_without_a_reason():
    assert evaluate("nce", [0, 0, 1, 1], [0, 0, 1, 1]) == (pytest.approx(0.0), None)
