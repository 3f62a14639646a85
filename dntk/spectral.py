"""Spectra, redundancy, spectral clustering and containment of class kernels (appendix §2, §4.3).

Every eigendecomposition has a dense reference and matrix-free twins:

* ``dense`` — form the ``N×N`` kernel and call ``eigh`` (``O(N³)`` time, ``O(N²)`` memory);
* ``matrix_free`` — thin SVD of the ``N×k`` features, ``K = G Gᵀ = U Σ² Uᵀ`` (``O(N k²)``, exact to round-off);
* ``gram`` — ``eigh`` of the ``k×k`` Gram matrix ``GᵀG`` and only the needed ``U_r = G V_r Σ_r⁻¹`` (``O(N k²)``,
  2–4× faster than the SVD for ``N ≫ k``), through :func:`dntk.linalg.gram_eig` and its round-off rule.

No matrix larger than the features is formed on the matrix-free paths; clustering of the class-averaged kernel
likewise works on the stacked ``(N, C·k)`` features (:func:`spectral_clusters`). Dense and matrix-free paths agree
to round-off (tests check it). Kernels and eigenproblems run in float64; ``benchmarks/spectral_scale.py`` measures
both paths up to ``N = 100 000``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._common import check_finite, real_tensor
from .linalg import gram_eig, roundoff_cutoff

log = logging.getLogger("dntk")

__all__ = [
    "eig_from_kernel", "eig_from_features", "truncation_rank", "effective_rank", "condition_number",
    "spectrum_stats", "data_redundancy", "parameter_redundancy", "partial_sum_distortion",
    "jl_rank_bracket", "mean_kernel", "spectral_clusters", "Containment", "containment",
]

_NEG_RTOL = 1e-6          # eigenvalues below -_NEG_RTOL * max|λ| mean "not PSD", not round-off
_DENSE_CLUSTER_MAX_N = 5000  # spectral_clusters(method="auto") switches to matrix-free above this N


# ----------------------------------------------------------------------------- input checks
def _tensor(x, name: str, ndim: int | Sequence[int] | None = None, dtype=torch.float64) -> torch.Tensor:
    x = real_tensor(x, name)
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}.")
    x = x.to(device="cpu", dtype=dtype) if dtype is not None else x.cpu()
    check_finite(x, name)
    return x


def _check_tau(tau) -> float:
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise TypeError(f"tau must be a number in (0, 1], got {tau!r}.") from None
    if not (0.0 < tau <= 1.0):
        raise ValueError(f"tau must lie in (0, 1] (an energy fraction), got {tau}.")
    return tau


def _check_kernel(K, name: str = "K") -> torch.Tensor:
    low = getattr(K, "dtype", None) in (torch.float32, torch.float16, torch.bfloat16, np.float32, np.float16)
    K = _tensor(K, name, ndim=2)
    n = K.shape[0]
    if K.shape[1] != n:
        raise ValueError(f"{name} must be square (N, N), got shape {tuple(K.shape)}; "
                         "pass features (N, C, k) instead if that is what you have.")
    asym = (K - K.T).abs().max().item()
    if asym > (1e-4 if low else 1e-10) * max(K.abs().max().item(), np.finfo(float).tiny):
        raise ValueError(f"{name} is not symmetric (max |K - Kᵀ| = {asym:.3g}); a kernel matrix must be symmetric.")
    return 0.5 * (K + K.T)


def _check_eigenvalues(ev, name: str = "eigenvalues") -> torch.Tensor:
    ev = _tensor(ev, name, ndim=1)
    if ev.numel() == 0:
        raise ValueError(f"{name} is empty.")
    top = ev.abs().max().item()
    if ev.min().item() < -_NEG_RTOL * top:
        raise ValueError(f"{name} has a negative value {ev.min().item():.3g} beyond round-off "
                         f"(largest |λ| = {top:.3g}); the kernel is not positive semi-definite.")
    return torch.sort(ev.clamp(min=0.0), descending=True).values


# ----------------------------------------------------------------------------- eigenpairs
def eig_from_kernel(K) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a PSD kernel, the dense reference (``eigh``, ``O(N³)``; appendix §2).

    Parameters
    ----------
    K : array ``(N, N)``
        Symmetric positive semi-definite kernel.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``eigenvalues (N,)`` non-increasing (round-off negatives clipped to 0) and ``eigenvectors (N, N)``
        (columns), float64.

    Raises
    ------
    ValueError
        If ``K`` is not square, not symmetric, or has a negative eigenvalue beyond round-off.
    """
    K = _check_kernel(K)
    ev, U = torch.linalg.eigh(K)
    ev, U = ev.flip(0), U.flip(1)
    top = ev.abs().max().item()
    if ev[-1].item() < -_NEG_RTOL * top:
        raise ValueError(f"K is not positive semi-definite: smallest eigenvalue {ev[-1].item():.3g} "
                         f"(largest {top:.3g}); a kernel built as G Gᵀ cannot have one.")
    return ev.clamp(min=0.0), U


def eig_from_features(G, method: str = "auto", rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of ``K = G Gᵀ`` from the features, without forming ``K`` when ``N > k`` (appendix §2, §4.3).

    Parameters
    ----------
    G : array ``(N, k)``
        Features of one class.
    method : {"auto", "svd", "gram"}
        ``"svd"``: thin SVD ``G = U Σ Vᵀ`` in float64, ``O(N k min(N,k))``, exact to round-off.
        ``"gram"``: :func:`dntk.linalg.gram_eig`, ``eigh`` of the *smaller* Gram matrix — ``G Gᵀ`` when
        ``N ≤ k`` (that is ``K`` itself), else ``GᵀG`` (``k×k``) with ``U = G V Σ⁻¹`` (about 2× faster than
        the SVD for ``N ≫ k``; those eigenvectors are accurate only where ``λ ≫ ε·λ₁``, so ``rank`` then
        defaults to the numerical rank, eigenvalues above ``max(N, k)·ε·λ₁``).
        ``"auto"``: ``"gram"`` when ``N ≤ k``, else ``"svd"`` — never a matrix larger than ``G``.
    rank : int, optional
        Keep only the top ``rank`` eigenpairs.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``eigenvalues (r,)`` non-increasing and ``eigenvectors (N, r)``, float64, ``r = min(N, k)`` (or
        ``rank``); the kernel's remaining ``N − r`` eigenvalues are 0.
    """
    G = _tensor(G, "G", ndim=2)
    n, k = G.shape
    if n == 0 or k == 0:
        raise ValueError(f"G must be non-empty, got shape {tuple(G.shape)}.")
    if method not in ("auto", "svd", "gram"):
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}.")
    if method == "auto":
        method = "gram" if n <= k else "svd"
    if rank is not None and not (1 <= int(rank) <= min(n, k)):
        raise ValueError(f"rank must lie in [1, {min(n, k)}], got {rank}.")
    if method == "svd":
        U, S, _ = torch.linalg.svd(G, full_matrices=False)
        ev = S**2
    else:
        e = gram_eig(G)
        if e.side == "left":
            ev, U = e.eigenvalues, e.left_vectors()
        else:                                    # U_r = G V_r Σ_r⁻¹ exists only above round-off
            r = e.rank if rank is None else int(rank)
            if r > e.rank:
                raise ValueError(f"rank = {r} exceeds the numerical rank {e.rank} of G, beyond which method='gram' "
                                 "has no accurate eigenvectors; use method='svd' or a smaller rank.")
            ev, U = e.eigenvalues[:r], e.left_vectors(r)
    if rank is not None:
        ev, U = ev[: int(rank)], U[:, : int(rank)]
    return ev, U


# ----------------------------------------------------------------------------- spectrum statistics
def truncation_rank(eigenvalues, tau: float) -> int:
    """Truncation rank ``r(τ) = min{r ≥ 1 : Σ_{i≤r} λ_i ≥ τ Σ_i λ_i}`` (appendix §2, Def 3.1).

    Eigenvalues at or below the package's round-off threshold ``n·ε·λ₁``
    (:func:`dntk.linalg.roundoff_cutoff` with ``n`` the number of eigenvalues) count as 0; this matters
    only for ``τ`` at or near 1.

    Parameters
    ----------
    eigenvalues : array ``(n,)``
        In any order (sorted here; round-off negatives clipped to 0).
    tau : float
        Energy fraction in ``(0, 1]``.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        For an all-zero spectrum or ``τ`` outside ``(0, 1]``.
    """
    tau = _check_tau(tau)
    ev = _check_eigenvalues(eigenvalues)
    if ev[0].item() <= 0:
        raise ValueError("the spectrum is all zero, so the truncation rank is undefined (zero kernel).")
    ev = torch.where(ev > roundoff_cutoff(ev[0].item(), ev.numel(), ev.numel()), ev, 0.0)   # round-off: zero
    cum = torch.cumsum(ev, 0)
    if tau == 1.0:
        return int((ev > 0).sum().item())
    return int(torch.searchsorted(cum, tau * cum[-1]).item()) + 1


def effective_rank(eigenvalues) -> float:
    """Effective rank ``(Σλ)² / Σλ²`` (appendix §2).

    Parameters
    ----------
    eigenvalues : array ``(n,)``

    Returns
    -------
    float
    """
    ev = _check_eigenvalues(eigenvalues)
    s2 = (ev**2).sum().item()
    if s2 <= 0:
        raise ValueError("the spectrum is all zero, so the effective rank is undefined.")
    return ev.sum().item() ** 2 / s2


def condition_number(eigenvalues) -> float:
    """Condition number ``λ₁ / λ_N`` (appendix §2), ``inf`` when ``λ_N = 0``.

    Parameters
    ----------
    eigenvalues : array ``(N,)``
        All of the kernel's eigenvalues.

    Returns
    -------
    float
    """
    ev = _check_eigenvalues(eigenvalues)
    return float("inf") if ev[-1].item() <= 0 else ev[0].item() / ev[-1].item()


def spectrum_stats(eigenvalues, taus: Sequence[float] = (0.9, 0.95, 0.99), n: int | None = None) -> dict:
    """Summary of a class-kernel spectrum (appendix §2).

    Parameters
    ----------
    eigenvalues : array ``(r,)``
    taus : sequence of float
        Energy fractions for ``r(τ)``.
    n : int, optional
        The number of points ``N`` (default ``len(eigenvalues)``); a shorter spectrum (from
        :func:`eig_from_features` with ``k < N``) is padded with zeros.

    Returns
    -------
    dict
        ``n``, ``lambda_max``, ``lambda_min``, ``condition_number``, ``effective_rank`` and, per ``τ``,
        ``r(τ)`` and ``alpha(τ) = n / r(τ)``.
    """
    ev = _check_eigenvalues(eigenvalues)
    n = ev.numel() if n is None else int(n)
    if n < ev.numel():
        raise ValueError(f"n = {n} is smaller than the number of eigenvalues {ev.numel()}.")
    full = torch.cat([ev, ev.new_zeros(n - ev.numel())])
    out = {"n": n, "lambda_max": full[0].item(), "lambda_min": full[-1].item(),
           "condition_number": condition_number(full), "effective_rank": effective_rank(full)}
    for t in taus:
        r = truncation_rank(full, t)
        out[f"r({t})"] = r
        out[f"alpha({t})"] = n / r
    return out


def data_redundancy(K, tau: float) -> tuple[float, int]:
    """Data redundancy of a class kernel (appendix §2, Def 3.1): ``α = N / r(τ)``.

    Parameters
    ----------
    K : array ``(N, N)``
        Kernel (dense ``eigh``; for features use :func:`parameter_redundancy`, same ``r``).
    tau : float
        Energy fraction in ``(0, 1]``.

    Returns
    -------
    (float, int)
        ``(α, r)``.
    """
    ev, _ = eig_from_kernel(K)
    r = truncation_rank(ev, tau)
    return ev.numel() / r, r


def parameter_redundancy(G, tau: float) -> tuple[float, int]:
    """Parameter redundancy (appendix §2, Def 3.2): ``β = P / r(τ)``.

    ``r(τ)`` comes from the squared singular values of ``G`` (:func:`dntk.linalg.gram_eig`, eigenvalues only,
    from the smaller of ``G Gᵀ`` and ``GᵀG``); it equals ``r(τ)`` of ``K = G Gᵀ``.

    Parameters
    ----------
    G : array ``(N, P)``
        Gradient (or projected, ``(N, k)``) features.
    tau : float
        Energy fraction ``τ`` in ``(0, 1]`` kept by the first ``r`` squared singular values.

    Returns
    -------
    (float, int)
        ``(β, r)``.
    """
    G = _tensor(G, "G", ndim=2)
    r = truncation_rank(gram_eig(G, vectors=False).eigenvalues, tau)
    return G.shape[1] / r, r


def partial_sum_distortion(eigenvalues, eigenvalues_projected) -> float:
    """``ε = max_r |S̃_r / S_r − 1|`` over partial eigenvalue sums (appendix §2, Prop B.6).

    Parameters
    ----------
    eigenvalues : array ``(n,)``
        Eigenvalues of the exact kernel ``K_c``.
    eigenvalues_projected : array ``(m,)``
        Eigenvalues of the projected kernel ``K̃_c``. Shorter spectra are padded with zeros; sums with
        ``S_r = 0`` are skipped.

    Returns
    -------
    float
    """
    a = _check_eigenvalues(eigenvalues, "eigenvalues")
    b = _check_eigenvalues(eigenvalues_projected, "eigenvalues_projected")
    n = max(a.numel(), b.numel())
    a = torch.cat([a, a.new_zeros(n - a.numel())]).cumsum(0)
    b = torch.cat([b, b.new_zeros(n - b.numel())]).cumsum(0)
    ok = a > 0
    return (b[ok] / a[ok] - 1).abs().max().item()


def jl_rank_bracket(projected, tau: float, eps: float, n: int | None = None) -> tuple[int, int]:
    """Interval that ``r(τ)`` of the *unprojected* kernel must lie in (appendix §2, Prop B.6).

    ``r̃(τ(1−ε)/(1+ε)) ≤ r(τ) ≤ r̃(τ(1+ε)/(1−ε))``; when the upper threshold exceeds 1 no finite statement
    follows from ``K̃`` and ``hi = n`` (the trivial bound).

    Parameters
    ----------
    projected : array ``(N, k)`` or ``(m,)``
        JL-projected features, or the eigenvalues of ``K̃_c``.
    tau : float
        Energy fraction in ``(0, 1]``.
    eps : float
        Bound on the partial-sum distortion ``max_r |S̃_r/S_r − 1|``, in ``[0, 1)``.
    n : int, optional
        ``N`` (default: the number of rows or eigenvalues).

    Returns
    -------
    (int, int)
        ``(lo, hi)``.
    """
    tau = _check_tau(tau)
    eps = float(eps)
    if not (0.0 <= eps < 1.0):
        raise ValueError(f"eps must lie in [0, 1), got {eps}.")
    x = _tensor(projected, "projected", ndim=(1, 2))
    if x.ndim == 2:
        if n is None:
            n = x.shape[0]
        ev = gram_eig(x, vectors=False).eigenvalues
    else:
        ev = x
        if n is None:
            n = x.numel()
    lo_t, hi_t = tau * (1 - eps) / (1 + eps), tau * (1 + eps) / (1 - eps)
    lo = truncation_rank(ev, lo_t)
    hi = truncation_rank(ev, hi_t) if hi_t <= 1.0 else int(n)
    return lo, hi


# ----------------------------------------------------------------------------- clustering
def _stacked_norms(F: torch.Tensor, name="features") -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked features ``Z (N, C·k)`` (a view when possible, original dtype) and their row norms (float64),
    checking for NaN/inf block by block so that no full-size temporary is made."""
    if isinstance(F, np.ndarray):
        F = torch.from_numpy(np.ascontiguousarray(F))
    F = F.detach().cpu()
    if not F.is_floating_point():
        F = F.to(torch.float64)
    Z = F.reshape(F.shape[0], -1)
    norms = torch.empty(Z.shape[0], dtype=torch.float64)
    step = max(1, (64 << 20) // (8 * max(1, Z.shape[1])))
    for s in range(0, Z.shape[0], step):
        blk = Z[s:s + step].double()
        if not torch.isfinite(blk).all():
            raise ValueError(f"{name} contains NaN or inf; clean the input (e.g. check the gradients) first.")
        norms[s:s + step] = blk.norm(dim=1)
    return Z, norms


def mean_kernel(features) -> torch.Tensor:
    """Class-averaged kernel ``K̄ = (1/C) Σ_c G̃_c G̃_cᵀ`` (appendix §4.3 step 1), dense.

    Parameters
    ----------
    features : array ``(N, C, k)``

    Returns
    -------
    torch.Tensor
        ``(N, N)`` float64.
    """
    F = _tensor(features, "features", ndim=3)
    n, c, k = F.shape
    Z = F.reshape(n, c * k)
    return (Z @ Z.T) / c


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Canonical labels: clusters numbered in order of first appearance."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    mapping = np.empty(order.size, dtype=np.int64)
    mapping[np.unique(labels)[order]] = np.arange(order.size)
    return mapping[labels].astype(np.int64)


def _top_left_singular(Z: torch.Tensor, s: torch.Tensor, n_vec: int, n_iter: int, seed: int) -> torch.Tensor:
    """Top ``n_vec`` left singular vectors of ``B = diag(s) Z`` by randomized subspace iteration
    (Halko et al. 2011) without copying ``Z``: ``B Ω = s ⊙ (Z Ω)``, ``Bᵀ Q = Zᵀ (s ⊙ Q)``."""
    n, w = Z.shape
    ell = min(n, w, n_vec + max(10, n_vec))
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(w, ell, generator=gen, dtype=torch.float64).to(Z.dtype)
    s_col = s.to(Z.dtype)[:, None]
    Y = (s_col * (Z @ omega)).double()
    Q, _ = torch.linalg.qr(Y)
    for _ in range(n_iter):
        T = Z.T @ (s_col * Q.to(Z.dtype))
        Y = (s_col * (Z @ T)).double()
        Q, _ = torch.linalg.qr(Y)
    T = (Z.T @ (s_col * Q.to(Z.dtype))).double()  # (w, ell) = Bᵀ Q
    Uh, _, _ = torch.linalg.svd(T.T, full_matrices=False)  # Qᵀ B = Uh S Vhᵀ
    return Q @ Uh[:, :n_vec]


def spectral_clusters(features_or_kernel, n_clusters: int, method: str = "auto", seed: int = 0,
                      n_iter: int = 6) -> np.ndarray:
    """Spectral clustering of the class-averaged kernel (appendix §4.3 step 1).

    * ``dense``: affinity ``A = max(0, K̄_ij / √(K̄_ii K̄_jj))`` (cosine-normalised, clipped at 0), scikit-learn
      ``SpectralClustering(affinity="precomputed")``. ``O(N²)`` memory, ``O(N³)`` worst-case time.
    * ``matrix_free`` (features only): with ``z_i`` the unit-normalised stacked features, the affinity is
      ``A = Z Zᵀ`` (the same cosines, **not clipped**: clipping is elementwise and has no low-rank form),
      degrees ``d = Z (Zᵀ 1)``, top ``n_clusters`` left singular vectors ``U`` of ``D^{-1/2} Z`` by randomized
      subspace iteration, embedding ``D^{-1/2} U`` (as scikit-learn's), k-means. ``O(N C k)`` memory and
      time per iteration. It equals the dense path whenever all cosines are ``≥ 0`` up to two details:
      scikit-learn drops self-loops from the degrees, and it uses ARPACK rather than subspace iteration.
      Degrees below 10% of the median (points whose cosines are mostly negative; clipping would have raised
      their degree) are floored there with a warning, and such outliers get weight 0 in the k-means fit (they
      are assigned to the nearest centre afterwards), so that they cannot take over an eigenvector or a cluster.
    * ``auto``: dense for ``N ≤ 5000`` or a kernel input, otherwise matrix-free.

    Parameters
    ----------
    features_or_kernel : array ``(N, C, k)`` or ``(N, N)``
        Features (``K̄`` is implied) or a kernel.
    n_clusters : int
        Number of clusters, ``1 ≤ n_clusters ≤ N``.
    method : {"auto", "dense", "matrix_free"}
    seed : int
        Seed of the k-means and the random subspace iteration.
    n_iter : int
        Subspace iterations (matrix-free path).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 labels, clusters numbered in order of first appearance.
    """
    from sklearn.cluster import KMeans, SpectralClustering

    if not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}.")
    x = features_or_kernel
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"features_or_kernel must be a tensor or array, got {type(x).__name__}.")
    if x.ndim not in (2, 3):
        raise ValueError(f"features_or_kernel must be features (N, C, k) or a kernel (N, N), got shape {tuple(x.shape)}; "
                         "pass single-class features as (N, 1, k).")
    n = x.shape[0]
    if n_clusters > n:
        raise ValueError(f"n_clusters = {n_clusters} is more than the number of points N = {n}.")
    if method not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"method must be 'auto', 'dense' or 'matrix_free', got {method!r}.")
    if method == "auto":
        method = "dense" if (x.ndim == 2 or n <= _DENSE_CLUSTER_MAX_N) else "matrix_free"
    if method == "matrix_free" and x.ndim == 2:
        raise ValueError("method='matrix_free' needs features (N, C, k), not a kernel; use method='dense'.")

    if x.ndim == 3:
        Z, norms = _stacked_norms(x)
    else:
        K = _check_kernel(x)
        ev = torch.linalg.eigvalsh(K)
        if ev[0].item() < -_NEG_RTOL * ev.abs().max().item():
            raise ValueError(f"K is not positive semi-definite (smallest eigenvalue {ev[0].item():.3g}); "
                             "a kernel built as G Gᵀ cannot have one.")
        norms = K.diagonal().clamp(min=0).sqrt()
    bad = (norms <= 0).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"point {bad[0].item()} has a zero feature vector (zero kernel diagonal), so its cosine "
                         "affinity is undefined; drop such points before clustering.")
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)

    if method == "dense":
        if x.ndim == 3:
            Zd = Z.double() / norms[:, None]
            A = Zd @ Zd.T
        else:
            A = K / norms[:, None] / norms[None, :]
        A = A.clamp(min=0.0).numpy()
        sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed, n_init=10,
                                assign_labels="kmeans")
        labels = sc.fit_predict(A)
        return _relabel(np.asarray(labels))

    # matrix-free: unit rows z_i = x_i / ||x_i||, degrees d = Z (Zᵀ 1), operator D^{-1/2} Z.
    inv = (1.0 / norms)
    ones = inv.to(Z.dtype)[:, None]
    d = (inv * (Z @ (Z.T @ ones)).double().flatten())
    floor = 0.1 * d.median().item()
    if floor <= 0:
        raise ValueError("most points have non-positive degree in the cosine affinity (the features are mostly "
                         "anti-correlated), so the matrix-free path cannot normalise it; use method='dense'.")
    weak = d < floor
    if weak.any():
        log.warning("spectral_clusters: %d of %d points have degree below 10%% of the median in the unclipped cosine "
                    "affinity (mostly negative cosines); flooring their degree there (matrix-free path).",
                    int((d < floor).sum()), n)
        d = d.clamp(min=floor)
    s = inv / d.sqrt()                      # row scale of B = D^{-1/2} Z_unit
    U = _top_left_singular(Z, s, n_clusters, n_iter=n_iter, seed=seed)
    emb = (U / d.sqrt()[:, None]).numpy()
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    km.fit(emb, sample_weight=(~weak).double().numpy())    # floored outliers do not place centres, only join one
    return _relabel(np.asarray(km.predict(emb)))


# ----------------------------------------------------------------------------- containment
@dataclass(frozen=True)
class Containment:
    """Containment diagnostics of one class kernel against a partition (appendix §4.3, properties A and B).

    rank: global truncation rank ``r``; eigenvalues ``(r,)``, vectors ``(N, r)``: global top eigenpairs.
    sizes, local_ranks: ``(M,)`` cluster sizes ``|S_j|`` and local ranks ``r_j``; local_eigenvalues and
    local_vectors: per cluster, ``(r_j,)`` and ``(|S_j|, r_j)`` (indices into the cluster's own rows,
    in increasing index order). captured ``(M, r)``: ``‖U^{(j)ᵀ}_{r_j} u_i[S_j]‖²``, the share of global
    direction ``i`` captured by cluster ``j``'s local top eigenspace; alignment ``(r,)`` = its column
    sums ``A_i = ‖Q u_i‖²``. prop_a ``(M,)``: property (A); prop_b: property (B).
    """
    tau: float
    rank: int
    eigenvalues: torch.Tensor
    vectors: torch.Tensor
    sizes: torch.Tensor
    local_ranks: torch.Tensor
    local_eigenvalues: list
    local_vectors: list
    captured: torch.Tensor
    alignment: torch.Tensor
    prop_a: torch.Tensor
    prop_b: float

    def gaps(self, gamma: float) -> torch.Tensor:
        """Gap set ``{i < r : A_i < γ}`` (appendix §4.3 step 3), 0-based indices."""
        return (self.alignment < gamma).nonzero().flatten()


def _check_labels(labels, n: int) -> tuple[np.ndarray, int]:
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers 0..M-1, got dtype {lab.dtype}.")
    if lab.min() < 0:
        raise ValueError("labels must be non-negative cluster indices 0..M-1.")
    m = int(lab.max()) + 1
    counts = np.bincount(lab, minlength=m)
    if (counts == 0).any():
        raise ValueError(f"cluster {int(np.flatnonzero(counts == 0)[0])} is empty; labels must use every index 0..M-1 "
                         "(relabel the clusters consecutively).")
    return lab.astype(np.int64), m


def _top_eig(G: torch.Tensor, tau: float, method: str):
    """Top-``r(τ)`` eigenpairs of ``G Gᵀ``: ``(ev_r (r,), U_r (N, r))``."""
    n, k = G.shape
    if method == "dense":
        ev, U = eig_from_kernel(G @ G.T)
    elif method == "gram" and n > k:            # eigh of GᵀG, then only the r eigenvectors that are needed
        e = gram_eig(G, side="right")
        r = min(truncation_rank(e.eigenvalues, tau), e.rank)
        return e.eigenvalues[:r], e.left_vectors(r)
    else:
        ev, U = eig_from_features(G, method="auto")
    r = truncation_rank(ev, tau)
    return ev[:r].clone(), U[:, :r].clone()      # copies: do not keep the full U alive


def containment(features, labels, tau: float, method: str = "auto") -> Containment:
    """Properties (A) and (B) of one class kernel ``K = G Gᵀ`` for a partition (appendix §4.3).

    Global ``r = r(τ)``, local ``r_j = r_j(τ)`` of ``K[S_j, S_j]``.
    (A)_j = ``Σ_{i≤r_j} λ_i^{(j)} ‖U_rᵀ ũ_i^{(j)}‖² / Σ_{i≤r_j} λ_i^{(j)}`` (local energy inside the global
    top-r eigenspace); (B) = ``Σ_{i≤r} λ_i (1 − ‖Q u_i‖²) / Σ_{i≤r} λ_i`` (global top-r energy outside the
    union of lifted local spans; the lifted local eigenvectors have disjoint supports, so ``‖Q u_i‖² = A_i``).

    Parameters
    ----------
    features : array ``(N, k)``
        Class features ``G̃_c``.
    labels : array ``(N,)`` of int
        Cluster indices ``0..M-1``, every cluster non-empty.
    tau : float
        Energy fraction in ``(0, 1]``.
    method : {"auto", "matrix_free", "gram", "dense"}
        ``"matrix_free"``: thin SVDs of ``G`` and ``G[S_j]`` (:func:`eig_from_features`), no ``N×N`` matrix,
        exact to round-off. ``"gram"``: :func:`dntk.linalg.gram_eig` of the ``k×k`` Gram matrices and only the
        top ``r``/``r_j`` eigenvectors ``U_r = G V_r Σ_r⁻¹``, 2–4× faster for ``N ≫ k`` (accurate for any ``τ``
        short of 1). ``"auto"``: ``"gram"`` when ``N > 2k`` and ``τ < 1``, else ``"matrix_free"``.
        ``"dense"``: ``eigh`` of ``K`` and ``K[S_j, S_j]``, the reference.

    Returns
    -------
    Containment
    """
    G = _tensor(features, "features", ndim=2)
    n = G.shape[0]
    tau = _check_tau(tau)
    lab, m = _check_labels(labels, n)
    if method == "auto":
        method = "gram" if (n > 2 * G.shape[1] and tau < 1) else "matrix_free"
    if method not in ("matrix_free", "gram", "dense"):
        raise ValueError(f"method must be 'auto', 'matrix_free', 'gram' or 'dense', got {method!r}.")

    ev_r, U_r = _top_eig(G, tau, method)
    r = ev_r.numel()
    captured = torch.zeros(m, r, dtype=torch.float64)
    prop_a = torch.zeros(m, dtype=torch.float64)
    sizes, local_ranks, local_ev, local_vec = [], [], [], []
    for j in range(m):
        idx = torch.from_numpy(np.flatnonzero(lab == j))
        Gj = G[idx]
        if Gj.pow(2).sum().item() == 0:
            raise ValueError(f"cluster {j} has all-zero features, so its local spectrum is empty.")
        ev_j, U_j = _top_eig(Gj, tau, method)
        r_j = ev_j.numel()
        proj = U_r[idx].T @ U_j                  # (r, r_j): u_i[S_j] · u^{(j)}_l
        captured[j] = proj.pow(2).sum(1)
        prop_a[j] = (ev_j * proj.pow(2).sum(0)).sum() / ev_j.sum()
        sizes.append(idx.numel())
        local_ranks.append(r_j)
        local_ev.append(ev_j)
        local_vec.append(U_j)
    alignment = captured.sum(0)
    prop_b = ((ev_r * (1 - alignment)).sum() / ev_r.sum()).item()
    return Containment(tau=tau, rank=r, eigenvalues=ev_r, vectors=U_r, sizes=torch.tensor(sizes),
                       local_ranks=torch.tensor(local_ranks), local_eigenvalues=local_ev, local_vectors=local_vec,
                       captured=captured, alignment=alignment, prop_a=prop_a, prop_b=prop_b)
