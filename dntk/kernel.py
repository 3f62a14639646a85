"""Class kernels, cross kernels and the full empirical NTK from tangent features; NTK-vector products.

Appendix §0: ``K_c = G_c G_cᵀ`` (class kernel), ``K_c(X*, X) = G_c(X*) G_cᵀ`` (cross kernel) and the
full empirical NTK ``Θ(x, x') = J(x) J(x')ᵀ ∈ R^{C×C}`` (appendix eq. (eq-empirical-ntk)), whose
diagonal blocks are the class kernels.
Kernels are accumulated in float64 whatever the feature dtype.

Two exact recipes for Θ:
1. from stored Jacobians: :func:`empirical_ntk` on ``dntk.tangent.class_gradients(model, X)``;
2. matrix-free: :func:`ntk_vector_product` computes ``Θ v`` as a VJP (``u = Σ_j J(x_j)ᵀ v_j``) followed
   by a JVP (``J(x_i) u``) without ever forming ``J`` — ``O(P)`` memory instead of ``O(N C P)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import (
    BatchedInputs,
    call_model,
    check_model,
    check_model_finite,
    class_features,
    eval_mode,
    model_dtype,
    on_device,
    split_parameters,
)

__all__ = [
    "class_kernels",
    "empirical_ntk",
    "ntk_matrix",
    "ntk_vector_product",
    "class_kernel_vector_product",
    "relative_error",
]

_BLOCK_ELEMS = 1 << 24  # float64 elements per working block (128 MiB)


def _finite(t, name):
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or inf ({int((~torch.isfinite(t)).sum())} entries in this block); "
                         "recompute them from a finite model and inputs.")
    return t


def _pair(features, features_b):
    A = class_features(features, finite=False)      # finiteness is checked block by block, in the same pass
    B = A if features_b is None else class_features(features_b, "features_b", finite=False)
    if B.shape[1:] != A.shape[1:]:
        raise ValueError(
            f"features {tuple(A.shape)} and features_b {tuple(B.shape)} must agree in C and width (N, C, w)."
        )
    return A, B


def class_kernels(features, features_b=None) -> torch.Tensor:
    """Class kernels ``K_c = G_c G_cᵀ`` (appendix §0), shape ``(C, N, M)``, float64.

    ``features`` ``(N, C, w)`` (tangent features, projected or not); with ``features_b`` ``(M, C, w)`` the
    cross kernels ``K_c(X, X_b) = G_c(X) G_c(X_b)ᵀ``. Accumulated in float64 over blocks of the width.
    Raises ``ValueError`` if the features hold NaN or inf (checked block by block, in the same pass).
    """
    A, B = _pair(features, features_b)
    N, C, w = A.shape
    M = B.shape[0]
    K = torch.zeros(C, N, M, dtype=torch.float64)
    step = max(1, _BLOCK_ELEMS // max(1, (N + M) * C))
    for s in range(0, w, step):
        a = _finite(A[:, :, s : s + step].to(torch.float64), "features").permute(1, 0, 2)  # (C, N, b)
        b = a if features_b is None else _finite(B[:, :, s : s + step].to(torch.float64), "features_b").permute(1, 0, 2)
        K += torch.bmm(a, b.transpose(1, 2)).cpu()
    return K


def empirical_ntk(features, features_b=None) -> torch.Tensor:
    """Full empirical NTK ``Θ[i, j] = J(x_i) J(x_j)ᵀ`` (appendix eq. (eq-empirical-ntk)), shape ``(N, M, C, C)``, float64.

    ``Θ[:, :, c, c]`` is the class kernel ``K_c``. Memory ``O(N M C²)``: for small sizes only.
    Raises ``ValueError`` if the features hold NaN or inf.
    """
    A, B = _pair(features, features_b)
    N, C, w = A.shape
    M = B.shape[0]
    T = torch.zeros(N * C, M * C, dtype=torch.float64)
    step = max(1, _BLOCK_ELEMS // max(1, (N + M) * C))
    for s in range(0, w, step):
        a = _finite(A[:, :, s : s + step].to(torch.float64), "features").reshape(N * C, -1)
        b = a if features_b is None else _finite(B[:, :, s : s + step].to(torch.float64), "features_b").reshape(M * C, -1)
        T += (a @ b.T).cpu()
    return T.reshape(N, C, M, C).permute(0, 2, 1, 3).contiguous()


def ntk_matrix(theta: torch.Tensor) -> torch.Tensor:
    """Flatten ``Θ`` ``(N, M, C, C)`` to the ``(N·C, M·C)`` matrix with row index ``i·C + c``."""
    if not isinstance(theta, torch.Tensor) or theta.dim() != 4 or theta.shape[2] != theta.shape[3]:
        raise ValueError("theta must be a tensor of shape (N, M, C, C) from empirical_ntk.")
    N, M, C, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(N * C, M * C)


def relative_error(approx, exact) -> float:
    """Relative Frobenius error ``‖approx − exact‖_F / ‖exact‖_F`` over all entries (e.g. all class kernels).

    Raises ``ValueError`` for different shapes, NaN/inf entries, or an all-zero ``exact`` (the ratio
    is undefined: compare absolute errors instead).
    """
    a = torch.as_tensor(approx, dtype=torch.float64)
    e = torch.as_tensor(exact, dtype=torch.float64)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}.")
    _finite(a, "approx")
    _finite(e, "exact")
    den = torch.linalg.vector_norm(e)
    if float(den) == 0.0:
        raise ValueError("exact is all zeros, so the relative error is undefined; compare absolute errors "
                         "(torch.linalg.vector_norm(approx - exact)) instead.")
    return float(torch.linalg.vector_norm(a - e) / den)


# ----------------------------------------------------------------------------------------------------
# matrix-free recipe: Θ v by VJP then JVP
# ----------------------------------------------------------------------------------------------------
def _functional(model):
    from torch.func import functional_call

    params, rest = split_parameters(model)

    def f(p, x):
        return functional_call(model, {**p, **rest}, (x,))

    return f, params


def _vjp_sum(f, params, src, v, dev, batch_size):
    """``u = Σ_j J(x_j)ᵀ v_j`` as a dict of parameter-shaped tensors (one backward per batch)."""
    from torch.func import vjp

    u = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in range(0, src.n, batch_size):
        e = min(src.n, s + batch_size)
        x = src.get(s, e, dev)
        _, pull = vjp(lambda p, x=x: f(p, x), params)
        (g,) = pull(v[s:e].to(dev, x.dtype))
        for n in u:
            u[n] += g[n]
    return u


def _jvp_apply(f, params, src, u, dev, batch_size):
    """``J(x_i) u`` for every input, shape ``(N, C)``."""
    import warnings

    from torch.func import jvp

    outs = []
    for s in range(0, src.n, batch_size):
        x = src.get(s, min(src.n, s + batch_size), dev)
        with warnings.catch_warnings():  # torch's forward-mode BatchNorm rule triggers a jit deprecation notice
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            _, t = jvp(lambda p, x=x: f(p, x), (params,), (u,))
        outs.append(t.detach().cpu())
    return torch.cat(outs)


def _check_v(v, M, C):
    v = torch.as_tensor(v)
    if v.shape != (M, C):
        raise ValueError(f"v must have shape (M, C) = {(M, C)} (one value per sample of inputs_b and class), got {tuple(v.shape)}.")
    if not torch.isfinite(v).all():
        raise ValueError("v contains NaN or inf.")
    return v


def _product_operands(model, inputs, inputs_b, v, dev):
    """Batched ``X`` and ``X_b``, the checked ``(M, C)`` vector ``v`` and the functional form of ``model``."""
    check_model_finite(model)
    dtype = model_dtype(model)
    src = BatchedInputs(inputs, dtype)
    src_b = src if inputs_b is None else BatchedInputs(inputs_b, dtype)
    C = call_model(model, src.get(0, 1, dev)).shape[1]
    f, params = _functional(model)
    return src, src_b, _check_v(v, src_b.n, C), f, params


def ntk_vector_product(model: nn.Module, inputs, v, inputs_b=None, batch_size: int = 64, device=None) -> torch.Tensor:
    """Matrix-free ``(Θ(X, X_b) v)_i = Σ_j Θ(x_i, x_j) v_j`` (appendix eq. (eq-empirical-ntk)), shape ``(N, C)``, without forming ``J``.

    ``v`` has shape ``(M, C)`` for ``M = len(inputs_b)`` (``inputs_b`` defaults to ``inputs``). One VJP pass
    over ``X_b`` gives ``u = Σ_j J(x_j)ᵀ v_j ∈ R^P``; one JVP pass over ``X`` gives ``J(x_i) u``. Cost
    ``O((N + M)·F)``-ish per product and ``O(P)`` memory, against ``O(N M C² P)`` for forming Θ.
    """
    check_model(model)
    with eval_mode(model), on_device(model, device) as dev:
        src, src_b, v, f, params = _product_operands(model, inputs, inputs_b, v, dev)
        u = _vjp_sum(f, params, src_b, v, dev, batch_size)
        return _jvp_apply(f, params, src, u, dev, batch_size).to(torch.float64)


def class_kernel_vector_product(model: nn.Module, inputs, v, inputs_b=None, batch_size: int = 64, device=None) -> torch.Tensor:
    """Matrix-free class-kernel products: column ``c`` of the result is ``K_c(X, X_b) v[:, c]`` (appendix §0).

    ``v`` ``(M, C)``; result ``(N, C)``. One VJP/JVP pair per class (the class kernel is the ``(c, c)``
    block of Θ, so the other ``C − 1`` output columns of each JVP are discarded).
    """
    check_model(model)
    with eval_mode(model), on_device(model, device) as dev:
        src, src_b, v, f, params = _product_operands(model, inputs, inputs_b, v, dev)
        C = v.shape[1]
        cols = []
        for c in range(C):
            vc = torch.zeros_like(v)
            vc[:, c] = v[:, c]
            u = _vjp_sum(f, params, src_b, vc, dev, batch_size)
            cols.append(_jvp_apply(f, params, src, u, dev, batch_size)[:, c])
        return torch.stack(cols, dim=1).to(torch.float64)
