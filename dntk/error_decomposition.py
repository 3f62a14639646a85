"""The error decomposition of Prop B.3 (appendix §5; paper App B): where a KRR prediction's error comes from.

For a target function ``f`` (the network's logits), its best linear predictor in the tangent features
``f*`` (the population least-squares fit), the population ridge solution ``f_λ`` and the ridge estimate
``f̂`` from ``N`` training points,

    ``f − f̂ = (f − f*) + (f* − f_λ) + (f_λ − f̂)``
    (approximation: the nonlinearity; bias: the regularisation; variance: the finite sample).

A finite pool of points stands in for the population: :class:`ErrorDecomposer` factorises the pool once
(one thin SVD per class) and :meth:`ErrorDecomposer.decompose` evaluates the three terms for any training
draw and ridge; :func:`error_decomposition` does both in one call. The ridge fits are
:func:`dntk.krr.ridge_weights`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._common import check_finite, class_features, per_class_positive, real_tensor
from .krr import ridge_weights

__all__ = ["ErrorDecomposition", "ErrorDecomposer", "error_decomposition"]


def _difference(minuend: str, subtrahend: str, doc: str) -> property:
    """A read-only attribute ``self.<minuend> − self.<subtrahend>``, documented by `doc`."""
    return property(lambda self: getattr(self, minuend) - getattr(self, subtrahend), doc=doc)


@dataclass(frozen=True)
class ErrorDecomposition:
    """The three terms of Prop B.3 at the evaluation points, float64.

    ``total = target − f_hat = approximation + bias + variance`` with ``approximation = f − f*``
    (nonlinearity), ``bias = f* − f_λ`` (regularisation), ``variance = f_λ − f̂`` (finite sample).
    ``target``, ``f_star``, ``f_lam`` are ``(n_eval, C)``; ``f_hat`` (and so ``variance``, ``total``) is
    ``(n_eval, C)`` for one training set or ``(D, n_eval, C)`` for ``D`` draws of it.
    """

    target: torch.Tensor
    f_star: torch.Tensor
    f_lam: torch.Tensor
    f_hat: torch.Tensor
    lam_pop: torch.Tensor

    approximation = _difference("target", "f_star", "``f − f*`` (the nonlinearity), ``(n_eval, C)``.")
    bias = _difference("f_star", "f_lam", "``f* − f_λ`` (the regularisation), ``(n_eval, C)``.")
    variance = _difference("f_lam", "f_hat", "``f_λ − f̂`` (the finite sample), shaped like ``f_hat``.")
    total = _difference("target", "f_hat", "``f − f̂``, shaped like ``f_hat``.")

    def mean_squares(self) -> dict[str, float]:
        """Mean over points, classes (and training draws) of each term squared, plus the total error."""
        return {name: float(getattr(self, name).pow(2).mean())
                for name in ("approximation", "bias", "variance", "total")}


class ErrorDecomposer:
    """Prop B.3 on a fixed pool: factorise once, then :meth:`decompose` for any training draw and λ (appendix §5).

    A pool ``(n, C, k)`` of gradient features with targets ``(n, C)`` stands in for the population.
    One thin SVD per class ``G_c = UΣVᵀ`` (float64) gives

    - ``f*``: least squares on the pool, ``w* = VΣ^+Uᵀt = Σ_pop^+ E[g f]`` (singular values below
      ``max(n, k)·eps·σ_max`` dropped, as ``numpy.linalg.lstsq``);
    - ``f_λ``: population ridge ``w_λ = (Σ_pop + λ_pop I)^{-1} E[g f]`` with ``Σ_pop = GᵀG/n``, i.e. KRR on
      the pool with ``λ = n·λ_pop``: ``w_λ = V Σ(Σ² + nλ_pop)^{-1} Uᵀt``;

    and :meth:`decompose` adds ``f̂``, the same ridge estimated from ``N`` pool points,
    ``(Σ̂ + λ_pop I)^{-1}Gᵀt/N`` — KRR on those points with ``λ = N·λ_pop``.

    Parameters
    ----------
    pool_features : array ``(n, C, k)``
        Gradient features of the pool (the stand-in population); finite.
    pool_targets : array ``(n, C)``
        The target function at the pool (the network's logits); finite.
    eval_index : array ``(n_eval,)`` of int, optional
        Pool points where the terms are evaluated (default: all).
    center : bool
        Subtract the pool (population) mean of the targets first, as App B assumes.
    """

    def __init__(self, pool_features, pool_targets, eval_index=None, center: bool = True):
        F = class_features(pool_features, "pool_features")
        n, C, k = F.shape
        T = real_tensor(pool_targets, "pool_targets")
        if T.ndim != 2 or tuple(T.shape) != (n, C):
            raise ValueError(f"pool_targets must have shape (n, C) = ({n}, {C}) to match pool_features, "
                             f"got {tuple(T.shape)}.")
        check_finite(T, "pool_targets")
        dev = F.device
        T = T.to(device=dev, dtype=torch.float64)
        if center:
            T = T - T.mean(0)
        self.features, self.targets, self.n, self.n_classes = F, T, n, C
        self.eval_index = (torch.arange(n, device=dev) if eval_index is None
                           else self._index(eval_index, "eval_index", 1).reshape(-1))
        ev = self.eval_index
        eps = torch.finfo(torch.float64).eps
        self.f_star = torch.empty(ev.numel(), C, dtype=torch.float64, device=dev)
        self._svd = []
        for c in range(C):
            G = F[:, c, :].to(torch.float64)
            U, S, Vh = torch.linalg.svd(G, full_matrices=False)
            Ut = U.T @ T[:, c]
            keep = S > max(n, k) * eps * S[0]
            w_star = Vh[keep].T @ (Ut[keep] / S[keep])
            self.f_star[:, c] = G[ev] @ w_star
            self._svd.append((S, Vh, Ut, G[ev]))

    def _index(self, ix, name, max_dim):
        ix = torch.as_tensor(np.asarray(ix)) if isinstance(ix, (list, tuple, range)) else real_tensor(ix, name)
        if ix.is_floating_point() or ix.numel() == 0 or ix.ndim > max_dim:
            shape = "(N,) or (D, N)" if max_dim == 2 else "(n_eval,)"
            raise ValueError(f"{name} must be a non-empty integer index array of shape {shape} into the pool.")
        ix = ix.to(torch.int64)
        if bool((ix < 0).any()) or bool((ix >= self.n).any()):
            raise ValueError(f"{name} has indices outside [0, {self.n}).")
        return ix.to(self.features.device)

    def decompose(self, train_index, lam_pop) -> ErrorDecomposition:
        """The three terms of Prop B.3 for one or several training draws (appendix §5).

        Parameters
        ----------
        train_index : array ``(N,)`` or ``(D, N)`` of int
            Pool indices of one training set, or of ``D`` random draws (the variance term is then averaged
            over them by :meth:`ErrorDecomposition.mean_squares`).
        lam_pop : float or array ``(C,)``
            Population ridge ``λ_pop > 0``; the sample fit uses ``λ = N·λ_pop``.

        Returns
        -------
        ErrorDecomposition
        """
        tr = self._index(train_index, "train_index", 2)
        single = tr.ndim <= 1
        tr = tr.reshape(1, -1) if single else tr
        C, n = self.n_classes, self.n
        lam_pop = per_class_positive(lam_pop, C, "lam_pop", self.features.device)
        D, N = tr.shape
        f_lam = torch.empty_like(self.f_star)
        f_hat = torch.empty(D, *self.f_star.shape, dtype=torch.float64, device=self.f_star.device)
        for c in range(C):
            S, Vh, Ut, Gev = self._svd[c]
            lam = float(lam_pop[c])
            f_lam[:, c] = Gev @ (Vh.T @ (Ut * S / (S * S + n * lam)))
            G = self.features[:, c, :]
            for d in range(D):
                rows = tr[d]
                f_hat[d, :, c] = Gev @ ridge_weights(G[rows].to(torch.float64), self.targets[rows, c], N * lam)
        return ErrorDecomposition(target=self.targets[self.eval_index], f_star=self.f_star, f_lam=f_lam,
                                  f_hat=f_hat[0] if single else f_hat, lam_pop=lam_pop)


def error_decomposition(pool_features, pool_targets, train_index, lam_pop, eval_index=None,
                        center: bool = True) -> ErrorDecomposition:
    """Prop B.3's decomposition ``f − f̂ = (f − f*) + (f* − f_λ) + (f_λ − f̂)`` (appendix §5), in one call.

    Parameters
    ----------
    pool_features, pool_targets, eval_index, center
        As in :class:`ErrorDecomposer` (use that class to reuse the pool's factorisation across several
        training draws and λ values).
    train_index, lam_pop
        As in :meth:`ErrorDecomposer.decompose`.

    Returns
    -------
    ErrorDecomposition
    """
    return ErrorDecomposer(pool_features, pool_targets, eval_index, center).decompose(train_index, lam_pop)
