"""Metrics for kernel models of a network (appendix §1) and for compressed gradient sets (appendix §4.3, eq. (10)).

Prediction metrics take ``pred (N, C)`` (e.g. :meth:`dntk.krr.ClassKRR.predict`) and either the labels
``(N,)`` or the network's logits ``(N, C)``; they return Python floats. Subspace metrics compare a
class's features ``G (N, k)`` with a compressed set ``G_syn (m, k)`` through an orthonormal basis of
``row(G_syn)`` from a float64 SVD; given ``(N, C, k)`` features and a list of ``C`` synthetic sets they
return a ``(C,)`` float64 tensor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._common import check_finite, real_tensor

__all__ = ["accuracy", "fidelity", "logit_r2", "relative_logit_error", "row_space_basis",
           "coverage", "nystrom_error", "Report", "report"]


def _tensor(x, name: str) -> torch.Tensor:
    t = real_tensor(x, name)
    check_finite(t, name)
    return t.cpu()


def _pred(pred, name: str = "pred") -> torch.Tensor:
    p = _tensor(pred, name)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, C) with N, C ≥ 1, got {tuple(p.shape)}.")
    return p


def _pair(pred, net_logits) -> tuple[torch.Tensor, torch.Tensor]:
    p, f = _pred(pred), _pred(net_logits, "net_logits")
    if p.shape != f.shape:
        raise ValueError(f"pred {tuple(p.shape)} and net_logits {tuple(f.shape)} must have the same shape (N, C).")
    return p.to(torch.float64), f.to(torch.float64)


def accuracy(pred, labels) -> float:
    """Test accuracy ``mean_i [argmax_c pred_ic = y_i]`` (appendix §1).

    Parameters
    ----------
    pred : array ``(N, C)``
        Predictions (scores per class).
    labels : array ``(N,)``
        Integer class indices in ``[0, C)`` (integer-valued floats are accepted).

    Returns
    -------
    float
    """
    p = _pred(pred)
    y = _tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({p.shape[0]},) to match pred, got {tuple(y.shape)}.")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError("labels must be integer class indices; got non-integer values "
                             "(pass net logits to fidelity instead).")
        y = y.to(torch.int64)
    if bool((y < 0).any()) or bool((y >= p.shape[1]).any()):
        raise ValueError(f"labels must lie in [0, {p.shape[1]}) for pred with C={p.shape[1]} columns.")
    return float((p.argmax(1) == y).to(torch.float64).mean())


def fidelity(pred, net_logits) -> float:
    """Fidelity, the agreement with the network ``mean_i [argmax pred_i = argmax f(x_i; θ)]`` (appendix §1).

    Parameters
    ----------
    pred : array ``(N, C)``
        Predictions of a kernel model.
    net_logits : array ``(N, C)``
        The network's logits at the same points.

    Returns
    -------
    float
    """
    p, f = _pair(pred, net_logits)
    return float((p.argmax(1) == f.argmax(1)).to(torch.float64).mean())


def logit_r2(pred, net_logits) -> float:
    """Coefficient of determination of the logits, pooled over classes (appendix §1).

    ``1 − Σ_{i,c}(f̂_ic − f_ic)² / Σ_{i,c}(f_ic − f̄_c)²`` with ``f̄_c`` the mean logit of class ``c``
    (scikit-learn's ``r2_score(..., multioutput="variance_weighted")``).

    Parameters
    ----------
    pred : array ``(N, C)``
        Predicted logits.
    net_logits : array ``(N, C)``
        The network's logits; ``ValueError`` if they are constant within every class.

    Returns
    -------
    float
    """
    p, f = _pair(pred, net_logits)
    sst = (f - f.mean(0)).pow(2).sum()
    if float(sst) == 0.0:
        raise ValueError("net_logits are constant within every class, so R² is undefined; "
                         "use relative_logit_error instead.")
    return float(1.0 - (p - f).pow(2).sum() / sst)


def relative_logit_error(pred, net_logits) -> float:
    """Relative logit error ``‖f̂ − f‖_F / ‖f‖_F`` over all points and classes (appendix §1).

    Parameters
    ----------
    pred : array ``(N, C)``
        Predicted logits ``f̂``.
    net_logits : array ``(N, C)``
        The network's logits ``f``, not all zero.

    Returns
    -------
    float
    """
    p, f = _pair(pred, net_logits)
    nf = torch.linalg.norm(f)
    if float(nf) == 0.0:
        raise ValueError("net_logits are all zero, so the relative error is undefined.")
    return float(torch.linalg.norm(p - f) / nf)


# ----------------------------------------------------------------------------- subspace metrics
def row_space_basis(G_syn, rtol: float | None = None) -> torch.Tensor:
    """Orthonormal basis of the row space of a compressed set, from a float64 SVD (appendix §3 eq. (3)).

    Parameters
    ----------
    G_syn : array ``(m, k)``
        Compressed gradients.
    rtol : float, optional
        Singular values ``≤ rtol·σ_max`` are dropped (default ``max(m, k)·eps``, numpy's ``matrix_rank``
        rule on singular values).

    Returns
    -------
    torch.Tensor
        ``Q (k, r)`` float64 with orthonormal columns; ``r = 0`` for an empty or all-zero ``G_syn``.
    """
    S = _tensor(G_syn, "G_syn")
    if S.ndim != 2:
        raise ValueError(f"G_syn must have shape (m, k), got {tuple(S.shape)}.")
    S = S.to(torch.float64)
    m, k = S.shape
    if m == 0:
        return torch.zeros(k, 0, dtype=torch.float64)
    _, s, Vh = torch.linalg.svd(S, full_matrices=False)
    if rtol is None:
        rtol = max(m, k) * torch.finfo(torch.float64).eps
    if not np.isfinite(rtol) or rtol < 0:
        raise ValueError(f"rtol must be a finite number ≥ 0, got {rtol}.")
    keep = s > rtol * s[0] if s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    return Vh[keep].T.contiguous()


def _projection_parts(G, G_syn, rtol):
    A = _tensor(G, "G")
    if A.ndim != 2 or A.shape[0] == 0:
        raise ValueError(f"G must have shape (N, k) with N ≥ 1, got {tuple(A.shape)}.")
    A = A.to(torch.float64)
    Q = row_space_basis(G_syn, rtol)
    if Q.shape[0] != A.shape[1]:
        raise ValueError(f"G has width k={A.shape[1]} but G_syn has width {Q.shape[0]}; both must live in the "
                         f"same feature space (same projector).")
    total = A.pow(2).sum()
    if float(total) == 0.0:
        raise ValueError("G is all zeros, so relative coverage is undefined.")
    AQ = A @ Q
    return A, Q, AQ, total


def _per_class(fn, G, G_syn, rtol):
    A = _tensor(G, "G")
    if A.ndim == 2:
        return fn(A, G_syn, rtol)
    if A.ndim != 3:
        raise ValueError(f"G must have shape (N, k), or (N, C, k) with a list of C synthetic sets; got {tuple(A.shape)}.")
    C = A.shape[1]
    if not isinstance(G_syn, (list, tuple)) and not (hasattr(G_syn, "ndim") and G_syn.ndim == 3):
        raise ValueError("with G of shape (N, C, k), G_syn must be a list of C arrays (m_c, k) or one (C, m, k) array.")
    if len(G_syn) != C:
        raise ValueError(f"G has C={C} classes but G_syn has {len(G_syn)} entries.")
    return torch.tensor([fn(A[:, c, :], G_syn[c], rtol) for c in range(C)], dtype=torch.float64)


def _coverage2(G, G_syn, rtol):
    _, _, AQ, total = _projection_parts(G, G_syn, rtol)
    return float(AQ.pow(2).sum() / total)


def _nystrom2(G, G_syn, rtol):
    A, Q, AQ, total = _projection_parts(G, G_syn, rtol)
    return float((A - AQ @ Q.T).pow(2).sum() / total)


def coverage(G, G_syn, rtol: float | None = None):
    """Subspace coverage ``‖G Π‖_F² / ‖G‖_F²``, ``Π`` the orthogonal projector onto ``row(G_syn)`` (appendix §4.3).

    Parameters
    ----------
    G : array ``(N, k)`` or ``(N, C, k)``
        Uncompressed features of one class, or of every class.
    G_syn : array ``(m, k)``, or a list of ``C`` arrays ``(m_c, k)`` / one ``(C, m, k)`` array
        The compressed set(s), in the same feature space.
    rtol : float, optional
        Rank cut-off of :func:`row_space_basis`.

    Returns
    -------
    float or torch.Tensor
        A float in ``[0, 1]`` for one class, a ``(C,)`` float64 tensor for ``(N, C, k)`` features.
    """
    return _per_class(_coverage2, G, G_syn, rtol)


def nystrom_error(G, G_syn, rtol: float | None = None):
    """Relative Nyström error ``‖G(I − Π)‖_F² / ‖G‖_F² = tr(K − K_Π)/tr(K)`` (appendix §3 eq. (10), §4.3).

    Computed from the residual ``G − GQQᵀ`` directly (not as ``1 − coverage``) so small errors keep
    their relative accuracy.

    Parameters
    ----------
    G, G_syn, rtol
        As in :func:`coverage`.

    Returns
    -------
    float or torch.Tensor
        A float in ``[0, 1]`` for one class, a ``(C,)`` float64 tensor for ``(N, C, k)`` features.
    """
    return _per_class(_nystrom2, G, G_syn, rtol)


# ----------------------------------------------------------------------------- one report
@dataclass(frozen=True)
class Report:
    """The prediction metrics of one kernel model on one test set (appendix §1); ``None`` where not asked.

    Attributes
    ----------
    accuracy : float or None
        :func:`accuracy` against the labels.
    fidelity : float or None
        :func:`fidelity`, agreement with the network's argmax.
    logit_r2 : float or None
        :func:`logit_r2` against the network's logits (``None`` when they are constant in every class).
    relative_logit_error : float or None
        :func:`relative_logit_error` against the network's logits.
    """

    accuracy: float | None = None
    fidelity: float | None = None
    logit_r2: float | None = None
    relative_logit_error: float | None = None

    def as_dict(self) -> dict:
        """The metrics as a plain ``{name: value}`` dict (for JSON and tables)."""
        return asdict(self)


def report(pred, labels=None, net_logits=None) -> Report:
    """Every prediction metric of ``pred`` that the given references allow.

    Parameters
    ----------
    pred : array ``(N, C)``
        A kernel model's predictions (e.g. :meth:`dntk.krr.ClassKRR.predict`).
    labels : array ``(N,)``, optional
        Integer labels: gives ``accuracy``.
    net_logits : array ``(N, C)``, optional
        The network's logits at the same points: gives ``fidelity``, ``logit_r2`` and
        ``relative_logit_error``.

    Returns
    -------
    Report
        Frozen; ``None`` for the metrics whose reference was not given.
    """
    if labels is None and net_logits is None:
        raise ValueError("report needs labels (for accuracy) or net_logits (for fidelity and the logit errors), "
                         "or both.")
    out = {}
    if labels is not None:
        out["accuracy"] = accuracy(pred, labels)
    if net_logits is not None:
        out["fidelity"] = fidelity(pred, net_logits)
        f = _pred(net_logits, "net_logits").to(torch.float64)
        out["logit_r2"] = logit_r2(pred, net_logits) if float((f - f.mean(0)).pow(2).sum()) > 0 else None
        out["relative_logit_error"] = relative_logit_error(pred, net_logits)
    return Report(**out)
