"""dntk.kernel: class/cross kernels and the full NTK against direct products; the two exact NTK recipes agree."""
import numpy as np
import pytest
import torch
from torch import nn

from dntk import kernel, tangent


def feats(N, C, w, seed):
    return torch.randn(N, C, w, generator=torch.Generator().manual_seed(seed))


def test_class_and_cross_kernels_equal_direct_products():
    A, B = feats(6, 3, 11, 0), feats(4, 3, 11, 1)
    K = kernel.class_kernels(A)
    assert K.shape == (3, 6, 6) and K.dtype == torch.float64
    for c in range(3):
        a, b = A[:, c].double(), B[:, c].double()
        torch.testing.assert_close(K[c], a @ a.T)
        torch.testing.assert_close(kernel.class_kernels(A, B)[c], a @ b.T)
    # numpy input and blocking over the width
    torch.testing.assert_close(kernel.class_kernels(A.numpy(), B.numpy()), kernel.class_kernels(A, B))
    old = kernel._BLOCK_ELEMS
    kernel._BLOCK_ELEMS = 50  # forces several width blocks
    try:
        torch.testing.assert_close(kernel.class_kernels(A, B), torch.einsum("ncw,mcw->cnm", A.double(), B.double()))
    finally:
        kernel._BLOCK_ELEMS = old


def test_empirical_ntk_blocks():
    A, B = feats(5, 3, 8, 2), feats(4, 3, 8, 3)
    T = kernel.empirical_ntk(A, B)
    assert T.shape == (5, 4, 3, 3)
    ref = np.einsum("icw,jdw->ijcd", A.double().numpy(), B.double().numpy())
    np.testing.assert_allclose(T.numpy(), ref, rtol=1e-12, atol=1e-12)
    K = kernel.class_kernels(A, B)
    for c in range(3):
        torch.testing.assert_close(T[:, :, c, c], K[c])
    M = kernel.ntk_matrix(kernel.empirical_ntk(A))
    assert M.shape == (15, 15)
    J = A.double().reshape(15, 8)  # row i*C + c
    torch.testing.assert_close(M, J @ J.T)


def test_relative_error():
    a = torch.tensor([3.0, 4.0])
    assert kernel.relative_error(a * 1.1, a) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        kernel.relative_error(a, torch.ones(3))


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.3, 0.3)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.double()


def test_ntk_vector_product_equals_stored_jacobian_recipe():
    model = net()
    g = torch.Generator().manual_seed(0)
    X, Xb = torch.rand(5, 1, 6, 6, generator=g, dtype=torch.float64), torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64)
    v = torch.randn(3, 4, generator=g, dtype=torch.float64)
    Ja, Jb = tangent.class_gradients(model, X, method="exact"), tangent.class_gradients(model, Xb, method="exact")
    T = kernel.empirical_ntk(Ja, Jb)  # (5, 3, 4, 4)
    ref = torch.einsum("ijcd,jd->ic", T, v)
    torch.testing.assert_close(kernel.ntk_vector_product(model, X, v, Xb, batch_size=2), ref)
    K = kernel.class_kernels(Ja, Jb)
    ref_c = torch.einsum("cij,jc->ic", K, v)
    torch.testing.assert_close(kernel.class_kernel_vector_product(model, X, v, Xb), ref_c)
    # same-set product
    v5 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        kernel.ntk_vector_product(model, X, v5), torch.einsum("ijcd,jd->ic", kernel.empirical_ntk(Ja), v5)
    )


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, k\)"):
        kernel.class_kernels(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="agree"):
        kernel.class_kernels(torch.zeros(3, 2, 4), torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match=r"\(N, C, k\)"):
        kernel.class_kernels([[1.0]])
    with pytest.raises(TypeError, match="real"):
        kernel.class_kernels(torch.zeros(3, 2, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="shape"):
        kernel.ntk_vector_product(net(), torch.rand(2, 1, 6, 6, dtype=torch.float64), torch.zeros(3, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_refused(bad):
    A, B = feats(4, 2, 6, 0), feats(3, 2, 6, 1)
    A[1, 0, 3] = bad
    for call in (lambda: kernel.class_kernels(A), lambda: kernel.empirical_ntk(A),
                 lambda: kernel.class_kernels(B, A)):
        with pytest.raises(ValueError, match="NaN or inf"):
            call()
    with pytest.raises(ValueError, match="features_b contain NaN or inf"):
        kernel.class_kernels(B, A)
    with pytest.raises(ValueError, match="NaN or inf"):
        kernel.class_kernels(A.numpy())


def test_relative_error_against_zeros_or_non_finite_is_an_error():
    a = torch.tensor([3.0, 4.0])
    with pytest.raises(ValueError, match="all zeros"):
        kernel.relative_error(a, torch.zeros(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        kernel.relative_error(torch.tensor([float("nan"), 1.0]), a)
    assert kernel.relative_error(torch.zeros(2), a) == pytest.approx(1.0)
