"""Section 3.3 of the paper as numerical checks (appendix §3): one function per statement, each returning
both sides so the caller (tests, chapter 04) can see how well it holds.

Conventions. ``P`` is the flat trainable-parameter axis in ``model.named_parameters()`` order (the same as
:func:`dntk.tangent.class_gradients`). A parameter-space projector ``proj`` is either an orthonormal basis
``Q (P, d)`` with ``d < P`` (``Π = Q Qᵀ``, never formed) or a full ``(P, P)`` matrix used as given (for small
``P`` and for planted violations). ``Π`` acts on column vectors, so the rows of ``G`` map to ``G Πᵀ``
(``= G Π`` for the symmetric projectors of the paper). All linear algebra in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    check_finite,
    check_model_finite,
    eval_mode,
    real_tensor,
    split_parameters,
    trainable_parameters,
)
from .linalg import gram_eig

__all__ = [
    "Check", "basis", "chain_rule", "loss_gradients", "smoothness", "one_step_regret", "upper_model",
    "pca_residual", "nystrom", "kernel_fidelity", "energy_gap", "principal_gradient",
]

_TINY = float(np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class Check:
    """Both sides of one identity (``relation="="``) or inequality (``"<="``: ``lhs ≤ rhs``).

    ``error()`` is ``max|lhs − rhs|`` (for ``=``) or ``max(lhs − rhs, 0)`` (for ``≤``) divided by ``scale``
    (default ``max(|lhs|, |rhs|)``); ``holds(rtol)`` is ``error() ≤ rtol``. ``extra`` keeps by-products.
    """
    statement: str
    lhs: torch.Tensor
    rhs: torch.Tensor
    relation: str = "="
    scale: float | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def error(self) -> float:
        """Relative violation: ``max|lhs − rhs|`` (``=``) or ``max(lhs − rhs, 0)`` (``<=``) over ``scale``."""
        lhs, rhs = torch.as_tensor(self.lhs, dtype=torch.float64), torch.as_tensor(self.rhs, dtype=torch.float64)
        diff = (lhs - rhs).abs() if self.relation == "=" else (lhs - rhs).clamp(min=0)
        scale = self.scale if self.scale is not None else max(lhs.abs().max().item(), rhs.abs().max().item())
        return diff.max().item() / max(scale, _TINY)

    def holds(self, rtol: float = 1e-8) -> bool:
        """Whether :meth:`error` is at most ``rtol``."""
        return self.error() <= rtol

    def __repr__(self) -> str:
        def fmt(x):
            x = torch.as_tensor(x)
            return f"{x.item():.6g}" if x.numel() == 1 else f"<{tuple(x.shape)}>"
        return f"Check({self.statement!r}: {fmt(self.lhs)} {self.relation} {fmt(self.rhs)}, rel. error {self.error():.2e})"


# ----------------------------------------------------------------------------- helpers
def _f64(x, name: str, ndim: int | tuple | None = None) -> torch.Tensor:
    x = real_tensor(x, name)
    if ndim is not None and x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}.")
    x = x.to("cpu", torch.float64)
    check_finite(x, name)
    return x


def _svd(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``A = U diag(s) Vᵀ`` of ``A (n, P)`` returning ``(U, s, V)``; for wide ``A`` through the
    Householder QR of ``Aᵀ`` (``Aᵀ = QR``, ``Rᵀ = U S W ᵀ``, ``V = Q W``), much faster than LAPACK's wide SVD."""
    n, P = A.shape
    if n <= P:
        Q, R = torch.linalg.qr(A.T)
        U, s, Wh = torch.linalg.svd(R.T)
        return U, s, Q @ Wh.T
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return U, s, Vh.T


def _sq_norms(A: torch.Tensor) -> torch.Tensor:
    """Squared singular values of ``A (n, P)``, descending, from the smaller Gram matrix
    (:func:`dntk.linalg.gram_eig`, its round-off rule)."""
    return gram_eig(A, vectors=False).eigenvalues


def basis(rows, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis of the row space of ``rows`` (appendix §3 eq. (3)).

    ``Π_S = Q Qᵀ = G_sᵀ (G_s G_sᵀ)⁺ G_s``.

    Parameters
    ----------
    rows : array ``(m, P)``
        E.g. the gradients ``G_s`` of a distilled set.
    rtol : float
        Singular values ``≤ rtol·σ₁`` are dropped.

    Returns
    -------
    torch.Tensor
        ``Q (P, d)`` float64 with orthonormal columns.
    """
    A = _f64(rows, "rows", ndim=2)
    if A.numel() == 0:
        raise ValueError("rows is empty, so it spans no subspace.")
    _, s, V = _svd(A)
    if s[0] <= 0:
        raise ValueError("rows is all zero, so it spans no subspace.")
    return V[:, s > rtol * s[0]].contiguous()


def _proj_parts(proj, P: int):
    """Returns (apply(X): rows X (n,P) -> rows projected X Πᵀ, rank d, is_basis)."""
    M = _f64(proj, "proj", ndim=2)
    if M.shape[0] != P:
        raise ValueError(f"proj must have P = {P} rows (a basis (P, d) or a matrix (P, P)), got {tuple(M.shape)}.")
    if M.shape[1] < P:
        return (lambda X: (X @ M) @ M.T), M.shape[1]
    if M.shape[1] == P:
        return (lambda X: X @ M.T), int(round(torch.trace(M).item()))
    raise ValueError(f"proj must be a basis (P, d) with d < P or a square (P, P) matrix, got {tuple(M.shape)}.")


def _trainable(model):
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters.")
    return named


def _loss_fn(loss) -> Callable:
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda f, t: F.cross_entropy(f, t)
    if loss == "mse":
        return lambda f, t: 0.5 * (f - t).pow(2).sum(-1).mean()
    raise ValueError(f"loss must be 'ce', 'mse' or a callable (logits, targets) -> mean loss, got {loss!r}.")


def _inputs(model, X, targets):
    check_model_finite(model)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    X = torch.as_tensor(X).to(device=device, dtype=dtype)
    t = torch.as_tensor(targets).to(device)
    if t.is_floating_point():
        t = t.to(dtype)
    if X.shape[0] != t.shape[0]:
        raise ValueError(f"inputs ({X.shape[0]}) and targets ({t.shape[0]}) differ in length.")
    check_finite(X, "inputs")
    check_finite(t, "targets")
    return X, t


def _loss_and_grad(model, X, targets, loss, create_graph=False):
    fn = _loss_fn(loss)
    named = _trainable(model)
    L = fn(model(X), targets)
    g = torch.autograd.grad(L, [p for _, p in named], create_graph=create_graph)
    return L, g, named


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


# ----------------------------------------------------------------------------- eq 4
def chain_rule(model: nn.Module, inputs, targets, loss="ce", gradients=None) -> Check:
    """Chain rule (appendix §3, eq. (4) / Lemma C.1): ``∇_θ L_s = Σ_j Σ_c a_{j,c} g_c(x̃_j) = G_sᵀ a``.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : array ``(m, ...)``
    targets : array ``(m,)`` labels or ``(m, C)`` soft targets
    loss : {"ce", "mse"} or callable
        ``(logits, targets) -> mean loss``.
    gradients : array ``(m, C, P)``, optional
        Class gradients (default: :func:`dntk.tangent.class_gradients`).

    Returns
    -------
    Check
        lhs: the autograd loss gradient ``(P,)``; rhs: ``G_sᵀ a``; ``extra["a"]``: sensitivities
        ``a = ∂L_s/∂f`` ``(m, C)``.
    """
    with eval_mode(model):
        X, t = _inputs(model, inputs, targets)
        named = _trainable(model)
        logits = model(X)
        fl = logits.detach().requires_grad_(True)
        a = torch.autograd.grad(_loss_fn(loss)(fl, t), fl)[0]
        lhs = _flat(torch.autograd.grad(_loss_fn(loss)(logits, t), [p for _, p in named]))
    if gradients is None:
        from .tangent import class_gradients
        gradients = class_gradients(model, inputs)
    G = _f64(gradients, "gradients", ndim=3)
    if G.shape[:2] != a.shape or G.shape[2] != lhs.numel():
        raise ValueError(f"gradients must have shape {tuple(a.shape) + (lhs.numel(),)}, got {tuple(G.shape)}.")
    a64 = a.detach().to("cpu", torch.float64)
    rhs = torch.einsum("mcp,mc->p", G, a64)
    return Check("eq 4: ∇θ L_s = G_sᵀ a", lhs.detach().to("cpu", torch.float64), rhs, "=", extra={"a": a64})


def loss_gradients(model: nn.Module, inputs, targets, loss="ce", batch_size: int = 64) -> torch.Tensor:
    """Per-example loss gradients ``∇_θ ℓ(f(x_i), t_i)``, the samples ``g`` of appendix §3 Cor 3.5 (``Σ = E[g gᵀ]``).

    Computed with ``torch.func`` ``vmap(grad)`` in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : array ``(n, ...)``
    targets : array ``(n,)`` or ``(n, C)``
    loss : {"ce", "mse"} or callable
    batch_size : int

    Returns
    -------
    torch.Tensor
        ``(n, P)`` float64, ``P`` in ``named_parameters()`` order.
    """
    from torch.func import functional_call, grad, vmap

    fn = _loss_fn(loss)
    with eval_mode(model):
        X, t = _inputs(model, inputs, targets)
        named = _trainable(model)
        params, rest = split_parameters(model)

        def one(p, x, y):
            return fn(functional_call(model, {**p, **rest}, (x[None],)), y[None])

        out = []
        for s in range(0, X.shape[0], batch_size):
            gs = vmap(grad(one), in_dims=(None, 0, 0))(params, X[s:s + batch_size], t[s:s + batch_size])
            out.append(torch.cat([gs[n].reshape(gs[n].shape[0], -1) for n, _ in named], 1))
    return torch.cat(out).to("cpu", torch.float64)


# ----------------------------------------------------------------------------- Thm 3.3
def smoothness(model: nn.Module, inputs, targets, loss="ce", n_iter: int = 50, seed: int = 0,
               tol: float = 1e-6) -> float:
    """Local smoothness constant ``β = max|eig(∇²L(θ))|`` of the mean loss (appendix §3, Thm 3.3).

    Power iteration on Hessian-vector products (double backward). A local estimate: Thm 3.3 needs ``β`` over
    the step's neighbourhood, which the chapter checks with the true loss (:func:`upper_model`).

    Parameters
    ----------
    model, inputs, targets, loss
        As in :func:`loss_gradients`.
    n_iter : int
        Maximum power iterations.
    seed : int
        Seed of the start vector.
    tol : float
        Relative change of the estimate that stops the iteration.

    Returns
    -------
    float
    """
    with eval_mode(model):
        X, t = _inputs(model, inputs, targets)
        _, g, named = _loss_and_grad(model, X, t, loss, create_graph=True)
        params = [p for _, p in named]
        gen = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
        nrm = _flat(v).norm()
        v = [x / nrm for x in v]
        lam = 0.0
        for _ in range(n_iter):
            Hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)
            new = _flat([h.detach() for h in Hv]).double()
            lam_new = float((new @ _flat(v).double()).item())
            nrm = new.norm().item()
            if nrm == 0:
                return 0.0
            v = [h.detach() / nrm for h in Hv]
            if abs(abs(lam_new) - abs(lam)) <= tol * abs(lam_new):
                lam = lam_new
                break
            lam = lam_new
    return abs(lam)


def one_step_regret(g, proj, beta: float, delta=None) -> dict[str, Check]:
    """Thm 3.3 (appendix §3, eqs. (5)–(6)) for the quadratic model ``q(Δ) = L + gᵀΔ + (β/2)‖Δ‖²``.

    With ``Δ* = −Π g / β``: ``"decrease"`` ``q(0) − q(Δ*) = ‖Π g‖²/(2β)``; ``"residual"``
    ``‖Π g‖² = ‖g‖² − ‖(I−Π) g‖²``; with ``delta``: ``"regret"`` ``q(Δ) − q(Δ*) = (β/2)‖Δ − Δ*‖²`` and
    ``"optimal"`` ``q(Δ*) ≤ q(Δ)``. Each holds to round-off for an orthogonal projector and ``Δ ∈ S``; a wrong
    projector or a step outside ``S`` breaks them.

    Parameters
    ----------
    g : array ``(P,)``
        Outer gradient.
    proj : array ``(P, d)`` basis or ``(P, P)`` matrix
        The projector onto ``S``.
    beta : float
        Smoothness constant ``> 0``.
    delta : array ``(P,)``, optional
        A realised step in ``S`` (e.g. ``−η G_sᵀ a``).

    Returns
    -------
    dict of str to Check
    """
    g = _f64(g, "g", ndim=1)
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"beta must be positive (a smoothness constant), got {beta}.")
    apply, _ = _proj_parts(proj, g.numel())

    def q(d):  # q(Δ) − L(θ)
        return g @ d + 0.5 * beta * d @ d

    Pg = apply(g[None])[0]
    d_star = -Pg / beta
    zero = torch.zeros_like(g)
    out = {
        "decrease": Check("eq 6: q(0) − q(Δ*) = ‖Π g‖² / (2β)", q(zero) - q(d_star), Pg @ Pg / (2 * beta),
                          extra={"delta_star": d_star}),
        "residual": Check("eq 6: ‖Π g‖² = ‖g‖² − ‖(I−Π) g‖²", Pg @ Pg, g @ g - (g - Pg) @ (g - Pg)),
    }
    if delta is not None:
        d = _f64(delta, "delta", ndim=1)
        out["regret"] = Check("eq 5: q(Δ) − q(Δ*) = (β/2)‖Δ − Δ*‖²", q(d) - q(d_star),
                              0.5 * beta * (d - d_star) @ (d - d_star), scale=abs(q(d).item()) + abs(q(d_star).item()))
        out["optimal"] = Check("Thm 3.3: q(Δ*) ≤ q(Δ) for Δ ∈ S", q(d_star), q(d), "<=",
                               scale=abs(q(d).item()) + abs(q(d_star).item()))
    return out


def upper_model(model: nn.Module, inputs, targets, delta, beta: float, loss="ce") -> Check:
    """β-smoothness upper model with the true loss (appendix §3, Thm 3.3): ``L(θ + Δ) ≤ q(Δ)``.

    The model is evaluated at ``θ + Δ`` and restored.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : array ``(n, ...)``
    targets : array ``(n,)`` or ``(n, C)``
    delta : array ``(P,)``
        Flat step in ``named_parameters`` order.
    beta : float
    loss : {"ce", "mse"} or callable

    Returns
    -------
    Check
        ``extra``: ``L`` (at θ) and ``g`` ``(P,)``.
    """
    beta = float(beta)
    with eval_mode(model):
        X, t = _inputs(model, inputs, targets)
        L0, g, named = _loss_and_grad(model, X, t, loss)
        g = _flat(g).detach().to("cpu", torch.float64)
        d = _f64(delta, "delta", ndim=1)
        if d.numel() != g.numel():
            raise ValueError(f"delta must have P = {g.numel()} entries, got {d.numel()}.")
        q = L0.item() + (g @ d).item() + 0.5 * beta * (d @ d).item()
        saved = [p.detach().clone() for _, p in named]
        try:
            with torch.no_grad():
                off = 0
                for _, p in named:
                    p.add_(d[off:off + p.numel()].reshape(p.shape).to(p))
                    off += p.numel()
                L1 = _loss_fn(loss)(model(X), t).item()
        finally:
            with torch.no_grad():
                for (_, p), s in zip(named, saved):
                    p.copy_(s)
    return Check("Thm 3.3: L(θ+Δ) ≤ q(Δ)", torch.tensor(L1, dtype=torch.float64),
                 torch.tensor(q, dtype=torch.float64), "<=", extra={"L": L0.item(), "g": g})


# ----------------------------------------------------------------------------- Cor 3.5
def pca_residual(grads, r: int, proj=None) -> dict[str, Check]:
    """Cor 3.5 (appendix §3): the PCA subspace minimises the expected gradient residual.

    Over samples ``g_i`` (rows of ``grads``), ``Σ = (1/n) Σ_i g_i g_iᵀ`` and ``R(Π) = (1/n) Σ_i ‖(I−Π) g_i‖²``.
    Checks ``"pca_minimum"`` ``R(Π_r^{PCA}) = Σ_{i>r} μ_i``; with ``proj``: ``"trace"``
    ``R(Π) = tr Σ − tr(Π Σ)`` and ``"optimal"`` ``R(Π_r^{PCA}) ≤ R(Π)``.

    Parameters
    ----------
    grads : array ``(n, P)``
    r : int
        Rank in ``[1, min(n, P)]``.
    proj : array ``(P, d)`` or ``(P, P)``, optional
        A projector of rank ``≤ r`` to compare.

    Returns
    -------
    dict of str to Check
        ``extra`` of ``"pca_minimum"``: ``mu`` (eigenvalues of Σ, descending), ``basis`` ``(P, r)``.
    """
    A = _f64(grads, "grads", ndim=2)
    n, P = A.shape
    if not (1 <= int(r) <= min(n, P)):
        raise ValueError(f"r must lie in [1, min(n, P)] = [1, {min(n, P)}], got {r}.")
    r = int(r)
    _, s, V = _svd(A)
    mu = s**2 / n
    V = V[:, :r]
    R_pca = ((A - (A @ V) @ V.T).pow(2).sum() / n)
    out = {"pca_minimum": Check("Cor 3.5: min_S E‖(I−Π_S)g‖² = Σ_{i>r} μ_i", R_pca, mu[r:].sum(),
                                scale=mu.sum().item(), extra={"mu": mu, "basis": V})}
    if proj is not None:
        apply, d = _proj_parts(proj, P)
        AP = apply(A)
        R = (A - AP).pow(2).sum() / n
        trS = A.pow(2).sum() / n
        trPS = (A * AP).sum() / n               # tr(Π Σ) = (1/n) Σ_i g_iᵀ Π g_i
        out["trace"] = Check("Cor 3.5: E‖(I−Π)g‖² = tr Σ − tr(ΠΣ)", R, trS - trPS, scale=trS.item())
        out["optimal"] = Check("Cor 3.5: PCA residual ≤ residual of any rank-r subspace", R_pca, R, "<=",
                               scale=trS.item(), extra={"rank": d})
    return out


# ----------------------------------------------------------------------------- eqs 7–10, Prop 3.6
def nystrom(G, G_s, rtol: float = 1e-8) -> Check:
    """Nyström form (appendix §3, eqs. (7)–(9)): ``G Π_S Gᵀ = K_{Xs} K_{ss}⁺ K_{sX}``.

    ``Π_S`` is the projector onto ``row(G_s)``, ``K_{Xs} = G G_sᵀ``.

    Parameters
    ----------
    G : array ``(N, P)``
    G_s : array ``(m, P)``
        One class.
    rtol : float
        Relative cut-off on singular values of ``G_s`` (on eigenvalues of ``K_ss``: ``rtol²``).

    Returns
    -------
    Check
        lhs and rhs ``(N, N)``.
    """
    G = _f64(G, "G", ndim=2)
    Gs = _f64(G_s, "G_s", ndim=2)
    if Gs.shape[1] != G.shape[1]:
        raise ValueError(f"G and G_s must have the same width P, got {G.shape[1]} and {Gs.shape[1]}.")
    Q = basis(Gs, rtol)
    GQ = G @ Q
    lhs = GQ @ GQ.T
    Kxs, Kss = G @ Gs.T, Gs @ Gs.T
    rhs = Kxs @ torch.linalg.pinv(Kss, rtol=rtol**2, hermitian=True) @ Kxs.T
    return Check("eq 9: K_Π = K_Xs K_ss⁺ K_sX", lhs, rhs)


def kernel_fidelity(G, proj) -> dict[str, Check]:
    """Kernel fidelity (appendix §3, eq. (10)) for ``K = G Gᵀ`` and ``K_Π = G Π Gᵀ``.

    Checks ``"psd"`` ``0 ≤ λ_min(K − K_Π)``; ``"trace_norm"`` ``‖K − K_Π‖_* = ‖G(I−Π)‖_F²``; ``"trace"``
    ``tr(K − K_Π) = ‖G(I−Π)‖_F²``; ``"operator"`` ``‖K − K_Π‖₂ ≤ ‖G(I−Π)‖₂²``. A non-orthogonal ``Π``
    (oblique or not idempotent) breaks them.

    Parameters
    ----------
    G : array ``(N, P)``
    proj : array ``(P, d)`` basis or ``(P, P)`` matrix

    Returns
    -------
    dict of str to Check
    """
    G = _f64(G, "G", ndim=2)
    apply, _ = _proj_parts(proj, G.shape[1])
    GP = apply(G)                               # rows Π g_i
    K = G @ G.T
    D = K - G @ GP.T                            # K − K_Π, (K_Π)_ij = g_iᵀ Π g_j
    Rres = G - GP                               # rows (I − Π) g_i
    fro2 = Rres.pow(2).sum()
    s = torch.linalg.svdvals(D)
    scale = _sq_norms(G)[0].item()              # ‖K‖₂
    lam_min = torch.linalg.eigvalsh(0.5 * (D + D.T))[0] if torch.allclose(D, D.T, rtol=0, atol=1e-12 * scale) \
        else torch.tensor(-s[0].item(), dtype=torch.float64)   # not symmetric: not PSD in any sense
    return {
        "psd": Check("eq 10: K − K_Π ⪰ 0", torch.tensor(0.0, dtype=torch.float64), lam_min, "<=", scale=scale),
        "trace_norm": Check("eq 10: ‖K − K_Π‖_* = ‖G(I−Π)‖_F²", s.sum(), fro2, scale=scale),
        "trace": Check("eq 10: tr(K − K_Π) = ‖G(I−Π)‖_F²", torch.trace(D), fro2, scale=scale),
        "operator": Check("eq 10: ‖K − K_Π‖₂ ≤ ‖G(I−Π)‖₂²", s[0], _sq_norms(Rres)[0], "<=", scale=scale),
    }


def energy_gap(G, proj, r: int | None = None) -> dict[str, Check]:
    """Prop 3.6 (appendix §3): ``‖G(I−Π)‖_F² = Σ_{i>r} σ_i² + (Σ_{i≤r} σ_i² − ‖GΠ‖_F²)``, gap ``≥ 0``.

    Parameters
    ----------
    G : array ``(N, P)``
    proj : array ``(P, d)`` basis or ``(P, P)`` matrix
    r : int, optional
        Rank (default ``d`` for a basis, ``round(tr Π)`` for a matrix).

    Returns
    -------
    dict of str to Check
        ``"identity"`` (``extra``: ``tail``, ``gap``) and ``"ky_fan"`` (``0 ≤ gap``).
    """
    G = _f64(G, "G", ndim=2)
    apply, d = _proj_parts(proj, G.shape[1])
    r = d if r is None else int(r)
    s2 = _sq_norms(G)
    if not (0 <= r <= s2.numel()):
        raise ValueError(f"r must lie in [0, {s2.numel()}], got {r}.")
    GP = apply(G)
    lhs = (G - GP).pow(2).sum()
    tail, gap = s2[r:].sum(), s2[:r].sum() - GP.pow(2).sum()
    total = s2.sum().item()
    return {
        "identity": Check("Prop 3.6: ‖G(I−Π)‖_F² = tail + gap", lhs, tail + gap, scale=total,
                          extra={"tail": tail.item(), "gap": gap.item()}),
        "ky_fan": Check("Prop 3.6: gap ≥ 0 (Ky Fan)", torch.tensor(0.0, dtype=torch.float64), gap, "<=", scale=total),
    }


# ----------------------------------------------------------------------------- Remark 4.2
def principal_gradient(G, v=None, lam=None, i: int = 0) -> dict[str, Check]:
    """Remark 4.2 (appendix §4.3): ``Gᵀv`` is a principal direction of feature space.

    For a unit eigenvector ``v`` of ``K = G Gᵀ`` with eigenvalue ``λ``, ``Gᵀv`` has norm ``√λ`` and is an
    eigenvector of ``GᵀG``.

    Parameters
    ----------
    G : array ``(N, k)``
    v : array ``(N,)``, optional
        Default: the ``i``-th eigenvector from dense ``eigh`` of ``K``.
    lam : float, optional
        The eigenvalue ``v`` is claimed to have (required with ``v``).
    i : int
        Which eigenpair when ``v`` is not given (0 = largest).

    Returns
    -------
    dict of str to Check
        ``"norm"`` ``‖Gᵀv‖² = λ`` and ``"eigen"`` ``GᵀG (Gᵀv) = λ Gᵀv``.
    """
    G = _f64(G, "G", ndim=2)
    if v is None:
        w, U = torch.linalg.eigh(G @ G.T)
        v, lam = U[:, -1 - i], w[-1 - i].item()
    v = _f64(v, "v", ndim=1)
    if lam is None:
        raise ValueError("pass lam together with v (the eigenvalue v is claimed to have).")
    if abs(v.norm().item() - 1) > 1e-8:
        raise ValueError(f"v must be a unit vector, got norm {v.norm().item():.6g}.")
    w = G.T @ v
    return {
        "norm": Check("Remark 4.2: ‖Gᵀv‖² = λ", w @ w, torch.tensor(float(lam), dtype=torch.float64)),
        "eigen": Check("Remark 4.2: GᵀG(Gᵀv) = λ Gᵀv", G.T @ (G @ w), float(lam) * w),
    }
