"""WMDD dataset distillation: the distilled set whose inputs induce the tangent space (SPEC §4.1).

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

``train_student`` trains a network from scratch on the set with the soft labels (KL at temperature T);
``save``/``load`` keep a set on disk (tensors + JSON), written atomically.

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

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistilledSet",
    "Barycenter",
    "barycenter",
    "penultimate_features",
    "ClassStatistics",
    "class_statistics",
    "class_bn_statistics",
    "augment",
    "distill",
    "real_subset",
    "train_student",
    "save",
    "load",
]

log = logging.getLogger("dntk")

FORMAT_VERSION = 1
_TENSOR_FILE = "tensors.pt"
_SETTINGS_FILE = "settings.json"


# ----------------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DistilledSet:
    """A distilled set (SPEC §4.1, step 6). ``m = C·ipc`` images, class-major (class ``c`` owns rows
    ``c·ipc … (c+1)·ipc − 1``; row ``c·ipc + j`` was matched to atom ``b_{c,j}``).

    images       (m, *input_shape) float32, in the data range
    labels       (m,) int64 hard labels
    soft_labels  (m, C) float32 teacher logits on ``images``
    weights      (C, ipc) float64 barycenter weights (rows sum to 1; uniform unless ``weighted``)
    atoms        (C, ipc, D) float32 barycenter atoms in the teacher's penultimate feature space
    settings     dict (JSON-serialisable) of every setting used
    history      dict of per-iteration loss terms ``ce``, ``feature``, ``bn``, ``total`` (unweighted terms,
                 total weighted; averaged over class chunks)
    """

    images: torch.Tensor
    labels: torch.Tensor
    soft_labels: torch.Tensor
    weights: torch.Tensor
    atoms: torch.Tensor
    settings: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

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
# barycenter (SPEC §4.1 step 2)
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
    """Free-support Wasserstein barycenter of one class's features with ``m`` atoms (SPEC §4.1 step 2).

    features (n, D) real features of one class (uniform weights ``1/n``). The atoms start at ``m``
    distinct real features chosen by ``np.random.default_rng(seed)`` (``seed`` may be an int or a
    sequence such as ``[seed, c]``). Uniform atom weights ``1/m``: ``ot.lp.free_support_barycenter``
    (balanced k-means for one measure). ``weighted=True`` (the paper's variant) alternates the weights
    that are optimal for fixed atoms (the mass of each atom's Voronoi cell, exact for one input measure)
    with POT's location update, ``weight_iter`` times or until the weights stop changing.
    Returns ``Barycenter(atoms (m, D) float64, weights (m,), init (m,))``.
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
# hooks: penultimate features and BN statistics (SPEC §4.1 steps 1 and 3)
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


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, desc: str, enabled: bool):
    """A ``tqdm.auto`` progress bar, or a no-op (tqdm.auto is not even imported when disabled)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


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
    """Penultimate features ``φ(X)`` (N, D) float32 of the teacher in eval mode, read by a forward hook
    on the input of its final linear layer (SPEC §4.1 step 1)."""
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
    """What WMDD needs from the real data, computed in one pass per class (SPEC §4.1 steps 1 and 3).

    features  list of C tensors (n_c, D) float32: penultimate features of class ``c``'s real samples
    bn_mean   list over BN layers (``teacher.modules()`` order) of (C, channels) float64 per-class means
    bn_var    same shapes, per-class biased variances of each BN layer's input
    counts    (C,) int64 samples per class
    """

    features: list
    bn_mean: list
    bn_var: list
    counts: torch.Tensor


def class_statistics(teacher: nn.Module, dataset, num_classes: int | None = None, batch_size: int = 256,
                     feature_module: nn.Module | None = None,
                     device: str | torch.device | None = None) -> ClassStatistics:
    """Per-class penultimate features and exact per-class BatchNorm input statistics of the real data.

    The statistics are accumulated from per-batch sums in float64 (Chan et al.'s pairwise merge), so any
    ``batch_size`` gives the same mean and biased variance as one pass over the whole class. The
    teacher runs in eval mode (BN uses its running statistics, as at synthesis time). Pass the result to
    ``distill(..., statistics=...)`` to reuse it across IPCs and seeds of the same teacher and data.
    """
    X, y = _dataset_tensors(dataset)
    C = int(num_classes if num_classes is not None else int(y.max()) + 1)
    feat_mod = _feature_module(teacher, feature_module)
    bn = _bn_layers(teacher)
    if device is not None:
        teacher.to(torch.device(device))
    was_training = teacher.training
    teacher.eval()
    feats, per_class = [], []
    try:
        for c in range(C):
            idx = (y == c).nonzero().flatten()
            if idx.numel() == 0:
                raise ValueError(f"class {c} has no samples; every class needs at least one real sample.")
            f_c, st = _class_pass(teacher, X[idx], batch_size, feat_mod, bn)
            feats.append(f_c)
            per_class.append(st)
    finally:
        teacher.train(was_training)
    bn_mean = [torch.stack([pc[l][0] for pc in per_class]) for l in range(len(bn))]
    bn_var = [torch.stack([pc[l][1] for pc in per_class]) for l in range(len(bn))]
    return ClassStatistics(feats, bn_mean, bn_var, torch.bincount(y, minlength=C))


def class_bn_statistics(teacher: nn.Module, X: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                        batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Exact per-class BatchNorm input statistics (SPEC §4.1 step 3).

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
# augmentation (SPEC §4.1 step 4)
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

    x (B, C, H, W); all randomness drawn from ``generator`` on the CPU (reproducible on any device).
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
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"labels must be a 1-D tensor of length {X.shape[0]}; got shape {tuple(y.shape)}.")
    if y.is_floating_point():
        raise TypeError("labels must be integers (class indices).")
    if not torch.isfinite(X).all():
        raise ValueError("inputs contain NaN or inf.")
    return X.float(), y.long()


def _dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` from a ``(X, y)`` pair or a map-style Dataset of ``(input, label)`` items."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and not isinstance(dataset[1], (int, np.integer)):
        return _check_xy(*dataset)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError("dataset must be a map-style Dataset of (input, label) items or a pair (X, y).")
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, shuffle=False)
    xs, ys = [], []
    for xb, yb in loader:
        xs.append(torch.as_tensor(xb))
        ys.append(torch.as_tensor(yb))
    return _check_xy(torch.cat(xs), torch.cat(ys))


def _fingerprint(teacher: nn.Module, X: torch.Tensor, y: torch.Tensor, settings: dict) -> str:
    h = hashlib.sha256()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(X.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    h.update(json.dumps({k: v for k, v in settings.items() if k not in ("progress", "device")},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# distillation
# ----------------------------------------------------------------------------------------------------
def distill(teacher: nn.Module, dataset, ipc: int, *, iterations: int = 1000, lr: float = 0.05,
            r_ce: float = 1.0, r_feat: float = 1.0, r_bn: float = 10.0, init: str = "real",
            weighted: bool = False, augment_images: bool = True, crop_scale: Sequence[float] | None = None,
            flip: bool = True, jitter: int | None = None, class_batch: int | None = None,
            pixel_range: Sequence[float] | None = None, batch_size: int = 256, seed: int = 0,
            barycenter_iter: int = 100, feature_module: nn.Module | None = None,
            statistics: ClassStatistics | None = None, cache_dir=None, device: str | torch.device = "cpu",
            progress: bool = False) -> DistilledSet:
    """Distil ``dataset`` into ``ipc`` images per class with WMDD (SPEC §4.1).

    teacher      trained classifier; runs in eval mode, its weights are not changed (it is moved to ``device``)
    dataset      map-style Dataset of ``(input, label)`` or a pair ``(X (N, …), y (N,))``
    ipc          images per class, ``1 ≤ ipc ≤`` the smallest class size
    iterations   Adam steps (betas 0.5, 0.9; lr cosine-annealed from ``lr`` to 0); 0 returns the initial images
    r_ce, r_feat, r_bn  weights of cross-entropy, feature-to-atom matching and per-class BN matching
    init         ``"real"`` (seeded random real samples of the class, matched to the atoms by an optimal
                 assignment of their features), ``"nearest"`` (for each atom the nearest unused real sample)
                 or ``"noise"`` (Gaussian with the data's per-channel mean and std, clipped)
    weighted     learn barycenter weights (the paper's weighted variant; they also weight each image in its
                 class's BN statistics); uniform ``1/ipc`` otherwise
    augment_images  random resized crop (``crop_scale``, default scaled to the image size), horizontal
                 ``flip`` and a circular shift up to ``jitter`` px (default ``round(32·H/224)``)
    class_batch  classes synthesised together (memory knob; default all); the loss is a mean over
                 classes, so this does not change the objective
    pixel_range  clip range ``(lo, hi)``; default the real data's min and max
    statistics   ``class_statistics(teacher, dataset)`` computed beforehand (reused across calls); it must
                 come from the same teacher and data
    cache_dir    if given, reuse a set saved there under a key of (teacher weights, data, settings), or
                 save the new one there (atomically)
    Returns a ``DistilledSet``. Deterministic for a seed on a given device.
    """
    settings = dict(ipc=ipc, iterations=iterations, lr=lr, r_ce=r_ce, r_feat=r_feat, r_bn=r_bn, init=init,
                    weighted=weighted, augment=augment_images,
                    crop_scale=None if crop_scale is None else list(crop_scale),
                    flip=flip, jitter=jitter, class_batch=class_batch,
                    pixel_range=None if pixel_range is None else list(pixel_range), seed=seed,
                    barycenter_iter=barycenter_iter, betas=[0.5, 0.9], schedule="cosine")
    # ---- validation of the settings
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module; got {type(teacher).__name__}.")
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be a positive integer; got {ipc!r}.")
    if not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer; got {iterations!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}.")
    for name, v in (("r_ce", r_ce), ("r_feat", r_feat), ("r_bn", r_bn)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite non-negative weight; got {v}.")
    if init not in ("real", "nearest", "noise"):
        raise ValueError(f"init must be 'real', 'nearest' or 'noise'; got {init!r}.")
    bn = _bn_layers(teacher)
    if r_bn > 0 and not bn:
        raise ValueError("the teacher has no BatchNorm layer, so per-class BN matching is impossible; "
                         "pass r_bn=0 to distil with the cross-entropy and feature terms only.")
    feat_mod = _feature_module(teacher, feature_module)

    X, y = _dataset_tensors(dataset)
    if augment_images and X.dim() != 4:
        raise ValueError(f"image augmentation was requested but the inputs are not images (N, C, H, W): "
                         f"got shape {tuple(X.shape)}; pass augment_images=False.")
    dev = torch.device(device)
    teacher.to(dev)
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad():
        C = int(teacher(X[:1].to(dev)).shape[1])
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
    if class_batch is None:
        class_batch = C
    if not isinstance(class_batch, (int, np.integer)) or class_batch < 1:
        raise ValueError(f"class_batch must be a positive integer; got {class_batch!r}.")
    lo, hi = (float(X.min()), float(X.max())) if pixel_range is None else (float(pixel_range[0]), float(pixel_range[1]))
    if not lo < hi:
        raise ValueError(f"pixel_range must satisfy lo < hi; got ({lo}, {hi}).")
    size = min(X.shape[-2:]) if X.dim() == 4 else 0
    if augment_images:
        crop_scale = tuple(crop_scale) if crop_scale is not None else _auto_crop_scale(size)
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {crop_scale}.")
        jitter = _auto_jitter(size) if jitter is None else int(jitter)
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0; got {jitter}.")
    settings.update(num_classes=C, input_shape=list(X.shape[1:]), pixel_range=[lo, hi],
                    crop_scale=list(crop_scale) if augment_images else None,
                    jitter=jitter if augment_images else None, class_batch=int(class_batch),
                    num_real=int(X.shape[0]), class_counts=counts.tolist(), num_bn_layers=len(bn),
                    teacher=type(teacher).__name__)

    key = None
    if cache_dir is not None:
        key = _fingerprint(teacher, X, y, settings)
        path = Path(cache_dir) / f"wmdd-ipc{ipc}-{key[:16]}"
        if (path / _SETTINGS_FILE).exists():
            cached = load(path)
            if cached.settings.get("key") == key:
                teacher.train(was_training)
                log.info("WMDD: reusing the distilled set in %s", path)
                return cached
    if statistics is not None:
        if not isinstance(statistics, ClassStatistics):
            raise TypeError(f"statistics must come from dntk.wmdd.class_statistics; got {type(statistics).__name__}.")
        if not torch.equal(statistics.counts, counts) or len(statistics.bn_mean) != len(bn):
            raise ValueError("statistics do not match this teacher and data (class counts or number of BN layers "
                             "differ); compute them with class_statistics(teacher, dataset).")
    try:
        if statistics is None:
            statistics = class_statistics(teacher, (X, y), C, batch_size, feat_mod)
        result = _distill(teacher, X, y, C, ipc, settings, statistics, feat_mod, batch_size, dev, progress)
    finally:
        teacher.train(was_training)
    if key is not None:
        result = dataclasses.replace(result, settings={**result.settings, "key": key})
        save(result, path)
    return result


def _distill(teacher, X, y, C, ipc, s, stats: ClassStatistics, feat_mod, batch_size, dev, progress) -> DistilledSet:
    from scipy.optimize import linear_sum_assignment

    seed = s["seed"]
    # ---- steps 1-3: per class features, barycenter, exact BN statistics; initial images
    atoms, weights, x0 = [], [], []
    init_idx = []
    bn = _bn_layers(teacher)
    for c in range(C):
        idx = (y == c).nonzero().flatten()
        feats = stats.features[c]
        bc = barycenter(feats, ipc, seed=[seed, c], weighted=s["weighted"], max_iter=s["barycenter_iter"])
        A, w = bc.atoms, bc.weights
        if s["init"] == "noise":
            chosen = None
        elif s["init"] == "real":
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
            x0.append(X[idx[torch.as_tensor(chosen)]])
            init_idx.append(idx[torch.as_tensor(chosen)].tolist())
        atoms.append(torch.as_tensor(A, dtype=torch.float32))
        weights.append(torch.as_tensor(w, dtype=torch.float64))
    atoms_t = torch.stack(atoms)  # (C, ipc, D)
    weights_t = torch.stack(weights)  # (C, ipc)
    if s["init"] == "noise":
        g = torch.Generator().manual_seed(int(seed))
        if X.dim() >= 3:
            dims = [0] + list(range(2, X.dim()))
            mu = X.mean(dims, keepdim=True)[0]
            sd = X.std(dims, keepdim=True)[0]
        else:
            mu, sd = X.mean(0), X.std(0)
        noise = torch.randn((C * ipc, *X.shape[1:]), generator=g)
        images = (mu + sd * noise).clamp(*s["pixel_range"])
    else:
        images = torch.cat(x0).clone()
    s["init_indices"] = init_idx if init_idx else None
    labels = torch.arange(C).repeat_interleave(ipc)

    # ---- step 4: synthesis, one chunk of classes at a time
    cb = s["class_batch"]
    chunks = [list(range(c0, min(c0 + cb, C))) for c0 in range(0, C, cb)]
    hist = {k: np.zeros(s["iterations"]) for k in ("ce", "feature", "bn", "total")}
    bar = _bar(s["iterations"] * len(chunks), f"WMDD synthesis (ipc={ipc})", progress)
    out = images.clone()
    for k, cls in enumerate(chunks):
        rows = torch.cat([torch.arange(c * ipc, (c + 1) * ipc) for c in cls])
        means = [m[cls].float().to(dev) for m in stats.bn_mean]
        vars_ = [v[cls].float().to(dev) for v in stats.bn_var]
        gen = torch.Generator().manual_seed(int(seed) * 1000003 + k)  # augmentation draws of this chunk
        targets = atoms_t[cls].reshape(-1, atoms_t.shape[-1]).to(dev)
        img_w = weights_t[cls].float().to(dev) if s["weighted"] else None
        h = _synthesize(teacher, images[rows].to(dev), labels[rows].to(dev), targets, means, vars_, len(cls), ipc, s,
                        bn, feat_mod, gen, bar, img_w)
        out[rows] = h.pop("images").cpu()
        for name in hist:
            hist[name] += np.asarray(h[name]) * len(cls) / C
    bar.close()

    # ---- step 5: soft labels
    with torch.no_grad():
        soft = torch.cat([teacher(xb.to(dev)).float().cpu() for xb in _batches(out, batch_size)])
    s["teacher_accuracy"] = float((soft.argmax(1) == labels).float().mean())
    history = {k: v.tolist() for k, v in hist.items()}
    return DistilledSet(images=out.float(), labels=labels, soft_labels=soft, weights=weights_t, atoms=atoms_t,
                        settings=s, history=history)


def _synthesize(teacher, x0, labels, atoms, bn_means, bn_vars, n_cls, ipc, s, bn, feat_mod, gen, bar,
                img_w=None) -> dict:
    """Adam on the WMDD loss for one chunk of ``n_cls`` classes (images class-major). ``img_w`` (n_cls, ipc):
    barycenter weights (rows sum to 1) weighting each image in its class's BN statistics, as the official
    weighted variant does; ``None`` weights them uniformly."""
    iters, lr = s["iterations"], s["lr"]
    lo, hi = s["pixel_range"]
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    hist = {k: [] for k in ("ce", "feature", "bn", "total")}
    with _Capture([feat_mod, *bn]) as cap:
        for it in range(iters):
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * it / iters)) * lr
            xa = x
            if s["augment"]:
                xa = augment(x, gen, crop_scale=s["crop_scale"], flip=s["flip"], jitter=s["jitter"])
            logits = teacher(xa)
            ce = F.cross_entropy(logits, labels)
            phi = cap.values[0].reshape(x.shape[0], -1)
            feat = (phi - atoms).norm(dim=1).mean()
            bn_loss = x.new_zeros(())
            for inp, mu_c, var_c in zip(cap.values[1:], bn_means, bn_vars):
                v = inp.reshape(n_cls, ipc, inp.shape[1], -1)
                if img_w is None:
                    mu = v.mean(dim=(1, 3))
                    var = v.var(dim=(1, 3), unbiased=False)
                else:
                    mu = (v.mean(3) * img_w[..., None]).sum(1)
                    var = (((v - mu[:, None, :, None]) ** 2).mean(3) * img_w[..., None]).sum(1)
                bn_loss = bn_loss + ((mu - mu_c).norm(dim=1) + (var - var_c).norm(dim=1)).mean()
            loss = s["r_ce"] * ce + s["r_feat"] * feat + s["r_bn"] * bn_loss
            (grad,) = torch.autograd.grad(loss, x)
            x.grad = grad
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            hist["ce"].append(ce.item())
            hist["feature"].append(feat.item())
            hist["bn"].append(bn_loss.item())
            hist["total"].append(loss.item())
            bar.update(1)
    hist["images"] = x.detach()
    return hist


def real_subset(teacher: nn.Module, dataset, indices, *, batch_size: int = 256,
                feature_module: nn.Module | None = None, device: str | torch.device = "cpu",
                method: str = "real_subset") -> DistilledSet:
    """A set of real samples in the ``DistilledSet`` format (the baselines of a distillation: random or
    k-center real subsets of the same size). ``indices`` (C·ipc,) class-major, ``ipc`` per class; soft
    labels are the teacher's logits, weights uniform, ``atoms`` the chosen samples' own features."""
    X, y = _dataset_tensors(dataset)
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= X.shape[0]:
        raise ValueError(f"indices must be non-empty and lie in 0..{X.shape[0] - 1}.")
    dev = torch.device(device)
    teacher.to(dev)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            soft = torch.cat([teacher(xb.to(dev)).float().cpu() for xb in _batches(X[idx], batch_size)])
        feats = penultimate_features(teacher, X[idx], batch_size, feature_module)
    finally:
        teacher.train(was_training)
    C = soft.shape[1]
    if idx.numel() % C:
        raise ValueError(f"{idx.numel()} indices cannot be split into {C} classes of equal size.")
    ipc = idx.numel() // C
    labels = torch.arange(C).repeat_interleave(ipc)
    if not torch.equal(y[idx], labels):
        raise ValueError(f"indices must be class-major with {ipc} samples of each class 0..{C - 1} in order.")
    settings = dict(method=method, ipc=ipc, num_classes=C, input_shape=list(X.shape[1:]), augment=False,
                    init_indices=idx.reshape(C, ipc).tolist(),
                    teacher_accuracy=float((soft.argmax(1) == labels).float().mean()))
    return DistilledSet(images=X[idx].clone(), labels=labels, soft_labels=soft,
                        weights=torch.full((C, ipc), 1.0 / ipc, dtype=torch.float64),
                        atoms=feats.reshape(C, ipc, -1), settings=settings, history={})


# ----------------------------------------------------------------------------------------------------
# student (Sec 5.1: the same architecture trained on the distilled set only)
# ----------------------------------------------------------------------------------------------------
def train_student(model: nn.Module, distilled: DistilledSet, *, epochs: int = 300, lr: float = 1e-3,
                  temperature: float = 4.0, batch_size: int | None = None, teacher: nn.Module | None = None,
                  augment_images: bool | None = None, crop_scale: Sequence[float] | None = None,
                  flip: bool | None = None, jitter: int | None = None, use_weights: bool = True,
                  weight_decay: float = 0.0,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Train ``model`` (freshly built, e.g. ``dntk.models.build("convnet", C)``) on the distilled set with
    soft labels: loss ``T² · KL(softmax(s/T) ‖ softmax(f/T))`` per image, weighted by ``ipc · w_{c,j}``
    (the barycenter weights; ``use_weights=False`` for uniform), Adam with cosine lr.

    Soft targets are the stored teacher logits, or, when ``teacher`` is given, the teacher's logits on
    each augmented batch (the official relabel-on-crop knowledge distillation). Augmentation defaults to
    the distillation's own setting (``crop_scale``, ``flip``, ``jitter`` override it). Trains in place;
    returns ``{"loss": [per-epoch mean]}`` and leaves the model in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}.")
    if not isinstance(distilled, DistilledSet):
        raise TypeError(f"distilled must be a DistilledSet; got {type(distilled).__name__}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}.")
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
    dev = torch.device(device)
    model.to(dev)
    if teacher is not None:
        teacher.to(dev)
        t_was = teacher.training
        teacher.eval()
    m = X.shape[0]
    bs = m if batch_size is None else min(int(batch_size), m)
    if distilled.soft_labels.shape[0] != m:
        raise ValueError(f"the set has {m} images but {distilled.soft_labels.shape[0]} soft labels.")
    if use_weights and distilled.weights.numel() not in (0, m):
        raise ValueError(f"the set has {m} images but {distilled.weights.numel()} barycenter weights; "
                         f"pass use_weights=False to weight the images uniformly.")
    if use_weights and distilled.weights.numel() == m:
        w = (distilled.sample_weights * distilled.ipc).float()
    else:  # uniform (also for sets without barycenter weights, e.g. a whole training set)
        w = torch.ones(m)
    soft = distilled.soft_labels.float()
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(m / bs)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    T = float(temperature)
    losses = []
    bar = _bar(epochs, "student", progress)
    model.train()
    try:
        for _ in range(epochs):
            perm = torch.randperm(m, generator=g)
            tot = 0.0
            for s0 in range(0, m, bs):
                idx = perm[s0:s0 + bs]
                if idx.numel() < 2 and any(isinstance(mm, nn.modules.batchnorm._BatchNorm) for mm in model.modules()):
                    continue  # BatchNorm cannot train on a batch of one
                xb = X[idx].to(dev)
                if aug:
                    xb = augment(xb, g, crop_scale=crop, flip=flip, jitter=jit)
                if teacher is not None:
                    with torch.no_grad():
                        tb = teacher(xb).float()
                else:
                    tb = soft[idx].to(dev)
                out = model(xb)
                kl = F.kl_div(F.log_softmax(out / T, dim=1), F.log_softmax(tb / T, dim=1), log_target=True,
                              reduction="none").sum(1)
                loss = (T * T) * (kl * w[idx].to(dev)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += loss.item() * idx.numel()
            losses.append(tot / m)
            bar.update(1)
    finally:
        bar.close()
        model.eval()
        if teacher is not None:
            teacher.train(t_was)
    return {"loss": losses}


# ----------------------------------------------------------------------------------------------------
# persistence
# ----------------------------------------------------------------------------------------------------
def save(result: DistilledSet, path) -> Path:
    """Write a distilled set to the directory ``path`` (``tensors.pt`` + ``settings.json``).

    Atomic: everything is written into a temporary directory beside ``path`` and renamed into place, so
    an interruption leaves either the old set or the new one, never a half-written one. Overwrites.
    """
    if not isinstance(result, DistilledSet):
        raise TypeError(f"result must be a DistilledSet; got {type(result).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        tensors = {k: getattr(result, k).detach().cpu().contiguous()
                   for k in ("images", "labels", "soft_labels", "weights", "atoms")}
        torch.save(tensors, tmp / _TENSOR_FILE)
        meta = {"format_version": FORMAT_VERSION, "settings": result.settings, "history": result.history}
        with open(tmp / _SETTINGS_FILE, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # put the previous set back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load(path) -> DistilledSet:
    """Read a distilled set written by ``save`` (tensors with ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not (path / _TENSOR_FILE).is_file() or not (path / _SETTINGS_FILE).is_file():
        raise ValueError(f"{path} is not a saved distilled set (expected {_TENSOR_FILE} and {_SETTINGS_FILE}).")
    tensors = torch.load(path / _TENSOR_FILE, weights_only=True, map_location="cpu")
    with open(path / _SETTINGS_FILE) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta.get('format_version')}; this dntk reads {FORMAT_VERSION}.")
    return DistilledSet(**tensors, settings=meta["settings"], history=meta["history"])
