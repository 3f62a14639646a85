"""Tests for dntk.baselines (appendix §4.3): the row-selection baselines of Algorithm 1.

References are independent: the direct ``diag(K (K+λI)^{-1})``, brute-force farthest-point loops,
scikit-learn k-means and ``ClassKRR``'s rank-r solve.
"""
import numpy as np
import pytest
import torch

from dntk.baselines import SEEDED_METHODS, SELECT_METHODS, leverage_scores, select
from dntk.krr import ClassKRR, default_lam


def clustered(N=120, C=2, k=16, M=4, seed=0):
    """Clustered features (N, C, k) and targets (N, C): M cluster means plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(M, C, k, generator=g, dtype=torch.float64)
    X = centres[torch.arange(N) % M] + torch.randn(N, C, k, generator=g, dtype=torch.float64)
    T = X.sum(2) * 0.1 + torch.randn(N, C, generator=g, dtype=torch.float64)
    return X, T


def test_leverage_scores_direct():
    g = torch.Generator().manual_seed(3)
    for N, k in ((50, 12), (10, 30)):
        G = torch.randn(N, k, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, -3, k, dtype=torch.float64))
        K = (G @ G.T).numpy()
        for lam in (1e-4, 0.3):
            direct = np.diag(K @ np.linalg.inv(K + lam * np.eye(N)))
            np.testing.assert_allclose(leverage_scores(G, lam=lam).numpy(), direct, rtol=1e-8, atol=1e-12)
        lam_default = 1e-3 * np.trace(K) / N
        direct = np.diag(K @ np.linalg.inv(K + lam_default * np.eye(N)))
        np.testing.assert_allclose(leverage_scores(G).numpy(), direct, rtol=1e-8)
    s = select("leverage", G, 4)
    assert torch.equal(s.indices, torch.argsort(s.scores, descending=True)[:4])
    s2 = select("leverage_sampled", G, 4, seed=3, scores=s.scores)
    assert torch.equal(s2.indices, select("leverage_sampled", G, 4, seed=3).indices)
    with pytest.raises(ValueError, match="scores"):
        select("leverage", G, 4, scores=s.scores[:-1])


def test_fps_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    G = torch.randn(60, 5, generator=g)
    for seed in range(3):
        sel = select("fps", G, 8, seed=seed).indices.tolist()
        X = G.double().numpy()
        chosen = [sel[0]]
        for _ in range(7):
            best, best_d = None, -1.0
            for i in range(len(X)):
                if i in chosen:
                    continue
                d = min(np.linalg.norm(X[i] - X[j]) for j in chosen)
                if d > best_d + 1e-12:
                    best, best_d = i, d
            chosen.append(best)
        assert sel == chosen
    assert select("fps", G, 3, start=7).indices[0] == 7


def test_random_kmeans_and_pca():
    X, T = clustered(N=120, C=2)
    G = X[:, 0]
    r1, r2 = select("random", G, 10, seed=1).indices, select("random", G, 10, seed=2).indices
    assert len(set(r1.tolist())) == 10 and not torch.equal(r1, r2)
    assert torch.equal(r1, select("random", G, 10, seed=1).indices)
    km = select("kmeans", G, 6, seed=0)
    assert len(set(km.indices.tolist())) == 6 and int(km.indices.max()) < 120
    from sklearn.cluster import KMeans
    cent = KMeans(n_clusters=6, n_init=1, random_state=0).fit(G.double().numpy()).cluster_centers_
    d = ((G.double().numpy()[None] - cent[:, None]) ** 2).sum(2)
    np.testing.assert_array_equal(km.indices.numpy(), d.argmin(1))  # distinct nearest rows here
    ls = select("leverage_sampled", G, 10, seed=0).indices
    assert len(set(ls.tolist())) == 10
    # pca: the rank-m KRR reference
    p = select("pca", G, 4)
    Gs, ts = p.apply(G, T[:, 0])
    torch.testing.assert_close(p.V.T @ p.V, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    lam = float(default_lam(X)[0])
    w = ClassKRR(lam=lam).fit_synthetic([Gs], [ts]).weights_[0]
    ref = ClassKRR(lam=lam, rank=4).fit(X[:, :1], T[:, :1]).weights_[0]
    torch.testing.assert_close(w, ref, atol=1e-9, rtol=1e-9)
    rows = select("random", G, 3, seed=0)
    Gr, tr = rows.apply(G, T[:, 0])
    torch.testing.assert_close(Gr, G[rows.indices].double())


def test_bad_arrays():
    X = torch.randn(30, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="budget"):
        select("random", X, 0)
    with pytest.raises(ValueError, match="budget"):
        select("fps", X, X.shape[0] + 1)
    with pytest.raises(ValueError, match="method"):
        select("greedy", X, 3)
    with pytest.raises(ValueError, match="features_c"):
        select("random", X[:, :, None], 3)
    Xb = X.clone()
    Xb[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features_c"):
        select("leverage", Xb, 3)
    with pytest.raises(ValueError, match="numerical rank"):
        select("pca", X[:, :2] @ torch.randn(2, 6, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="targets_c"):
        select("random", X, 3).apply(X, torch.full((30,), float("nan")))
    assert set(SELECT_METHODS) == {"random", "leverage", "leverage_sampled", "fps", "kmeans", "pca"}
    assert set(SEEDED_METHODS) < set(SELECT_METHODS)


def test_integer_features_are_accepted_as_numbers():
    g = torch.Generator().manual_seed(0)
    Xi = torch.randint(-5, 6, (25, 4), generator=g)
    a, b = select("fps", Xi, 5, start=0).indices, select("fps", Xi.double(), 5, start=0).indices
    assert torch.equal(a, b)


def test_re_exported_from_gradient_distillation():
    import dntk.gradient_distillation as gd
    assert gd.select is select and gd.leverage_scores is leverage_scores and gd.SELECT_METHODS is SELECT_METHODS
