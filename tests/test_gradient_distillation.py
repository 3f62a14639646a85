"""Tests for dntk.gradient_distillation (SPEC §4.3): Algorithm 1 and the selection baselines.

References are independent: numpy ``eigh`` of explicit kernels, brute-force loops, the direct
``diag(K (K+λI)^{-1})``, and ``ClassKRR`` for the rank-r KRR.
"""
import numpy as np
import pytest
import torch

from dntk.gradient_distillation import (SELECT_METHODS, leverage_scores, local_global, local_global_grid,
                                        select)
from dntk.krr import ClassKRR, default_lam


def clustered_features(N=240, C=3, k=32, M=4, seed=0, amp=0.6, mean=1.0):
    """Planted local–global structure (N, C, k). Per class, an orthonormal basis of R^k is split into
    three directions per cluster (scales 2, 1.4, 1), one mean direction per cluster (scale ``mean``)
    and two directions shared by all clusters (scale ``amp``). Within a cluster the shared directions
    fall below the local τ = 0.9 cut, but summed over the clusters they rank among the global top
    eigenvectors: the *gaps* of Algorithm 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % M
    X = torch.zeros(N, C, k)
    scales = torch.tensor([2.0, 1.4, 1.0])
    for c in range(C):
        Q = torch.linalg.qr(torch.randn(k, k, generator=g))[0].T        # rows orthonormal
        shared = Q[4 * M: 4 * M + 2]
        for j in range(M):
            idx = torch.nonzero(labels == j).flatten()
            n = len(idx)
            X[idx, c] = (mean * Q[3 * M + j] + (torch.randn(n, 3, generator=g) * scales) @ Q[3 * j: 3 * j + 3]
                         + amp * torch.randn(n, 2, generator=g) @ shared + 0.02 * torch.randn(n, k, generator=g))
    T = torch.randn(N, C, generator=g) + X.sum(2) * 0.1
    return X, T, labels


def ref_eig(K):
    """numpy eigh, non-increasing, eigenvectors with their largest-magnitude entry positive."""
    lam, U = np.linalg.eigh(K)
    lam, U = lam[::-1].clip(0), U[:, ::-1]
    s = np.sign(U[np.abs(U).argmax(0), np.arange(U.shape[1])])
    return lam, U * s


def ref_rank(lam, tau):
    cs = np.cumsum(lam)
    return int(np.argmax(cs >= tau * cs[-1] * (1 - 1e-12))) + 1


@pytest.fixture(scope="module")
def data():
    return clustered_features()


def test_dense_equals_matrix_free(data):
    X, T, labels = data
    out = {m: local_global(X, T, 4, tau=0.9, gamma=0.7, method=m, labels=labels) for m in ("dense", "matrix_free")}
    d, f = out["dense"], out["matrix_free"]
    assert d.method == "dense" and f.method == "matrix_free"
    for c in range(X.shape[1]):
        a, b = d[c], f[c]
        assert a.r == b.r and torch.equal(a.r_j, b.r_j) and torch.equal(a.gaps, b.gaps)
        assert torch.equal(a.source, b.source) and a.n_gap == b.n_gap and a.n_local == b.n_local
        torch.testing.assert_close(a.A, b.A, atol=1e-8, rtol=0)
        sign = torch.sign((a.V * b.V).sum(0))                 # same vectors up to the sign of each
        torch.testing.assert_close(a.V, b.V * sign, atol=1e-8, rtol=0)
        torch.testing.assert_close(a.G_syn, b.G_syn * sign[:, None], atol=1e-7, rtol=0)
        torch.testing.assert_close(a.t_syn, b.t_syn * sign, atol=1e-8, rtol=0)
    assert sum(d[c].n_gap for c in range(X.shape[1])) > 0, "the planted gaps must be exercised"
    lam = default_lam(X)
    pd = ClassKRR().fit_synthetic(d.G_syn, d.t_syn, lam=lam).predict(X)
    pf = ClassKRR().fit_synthetic(f.G_syn, f.t_syn, lam=lam).predict(X)
    torch.testing.assert_close(pd, pf, atol=1e-7, rtol=1e-7)


def test_end_to_end_with_spectral_clustering():
    """Step 1 included: both paths find the planted clusters and give the same synthetic set."""
    X, T, labels = clustered_features(mean=3.0)
    d = local_global(X, T, 4, tau=0.9, gamma=0.7, method="dense")
    f = local_global(X, T, 4, tau=0.9, gamma=0.7, method="matrix_free")
    for res in (d, f):   # the planted partition, up to relabelling
        pairs = set(zip(res.labels.tolist(), labels.tolist()))
        assert len(pairs) == 4
    assert torch.equal(d.labels, f.labels)
    for c in range(X.shape[1]):
        sign = torch.sign((d[c].V * f[c].V).sum(0))
        torch.testing.assert_close(d[c].V, f[c].V * sign, atol=1e-8, rtol=0)


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_V_orthonormal_and_synthetic_set(data, method):
    X, T, labels = data
    res = local_global(X, T, 4, tau=0.9, gamma=0.8, method=method, labels=labels)
    for c in range(X.shape[1]):
        cs = res[c]
        G = X[:, c].double()
        assert cs.V.shape == (X.shape[0], cs.m) and cs.m == cs.n_local + cs.n_gap > 0
        torch.testing.assert_close(cs.V.T @ cs.V, torch.eye(cs.m, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(cs.G_syn, cs.V.T @ G, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(cs.t_syn, cs.V.T @ T[:, c].double(), atol=1e-10, rtol=1e-10)
        assert cs.trace == pytest.approx(float((G ** 2).sum()))


def test_steps_against_numpy_reference(data):
    """r, r_j, A_i, the gap set and the candidate order follow SPEC §4.3 computed independently."""
    X, T, labels = data
    tau, gamma = 0.9, 0.7
    res = local_global(X, T, 4, tau=tau, gamma=gamma, method="matrix_free", labels=labels)
    lab = labels.numpy()
    for c in range(X.shape[1]):
        G = X[:, c].double().numpy()
        lam, U = ref_eig(G @ G.T)
        r = ref_rank(lam, tau)
        A = np.zeros(r)
        cands = []
        for j in range(4):
            S = np.nonzero(lab == j)[0]
            lj, Uj = ref_eig(G[S] @ G[S].T)
            rj = ref_rank(lj, tau)
            A += ((Uj[:, :rj].T @ U[S, :r]) ** 2).sum(0)
            for l in range(rj):
                v = np.zeros(len(G)); v[S] = Uj[:, l]
                cands.append((lj[l], v))
        gaps = np.nonzero(A < gamma)[0]
        cands += [(lam[i], U[:, i]) for i in gaps]
        cands.sort(key=lambda e: -e[0])
        cs = res[c]
        assert cs.r == r
        np.testing.assert_allclose(cs.A.numpy(), A, atol=1e-8)
        np.testing.assert_array_equal(cs.gaps.numpy(), gaps)
        np.testing.assert_allclose(cs.eigvals.numpy(), lam[:r], rtol=1e-9)
        # brute-force Gram–Schmidt in eigenvalue order, then compare the whole basis
        Q = []
        for _, v in cands:
            w = v - sum((q @ v) * q for q in Q) if Q else v.copy()
            w = w - sum((q @ w) * q for q in Q) if Q else w
            if np.linalg.norm(w) >= 1e-6:
                Q.append(w / np.linalg.norm(w))
        Q = np.stack(Q, 1)
        assert cs.m == Q.shape[1] and cs.n_gap == len(gaps) > 0
        np.testing.assert_allclose(np.abs((cs.V.numpy() * Q).sum(0)), 1.0, atol=1e-8)
        ev = cs.source_eigval.numpy()
        assert np.all(np.diff(ev) <= 0), "candidates must be ordered by decreasing eigenvalue"


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("budget", [None, 5])
def test_blocked_gram_schmidt_matches_sequential(block, budget):
    """The matrix-free step 6 (candidates in blocks) keeps the same vectors as one-at-a-time GS,
    dropping exact and near (1e-9) dependencies and stopping when R^n is spanned."""
    from dntk.gradient_distillation import _block_gram_schmidt, _gram_schmidt
    g = torch.Generator().manual_seed(7)
    n = 10
    W = torch.randn(n, 6, generator=g, dtype=torch.float64)
    W = torch.cat([W, W[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64),   # dependent ones
                   W[:, 3:4] + 1e-9 * torch.randn(n, 1, generator=g, dtype=torch.float64),
                   torch.randn(n, 8, generator=g, dtype=torch.float64)], 1)          # more than n in all
    W = W[:, torch.randperm(W.shape[1], generator=g)]
    W = W / W.norm(dim=0)
    Q, kept = _block_gram_schmidt(lambda a, b: W[:, a:b].T.clone(), W.shape[1], n, 1e-6, budget, block=block)
    Q_ref, kept_ref = _gram_schmidt(list(W.T), 1e-6, budget, n)
    assert kept == kept_ref and len(kept) == (n if budget is None else 5)
    torch.testing.assert_close(Q, Q_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(Q.T @ Q, torch.eye(len(kept), dtype=torch.float64), atol=1e-12, rtol=0)
    # brute force: a column is kept iff it is not (numerically) in the span of the kept ones before it
    ref = []
    for j in range(W.shape[1]):
        if len(ref) == len(kept):
            break
        B = W[:, ref]
        res = W[:, j] - B @ torch.linalg.lstsq(B, W[:, j]).solution if ref else W[:, j]
        if float(res.norm()) >= 1e-6:
            ref.append(j)
    assert kept == ref


def test_gap_set_monotone_in_gamma(data):
    X, T, labels = data
    gammas = [0.05, 0.5, 0.9, 1.0]
    grid = local_global_grid(X, T, 4, [0.9], gammas, method="matrix_free", labels=labels)
    for c in range(X.shape[1]):
        prev = set()
        sizes = []
        for g in gammas:
            gaps = set(grid[(0.9, g)][c].gaps.tolist())
            assert prev <= gaps
            prev = gaps
            sizes.append(len(gaps))
        assert sizes[-1] > sizes[0], "the planted shared directions must show up as gaps for large gamma"
    # the threshold is strict (A_i < γ): put γ exactly on each observed alignment
    A = grid[(0.9, 1.0)][0].A
    at = sorted(set(float(a) for a in A if 0 < a <= 1))[:6]      # the smallest ones: gaps and their neighbours
    exact = local_global_grid(X, T, 4, [0.9], at, method="matrix_free", labels=labels)
    for g in at:
        assert exact[(0.9, g)][0].gaps.tolist() == torch.nonzero(A < g).flatten().tolist()


def test_grid_equals_single_calls(data):
    X, T, labels = data
    grid = local_global_grid(X, T, 4, [0.9, 0.99], [0.5, 0.9], method="dense", labels=labels)
    one = local_global(X, T, 4, tau=0.9, gamma=0.9, method="dense", labels=labels)
    for c in range(X.shape[1]):
        torch.testing.assert_close(grid[(0.9, 0.9)][c].V, one[c].V, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_budget_is_prefix(data, method):
    X, T, labels = data
    full = local_global(X, T, 4, tau=0.9, gamma=0.8, method=method, labels=labels)
    for b in (1, 3, 7):
        res = local_global(X, T, 4, tau=0.9, gamma=0.8, budget=b, method=method, labels=labels)
        for c in range(X.shape[1]):
            assert res[c].m == min(b, full[c].m)
            torch.testing.assert_close(res[c].V, full[c].V[:, : res[c].m], atol=1e-9, rtol=0)
            assert res[c].n_local + res[c].n_gap == res[c].m


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_no_clusters_all_gaps_is_rank_r_krr(data, method):
    """SPEC §4.3: with no clusters and every global direction a gap, V = U_r and KRR = rank-r KRR."""
    X, T, _ = data
    res = local_global(X, T, 0, tau=0.9, gamma=1.0, method=method)
    assert res.labels is None
    Xte = clustered_features(N=40, seed=1)[0]
    lam = default_lam(X)
    pred = ClassKRR().fit_synthetic(res.G_syn, res.t_syn, lam=lam).predict(Xte)
    for c in range(X.shape[1]):
        cs = res[c]
        assert cs.n_local == 0 and cs.n_gap == cs.r == cs.m
        ref = ClassKRR(rank=cs.r).fit(X, T).predict(Xte)[:, c]
        torch.testing.assert_close(pred[:, c], ref, atol=1e-8, rtol=1e-8)


def test_one_cluster_spans_global_top_r(data):
    """With one cluster the local eigenvectors are the global ones: gaps are duplicates and are dropped."""
    X, T, _ = data
    labels = torch.zeros(X.shape[0], dtype=torch.int64)
    for method in ("dense", "matrix_free"):
        res = local_global(X, T, 1, tau=0.9, gamma=1.0, method=method, labels=labels)
        for c in range(X.shape[1]):
            cs = res[c]
            assert cs.m == cs.r == int(cs.r_j[0])
            G = X[:, c].double().numpy()
            U = ref_eig(G @ G.T)[1][:, : cs.r]
            P = cs.V.numpy() @ cs.V.numpy().T
            np.testing.assert_allclose(P @ U, U, atol=1e-8)


def test_remark_4_2_norms(data):
    """‖G̃ᵀv‖² = λ for each coefficient vector that is an eigenvector (the first column always is)."""
    X, T, labels = data
    res = local_global(X, T, 4, tau=0.95, gamma=0.5, method="matrix_free", labels=labels)
    for c in range(X.shape[1]):
        cs = res[c]
        assert float(cs.G_syn[0].pow(2).sum()) == pytest.approx(float(cs.source_eigval[0]), rel=1e-9)


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
    X, T, _ = clustered_features(N=120, C=2)
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


@pytest.mark.parametrize("kwargs, name", [
    (dict(budget=0), "budget"), (dict(budget=-2), "budget"), (dict(n_clusters=10_000), "n_clusters"),
    (dict(n_clusters=-1), "n_clusters"), (dict(tau=0.0), "tau"), (dict(tau=1.5), "tau"),
    (dict(tau=float("nan")), "tau"), (dict(gamma=0.0), "gamma"), (dict(gamma=1.01), "gamma"),
    (dict(method="svd"), "method"), (dict(tol=0.0), "tol"),
])
def test_bad_arguments(data, kwargs, name):
    X, T, _ = data
    args = dict(n_clusters=4, tau=0.9, gamma=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        local_global(X, T, **args)


def test_bad_arrays(data):
    X, T, labels = data
    with pytest.raises(ValueError, match="features and targets"):
        local_global(X, T[:-1], 4, 0.9, 0.5, labels=labels)
    for bad in (float("nan"), float("inf")):
        Xb = X.clone(); Xb[3, 1, 2] = bad
        with pytest.raises(ValueError, match="features"):
            local_global(Xb, T, 4, 0.9, 0.5, labels=labels)
    with pytest.raises(ValueError, match="features"):
        local_global(X[:, 0], T, 4, 0.9, 0.5)
    with pytest.raises(ValueError, match="labels"):
        local_global(X, T, 4, 0.9, 0.5, labels=labels % 3)
    with pytest.raises(ValueError, match="budget"):
        select("random", X[:, 0], 0)
    with pytest.raises(ValueError, match="budget"):
        select("fps", X[:, 0], X.shape[0] + 1)
    with pytest.raises(ValueError, match="method"):
        select("greedy", X[:, 0], 3)
    with pytest.raises(ValueError, match="features_c"):
        select("random", X, 3)
    Xb = X[:, 0].clone(); Xb[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features_c"):
        select("leverage", Xb, 3)
    assert set(SELECT_METHODS) == {"random", "leverage", "leverage_sampled", "fps", "kmeans", "pca"}


def test_thread_setting_restored(data):
    X, T, labels = data
    before = torch.get_num_threads()
    local_global(X, T, 4, tau=0.9, gamma=0.7, method="matrix_free", labels=labels)
    assert torch.get_num_threads() == before
