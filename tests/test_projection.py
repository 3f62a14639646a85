"""dntk.projection and the projected fast path of dntk.tangent (appendix §4.2).

References: explicit matrices (``R`` assembled from the projector, scipy's Hadamard matrix, ``torch.kron``),
exact ``torch.func`` Jacobians, and closed-form moments over many seeds.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from dntk import projection, tangent

from _nets import small_cnn

KINDS = list(projection.KINDS)


def X(n=5, seed=0):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_fwht_equals_hadamard_matrix():
    for L in (1, 2, 8, 64, 2048):
        x = torch.randn(3, L, dtype=torch.float64)
        H = torch.from_numpy(scipy.linalg.hadamard(L).astype(np.float64))
        torch.testing.assert_close(projection.fwht(x), x @ H)


@pytest.mark.parametrize("kind", KINDS)
def test_projected_fast_path_equals_exact_jacobian_times_R(kind):
    model, x = small_cnn().eval(), X()
    opts = {"tile_rows": 7} if "tile_rows" in projection.make(kind, 8).options else {}
    proj = projection.make(kind, 32, seed=3, **opts)  # tiles straddle layer chunks
    Gp = tangent.class_gradients(model, x, projector=proj, batch_size=2)
    assert Gp.shape == (5, 3, 32) and Gp.dtype == torch.float32
    J = tangent.class_gradients(model, x, method="exact")
    R = proj.matrix()
    assert R.shape == (tangent.num_params(model), 32)
    torch.testing.assert_close(Gp, J @ R, rtol=1e-4, atol=1e-5)
    # the exact method with the same projector gives the same numbers
    torch.testing.assert_close(tangent.class_gradients(model, x, projector=proj, method="exact"), Gp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("s", [2, 3])
def test_projected_fast_path_sparse_with_several_nonzeros(s):
    model, x = small_cnn().eval(), X()
    proj = projection.make("sparse", 30, seed=3, s=s, tile_rows=7)
    Gp = tangent.class_gradients(model, x, projector=proj, batch_size=2, max_bytes=4096)  # many small chunks
    J = tangent.class_gradients(model, x, method="exact")
    torch.testing.assert_close(Gp, J @ proj.matrix(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_for_any_batch_size_or_memory_budget(kind):
    model, x = small_cnn().eval(), X(7)
    ref = tangent.class_gradients(model, x, projector=projection.make(kind, 24, seed=1), batch_size=7)
    for bs, mb in ((1, None), (3, None), (4, 4096)):  # 4 KiB budget forces tiny row/channel chunks
        got = tangent.class_gradients(model, x, projector=projection.make(kind, 24, seed=1), batch_size=bs, max_bytes=mb)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # project(): any split of the rows gives the same answer, and the same seed the same R
    J = tangent.class_gradients(model, x).reshape(21, -1)
    p = projection.make(kind, 24, seed=1).bind(tangent.param_layout(model))
    whole = p.project(J)
    torch.testing.assert_close(torch.cat([p.project(J[:5]), p.project(J[5:])]), whole, rtol=1e-5, atol=1e-6)
    q = projection.make(kind, 24, seed=1).bind(tangent.param_layout(model))
    torch.testing.assert_close(q.project(J), whole)
    r = projection.make(kind, 24, seed=2).bind(tangent.param_layout(model))
    assert not torch.allclose(r.project(J), whole)
    # the identity names what determines R: equal for p and q, different for r
    assert p.identity() == q.identity() != r.identity() and p.identity()["kind"] == kind


def _layout(kind):
    # kronecker needs a 2-D block to be Kronecker-structured; a vector block is projected densely
    return [(8, 16)] if kind == "kronecker" else 128


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_inner_products_over_seeds(kind):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(128, generator=g)
    b = 0.6 * a + torch.randn(128, generator=g)
    b[:10] *= 5  # some coordinates dominate, as in real gradients
    exact = float(a @ b)
    S = 200
    est = []
    for s in range(S):
        p = projection.make(kind, 16, seed=s).bind(_layout(kind))
        pa, pb = p.project(torch.stack([a, b]))
        est.append(float(pa @ pb))
    est = np.array(est)
    se = est.std(ddof=1) / math.sqrt(S)
    assert abs(est.mean() - exact) < 4 * se, (kind, est.mean(), exact, se)


@pytest.mark.parametrize("kind", KINDS)
def test_distortion_shrinks_with_k(kind):
    """Relative Gram error ~ k^-1/2. (Kronecker on these full-rank blocks too; on rank-one blocks, where each
    factor acts alone with √k columns, it decays only like k^-1/4 — chapter 07 shows that case.)"""
    g = torch.Generator().manual_seed(1)
    P = 1024 if kind == "orthonormal" else 4096  # orthonormal: a QR per seed
    V = torch.randn(6, P, generator=g) * torch.linspace(0.2, 3.0, P) ** 2
    K = V.double() @ V.double().T
    layout = [(64, 64)] if kind == "kronecker" else P
    seeds = 6 if kind == "orthonormal" else 12
    ks = [16, 64, 256]
    errs = []
    for k in ks:
        e = []
        for s in range(seeds):
            W = projection.make(kind, k, seed=s).bind(layout).project(V).double()
            e.append(float(torch.linalg.norm(W @ W.T - K) / torch.linalg.norm(K)))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(ks), np.log(errs), 1)[0]
    assert abs(slope + 0.5) < 0.15, (kind, errs, slope)


def test_kronecker_equals_explicit_kron_of_factors():
    torch.manual_seed(0)
    for model, x in (
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.randn(4, 3, 4)),
        (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)), torch.randn(4, 2, 5, 5)),
    ):
        proj = projection.make("kronecker", 12, seed=5, k_out=3, k_in=4)
        Gp = tangent.class_gradients(model, x, projector=proj)
        J = tangent.class_gradients(model, x, method="exact")
        N, C, _ = J.shape
        ref = torch.zeros(N, C, 12)
        for i, blk in enumerate(tangent.param_layout(model)):
            Jb = J[:, :, blk.offset : blk.offset + blk.size].reshape(N * C, -1)
            if len(blk.shape) >= 2:
                Ro, Ri = proj.factors(i)
                assert Ro.shape == (blk.shape[0], 3) and Ri.shape == (blk.size // blk.shape[0], 4)
                ref += (Jb @ torch.kron(Ro, Ri)).reshape(N, C, 12)  # (R_out ⊗ R_in)ᵀ vec(∇W)
            else:
                ref += (Jb @ proj.vector_block(i)).reshape(N, C, 12)
        torch.testing.assert_close(Gp, ref, rtol=1e-4, atol=1e-5)


def test_srht_equals_its_definition():
    P, k = 100, 20
    p = projection.make("srht", k, seed=4).bind(P)
    Pp = 128
    R = p.matrix().double()  # (P, k)
    # R = √(P'/k) · (S H D)ᵀ restricted to the first P rows, with H normalised: columns are ±1/√k
    assert torch.allclose(R.abs(), torch.full_like(R, 1 / math.sqrt(k)))
    H = torch.from_numpy(scipy.linalg.hadamard(Pp).astype(np.float64))
    signs, idx = p._srht_state()
    ref = (math.sqrt(Pp / k) * (torch.diag(signs.double()) @ H / math.sqrt(Pp))[:, idx])[:P]
    torch.testing.assert_close(R, ref, rtol=1e-6, atol=1e-7)
    assert len(set(idx.tolist())) == k  # k distinct coordinates


def test_orthonormal_columns():
    p = projection.make("orthonormal", 16, seed=0).bind(200)
    R = p.matrix().double()
    torch.testing.assert_close(R.T @ R, (200 / 16) * torch.eye(16, dtype=torch.float64), rtol=1e-5, atol=1e-4)


def _lowbias32(x):
    """Pure-Python reference of the 32-bit mixer (independent of the torch int64 emulation)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@pytest.mark.parametrize("s", [1, 2, 5])
def test_sparse_has_exactly_s_nonzeros_per_coordinate(s):
    k, P = 40, 3000
    R = projection.make("sparse", k, seed=7, s=s).bind(P).matrix()
    nz = R != 0
    assert (nz.sum(1) == s).all()  # exactly s nonzeros in every row (input coordinate)
    torch.testing.assert_close(R[nz].abs(), torch.full_like(R[nz], 1 / math.sqrt(s)))
    for i in range(s):  # one nonzero in each slice of the outputs (Kane–Nelson block construction)
        lo, hi = i * k // s, (i + 1) * k // s
        assert (nz[:, lo:hi].sum(1) == 1).all()
    # signs balanced and positions spread evenly over each slice (loose binomial bounds)
    assert abs(float((R[nz] > 0).float().mean()) - 0.5) < 4 * 0.5 / math.sqrt(P * s)
    counts = nz.sum(0).double()
    expected = P / (k // s) if k % s == 0 else None
    if expected:
        assert float(counts.max()) < expected + 5 * math.sqrt(expected)


def test_sparse_hash_matches_reference_and_is_chunk_invariant():
    from dntk.projection import _hash32

    xs = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1]
    got = _hash32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [_lowbias32(x) for x in xs]
    p = projection.make("sparse", 64, seed=3, s=3).bind([(50, 40), (7,)])
    col, val = p.entries(0, 0, 2000)
    parts = [p.entries(0, a, b) for a, b in ((0, 1), (1, 777), (777, 2000))]
    torch.testing.assert_close(torch.cat([c for c, _ in parts]), col)
    torch.testing.assert_close(torch.cat([v for _, v in parts]), val)
    # tile size is not part of the identity of R
    R1 = projection.make("sparse", 64, seed=3, s=3, tile_rows=33).bind([(50, 40), (7,)]).matrix()
    R2 = p.matrix()
    torch.testing.assert_close(R1, R2)
    assert not torch.equal(R2, projection.make("sparse", 64, seed=4, s=3).bind([(50, 40), (7,)]).matrix())


def _kernel_errors(V, kind, k, seeds):
    K = V.double() @ V.double().T
    out = []
    for s in seeds:
        W = projection.make(kind, k, seed=s).bind(V.shape[1]).project(V).double()
        out.append(float(torch.linalg.norm(W @ W.T - K) / torch.linalg.norm(K)))
    return float(np.mean(out))


def test_sparse_within_gaussian_error_on_planted_heavy_coordinate():
    """One coordinate carries ~90% of every vector's energy (like gradients at initialisation): a projector
    whose entries are zero with high probability loses it; the sparse JL transform keeps every coordinate."""
    g = torch.Generator().manual_seed(0)
    n, P, k = 24, 20000, 128
    V = torch.randn(n, P, generator=g) * 0.007
    V[:, 17] = 3.0 + torch.randn(n, generator=g) * 0.5
    share = float((V[:, 17] ** 2).sum() / (V**2).sum())
    assert share > 0.85
    seeds = range(8)
    e_sparse, e_gauss = _kernel_errors(V, "sparse", k, seeds), _kernel_errors(V, "gaussian", k, seeds)
    assert e_sparse <= 1.5 * e_gauss, (e_sparse, e_gauss)
    # a very sparse projection (density 1/√P, entries ±1/√(kq)) on the same family: errors ~ 1, not ~ 0.1
    q = 1 / math.sqrt(P)
    errs = []
    for s in seeds:
        gg = torch.Generator().manual_seed(100 + s)
        mask = torch.rand(P, k, generator=gg) < q
        R = torch.where(torch.rand(P, k, generator=gg) < 0.5, 1.0, -1.0) * mask / math.sqrt(k * q)
        W = (V @ R).double()
        K = V.double() @ V.double().T
        errs.append(float(torch.linalg.norm(W @ W.T - K) / torch.linalg.norm(K)))
    assert np.mean(errs) > 3 * e_sparse


def _digits(n):
    data = pytest.importorskip("dntk.data")
    X, y = data.as_tensors(data.load("digits", "train"), limit=n, seed=0)
    return X, y


def _network_errors(model, X, k, seeds=(0, 1, 2)):
    from dntk import kernel

    K = kernel.class_kernels(tangent.class_gradients(model, X))
    res = {}
    for kind in ("gaussian", "sparse"):
        res[kind] = np.mean([
            kernel.relative_error(kernel.class_kernels(tangent.class_gradients(model, X, projector=projection.make(kind, k, seed=s))), K)
            for s in seeds])
    return res


def test_sparse_within_gaussian_error_on_network_at_initialisation():
    models = pytest.importorskip("dntk.models")
    X, _ = _digits(48)
    model = models.build("convnet", 10, in_channels=1, seed=0)
    e = _network_errors(model, X, 256)
    assert e["sparse"] <= 1.5 * e["gaussian"], e


def test_sparse_within_gaussian_error_on_trained_network():
    models = pytest.importorskip("dntk.models")
    X, y = _digits(300)
    torch.manual_seed(0)
    model = models.build("convnet", 10, in_channels=1, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):  # a few epochs: gradients lose their concentration on a few coordinates
        for s in range(0, len(X), 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[s : s + 50]), y[s : s + 50]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(X).argmax(1) == y).float().mean() > 0.5  # it did learn
    e = _network_errors(model, X[:48], 256)
    assert e["sparse"] <= 1.5 * e["gaussian"], e


def test_error_curve_matches_direct_computation_and_recommends_k():
    from dntk import kernel

    model, x = small_cnn().eval(), X(6)
    curve = projection.error_curve(model, x, kinds=["sparse", "gaussian"], dims=(8, 32), seeds=(0, 1))
    assert curve.errors["sparse"].shape == (2, 2) and curve.seconds["gaussian"].shape == (2,)
    K = kernel.class_kernels(tangent.class_gradients(model, x, method="exact"))
    Kp = kernel.class_kernels(tangent.class_gradients(model, x, projector=projection.make("gaussian", 32, seed=1)))
    assert curve.errors["gaussian"][1, 1] == pytest.approx(kernel.relative_error(Kp, K), rel=1e-6)
    e8, e32 = curve.mean("sparse")
    slope = math.log(e32 / e8) / math.log(4)  # two points: the fitted power law passes through both
    assert curve.fit("sparse")[1] == pytest.approx(slope)
    assert projection.recommend_dim(curve, 0.05, "sparse") == math.ceil(32 * (0.05 / e32) ** (1 / slope))
    with pytest.raises(ValueError, match="no measurements"):
        projection.recommend_dim(curve, 0.05, "srht")
    with pytest.raises(ValueError, match="target"):
        projection.recommend_dim(curve, 1.5, "sparse")
    with pytest.raises(ValueError, match="unknown projector kind"):
        projection.error_curve(model, x, kinds=["fft"])


def test_out_memmap_with_projector(tmp_path):
    model, x = small_cnn().eval(), X(6)
    proj = projection.make("gaussian", 16, seed=0)
    ref = tangent.class_gradients(model, x, projector=proj)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(6, 3, 16))
    tangent.class_gradients(model, x, projector=proj, out=mm, batch_size=4)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy").astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown projector kind"):
        projection.make("fourier", 8)
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            projection.make("gaussian", k)
    with pytest.raises(ValueError, match="k <= P"):
        projection.make("orthonormal", 50).bind(20)
    with pytest.raises(ValueError, match="max_entries"):
        projection.make("orthonormal", 64, max_entries=1000).bind(100)
    with pytest.raises(ValueError, match="unknown option"):
        projection.make("gaussian", 8, density=0.1)
    with pytest.raises(ValueError, match="k_out"):
        projection.make("kronecker", 12, k_out=5)
    p = projection.make("gaussian", 8)
    tangent.class_gradients(small_cnn().eval(), X(2), projector=p)
    with pytest.raises(ValueError, match="tied to one model size"):
        tangent.class_gradients(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), X(2), projector=p)
    with pytest.raises(ValueError, match="width"):
        p.project(torch.zeros(2, 7))
    with pytest.raises(TypeError, match="dntk.projection.make"):
        tangent.class_gradients(small_cnn().eval(), X(2), projector="gaussian")
    with pytest.raises(ValueError, match="out has shape"):
        tangent.class_gradients(small_cnn().eval(), X(2), projector=projection.make("gaussian", 8), out=torch.zeros(2, 3, 9))
    with pytest.raises(ValueError, match="s <= k"):
        projection.make("sparse", 4, s=5)
    with pytest.raises(ValueError, match="s must be"):
        projection.make("sparse", 4, s=0)
    with pytest.raises(ValueError, match="unknown option"):
        projection.make("sparse", 8, density=0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_projecting_nan_rows_is_an_error(kind):
    x = torch.randn(4, 64)
    x[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\) \(first: \[2\]\)"):
        projection.make(kind, 8, seed=0).project(x)
    x[2, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        projection.make(kind, 8, seed=0).project(x)
