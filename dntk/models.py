"""Networks whose tangent features we study: build, train, save/load, and a cached trained model.

Every network is a :class:`Classifier`: ``features`` maps an input ``(N, C_in, H, W)`` to the
penultimate representation ``(N, D)`` (after global pooling and flatten) and ``head`` is an
``nn.Linear(D, C)``, so ``model(x) == model.head(model.features(x))`` gives logits ``(N, C)``.

:func:`training_loop` is the one optimisation loop of the package (optimizer, cosine schedule,
divergence check, progress bar); :func:`train` (cross-entropy on hard labels) and
:func:`dntk.wmdd.train_student` (distillation on soft labels) are thin users of it. Training settings
default to :data:`TEACHER_DEFAULTS` everywhere (``train``, ``trained`` and the pipeline's teacher).

``trained(...)`` trains a model once per machine and caches it, checksummed, in a
:class:`dntk.store.Store` under ``$DNTK_CACHE`` or ``~/.cache/dntk``; every notebook uses it for
"the trained digits convnet". Checkpoints written by :func:`save` carry a SHA-256 of their weights
that :func:`load` verifies.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import _common
from .store import Store, atomic_write_bytes, content_hash

log = logging.getLogger("dntk")

__all__ = ["Classifier", "MODELS", "build", "train", "training_loop", "evaluate", "save", "load", "trained",
           "resolve_cache_dir", "TrainingSettings", "TEACHER_DEFAULTS", "TEACHER_EPOCHS",
           "TRAINING_VERSION", "TrainingDivergedError"]

#: Names accepted by :func:`build`.
MODELS = ("convnet", "resnet18", "mlp")


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings of a network trained on hard labels (the teacher).

    Attributes
    ----------
    epochs : int
        Passes over the training set.
    lr : float
        Peak learning rate (decayed to 0 by the cosine ``schedule``).
    optimizer : {"adam", "sgd"}
        ``"sgd"`` uses ``momentum``.
    batch_size : int
        Samples per step.
    weight_decay : float
        L2 penalty of the optimizer.
    schedule : {"cosine", None}
        Per-step cosine decay (:func:`dntk._common.cosine_factor`) or a constant lr.
    momentum : float
        SGD momentum (unused by Adam).
    """

    epochs: int = 20
    lr: float = 3e-3
    optimizer: str = "adam"
    batch_size: int = 64
    weight_decay: float = 0.0
    schedule: str | None = "cosine"
    momentum: float = 0.9


#: The teacher's training settings, used by :func:`train`, :func:`trained` and the pipeline's teacher
#: (chosen for digits: about 97% test accuracy in seconds on a CPU).
TEACHER_DEFAULTS = TrainingSettings()
#: Teacher epochs (``TEACHER_DEFAULTS.epochs``), the one default for every teacher of the package.
TEACHER_EPOCHS = TEACHER_DEFAULTS.epochs
#: Bump when the training code changes in a way that changes the weights (part of every teacher cache key).
TRAINING_VERSION = 1


class TrainingDivergedError(ValueError):
    """Training produced a non-finite loss or non-finite weights (the message names the epoch)."""


class Classifier(nn.Module):
    """``head(features(x))``: ``features`` ``(N, C_in, H, W) -> (N, D)``, ``head`` ``nn.Linear(D, C)``."""

    def __init__(self, features: nn.Module, head: nn.Linear, in_channels: int, num_classes: int,
                 name: str = "", width: int | None = None):
        super().__init__()
        self.features = features
        self.head = head
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.name = name
        self.width = width

    @property
    def feature_dim(self) -> int:
        return int(self.head.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_channels={self.in_channels}, num_classes={self.num_classes}"


class _MaybePool(nn.Module):
    """2x2 max-pool when both spatial sides are >= 2, identity otherwise (so 8x8 up to 224x224 work)."""

    def forward(self, x):
        if x.shape[-1] >= 2 and x.shape[-2] >= 2:
            return F.max_pool2d(x, 2)
        return x


class _CheckedFlatten(nn.Module):
    """Flatten ``(N, *shape) -> (N, prod(shape))``, saying clearly when the input size is wrong."""

    def __init__(self, input_shape):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.numel = math.prod(self.input_shape)

    def forward(self, x):
        if math.prod(x.shape[1:]) != self.numel:
            raise ValueError(f"this mlp was built for inputs of shape {self.input_shape} but got "
                             f"{tuple(x.shape[1:])}; build it with input_shape={tuple(x.shape[1:])}.")
        return x.flatten(1)


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


def _build_convnet(num_classes, in_channels, width):
    w = 32 if width is None else int(width)
    chans = (w, w, 2 * w)
    layers = _conv_block(in_channels, chans[0]) + [_MaybePool()]
    layers += _conv_block(chans[0], chans[1]) + [_MaybePool()]
    layers += _conv_block(chans[1], chans[2])
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers), nn.Linear(chans[2], num_classes), w


def _build_resnet18(num_classes, in_channels, width):
    from torchvision.models import resnet18

    w = 64 if width is None else int(width)
    # narrower/wider resnet18 scales every stage (torchvision has no direct knob for that)
    net = resnet18(weights=None, num_classes=num_classes) if w == 64 else _scaled_resnet18(num_classes, w)
    net.conv1 = nn.Conv2d(in_channels, w, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3,
                             net.layer4, net.avgpool, nn.Flatten(1))
    return features, net.fc, w


def _scaled_resnet18(num_classes, w):
    from torchvision.models.resnet import BasicBlock, ResNet

    class _R(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = w, 1, 1, 64
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            self.bn1, self.relu = nn.BatchNorm2d(w), nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            self.layer1 = self._make_layer(BasicBlock, w, 2)
            self.layer2 = self._make_layer(BasicBlock, 2 * w, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, 4 * w, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, 8 * w, 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8 * w, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return _R()


def _build_mlp(num_classes, in_channels, width, input_shape):
    w = 128 if width is None else int(width)
    shape = (in_channels, 8, 8) if input_shape is None else tuple(int(s) for s in input_shape)
    if shape[0] != in_channels:
        raise ValueError(f"input_shape {shape} disagrees with in_channels={in_channels}; make them match.")
    d_in = math.prod(shape)
    features = nn.Sequential(_CheckedFlatten(shape), nn.Linear(d_in, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())
    return features, nn.Linear(w, num_classes), w


def build(name: str, num_classes: int, in_channels: int = 1, width: int | None = None, seed: int = 0,
          input_shape=None) -> Classifier:
    """Build a freshly initialised :class:`Classifier` (seeded; the global RNG is left as it was).

    Parameters
    ----------
    name : {"convnet", "resnet18", "mlp"}
        ``"convnet"``: three Conv3x3-BatchNorm-ReLU blocks with channels ``(w, w, 2w)`` (default
        ``w=32``: 28,842 parameters for 10 classes, 1 channel), 2x2 max-pool between blocks where the
        image is still >= 2 pixels, global average pool, ``D = 2w``. ``"resnet18"``: torchvision's
        ResNet-18 (``weights=None``) with a 3x3 stride-1 stem and no max-pool (small images), ``D = 8w``
        (default ``w=64``: the standard widths). ``"mlp"``: flatten + two hidden ReLU layers of width
        ``w`` (default 128).
    num_classes : int
        Outputs ``C``.
    in_channels : int
        Input channels.
    width : int, optional
        ``w`` above.
    seed : int
        Seeds the initialisation.
    input_shape : tuple, optional
        ``(in_channels, H, W)`` of the mlp's inputs (default ``(in_channels, 8, 8)``); mlp only.

    Returns
    -------
    Classifier
        In eval mode; ``model(x)`` maps ``(N, in_channels, H, W)`` to logits ``(N, C)``.
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}.")
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}.")
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be a positive int or None, got {width!r}.")
    name = name.lower()
    if input_shape is not None and name != "mlp":
        raise ValueError(f"input_shape is only used by 'mlp' ({name!r} works for any image size); drop it.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if name == "convnet":
            features, head, w = _build_convnet(num_classes, in_channels, width)
        elif name == "resnet18":
            features, head, w = _build_resnet18(num_classes, in_channels, width)
        else:
            features, head, w = _build_mlp(num_classes, in_channels, width, input_shape)
        model = Classifier(features, head, in_channels, num_classes, name=name, width=w)
    return model.eval()


# --------------------------------------------------------------------------- data plumbing
def _check_labels_dtype(y: torch.Tensor, what: str = "labels") -> None:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{what} must be integer class indices, got dtype {y.dtype}; convert whole-number "
                        "labels with y.long() (soft labels belong to dntk.wmdd.train_student).")


def _check_images(x: torch.Tensor, where: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{where}: images must be floating point (e.g. in [0, 1]), got dtype {x.dtype}; "
                        "convert with X.float() / 255 or load them with dntk.data.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: the images contain NaN or inf; clean the data before training or evaluating.")


def _as_dataset(data) -> Dataset:
    """A map-style Dataset from ``(X (N, C, H, W), y (N,))`` (checked here, once) or a Dataset (as is)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        X, y = data
        y = torch.as_tensor(y)
        if X.ndim != 4 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"(X, y) must be X (N, C, H, W) and y (N,), got {tuple(X.shape)} and {tuple(y.shape)}.")
        if len(X) == 0:
            raise ValueError("the data set is empty (N = 0); pass at least one sample.")
        _check_labels_dtype(y)
        _check_images(X, "(X, y)")
        return TensorDataset(X.float(), y.long())  # float32, the dtype of every model built here
    if isinstance(data, (tuple, list)) and len(data) == 2 and type(data[0]).__module__ == "numpy":
        raise TypeError(f"(X, y) must be torch tensors, got {type(data[0]).__name__} images; convert with "
                        "(torch.from_numpy(X), torch.from_numpy(y)).")
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        if not hasattr(data, "__len__"):
            raise TypeError("the dataset must be map-style (define __len__ and __getitem__).")
        if len(data) == 0:
            raise ValueError("the dataset is empty (N = 0); pass at least one sample.")
        return data
    raise TypeError(f"expected a Dataset or a tuple (X, y) of tensors, got {type(data).__name__}.")


def _data_channels(ds) -> int:
    c = getattr(ds, "in_channels", None)
    if c is None:
        x = ds[0][0]
        c = int(torch.as_tensor(x).shape[0])
    return int(c)


def _check_channels(model, ds):
    mc = getattr(model, "in_channels", None)
    dc = _data_channels(ds)
    if mc is not None and mc != dc:
        raise ValueError(f"the model expects {mc} input channel(s) but the data has {dc}; build the model with "
                         f"in_channels={dc} (e.g. dntk.models.build(name, num_classes, in_channels={dc})).")


def _num_outputs(model) -> int | None:
    c = getattr(model, "num_classes", None)
    return int(c) if isinstance(c, int) else None


def _check_batch(xb: torch.Tensor, yb: torch.Tensor, num_classes: int | None, where: str) -> None:
    """Per-batch checks for Dataset inputs (tensors were checked once in :func:`_as_dataset`)."""
    _check_labels_dtype(yb)
    _check_images(xb, where)
    if num_classes is not None:
        _check_label_range(yb, num_classes, where)


def _check_label_range(y: torch.Tensor, num_classes: int, where: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1} (the model has {num_classes} outputs), "
                         f"got labels from {int(y.min())} to {int(y.max())}; build the model with "
                         "num_classes = the number of classes, or fix the labels.")


# --------------------------------------------------------------------------- training
def training_loop(model: nn.Module, batches: Callable[[int], Iterable[Any]],
                  step_loss: Callable[[nn.Module, Any], tuple[torch.Tensor, int, dict] | None], *,
                  epochs: int, steps_per_epoch: int, lr: float, optimizer: str = "adam",
                  weight_decay: float = 0.0, momentum: float = 0.9, schedule: str | None = "cosine",
                  progress: bool = False, desc: str = "train") -> dict[str, list[float]]:
    """The package's one optimisation loop: optimizer, per-step cosine schedule, divergence check, progress.

    Parameters
    ----------
    model : nn.Module
        Trained in place (train mode inside, eval mode on return, also after an error). It must already
        be on the device its batches go to.
    batches : callable
        ``batches(epoch)`` yields the batch objects of one epoch (any type ``step_loss`` understands).
    step_loss : callable
        ``step_loss(model, batch) -> (loss, n, sums)`` with ``loss`` the scalar mean loss of the batch,
        ``n`` its sample count and ``sums`` a dict of per-batch totals (e.g. ``{"accuracy": correct}``);
        or ``None`` to skip the batch (no optimizer or scheduler step).
    epochs, steps_per_epoch : int
        The cosine schedule runs over ``epochs * steps_per_epoch`` steps.
    lr, optimizer, weight_decay, momentum, schedule
        As in :class:`TrainingSettings`; Adam uses its default betas.
    progress : bool
        Show a ``tqdm`` bar over epochs.
    desc : str
        Label of the bar and of error messages.

    Returns
    -------
    dict
        ``{"loss": [...], **{name: [...] for name in sums}}``: per epoch, the sample-weighted mean loss
        and ``sum(sums[name]) / sum(n)``.

    Raises
    ------
    TrainingDivergedError
        A non-finite loss (naming the epoch and step), or non-finite weights after an epoch.
    """
    lr = _common.check_positive(lr, "lr")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'.")
    if schedule not in (None, "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or None.")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}.")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
    _common.check_model_finite(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    total = max(1, epochs * steps_per_epoch)
    sched = _common.cosine_schedule(opt, total) if schedule == "cosine" else None
    history: dict[str, list[float]] = {"loss": []}
    bar = _common.progress_bar(epochs, desc, progress)
    model.train()
    try:
        for epoch in range(epochs):
            tot_loss, n_tot, sums = 0.0, 0, {}
            for step, batch in enumerate(batches(epoch)):
                out = step_loss(model, batch)
                if out is None:
                    continue
                loss, n, extra = out
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(
                        f"{desc}: training diverged in epoch {epoch + 1} of {epochs} (step {step + 1}): the loss "
                        f"is {loss_value}; lower lr (now {lr:g}) or check the data and the model's weights.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                tot_loss += loss_value * n
                n_tot += n
                for k, v in extra.items():
                    sums[k] = sums.get(k, 0) + v
            try:
                _common.check_model_finite(model)
            except ValueError as e:
                raise TrainingDivergedError(f"{desc}: training diverged in epoch {epoch + 1} of {epochs}: {e}") from None
            history["loss"].append(tot_loss / max(n_tot, 1))
            for k, v in sums.items():
                history.setdefault(k, []).append(v / max(n_tot, 1))
            bar.update(1)
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    finally:
        bar.close()
        model.eval()
    return history


def train(model: nn.Module, dataset, epochs: int = TEACHER_DEFAULTS.epochs, lr: float = TEACHER_DEFAULTS.lr,
          optimizer: str = TEACHER_DEFAULTS.optimizer, batch_size: int = TEACHER_DEFAULTS.batch_size,
          weight_decay: float = TEACHER_DEFAULTS.weight_decay, seed: int = 0, device="cpu",
          progress: bool = False, schedule: str | None = TEACHER_DEFAULTS.schedule,
          momentum: float = TEACHER_DEFAULTS.momentum) -> dict:
    """Train with cross-entropy on hard labels, seeded (same seed -> identical weights on the same device).

    Parameters
    ----------
    model : nn.Module
        Trained in place; its weights must be finite.
    dataset : Dataset or (X, y)
        A map-style Dataset of ``(image (C, H, W), label)`` or a tuple ``(X (N, C, H, W) float, y (N,) int)``
        with at least two samples, finite pixels and labels in ``0..C-1``.
    epochs, lr, optimizer, batch_size, weight_decay, schedule, momentum
        As in :class:`TrainingSettings`; defaults :data:`TEACHER_DEFAULTS`.
    seed : int
        Seeds the shuffling through a local ``torch.Generator`` (the global RNG is untouched).
    device : str or torch.device
        Where to train; the model is left there.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``{"loss": [...], "accuracy": [...]}`` per epoch (mean training loss, training accuracy measured
        on the fly). The model is left in eval mode on ``device``.

    Raises
    ------
    TrainingDivergedError
        The loss or the weights became non-finite (the message names the epoch).
    """
    _common.check_model(model)
    ds = _as_dataset(dataset)
    _check_channels(model, ds)
    epochs = _common.check_int(epochs, "epochs", 0)
    batch_size = _common.check_int(batch_size, "batch_size", 1)
    _common.check_positive(lr, "lr")
    if len(ds) < 2:
        raise ValueError(f"training needs at least 2 samples (BatchNorm cannot train on one), got {len(ds)}.")
    _common.check_model_finite(model)
    C = _num_outputs(model)
    if isinstance(ds, TensorDataset) and C is not None:
        _check_label_range(ds.tensors[1], C, "train")
    dev = _common.resolve_device(device)
    model.to(dev)
    g = torch.Generator().manual_seed(int(seed))
    # a last batch of one sample breaks BatchNorm in train mode: drop it only in that case
    drop_last = len(ds) % batch_size == 1
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=drop_last, num_workers=0)
    checked = isinstance(ds, TensorDataset)

    def step_loss(m, batch):
        xb, yb = batch
        yb = torch.as_tensor(yb)
        if not checked:
            _check_batch(torch.as_tensor(xb), yb, C, "train")
        xb, yb = xb.to(dev), yb.to(dev)
        logits = m(xb)
        if C is None:
            _check_label_range(yb, logits.shape[1], "train")
        loss = F.cross_entropy(logits, yb)
        return loss, len(yb), {"accuracy": int((logits.detach().argmax(1) == yb).sum())}

    history = training_loop(model, lambda epoch: loader, step_loss, epochs=epochs, steps_per_epoch=len(loader),
                            lr=lr, optimizer=optimizer, weight_decay=weight_decay, momentum=momentum,
                            schedule=schedule, progress=progress,
                            desc=f"train {getattr(model, 'name', '')}".strip())
    history.setdefault("accuracy", [])
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 256, device=None) -> float:
    """Accuracy of ``model`` (in eval mode) on labelled data.

    Parameters
    ----------
    model : nn.Module
        Classifier with finite weights; its train/eval flags and device are restored afterwards.
    data : Dataset or (X (N, C_in, H, W) float, y (N,) int)
        Finite images, labels in ``0..C-1`` (``C`` = the model's outputs).
    batch_size : int
        Inputs per forward pass.
    device : str or torch.device, optional
        Where to evaluate (default where the model is).

    Returns
    -------
    float
        Fraction of argmax predictions equal to the labels. Anything invalid above raises
        ``ValueError``/``TypeError`` instead of returning a meaningless number.
    """
    _common.check_model(model)
    ds = _as_dataset(data)
    _check_channels(model, ds)
    batch_size = _common.check_int(batch_size, "batch_size", 1)
    _common.check_model_finite(model)
    checked = isinstance(ds, TensorDataset)
    correct, n = 0, 0
    with _common.on_device(model, device) as dev, _common.eval_mode(model):
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=False):
            yb = torch.as_tensor(yb)
            if not checked:
                _check_labels_dtype(yb)
                _check_images(torch.as_tensor(xb), "evaluate")
            logits = model(xb.to(dev))
            _check_label_range(yb, logits.shape[1], "evaluate")
            correct += int((logits.argmax(1).cpu() == yb).sum())
            n += len(yb)
    return correct / n


# --------------------------------------------------------------------------- checkpoints
_CHECKPOINT_FORMAT = "dntk-checkpoint-1"


def save(model: nn.Module, path) -> Path:
    """Save ``model.state_dict()`` (tensors on CPU) with its SHA-256 to ``path``, atomically.

    The file holds ``{"format", "sha256", "state_dict"}`` (:func:`dntk.store.content_hash` of the state),
    written through :func:`dntk.store.atomic_write_bytes` (temporary file, fsync, rename).
    """
    _common.check_model(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": _CHECKPOINT_FORMAT, "sha256": content_hash(state), "state_dict": state}, buf)
    return atomic_write_bytes(Path(path), buf.getvalue())


def load(model: nn.Module, path, device=None) -> nn.Module:
    """Load weights saved by :func:`save` into ``model`` (``torch.load(weights_only=True)``); returns it in eval mode.

    A file written by :func:`save` is verified against its SHA-256; a plain ``state_dict`` saved with
    ``torch.save`` is accepted too. Unreadable files, checksum mismatches, other architectures and
    non-finite weights raise ``ValueError`` naming the file.
    """
    _common.check_model(model)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            UnicodeDecodeError, AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); save one with dntk.models.save.") from None
    if isinstance(obj, dict) and obj.get("format") == _CHECKPOINT_FORMAT:
        state = obj.get("state_dict")
        if not isinstance(state, dict) or content_hash(state) != obj.get("sha256"):
            raise ValueError(f"the checkpoint {path} is corrupt (its weights do not match their recorded SHA-256); "
                             "restore it or save it again.")
    else:
        state = obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors (got {type(state).__name__}).")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the checkpoint {path} does not match this model's architecture; build the model "
                         f"with the same name/num_classes/in_channels/width it was saved with. Details: {e}") from None
    try:
        _common.check_model_finite(model)
    except ValueError as e:
        raise ValueError(f"the checkpoint {path} holds non-finite weights: {e}") from None
    if device is not None:
        model.to(_common.resolve_device(device))
    return model.eval()


# --------------------------------------------------------------------------- cached trained model
def resolve_cache_dir(path=None) -> Path:
    """``path``, else ``$DNTK_CACHE``, else ``~/.cache/dntk``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("DNTK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dntk"


def _arch_signature(model) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


@dataclasses.dataclass(frozen=True)
class TrainedTeacher:
    """A cached teacher and what its training measured (returned by :func:`trained_teacher`).

    Attributes
    ----------
    model : Classifier
        The trained network, in eval mode on CPU.
    test_accuracy : float
        Accuracy on the whole test split of the dataset, measured right after training.
    train_seconds : float
        Wall-clock seconds the training took when it ran (also when this call loaded it from the cache).
    status : str
        ``"computed"``, ``"cached"`` or ``"recomputed"`` (see :meth:`dntk.store.Store.fetch`).
    """

    model: Classifier
    test_accuracy: float
    train_seconds: float
    status: str


def trained(name: str = "convnet", dataset: str = "digits", seed: int = 0, epochs: int | None = None,
            lr: float | None = None, width: int | None = None, cache_dir=None, progress: bool = False,
            root=None, resize=None, optimizer: str | None = None, batch_size: int | None = None,
            weight_decay: float | None = None, device="cpu", train_per_class: int | None = None) -> Classifier:
    """The trained ``name`` on ``dataset``'s train split, trained once and cached; returned in eval mode on CPU.

    The network of :func:`trained_teacher` (same arguments), without the training record.
    """
    return trained_teacher(name, dataset, seed=seed, epochs=epochs, lr=lr, width=width, cache_dir=cache_dir,
                           progress=progress, root=root, resize=resize, optimizer=optimizer,
                           batch_size=batch_size, weight_decay=weight_decay, device=device,
                           train_per_class=train_per_class).model


def trained_teacher(name: str = "convnet", dataset: str = "digits", seed: int = 0, epochs: int | None = None,
                    lr: float | None = None, width: int | None = None, cache_dir=None, progress: bool = False,
                    root=None, resize=None, optimizer: str | None = None, batch_size: int | None = None,
                    weight_decay: float | None = None, device="cpu",
                    train_per_class: int | None = None) -> TrainedTeacher:
    """The trained ``name`` on ``dataset``'s train split, trained once and cached, with its training record.

    ``train_per_class`` trains on the seeded class-balanced subset of :func:`dntk.data.load` (seed ``seed``)
    instead of the whole training split; it is part of the cache key, so chapters that ask for the same
    subset and settings share one teacher.

    Settings left ``None`` take :data:`TEACHER_DEFAULTS` (Adam, lr 3e-3 with cosine decay, 20 epochs,
    batch 64: the digits convnet reaches about 97% test accuracy in seconds on CPU).

    Cache: the stage ``teacher`` of a :class:`dntk.store.Store` at ``cache_dir`` (default
    ``$DNTK_CACHE`` or ``~/.cache/dntk``), keyed by every setting, :data:`TRAINING_VERSION` and the
    architecture's parameter shapes; the artifact holds the weights, the training history and the test
    accuracy, each checksummed. A corrupted or replaced cached weight fails verification and is
    retrained (with a one-line warning), never loaded.
    """
    from . import data as _data

    settings = dataclasses.asdict(TEACHER_DEFAULTS)
    for k, v in (("epochs", epochs), ("lr", lr), ("optimizer", optimizer), ("batch_size", batch_size),
                 ("weight_decay", weight_decay)):
        if v is not None:
            settings[k] = v
    subset = {} if train_per_class is None else {"train_per_class": train_per_class, "seed": seed}
    train_ds = _data.load(dataset, "train", root=root, resize=resize, **subset)
    model = build(name, train_ds.num_classes, in_channels=train_ds.in_channels, width=width, seed=seed,
                  **({"input_shape": (train_ds.in_channels, *train_ds.image_size)} if name == "mlp" else {}))
    key = {"version": TRAINING_VERSION, "name": name, "dataset": dataset,
           "root": None if root is None else str(root), "resize": resize, "seed": seed, "width": width,
           **({} if train_per_class is None else {"train_per_class": train_per_class}), **settings, "arch": _arch_signature(model)}

    def compute() -> dict:
        t0 = time.perf_counter()
        history = train(model, train_ds, seed=seed, device=device, progress=progress,
                        **{k: settings[k] for k in ("epochs", "lr", "optimizer", "batch_size", "weight_decay",
                                                    "schedule", "momentum")})
        seconds = time.perf_counter() - t0
        model.cpu().eval()
        test_acc = evaluate(model, _data.load(dataset, "test", root=root, resize=resize))
        log.info("dntk: trained %s on %s in %.1fs, test accuracy %.4f", name, dataset, seconds, test_acc)
        return {"state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "history": history, "test_accuracy": test_acc, "train_seconds": seconds,
                "num_params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}

    got = Store(resolve_cache_dir(cache_dir)).fetch("teacher", key, compute)
    if got.status == "cached":
        log.info("dntk: loaded cached %s (%s)", name, got.key)
    model.load_state_dict(got.artifact["state"])
    return TrainedTeacher(model.cpu().eval(), float(got.artifact["test_accuracy"]),
                          float(got.artifact["train_seconds"]), got.status)
