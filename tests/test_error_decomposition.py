"""dntk.error_decomposition (Prop B.3, appendix §5) against numpy least squares and scikit-learn Ridge."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from dntk.error_decomposition import ErrorDecomposer, error_decomposition

TOL = 1e-8


def _close(a, b, tol=TOL):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max()


def _data(N, C, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(N, C, k, generator=g, dtype=torch.float64) / np.sqrt(k)
    T = torch.randn(N, C, generator=g, dtype=torch.float64)
    return F, T


# ----------------------------------------------------------------------------- Prop B.3 decomposition
def test_error_decomposition_against_numpy_and_sklearn():
    n, C, k, N = 60, 2, 10, 25
    g = torch.Generator().manual_seed(19)
    F = torch.randn(n, C, k, generator=g, dtype=torch.float64)
    T = F.sum(2) + torch.tanh(3 * F[:, :, 0]) + 1.5              # linear part + nonlinearity + offset
    idx = torch.randperm(n, generator=g)[:N]
    lam_pop = torch.tensor([0.05, 0.2])
    d = error_decomposition(F, T, idx, lam_pop)
    for c in range(C):
        G = F[:, c].numpy()
        t = T[:, c].numpy() - T[:, c].numpy().mean()
        _close(d.target[:, c], t)
        _close(d.f_star[:, c], G @ np.linalg.lstsq(G, t, rcond=None)[0])
        lam = float(lam_pop[c])
        _close(d.f_lam[:, c], Ridge(alpha=n * lam, fit_intercept=False).fit(G, t).predict(G))
        _close(d.f_hat[:, c],
               Ridge(alpha=N * lam, fit_intercept=False).fit(G[idx.numpy()], t[idx.numpy()]).predict(G))
    _close(d.approximation + d.bias + d.variance, d.total, 1e-12)
    ms = d.mean_squares()
    # on the pool, the least-squares residual is orthogonal to every linear predictor (Pythagoras)
    assert abs(ms["total"] - ms["approximation"] - float((d.bias + d.variance).pow(2).mean())) < 1e-10
    assert ms["approximation"] > 1e-3 and ms["bias"] > 0 and ms["variance"] > 0
    # several training draws at once: each equals its own single-draw decomposition
    idx2 = torch.stack([idx, torch.randperm(n, generator=g)[:N]])
    multi = error_decomposition(F, T, idx2, lam_pop)
    assert multi.f_hat.shape == (2, n, C) and multi.variance.shape == (2, n, C)
    _close(multi.f_hat[0], d.f_hat, 1e-12)
    _close(multi.f_hat[1], error_decomposition(F, T, idx2[1], lam_pop).f_hat, 1e-12)
    _close(multi.approximation + multi.bias + multi.variance, multi.total, 1e-12)
    # one decomposer reused across λ gives the same as fresh calls; eval_index restricts the points
    dec = ErrorDecomposer(F, T, eval_index=idx)
    for lp in (0.01, 0.3):
        _close(dec.decompose(idx, lp).f_lam, error_decomposition(F, T, idx, lp).f_lam[idx], 1e-12)
    # N = n: the sample ridge is the population ridge, no variance
    full = error_decomposition(F, T, torch.arange(n), lam_pop)
    assert full.mean_squares()["variance"] < 1e-20


def test_error_decomposition_bad_input():
    F, T = _data(10, 2, 5)
    with pytest.raises(ValueError, match="pool_targets"):
        error_decomposition(F, T[:9], [0, 1, 2], 0.1)
    with pytest.raises(ValueError, match="train_index"):
        error_decomposition(F, T, [0, 10], 0.1)
    with pytest.raises(ValueError, match="integer index array"):
        error_decomposition(F, T, np.array([0.5, 1.0]), 0.1)
    with pytest.raises(ValueError, match="lam_pop"):
        error_decomposition(F, T, [0, 1, 2], 0.0)


def test_non_finite_pool_rejected():
    F, T = _data(10, 2, 5)
    Fb = F.clone()
    Fb[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="pool_features"):
        ErrorDecomposer(Fb, T)
    Tb = T.clone()
    Tb[0, 0] = float("inf")
    with pytest.raises(ValueError, match="pool_targets"):
        ErrorDecomposer(F, Tb)


