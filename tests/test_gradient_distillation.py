"""Tests for dntk.gradient_distillation (appendix §4.3): Algorithm 1 and the selection baselines.

References are independent: numpy ``eigh`` of explicit kernels, brute-force loops, the direct
``diag(K (K+λI)^{-1})``, and ``ClassKRR`` for the rank-r KRR.
"""
import numpy as np
import pytest
import torch

from dntk.baselines import select
from dntk.gradient_distillation import local_global, local_global_grid
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
    """r, r_j, A_i, the gap set and the candidate order follow appendix §4.3 computed independently."""
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
                v = np.zeros(len(G))
                v[S] = Uj[:, l]
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
    """appendix §4.3: with no clusters and every global direction a gap, V = U_r and KRR = rank-r KRR."""
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
        Xb = X.clone()
        Xb[3, 1, 2] = bad
        with pytest.raises(ValueError, match="features"):
            local_global(Xb, T, 4, 0.9, 0.5, labels=labels)
    with pytest.raises(ValueError, match="features"):
        local_global(X[:, 0], T, 4, 0.9, 0.5)
    with pytest.raises(ValueError, match="labels"):
        local_global(X, T, 4, 0.9, 0.5, labels=labels % 3)
    Tb = T.clone()
    Tb[5, 0] = float("inf")
    with pytest.raises(ValueError, match="targets"):
        local_global(X, Tb, 4, 0.9, 0.5, labels=labels)
    with pytest.raises(TypeError, match="features"):
        local_global(X.to(torch.complex128), T, 4, 0.9, 0.5, labels=labels)


def test_thread_setting_restored(data):
    X, T, labels = data
    before = torch.get_num_threads()
    local_global(X, T, 4, tau=0.9, gamma=0.7, method="matrix_free", labels=labels)
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------------------- the main experiment
@pytest.fixture(scope="module")
def comparison():
    from dntk.gradient_distillation import compare
    X, T, labels = clustered_features(N=160, C=3, k=24, seed=5)
    Xt, Tt, _ = clustered_features(N=60, C=3, k=24, seed=5)       # same bases: a test set of the same law
    Xt = Xt + 0.05 * torch.randn(Xt.shape, generator=torch.Generator().manual_seed(9))
    yt = (Tt + 0.3 * torch.randn(Tt.shape, generator=torch.Generator().manual_seed(8))).argmax(1)
    budgets = [1, 3, 6]
    res = compare(X, T, Xt, yt, Tt, budgets, seeds=(0, 1), n_clusters=4, labels=labels, lam_rel=1e-3)
    return X, T, Xt, yt, Tt, budgets, res


def _sk_scores(G, T, Gt, yt, Tt, sets, lam):
    """Accuracy, fidelity and mean coverage from scikit-learn Ridge and a pinv projector, per-class sets."""
    from sklearn.linear_model import Ridge
    C = G.shape[1]
    pred = np.stack([Ridge(alpha=float(lam[c]), fit_intercept=False, solver="cholesky")
                     .fit(sets[c][0], sets[c][1]).predict(Gt[:, c].numpy()) for c in range(C)], 1)
    acc = float((pred.argmax(1) == yt.numpy()).mean())
    fid = float((pred.argmax(1) == Tt.numpy().argmax(1)).mean())
    cov = []
    for c in range(C):
        S, A = np.asarray(sets[c][0]), G[:, c].double().numpy()
        Pi = S.T @ np.linalg.pinv(S @ S.T) @ S
        cov.append(np.sum((A @ Pi) ** 2) / np.sum(A ** 2))
    return acc, fid, float(np.mean(cov))


def test_compare_baseline_rows_equal_sklearn(comparison):
    X, T, Xt, yt, Tt, budgets, res = comparison
    lam = default_lam(X, 1e-3).numpy()
    np.testing.assert_allclose(res.lam.numpy(), lam, rtol=1e-12)
    G, Tn = X.double().numpy(), T.double().numpy()
    for method in ("random", "fps", "leverage", "kmeans"):
        for m in budgets:
            for s in ((0, 1) if method != "leverage" else (None,)):
                row = next(r for r in res.rows if r.method == method and r.m == m and r.seed == s)
                idx = [select(method, X[:, c], m, seed=0 if s is None else s).indices.numpy() for c in range(3)]
                sets = [(G[idx[c], c], Tn[idx[c], c]) for c in range(3)]
                acc, fid, cov = _sk_scores(X, T, Xt, yt, Tt, sets, lam)
                assert (row.accuracy, row.fidelity) == (acc, fid), (method, m, s)
                assert abs(row.coverage - cov) < 1e-8 and abs(row.nystrom_error - (1 - cov)) < 1e-8
    # the full-KRR ceiling equals scikit-learn on all rows
    acc, fid, _ = _sk_scores(X, T, Xt, yt, Tt, [(G[:, c], Tn[:, c]) for c in range(3)], lam)
    assert (res.full.accuracy, res.full.fidelity) == (acc, fid)


def test_compare_pca_coverage_is_ky_fan_and_counts(comparison):
    X, T, _, _, _, budgets, res = comparison
    for m in budgets:
        row = next(r for r in res.rows if r.method == "pca" and r.m == m)
        ref = np.mean([np.sum(s[:m] ** 2) / np.sum(s ** 2)
                       for s in (np.linalg.svd(X[:, c].double().numpy(), compute_uv=False) for c in range(3))])
        assert abs(row.coverage - ref) < 1e-10
    counts = res.counts()
    assert set(counts) == set(budgets)
    assert all(loc + gap == 3 * m for m, (loc, gap) in counts.items())
    assert res.values("random", "fidelity").shape == (len(budgets), 2)
    assert res.values("pca", "accuracy").shape == (len(budgets), 1)
    mean, lo, hi = res.summary("coverage")["random"]
    assert np.all(lo <= mean) and np.all(mean <= hi)
    assert "Algorithm 1" in res.table("accuracy") and res.result is not None


def test_compare_algorithm1_without_clusters_is_pca():
    """n_clusters = 0, τ = 1, γ = 1: every global direction is a gap, so V = U_m — the rank-m KRR (pca)."""
    from dntk.gradient_distillation import compare
    X, T, _ = clustered_features(N=90, C=2, k=20, seed=2)
    Xt, Tt, _ = clustered_features(N=40, C=2, k=20, seed=2)
    res = compare(X, T, Xt, Tt.argmax(1), Tt, [1, 2, 4], methods=("local_global", "pca"), n_clusters=0,
                  tau=1.0, gamma=1.0)
    for m in (1, 2, 4):
        a = next(r for r in res.rows if r.method == "local_global" and r.m == m)
        b = next(r for r in res.rows if r.method == "pca" and r.m == m)
        assert (a.accuracy, a.fidelity) == (b.accuracy, b.fidelity)
        assert abs(a.coverage - b.coverage) < 1e-10 and (a.n_local, a.n_gap) == (0, 2 * m)


def test_compare_bad_arguments():
    from dntk.gradient_distillation import compare
    X, T, _ = clustered_features(N=40, C=2, k=12, M=2, seed=1)
    y = T.argmax(1)
    with pytest.raises(ValueError, match="methods"):
        compare(X, T, X, y, T, [2], methods=("greedy",))
    with pytest.raises(ValueError, match="budgets"):
        compare(X, T, X, y, T, [41], methods=("random",))
    with pytest.raises(ValueError, match="budgets"):
        compare(X, T, X, y, T, [0], methods=("random",))
    with pytest.raises(ValueError, match="seeds"):
        compare(X, T, X, y, T, [2], methods=("random",), seeds=())
    with pytest.raises(ValueError, match="n_clusters"):
        compare(X, T, X, y, T, [2], methods=("local_global",), n_clusters=1000)
    Tb = T.clone()
    Tb[0, 0] = float("nan")
    with pytest.raises(ValueError, match="targets"):
        compare(X, Tb, X, y, T, [2], methods=("random",))


def test_score_of_algorithm1_output_equals_sklearn(data):
    from dntk.gradient_distillation import Score, score
    X, T, labels = data
    res = local_global(X, T, 4, tau=0.9, gamma=0.7, labels=labels, budget=5)
    Xt, Tt = X[::3], T[::3]
    yt = Tt.argmax(1)
    lam = default_lam(X).numpy()
    sets = [(cs.G_syn.numpy(), cs.t_syn.numpy()) for cs in res.classes]
    acc, fid, cov = _sk_scores(X, T, Xt, yt, Tt, sets, lam)
    s = score(res.G_syn, res.t_syn, lam, Xt, yt, Tt, features=X)
    assert (s.accuracy, s.fidelity) == (acc, fid) and abs(s.coverage - cov) < 1e-8
    bare = score(res.G_syn, res.t_syn, lam, Xt, yt, Tt)
    assert isinstance(bare, Score) and bare.coverage is None and bare.accuracy == acc


# ----------------------------------------------------------------------------- out of core
def _class_major(X):
    Xc = X.permute(1, 0, 2).contiguous()
    return lambda c, a, b: Xc[c, a:b]


@pytest.mark.parametrize("tau, gamma, budget", [(0.9, 0.7, None), (0.95, 0.9, None), (0.6, 1.0, None),
                                                (0.9, 0.7, 7), (0.6, 1.0, 5)])
def test_streamed_equals_dense_reference(data, tau, gamma, budget):
    """From the per-cluster Grams alone: the same ranks, gaps, kept candidates and, up to the sign of each
    synthetic gradient, the same synthetic set as the dense path (eigh of explicit N×N kernels)."""
    from dntk.gradient_distillation import local_global_streamed
    X, T, labels = data
    d = local_global(X, T, 4, tau=tau, gamma=gamma, method="dense", labels=labels, budget=budget)
    s = local_global_streamed(_class_major(X), X.shape[0], X.shape[1], T, labels, tau, gamma, budget=budget,
                              block_rows=37)
    assert s.method == "streamed" and s.n_clusters == 4
    for c in range(X.shape[1]):
        a, b = d[c], s[c]
        assert b.V is None and a.m == b.m and a.n_candidates == b.n_candidates
        assert a.r == b.r and torch.equal(a.r_j, b.r_j) and torch.equal(a.gaps, b.gaps)
        assert torch.equal(a.source, b.source) and (a.n_local, a.n_gap) == (b.n_local, b.n_gap)
        torch.testing.assert_close(a.A, b.A, atol=1e-10, rtol=0)
        sign = torch.sign((a.G_syn * b.G_syn).sum(1))
        torch.testing.assert_close(b.G_syn * sign[:, None], a.G_syn, atol=1e-9, rtol=0)
        torch.testing.assert_close(b.t_syn * sign, a.t_syn, atol=1e-9, rtol=0)
        assert b.trace == pytest.approx(a.trace, rel=1e-12)
    assert sum(s[c].n_gap for c in range(X.shape[1])) > 0 or budget is not None


def test_streamed_one_cluster_drops_dependent_gaps(data):
    """M = 1 and γ = 1: gaps lie in the span of the (identical) local vectors, and step 6 must drop them."""
    from dntk.gradient_distillation import local_global_streamed
    X, T, _ = data
    one = torch.zeros(X.shape[0], dtype=torch.int64)
    d = local_global(X, T, 1, tau=0.9, gamma=1.0, method="dense", labels=one)
    s = local_global_streamed(_class_major(X), X.shape[0], X.shape[1], T, one, 0.9, 1.0)
    for c in range(X.shape[1]):
        assert s[c].m == d[c].m == d[c].r and s[c].n_gap == d[c].n_gap == 0
        eigs = np.linalg.eigvalsh(X[:, c].double().numpy() @ X[:, c].double().numpy().T)[::-1]
        np.testing.assert_allclose(s[c].eigvals.numpy(), eigs[: s[c].r], rtol=1e-9)


def test_streamed_from_a_class_major_file(tmp_path, data):
    from dntk.gradient_distillation import class_major_reader, local_global_streamed
    X, T, labels = data
    N, C, k = X.shape
    path = tmp_path / "features.f32"
    X.permute(1, 0, 2).contiguous().numpy().astype(np.float32).tofile(path)
    read = class_major_reader(path, N, C, k)
    np.testing.assert_array_equal(read(2, 5, 9), X[5:9, 2].numpy())
    s = local_global_streamed(read, N, C, T, labels, 0.9, 0.7, block_rows=100)
    ref = local_global_streamed(_class_major(X), N, C, T, labels, 0.9, 0.7, block_rows=100)
    for c in range(C):
        torch.testing.assert_close(s[c].G_syn, ref[c].G_syn, atol=0, rtol=0)
    with pytest.raises(ValueError, match="bytes"):
        class_major_reader(path, N + 1, C, k)


def test_streamed_bad_input(data):
    from dntk.gradient_distillation import local_global_streamed
    X, T, labels = data
    N, C, k = X.shape
    read = _class_major(X)
    with pytest.raises(ValueError, match="shape"):
        local_global_streamed(lambda c, a, b: X[a:b, c, :-1] if a else X[a:b, c], N, C, T, labels, 0.9, 0.7,
                              block_rows=50)
    Xb = X.clone()
    Xb[70, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"read_class\(1, 64, 128\)"):
        local_global_streamed(_class_major(Xb), N, C, T, labels, 0.9, 0.7, block_rows=64)
    with pytest.raises(ValueError, match="targets"):
        local_global_streamed(read, N, C, T[:-1], labels, 0.9, 0.7)
    with pytest.raises(ValueError, match="labels"):
        local_global_streamed(read, N, C, T, labels[:-1], 0.9, 0.7)
    with pytest.raises(ValueError, match="tau"):
        local_global_streamed(read, N, C, T, labels, 0.0, 0.7)
    with pytest.raises(TypeError, match="read_class"):
        local_global_streamed(X, N, C, T, labels, 0.9, 0.7)
