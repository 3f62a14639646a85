"""Kernel ridge regression on per-class tangent features (appendix §1, §4.3; paper App A.3, eqs 16–18).

Per class ``c`` with features ``G_c (N, k)`` (rows ``g_c(x_i)``) and targets ``t_c (N,)``:

- dual (eq 16):   ``α_c = (K_c + λI)^{-1} t_c``, ``K_c = G_c G_cᵀ``, ``w_c = G_cᵀ α_c``;
- primal (eq 17, Woodbury): ``w_c = (G_cᵀ G_c + λI)^{-1} G_cᵀ t_c``;
- prediction (eq 18): ``f̂_c(x) = g_c(x)ᵀ w_c``.

Both are solved by a float64 Cholesky factorisation in whichever space is smaller. The rank-``r``
variant keeps the top ``r`` singular triplets of ``G_c = UΣVᵀ``: ``w = V_r Σ_r (Σ_r² + λ)^{-1} U_rᵀ t``.
The thin SVD is taken through the eigendecomposition of the smaller Gram matrix (``G Gᵀ`` when
``N ≤ k``, ``GᵀG`` otherwise; :func:`dntk.linalg.gram_eig`), which costs ``O(N k min(N, k))``.

λ defaults to ``λ_c = lam_rel · tr(K_c)/N`` (:func:`default_lam`). ``select="loo"|"gcv"`` picks
``lam_rel`` per class on a grid in closed form from one eigendecomposition per class
(:func:`loo_gcv`; Allen's PRESS ``e = (I−H)t / diag(I−H)``, ``H = K(K+λI)^{-1}``).

:meth:`ClassKRR.fit_synthetic` fits on a compressed set (appendix §4.3: ``w_c = (G_synᵀ G_syn + λI)^{-1}
G_synᵀ t_syn``) with λ carried over from the uncompressed set. The error decomposition of Prop B.3
(appendix §5) is in :mod:`dntk.error_decomposition`.
"""
from __future__ import annotations

import logging
import numbers
from typing import Sequence

import numpy as np
import torch

from ._common import check_finite, check_positive, class_features, per_class_positive, real_tensor
from .linalg import gram_eig

log = logging.getLogger("dntk")

__all__ = ["ClassKRR", "default_lam", "loo_gcv", "ridge_weights", "DEFAULT_LAM_GRID"]


#: Grid of ``lam_rel`` values searched by ``select="loo"|"gcv"`` when ``lam_grid`` is not given.
DEFAULT_LAM_GRID = tuple(float(v) for v in 10.0 ** np.arange(-8.0, 2.01, 0.5))

_SOLVERS = ("auto", "dual", "primal")
_SELECT = (None, "loo", "gcv")


# ----------------------------------------------------------------------------- core solves
def _gram_eig(G: torch.Tensor):
    """Thin SVD ``G = UΣVᵀ`` of ``G (n, k)`` float64 through :func:`dntk.linalg.gram_eig`.

    Returns ``s2 = σ²`` (q,) descending (round-off set to 0), ``B = UΣ (n, q)`` (so ``K = GGᵀ = BBᵀ``), and the
    eigenvector basis with its side: ``U`` (``"left"``, n ≤ k) or ``V`` (``"right"``, n > k).
    """
    e = gram_eig(G)
    return e.eigenvalues, e.factor(), e.basis, e.side


def _cholesky(A: torch.Tensor, what: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise ValueError(f"Cholesky of the {what} failed (matrix not positive definite in float64); "
                         f"increase λ (lam or lam_rel).")
    return L


def ridge_weights(G, t, lam: float, solver: str = "auto", rank: int | None = None) -> torch.Tensor:
    """Ridge weights for one class (appendix §1, eqs. (16)–(17)).

    Dual ``w = Gᵀ(GGᵀ + λI)⁻¹t`` or primal ``w = (GᵀG + λI)⁻¹Gᵀt`` (equal by Woodbury), or with ``rank``
    the spectral cut-off ``w = V_r Σ_r (Σ_r² + λ)⁻¹ U_rᵀ t``. No input checking (see :class:`ClassKRR`).

    Parameters
    ----------
    G : array ``(n, k)``
        Features of one class.
    t : array ``(n,)``
        Targets.
    lam : float
        Ridge ``λ > 0``.
    solver : {"auto", "dual", "primal"}
        Cholesky of the ``n×n`` dual or the ``k×k`` primal system; ``"auto"``: dual when ``n ≤ k``.
    rank : int, optional
        Keep the top-``rank`` singular directions; ``rank ≥ min(n, k)`` is the full solve.

    Returns
    -------
    torch.Tensor
        ``w (k,)`` float64.
    """
    G = real_tensor(G, "G").to(torch.float64)
    t = real_tensor(t, "t").to(device=G.device, dtype=torch.float64).reshape(-1)
    n, k = G.shape
    if rank is not None and rank < min(n, k):
        s2, _, basis, side = _gram_eig(G)
        # left (U_r): w = Gᵀ U_r (Σ_r² + λ)^{-1} U_rᵀ t = V_r Σ_r (Σ_r² + λ)^{-1} U_rᵀ t;  right (V_r): the same
        return _weights_from_eig(G, t, lam, s2[:rank], basis[:, :rank], side)
    if solver == "auto":
        solver = "dual" if n <= k else "primal"
    if solver == "dual":
        A = G @ G.T
        A.diagonal().add_(lam)
        L = _cholesky(A, "dual system K + λI")
        alpha = torch.cholesky_solve(t[:, None], L)[:, 0]
        return G.T @ alpha
    A = G.T @ G
    A.diagonal().add_(lam)
    L = _cholesky(A, "primal system GᵀG + λI")
    return torch.cholesky_solve((G.T @ t)[:, None], L)[:, 0]


def _weights_from_eig(G, t, lam, s2, basis, side):
    """Ridge weights from the thin SVD of :func:`_gram_eig` (the same solve as eq 16/17)."""
    if side == "left":
        return G.T @ (basis @ ((basis.T @ t) / (s2 + lam)))
    return basis @ ((basis.T @ (G.T @ t)) / (s2 + lam))


def _loo_gcv_eig(t, lams, s2, B):
    n = t.shape[0]
    D = 1.0 / (s2[None, :] + lams[:, None])         # (L, q)
    Bt = B.T @ t                                    # (q,)
    fitted = (D * Bt[None, :]) @ B.T                # (L, N) = H t
    diagH = D @ (B * B).T                           # (L, N)
    resid = t[None, :] - fitted
    one_minus = 1.0 - diagH
    tiny = torch.finfo(torch.float64).eps
    loo = torch.where(one_minus > tiny, resid / one_minus.clamp_min(tiny),
                      torch.full_like(resid, float("inf")))
    dof = 1.0 - diagH.sum(1) / n
    gcv = torch.where(dof > tiny, (resid ** 2).mean(1) / dof.clamp_min(tiny) ** 2,
                      torch.full_like(dof, float("inf")))
    return loo, gcv


def loo_gcv(G, t, lams) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form leave-one-out residuals and GCV scores of ridge regression over a grid of λ (appendix §1).

    With ``H_λ = G(GᵀG + λI)⁻¹Gᵀ = K(K + λI)⁻¹`` (one :func:`dntk.linalg.gram_eig` serves every λ):

    - LOO (Allen's PRESS): ``e_i = [(I − H)t]_i / (1 − H_ii)``, equal to ``t_i`` minus the prediction of
      the model refitted without point ``i``;
    - GCV: ``(1/N)‖(I − H)t‖² / (1 − tr(H)/N)²``.

    Parameters
    ----------
    G : array ``(N, k)``
        Features of one class, one row per training point.
    t : array ``(N,)``
        Targets of those points (the residuals ``e`` are in their units).
    lams : array ``(L,)``
        Absolute ridge values.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``loo (L, N)`` residuals and ``gcv (L,)`` scores, float64.
    """
    G = real_tensor(G, "G").to(torch.float64)
    t = real_tensor(t, "t").to(device=G.device, dtype=torch.float64).reshape(-1)
    lams = real_tensor(lams, "lams").to(device=G.device, dtype=torch.float64).reshape(-1)
    s2, B, _, _ = _gram_eig(G)                     # K = B Bᵀ, B = UΣ
    return _loo_gcv_eig(t, lams, s2, B)


def default_lam(features, lam_rel: float = 1e-3) -> torch.Tensor:
    """Per-class ridge ``λ_c = lam_rel · tr(K_c)/N = lam_rel · ‖G_c‖_F²/N`` (appendix §1).

    Compute it on the uncompressed set and pass it to :meth:`ClassKRR.fit_synthetic` so that compression
    keeps the regularisation (appendix §4.3).

    Parameters
    ----------
    features : array ``(N, C, k)`` or list of ``C`` arrays ``(N_c, k)``
        Per-class features; finite, no class all zero.
    lam_rel : float
        Relative ridge ``> 0``.

    Returns
    -------
    torch.Tensor
        ``(C,)`` float64.
    """
    lam_rel = check_positive(lam_rel, "lam_rel")
    if isinstance(features, (list, tuple)):
        out = []
        for c, g in enumerate(features):
            g = real_tensor(g, f"features[{c}]")
            if g.ndim != 2 or g.shape[0] == 0:
                raise ValueError(f"features[{c}] must have shape (N_c, k) with N_c ≥ 1, got {tuple(g.shape)}.")
            check_finite(g, f"features[{c}]")
            out.append(lam_rel * g.to(torch.float64).pow(2).sum() / g.shape[0])
        lam = torch.stack(out)
    else:
        F = class_features(features)
        N, C, _ = F.shape
        lam = torch.stack([F[:, c, :].to(torch.float64).pow(2).sum() for c in range(C)]) * (lam_rel / N)
    if bool((lam <= 0).any()):
        zero = [int(c) for c in torch.nonzero(lam <= 0).reshape(-1)]
        raise ValueError(f"class(es) {zero} have all-zero features (tr K_c = 0), so λ = lam_rel·tr(K_c)/N is 0; "
                         f"pass an explicit lam.")
    return lam


# ----------------------------------------------------------------------------- the estimator
class ClassKRR:
    """Per-class kernel ridge regression on tangent features (appendix §1; paper eqs. (16)–(18)).

    Parameters
    ----------
    lam : None, float or (C,) array
        Ridge λ (absolute). ``None``: ``λ_c = lam_rel · tr(K_c)/N`` per class.
    lam_rel : float
        Relative ridge used when ``lam`` is None (and without ``select``).
    rank : int or None
        Keep the top-``rank`` singular directions of each ``G_c`` (spectral cut-off, Sec 5.2).
    center : bool
        Fit ``t − mean(t)`` per class and add the mean back at prediction.
    solver : "auto" | "dual" | "primal"
        Dual ``N×N`` or primal ``k×k`` Cholesky; ``"auto"`` takes the smaller.
    select : None | "loo" | "gcv"
        Choose ``lam_rel`` per class on ``lam_grid`` by closed-form leave-one-out or GCV.
    lam_grid : sequence of float
        ``lam_rel`` candidates for ``select`` (default :data:`DEFAULT_LAM_GRID`, 1e-8 … 1e2).

    Fitted attributes: ``weights_ (C, k)``, ``intercept_ (C,)``, ``lam_ (C,)``, ``lam_rel_ (C,)``
    (λ relative to ``tr(K_c)/N``; NaN after :meth:`fit_synthetic`), ``solver_`` (``"dual"``, ``"primal"``,
    ``"svd"`` for a rank cut-off, ``"eigh"`` with ``select`` — the eigendecomposition that scored the grid
    also gives the final weights —, ``"synthetic"``), ``n_features_in_``,
    ``n_classes_``, ``n_samples_fit_``; with ``select``: ``lam_grid_ (L,)``, ``cv_scores_ (C, L)``
    (mean squared LOO residual or GCV) and ``loo_residuals_ (N, C)`` at the chosen λ. All float64 tensors.
    """

    def __init__(self, lam=None, lam_rel: float = 1e-3, rank: int | None = None, center: bool = False,
                 solver: str = "auto", select: str | None = None, lam_grid: Sequence[float] | None = None):
        self.lam = lam
        self.lam_rel = lam_rel
        self.rank = rank
        self.center = center
        self.solver = solver
        self.select = select
        self.lam_grid = lam_grid
        self._check_params()

    def __repr__(self) -> str:
        keys = ("lam", "lam_rel", "rank", "center", "solver", "select")
        return "ClassKRR(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"

    # -- parameters
    def _check_params(self) -> None:
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}.")
        if self.select not in _SELECT:
            raise ValueError(f"select must be one of {_SELECT}, got {self.select!r}.")
        check_positive(self.lam_rel, "lam_rel")
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, numbers.Integral) or self.rank < 1:
                raise ValueError(f"rank must be a positive integer or None, got {self.rank!r}.")
        if not isinstance(self.center, (bool, np.bool_)):
            raise TypeError(f"center must be True or False, got {self.center!r}.")
        if self.lam is not None and not isinstance(self.lam, bool) and isinstance(self.lam, numbers.Real):
            check_positive(self.lam, "lam")
        if self.select is not None:
            if self.lam is not None:
                raise ValueError("give either lam (a fixed λ) or select='loo'/'gcv' (λ chosen on lam_grid), not both.")
            if self.rank is not None:
                raise ValueError("select='loo'/'gcv' is closed-form only for the full-rank solve; use rank=None, "
                                 "or pick λ for the rank-r model by an explicit validation loop.")
        if self.lam_grid is not None:
            grid = np.asarray(self.lam_grid, dtype=np.float64).reshape(-1)
            if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
                raise ValueError(f"lam_grid must be a non-empty list of finite values > 0, got {self.lam_grid!r}.")

    # -- fitting
    def fit(self, features, targets) -> "ClassKRR":
        """Fit per-class KRR (appendix §1, eqs. (16)–(17)).

        Parameters
        ----------
        features : array ``(N, C, k)``
            Per-class features ``G_c``; finite.
        targets : array ``(N, C)``
            Targets ``t_c`` (e.g. the network's logits); finite.

        Returns
        -------
        ClassKRR
            ``self``, fitted (see the class docstring for the attributes).
        """
        self._check_params()
        F = class_features(features, finite=False)     # checked per class below, without an extra pass
        N, C, k = F.shape
        T = real_tensor(targets, "targets")
        if T.ndim != 2 or T.shape[0] != N or T.shape[1] != C:
            raise ValueError(f"targets must have shape (N, C) = ({N}, {C}) to match features {tuple(F.shape)}, "
                             f"got {tuple(T.shape)}.")
        check_finite(T, "targets")
        dev = F.device
        T = T.to(device=dev, dtype=torch.float64)
        intercept = T.mean(0) if self.center else torch.zeros(C, dtype=torch.float64, device=dev)
        T = T - intercept
        fixed = None if self.lam is None else per_class_positive(self.lam, C, "lam", dev)
        if self.select is not None:
            grid = torch.tensor(self.lam_grid if self.lam_grid is not None else DEFAULT_LAM_GRID,
                                dtype=torch.float64, device=dev).reshape(-1)
            scores = torch.empty(C, grid.numel(), dtype=torch.float64, device=dev)
            loo_res = torch.empty(N, C, dtype=torch.float64, device=dev)

        W = torch.empty(C, k, dtype=torch.float64, device=dev)
        lam = torch.empty(C, dtype=torch.float64, device=dev)
        scale = torch.empty(C, dtype=torch.float64, device=dev)
        for c in range(C):
            G = F[:, c, :].to(torch.float64)                 # one float64 copy per class
            sq = torch.dot(G.reshape(-1), G.reshape(-1))     # tr(K_c); non-finite iff G holds NaN/inf
            if not bool(torch.isfinite(sq)):
                check_finite(F, "features")
                raise ValueError("features hold values too large to square in float64; rescale them.")
            scale[c] = sq / N
            if fixed is None and float(sq) <= 0:
                raise ValueError(f"class {c} has all-zero features (tr K_c = 0), so λ = lam_rel·tr(K_c)/N is 0; "
                                 f"pass an explicit lam.")
            if self.select is not None:       # one eigendecomposition per class: the grid and the final fit
                s2, B, basis, side = _gram_eig(G)
                loo, gcv = _loo_gcv_eig(T[:, c], grid * scale[c], s2, B)
                scores[c] = (loo ** 2).mean(1) if self.select == "loo" else gcv
                best = int(torch.argmin(scores[c]))
                lam[c] = grid[best] * scale[c]
                loo_res[:, c] = loo[best]
                W[c] = _weights_from_eig(G, T[:, c], float(lam[c]), s2, basis, side)
            else:
                lam[c] = fixed[c] if fixed is not None else self.lam_rel * scale[c]
                W[c] = ridge_weights(G, T[:, c], float(lam[c]), self.solver, self.rank)
            del G

        if self.select is not None:
            solver = "eigh"
            self.lam_grid_, self.cv_scores_, self.loo_residuals_ = grid, scores, loo_res
        else:
            solver = ("svd" if self.rank is not None and self.rank < min(N, k)
                      else self.solver if self.solver != "auto" else ("dual" if N <= k else "primal"))
            for name in ("lam_grid_", "cv_scores_", "loo_residuals_"):
                self.__dict__.pop(name, None)
        self.weights_, self.intercept_, self.lam_ = W, intercept, lam
        self.lam_rel_ = torch.where(scale > 0, lam / scale, torch.full_like(lam, float("nan")))
        self.solver_, self.n_features_in_, self.n_classes_, self.n_samples_fit_ = solver, k, C, N
        return self

    def fit_synthetic(self, features, targets, lam=None, intercept=None) -> "ClassKRR":
        """Fit on a compressed (synthetic) set, one per class (appendix §4.3).

        Solves ``w_c = (G_synᵀ G_syn + λ_c I)⁻¹ G_synᵀ t_syn`` with ``λ_c`` of the uncompressed set.

        Parameters
        ----------
        features : list of ``C`` arrays ``(m_c, k)``, or one ``(C, m, k)`` array
            Compressed gradients ``G_syn,c``.
        targets : list of ``C`` arrays ``(m_c,)``, or one ``(C, m)`` array
            Their targets ``t_syn,c``.
        lam : float or array ``(C,)``, optional
            Per-class ridge, normally :func:`default_lam` of the *uncompressed* features (default: the
            constructor's ``lam``).
        intercept : array ``(C,)``, optional
            Added back at prediction (the mean removed from the uncompressed targets).

        Returns
        -------
        ClassKRR
            ``self``, fitted.
        """
        self._check_params()
        if self.select is not None:
            raise ValueError("fit_synthetic takes λ from the uncompressed set; select='loo'/'gcv' is not available "
                             "here (choose λ with fit on the uncompressed features, then pass lam_).")
        if self.center:
            raise ValueError("center=True cannot be applied to synthetic targets t_syn = Vᵀt (their mean is not the "
                             "targets' mean); centre the uncompressed targets before distilling and pass their "
                             "mean as intercept=.")
        feats = self._class_list(features, "features", 2)
        targs = self._class_list(targets, "targets", 1)
        C = len(feats)
        if len(targs) != C:
            raise ValueError(f"features has {C} classes but targets has {len(targs)}; give one entry per class.")
        k = int(feats[0].shape[1])
        for c in range(C):
            if feats[c].shape[0] == 0:
                raise ValueError(f"class {c} has no synthetic gradients (features[{c}] has 0 rows); "
                                 f"every class needs at least one.")
            if feats[c].shape[1] != k:
                raise ValueError(f"features[{c}] has width {feats[c].shape[1]} but features[0] has {k}; "
                                 f"all classes must use the same projection.")
            if targs[c].shape[0] != feats[c].shape[0]:
                raise ValueError(f"targets[{c}] has {targs[c].shape[0]} entries but features[{c}] has "
                                 f"{feats[c].shape[0]} rows.")
        dev = feats[0].device
        if lam is None:
            lam = self.lam
        if lam is None:
            raise ValueError("fit_synthetic needs λ from the uncompressed set: pass lam=default_lam(features_full, "
                             "lam_rel) (appendix §4.3) or construct ClassKRR(lam=...).")
        lam = per_class_positive(lam, C, "lam", dev)
        if intercept is None:
            b = torch.zeros(C, dtype=torch.float64, device=dev)
        else:
            b = real_tensor(intercept, "intercept").to(device=dev, dtype=torch.float64).reshape(-1)
            if b.numel() != C:
                raise ValueError(f"intercept must have one value per class (C={C}), got {b.numel()}.")
            check_finite(b, "intercept")
        W = torch.empty(C, k, dtype=torch.float64, device=dev)
        for c in range(C):
            W[c] = ridge_weights(feats[c].to(device=dev, dtype=torch.float64),
                                 targs[c].to(device=dev), float(lam[c]), self.solver, self.rank)
        self.weights_, self.intercept_, self.lam_ = W, b, lam
        self.lam_rel_ = torch.full((C,), float("nan"), dtype=torch.float64, device=dev)
        self.solver_ = "synthetic"
        self.n_features_in_, self.n_classes_ = k, C
        self.n_samples_fit_ = tuple(int(f.shape[0]) for f in feats)
        for name in ("lam_grid_", "cv_scores_", "loo_residuals_"):
            self.__dict__.pop(name, None)
        return self

    @staticmethod
    def _class_list(x, name: str, ndim: int) -> list[torch.Tensor]:
        if isinstance(x, (list, tuple)):
            items = [real_tensor(v, f"{name}[{c}]") for c, v in enumerate(x)]
        else:
            x = real_tensor(x, name)
            if x.ndim != ndim + 1:
                raise ValueError(f"{name} must be a list of C arrays of {ndim} dimension(s) or one array with "
                                 f"{ndim + 1} dimensions (classes first), got shape {tuple(x.shape)}.")
            items = list(x)
        if not items:
            raise ValueError(f"{name} is empty; give one entry per class.")
        for c, v in enumerate(items):
            if ndim == 1:
                if v.ndim == 2 and v.shape[1] == 1:
                    v = items[c] = v.reshape(-1)
            if v.ndim != ndim:
                shape = "(m_c, k)" if ndim == 2 else "(m_c,)"
                raise ValueError(f"{name}[{c}] must have shape {shape}, got {tuple(v.shape)}.")
            check_finite(v, f"{name}[{c}]")
        return items

    # -- prediction
    def predict(self, features):
        """Predictions ``f̂_c(x) = g_c(x)ᵀ w_c + b_c`` (appendix eq. (18)).

        Parameters
        ----------
        features : array ``(M, C, k)``
            Test features, from the same model and projector as the fit.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            ``(M, C)`` float64; a numpy array when ``features`` is one.
        """
        if not hasattr(self, "weights_"):
            raise ValueError("this ClassKRR is not fitted yet; call fit(features, targets) or fit_synthetic(...) first.")
        was_numpy = isinstance(features, np.ndarray)
        F = class_features(features, finite=False)
        M, C, k = F.shape
        if C != self.n_classes_ or k != self.n_features_in_:
            raise ValueError(f"features have C={C} classes and width k={k}, but the model was fitted with "
                             f"C={self.n_classes_}, k={self.n_features_in_}; use the same model and projector.")
        W = self.weights_.to(F.device)
        out = torch.empty(M, C, dtype=torch.float64, device=F.device)
        for c in range(C):
            out[:, c] = F[:, c, :].to(torch.float64) @ W[c]
        if not bool(torch.isfinite(out).all()):      # NaN/inf in a feature row always reaches its output
            check_finite(F, "features")
            raise ValueError("predictions overflowed float64; rescale the features.")
        out += self.intercept_.to(F.device)
        return out.cpu().numpy() if was_numpy else out
