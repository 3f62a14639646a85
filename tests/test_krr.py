"""ClassKRR against independent references: scikit-learn KernelRidge/Ridge, numpy SVD and brute-force refits."""
import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Ridge

from dntk.krr import ClassKRR, default_lam, loo_gcv, ridge_weights

TOL = 1e-8


def _data(N, C, k, M=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(N, C, k, generator=g, dtype=torch.float64) / np.sqrt(k)
    T = torch.randn(N, C, generator=g, dtype=torch.float64)
    Ft = torch.randn(M, C, k, generator=g, dtype=torch.float64) / np.sqrt(k)
    return F.to(dtype), T, Ft.to(dtype)


def _sklearn_predict(G, t, Gt, lam):
    """KernelRidge(kernel='precomputed', alpha=lam) with float64 numpy kernels."""
    G, Gt = np.asarray(G, np.float64), np.asarray(Gt, np.float64)
    kr = KernelRidge(kernel="precomputed", alpha=lam).fit(G @ G.T, np.asarray(t, np.float64))
    return kr.predict(Gt @ G.T)


def _close(a, b, tol=TOL):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max()


# ----------------------------------------------------------------------------- equals sklearn
@pytest.mark.parametrize("N,k", [(20, 60), (60, 15)])
@pytest.mark.parametrize("solver", ["auto", "dual", "primal"])
def test_equals_sklearn_kernel_ridge(N, k, solver):
    C = 3
    F, T, Ft = _data(N, C, k, seed=N + k)
    lam = np.array([0.05, 0.3, 1.7])
    pred = ClassKRR(lam=lam, solver=solver).fit(F, T).predict(Ft)
    assert pred.shape == (Ft.shape[0], C) and pred.dtype == torch.float64
    for c in range(C):
        _close(pred[:, c], _sklearn_predict(F[:, c], T[:, c], Ft[:, c], lam[c]))


def test_default_lambda_rule_and_sklearn():
    N, C, k = 25, 4, 40
    F, T, Ft = _data(N, C, k, seed=3)
    m = ClassKRR(lam_rel=1e-2).fit(F, T)
    for c in range(C):
        K = (F[:, c] @ F[:, c].T).numpy()
        lam_c = 1e-2 * np.trace(K) / N
        assert abs(float(m.lam_[c]) - lam_c) <= 1e-12 * lam_c
        assert abs(float(m.lam_rel_[c]) - 1e-2) < 1e-12
        _close(m.predict(Ft)[:, c], _sklearn_predict(F[:, c], T[:, c], Ft[:, c], lam_c))
    _close(default_lam(F, 1e-2), m.lam_)
    _close(default_lam([F[:, c] for c in range(C)], 1e-2), m.lam_)


def test_float32_features_are_solved_in_float64():
    N, C, k = 30, 2, 50
    F, T, Ft = _data(N, C, k, seed=5, dtype=torch.float32)
    pred = ClassKRR(lam=0.1).fit(F, T).predict(Ft)
    assert pred.dtype == torch.float64
    for c in range(C):
        _close(pred[:, c], _sklearn_predict(F[:, c].double(), T[:, c], Ft[:, c].double(), 0.1))


def test_numpy_in_numpy_out():
    F, T, Ft = _data(15, 2, 10, seed=6)
    m = ClassKRR(lam=0.2).fit(F.numpy(), T.numpy())
    p = m.predict(Ft.numpy())
    assert isinstance(p, np.ndarray) and p.dtype == np.float64
    _close(p, m.predict(Ft))


@pytest.mark.parametrize("N,k", [(40, 25), (25, 40)])
def test_dual_equals_primal(N, k):
    F, T, Ft = _data(N, 3, k, seed=7)
    d = ClassKRR(lam=1e-3, solver="dual").fit(F, T)
    p = ClassKRR(lam=1e-3, solver="primal").fit(F, T)
    assert d.solver_ == "dual" and p.solver_ == "primal"
    _close(d.weights_, p.weights_, 1e-7)
    _close(d.predict(Ft), p.predict(Ft), 1e-8)


def test_center_equals_sklearn_on_centred_targets():
    N, C, k = 30, 3, 20
    F, T, Ft = _data(N, C, k, seed=8)
    T = T + torch.tensor([5.0, -3.0, 0.5])
    m = ClassKRR(lam=0.2, center=True).fit(F, T)
    _close(m.intercept_, T.mean(0))
    for c in range(C):
        mu = float(T[:, c].mean())
        _close(m.predict(Ft)[:, c], _sklearn_predict(F[:, c], T[:, c] - mu, Ft[:, c], 0.2) + mu)
    # without centring the intercept is zero and the fit differs
    assert float(ClassKRR(lam=0.2).fit(F, T).intercept_.abs().max()) == 0.0


# ----------------------------------------------------------------------------- rank-r
@pytest.mark.parametrize("N,k", [(30, 20), (20, 30)])
def test_rank_r_equals_numpy_svd_formula_and_truncated_krr(N, k):
    F, T, Ft = _data(N, 2, k, seed=9)
    lam, r = 0.05, 6
    m = ClassKRR(lam=lam, rank=r).fit(F, T)
    assert m.solver_ == "svd"
    for c in range(2):
        G, t = F[:, c].numpy(), T[:, c].numpy()
        U, s, Vt = np.linalg.svd(G, full_matrices=False)
        w = Vt[:r].T @ (s[:r] / (s[:r] ** 2 + lam) * (U[:, :r].T @ t))
        _close(m.weights_[c], w)
        Gr = (U[:, :r] * s[:r]) @ Vt[:r]                         # rank-r truncation of G
        kr = KernelRidge(kernel="precomputed", alpha=lam).fit(Gr @ Gr.T, t)
        _close(m.predict(Ft)[:, c], kr.predict(Ft[:, c].numpy() @ Gr.T))


def test_rank_full_equals_full_solve():
    F, T, Ft = _data(25, 2, 40, seed=10)
    full = ClassKRR(lam=0.01).fit(F, T).predict(Ft)
    _close(ClassKRR(lam=0.01, rank=25).fit(F, T).predict(Ft), full)
    _close(ClassKRR(lam=0.01, rank=1000).fit(F, T).predict(Ft), full)


@pytest.mark.parametrize("N,k", [(30, 40), (40, 30)])
def test_rank_at_least_numerical_rank_equals_full(N, k):
    g = torch.Generator().manual_seed(11)
    q = 7                                                          # G = A B has rank 7
    F = torch.einsum("ncq,cqk->nck", torch.randn(N, 2, q, generator=g, dtype=torch.float64),
                     torch.randn(2, q, k, generator=g, dtype=torch.float64))
    T = torch.randn(N, 2, generator=g, dtype=torch.float64)
    Ft = torch.randn(5, 2, k, generator=g, dtype=torch.float64)
    full = ClassKRR(lam=0.5).fit(F, T).predict(Ft)
    for r in (q, q + 3):
        _close(ClassKRR(lam=0.5, rank=r).fit(F, T).predict(Ft), full, 1e-8)
    assert float((ClassKRR(lam=0.5, rank=q - 2).fit(F, T).predict(Ft) - full).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- LOO / GCV
def _brute_loo(G, t, lam):
    n = len(t)
    out = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        kr = KernelRidge(kernel="precomputed", alpha=lam).fit(G[keep] @ G[keep].T, t[keep])
        out[i] = t[i] - kr.predict(G[i:i + 1] @ G[keep].T)[0]
    return out


def _brute_gcv(G, t, lam):
    K = G @ G.T
    n = len(t)
    H = K @ np.linalg.inv(K + lam * np.eye(n))
    r = t - H @ t
    return n * (r @ r) / np.trace(np.eye(n) - H) ** 2


@pytest.mark.parametrize("N,k", [(12, 30), (16, 6)])
def test_loo_and_gcv_equal_brute_force(N, k):
    F, T, _ = _data(N, 1, k, seed=12)
    G, t = F[:, 0].numpy(), T[:, 0].numpy()
    lams = np.array([1e-3, 0.05, 1.0])
    loo, gcv = loo_gcv(G, t, lams)
    for j, lam in enumerate(lams):
        _close(loo[j], _brute_loo(G, t, lam), 1e-7)
        _close(gcv[j], _brute_gcv(G, t, lam), 1e-8)


@pytest.mark.parametrize("select", ["loo", "gcv"])
def test_select_picks_brute_force_minimiser(select):
    N, C, k = 14, 2, 20
    F, T, Ft = _data(N, C, k, seed=13)
    T = T + 0.8 * F.sum(2)                       # signal + noise, so the optimum is interior
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    m = ClassKRR(select=select, lam_grid=grid).fit(F, T)
    for c in range(C):
        G, t = F[:, c].numpy(), T[:, c].numpy()
        scale = np.trace(G @ G.T) / N
        if select == "loo":
            scores = np.array([np.mean(_brute_loo(G, t, g * scale) ** 2) for g in grid])
        else:
            scores = np.array([_brute_gcv(G, t, g * scale) for g in grid])
        _close(m.cv_scores_[c], scores, 1e-7)
        best = int(np.argmin(scores))
        assert abs(float(m.lam_rel_[c]) - grid[best]) <= 1e-12 * grid[best]
        _close(m.loo_residuals_[:, c], _brute_loo(G, t, grid[best] * scale), 1e-7)
        _close(m.predict(Ft)[:, c], _sklearn_predict(G, t, Ft[:, c], grid[best] * scale))


def test_select_with_centring_scores_centred_targets():
    F, T, _ = _data(12, 1, 15, seed=14)
    T = T + 4.0
    m = ClassKRR(select="loo", center=True, lam_grid=[1e-2, 1.0]).fit(F, T)
    G, t = F[:, 0].numpy(), T[:, 0].numpy() - T[:, 0].numpy().mean()
    lam = float(m.lam_[0])
    _close(m.loo_residuals_[:, 0], _brute_loo(G, t, lam), 1e-7)


# ----------------------------------------------------------------------------- synthetic sets
def test_fit_synthetic_equals_sklearn_on_rows():
    N, C, k = 40, 3, 12
    F, T, Ft = _data(N, C, k, seed=15)
    lam = default_lam(F, 1e-2)                  # λ of the uncompressed set (appendix §4.3)
    rng = np.random.default_rng(0)
    rows = [rng.choice(N, size=m, replace=False) for m in (5, 9, 20)]   # m_c < k, < k, > k
    feats = [F[rows[c], c] for c in range(C)]
    targs = [T[rows[c], c] for c in range(C)]
    m = ClassKRR().fit_synthetic(feats, targs, lam=lam)
    assert m.n_samples_fit_ == (5, 9, 20)
    _close(m.lam_, lam)
    for c in range(C):
        _close(m.predict(Ft)[:, c], _sklearn_predict(feats[c], targs[c], Ft[:, c], float(lam[c])))
    # one (C, m, k) array gives the same as the list; the constructor's lam is the fallback
    sub = [r[:5] for r in rows]
    a = ClassKRR(lam=0.3).fit_synthetic(torch.stack([F[sub[c], c] for c in range(C)]),
                                        torch.stack([T[sub[c], c] for c in range(C)])).predict(Ft)
    b = ClassKRR().fit_synthetic([F[sub[c], c] for c in range(C)], [T[sub[c], c] for c in range(C)],
                                 lam=[0.3] * C).predict(Ft)
    _close(a, b)


def test_fit_synthetic_with_top_eigenvectors_is_rank_r_krr():
    """G_syn = U_rᵀ G, t_syn = U_rᵀ t (V = U_r in appendix §4.3) reproduces the rank-r KRR of appendix §1."""
    N, C, k, r = 30, 2, 25, 5
    F, T, Ft = _data(N, C, k, seed=16)
    lam = default_lam(F, 1e-2)
    feats, targs = [], []
    for c in range(C):
        U = np.linalg.svd(F[:, c].numpy(), full_matrices=False)[0][:, :r]
        feats.append(U.T @ F[:, c].numpy())
        targs.append(U.T @ T[:, c].numpy())
    syn = ClassKRR().fit_synthetic(feats, targs, lam=lam).predict(Ft)
    _close(syn, ClassKRR(lam=lam, rank=r).fit(F, T).predict(Ft), 1e-8)


def test_fit_synthetic_intercept():
    F, T, Ft = _data(10, 2, 6, seed=17)
    a = ClassKRR().fit_synthetic([F[:, 0], F[:, 1]], [T[:, 0], T[:, 1]], lam=0.1).predict(Ft)
    b = ClassKRR().fit_synthetic([F[:, 0], F[:, 1]], [T[:, 0], T[:, 1]], lam=0.1, intercept=[1.0, -2.0]).predict(Ft)
    _close(b - a, torch.tensor([[1.0, -2.0]]).expand_as(a))


def test_ridge_weights_solvers_agree_with_sklearn_ridge():
    g = torch.Generator().manual_seed(18)
    G = torch.randn(30, 12, generator=g, dtype=torch.float64)
    t = torch.randn(30, generator=g, dtype=torch.float64)
    ref = Ridge(alpha=0.7, fit_intercept=False, solver="svd").fit(G.numpy(), t.numpy()).coef_
    for solver in ("dual", "primal", "auto"):
        _close(ridge_weights(G, t, 0.7, solver), ref)


# ----------------------------------------------------------------------------- bad input
def test_bad_lambda():
    F, T, _ = _data(10, 2, 5)
    for lam in (0.0, -1.0, float("nan"), float("inf"), [0.1, 0.0], [0.1, -2.0]):
        with pytest.raises(ValueError, match="lam"):
            ClassKRR(lam=lam).fit(F, T)
    with pytest.raises(ValueError, match="one value per class"):
        ClassKRR(lam=[0.1, 0.2, 0.3]).fit(F, T)
    for lam_rel in (0.0, -1e-3):
        with pytest.raises(ValueError, match="lam_rel"):
            ClassKRR(lam_rel=lam_rel)
    with pytest.raises(ValueError, match="lam_rel"):
        default_lam(F, 0.0)
    with pytest.raises(ValueError, match="lam_grid"):
        ClassKRR(select="gcv", lam_grid=[1e-3, -1.0])


def test_bad_shapes_say_which():
    F, T, Ft = _data(10, 2, 5)
    with pytest.raises(ValueError, match=r"targets must have shape \(N, C\) = \(10, 2\)"):
        ClassKRR(lam=1.0).fit(F, T[:9])
    with pytest.raises(ValueError, match=r"targets must have shape"):
        ClassKRR(lam=1.0).fit(F, torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"targets must have shape"):
        ClassKRR(lam=1.0).fit(F, T[:, 0])
    with pytest.raises(ValueError, match=r"features must have shape \(N, C, k\)"):
        ClassKRR(lam=1.0).fit(F[:, 0], T)
    with pytest.raises(TypeError, match="features"):
        ClassKRR(lam=1.0).fit("not an array", T)


def test_nan_inf_rejected():
    F, T, Ft = _data(10, 2, 5)
    Fn = F.clone()
    Fn[3, 1, 2] = float("nan")
    Ti = T.clone()
    Ti[0, 0] = float("inf")
    with pytest.raises(ValueError, match="features contains 1 NaN/inf"):
        ClassKRR(lam=1.0).fit(Fn, T)
    with pytest.raises(ValueError, match="targets contains 1 NaN/inf"):
        ClassKRR(lam=1.0).fit(F, Ti)
    m = ClassKRR(lam=1.0).fit(F, T)
    Fti = Ft.clone()
    Fti[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        m.predict(Fti)


def test_predict_before_fit_and_wrong_width():
    F, T, Ft = _data(10, 2, 5)
    with pytest.raises(ValueError, match="not fitted"):
        ClassKRR(lam=1.0).predict(Ft)
    m = ClassKRR(lam=1.0).fit(F, T)
    with pytest.raises(ValueError, match="k=6"):
        m.predict(torch.randn(3, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="C=3"):
        m.predict(torch.randn(3, 3, 5, dtype=torch.float64))


def test_bad_options():
    with pytest.raises(ValueError, match="solver"):
        ClassKRR(solver="qr")
    with pytest.raises(ValueError, match="select"):
        ClassKRR(select="cv")
    with pytest.raises(ValueError, match="either lam"):
        ClassKRR(lam=1.0, select="loo")
    with pytest.raises(ValueError, match="rank=None"):
        ClassKRR(rank=3, select="gcv")
    for rank in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            ClassKRR(rank=rank)


def test_zero_class_features_need_explicit_lambda():
    F, T, _ = _data(10, 2, 5)
    F[:, 1] = 0.0
    with pytest.raises(ValueError, match=r"class 1 has all-zero features.*explicit lam"):
        ClassKRR().fit(F, T)
    ClassKRR(lam=0.1).fit(F, T)                 # fine with an explicit λ


def test_fit_synthetic_bad_input():
    F, T, _ = _data(10, 2, 5)
    feats, targs = [F[:4, 0], F[:6, 1]], [T[:4, 0], T[:6, 1]]
    with pytest.raises(ValueError, match="uncompressed set"):
        ClassKRR().fit_synthetic(feats, targs)
    with pytest.raises(ValueError, match="lam"):
        ClassKRR().fit_synthetic(feats, targs, lam=[0.1, 0.0])
    with pytest.raises(ValueError, match=r"targets\[1\] has 5 entries but features\[1\] has 6 rows"):
        ClassKRR().fit_synthetic(feats, [T[:4, 0], T[:5, 1]], lam=0.1)
    with pytest.raises(ValueError, match="2 classes but targets has 1"):
        ClassKRR().fit_synthetic(feats, targs[:1], lam=0.1)
    with pytest.raises(ValueError, match="no synthetic gradients"):
        ClassKRR().fit_synthetic([F[:4, 0], F[:0, 1]], [T[:4, 0], T[:0, 1]], lam=0.1)
    with pytest.raises(ValueError, match="width"):
        ClassKRR().fit_synthetic([F[:4, 0], torch.randn(3, 7, dtype=torch.float64)], [T[:4, 0], T[:3, 1]], lam=0.1)
    bad = F[:4, 0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        ClassKRR().fit_synthetic([bad, F[:6, 1]], targs, lam=0.1)
    with pytest.raises(ValueError, match="center=True"):
        ClassKRR(center=True).fit_synthetic(feats, targs, lam=0.1)
    with pytest.raises(ValueError, match="select"):
        ClassKRR(select="loo").fit_synthetic(feats, targs, lam=0.1)
