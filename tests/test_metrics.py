"""dntk.metrics against hand computations, scikit-learn and the Nyström formula of appendix §3 (eqs 7–10)."""
import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from dntk import metrics


def test_accuracy_and_fidelity_by_hand():
    pred = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 2.0]])
    labels = np.array([1, 0, 1, 2])
    net = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert metrics.accuracy(pred, labels) == 0.5                  # rows 0, 1 right
    assert metrics.fidelity(pred, net) == 0.75                    # row 1 disagrees
    assert metrics.accuracy(torch.from_numpy(pred), torch.from_numpy(labels)) == 0.5
    assert metrics.accuracy(pred, labels.astype(np.float64)) == 0.5
    assert isinstance(metrics.fidelity(torch.from_numpy(pred).float(), net), float)


def test_logit_r2_equals_sklearn_variance_weighted():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 4)) * np.array([1.0, 3.0, 0.5, 2.0]) + np.array([0.0, 5.0, -1.0, 2.0])
    p = f + 0.3 * rng.normal(size=f.shape)
    assert abs(metrics.logit_r2(p, f) - r2_score(f, p, multioutput="variance_weighted")) < 1e-12
    assert metrics.logit_r2(f, f) == 1.0


def test_relative_logit_error_by_hand():
    f = np.array([[3.0, 4.0], [0.0, 0.0]])
    p = np.array([[3.0, 3.0], [0.0, 0.0]])
    assert abs(metrics.relative_logit_error(p, f) - 1.0 / 5.0) < 1e-15


def _projector_pinv(S):
    """Orthogonal projector onto row(S) through the pseudo-inverse (eq 3): Π = Sᵀ(SSᵀ)^+ S."""
    return S.T @ np.linalg.pinv(S @ S.T) @ S


@pytest.mark.parametrize("m", [1, 4, 9])
def test_coverage_and_nystrom_against_pinv_and_nystrom_kernel(m):
    rng = np.random.default_rng(m)
    N, k = 30, 12
    G = rng.normal(size=(N, k)) @ np.diag(np.linspace(3, 0.1, k))
    S = rng.normal(size=(m, N)) @ G                               # synthetic rows: combinations of G's rows
    Pi = _projector_pinv(S)
    fro = np.sum(G ** 2)
    cov_ref = np.sum((G @ Pi) ** 2) / fro
    nys_ref = np.sum((G - G @ Pi) ** 2) / fro
    # eq 7–10: tr(K − K_Xs K_ss^+ K_sX) / tr(K) is the same number
    K, Kxs, Kss = G @ G.T, G @ S.T, S @ S.T
    nys_kernel = np.trace(K - Kxs @ np.linalg.pinv(Kss) @ Kxs.T) / np.trace(K)
    assert abs(metrics.coverage(G, S) - cov_ref) < 1e-10
    assert abs(metrics.nystrom_error(G, S) - nys_ref) < 1e-10
    assert abs(metrics.nystrom_error(G, S) - nys_kernel) < 1e-8
    assert abs(metrics.coverage(G, S) + metrics.nystrom_error(G, S) - 1.0) < 1e-12


def test_coverage_edge_cases():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(20, 6))
    assert abs(metrics.coverage(G, G) - 1.0) < 1e-12             # full row space
    assert metrics.nystrom_error(G, 3.0 * G[:0]) == 1.0           # empty set covers nothing
    Gz = G.copy()
    Gz[:, 3:] = 0.0
    S = np.zeros((2, 6))
    S[0, 4] = 1.0
    S[1, 5] = 2.0  # directions G does not use
    assert metrics.coverage(Gz, S) == 0.0
    S_dup = np.vstack([G[:3], G[:3], 2 * G[1:2]])                 # rank-deficient: duplicates count once
    assert abs(metrics.coverage(G, S_dup) - metrics.coverage(G, G[:3])) < 1e-12
    assert metrics.row_space_basis(S_dup).shape == (6, 3)


def test_per_class_coverage_matches_loop():
    rng = np.random.default_rng(2)
    F = rng.normal(size=(15, 3, 8))
    syn = [rng.normal(size=(m, 8)) for m in (1, 3, 5)]
    cov = metrics.coverage(torch.from_numpy(F), syn)
    nys = metrics.nystrom_error(F, syn)
    assert cov.shape == (3,) and cov.dtype == torch.float64
    for c in range(3):
        assert abs(float(cov[c]) - metrics.coverage(F[:, c], syn[c])) < 1e-15
        assert abs(float(nys[c]) - metrics.nystrom_error(F[:, c], syn[c])) < 1e-15


def test_float32_inputs_give_float64_accuracy():
    rng = np.random.default_rng(3)
    G = rng.normal(size=(25, 10)).astype(np.float32)
    S = G[:4]
    ref = np.sum((G.astype(np.float64) @ _projector_pinv(S.astype(np.float64))) ** 2) / np.sum(G.astype(np.float64) ** 2)
    assert abs(metrics.coverage(torch.from_numpy(G), torch.from_numpy(S)) - ref) < 1e-12


def test_bad_input():
    p = np.zeros((4, 3))
    p[:, 0] = 1
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        metrics.accuracy(p, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        metrics.accuracy(p, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.accuracy(p, np.array([0, 1, 2, 0.5]))
    with pytest.raises(ValueError, match=r"pred must have shape \(N, C\)"):
        metrics.accuracy(p[:, 0], np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="same shape"):
        metrics.fidelity(p, np.zeros((4, 2)))
    bad = p.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        metrics.fidelity(bad, p)
    with pytest.raises(ValueError, match="R² is undefined"):
        metrics.logit_r2(p + 1, p)
    with pytest.raises(ValueError, match="all zero"):
        metrics.relative_logit_error(p, np.zeros_like(p))
    with pytest.raises(TypeError, match="numpy"):
        metrics.accuracy("abc", [0])
    G = np.ones((5, 4))
    with pytest.raises(ValueError, match="width"):
        metrics.coverage(G, np.ones((2, 3)))
    with pytest.raises(ValueError, match="all zeros"):
        metrics.coverage(np.zeros((5, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="3 classes but G_syn has 2"):
        metrics.coverage(np.ones((5, 3, 4)), [np.ones((1, 4))] * 2)
    with pytest.raises(ValueError, match=r"G_syn must have shape \(m, k\)"):
        metrics.nystrom_error(G, np.ones(4))


def test_report_equals_the_single_metrics_and_sklearn():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(40, 5))
    p = f + 0.5 * rng.normal(size=f.shape)
    y = rng.integers(0, 5, size=40)
    r = metrics.report(p, y, f)
    assert r.accuracy == float(np.mean(p.argmax(1) == y))
    assert r.fidelity == float(np.mean(p.argmax(1) == f.argmax(1)))
    assert abs(r.logit_r2 - r2_score(f, p, multioutput="variance_weighted")) < 1e-12
    assert abs(r.relative_logit_error - np.linalg.norm(p - f) / np.linalg.norm(f)) < 1e-12
    assert r.as_dict()["accuracy"] == r.accuracy
    only = metrics.report(p, labels=y)
    assert only.fidelity is None and only.accuracy == r.accuracy
    const = np.ones((40, 5)) * np.arange(5)                      # R² undefined, the rest defined
    assert metrics.report(p, net_logits=const).logit_r2 is None
    with pytest.raises(ValueError, match="labels"):
        metrics.report(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.accuracy = 1.0
