"""What a cheap NTK is for: predictive uncertainty, out-of-distribution scores and calibration.

Kernel ridge regression with the class kernel ``k_c(x, x') = g̃_c(x)ᵀ g̃_c(x')`` (projected logit gradients,
appendix §0, §4.2) is the posterior mean of a Gaussian process; the same factorisation gives its posterior
variance (appendix §8):

``σ²_c(x) = k_c(x, x) − k_c(x, S)(K_c + λI)⁻¹ k_c(S, x)``,

where ``S`` is any *compressed set* of feature rows per class: the projected gradients of real points (the
whole training set, or a WMDD-distilled set) or Algorithm 1's synthetic gradients ``G_syn = VᵀG̃_c`` —
the same formula with ``S`` their rows. In feature space, with ``S_c (m, k)`` the rows,
``σ²_c(x) = g̃ᵀg̃ − g̃ᵀS_cᵀ(S_cS_cᵀ + λI)⁻¹S_c g̃ = λ·g̃ᵀ(S_cᵀS_c + λI)⁻¹g̃`` (Woodbury), so the
``m×m`` (dual) or ``k×k`` (primal) Cholesky factor, whichever is smaller, serves every test point; nothing
of size ``N×N`` is formed when ``k < m``. A point whose gradients the compressed set does not span has
a large variance: ``−Σ_c σ²_c(x)`` (or its share of ``Σ_c k_c(x, x)``) is an out-of-distribution score.

Next to it, the usual scores computed from the same network (higher = more in-distribution for every score
here): maximum softmax probability (MSP), the energy score ``T·logsumexp(f/T)`` and GradNorm (Huang et al.
2021). Calibration: expected calibration error and the reliability diagram it summarises, temperature
scaling fitted by negative log-likelihood, and the softmax of any logits (the network's, or the KRR's
predictions of them). Detection metrics: AUROC and the false-positive rate at 95% true-positive rate, with
the in-distribution set as the positive class.

A :class:`CompressedSet` carries the :class:`Fingerprint` of the model and projector its rows came from;
scoring features with another fingerprint raises ``ValueError``, because a kernel between gradients of
different networks, or sketched by different projections, is meaningless.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _common

__all__ = [
    "Fingerprint", "fingerprint", "CompressedSet", "KernelPosterior", "OOD_SCORES",
    "softmax", "max_softmax", "energy", "gradnorm", "fit_temperature", "negative_log_likelihood",
    "Reliability", "reliability", "expected_calibration_error",
    "auroc", "fpr_at_tpr", "detection_metrics",
]

#: Kernel OOD scores of :meth:`KernelPosterior.score`.
OOD_SCORES = ("variance", "relative")
#: Projector attributes that hold a ``make()`` option under another name.
_OPTION_ATTRIBUTES = {"factors": "factor_kind"}
#: Test points per block when applying a factorisation (bounds the working memory).
_CHUNK = 4096


# ============================================================================ input checks
def _tensor(x, name: str, ndim: int | None = None, allow_empty: bool = False) -> torch.Tensor:
    """``x`` as a real, finite tensor with ``ndim`` axes (and at least one entry unless ``allow_empty``)."""
    x = _common.real_tensor(x, name)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}.")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); it needs at least one entry.")
    _common.check_finite(x, name)
    return x


def _labels(labels, n: int, C: int | None = None) -> torch.Tensor:
    y = _tensor(labels, "labels", ndim=1)
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise TypeError("labels must be integer class indices, got non-integer values.")
    y = y.to(torch.int64)
    if y.numel() != n:
        raise ValueError(f"labels has {y.numel()} entries but there are {n} predictions; give one label per row.")
    if bool((y < 0).any()) or (C is not None and bool((y >= C).any())):
        raise ValueError(f"labels must lie in [0, {C}), got values from {int(y.min())} to {int(y.max())}.")
    return y


def _logits(logits, name: str = "logits") -> torch.Tensor:
    z = _tensor(logits, name, ndim=2)
    if z.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, C) with C ≥ 2 classes, got {tuple(z.shape)}.")
    return z.to(torch.float64)


# ============================================================================ fingerprints
@dataclass(frozen=True)
class Fingerprint:
    """Identity of a feature map ``x ↦ g̃_c(x)``: the projector's settings and the model's weights.

    projector: sorted ``(name, value)`` pairs — ``kind``, ``dim`` (k), ``seed`` and the options that change
        ``R`` (``tile_rows``, ``density``, ``k_out``/``k_in``/``factors``); ``(("kind", "none"), ("dim", P))``
        for unprojected gradients.
    model: SHA-256 of the model's ``state_dict`` (every parameter and buffer; :func:`dntk.store.content_hash`).
    """

    projector: tuple
    model: str

    def describe(self) -> str:
        """One line: ``gaussian k=256 seed=0, model 1a2b3c4d…``."""
        d = dict(self.projector)
        extra = " ".join(f"{k}={v}" for k, v in self.projector if k not in ("kind", "dim", "seed"))
        seed = f" seed={d['seed']}" if "seed" in d else ""
        return f"{d.get('kind')} k={d.get('dim')}{seed}{' ' + extra if extra else ''}, model {self.model[:12]}…"

    def require(self, other, what: str = "these features") -> None:
        """Raise ``ValueError`` saying what differs unless ``other`` equals this fingerprint."""
        if not isinstance(other, Fingerprint):
            raise TypeError(f"fingerprint must be a dntk.uncertainty.Fingerprint (from fingerprint(model, projector)),"
                            f" got {type(other).__name__}.")
        if other == self:
            return
        problems = []
        mine, theirs = dict(self.projector), dict(other.projector)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                problems.append(f"projector {key} {theirs.get(key)!r} vs {mine.get(key)!r}")
        if other.model != self.model:
            problems.append(f"model weights {other.model[:12]}… vs {self.model[:12]}…")
        raise ValueError(f"{what} come from a different feature map than the compressed set "
                         f"({'; '.join(problems)}): recompute them with the same model and projector "
                         f"(dntk.projection.make with the same kind, dim and seed).")


def fingerprint(model: nn.Module, projector=None) -> Fingerprint:
    """The identity of the features ``dntk.tangent.class_gradients(model, ·, projector)``.

    Parameters
    ----------
    model : torch.nn.Module
        The network whose logit gradients are the features; every parameter and buffer is hashed.
    projector : Projector or None
        From :func:`dntk.projection.make`; ``None`` for unprojected gradients (width ``P``).

    Returns
    -------
    Fingerprint
        Compare two with ``==``, or :meth:`Fingerprint.require` for an error that says what differs.
    """
    from .store import content_hash
    from .tangent import num_params

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if projector is None:
        proj = (("dim", int(num_params(model))), ("kind", "none"))
    else:
        from .projection import Projector

        if not isinstance(projector, Projector):
            raise TypeError(f"projector must come from dntk.projection.make(...), got {type(projector).__name__}.")
        identity = getattr(projector, "identity", None)
        if callable(identity):
            items = dict(identity())
        else:  # kind, dim, seed and the options given to make() that change R (named by the kind's class)
            items = {"kind": projector.kind, "dim": int(projector.dim), "seed": int(projector.seed)}
            for name in getattr(type(projector), "options", ()):
                value = getattr(projector, _OPTION_ATTRIBUTES.get(name, name), None)
                if value is None or isinstance(value, (bool, int, float, str)):
                    items[name] = value
        proj = tuple(sorted((k, v) for k, v in items.items() if v is not None))
    return Fingerprint(projector=proj, model=content_hash(model))


# ============================================================================ compressed sets
@dataclass(frozen=True)
class CompressedSet:
    """Per-class feature rows ``S_c (m_c, k)`` with targets, ridge and the fingerprint of their feature map.

    features: ``C`` float64 tensors ``(m_c, k)``; targets: ``C`` float64 tensors ``(m_c,)``; lam: ``(C,)``
    ridge ``λ_c`` (by the convention of appendix §4.3, the one of the *uncompressed* set); intercept: ``(C,)``
    added to the mean; name: a label for tables. Build with :meth:`from_features` (real or distilled rows)
    or :meth:`from_synthesis` (Algorithm 1).
    """

    features: tuple
    targets: tuple
    lam: torch.Tensor
    fingerprint: Fingerprint
    intercept: torch.Tensor
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.fingerprint, Fingerprint):
            raise TypeError("fingerprint must be a Fingerprint from dntk.uncertainty.fingerprint(model, projector).")
        C = len(self.features)
        if C == 0 or len(self.targets) != C:
            raise ValueError(f"features and targets need one entry per class, got {C} and {len(self.targets)}.")
        k = int(self.features[0].shape[1])
        for c in range(C):
            S, t = self.features[c], self.targets[c]
            if S.ndim != 2 or S.shape[0] == 0 or S.shape[1] != k:
                raise ValueError(f"features[{c}] must have shape (m_c ≥ 1, k={k}), got {tuple(S.shape)}.")
            if t.shape != (S.shape[0],):
                raise ValueError(f"targets[{c}] must have shape ({S.shape[0]},), got {tuple(t.shape)}.")
        if self.lam.shape != (C,) or self.intercept.shape != (C,):
            raise ValueError(f"lam and intercept must have shape ({C},).")
        dim = dict(self.fingerprint.projector).get("dim")
        if dim is not None and int(dim) != k:
            raise ValueError(f"the rows have width k={k} but the fingerprint's feature map has dim={dim}; "
                             f"pass the fingerprint of the model and projector that produced these rows.")

    @property
    def n_classes(self) -> int:
        return len(self.features)

    @property
    def k(self) -> int:
        """Feature width."""
        return int(self.features[0].shape[1])

    @property
    def m(self) -> list:
        """Rows per class."""
        return [int(S.shape[0]) for S in self.features]

    @classmethod
    def from_features(cls, features, targets, fingerprint: Fingerprint, lam=None, lam_rel: float = 1e-3,
                      name: str = "") -> "CompressedSet":
        """A compressed set made of the gradients of real (or distilled) points.

        Parameters
        ----------
        features : (N, C, k) tensor or array
            Projected class gradients ``G̃_c`` of the points (rows ``g̃_c(x_i)``).
        targets : (N, C)
            KRR targets ``t_c`` (the network's logits by default, appendix §0).
        fingerprint : Fingerprint
            Of the model and projector that produced ``features`` (:func:`fingerprint`).
        lam : None, float or (C,)
            Ridge ``λ_c``; default ``lam_rel·tr(K_c)/N`` of these features (:func:`dntk.krr.default_lam`,
            appendix §1). For a subset of a larger set, pass the larger set's.
        lam_rel : float
            Relative ridge used when ``lam`` is None.
        name : str
            A label for tables.
        """
        from .krr import default_lam

        F = _common.class_features(features, "features")
        N, C, _ = F.shape
        T = _tensor(targets, "targets", ndim=2)
        if tuple(T.shape) != (N, C):
            raise ValueError(f"targets must have shape (N, C) = ({N}, {C}) to match features, got {tuple(T.shape)}.")
        lam = default_lam(F, lam_rel) if lam is None else lam
        return cls._make([F[:, c, :] for c in range(C)], [T[:, c] for c in range(C)], lam, fingerprint, None, name)

    @classmethod
    def from_synthesis(cls, result, fingerprint: Fingerprint, lam, m: int | None = None, intercept=None,
                       name: str = "") -> "CompressedSet":
        """A compressed set made of Algorithm 1's synthetic gradients ``S_c = VᵀG̃_c`` (appendix §4.3).

        Parameters
        ----------
        result : LocalGlobalResult
            From :func:`dntk.gradient_distillation.local_global`: ``result.G_syn[c] (m_c, k)`` and
            ``result.t_syn[c] (m_c,)``.
        fingerprint : Fingerprint
            Of the model and projector of the features Algorithm 1 was given.
        lam : float or (C,)
            The ridge of the *uncompressed* set (:func:`dntk.krr.default_lam` of those features), so that
            compressing does not change the regularisation (appendix §4.3).
        m : int or None
            Keep the first ``m`` synthetic gradients of each class. Algorithm 1's budgets are nested, so this
            equals running it with ``budget=m``.
        intercept : None or (C,)
            Added to the KRR mean (the mean removed from centred targets).
        name : str
            A label for tables.
        """
        if not hasattr(result, "G_syn") or not hasattr(result, "t_syn"):
            raise TypeError(f"result must be a LocalGlobalResult from dntk.gradient_distillation.local_global, "
                            f"got {type(result).__name__}.")
        if lam is None:
            raise ValueError("from_synthesis needs lam, the ridge of the uncompressed set: "
                             "lam=dntk.krr.default_lam(features, lam_rel).")
        stop = None if m is None else _common.check_int(m, "m", 1)
        return cls._make([G[:stop] for G in result.G_syn], [t[:stop] for t in result.t_syn], lam, fingerprint,
                         intercept, name)

    @classmethod
    def _make(cls, feats, targs, lam, fp, intercept, name):
        C = len(feats)
        feats = tuple(_tensor(S, f"features[{c}]", ndim=2).to(torch.float64).cpu() for c, S in enumerate(feats))
        targs = tuple(_tensor(t, f"targets[{c}]", ndim=1).to(torch.float64).cpu() for c, t in enumerate(targs))
        lam = _common.per_class_positive(lam, C, "lam")
        b = (torch.zeros(C, dtype=torch.float64) if intercept is None
             else _tensor(intercept, "intercept").to(torch.float64).reshape(-1).cpu())
        return cls(features=feats, targets=targs, lam=lam, fingerprint=fp, intercept=b, name=str(name))


# ============================================================================ posterior
class KernelPosterior:
    """KRR mean and posterior variance per class from a :class:`CompressedSet` (appendix §1, §8).

    For class ``c`` with rows ``S = S_c (m, k)``, targets ``t`` and ridge ``λ``:

    - mean (eq. 18): ``f̂_c(x) = g̃ᵀ w_c + b_c``, ``w_c = (SᵀS + λI)⁻¹Sᵀt`` (via :class:`dntk.krr.ClassKRR`);
    - variance: ``σ²_c(x) = k(x,x) − k(x,S)(SSᵀ + λI)⁻¹k(S,x)`` — dual, ``‖g̃‖² − ‖L⁻¹S g̃‖²`` with
      ``LLᵀ = SSᵀ + λI`` (``m ≤ k``) — or, by Woodbury, ``λ·‖L⁻¹g̃‖²`` with ``LLᵀ = SᵀS + λI``
      (``m > k``). One float64 Cholesky per class, computed here once.

    ``0 ≤ σ²_c(x) ≤ k_c(x,x)``: near 0 for a gradient inside the span of the rows' strong directions, equal
    to ``k_c(x, x)`` for one orthogonal to every row. Compressing the rows by an orthonormal ``V``
    (``S = VᵀG̃``, Algorithm 1) can only increase it: ``SᵀS ⪯ G̃ᵀG̃`` in the Loewner order.

    Parameters
    ----------
    support : CompressedSet
        The kept rows, their targets, ridge and fingerprint.
    device : str, torch.device or None
        Where the factors live and the variances are computed (default CPU); results are returned on CPU.
    """

    def __init__(self, support: CompressedSet, device=None):
        from .krr import ClassKRR

        if not isinstance(support, CompressedSet):
            raise TypeError(f"support must be a CompressedSet, got {type(support).__name__}.")
        self.support = support
        self.fingerprint = support.fingerprint
        self.device = torch.device("cpu") if device is None else _common.resolve_device(device)
        self._mean = ClassKRR(lam=support.lam).fit_synthetic(list(support.features), list(support.targets),
                                                              lam=support.lam, intercept=support.intercept)
        self._factors = []
        for c, S in enumerate(support.features):
            S = S.to(self.device)
            m, k = S.shape
            lam = float(support.lam[c])
            dual = m <= k
            A = S @ S.T if dual else S.T @ S
            A.diagonal().add_(lam)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise ValueError(f"class {c}: the {'dual' if dual else 'primal'} system is not positive definite "
                                 f"in float64 (λ = {lam:.3g}); increase lam.")
            self._factors.append((dual, L, S, lam))

    def _features(self, features, fingerprint) -> torch.Tensor:
        self.fingerprint.require(fingerprint)
        F = _common.class_features(features, "features")
        M, C, k = F.shape
        if C != self.support.n_classes or k != self.support.k:
            raise ValueError(f"features have C={C} classes and width k={k}, but the compressed set has "
                             f"C={self.support.n_classes}, k={self.support.k}.")
        return F

    def mean(self, features, *, fingerprint: Fingerprint) -> torch.Tensor:
        """KRR predictions ``f̂ (M, C)`` float64 (appendix eq. (eq-krr-dual)).

        Parameters
        ----------
        features : (M, C, k)
            Projected class gradients of the inputs to predict.
        fingerprint : Fingerprint
            Of the model and projector that produced ``features``; must equal the compressed set's.
        """
        F = self._features(features, fingerprint)
        return self._mean.predict(F.to(torch.float64))

    def variance(self, features, *, fingerprint: Fingerprint) -> torch.Tensor:
        """Posterior variances ``σ²_c(x) (M, C)`` float64 (appendix eq. (eq-posterior-variance-features)).

        Parameters
        ----------
        features : (M, C, k)
            Projected class gradients ``g̃_c(x)`` of the inputs to score.
        fingerprint : Fingerprint
            Of the model and projector that produced ``features``; must equal the compressed set's
            (``ValueError`` otherwise).
        """
        F = self._features(features, fingerprint)
        M, C, _ = F.shape
        out = torch.empty(M, C, dtype=torch.float64)
        for c, (dual, L, S, lam) in enumerate(self._factors):
            for s in range(0, M, _CHUNK):
                G = F[s:s + _CHUNK, c, :].to(device=self.device, dtype=torch.float64)   # (b, k)
                if dual:
                    Z = torch.linalg.solve_triangular(L, S @ G.T, upper=False)   # (m, b)
                    v = G.pow(2).sum(1) - Z.pow(2).sum(0)
                else:
                    Z = torch.linalg.solve_triangular(L, G.T, upper=False)       # (k, b)
                    v = lam * Z.pow(2).sum(0)
                out[s:s + _CHUNK, c] = v.clamp_min(0.0).cpu()
        return out

    def score(self, features, *, fingerprint: Fingerprint, kind: str = "variance") -> torch.Tensor:
        """Out-of-distribution score ``(M,)`` float64, higher = more in-distribution (appendix §8).

        Parameters
        ----------
        features : (M, C, k)
            Projected class gradients of the inputs to score.
        fingerprint : Fingerprint
            Must equal the compressed set's.
        kind : {"variance", "relative"}
            ``"variance"``: ``−Σ_c σ²_c(x)``. ``"relative"``: ``−Σ_c σ²_c(x) / Σ_c k_c(x, x)``, the share of the
            input's gradient energy the compressed set leaves unexplained (in ``[−1, 0]``, blind to the
            gradient's size).
        """
        if kind not in OOD_SCORES:
            raise ValueError(f"kind must be one of {OOD_SCORES}, got {kind!r}.")
        var = self.variance(features, fingerprint=fingerprint).sum(1)
        if kind == "variance":
            return -var
        prior = _common.class_features(features).to(torch.float64).pow(2).sum((1, 2)).cpu()
        return -var / prior.clamp_min(torch.finfo(torch.float64).tiny)


# ============================================================================ network scores
def softmax(logits, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities ``softmax(z/T) (N, C)`` float64.

    Parameters
    ----------
    logits : (N, C)
        The network's logits, or a kernel model's predictions of them (:meth:`KernelPosterior.mean`).
    temperature : float
        ``T > 0`` (:func:`fit_temperature`).
    """
    T = _common.check_positive(temperature, "temperature")
    return torch.softmax(_logits(logits) / T, dim=1)


def max_softmax(logits, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability ``max_c softmax(z/T)_c (N,)`` (Hendrycks & Gimpel 2017; appendix §8).

    ``logits (N, C)``; higher means more in-distribution.
    """
    return softmax(logits, temperature).max(1).values


def energy(logits, temperature: float = 1.0) -> torch.Tensor:
    """Energy score: the negative free energy ``T·logsumexp(z/T) (N,)`` (Liu et al. 2020; appendix §8).

    ``logits (N, C)``; higher means more in-distribution.
    """
    T = _common.check_positive(temperature, "temperature")
    return T * torch.logsumexp(_logits(logits) / T, dim=1)


@torch.no_grad()
def gradnorm(model: nn.Module, inputs, temperature: float = 1.0, batch_size: int = 512) -> torch.Tensor:
    """GradNorm (Huang et al. 2021): ``‖∂ KL(u ‖ softmax(f(x)/T)) / ∂W‖₁ (N,)`` (appendix eq. (eq-gradnorm)).

    ``W (C, D)`` is the last layer's weight (``model.head`` of a :class:`dntk.models.Classifier`), ``u`` the
    uniform distribution over the ``C`` classes. With penultimate features ``h(x) (D,)`` and
    ``p = softmax(f/T)``, ``∂KL/∂f = (p − u)/T`` and ``∂KL/∂W = (p − u)hᵀ/T``, so the score is the
    closed form ``‖p − u‖₁·‖h‖₁ / T`` (computed in float64, no backward pass). As in the authors' code,
    the bias is not included. Higher means more in-distribution.

    Parameters
    ----------
    model : dntk.models.Classifier
        Run in eval mode (restored afterwards), on the device of its head.
    inputs : (N, ...) tensor
        The inputs to score.
    temperature : float
        ``T > 0`` (the authors use 1).
    batch_size : int
        Inputs per forward pass.
    """
    T = _common.check_positive(temperature, "temperature")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not isinstance(getattr(model, "features", None), nn.Module):
        raise TypeError("gradnorm needs a dntk.models.Classifier (model.features then a linear model.head).")
    _common.check_model_finite(model)
    batch_size = _common.check_int(batch_size, "batch_size", 1)
    X = _tensor(inputs, "inputs")
    if X.ndim < 2:
        raise ValueError(f"inputs must have shape (N, ...) with a batch axis, got {tuple(X.shape)}.")
    dev = head.weight.device
    out = []
    with _common.eval_mode(model):
        for s in range(0, X.shape[0], batch_size):
            h = model.features(X[s:s + batch_size].to(device=dev, dtype=head.weight.dtype)).to(torch.float64)
            z = h @ head.weight.to(torch.float64).T + (0 if head.bias is None else head.bias.to(torch.float64))
            p = torch.softmax(z / T, dim=1)
            out.append(((p - 1.0 / p.shape[1]).abs().sum(1) * h.abs().sum(1) / T).cpu())
    return torch.cat(out)


# ============================================================================ calibration
def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``−(1/N) Σ_i log softmax(z_i/T)_{y_i}``.

    Parameters
    ----------
    logits : (N, C)
    labels : (N,) integer class indices in ``[0, C)``
    temperature : float, ``T > 0``
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0], z.shape[1])
    T = _common.check_positive(temperature, "temperature")
    return float(torch.nn.functional.cross_entropy(z / T, y))


def fit_temperature(logits, labels, bounds=(1e-2, 1e2)) -> float:
    """Temperature scaling (Guo et al. 2017): ``T* = argmin_T NLL(softmax(z/T), y)`` (appendix §8).

    The NLL is convex in ``β = 1/T`` (a log-sum-exp of lines minus a line), with derivative
    ``mean(E_p[z] − z_y)`` and second derivative ``mean(Var_p[z]) ≥ 0``; Newton's method with bisection
    safeguards finds the root of the derivative in ``[1/T_max, 1/T_min]``.

    Parameters
    ----------
    logits : (N, C)
        Held-out logits (not the data the model was trained on).
    labels : (N,)
        Their integer labels.
    bounds : (T_min, T_max)
        ``T`` is clipped to this range: when the labels are separable the NLL keeps falling as ``T → 0``.

    Returns
    -------
    float
        The fitted temperature.
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0], z.shape[1])
    lo_T, hi_T = (_common.check_positive(b, "bounds") for b in bounds)
    if lo_T >= hi_T:
        raise ValueError(f"bounds must be (T_min, T_max) with T_min < T_max, got {bounds!r}.")
    zy = z.gather(1, y[:, None])[:, 0]

    def derivs(beta):
        p = torch.softmax(beta * z, dim=1)
        Ez = (p * z).sum(1)
        return float((Ez - zy).mean()), float(((p * z * z).sum(1) - Ez ** 2).mean())

    lo, hi = 1.0 / hi_T, 1.0 / lo_T            # bracket in β
    d_lo, d_hi = derivs(lo)[0], derivs(hi)[0]
    if d_lo >= 0:
        return hi_T
    if d_hi <= 0:
        return lo_T
    beta = 1.0 if lo < 1.0 < hi else math.sqrt(lo * hi)
    for _ in range(200):
        d, h = derivs(beta)
        if abs(d) < 1e-13:      # converged at beta (test before moving: a converged Newton step equals beta)
            break
        if d > 0:
            hi = beta
        else:
            lo = beta
        if hi - lo <= 1e-12 * hi:
            break
        step = beta - d / h if h > 0 else float("nan")
        beta = step if lo < step < hi else 0.5 * (lo + hi)
    return 1.0 / beta


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: equal-width confidence bins ``(e_b, e_{b+1}]`` (the first also holds 0).

    edges ``(B+1,)``; count ``(B,)`` points per bin; accuracy ``(B,)`` and confidence ``(B,)`` their mean
    correctness and mean top probability (NaN in empty bins); ece: ``Σ_b (n_b/N)·|acc_b − conf_b|``.
    """

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float


def reliability(probs, labels, n_bins: int = 15) -> Reliability:
    """The reliability diagram of ``probs``: top probability against accuracy, bin by bin (appendix §8).

    Parameters
    ----------
    probs : (N, C)
        Probabilities (rows non-negative, summing to 1), e.g. :func:`softmax` of logits.
    labels : (N,)
        Integer labels.
    n_bins : int
        Equal-width confidence bins ``(b/B, (b+1)/B]`` on ``[0, 1]``.

    Returns
    -------
    Reliability
        Bin edges, counts, accuracy and confidence per bin, and the ECE.
    """
    p = _tensor(probs, "probs", ndim=2).to(torch.float64)
    if bool((p < 0).any()) or not bool(torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=torch.float64),
                                                        atol=1e-6)):
        raise ValueError("probs must be probabilities: non-negative rows that sum to 1 (apply softmax to logits).")
    y = _labels(labels, p.shape[0], p.shape[1])
    n_bins = _common.check_int(n_bins, "n_bins", 1)
    conf, pred = p.max(1)
    correct = (pred == y).to(torch.float64).numpy()
    conf = conf.numpy()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)   # (e_b, e_{b+1}]
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
        cbin = np.bincount(b, weights=conf, minlength=n_bins) / count
    nz = count > 0
    ece = float(np.sum(count[nz] / len(conf) * np.abs(acc[nz] - cbin[nz])))
    return Reliability(edges=edges, count=count, accuracy=acc, confidence=cbin, ece=ece)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017; appendix eq. (eq-ece)).

    ``Σ_b (n_b/N)·|acc_b − conf_b|`` over ``n_bins`` equal-width confidence bins of ``probs (N, C)``
    against ``labels (N,)``; see :func:`reliability`.
    """
    return reliability(probs, labels, n_bins).ece


# ============================================================================ detection metrics
def _scores(score_in, score_out):
    a = _tensor(score_in, "score_in", ndim=1, allow_empty=True).to(torch.float64).numpy()
    b = _tensor(score_out, "score_out", ndim=1, allow_empty=True).to(torch.float64).numpy()
    if a.size == 0:
        raise ValueError("score_in is empty: need the scores of at least one in-distribution point.")
    if b.size == 0:
        raise ValueError("score_out is empty: the out-of-distribution set has no points; give at least one.")
    return a, b


def auroc(score_in, score_out) -> float:
    """AUROC for telling ``score_in (n,)`` (positives) from ``score_out (n',)`` (appendix §8).

    Higher score = more in-distribution. Equals ``P(s_in > s_out) + ½·P(s_in = s_out)`` (Mann–Whitney),
    computed from average ranks; the same number as ``sklearn.metrics.roc_auc_score`` with ID labelled 1.
    """
    from scipy.stats import rankdata

    a, b = _scores(score_in, score_out)
    ranks = rankdata(np.concatenate([a, b]))
    n1, n0 = a.size, b.size
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def fpr_at_tpr(score_in, score_out, tpr: float = 0.95) -> float:
    """False-positive rate at ``tpr`` true-positive rate (appendix §8).

    The share of ``score_out (n',)`` accepted (``s ≥ threshold``) when the threshold accepts at least a
    fraction ``tpr`` of ``score_in (n,)``, the in-distribution scores (higher = more in-distribution).

    The threshold is the largest score that accepts ``⌈tpr·n⌉`` in-distribution points; this is the
    first point of the ROC curve with TPR ≥ ``tpr``.
    """
    a, b = _scores(score_in, score_out)
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real) or not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr!r}.")
    need = int(math.ceil(tpr * a.size - 1e-9))
    threshold = np.sort(a)[::-1][need - 1]
    return float(np.mean(b >= threshold))


def detection_metrics(score_in, score_out, tpr: float = 0.95) -> dict:
    """``{"auroc": …, "fpr95": …}`` for ``score_in (n,)`` against ``score_out (n',)`` (appendix §8).

    ``fpr95`` is :func:`fpr_at_tpr` at ``tpr`` (default 0.95).
    """
    return {"auroc": auroc(score_in, score_out), "fpr95": fpr_at_tpr(score_in, score_out, tpr)}
