"""WMDD dataset distillation: the distilled set whose inputs induce the tangent space (appendix §4.1).

Wasserstein Metric Dataset Distillation (Liu et al., 2025; official code ``Liu-Hy/WMDD``):

1. penultimate features ``φ(x)`` of the (eval-mode) teacher, read through a forward hook;
2. per class ``c`` a free-support Wasserstein barycenter of the real features with ``m = ipc`` atoms
   ``b_{c,1..m}`` (POT ``ot.lp.free_support_barycenter``; with a single input measure and uniform weights
   this is balanced k-means), optionally with learned weights ``w_{c,j}`` (the paper's weighted variant);
3. exact per-class BatchNorm statistics (mean, biased variance) of every BN layer's input;
4. synthesis of ``C·ipc`` class-major images by Adam (betas 0.5, 0.9; cosine lr) on

   ``L = r_ce·CE(f(x̃), c) + r_feat·mean_j ‖φ(x̃_j) − b_{c,j}‖
   + r_bn·Σ_layers mean_c (‖μ_syn − μ_c‖ + ‖σ²_syn − σ²_c‖)``

   under random-resized-crop / flip / shift augmentation scaled to the image size, with pixels clipped
   to the data range after every step;
5. soft labels = teacher logits on the final images.

The synthesis settings are one frozen :class:`WMDDSettings` (defaults :data:`WMDD_DEFAULTS`, also the
pipeline's); ``train_student`` trains a network from scratch on the set with the soft labels (KL at
temperature T) through :func:`dntk.models.training_loop`, with defaults :data:`STUDENT_DEFAULTS`.
``save``/``load`` keep a set on disk as a checksummed :mod:`dntk.store` artifact, and ``distill(...,
cache_dir=...)`` caches sets in a :class:`dntk.store.Store` keyed by the settings and the content hashes
of the teacher's weights and the data.

Differences from the official code, each deliberate: BN statistics are exact over the class
(Chan's pairwise merge of per-batch sums, not an average of per-batch variances); the feature loss is
the mean over images of the per-image L2 distance (the official code takes one Frobenius norm over the
whole batch, which makes the loss depend on the batch size); the weighted barycenter alternates the
exact optimal weights for one input measure (the masses of the atoms' Voronoi cells) with POT's
location update instead of mirror descent. Options the official code lacks: initialisation from real
samples of the class (``init="real"``, each assigned to an atom by an optimal matching of features,
or ``"nearest"``), and synthesis of all classes in one batch (``class_batch`` chunks it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _common
from .models import TrainingDivergedError, training_loop
from .store import Store, content_hash, read_artifact, write_artifact

__all__ = [
    "WMDDSettings",
    "WMDD_DEFAULTS",
    "StudentSettings",
    "STUDENT_DEFAULTS",
    "INITS",
    "DistilledSet",
    "Barycenter",
    "barycenter",
    "penultimate_features",
    "RealData",
    "ClassStatistics",
    "class_statistics",
    "class_bn_statistics",
    "augment",
    "distill",
    "join",
    "real_subset",
    "train_student",
    "save",
    "load",
]

log = logging.getLogger("dntk")

FORMAT_VERSION = 2
_KIND = "dntk.wmdd.DistilledSet"
#: Initialisations accepted by :func:`distill`.
INITS = ("real", "nearest", "noise")


# ----------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------
def _finite(name: str, v, lo: float | None = None) -> float:
    """``float(v)`` if finite (and ``>= lo`` when given), else a ``TypeError``/``ValueError`` naming ``name``."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {v!r}.") from None
    if not math.isfinite(f) or (lo is not None and f < lo):
        bound = "" if lo is None else f" >= {lo:g}"
        raise ValueError(f"{name} must be a finite number{bound}; got {v!r}.")
    return f


@dataclass(frozen=True)
class WMDDSettings:
    """Settings of a WMDD synthesis (appendix §4.1), validated on construction.

    Attributes
    ----------
    iterations : int
        Adam steps (betas ``betas``; lr cosine-annealed from ``lr`` to 0); 0 returns the initial images.
    lr : float
        Peak learning rate of the synthesis, in pixel units.
    r_ce, r_feat, r_bn : float
        Weights of cross-entropy, feature-to-atom matching and per-class BN matching.
    init : {"real", "nearest", "noise"}
        Initial images: seeded real samples matched to the atoms, the nearest real sample of each atom,
        or Gaussian noise with the data's per-channel mean and std.
    weighted : bool
        Learn barycenter weights (the paper's weighted variant); uniform ``1/ipc`` otherwise.
    augment : bool
        Random resized crop (``crop_scale``), horizontal ``flip`` and circular shift up to ``jitter`` px.
    crop_scale, jitter, pixel_range, class_batch
        ``None`` until :func:`distill` resolves them from the data (image size, data range, number of
        classes).
    barycenter_iter : int
        Iterations of POT's free-support barycenter.
    betas : (float, float)
        Adam's betas (the official ``(0.5, 0.9)``).
    seed : int
        Seeds the barycenter initialisation, the initial images and the augmentation draws.
    """

    iterations: int = 1000
    lr: float = 0.05
    r_ce: float = 1.0
    r_feat: float = 1.0
    r_bn: float = 10.0
    init: str = "real"
    weighted: bool = False
    augment: bool = True
    crop_scale: tuple | None = None
    flip: bool = True
    jitter: int | None = None
    class_batch: int | None = None
    pixel_range: tuple | None = None
    barycenter_iter: int = 100
    betas: tuple = (0.5, 0.9)
    seed: int = 0

    def __post_init__(self):
        _common.check_int(self.iterations, "iterations", 0)
        _common.check_positive(self.lr, "lr")
        for name in ("r_ce", "r_feat", "r_bn"):
            _finite(name, getattr(self, name), 0.0)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {self.init!r}.")
        _common.check_int(self.barycenter_iter, "barycenter_iter", 1)
        if self.class_batch is not None:
            _common.check_int(self.class_batch, "class_batch", 1)
        if self.jitter is not None:
            _common.check_int(self.jitter, "jitter", 0)
        if self.crop_scale is not None:
            cs = tuple(_finite("crop_scale", v) for v in self.crop_scale)
            if len(cs) != 2 or not (0 < cs[0] <= cs[1] <= 1):
                raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {self.crop_scale}.")
            object.__setattr__(self, "crop_scale", cs)
        if self.pixel_range is not None:
            pr = tuple(_finite("pixel_range", v) for v in self.pixel_range)
            if len(pr) != 2 or not pr[0] < pr[1]:
                raise ValueError(f"pixel_range must satisfy lo < hi; got {self.pixel_range}.")
            object.__setattr__(self, "pixel_range", pr)
        if len(self.betas) != 2 or not all(0 <= _finite("betas", b) < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1); got {self.betas}.")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict:
        """JSON form (tuples as lists), as recorded in ``DistilledSet.settings``."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class StudentSettings:
    """Defaults of :func:`train_student` (Sec 5.1: the teacher's architecture trained on the set only).

    Attributes
    ----------
    epochs : int
        Passes over the distilled set (its ``C·ipc`` images, in mini-batches of ``batch_size``).
    lr : float
        Adam's peak learning rate (cosine decay to 0).
    temperature : float
        Softmax temperature ``T`` of the KL loss.
    weight_decay : float
        Adam's L2 penalty.
    """

    epochs: int = 300
    lr: float = 3e-3
    temperature: float = 4.0
    weight_decay: float = 0.0


#: The WMDD defaults of :func:`distill` and of the pipeline's distillation stage.
WMDD_DEFAULTS = WMDDSettings()
#: The student defaults of :func:`train_student` and of the pipeline's student stage.
STUDENT_DEFAULTS = StudentSettings()


# ----------------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DistilledSet:
    """A distilled set (appendix §4.1, step 6). ``m = C·ipc`` images, class-major (class ``c`` owns rows
    ``c·ipc … (c+1)·ipc − 1``; row ``c·ipc + j`` was matched to atom ``b_{c,j}``).

    images       (m, *input_shape) float32, in the data range
    labels       (m,) int64 hard labels
    soft_labels  (m, C) float32 teacher logits on ``images``
    weights      (C, ipc) float64 barycenter weights (rows sum to 1; uniform unless ``weighted``)
    atoms        (C, ipc, D) float32 barycenter atoms in the teacher's penultimate feature space
    settings     dict (JSON-serialisable) of every setting used
    history      dict of per-iteration loss terms ``ce``, ``feature``, ``bn``, ``total`` (unweighted terms,
                 total weighted; averaged over class chunks)

    A *partial* set (``distill(..., classes=[...])``, ``settings["classes"]``) holds the rows of those
    classes only (``weights``/``atoms`` one row per class there) and ``history["chunks"]``, each chunk's
    losses; :func:`join` assembles partial sets into a whole one.

    Construction checks that images, labels and soft labels agree in length, that labels are integers
    and that images, soft labels and weights are finite (``ValueError``/``TypeError`` otherwise).
    """

    images: torch.Tensor
    labels: torch.Tensor
    soft_labels: torch.Tensor
    weights: torch.Tensor
    atoms: torch.Tensor
    settings: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("images", "labels", "soft_labels", "weights", "atoms"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"DistilledSet.{name} must be a tensor; got {type(getattr(self, name)).__name__}.")
        m = self.images.shape[0] if self.images.dim() else -1
        if self.labels.shape != (m,) or self.soft_labels.dim() != 2 or self.soft_labels.shape[0] != m:
            raise ValueError(f"a distilled set needs images (m, ...), labels (m,) and soft labels (m, C); got "
                             f"{tuple(self.images.shape)}, {tuple(self.labels.shape)}, {tuple(self.soft_labels.shape)}.")
        if self.labels.is_floating_point():
            raise TypeError(f"DistilledSet.labels must be integer class indices; got {self.labels.dtype}.")
        for name in ("images", "soft_labels", "weights"):
            t = getattr(self, name)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"the distilled set's {name} contain NaN or inf; it is unusable (a diverged "
                                 "synthesis or a corrupt file): distil it again.")

    @property
    def ipc(self) -> int:
        return int(self.weights.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def sample_weights(self) -> torch.Tensor:
        """(m,) per-image barycenter weights ``w_{c,j}``, class-major; each class sums to 1."""
        return self.weights.reshape(-1)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)``, the distilled set as ``dntk.data.as_tensors`` would return it."""
        return self.images, self.labels

    def __repr__(self) -> str:  # tensors would flood the notebook
        return (f"DistilledSet(ipc={self.ipc}, num_classes={self.num_classes}, "
                f"images={tuple(self.images.shape)}, init={self.settings.get('init')!r}, "
                f"r_bn={self.settings.get('r_bn')}, iterations={self.settings.get('iterations')})")


# ----------------------------------------------------------------------------------------------------
# barycenter (appendix §4.1 step 2)
# ----------------------------------------------------------------------------------------------------
class Barycenter(NamedTuple):
    atoms: np.ndarray  # (m, D) float64
    weights: np.ndarray  # (m,) float64, sums to 1
    init: np.ndarray  # (m,) int64 indices of the real features the atoms started from


def _init_indices(n: int, m: int, seed) -> np.ndarray:
    """Seeded choice of ``m`` distinct rows out of ``n`` (``np.random.default_rng(seed)``)."""
    return np.random.default_rng(seed).choice(n, size=m, replace=False).astype(np.int64)


def barycenter(features, m: int, seed=0, weighted: bool = False, max_iter: int = 100,
               stop_thr: float = 1e-7, weight_iter: int = 20) -> Barycenter:
    """Free-support Wasserstein barycenter of one class's features with ``m`` atoms (appendix §4.1 step 2).

    Uniform atom weights ``1/m``: ``ot.lp.free_support_barycenter`` (balanced k-means for one measure).
    ``weighted=True`` (the paper's variant) alternates the weights that are optimal for fixed atoms (the
    mass of each atom's Voronoi cell, exact for one input measure) with POT's location update,
    ``weight_iter`` times or until the weights stop changing; the result is a fixed point of Lloyd's
    k-means.

    Parameters
    ----------
    features : array-like
        ``(n, D)`` finite real features of one class (uniform weights ``1/n``).
    m : int
        Number of atoms, ``1 <= m <= n``.
    seed : int or sequence of int
        The atoms start at ``m`` distinct real features chosen by ``np.random.default_rng(seed)``
        (e.g. ``[seed, c]``).
    weighted : bool
        Learn the atom weights.
    max_iter, stop_thr : int, float
        POT's iteration limit and stopping threshold.
    weight_iter : int
        Alternations of the weighted variant.

    Returns
    -------
    Barycenter
        ``(atoms (m, D) float64, weights (m,) summing to 1, init (m,) int64 starting rows)``.
    """
    import ot

    F_ = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features, dtype=np.float64)
    if F_.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n, D); got shape {F_.shape}.")
    n = F_.shape[0]
    if n == 0:
        raise ValueError("features of the class are empty: a class with no samples has no barycenter.")
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (images per class) must be a positive integer; got {m!r}.")
    if m > n:
        raise ValueError(f"m = {m} atoms exceeds the class's {n} samples; choose ipc <= {n}.")
    if not np.isfinite(F_).all():
        raise ValueError("features contain NaN or inf; check the teacher and the inputs.")
    init = _init_indices(n, m, seed)
    X = F_[init].copy()
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    if not weighted:
        X = ot.lp.free_support_barycenter([F_], [a], X, b=b, numItermax=max_iter, stopThr=stop_thr)
        return Barycenter(np.asarray(X, dtype=np.float64), b, init)
    for _ in range(weight_iter):
        d2 = ((F_[:, None, :] - X[None, :, :]) ** 2).sum(-1)  # (n, m)
        counts = np.bincount(d2.argmin(1), minlength=m).astype(np.float64)
        b_new = counts / n
        live = b_new > 0  # an atom with an empty cell keeps its place and weight 0
        X_new = X.copy()
        X_new[live] = ot.lp.free_support_barycenter([F_], [a], X[live], b=b_new[live],
                                                     numItermax=max_iter, stopThr=stop_thr)
        converged = np.array_equal(b_new, b) and np.allclose(X_new, X, rtol=0, atol=1e-12)
        X, b = X_new, b_new
        if converged:
            break
    return Barycenter(np.asarray(X, dtype=np.float64), b, init)


# ----------------------------------------------------------------------------------------------------
# hooks: penultimate features and BN statistics (appendix §4.1 steps 1 and 3)
# ----------------------------------------------------------------------------------------------------
def _feature_module(teacher: nn.Module, feature_module: nn.Module | None) -> nn.Module:
    """The module whose *input* is the penultimate feature: ``.head`` (dntk Classifier), ``.fc``
    (torchvision ResNet), or a ``.classifier`` that is a Linear layer."""
    if feature_module is not None:
        if not isinstance(feature_module, nn.Module):
            raise TypeError(f"feature_module must be an nn.Module of the teacher; got {type(feature_module).__name__}.")
        return feature_module
    for name in ("head", "fc", "classifier"):
        mod = getattr(teacher, name, None)
        if isinstance(mod, nn.Linear):
            return mod
    raise ValueError("cannot find the teacher's final linear layer (.head, .fc or .classifier); pass "
                     "feature_module=<the module whose input is the penultimate feature>.")


def _bn_layers(teacher: nn.Module) -> list[nn.Module]:
    return [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _Capture:
    """Forward pre-hooks storing the input of each given module (kept attached to the graph)."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.values: list[torch.Tensor | None] = [None] * len(modules)
        self._handles = [mod.register_forward_pre_hook(self._make(i)) for i, mod in enumerate(modules)]

    def _make(self, i):
        def hook(module, inputs):
            self.values[i] = inputs[0]
        return hook

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _teacher_device(teacher: nn.Module) -> torch.device:
    for p in teacher.parameters():
        return p.device
    return torch.device("cpu")


def _batches(X: torch.Tensor, batch_size: int):
    for s in range(0, X.shape[0], batch_size):
        yield X[s:s + batch_size]


@torch.no_grad()
def penultimate_features(teacher: nn.Module, X: torch.Tensor, batch_size: int = 256,
                         feature_module: nn.Module | None = None) -> torch.Tensor:
    """Penultimate features ``φ(X)`` of the teacher in eval mode (appendix §4.1 step 1).

    Parameters
    ----------
    teacher : nn.Module
        The classifier; read through a forward hook on the input of its final linear layer.
    X : torch.Tensor
        Inputs ``(N, ...)``.
    batch_size : int
        Inputs per forward pass.
    feature_module : nn.Module, optional
        The module whose input is the feature (default ``.head``, ``.fc`` or ``.classifier``).

    Returns
    -------
    torch.Tensor
        ``(N, D)`` float32 on the CPU.
    """
    mod = _feature_module(teacher, feature_module)
    was_training = teacher.training
    teacher.eval()
    dev = _teacher_device(teacher)
    out = []
    try:
        with _Capture([mod]) as cap:
            for xb in _batches(X, batch_size):
                teacher(xb.to(dev))
                out.append(cap.values[0].detach().reshape(xb.shape[0], -1).float().cpu())
    finally:
        teacher.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


class _Moments:
    """Per-channel count, mean and M2 (sum of squared deviations), merged exactly across batches in
    float64 (Chan et al.'s pairwise update), so any batch size gives the same statistics."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def update(self, x: torch.Tensor):
        # x: (B, ch, *spatial) -> samples of each channel over the batch and spatial axes
        v = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        nb = v.shape[1]
        if nb == 0:
            return
        mb = v.mean(1)
        m2b = ((v - mb[:, None]) ** 2).sum(1)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.n


@torch.no_grad()
def _class_pass(teacher, X_c: torch.Tensor, batch_size: int, feat_mod: nn.Module, bn: list[nn.Module]):
    """One pass over a class's data: penultimate features (n, D) and exact BN moments per layer."""
    dev = _teacher_device(teacher)
    moments = [_Moments() for _ in bn]
    feats = []
    with _Capture([feat_mod, *bn]) as cap:
        for xb in _batches(X_c, batch_size):
            teacher(xb.to(dev))
            feats.append(cap.values[0].detach().reshape(xb.shape[0], -1).float().cpu())
            for mo, v in zip(moments, cap.values[1:]):
                mo.update(v)
    stats = [mo.finish() for mo in moments]
    return torch.cat(feats), stats


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """What WMDD needs from the real data, computed in one pass per class (appendix §4.1 steps 1 and 3).

    features  list of C entries: (n_c, D) float32 penultimate features of class ``c``'s real samples, or
              ``None`` for a class outside ``classes``
    bn_mean   list over BN layers (``teacher.modules()`` order) of (C, channels) float64 per-class means
              (NaN rows for classes outside ``classes``)
    bn_var    same shapes, per-class biased variances of each BN layer's input
    counts    (C,) int64 samples per class (all classes)
    classes   the classes whose features and BN statistics were computed, increasing
    """

    features: list
    bn_mean: list
    bn_var: list
    counts: torch.Tensor
    classes: tuple


def class_statistics(teacher: nn.Module, dataset, num_classes: int | None = None, batch_size: int = 256,
                     feature_module: nn.Module | None = None,
                     device: str | torch.device | None = None,
                     classes: Sequence[int] | None = None) -> ClassStatistics:
    """Per-class penultimate features and exact per-class BatchNorm input statistics of the real data.

    The statistics are accumulated from per-batch sums in float64 (Chan et al.'s pairwise merge), so any
    ``batch_size`` gives the same mean and biased variance as one pass over the whole class (appendix
    §4.1 steps 1 and 3). The teacher runs in eval mode (BN uses its running statistics, as at synthesis
    time). Pass the result to ``distill(..., statistics=...)`` to reuse it across IPCs and seeds of the
    same teacher and data.

    Parameters
    ----------
    teacher : nn.Module
        Classifier with finite weights.
    dataset : Dataset, (X (N, ...), y (N,)) or RealData
        The real data; every class ``0..C-1`` needs a sample. Only the images of ``classes`` are read.
    num_classes : int, optional
        ``C`` (default ``max(y) + 1``).
    batch_size : int
        Inputs per forward pass.
    feature_module : nn.Module, optional
        The module whose input is the penultimate feature.
    device : str or torch.device, optional
        Move the teacher there first.
    classes : sequence of int, optional
        Pass over these classes' samples only (default all): what ``distill(..., classes=...)`` needs, so
        a process that synthesises some classes reads the teacher's outputs on those classes alone.

    Returns
    -------
    ClassStatistics
        Features ``(n_c, D)`` per computed class, per-layer BN means and variances ``(C, channels)``
        float64, class counts ``(C,)`` of all classes.
    """
    _common.check_model(teacher)
    _common.check_model_finite(teacher)
    real = dataset if isinstance(dataset, RealData) else RealData(dataset)
    y = real.labels
    C = int(num_classes if num_classes is not None else int(y.max()) + 1)
    feat_mod = _feature_module(teacher, feature_module)
    bn = _bn_layers(teacher)
    if device is not None:
        teacher.to(_common.resolve_device(device))
    _check_teacher_accepts(teacher, real.first)
    was_training = teacher.training
    teacher.eval()
    wanted = _check_classes(classes, C)
    feats, per_class = [None] * C, {}
    try:
        for c in wanted:
            idx = (y == c).nonzero().flatten()
            if idx.numel() == 0:
                raise ValueError(f"class {c} has no samples; every class needs at least one real sample.")
            feats[c], per_class[c] = _class_pass(teacher, real.images(idx), batch_size, feat_mod, bn)
    finally:
        teacher.train(was_training)

    def per_layer(l: int, moment: int) -> torch.Tensor:  # (C, channels), NaN rows where not computed
        some = per_class[wanted[0]][l][moment]
        out = torch.full((C, *some.shape), float("nan"), dtype=some.dtype)
        for c in wanted:
            out[c] = per_class[c][l][moment]
        return out

    return ClassStatistics(feats, [per_layer(l, 0) for l in range(len(bn))], [per_layer(l, 1) for l in range(len(bn))],
                           torch.bincount(y, minlength=C), tuple(wanted))


def _check_classes(classes, C: int) -> list:
    """``classes`` as a sorted list of distinct ints in ``0..C-1`` (``None``: all ``C``)."""
    if classes is None:
        return list(range(C))
    wanted = [int(c) if isinstance(c, (int, np.integer)) and not isinstance(c, bool) else None for c in classes]
    if not wanted or None in wanted or len(set(wanted)) != len(wanted) or not all(0 <= c < C for c in wanted):
        raise ValueError(f"classes must be distinct class indices in 0..{C - 1}, at least one; got {list(classes)!r}.")
    return sorted(wanted)


def class_bn_statistics(teacher: nn.Module, X: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                        batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Exact per-class BatchNorm input statistics (appendix §4.1 step 3).

    For every BN layer of the teacher (in ``teacher.modules()`` order) returns ``(mean, var)``, each
    (C, channels) float64: the per-channel mean and biased variance of the layer's input over all real
    samples of class ``c`` (and all spatial positions), accumulated from per-batch sums so the result does
    not depend on ``batch_size``. The teacher runs in eval mode (BN uses its running statistics).
    """
    if not _bn_layers(teacher):
        raise ValueError("the teacher has no BatchNorm layer, so there are no BN statistics to compute.")
    st = class_statistics(teacher, (X, y), num_classes, batch_size, feature_module=_feature_module_or_identity(teacher))
    return list(zip(st.bn_mean, st.bn_var))


def _feature_module_or_identity(teacher):
    try:
        return _feature_module(teacher, None)
    except ValueError:
        return teacher  # only BN statistics wanted: capture the input of the whole model (unused)


# ----------------------------------------------------------------------------------------------------
# augmentation (appendix §4.1 step 4)
# ----------------------------------------------------------------------------------------------------
def _auto_crop_scale(size: int) -> tuple[float, float]:
    """Random-resized-crop area range scaled to the image size: ``(0.08, 1)`` as in the official code for
    images of 64 px and more; smaller images keep a crop of at least ~16 px side where possible and
    never less than 60 % of the area (an 8 px digit cropped to 8 % would be 2 px)."""
    lo = min(max(0.08, (16.0 / size) ** 2), 0.6)
    return (float(lo), 1.0)


def _auto_jitter(size: int) -> int:
    """Shift range scaled to the image size: the official 32 px at 224 px, at least 1 px."""
    return max(1, int(round(size * 32 / 224)))


def augment(x: torch.Tensor, generator: torch.Generator, crop_scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
            flip: bool = True, jitter: int = 0) -> torch.Tensor:
    """Differentiable random-resized-crop (per image), horizontal flip (per image, p = 1/2) and a circular
    shift by ``(dx, dy) ∈ [0, jitter]²`` (per batch, as the official code's ``torch.roll``).

    Parameters
    ----------
    x : torch.Tensor
        Images ``(B, C, H, W)``.
    generator : torch.Generator
        Source of all randomness, drawn on the CPU (reproducible on any device).
    crop_scale, ratio : (float, float)
        Area and aspect-ratio ranges of the crop.
    flip : bool
        Random horizontal flips.
    jitter : int
        Maximum circular shift in pixels.

    Returns
    -------
    torch.Tensor
        ``(B, C, H, W)``, differentiable in ``x`` (appendix §4.1 step 4).
    """
    if x.dim() != 4:
        raise ValueError(f"image augmentation needs inputs of shape (B, C, H, W); got {tuple(x.shape)}.")
    B, _, H, W = x.shape
    g = generator
    area = torch.empty(B, dtype=torch.float64).uniform_(crop_scale[0], crop_scale[1], generator=g)
    logr = torch.empty(B, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(logr)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(B, dtype=torch.float64, generator=g) * 2 - 1) * (1 - sw)
    cy = (torch.rand(B, dtype=torch.float64, generator=g) * 2 - 1) * (1 - sh)
    sign = torch.ones(B, dtype=torch.float64)
    if flip:
        sign = torch.where(torch.rand(B, dtype=torch.float64, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter > 0:
        dx, dy = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=g))
        out = torch.roll(out, shifts=(dx, dy), dims=(2, 3))
    return out


# ----------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------
def _check_xy(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    if not X.is_floating_point():
        raise TypeError(f"inputs must be floating point; got {X.dtype}.")
    if X.dim() < 2 or X.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, ...); got shape {tuple(X.shape)}.")
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"labels must be a 1-D tensor of length {X.shape[0]}; got shape {tuple(y.shape)}.")
    if y.is_floating_point():
        raise TypeError("labels must be integers (class indices).")
    if not torch.isfinite(X).all():
        raise ValueError("inputs contain NaN or inf.")
    return X.float(), y.long()


class RealData:
    """The real data WMDD reads: every label at once, images only where they are needed.

    Built from a pair ``(X (N, ...), y (N,))`` in memory, or from a map-style Dataset of ``(input, label)``
    items, which is read lazily: the labels come from its ``targets`` (through ``Subset`` objects) when it has
    them, a class's images are read when that class is synthesised (:meth:`images`), and the pixel range
    and per-channel moments (:meth:`moments`) come from one streamed pass, made at most once and only when
    asked for. So ``distill(teacher, RealData(dataset), ipc, classes=[c], pixel_range=...)`` holds class
    ``c``'s images and nothing else of the training set; pass one ``RealData`` to every call of a process
    so that the streamed pass, when needed, is made once.

    Parameters
    ----------
    dataset : Dataset or (X (N, ...), y (N,))
        Finite floating-point inputs (a Dataset's items are converted to float32), integer labels.

    Attributes
    ----------
    labels : torch.Tensor
        ``(N,)`` int64.
    first : torch.Tensor
        ``(1, *sample_shape)``: the first input (for shape checks against a network).
    sample_shape : tuple of int
        Shape of one input, e.g. ``(c, h, w)``.
    """

    def __init__(self, dataset):
        self._X = self._dataset = None
        self._moments = None
        if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and not isinstance(dataset[1], (int, np.integer)):
            self._X, self.labels = _check_xy(*dataset)
        else:
            from .data import labels_of

            if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
                raise TypeError("dataset must be a map-style Dataset of (input, label) items or a pair (X, y).")
            if len(dataset) == 0:
                raise ValueError("the dataset is empty.")
            self._dataset, self.labels = dataset, labels_of(dataset)
        self.first = self.images(torch.zeros(1, dtype=torch.int64))
        self.sample_shape = tuple(self.first.shape[1:])
        if len(self.sample_shape) < 1:
            raise ValueError(f"inputs must be a batch (N, ...) of arrays; got items of shape {self.sample_shape}.")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """Inputs ``(len(idx), *sample_shape)`` float32 at the indices ``idx`` (int64), checked finite."""
        if self._X is not None:
            return self._X[idx]
        X = torch.stack([torch.as_tensor(self._dataset[int(i)][0]) for i in idx.tolist()])
        if not X.is_floating_point():
            raise TypeError(f"inputs must be floating point; dataset items hold {X.dtype} (convert them, e.g. "
                            "pixels / 255, in the dataset's transform).")
        X = X.float()
        if not torch.isfinite(X).all():
            raise ValueError(f"inputs contain NaN or inf (among dataset items {idx[:5].tolist()}…).")
        return X

    def moments(self) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """``(min, max, mean, std)`` of the inputs: the pixel range, and the per-channel mean and unbiased
        standard deviation shaped ``(c, 1, 1)`` for images (per coordinate ``(d,)`` for vectors).

        In memory: one reduction of ``X``. A Dataset: one streamed pass in batches of 512, moments summed
        in float64 (equal to the in-memory ones up to float32 round-off), made once per object.
        """
        if self._moments is None:
            self._moments = self._in_memory_moments() if self._X is not None else self._streamed_moments()
        return self._moments

    def _in_memory_moments(self):
        X = self._X
        if X.dim() >= 3:
            dims = [0] + list(range(2, X.dim()))
            mu, sd = X.mean(dims, keepdim=True)[0], X.std(dims, keepdim=True)[0]
        else:
            mu, sd = X.mean(0), X.std(0)
        return float(X.min()), float(X.max()), mu, sd

    def _streamed_moments(self):
        lo, hi, n, s1, s2 = math.inf, -math.inf, 0, 0.0, 0.0
        loader = torch.utils.data.DataLoader(self._dataset, batch_size=512, shuffle=False)
        for xb, _ in loader:
            xb = torch.as_tensor(xb, dtype=torch.float32)
            if not torch.isfinite(xb).all():
                raise ValueError("inputs contain NaN or inf.")
            lo, hi = min(lo, float(xb.min())), max(hi, float(xb.max()))
            x = xb.double()
            dims = [0] + list(range(2, x.dim())) if x.dim() >= 3 else [0]
            n += x.numel() // (x.shape[1] if x.dim() >= 3 else x[0].numel())
            s1, s2 = s1 + x.sum(dims), s2 + (x * x).sum(dims)
        mu = s1 / n
        sd = ((s2 - n * mu * mu).clamp_min(0) / max(n - 1, 1)).sqrt()
        shape = (-1,) + (1,) * (len(self.sample_shape) - 1) if len(self.sample_shape) >= 2 else self.sample_shape
        return lo, hi, mu.float().reshape(shape), sd.float().reshape(shape)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X (N, ...), y (N,))``, every input read (for a content hash of the whole data)."""
        if self._X is not None:
            return self._X, self.labels
        return self.images(torch.arange(len(self))), self.labels


def _check_teacher_accepts(model: nn.Module, X: torch.Tensor, what: str = "teacher") -> None:
    """Clear errors for inputs the network cannot take (channel count, image size)."""
    mc = getattr(model, "in_channels", None)
    if isinstance(mc, int) and X.dim() >= 2 and X.shape[1] != mc:
        raise ValueError(f"the {what} expects {mc} input channel(s) but the images have {X.shape[1]} "
                         f"(shape {tuple(X.shape[1:])}); use images with {mc} channel(s) or a {what} built with "
                         f"in_channels={X.shape[1]}.")
    try:
        with torch.no_grad(), _common.eval_mode(model):
            model(X[:1].to(_teacher_device(model)))
    except RuntimeError as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f"the {what} cannot run on inputs of shape {tuple(X.shape[1:])} ({first}); check the "
                         f"number of channels and the image size it was built for.") from None


# ----------------------------------------------------------------------------------------------------
# distillation
# ----------------------------------------------------------------------------------------------------
def distill(teacher: nn.Module, dataset, ipc: int, *, iterations: int = WMDD_DEFAULTS.iterations,
            lr: float = WMDD_DEFAULTS.lr, r_ce: float = WMDD_DEFAULTS.r_ce, r_feat: float = WMDD_DEFAULTS.r_feat,
            r_bn: float = WMDD_DEFAULTS.r_bn, init: str = WMDD_DEFAULTS.init, weighted: bool = WMDD_DEFAULTS.weighted,
            augment_images: bool = WMDD_DEFAULTS.augment, crop_scale: Sequence[float] | None = None,
            flip: bool = WMDD_DEFAULTS.flip, jitter: int | None = None, class_batch: int | None = None,
            pixel_range: Sequence[float] | None = None, batch_size: int = 256, seed: int = 0,
            barycenter_iter: int = WMDD_DEFAULTS.barycenter_iter, feature_module: nn.Module | None = None,
            statistics: ClassStatistics | None = None, cache_dir=None, device: str | torch.device = "cpu",
            progress: bool = False, classes: Sequence[int] | None = None) -> DistilledSet:
    """Distil ``dataset`` into ``ipc`` images per class with WMDD (appendix §4.1, steps 1-5).

    Parameters
    ----------
    teacher : nn.Module
        Trained classifier with finite weights; runs in eval mode, its weights are not changed (it is
        moved to ``device``).
    dataset : Dataset, (X (N, ...), y (N,)) or RealData
        Map-style Dataset of ``(input, label)``, a pair of tensors, or a :class:`RealData` of either;
        finite inputs, integer labels in ``0..C-1``, every class present. A Dataset is read lazily: the
        images of ``classes`` only, plus one streamed pass for the pixel range when ``pixel_range`` is not
        given (or for the moments when ``init="noise"``), and the whole of it when ``cache_dir`` hashes it.
    ipc : int
        Images per class, ``1 <= ipc <=`` the smallest class size.
    iterations, lr, r_ce, r_feat, r_bn, init, weighted, flip, barycenter_iter, seed
        The fields of :class:`WMDDSettings` (defaults :data:`WMDD_DEFAULTS`).
    augment_images : bool
        :attr:`WMDDSettings.augment`.
    crop_scale : (float, float), optional
        Random-resized-crop area range; default scaled to the image size.
    jitter : int, optional
        Shift range in pixels; default ``round(32·H/224)``.
    class_batch : int, optional
        Classes synthesised together (a memory knob; default all). The loss is a mean over classes,
        so this does not change the objective. Each chunk's augmentation draws are seeded by ``seed``
        and the chunk's first class, never by who synthesises it.
    pixel_range : (float, float), optional
        Clip range; default the real data's min and max.
    batch_size : int
        Batch size of the teacher's passes over the real data.
    feature_module : nn.Module, optional
        The module whose input is the penultimate feature (default ``.head``, ``.fc`` or ``.classifier``).
    statistics : ClassStatistics, optional
        ``class_statistics(teacher, dataset)`` computed beforehand (reused across calls); it must come
        from the same teacher and data.
    cache_dir : path-like, optional
        Reuse a set stored there (a :class:`dntk.store.Store`, stage ``wmdd``) under a key of the settings
        and the content hashes of the teacher's weights and the data, or store the new one there
        (atomically, checksummed; a corrupt copy is recomputed).
    device : str or torch.device
        Where the synthesis runs.
    progress : bool
        Show a progress bar.
    classes : sequence of int, optional
        Synthesise only these classes (distinct, in ``0..C-1``; default all): a *partial* set of their
        ``len(classes)·ipc`` images in increasing class order, whose ``history["chunks"]`` keeps each
        chunk's losses. Classes are independent problems, so processes can share them; :func:`join`
        assembles partial sets covering every class into the set of one call (bit-identical when every
        chunk of that call lies within one part, e.g. ``class_batch=1``).

    Returns
    -------
    DistilledSet
        ``C·ipc`` class-major images with labels, soft labels, barycenter atoms and weights, the settings
        used and the loss history. Deterministic for a seed on a given device.

    Raises
    ------
    dntk.models.TrainingDivergedError
        The synthesis loss became non-finite (the message names the iteration).
    """
    _common.check_model(teacher)
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be a positive integer; got {ipc!r}.")
    ipc = int(ipc)
    _common.check_int(batch_size, "batch_size", 1)
    s = WMDDSettings(iterations=iterations, lr=lr, r_ce=r_ce, r_feat=r_feat, r_bn=r_bn, init=init,
                     weighted=weighted, augment=augment_images,
                     crop_scale=None if crop_scale is None else tuple(crop_scale), flip=flip, jitter=jitter,
                     class_batch=class_batch, pixel_range=None if pixel_range is None else tuple(pixel_range),
                     barycenter_iter=barycenter_iter, seed=seed)
    _common.check_model_finite(teacher)
    bn = _bn_layers(teacher)
    if s.r_bn > 0 and not bn:
        raise ValueError("the teacher has no BatchNorm layer, so per-class BN matching is impossible; "
                         "pass r_bn=0 to distil with the cross-entropy and feature terms only.")
    feat_mod = _feature_module(teacher, feature_module)

    real = dataset if isinstance(dataset, RealData) else RealData(dataset)
    y, sample_shape = real.labels, real.sample_shape
    if s.augment and len(sample_shape) != 3:
        raise ValueError(f"image augmentation was requested but the inputs are not images (N, C, H, W): "
                         f"got shape {(len(real), *sample_shape)}; pass augment_images=False.")
    dev = _common.resolve_device(device)
    teacher.to(dev)
    _check_teacher_accepts(teacher, real.first)
    with torch.no_grad(), _common.eval_mode(teacher):
        C = int(teacher(real.first.to(dev)).shape[1])
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(f"labels must lie in 0..{C - 1} (the teacher has {C} outputs); "
                         f"got range {int(y.min())}..{int(y.max())}.")
    counts = torch.bincount(y, minlength=C)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class(es) {empty} have no samples; every class needs at least one real sample "
                         f"(for its barycenter and BN statistics).")
    if ipc > int(counts.min()):
        c_small = int(counts.argmin())
        raise ValueError(f"ipc = {ipc} exceeds the {int(counts.min())} samples of class {c_small}; "
                         f"choose ipc <= {int(counts.min())}.")
    if classes is not None:
        classes = _check_classes(classes, C)
    size = min(sample_shape[-2:]) if len(sample_shape) == 3 else 0
    s = dataclasses.replace(
        s, class_batch=C if s.class_batch is None else s.class_batch,
        pixel_range=real.moments()[:2] if s.pixel_range is None else s.pixel_range,
        crop_scale=(s.crop_scale or _auto_crop_scale(size)) if s.augment else None,
        jitter=(_auto_jitter(size) if s.jitter is None else s.jitter) if s.augment else None)
    settings = dict(s.to_dict(), ipc=ipc, schedule="cosine", num_classes=C, input_shape=list(sample_shape),
                    num_real=len(real), class_counts=counts.tolist(), num_bn_layers=len(bn),
                    teacher=type(teacher).__name__)
    if classes is not None:
        settings["classes"] = classes
    if statistics is not None:
        if not isinstance(statistics, ClassStatistics):
            raise TypeError(f"statistics must come from dntk.wmdd.class_statistics; got {type(statistics).__name__}.")
        if not torch.equal(statistics.counts, counts) or len(statistics.bn_mean) != len(bn):
            raise ValueError("statistics do not match this teacher and data (class counts or number of BN layers "
                             "differ); compute them with class_statistics(teacher, dataset).")
        missing = sorted(set(range(C) if classes is None else classes) - set(statistics.classes))
        if missing:
            raise ValueError(f"statistics lack class(es) {missing}; compute them with "
                             f"class_statistics(teacher, dataset, classes=...) including those classes.")

    def compute() -> DistilledSet:
        with _common.eval_mode(teacher):
            stats = statistics if statistics is not None else class_statistics(
                teacher, real, C, batch_size, feat_mod, classes=classes)
            return _distill(teacher, real, ipc, s, settings, stats, feat_mod, batch_size, dev, progress, classes)

    if cache_dir is None:
        return compute()
    store = Store(cache_dir)
    got = store.fetch("wmdd", settings, lambda: _to_artifact(compute()),
                      inputs={"teacher": content_hash(teacher), "data": content_hash(dict(zip("Xy", real.tensors())))})
    if got.status == "cached":
        log.info("WMDD: reusing the distilled set %s in %s", got.key, store.root)
    return _from_artifact(got.artifact)


@dataclass(frozen=True, eq=False)
class _Chunk:
    """One synthesis problem: ``n_cls`` classes of ``ipc`` images each, class-major (appendix §4.1 step 4).

    x0 (n_cls·ipc, …) initial images; labels (n_cls·ipc,); atoms (n_cls·ipc, D) the target of each image;
    bn_means / bn_vars per BN layer (n_cls, channels); img_w (n_cls, ipc) barycenter weights weighting
    each image in its class's BN statistics (the official weighted variant), ``None`` for uniform.
    """

    x0: torch.Tensor
    labels: torch.Tensor
    atoms: torch.Tensor
    bn_means: list
    bn_vars: list
    n_cls: int
    ipc: int
    img_w: torch.Tensor | None = None


def _distill(teacher, real: RealData, ipc, s: WMDDSettings, settings: dict, stats: ClassStatistics, feat_mod,
             batch_size, dev, progress, classes=None) -> DistilledSet:
    from scipy.optimize import linear_sum_assignment

    C = settings["num_classes"]
    cls_list = list(range(C)) if classes is None else list(classes)
    seed, y, sample_shape = s.seed, real.labels, real.sample_shape
    # ---- steps 1-3: per class features, barycenter, exact BN statistics; initial images
    atoms, weights, x0 = [], [], []
    init_idx = []
    bn = _bn_layers(teacher)
    for c in cls_list:
        idx = (y == c).nonzero().flatten()
        feats = stats.features[c]
        bc = barycenter(feats, ipc, seed=[seed, c], weighted=s.weighted, max_iter=s.barycenter_iter)
        A, w = bc.atoms, bc.weights
        if s.init == "noise":
            chosen = None
        elif s.init == "real":
            chosen = _init_indices(idx.numel(), ipc, [seed, c, 1])
            cost = ((feats[chosen].double().numpy()[:, None, :] - A[None]) ** 2).sum(-1)  # (image, atom)
            rows, cols = linear_sum_assignment(cost)
            chosen = chosen[rows[np.argsort(cols)]]  # image j starts at the real sample assigned to atom j
        else:  # nearest
            d2 = ((feats.double().numpy()[:, None, :] - A[None]) ** 2).sum(-1)  # (n, atom)
            chosen = np.empty(ipc, dtype=np.int64)
            taken = np.zeros(idx.numel(), dtype=bool)
            for j in range(ipc):
                d = np.where(taken, np.inf, d2[:, j])
                chosen[j] = int(d.argmin())
                taken[chosen[j]] = True
        if chosen is not None:
            x0.append(real.images(idx[torch.as_tensor(chosen)]))
            init_idx.append(idx[torch.as_tensor(chosen)].tolist())
        atoms.append(torch.as_tensor(A, dtype=torch.float32))
        weights.append(torch.as_tensor(w, dtype=torch.float64))
    atoms_t = torch.stack(atoms)  # (n_cls, ipc, D), n_cls = len(cls_list)
    weights_t = torch.stack(weights)  # (n_cls, ipc)
    if s.init == "noise":
        g = torch.Generator().manual_seed(int(seed))
        _, _, mu, sd = real.moments()
        noise = torch.randn((C * ipc, *sample_shape), generator=g)  # all classes' draws: a class's own
        noise = noise.reshape(C, ipc, *sample_shape)[cls_list].reshape(-1, *sample_shape)  # do not depend on the others
        images = (mu + sd * noise).clamp(*s.pixel_range)
    else:
        images = torch.cat(x0).clone()
    labels = torch.as_tensor(cls_list).repeat_interleave(ipc)

    # ---- step 4: synthesis, one chunk of classes at a time (positions `pos` in cls_list)
    cb = s.class_batch
    chunks = [list(range(p0, min(p0 + cb, len(cls_list)))) for p0 in range(0, len(cls_list), cb)]
    bar = _common.progress_bar(s.iterations * len(chunks), f"WMDD synthesis (ipc={ipc})", progress)
    out = images.clone()
    done = []
    try:
        for pos in chunks:
            cls = [cls_list[p] for p in pos]
            rows = torch.cat([torch.arange(p * ipc, (p + 1) * ipc) for p in pos])
            chunk = _Chunk(x0=images[rows].to(dev), labels=labels[rows].to(dev),
                           atoms=atoms_t[pos].reshape(-1, atoms_t.shape[-1]).to(dev),
                           bn_means=[m[cls].float().to(dev) for m in stats.bn_mean],
                           bn_vars=[v[cls].float().to(dev) for v in stats.bn_var], n_cls=len(cls), ipc=ipc,
                           img_w=weights_t[pos].float().to(dev) if s.weighted else None)
            # augmentation draws of this chunk, seeded by its first class (not by who synthesises it)
            gen = torch.Generator().manual_seed(int(seed) * 1000003 + cls[0])
            x, h = _synthesize(teacher, chunk, s, bn, feat_mod, gen, bar)
            out[rows] = x.cpu()
            done.append({"classes": cls, **h})
    finally:
        bar.close()

    # ---- step 5: soft labels
    soft, acc = _soft_labels(teacher, out, labels, batch_size, dev)
    info = dict(settings, init_indices=init_idx if init_idx else None, teacher_accuracy=acc)
    history = _combine_history(done, C, s.iterations) if classes is None else {"chunks": done}
    return DistilledSet(images=out.float(), labels=labels, soft_labels=soft, weights=weights_t, atoms=atoms_t,
                        settings=info, history=history)


def _soft_labels(teacher, images, labels, batch_size: int, dev) -> tuple[torch.Tensor, float]:
    """The teacher's logits ``(n, C)`` on `images` (in batches of `batch_size`) and its accuracy on `labels`."""
    with torch.no_grad():
        soft = torch.cat([teacher(xb.to(dev)).float().cpu() for xb in _batches(images, batch_size)])
    return soft, float((soft.argmax(1) == labels).float().mean())


def _combine_history(chunks: list, C: int, iterations: int) -> dict:
    """The loss history of a whole set: per iteration, each chunk's losses weighted by its share of the
    ``C`` classes, summed in class order."""
    hist = {k: np.zeros(iterations) for k in ("ce", "feature", "bn", "total")}
    for h in sorted(chunks, key=lambda h: h["classes"][0]):
        for name in hist:
            hist[name] += np.asarray(h[name]) * len(h["classes"]) / C
    return {k: v.tolist() for k, v in hist.items()}


def join(parts: Sequence[DistilledSet], teacher: nn.Module, *, batch_size: int = 256,
         device: str | torch.device = "cpu") -> DistilledSet:
    """Assemble partial sets (``distill(..., classes=...)``) that together cover every class once.

    Parameters
    ----------
    parts : sequence of DistilledSet
        Partial sets of one configuration (same settings but ``classes``), in any order.
    teacher : nn.Module
        The teacher they were distilled from: the soft labels ``(C·ipc, C)`` are recomputed on the
        assembled images, in batches of `batch_size`, exactly as :func:`distill` computes them.
    batch_size : int
        As in :func:`distill`.
    device : str or torch.device
        Where the teacher runs.

    Returns
    -------
    DistilledSet
        The set one :func:`distill` call returns (bit-identical when every chunk of that call lies within
        one part, e.g. ``class_batch=1``).
    """
    _common.check_int(batch_size, "batch_size", 1)
    parts = list(parts)
    if not parts or not all(isinstance(p, DistilledSet) and "classes" in p.settings for p in parts):
        raise ValueError("join takes partial sets made by dntk.wmdd.distill(..., classes=[...]); got "
                         f"{[type(p).__name__ for p in parts] or 'none'}.")

    def common(p):
        return {k: v for k, v in p.settings.items() if k not in ("classes", "init_indices", "teacher_accuracy")}

    base = common(parts[0])
    if any(common(p) != base for p in parts[1:]):
        raise ValueError("the partial sets were distilled with different settings or data; distil every part "
                         "with the same arguments (only classes may differ).")
    parts.sort(key=lambda p: p.settings["classes"][0])
    covered = [c for p in parts for c in p.settings["classes"]]
    C = int(base["num_classes"])
    if covered != list(range(C)):
        raise ValueError(f"the partial sets must cover the classes 0..{C - 1} once each; they cover {sorted(covered)}.")
    dev = _common.resolve_device(device)
    teacher.to(dev)
    images, labels = torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])
    with _common.eval_mode(teacher):
        soft, acc = _soft_labels(teacher, images, labels, batch_size, dev)
    init = [i for p in parts for i in (p.settings.get("init_indices") or [])]
    info = dict(base, init_indices=init or None, teacher_accuracy=acc)
    history = _combine_history([h for p in parts for h in p.history["chunks"]], C, int(base["iterations"]))
    return DistilledSet(images=images.float(), labels=labels, soft_labels=soft,
                        weights=torch.cat([p.weights for p in parts]), atoms=torch.cat([p.atoms for p in parts]),
                        settings=info, history=history)


def _synthesize(teacher, chunk: _Chunk, s: WMDDSettings, bn, feat_mod, gen, bar) -> tuple[torch.Tensor, dict]:
    """Adam on the WMDD loss (appendix §4.1 step 4) for one chunk; returns the images and the per-iteration
    loss terms ``{"ce", "feature", "bn", "total"}``."""
    lo, hi = s.pixel_range
    x = chunk.x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=s.lr, betas=s.betas, eps=1e-8)
    sched = _common.cosine_schedule(opt, s.iterations)
    hist = {k: [] for k in ("ce", "feature", "bn", "total")}
    n_cls, ipc, img_w = chunk.n_cls, chunk.ipc, chunk.img_w
    with _Capture([feat_mod, *bn]) as cap:
        for it in range(s.iterations):
            xa = x
            if s.augment:
                xa = augment(x, gen, crop_scale=s.crop_scale, flip=s.flip, jitter=s.jitter)
            logits = teacher(xa)
            ce = F.cross_entropy(logits, chunk.labels)
            phi = cap.values[0].reshape(x.shape[0], -1)
            feat = (phi - chunk.atoms).norm(dim=1).mean()
            bn_loss = x.new_zeros(())
            for inp, mu_c, var_c in zip(cap.values[1:], chunk.bn_means, chunk.bn_vars):
                v = inp.reshape(n_cls, ipc, inp.shape[1], -1)
                if img_w is None:
                    mu = v.mean(dim=(1, 3))
                    var = v.var(dim=(1, 3), unbiased=False)
                else:
                    mu = (v.mean(3) * img_w[..., None]).sum(1)
                    var = (((v - mu[:, None, :, None]) ** 2).mean(3) * img_w[..., None]).sum(1)
                bn_loss = bn_loss + ((mu - mu_c).norm(dim=1) + (var - var_c).norm(dim=1)).mean()
            loss = s.r_ce * ce + s.r_feat * feat + s.r_bn * bn_loss
            total = loss.item()
            if not math.isfinite(total):
                raise TrainingDivergedError(
                    f"WMDD synthesis diverged at iteration {it + 1} of {s.iterations} (loss {total}); lower lr "
                    f"(now {s.lr:g}) or check the teacher and the data.")
            (grad,) = torch.autograd.grad(loss, x)
            x.grad = grad
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            hist["ce"].append(ce.item())
            hist["feature"].append(feat.item())
            hist["bn"].append(bn_loss.item())
            hist["total"].append(total)
            bar.update(1)
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise TrainingDivergedError(f"WMDD synthesis produced non-finite images after {s.iterations} iterations; "
                                    f"lower lr (now {s.lr:g}).")
    return x, hist


def real_subset(teacher: nn.Module, dataset, indices, *, batch_size: int = 256,
                feature_module: nn.Module | None = None, device: str | torch.device = "cpu",
                method: str = "real_subset") -> DistilledSet:
    """A set of real samples in the ``DistilledSet`` format (the baselines of a distillation).

    Parameters
    ----------
    teacher : nn.Module
        Classifier with finite weights; gives the soft labels (its logits) and the atoms (the chosen
        samples' own penultimate features).
    dataset : Dataset or (X, y)
        The real data.
    indices : array-like
        ``(C·ipc,)`` rows, class-major, ``ipc`` per class in class order (random or k-center subsets).
    batch_size, feature_module, device
        As in :func:`penultimate_features`.
    method : str
        Recorded in ``settings["method"]``.

    Returns
    -------
    DistilledSet
        With uniform weights ``(C, ipc)`` and atoms ``(C, ipc, D)``.
    """
    _common.check_model(teacher)
    _common.check_model_finite(teacher)
    real = RealData(dataset)
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(real):
        raise ValueError(f"indices must be non-empty and lie in 0..{len(real) - 1}.")
    X, y = real.images(idx), real.labels[idx]  # only the chosen inputs are read
    dev = torch.device(device)
    teacher.to(dev)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            soft = torch.cat([teacher(xb.to(dev)).float().cpu() for xb in _batches(X, batch_size)])
        feats = penultimate_features(teacher, X, batch_size, feature_module)
    finally:
        teacher.train(was_training)
    C = soft.shape[1]
    if idx.numel() % C:
        raise ValueError(f"{idx.numel()} indices cannot be split into {C} classes of equal size.")
    ipc = idx.numel() // C
    labels = torch.arange(C).repeat_interleave(ipc)
    if not torch.equal(y, labels):
        raise ValueError(f"indices must be class-major with {ipc} samples of each class 0..{C - 1} in order.")
    settings = dict(method=method, ipc=ipc, num_classes=C, input_shape=list(X.shape[1:]), augment=False,
                    init_indices=idx.reshape(C, ipc).tolist(),
                    teacher_accuracy=float((soft.argmax(1) == labels).float().mean()))
    return DistilledSet(images=X.clone(), labels=labels, soft_labels=soft,
                        weights=torch.full((C, ipc), 1.0 / ipc, dtype=torch.float64),
                        atoms=feats.reshape(C, ipc, -1), settings=settings, history={})


# ----------------------------------------------------------------------------------------------------
# student (Sec 5.1: the same architecture trained on the distilled set only)
# ----------------------------------------------------------------------------------------------------
def train_student(model: nn.Module, distilled: DistilledSet, *, epochs: int = STUDENT_DEFAULTS.epochs,
                  lr: float = STUDENT_DEFAULTS.lr, temperature: float = STUDENT_DEFAULTS.temperature,
                  batch_size: int | None = None, teacher: nn.Module | None = None,
                  augment_images: bool | None = None, crop_scale: Sequence[float] | None = None,
                  flip: bool | None = None, jitter: int | None = None, use_weights: bool = True,
                  weight_decay: float = STUDENT_DEFAULTS.weight_decay,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Train a student on the distilled set with soft labels (Sec 5.1), through :func:`dntk.models.training_loop`.

    Loss per image ``T² · KL(softmax(s/T) ‖ softmax(f/T))``, weighted by ``ipc · w_{c,j}`` (the barycenter
    weights; ``use_weights=False`` for uniform); Adam with cosine lr. Soft targets ``s`` are the stored
    teacher logits, or, when ``teacher`` is given, the teacher's logits on each augmented batch (the
    official relabel-on-crop knowledge distillation).

    Parameters
    ----------
    model : nn.Module
        Freshly built student (e.g. ``dntk.models.build("convnet", C)``) with finite weights and ``C``
        outputs; trained in place and left in eval mode on ``device``.
    distilled : DistilledSet
        The set: images ``(m, ...)``, soft labels ``(m, C)``, weights ``(C, ipc)`` (or empty).
    epochs, lr, temperature, weight_decay
        Defaults :data:`STUDENT_DEFAULTS`.
    batch_size : int, optional
        Images per step (default all ``m``).
    teacher : nn.Module, optional
        Relabel each augmented batch with this teacher.
    augment_images, crop_scale, flip, jitter : optional
        Augmentation; default the distillation's own settings.
    use_weights : bool
        Weight each image by its barycenter weight.
    seed : int
        Seeds the shuffling and the augmentation draws (a local generator).
    device : str or torch.device
        Where to train.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``{"loss": [per-epoch mean]}``.

    Raises
    ------
    dntk.models.TrainingDivergedError
        The loss or the weights became non-finite (the message names the epoch).
    """
    _common.check_model(model)
    if not isinstance(distilled, DistilledSet):
        raise TypeError(f"distilled must be a DistilledSet; got {type(distilled).__name__}.")
    T = _common.check_positive(temperature, "temperature")
    _common.check_positive(lr, "lr")
    _finite("weight_decay", weight_decay, 0.0)
    epochs = _common.check_int(epochs, "epochs", 1)
    if batch_size is not None:
        _common.check_int(batch_size, "batch_size", 1)
    _common.check_model_finite(model)
    if teacher is not None:
        _common.check_model(teacher)
        _common.check_model_finite(teacher)
    s = distilled.settings
    aug = s.get("augment", False) if augment_images is None else augment_images
    X = distilled.images
    if aug and X.dim() != 4:
        raise ValueError(f"image augmentation needs images (N, C, H, W); got {tuple(X.shape)}; "
                         f"pass augment_images=False.")
    size = min(X.shape[-2:]) if X.dim() == 4 else 0
    if crop_scale is None:
        crop_scale = s.get("crop_scale") or (_auto_crop_scale(size) if aug else None)
    crop = tuple(crop_scale) if aug else None
    if jitter is None:
        jitter = s.get("jitter") if s.get("jitter") is not None else (_auto_jitter(size) if aug else 0)
    jit = int(jitter) if aug else 0
    flip = bool(s.get("flip", True)) if flip is None else bool(flip)
    m = X.shape[0]
    if m == 0:
        raise ValueError("the distilled set is empty; there is nothing to train on.")
    bs = m if batch_size is None else min(int(batch_size), m)
    if use_weights and distilled.weights.numel() not in (0, m):
        raise ValueError(f"the set has {m} images but {distilled.weights.numel()} barycenter weights; "
                         f"pass use_weights=False to weight the images uniformly.")
    if use_weights and distilled.weights.numel() == m:
        w = (distilled.sample_weights * distilled.ipc).float()
    else:  # uniform (also for sets without barycenter weights, e.g. a whole training set)
        w = torch.ones(m)
    dev = _common.resolve_device(device)
    model.to(dev)
    _check_teacher_accepts(model, X, "student")
    C_out = getattr(model, "num_classes", None)
    if isinstance(C_out, int) and C_out != distilled.soft_labels.shape[1]:
        raise ValueError(f"the student has {C_out} outputs but the soft labels have {distilled.soft_labels.shape[1]} "
                         "classes; build the student with num_classes equal to the teacher's.")
    if teacher is not None:
        teacher.to(dev)
    soft = distilled.soft_labels.float()
    g = torch.Generator().manual_seed(int(seed))
    has_bn = any(isinstance(mm, nn.modules.batchnorm._BatchNorm) for mm in model.modules())

    def batches(epoch):
        perm = torch.randperm(m, generator=g)
        for s0 in range(0, m, bs):
            yield perm[s0:s0 + bs]

    def step_loss(net, idx):
        if idx.numel() < 2 and has_bn:
            return None  # BatchNorm cannot train on a batch of one
        xb = X[idx].to(dev)
        if aug:
            xb = augment(xb, g, crop_scale=crop, flip=flip, jitter=jit)
        if teacher is not None:
            with torch.no_grad():
                tb = teacher(xb).float()
        else:
            tb = soft[idx].to(dev)
        out = net(xb)
        kl = F.kl_div(F.log_softmax(out / T, dim=1), F.log_softmax(tb / T, dim=1), log_target=True,
                      reduction="none").sum(1)
        return (T * T) * (kl * w[idx].to(dev)).mean(), int(idx.numel()), {}

    with _common.eval_mode(teacher) if teacher is not None else contextlib.nullcontext():
        history = training_loop(model, batches, step_loss, epochs=epochs, steps_per_epoch=math.ceil(m / bs),
                                lr=lr, optimizer="adam", weight_decay=weight_decay, schedule="cosine",
                                progress=progress, desc="student")
    return {"loss": history["loss"]}


# ----------------------------------------------------------------------------------------------------
# persistence
# ----------------------------------------------------------------------------------------------------
_TENSORS = ("images", "labels", "soft_labels", "weights", "atoms")


def _to_artifact(result: DistilledSet) -> dict:
    art = {k: getattr(result, k).detach().cpu().contiguous() for k in _TENSORS}
    art["settings"] = result.settings
    art["history"] = result.history
    return art


def _from_artifact(art: dict) -> DistilledSet:
    return DistilledSet(**{k: art[k] for k in _TENSORS}, settings=art.get("settings") or {},
                        history=art.get("history") or {})


def save(result: DistilledSet, path) -> Path:
    """Write a distilled set to the directory ``path`` as a checksummed :mod:`dntk.store` artifact.

    Atomic (:func:`dntk.store.write_artifact`): everything is written into a temporary directory beside
    ``path`` and renamed into place, so an interruption leaves either the old set or the new one, never
    a half-written one. Overwrites. Every array carries a SHA-256 that :func:`load` verifies.
    """
    if not isinstance(result, DistilledSet):
        raise TypeError(f"result must be a DistilledSet; got {type(result).__name__}.")
    path = Path(path)
    write_artifact(path, _to_artifact(result), {"kind": _KIND, "format_version": FORMAT_VERSION})
    return path


def load(path) -> DistilledSet:
    """Read a distilled set written by :func:`save`, verifying its checksums.

    Raises ``ValueError`` if ``path`` is not a saved distilled set, and
    :class:`dntk.store.CorruptArtifactError` (a ``ValueError``) naming the file if its bytes changed.
    """
    path = Path(path)
    try:
        art, meta = read_artifact(path)
    except FileNotFoundError:
        old = (path / "tensors.pt").is_file()
        raise ValueError(f"{path} is not a saved distilled set" + (
            " in this format (it was written by an older dntk); distil it again." if old else
            " (no meta.json); write one with dntk.wmdd.save.")) from None
    if meta.get("kind") != _KIND:
        raise ValueError(f"{path} is not a saved distilled set but a stored {meta.get('kind') or 'artifact'}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta.get('format_version')}; this dntk reads {FORMAT_VERSION}.")
    try:
        return _from_artifact(art)
    except KeyError as e:
        raise ValueError(f"the distilled set {path} lacks {e}; save it again.") from None
