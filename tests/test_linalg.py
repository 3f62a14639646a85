"""dntk.linalg.gram_eig against numpy's eigh and SVD of the explicit matrices."""
import numpy as np
import pytest
import torch

from dntk.linalg import gram, gram_eig, roundoff_cutoff, sign_normalise


def _features(n, k, seed=0, rank=None):
    rng = np.random.default_rng(seed)
    if rank is None:
        G = rng.normal(size=(n, k)) @ np.diag(np.logspace(0, -2, k))
    else:
        G = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, k))
    return torch.from_numpy(G)


def _align(U, R):
    """U with each column's sign matched to R (eigenvectors are defined up to sign)."""
    return U * np.sign(np.sum(U * R, axis=0))


@pytest.mark.parametrize("n,k", [(12, 30), (40, 9), (15, 15)])
@pytest.mark.parametrize("side", ["auto", "left", "right"])
def test_against_numpy_svd_and_eigh(n, k, side):
    G = _features(n, k, seed=n * k)
    Gn = G.numpy()
    e = gram_eig(G, side=side)
    q = min(n, k)
    assert e.side == (("left" if n <= k else "right") if side == "auto" else side)
    s_ref = np.linalg.svd(Gn, compute_uv=False)
    np.testing.assert_allclose(e.eigenvalues.numpy(), s_ref ** 2, rtol=1e-9, atol=1e-13 * s_ref[0] ** 2)
    assert e.eigenvalues.shape == (q,) and e.rank == q == np.linalg.matrix_rank(Gn)
    # eigenvectors of K = G Gᵀ from numpy's eigh of the explicit n×n kernel
    lam, U_ref = np.linalg.eigh(Gn @ Gn.T)
    U_ref = U_ref[:, ::-1][:, :q]
    U = e.left_vectors().numpy()
    assert U.shape == (n, q)
    np.testing.assert_allclose(_align(U, U_ref), U_ref, atol=1e-7)
    np.testing.assert_allclose(U.T @ U, np.eye(q), atol=1e-9)
    # K = B Bᵀ on both sides
    B = e.factor().numpy()
    np.testing.assert_allclose(B @ B.T, Gn @ Gn.T, atol=1e-10 * s_ref[0] ** 2)
    # the basis is the eigenvectors of the Gram matrix actually decomposed
    A = Gn @ Gn.T if e.side == "left" else Gn.T @ Gn
    W = e.basis.numpy()
    np.testing.assert_allclose(A @ W, W * e.eigenvalues.numpy(), atol=1e-10 * s_ref[0] ** 2)


@pytest.mark.parametrize("n,k", [(30, 20), (20, 30)])
def test_round_off_rule_on_rank_deficient_features(n, k):
    G = _features(n, k, seed=3, rank=5)
    for side in ("left", "right"):
        e = gram_eig(G, side=side)
        assert e.rank == 5 == np.linalg.matrix_rank(G.numpy())
        assert torch.all(e.eigenvalues[5:] == 0) and torch.all(e.eigenvalues[:5] > roundoff_cutoff(
            float(e.eigenvalues[0]), n, k))
        s_ref = np.linalg.svd(G.numpy(), compute_uv=False)[:5]
        np.testing.assert_allclose(e.eigenvalues[:5].numpy(), s_ref ** 2, rtol=1e-9)
    right = gram_eig(G, side="right")
    assert right.left_vectors().shape == (n, 5)
    with pytest.raises(ValueError, match="round-off"):
        right.left_vectors(6)
    assert gram_eig(G, side="left").left_vectors().shape == (n, min(n, k))


def test_eigenvalues_only_and_precomputed_gram():
    G = _features(50, 8, seed=5)
    full = gram_eig(G)
    vals = gram_eig(G, vectors=False)
    assert vals.basis is None
    np.testing.assert_allclose(vals.eigenvalues.numpy(), full.eigenvalues.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="vectors=False"):
        vals.left_vectors(2)
    pre = gram_eig(G, gram_matrix=torch.from_numpy(G.numpy().T @ G.numpy()))
    np.testing.assert_allclose(pre.eigenvalues.numpy(), full.eigenvalues.numpy(), rtol=1e-12)


def test_float32_and_numpy_inputs_are_decomposed_in_float64():
    G = _features(10, 25, seed=7)
    e32 = gram_eig(G.float())
    e_np = gram_eig(G.numpy())
    assert e32.eigenvalues.dtype == torch.float64 and e_np.eigenvalues.dtype == torch.float64
    ref = np.linalg.svd(G.float().double().numpy(), compute_uv=False) ** 2
    np.testing.assert_allclose(e32.eigenvalues.numpy(), ref, rtol=1e-9)


def test_gram_is_exactly_symmetric_and_equals_numpy():
    G = _features(37, 11, seed=2)
    A = gram(G)
    np.testing.assert_allclose(A.numpy(), G.numpy().T @ G.numpy(), rtol=1e-12, atol=1e-13)
    assert torch.equal(A, A.T)
    with pytest.raises(TypeError, match="float64"):
        gram(G.float())


def test_sign_normalise():
    U = torch.tensor([[0.1, -0.9], [-0.8, 0.2], [0.3, 0.1]], dtype=torch.float64)
    S = sign_normalise(U)
    np.testing.assert_array_equal(S.numpy(), np.array([[-0.1, 0.9], [0.8, -0.2], [-0.3, -0.1]]))
    assert sign_normalise(torch.zeros(3, 0)).shape == (3, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="side"):
        gram_eig(torch.randn(3, 4), side="middle")
    with pytest.raises(ValueError, match="shape"):
        gram_eig(torch.randn(3, 4, 2))
    with pytest.raises(ValueError, match="shape"):
        gram_eig(torch.zeros(0, 4))


def test_gram_matrix_eig_equals_gram_eig_on_the_right_side():
    from dntk.linalg import gram_matrix_eig
    for n, k, rank in ((50, 8, None), (6, 10, None), (40, 12, 3)):
        G = _features(n, k, seed=n + k, rank=rank)
        ref = gram_eig(G, side="right")
        e = gram_matrix_eig(torch.from_numpy(G.numpy().T @ G.numpy()), n)
        assert e.rank == ref.rank == np.linalg.matrix_rank(G.numpy()) and e.G is None
        np.testing.assert_allclose(e.eigenvalues.numpy(), ref.eigenvalues.numpy(), rtol=1e-10,
                                   atol=1e-13 * float(ref.eigenvalues[0]))
        V = e.basis[:, :e.rank].numpy()
        A = G.numpy().T @ G.numpy()
        np.testing.assert_allclose(A @ V, V * e.eigenvalues[:e.rank].numpy(), atol=1e-10 * float(e.eigenvalues[0]))
        with pytest.raises(ValueError, match="need G"):
            e.left_vectors(1)
    with pytest.raises(ValueError, match="square"):
        gram_matrix_eig(torch.zeros(3, 4), 5)
