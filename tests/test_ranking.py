import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferkit.choose.transferability import leep, logme, logme_reference


def _blobs(rng, n, d, k, spread):
    """Class means ``spread * N(0, I)`` plus unit Gaussian noise; balanced labels."""
    y = np.arange(n) % k
    means = spread * rng.normal(size=(k, d))
    return means[y] + rng.normal(size=(n, d)), y


def test_logme_fast_matches_reference_n_greater_than_d():
    rng = np.random.default_rng(0)
    f, y = _blobs(rng, 60, 12, 4, spread=0.5)
    fast, ref = logme(f, y), logme_reference(f, y)
    assert abs(fast - ref) < 1e-6, (fast, ref)
    # and on pure noise, where the optimum of alpha runs off to infinity
    noise = rng.normal(size=(60, 12))
    assert abs(logme(noise, y) - logme_reference(noise, y)) < 1e-6


def test_logme_fast_matches_reference_n_less_than_d():
    # N < D with features whose evidence has an interior optimum: the reference's explicit inverse
    # of A = alpha I + beta F^T F loses digits when beta runs to infinity (see the next test).
    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(10, 30)), np.arange(10) % 3
    fast, ref = logme(f, y), logme_reference(f, y)
    assert abs(fast - ref) < 1e-6, (fast, ref)


def _marginal_max(f, y):
    """max over (alpha, beta) of log N(y; 0, F F^T / alpha + I / beta) / N, by a generic optimiser:
    the same evidence as LogME's, written as the Gaussian marginal likelihood instead."""
    n = len(y)
    gram = f @ f.T
    scores = []
    for cls in np.unique(y):
        t = (y == cls).astype(float)

        def neg(log_ab, t=t):
            a, b = np.exp(log_ab)
            return -multivariate_normal(np.zeros(n), gram / a + np.eye(n) / b).logpdf(t) / n

        runs = [
            minimize(neg, x0, method="L-BFGS-B", bounds=[(-30, 40)] * 2, options=dict(ftol=1e-15, gtol=1e-12))
            for x0 in [(0.0, 0.0), (5.0, 5.0), (10.0, 20.0)]
        ]
        scores.append(-min(r.fun for r in runs))
    return float(np.mean(scores))


def test_logme_few_shot_equals_maximised_marginal_likelihood():
    # 4 shots x 3 classes, D = 40, informative: beta -> infinity (exact fit) for some classes.
    rng = np.random.default_rng(2)
    f, y = _blobs(rng, 12, 40, 3, spread=2.0)
    assert abs(logme(f, y) - _marginal_max(f, y)) < 1e-6


def test_logme_prefers_informative_features():
    rng = np.random.default_rng(3)
    informative, y = _blobs(rng, 200, 16, 4, spread=2.0)
    noise = rng.normal(size=(200, 16))
    good, bad = logme(informative, y), logme(noise, y)
    assert good > bad + 0.1, (good, bad)


def test_logme_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        logme(np.zeros((5, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        logme(np.zeros(5), np.zeros(5, dtype=int))


def test_leep_hand_computed():
    theta = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 0, 1, 1])
    # P(y,z) = 1/4 * [[0.9+0.8, 0.1+0.2], [0.3+0.2, 0.7+0.8]] = [[0.425, 0.075], [0.125, 0.375]]
    # P(z) = [0.55, 0.45];  P(y|z) = [[17/22, 1/6], [5/22, 5/6]]
    # EEP: x1: 0.9*17/22 + 0.1*1/6 = 47/66   x2: 0.8*17/22 + 0.2*1/6 = 43/66
    #      x3: 0.3*5/22 + 0.7*5/6  = 43/66   x4: 0.2*5/22 + 0.8*5/6  = 47/66
    # LEEP = (2 log 47/66 + 2 log 43/66) / 4 = 1/2 log(2021/4356) = -0.3839808833...
    expected = 0.5 * math.log(2021 / 4356)
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)
    # label values are names, not indices
    assert leep(theta, np.array([3, 3, 7, 7])) == pytest.approx(expected, abs=1e-12)


def test_leep_prefers_informative_source():
    rng = np.random.default_rng(4)
    n, k, z = 300, 3, 6
    y = np.arange(n) % k
    logits = rng.normal(size=(n, z))
    logits[np.arange(n), y * 2] += 3.0  # source class 2*y fires for target class y
    informative = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    uniform = np.full((n, z), 1.0 / z)
    # uniform predictions make P(y|z) the class prior: LEEP = mean log prior = log(1/3)
    assert leep(uniform, y) == pytest.approx(math.log(1 / 3), abs=1e-12)
    assert leep(informative, y) > leep(uniform, y) + 0.1


def test_leep_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        leep(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]))
