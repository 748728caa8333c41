"""Scores for choosing a source model before training, computed on frozen features or predictions.

Higher is better for both; compare scores of candidate sources on the same target data.

LogME — You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021. For each class ``k`` take the one-hot target ``y`` (length ``N``) and the
Bayesian linear model ``y = F w + noise``, ``w ~ N(0, alpha^-1 I_D)``, ``noise ~ N(0, beta^-1 I_N)``.
With ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T y`` the log evidence is

    L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2pi
                     - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log det A

maximised by the fixed-point iteration (starting at alpha = beta = 1)

    gamma = sum_i beta s_i^2 / (alpha + beta s_i^2)        (s_i: singular values of F)
    alpha <- gamma / m^T m,        beta <- (N - gamma) / ||F m - y||^2

The score is the mean over classes of ``L / N`` at the fixed point. When the evidence keeps rising
towards a boundary (features with no signal for a class: ``alpha -> inf``; ``N <= D`` and an exact
linear fit: ``beta -> inf``, common in few-shot targets) the iteration stops once ``L / N`` changes
by less than ``1e-10`` per step, which approximates the supremum.

LEEP — Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020. With ``theta(x_i)`` the source classifier's softmax over its
``Z`` classes:

    P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z,    P(y | z) = P(y, z) / sum_y' P(y', z)
    LEEP = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z )
"""

from __future__ import annotations

import math

import numpy as np

# Shared by logme and logme_reference (one driver) so both stop at the same iterate.
_MAX_ITER = 1000
_TOL = 1e-10  # stop when the per-sample log evidence L/N changes by less than this


def _check(features: np.ndarray, labels: np.ndarray, name: str = "features",
           shape: str = "[N, D]") -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"{name} must be {shape}, got shape {f.shape}")
    if y.ndim != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(f"labels must be [N] with N={f.shape[0]}, got shape {y.shape}")
    if f.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contain NaN or inf")
    return f, y


def _log_evidence(n, d, alpha, beta, m2, res2, logdet_a) -> float:
    """``L / N`` from its pieces (the equation in the module docstring)."""
    evidence = (
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet_a / 2
    )
    return evidence / n


def _maximise_evidence(terms, n: int, d: int) -> float:
    """MacKay's fixed-point iteration from ``alpha = beta = 1``.

    ``terms(alpha, beta)`` returns ``(gamma, m^T m, ||F m - y||^2, log det A)``. Stops when ``L/N``
    changes by at most ``_TOL``, after ``_MAX_ITER`` updates, or when the optimum lies on the boundary
    and the next update would leave ``(0, inf)`` (features with no signal for this class drive
    ``alpha`` to infinity; with ``N <= D`` a perfect fit drives ``beta`` to infinity): the evidence is
    then already within ``_TOL``-ish of its supremum.
    """
    alpha, beta = 1.0, 1.0
    gamma, m2, res2, logdet_a = terms(alpha, beta)
    value = _log_evidence(n, d, alpha, beta, m2, res2, logdet_a)
    for _ in range(_MAX_ITER):
        if m2 <= 0 or res2 <= 0 or n - gamma <= 0:
            break
        new_alpha, new_beta = gamma / m2, (n - gamma) / res2
        if not (0 < new_alpha < math.inf and 0 < new_beta < math.inf):
            break
        alpha, beta = new_alpha, new_beta
        gamma, m2, res2, logdet_a = terms(alpha, beta)
        new_value = _log_evidence(n, d, alpha, beta, m2, res2, logdet_a)
        done = abs(new_value - value) <= _TOL
        value = new_value
        if done:
            break
    return value


def _class_terms(s2: np.ndarray, q: np.ndarray, z: np.ndarray | None, y2: float, d: int):
    """``terms(alpha, beta)`` for :func:`_maximise_evidence` from the spectrum of ``F``.

    ``s2``: squared singular values; ``q = diag(s) U^T y``; ``y2 = ||y||^2``. When ``N <= D``,
    ``U`` is a complete basis of R^N and ``z = U^T y`` is given: the residual is then the sum of
    positive terms ``sum (alpha z_i / d_i)^2``. When ``N > D`` (``z = None``) it is
    ``||y||^2 - ||F m||^2 - 2 (y - F m)^T F m``, written as ``||y||^2 - sum beta q_i^2 (2 alpha + beta
    s_i^2) / d_i^2``, which avoids forming the ``N x D`` factor ``U``.
    """
    q2 = q**2

    def terms(alpha, beta):
        denom = alpha + beta * s2
        gamma = float(np.sum(beta * s2 / denom))
        m2 = float(np.sum(beta**2 * q2 / denom**2))
        if z is None:
            res2 = max(y2 - float(np.sum(beta * q2 * (2 * alpha + beta * s2) / denom**2)), 0.0)
        else:
            res2 = float(np.sum((alpha * z / denom) ** 2))
        logdet_a = float(np.sum(np.log(denom))) + (d - s2.size) * math.log(alpha)
        return gamma, m2, res2, logdet_a

    return terms


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` [N, D] for integer ``labels`` [N] (You et al., ICML 2021).

    One eigendecomposition of the smaller Gram matrix (``F^T F`` if ``N > D``, else ``F F^T``)
    serves every class. With ``F = U diag(s) V^T`` (``r = min(N, D)`` singular values),
    ``q = diag(s) U^T y`` and ``d_i = alpha + beta s_i^2``, every quantity of the iteration is a sum
    over ``r`` numbers:

        gamma         = sum beta s_i^2 / d_i
        m^T m         = sum beta^2 q_i^2 / d_i^2
        ||F m - y||^2 = ||y||^2 - sum beta q_i^2 (2 alpha + beta s_i^2) / d_i^2
        log det A     = sum log d_i + (D - r) log alpha

    Features are used as given (no centring or scaling).
    """
    f, y = _check(features, labels)
    n, d = f.shape
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)  # [N, K] one-hot
    if n > d:
        s2, v = np.linalg.eigh(f.T @ f)
        q_all, z_all = v.T @ (f.T @ targets), None  # V^T F^T Y = diag(s) U^T Y
    else:
        s2, u = np.linalg.eigh(f @ f.T)
        z_all = u.T @ targets
        q_all = np.sqrt(np.clip(s2, 0, None))[:, None] * z_all
    s2 = np.clip(s2, 0, None)  # round-off can leave tiny negative eigenvalues
    scores = []
    for k in range(classes.size):
        z = None if z_all is None else z_all[:, k]
        terms = _class_terms(s2, q_all[:, k], z, float(targets[:, k].sum()), d)
        scores.append(_maximise_evidence(terms, n, d))
    return float(np.mean(scores))


def logme_reference(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME written directly from the paper's formulas: ``A = alpha I + beta F^T F`` formed and
    inverted explicitly, ``m = beta A^-1 F^T y``, ``gamma = D - alpha tr(A^-1)``, ``log det A`` by
    ``slogdet``. Slow (``O(D^3)`` per iteration); it exists to test :func:`logme`.
    """
    f, y = _check(features, labels)
    n, d = f.shape
    ftf = f.T @ f
    scores = []
    for cls in np.unique(y):
        target = (y == cls).astype(np.float64)

        def terms(alpha, beta, target=target):
            a = alpha * np.eye(d) + beta * ftf
            a_inv = np.linalg.inv(a)
            m = beta * a_inv @ f.T @ target
            gamma = d - alpha * float(np.trace(a_inv))
            res2 = float(np.sum((f @ m - target) ** 2))
            _, logdet_a = np.linalg.slogdet(a)
            return gamma, float(m @ m), res2, float(logdet_a)

        scores.append(_maximise_evidence(terms, n, d))
    return float(np.mean(scores))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of a source classifier's softmax outputs ``source_probs`` [N, Z] for target ``labels``
    [N] (Nguyen et al., ICML 2020). Rows must be probabilities (non-negative, summing to 1), not logits.
    """
    theta, y = _check(source_probs, labels, "source_probs", "[N, Z]")
    if np.any(theta < 0) or not np.allclose(theta.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs rows must be probabilities summing to 1 (pass softmax outputs, not logits)")
    n = theta.shape[0]
    _, y_idx = np.unique(y, return_inverse=True)
    onehot = np.eye(y_idx.max() + 1)[y_idx]  # [N, K]
    joint = onehot.T @ theta / n  # [K, Z]: P(y, z)
    p_z = joint.sum(0, keepdims=True)  # [1, Z]
    # A source class no sample puts mass on has theta_z = 0 everywhere; its P(y|z) never counts.
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    eep = np.sum(theta * cond[y_idx], axis=1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(eep)))


CV_FOLDS = 5


def cv_probe_accuracy(feats: np.ndarray, labels: np.ndarray, flipped: np.ndarray | None = None,
                      seed: int = 0, folds: int = CV_FOLDS) -> dict | None:
    """Mean and standard error of a logistic-regression probe's held-out accuracy over stratified
    folds; None when a class has fewer than two labels. `flipped`: features of the mirrored
    inputs, added to each training fold and averaged with the originals at test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        return None
    scores = []
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(feats, labels):
        x_tr, y_tr = feats[tr], labels[tr]
        if flipped is not None:
            x_tr, y_tr = np.concatenate([x_tr, flipped[tr]]), np.concatenate([y_tr, y_tr])
        scaler = StandardScaler().fit(x_tr)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x_tr), y_tr)
        p = clf.predict_proba(scaler.transform(feats[te]))
        if flipped is not None:
            p = (p + clf.predict_proba(scaler.transform(flipped[te]))) / 2
        scores.append(float((clf.classes_[p.argmax(1)] == labels[te]).mean()))
    s = np.asarray(scores)
    return {"accuracy": float(s.mean()), "accuracy_se": float(s.std(ddof=1) / np.sqrt(len(s))), "folds": k}
