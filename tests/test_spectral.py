"""Tests for dntk.spectral against brute-force definitions, numpy/scikit-learn references and planted structure."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from dntk import spectral as sp


def _lowrank(n, k, rank, seed, decay=0.7):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank, generator=g, dtype=torch.float64)
    B = torch.randn(rank, k, generator=g, dtype=torch.float64)
    return (A * decay ** torch.arange(rank, dtype=torch.float64)) @ B


def _clustered(n_per, n_clusters, C, k, seed, offset=0.3, noise=0.05):
    """Well-separated stacked features (N, C, k): orthogonal cluster means + a shared offset + noise."""
    g = torch.Generator().manual_seed(seed)
    W = C * k
    Q, _ = torch.linalg.qr(torch.randn(W, n_clusters + 1, generator=g, dtype=torch.float64))
    X, y = [], []
    for j in range(n_clusters):
        mu = Q[:, j] + offset * Q[:, -1]
        X.append(mu + noise * torch.randn(n_per, W, generator=g, dtype=torch.float64) / W**0.5)
        y += [j] * n_per
    perm = torch.randperm(n_per * n_clusters, generator=g)
    return torch.cat(X)[perm].reshape(-1, C, k).float(), np.array(y)[perm.numpy()]


# ----------------------------------------------------------------------------- Def 3.1
def _rank_bruteforce(ev, tau):
    top = max(ev)
    ev = [x if x > len(ev) * np.finfo(float).eps * top else 0.0 for x in ev]   # numerical-rank convention
    ev = sorted((Fraction(x) for x in ev), reverse=True)
    t = Fraction(tau) * sum(ev)
    for r in range(1, len(ev) + 1):
        if sum(ev[:r]) >= t:
            return r


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=30),
       st.floats(1e-3, 1.0, exclude_min=False))
def test_truncation_rank_bruteforce(ev, tau):
    total = sum(ev)
    assume(total > 1e-6)
    s = np.cumsum(sorted(ev, reverse=True))
    assume(np.min(np.abs(s - tau * total)) > 1e-9 * total or tau == 1.0)  # no float-vs-exact ties
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(np.array(ev))
    assert sp.truncation_rank(torch.tensor(shuffled), tau) == _rank_bruteforce(ev, tau)


def test_truncation_rank_tau_one_counts_tiny_eigenvalues():
    assert sp.truncation_rank(torch.tensor([1.0, 1e-20, 0.0]), 1.0) == 1      # 1e-20 is round-off
    assert sp.truncation_rank(torch.tensor([1.0, 1e-12, 0.0]), 1.0) == 2
    assert sp.truncation_rank(np.array([3.0, 1.0, 1.0]), 0.6) == 1
    assert sp.truncation_rank(np.array([3.0, 1.0, 1.0]), 0.61) == 2


def test_effective_rank_condition_number_closed_forms():
    assert sp.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert sp.effective_rank(torch.tensor([4.0, 1.0])) == pytest.approx(25 / 17)
    assert sp.condition_number(torch.tensor([1.0, 8.0, 2.0])) == pytest.approx(8.0)
    assert sp.condition_number(torch.tensor([1.0, 0.0])) == float("inf")
    st_ = sp.spectrum_stats(torch.tensor([3.0, 1.0]), taus=(0.5, 1.0), n=4)
    assert st_["lambda_min"] == 0 and st_["r(0.5)"] == 1 and st_["r(1.0)"] == 2 and st_["alpha(1.0)"] == 2.0


# ----------------------------------------------------------------------------- eigenpairs, Def 3.2
@pytest.mark.parametrize("n,k", [(60, 25), (25, 60)])
@pytest.mark.parametrize("method", ["svd", "gram", "auto"])
def test_eig_from_features_matches_eigh(n, k, method):
    G = _lowrank(n, k, 20, seed=1) + 1e-3 * _lowrank(n, k, min(n, k), seed=2, decay=1.0)
    K = (G @ G.T).numpy()
    ev_ref, U_ref = np.linalg.eigh(K)
    ev_ref, U_ref = ev_ref[::-1], U_ref[:, ::-1]
    ev, U = sp.eig_from_features(G, method=method)
    r = ev.numel()
    assert r <= min(n, k)
    np.testing.assert_allclose(ev.numpy(), ev_ref[:r], rtol=0, atol=1e-8 * ev_ref[0])
    top = ev_ref[: r] > 1e-6 * ev_ref[0]
    np.testing.assert_allclose(ev.numpy()[top], ev_ref[:r][top], rtol=1e-8)
    assert np.allclose(ev_ref[r:], 0, atol=1e-8 * ev_ref[0])
    # eigenvectors agree up to sign for the well-separated top directions
    cos = np.abs(np.sum(U.numpy()[:, :10] * U_ref[:, :10], axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    ev_k, _ = sp.eig_from_kernel(torch.from_numpy(K))
    np.testing.assert_allclose(ev_k.numpy(), np.clip(ev_ref, 0, None), atol=1e-10 * ev_ref[0])


def test_redundancy_svd_equals_eigh():
    G = _lowrank(80, 300, 30, seed=3)
    V = torch.linalg.svd(G.T, full_matrices=False)[0]                   # right singular vectors of G
    for tau in (0.5, 0.9, 0.99):
        alpha, r = sp.data_redundancy(G @ G.T, tau)
        beta, r2 = sp.parameter_redundancy(G, tau)
        assert r == r2 and alpha == 80 / r and beta == 300 / r
        # Def 3.2 directly: the top-r right singular subspace keeps >= tau of ||G||_F^2, r-1 dims do not
        energy = lambda d: (G @ V[:, :d]).pow(2).sum() / G.pow(2).sum()  # noqa: E731
        assert energy(r) >= tau and (r == 1 or energy(r - 1) < tau)


# ----------------------------------------------------------------------------- Prop B.6
def _distortion_bruteforce(a, b):
    n = max(len(a), len(b))
    a = np.sort(np.r_[a, np.zeros(n - len(a))])[::-1]
    b = np.sort(np.r_[b, np.zeros(n - len(b))])[::-1]
    return max(abs(b[:r].sum() / a[:r].sum() - 1) for r in range(1, n + 1) if a[:r].sum() > 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 1.0), st.floats(0.0, 0.3))
def test_jl_bracket_holds_for_any_perturbed_spectrum(seed, tau, noise):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    ev = np.sort(rng.exponential(size=n) * 0.8 ** np.arange(n))[::-1].copy()
    ev_t = ev * np.exp(noise * rng.standard_normal(n))          # a "projected" spectrum
    eps = sp.partial_sum_distortion(ev, ev_t)
    assert eps == pytest.approx(_distortion_bruteforce(ev, ev_t), rel=1e-12)
    assume(eps < 0.99)
    lo, hi = sp.jl_rank_bracket(torch.tensor(ev_t), tau, eps, n=n)
    r = sp.truncation_rank(torch.tensor(ev), tau)
    assert lo <= r <= hi


def test_jl_bracket_on_projected_features():
    g = torch.Generator().manual_seed(5)
    G = _lowrank(120, 4000, 40, seed=6, decay=0.85)
    R = torch.randn(4000, 1024, generator=g, dtype=torch.float64) / 1024**0.5
    Gt = G @ R
    ev = torch.linalg.eigvalsh(G @ G.T).flip(0)                          # exact spectrum of K
    ev_t = torch.linalg.eigvalsh(Gt @ Gt.T).flip(0)                       # projected spectrum
    eps = sp.partial_sum_distortion(ev, ev_t)
    assert 0 < eps < 0.3
    for tau in (0.8, 0.9, 0.95):
        lo, hi = sp.jl_rank_bracket(Gt, tau, eps)
        assert lo <= sp.truncation_rank(ev, tau) <= hi
    assert sp.jl_rank_bracket(Gt, 0.9, 0.0) == (sp.truncation_rank(ev_t, 0.9),) * 2
    assert sp.jl_rank_bracket(Gt, 0.99, 0.5)[1] == 120          # threshold > 1: only the trivial bound


# ----------------------------------------------------------------------------- clustering
def test_spectral_clusters_dense_and_matrix_free_agree_on_separated_data():
    F, y = _clustered(40, 4, C=3, k=16, seed=7)
    lab_dense = sp.spectral_clusters(F, 4, method="dense")
    lab_mf = sp.spectral_clusters(F, 4, method="matrix_free")
    K = sp.mean_kernel(F)
    lab_kernel = sp.spectral_clusters(K, 4)
    assert lab_dense.dtype == np.int64 and lab_dense.shape == (160,)
    assert adjusted_rand_score(y, lab_dense) == 1.0
    assert adjusted_rand_score(lab_dense, lab_mf) == 1.0
    assert (lab_kernel == lab_dense).all()          # canonical relabelling: identical, not just up to permutation
    assert lab_dense[0] == 0 and set(lab_dense) == {0, 1, 2, 3}


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_matrix_free_clustering_robust_to_anticorrelated_outlier():
    """A point whose cosines are all negative: the dense path clips them, the matrix-free path floors its degree;
    both must still find the planted clusters for every other point (and not spend a cluster on the outlier)."""
    F, y = _clustered(40, 4, C=2, k=16, seed=14)
    F = torch.cat([F, -F.mean(0, keepdim=True)])
    lab_dense = sp.spectral_clusters(F, 4, method="dense")
    lab_mf = sp.spectral_clusters(F, 4, method="matrix_free")
    assert adjusted_rand_score(y, lab_dense[:-1]) == 1.0
    assert adjusted_rand_score(y, lab_mf[:-1]) == 1.0


def test_mean_kernel_is_class_average():
    g = torch.Generator().manual_seed(8)
    F = torch.randn(10, 3, 5, generator=g)
    ref = sum(F[:, c].double() @ F[:, c].double().T for c in range(3)) / 3
    torch.testing.assert_close(sp.mean_kernel(F), ref)


def test_matrix_free_embedding_matches_dense_eigenvectors():
    """Nonnegative features => no clipping: the matrix-free embedding spans sklearn's (self-loops aside, the
    degrees differ by 1, so we compare with our own dense normalised affinity D^-1/2 A D^-1/2)."""
    g = torch.Generator().manual_seed(9)
    Z = torch.rand(50, 12, generator=g, dtype=torch.float64) ** 3
    Zu = Z / Z.norm(dim=1, keepdim=True)
    d = Zu @ (Zu.T @ torch.ones(50, 1, dtype=torch.float64))
    s = (1 / Z.norm(dim=1)) / d.flatten().sqrt()
    U = sp._top_left_singular(Z, s, 3, n_iter=30, seed=0)
    A = (Zu @ Zu.T) / d.sqrt() / d.sqrt().T
    w, V = torch.linalg.eigh(A)
    V = V[:, -3:]
    assert torch.linalg.svdvals(U.T @ V).min() > 1 - 1e-8


# ----------------------------------------------------------------------------- containment
def _containment_reference(G, labels, tau):
    """Definitions of appendix §4.3 with numpy eigh, explicit lifting and an explicit projector Q."""
    G = G.numpy()
    K = G @ G.T
    n = K.shape[0]
    w, U = np.linalg.eigh(K)
    w, U = w[::-1], U[:, ::-1]
    r = sp.truncation_rank(torch.tensor(w.copy()), tau)
    Ur = U[:, :r]
    lifted, prop_a = [], []
    for j in range(labels.max() + 1):
        S = np.flatnonzero(labels == j)
        wj, Uj = np.linalg.eigh(K[np.ix_(S, S)])
        wj, Uj = wj[::-1], Uj[:, ::-1]
        rj = sp.truncation_rank(torch.tensor(wj.copy()), tau)
        L = np.zeros((n, rj))
        L[S] = Uj[:, :rj]
        lifted.append(L)
        Pg = Ur @ Ur.T
        prop_a.append(sum(wj[i] * np.sum((Pg @ L[:, i]) ** 2) for i in range(rj)) / wj[:rj].sum())
    L = np.concatenate(lifted, axis=1)
    Q = L @ np.linalg.pinv(L)                      # projector onto the union of lifted local spans
    inside = np.array([np.sum((Q @ Ur[:, i]) ** 2) for i in range(r)])
    prop_b = np.sum(w[:r] * (1 - inside)) / w[:r].sum()
    return r, np.array(prop_a), prop_b, inside


@pytest.mark.parametrize("tau", [0.8, 0.95])
def test_containment_matches_definitions_and_dense_path(tau):
    G = _lowrank(90, 40, 25, seed=11, decay=0.85).float()
    labels = np.random.default_rng(0).integers(0, 3, 90)
    r, a, b, inside = _containment_reference(G.double(), labels, tau)
    for method in ("matrix_free", "gram", "dense"):
        res = sp.containment(G, labels, tau, method=method)
        assert res.rank == r
        np.testing.assert_allclose(res.prop_a.numpy(), a, atol=1e-8)
        assert res.prop_b == pytest.approx(b, abs=1e-8)
        np.testing.assert_allclose(res.alignment.numpy(), inside, atol=1e-8)
        assert res.captured.shape == (3, r) and res.sizes.sum() == 90
    assert 0 < b < 1


def test_containment_planted_block_structure():
    """Clusters living in mutually orthogonal feature blocks: local spans are global eigenspaces, (A)=1, (B)=0."""
    g = torch.Generator().manual_seed(12)
    G = torch.zeros(30, 12, dtype=torch.float64)
    labels = np.repeat([0, 1, 2], 10)
    for j in range(3):
        G[10 * j:10 * j + 10, 4 * j:4 * j + 4] = torch.randn(10, 4, generator=g, dtype=torch.float64) * (j + 1)
    res = sp.containment(G, labels, 1.0)
    assert res.rank == 12 and res.local_ranks.tolist() == [4, 4, 4]
    np.testing.assert_allclose(res.prop_a.numpy(), 1.0, atol=1e-10)
    assert res.prop_b == pytest.approx(0.0, abs=1e-10)
    assert len(res.gaps(0.99)) == 0
    # Planted gap: each cluster j has 4 orthogonal directions of energy b_j in its own block, plus a weak
    # component shared by all 30 points (local energy 10·0.9 = 9 < b_j, global 30·0.9 = 27, the largest).
    Gp = torch.zeros(30, 13, dtype=torch.float64)
    for j, b in enumerate([10.0, 12.0, 14.0]):
        M = torch.cat([torch.ones(10, 1, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)], 1)
        Q = torch.linalg.qr(M)[0][:, 1:]                  # orthonormal, orthogonal to the ones vector
        Gp[10 * j:10 * j + 10, 4 * j:4 * j + 4] = Q * b**0.5
    Gp[:, 12] = 0.9**0.5
    res2 = sp.containment(Gp, labels, 0.75)               # global r = 9: shared + blocks of b = 14, 12
    assert res2.rank == 9 and res2.local_ranks.tolist() == [4, 4, 4]
    np.testing.assert_allclose(res2.eigenvalues.numpy(), [27] + [14] * 4 + [12] * 4, rtol=1e-12)
    np.testing.assert_allclose(res2.prop_a.numpy(), [0.0, 1.0, 1.0], atol=1e-10)
    assert res2.prop_b == pytest.approx(27 / 131, rel=1e-10)
    assert res2.gaps(0.5).tolist() == [0]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error():
    G = _lowrank(20, 8, 5, seed=13)
    K = G @ G.T
    with pytest.raises(ValueError, match="symmetric"):
        sp.eig_from_kernel(K + torch.triu(torch.ones(20, 20, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="positive semi-definite"):
        sp.data_redundancy(K - 5 * K.trace() / 20 * torch.eye(20, dtype=torch.float64), 0.9)
    with pytest.raises(ValueError, match="positive semi-definite"):
        sp.spectral_clusters(K - 5 * K.trace() / 20 * torch.eye(20, dtype=torch.float64), 2)
    for tau in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            sp.truncation_rank(torch.ones(3), tau)
    with pytest.raises(ValueError, match="more than the number of points"):
        sp.spectral_clusters(G.reshape(20, 1, 8), 21)
    with pytest.raises(ValueError, match="empty"):
        sp.containment(G, np.array([0] * 10 + [2] * 10), 0.9)
    bad = G.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sp.parameter_redundancy(bad, 0.9)
    with pytest.raises(ValueError, match="NaN"):
        sp.spectral_clusters(bad.reshape(20, 1, 8), 2)
    inf = G.clone()
    inf[0, 0] = float("inf")
    for call in (lambda: sp.eig_from_features(inf), lambda: sp.containment(inf, np.arange(20) % 2, 0.9),
                 lambda: sp.jl_rank_bracket(inf, 0.9, 0.1), lambda: sp.eig_from_features(inf, method="gram"),
                 lambda: sp.spectral_clusters(inf.reshape(20, 1, 8), 2, method="matrix_free")):
        with pytest.raises(ValueError, match="NaN or inf|NaN/inf"):
            call()
    with pytest.raises(ValueError, match="n_clusters"):
        sp.spectral_clusters(G.reshape(20, 1, 8), 1000)
    with pytest.raises(ValueError, match="matrix_free"):
        sp.spectral_clusters(K, 2, method="matrix_free")
    with pytest.raises(ValueError, match="negative"):
        sp.truncation_rank(torch.tensor([1.0, -0.5]), 0.9)
    with pytest.raises(ValueError, match="all zero"):
        sp.truncation_rank(torch.zeros(4), 0.9)
    with pytest.raises(TypeError):
        sp.containment(G, np.linspace(0, 1, 20), 0.9)
