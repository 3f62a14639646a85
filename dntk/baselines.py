"""Row-selection baselines for compressing one class's gradients (appendix §4.3).

Algorithm 1 (:mod:`dntk.gradient_distillation`) replaces the ``N`` projected gradients of a class by
``m`` *synthetic* ones. The baselines it is compared with keep ``m`` *real* rows of ``G̃_c (N, k)``
instead (or, for ``pca``, the top-``m`` global eigenvectors as coefficients), and KRR is then fitted on
those rows with the ridge of the uncompressed set:

* ``random`` — ``m`` rows uniformly without replacement (seeded);
* ``leverage`` — the ``m`` rows with the largest ridge leverage scores ``l_i = (K (K + λI)⁻¹)_{ii}``;
* ``leverage_sampled`` — ``m`` rows without replacement with probability ∝ ``l_i`` (seeded);
* ``fps`` — farthest-point sampling (greedy ``k``-center) from a seeded random start;
* ``kmeans`` — ``k``-means with ``m`` centres (seeded), the nearest unused real row to each centre;
* ``pca`` — the top-``m`` eigenvectors ``U_m`` of ``K = G̃_c G̃_cᵀ`` as coefficients, ``(U_mᵀ G̃_c, U_mᵀ t_c)``:
  the rank-``m`` KRR of appendix §1, a reference line rather than a row selection.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ._common import check_finite, check_int, check_positive, real_tensor
from .linalg import gram_eig, sign_normalise

__all__ = ["select", "Selection", "leverage_scores", "SELECT_METHODS", "SEEDED_METHODS"]

#: Baselines accepted by :func:`select`.
SELECT_METHODS = ("random", "leverage", "leverage_sampled", "fps", "kmeans", "pca")
#: The baselines whose choice depends on ``seed`` (the others are deterministic).
SEEDED_METHODS = ("random", "leverage_sampled", "fps", "kmeans")


@dataclass(frozen=True)
class Selection:
    """A baseline's compressed set for one class (appendix §4.3).

    Attributes
    ----------
    method : str
        One of :data:`SELECT_METHODS`.
    indices : torch.Tensor or None
        ``(m,)`` int64 chosen rows (``None`` for ``pca``).
    V : torch.Tensor or None
        ``(N, m)`` orthonormal coefficients for ``pca`` (``None`` for row selections).
    scores : torch.Tensor or None
        ``(N,)`` ridge leverage scores for the leverage methods.
    """

    method: str
    indices: torch.Tensor | None
    V: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    @property
    def m(self) -> int:
        """Number of rows (or coefficient vectors) in the compressed set."""
        return int(self.indices.numel() if self.indices is not None else self.V.shape[1])

    def apply(self, features_c, targets_c):
        """The KRR training set of this selection.

        Parameters
        ----------
        features_c : array ``(N, k)``
            The class's features ``G̃_c``.
        targets_c : array ``(N,)``
            The class's targets ``t_c``.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            ``(G (m, k), t (m,))`` float64: ``(G̃_c[I], t_c[I])`` for a row selection, ``(Vᵀ G̃_c, Vᵀ t_c)``
            for ``pca``.
        """
        G = _features_c(features_c)
        t = real_tensor(targets_c, "targets_c").to(torch.float64).reshape(-1)
        if t.shape[0] != G.shape[0]:
            raise ValueError(f"targets_c has {t.shape[0]} entries but features_c has {G.shape[0]} rows.")
        check_finite(t, "targets_c")
        if self.indices is not None:
            return G[self.indices], t[self.indices]
        return self.V.T @ G, self.V.T @ t


def _features_c(features_c) -> torch.Tensor:
    G = real_tensor(features_c, "features_c")
    if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(f"features_c must have shape (N, k) (one class), got {tuple(G.shape)}.")
    check_finite(G, "features_c")
    return G.to(torch.float64)


def _ridge(G: torch.Tensor, lam, lam_rel) -> float:
    """``λ`` given, or ``lam_rel · tr(K)/N`` (the KRR default of appendix §1)."""
    if lam is not None:
        return check_positive(lam, "lam")
    lam_rel = check_positive(lam_rel, "lam_rel")
    tr = float((G ** 2).sum())
    if tr <= 0:
        raise ValueError("features_c is all zeros: the kernel has zero trace, so no ridge scale exists; "
                         "pass lam explicitly.")
    return float(lam_rel) * tr / G.shape[0]


def leverage_scores(features_c, lam: float | None = None, lam_rel: float = 1e-3) -> torch.Tensor:
    """Ridge leverage scores of ``K = G Gᵀ`` (appendix §4.3).

    ``l_i = (K (K + λI)⁻¹)_{ii} = g_iᵀ (GᵀG + λI)⁻¹ g_i`` (Woodbury), computed with one ``k×k`` Cholesky
    and no ``N×N`` matrix.

    Parameters
    ----------
    features_c : array ``(N, k)``
        One class's features ``G``.
    lam : float, optional
        Absolute ridge ``λ > 0``.
    lam_rel : float
        When ``lam`` is None, ``λ = lam_rel · tr(K)/N`` (appendix §1).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 scores in ``[0, 1)``.
    """
    G = _features_c(features_c)
    lam = _ridge(G, lam, lam_rel)
    k = G.shape[1]
    L = torch.linalg.cholesky(G.T @ G + lam * torch.eye(k, dtype=torch.float64, device=G.device))
    Z = torch.linalg.solve_triangular(L, G.T, upper=False)            # (k, N)
    return (Z ** 2).sum(0)


def _fps(G: torch.Tensor, m: int, start: int) -> torch.Tensor:
    """Greedy k-center: each step the row farthest (Euclidean) from the chosen set; ties → lowest index."""
    sq = (G ** 2).sum(1)
    chosen = [start]
    mind = (sq - 2 * G @ G[start] + sq[start]).clamp_min(0.0)
    mind[start] = -np.inf
    for _ in range(m - 1):
        i = int(torch.argmax(mind))
        chosen.append(i)
        d = (sq - 2 * G @ G[i] + sq[i]).clamp_min(0.0)
        mind = torch.minimum(mind, d)
        mind[chosen] = -np.inf
    return torch.tensor(chosen, dtype=torch.int64)


def _kmeans_rows(G: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """k-means (scikit-learn, one seeded init) with ``m`` centres; the nearest unused row to each centre."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=m, n_init=1, random_state=seed).fit(G.cpu().numpy())
    centres = torch.from_numpy(km.cluster_centers_).to(torch.float64)
    d = torch.cdist(centres, G.cpu())                                  # (m, N)
    used, out = set(), []
    for row in torch.argsort(d, dim=1):
        i = next(int(x) for x in row if int(x) not in used)
        used.add(i)
        out.append(i)
    return torch.tensor(out, dtype=torch.int64)


def select(method: str, features_c, budget: int, seed: int = 0, lam: float | None = None,
           lam_rel: float = 1e-3, start: int | None = None, scores=None) -> Selection:
    """A baseline compressed set of ``budget`` rows for one class (appendix §4.3).

    Parameters
    ----------
    method : str
        One of :data:`SELECT_METHODS` (see the module docstring).
    features_c : array ``(N, k)``
        One class's projected gradients ``G̃_c``; finite.
    budget : int
        ``m``, the number of rows (``1 ≤ m ≤ N``; for ``pca`` at most the numerical rank).
    seed : int
        Seed of the randomised methods (``random``, ``leverage_sampled``, ``fps``, ``kmeans``).
    lam, lam_rel : float
        Ridge of the leverage scores (see :func:`leverage_scores`).
    start : int, optional
        First row of ``fps`` (default: a seeded random row).
    scores : array ``(N,)``, optional
        Precomputed :func:`leverage_scores`, reused across budgets and seeds (leverage methods only).

    Returns
    -------
    Selection
        The chosen rows (or ``pca`` coefficients); :meth:`Selection.apply` gives the KRR training set.
    """
    if method not in SELECT_METHODS:
        raise ValueError(f"method must be one of {SELECT_METHODS}, got {method!r}.")
    G = _features_c(features_c)
    n = G.shape[0]
    budget = check_int(budget, "budget", 1)
    if budget > n:
        raise ValueError(f"budget ({budget}) exceeds the number of rows N ({n}).")
    seed = int(seed)
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        return Selection(method, torch.randperm(n, generator=gen)[:budget])
    if method in ("leverage", "leverage_sampled"):
        if scores is None:
            scores = leverage_scores(G, lam=lam, lam_rel=lam_rel)
        else:
            scores = real_tensor(scores, "scores").to(torch.float64)
            if scores.shape != (n,) or not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
                raise ValueError(f"scores must be finite leverage scores >= 0 of shape ({n},), "
                                 f"got shape {tuple(scores.shape)}.")
        if method == "leverage":
            idx = torch.sort(-scores, stable=True).indices[:budget]
        else:
            idx = torch.multinomial(scores.cpu().clamp_min(0.0), budget, replacement=False, generator=gen)
        return Selection(method, idx, scores=scores)
    if method == "fps":
        if start is None:
            start = int(torch.randint(n, (1,), generator=gen))
        elif isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < n:
            raise ValueError(f"start must be a row index in [0, {n}), got {start!r}.")
        return Selection(method, _fps(G, budget, int(start)))
    if method == "kmeans":
        return Selection(method, _kmeans_rows(G, budget, seed))
    eig = gram_eig(G)
    if budget > eig.rank:
        raise ValueError(f"budget ({budget}) exceeds the numerical rank of features_c ({eig.rank}); "
                         "pca has no further directions.")
    return Selection(method, None, V=sign_normalise(eig.left_vectors(budget)))
