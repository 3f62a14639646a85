"""The one eigendecomposition of a feature kernel ``K = G Gᵀ`` (appendix §1, §2, §4.3).

Every module that needs eigenpairs or eigenvalues of ``K = G Gᵀ`` for features ``G (n, k)`` calls
:func:`gram_eig`: kernel ridge regression (:mod:`dntk.krr`), spectra and containment
(:mod:`dntk.spectral`), the Section 3 checks (:mod:`dntk.theory`) and Algorithm 1
(:mod:`dntk.gradient_distillation`).

The eigendecomposition is taken, in float64, of the *smaller* Gram matrix:

* ``side="left"`` (the default when ``n ≤ k``): ``eigh`` of ``K = G Gᵀ (n, n)``; the eigenvectors are
  the left singular vectors ``U`` of ``G = U Σ Vᵀ`` and ``λ = σ²``;
* ``side="right"`` (the default when ``n > k``): ``eigh`` of ``GᵀG (k, k)``; the eigenvectors are the right
  singular vectors ``V``, and the eigenvectors of ``K`` follow as ``U_r = G V_r Σ_r⁻¹``
  (appendix §4.3, Remark 4.2). Cost ``O(n k²)`` and no ``n × n`` matrix.

**Round-off rule (one rule for the whole package).** An eigenvalue of a Gram matrix computed in
float64 carries an absolute error of order ``ε·λ₁`` times the matrix size, so every eigenvalue

    ``λ_i ≤ max(n, k) · ε · λ₁``   (``ε`` = float64 machine epsilon)

is round-off: it is reported as exactly 0 and does not count in :attr:`GramEig.rank`. Negative
eigenvalues (round-off of a PSD matrix) become 0 the same way. On the right side the eigenvectors
``U_i = G v_i / σ_i`` of ``K`` exist only for ``i <`` :attr:`GramEig.rank`; beyond it they would be noise
divided by noise, and :meth:`GramEig.left_vectors` refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GramEig", "gram_eig", "gram_matrix_eig", "gram", "roundoff_cutoff", "sign_normalise", "SIDES"]

#: Accepted values of ``side`` in :func:`gram_eig`.
SIDES = ("auto", "left", "right")
_EPS = float(np.finfo(np.float64).eps)


def roundoff_cutoff(top: float, n: int, k: int) -> float:
    """The package's round-off threshold ``max(n, k) · ε · λ₁`` for the eigenvalues of ``G Gᵀ``.

    Parameters
    ----------
    top : float
        The largest eigenvalue ``λ₁ ≥ 0``.
    n, k : int
        The shape of ``G (n, k)``.

    Returns
    -------
    float
        Eigenvalues at or below this value are round-off (see the module docstring).
    """
    return max(int(n), int(k)) * _EPS * max(float(top), 0.0)


def gram(G: torch.Tensor) -> torch.Tensor:
    """The Gram matrix ``GᵀG`` of a float64 ``G (n, k)``, shape ``(k, k)``, exactly symmetric.

    On the CPU one BLAS ``dsyrk`` (half the flops of a general product); elsewhere ``Gᵀ @ G``.

    Parameters
    ----------
    G : torch.Tensor
        ``(n, k)`` float64, one feature vector per row (``n = 0`` gives the zero matrix).

    Returns
    -------
    torch.Tensor
        ``(k, k)`` float64 ``A = GᵀG`` with ``A == A.T`` bit for bit (the upper triangle mirrored).
    """
    if G.dtype != torch.float64:
        raise TypeError(f"gram needs a float64 G, got {G.dtype}; convert it with G.double().")
    if G.device.type != "cpu" or G.shape[0] == 0:
        A = G.T @ G
        return 0.5 * (A + A.T)
    from scipy.linalg.blas import dsyrk

    A = torch.from_numpy(dsyrk(1.0, G.contiguous().numpy().T, trans=0))    # upper triangle of GᵀG
    return A.triu() + A.triu(1).T


def sign_normalise(U: torch.Tensor) -> torch.Tensor:
    """Flip each column of ``U (n, r)`` so that its largest-magnitude entry is positive.

    An eigenvector is defined up to its sign; this canonical choice makes eigenvectors from different
    paths (``n×n`` or ``k×k`` Gram, dense or matrix-free) equal, not only their spans.

    Parameters
    ----------
    U : torch.Tensor
        ``(n, r)`` columns.

    Returns
    -------
    torch.Tensor
        ``(n, r)``, each column multiplied by ``±1``.
    """
    if U.numel() == 0:
        return U
    idx = U.abs().argmax(dim=0)
    s = torch.sign(U[idx, torch.arange(U.shape[1], device=U.device)])
    s[s == 0] = 1.0
    return U * s


@dataclass(frozen=True)
class GramEig:
    """Eigendecomposition of ``K = G Gᵀ`` for ``G (n, k)`` through the smaller Gram matrix.

    Attributes
    ----------
    eigenvalues : torch.Tensor
        ``(q,)`` float64, ``q = min(n, k)``, non-increasing, round-off (see the module docstring) set to 0.
        ``K`` has ``n − q`` further eigenvalues, all 0.
    basis : torch.Tensor or None
        ``(n, q)`` eigenvectors ``U`` of ``G Gᵀ`` when ``side == "left"``, ``(k, q)`` eigenvectors ``V`` of
        ``GᵀG`` when ``side == "right"``; orthonormal columns in the order of ``eigenvalues``.
        ``None`` when computed with ``vectors=False``.
    side : str
        ``"left"`` or ``"right"``: which Gram matrix was decomposed.
    rank : int
        Numerical rank: the number of eigenvalues above ``max(n, k)·ε·λ₁``.
    G : torch.Tensor or None
        The float64 features ``(n, k)`` (needed to map right to left vectors); ``None`` from
        :func:`gram_matrix_eig`.
    """

    eigenvalues: torch.Tensor
    basis: torch.Tensor | None
    side: str
    rank: int
    G: torch.Tensor | None

    @property
    def singular_values(self) -> torch.Tensor:
        """``σ = √λ``, ``(q,)`` float64, the singular values of ``G``."""
        return self.eigenvalues.sqrt()

    def _need_vectors(self) -> torch.Tensor:
        if self.basis is None:
            raise ValueError("this GramEig was computed with vectors=False; call gram_eig(G) for eigenvectors.")
        if self.G is None and self.side == "right":
            raise ValueError("this GramEig was computed from GᵀG alone (gram_matrix_eig); vectors of G Gᵀ need G.")
        return self.basis

    def left_vectors(self, r: int | None = None) -> torch.Tensor:
        """The top ``r`` unit eigenvectors ``U_r (n, r)`` of ``K = G Gᵀ`` (left singular vectors of ``G``).

        Parameters
        ----------
        r : int, optional
            Number of vectors; default all ``q`` on the left side, ``rank`` on the right side. On the right
            side (``U_r = G V_r Σ_r⁻¹``) ``r`` may not exceed ``rank``.

        Returns
        -------
        torch.Tensor
            ``(n, r)`` float64 with orthonormal columns.
        """
        B = self._need_vectors()
        if self.side == "left":
            r = B.shape[1] if r is None else int(r)
            if not 0 <= r <= B.shape[1]:
                raise ValueError(f"r must lie in [0, {B.shape[1]}], got {r}.")
            return B[:, :r]
        r = self.rank if r is None else int(r)
        if not 0 <= r <= self.rank:
            raise ValueError(f"r = {r} eigenvectors of G Gᵀ were asked from the k×k Gram matrix, but only "
                             f"{self.rank} eigenvalues lie above round-off; ask for at most {self.rank}.")
        return (self.G @ B[:, :r]) / self.eigenvalues[:r].sqrt()

    def factor(self) -> torch.Tensor:
        """``B = U Σ (n, q)`` with ``K = G Gᵀ = B Bᵀ`` (all ``q`` columns, exact on both sides: on the right
        side ``B = G V``)."""
        B = self._need_vectors()
        if self.side == "left":
            return B * self.eigenvalues.sqrt()
        return self.G @ B


def gram_eig(G, side: str = "auto", vectors: bool = True, gram_matrix: torch.Tensor | None = None) -> GramEig:
    """Eigendecomposition of ``K = G Gᵀ`` for ``G (n, k)`` through the smaller Gram matrix, in float64.

    Implements ``G = U Σ Vᵀ``, ``K = U Σ² Uᵀ``, ``GᵀG = V Σ² Vᵀ`` (appendix §1, §4.3) with the round-off rule of
    the module docstring.

    Parameters
    ----------
    G : torch.Tensor or numpy.ndarray
        ``(n, k)`` real features, finite (converted to float64; not checked here — callers check their
        inputs and name them).
    side : {"auto", "left", "right"}
        ``"left"``: ``eigh`` of ``G Gᵀ (n, n)``; ``"right"``: ``eigh`` of ``GᵀG (k, k)``; ``"auto"``: the smaller
        (left when ``n ≤ k``).
    vectors : bool
        ``False``: eigenvalues only (``eigvalsh``; ``basis`` is ``None``).
    gram_matrix : torch.Tensor, optional
        A precomputed ``GᵀG (k, k)`` float64 for the right side (e.g. a sum of cluster Grams).

    Returns
    -------
    GramEig
        ``eigenvalues (min(n, k),)``, ``basis``, ``side``, ``rank``.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}.")
    if isinstance(G, np.ndarray):
        G = torch.from_numpy(G)
    G = G.to(torch.float64)
    if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(f"G must have shape (n, k) with n, k ≥ 1, got {tuple(G.shape)}.")
    n, k = G.shape
    if side == "auto":
        side = "left" if n <= k else "right"
    if side == "left":
        A = G @ G.T
        A = 0.5 * (A + A.T)
    else:
        A = gram(G) if gram_matrix is None else gram_matrix.to(device=G.device, dtype=torch.float64)
    return _decompose(A, n, k, side, vectors, G)


def _decompose(A: torch.Tensor, n: int, k: int, side: str, vectors: bool, G) -> GramEig:
    """``eigh`` of the Gram matrix ``A`` of a ``G (n, k)``, non-increasing, with the round-off rule."""
    if vectors:
        lam, basis = torch.linalg.eigh(A)
        lam, basis = lam.flip(0), basis.flip(1)
    else:
        lam, basis = torch.linalg.eigvalsh(A).flip(0), None
    q = min(n, k)
    lam = lam[:q]
    basis = None if basis is None else basis[:, :q]
    cut = roundoff_cutoff(float(lam[0]), n, k)
    lam = torch.where(lam > cut, lam, torch.zeros_like(lam))
    rank = int((lam > 0).sum())
    return GramEig(eigenvalues=lam, basis=basis, side=side, rank=rank, G=G)


def gram_matrix_eig(gram_matrix: torch.Tensor, n: int) -> GramEig:
    """:func:`gram_eig` on the right side from ``GᵀG`` alone, for features ``G (n, k)`` that are not in memory.

    The same eigendecomposition and round-off rule; only :meth:`GramEig.left_vectors` and
    :meth:`GramEig.factor` (which need ``G``) are unavailable.

    Parameters
    ----------
    gram_matrix : torch.Tensor
        ``GᵀG (k, k)``, symmetric PSD (e.g. accumulated over blocks of rows).
    n : int
        The number of rows of ``G`` (it bounds the rank and sets the round-off threshold).

    Returns
    -------
    GramEig
        ``side="right"``, ``basis = V (k, min(n, k))``, ``G = None``.
    """
    A = gram_matrix.to(torch.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0 or int(n) < 1:
        raise ValueError(f"gram_matrix must be a square (k, k) matrix and n ≥ 1, got shape {tuple(A.shape)}, n = {n}.")
    return _decompose(0.5 * (A + A.T), int(n), A.shape[0], "right", True, None)
