"""Datasets: scikit-learn digits (the default everywhere), Fashion-MNIST and local image folders.

``load(name, split)`` returns a map-style :class:`torch.utils.data.Dataset` of
``(image, label)`` pairs with ``image`` a float32 tensor ``(C, H, W)`` in ``[0, 1]`` and
``label`` an ``int``. Pixels are **not** normalised (no mean/std shift): every chapter
works with raw ``[0, 1]`` pixels, so the network, the tangent features and WMDD all see
the same inputs. Nothing here ever downloads: image datasets are read from a local root.

Fashion-MNIST (60,000 + 10,000 grayscale 28x28 images, ten classes) is read from the four
original IDX files, searched in ``root``, ``$DNTK_DATA/fashion-mnist`` and the Debian package's
``/usr/share/datasets/fashion-mnist`` (each also in torchvision's ``FashionMNIST/raw`` layout).

``as_tensors(dataset, limit, per_class, seed)`` stacks a (seeded, optionally
class-balanced) subset into ``X (N, C, H, W)`` float32 and ``y (N,)`` int64.
"""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

log = logging.getLogger("dntk")

__all__ = ["load", "as_tensors", "subset_indices", "labels_of", "stratified_indices", "resolve_root",
           "fashion_mnist_dirs", "read_idx",
           "DATASETS", "DEFAULT_SIZES", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES",
           "FASHION_MNIST_SYSTEM_DIR", "TensorImageDataset", "FolderDataset"]

#: Names accepted by :func:`load` (plus ``"folder:<path>"``, always last).
DATASETS = ("digits", "fashion-mnist", "imagenette", "imagewoof", "cifar10", "folder:<path>")
#: Side length images are resized/center-cropped to when ``resize`` is None.
DEFAULT_SIZES = {"imagenette": 128, "imagewoof": 128, "cifar10": 32, "folder": 64}
#: Digits split: 1437 train / 360 test, stratified, this seed.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

_SPLITS = ("train", "test", "val")
_ENV_ROOT = "DNTK_DATA"

#: The ten Fashion-MNIST classes, in label order (Xiao, Rasul & Vollgraf 2017).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
#: IDX file stems per split: (images, labels); each is read as ``<stem>.gz`` or uncompressed ``<stem>``.
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
}
_IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}


class TensorImageDataset(Dataset):
    """In-memory dataset of images ``(N, C, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], name: str = ""):
        self.images = images.contiguous()
        self.targets = targets.to(torch.int64)
        self.classes = list(classes)
        self.name = name

    num_classes = property(lambda self: len(self.classes))
    in_channels = property(lambda self: int(self.images.shape[1]))
    image_size = property(lambda self: tuple(int(s) for s in self.images.shape[2:]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])

    def __repr__(self) -> str:
        return (f"TensorImageDataset({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"shape={(self.in_channels, *self.image_size)})")


class FolderDataset(Dataset):
    """Wraps a torchvision dataset (``ImageFolder``, ``CIFAR10``) with the dntk attributes."""

    def __init__(self, base, classes: Sequence[str], in_channels: int, image_size: int, name: str = ""):
        self.base = base
        self.classes = list(classes)
        self.in_channels = int(in_channels)
        self.image_size = (int(image_size), int(image_size))
        self.name = name
        self.targets = torch.as_tensor(np.asarray(base.targets), dtype=torch.int64)

    num_classes = property(lambda self: len(self.classes))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        try:
            x, y = self.base[i]
        except (OSError, SyntaxError) as e:  # PIL: unidentified, truncated or broken image file
            samples = getattr(self.base, "samples", None)
            where = f"image file {samples[i][0]}" if samples is not None else f"item {i}"
            raise ValueError(f"{self.name or 'dataset'}: cannot read {where} ({type(e).__name__}: {e}); "
                             "replace or delete that file.") from e
        return x, int(y)

    def __repr__(self) -> str:
        return (f"FolderDataset({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"shape={(self.in_channels, *self.image_size)})")


def load(name: str, split: str = "train", root=None, resize=None, grayscale: bool = False,
         train_per_class: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset split as ``(image (C, H, W) float32 in [0, 1], label int)`` pairs.

    name: ``"digits"`` (scikit-learn 8x8 digits, stratified seeded split 1437 train / 360 test,
        images ``(1, 8, 8)`` = pixel/16), ``"fashion-mnist"`` (the original IDX files, 60,000 train /
        10,000 test images ``(1, 28, 28)`` = byte/255, classes ``FASHION_MNIST_CLASSES``; searched as
        described in :func:`fashion_mnist_dirs`), ``"imagenette"``, ``"imagewoof"`` (``root/train``,
        ``root/val`` in ImageFolder layout), ``"cifar10"`` (the python version extracted under
        ``root``, read with ``torchvision.datasets.CIFAR10(root, download=False)``) or
        ``"folder:<path>"`` (``<path>/<split>/<class>/<image>``).
    split: ``"train"`` or ``"test"``; ``"val"`` is an alias of ``"test"`` (and vice versa for
        folders that have a ``val/`` but no ``test/`` directory).
    root: directory of the image datasets; default ``$DNTK_DATA/<name>`` (Fashion-MNIST: see
        :func:`fashion_mnist_dirs`). Unused for digits.
    resize: side length in pixels. Digits and Fashion-MNIST are resized bilinearly (defaults: 8 and
        28, their native sizes). Image folders are
        resized (shorter side) and center-cropped to it (defaults: ``DEFAULT_SIZES``).
    grayscale: read folder/CIFAR images as one channel instead of RGB.
    train_per_class: keep a seeded class-balanced subset of the training split, ``train_per_class``
        images of each class, in dataset order (the same subset as ``as_tensors(ds, per_class=...,
        seed=seed)``; see :func:`stratified_indices`). Digits and Fashion-MNIST only; a value larger
        than a class is an error.
    seed: seed of that subset.

    Pixels are only scaled to [0, 1] (``ToTensor``, byte/255), never mean/std normalised. Never downloads.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}; valid names: {', '.join(DATASETS)}.")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test' ('val' is an alias of 'test').")
    if resize is not None and (not isinstance(resize, (int, np.integer)) or isinstance(resize, bool) or resize < 1):
        raise ValueError(f"resize must be a positive int (side length in pixels) or None, got {resize!r}.")
    if train_per_class is not None:
        if not isinstance(train_per_class, (int, np.integer)) or isinstance(train_per_class, bool) or train_per_class < 1:
            raise ValueError(f"train_per_class must be a positive int or None, got {train_per_class!r}.")
        if split != "train":
            raise ValueError(f"train_per_class subsets the training split, but split={split!r}; drop it for the "
                             "test split (use as_tensors(ds, limit=...) to shorten a test set).")
    key = name.lower()
    if key in ("digits", "fashion-mnist"):
        ds = _load_digits(split, resize) if key == "digits" else _load_fashion_mnist(split, root, resize)
        if train_per_class is None:
            return ds
        idx = stratified_indices(ds.targets, int(train_per_class), seed=seed, strict=True)
        return TensorImageDataset(ds.images[idx], ds.targets[idx], ds.classes, name=ds.name)
    if train_per_class is not None:
        raise ValueError(f"train_per_class is supported for 'digits' and 'fashion-mnist' only; for {name!r} use "
                         "as_tensors(ds, per_class=..., seed=...).")
    if key in ("imagenette", "imagewoof"):
        return _load_imagenet_subset(key, split, root, resize, grayscale)
    if key == "cifar10":
        return _load_cifar10(split, root, resize, grayscale)
    if key.startswith("folder:"):
        path = name[len("folder:"):]
        if not path:
            raise ValueError("'folder:' needs a path, e.g. load('folder:/data/mydata', 'train').")
        return _load_folder(Path(path).expanduser(), split, resize, grayscale, name=name)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.")


# --------------------------------------------------------------------------- digits
_DIGITS_CACHE: dict = {}


def _digits_arrays():
    if "xy" not in _DIGITS_CACHE:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        X = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
        y = d.target.astype(np.int64)
        idx_tr, idx_te = train_test_split(
            np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_SEED)
        # keep the original sklearn order inside each split (stable, independent of the shuffle)
        _DIGITS_CACHE["xy"] = (X, y, np.sort(idx_tr), np.sort(idx_te))
    return _DIGITS_CACHE["xy"]


def _load_digits(split: str, resize) -> TensorImageDataset:
    X, y, idx_tr, idx_te = _digits_arrays()
    idx = idx_tr if split == "train" else idx_te
    images = _resize_bilinear(torch.from_numpy(X[idx].copy()), resize)
    return TensorImageDataset(images, torch.from_numpy(y[idx].copy()), [str(i) for i in range(10)], name="digits")


def _resize_bilinear(images: torch.Tensor, resize) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``(N, C, resize, resize)``, clamped to [0, 1]."""
    if resize is None or tuple(images.shape[2:]) == (int(resize), int(resize)):
        return images
    return F.interpolate(images, size=(int(resize), int(resize)), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- Fashion-MNIST
_IDX_MAGIC = {1: 2049, 3: 2051}  # 0x00000801 labels (1-D), 0x00000803 images (3-D), unsigned bytes
_FASHION_CACHE: dict = {}
_FASHION_HELP = ("Get them with the Debian package (sudo apt-get install dataset-fashion-mnist, which installs "
                 f"{FASHION_MNIST_SYSTEM_DIR}), or on a networked machine with torchvision: "
                 "torchvision.datasets.FashionMNIST($DNTK_DATA, download=True), or run `make data`.")


def read_idx(path) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` or uncompressed) into a uint8 array.

    Checks the magic number (2049 for a label vector ``(n,)``, 2051 for images ``(n, rows, cols)``) and
    that the payload holds exactly the number of bytes the header declares; any mismatch is a
    ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise ValueError(f"cannot read IDX file {path}: {e}; the file is corrupt or truncated, replace it. "
                         f"{_FASHION_HELP}") from None
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated ({len(raw)} bytes, not even a header); replace it. {_FASHION_HELP}")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if magic not in _IDX_MAGIC.values() or _IDX_MAGIC.get(ndim) != magic:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes: magic number {magic:#010x}, expected "
                         f"0x00000801 (labels) or 0x00000803 (images); replace it. {_FASHION_HELP}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header; replace it. {_FASHION_HELP}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"IDX file {path} is {what}: the header declares shape {tuple(dims)} ({expected} bytes) "
                         f"but the file holds {len(raw)} bytes; replace it. {_FASHION_HELP}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def fashion_mnist_dirs(root=None) -> list[Path]:
    """Directories searched for the Fashion-MNIST IDX files, in order.

    With ``root``: ``root`` and ``root/FashionMNIST/raw`` only (an explicit root never falls back).
    Without: ``$DNTK_DATA/fashion-mnist``, ``$DNTK_DATA/FashionMNIST/raw`` (torchvision's layout),
    then ``FASHION_MNIST_SYSTEM_DIR`` (``/usr/share/datasets/fashion-mnist``, the Debian package).
    """
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / "FashionMNIST" / "raw"]
    dirs = []
    env = os.environ.get(_ENV_ROOT)
    if env:
        e = Path(env).expanduser()
        dirs += [e / "fashion-mnist", e / "fashion-mnist" / "FashionMNIST" / "raw", e / "FashionMNIST" / "raw"]
    return dirs + [FASHION_MNIST_SYSTEM_DIR]


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_mnist_dir(root) -> Path:
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    dirs = fashion_mnist_dirs(root)
    for d in dirs:
        if all(_idx_file(d, s) is not None for s in stems):
            return d
    raise ValueError("Fashion-MNIST files not found: looked for " + ", ".join(s + "[.gz]" for s in stems)
                     + " in " + ", ".join(str(d) for d in dirs)
                     + ("" if root is not None else f" (set ${_ENV_ROOT} or pass root= to look elsewhere)")
                     + f". {_FASHION_HELP}")


def _fashion_arrays(split: str, root) -> tuple[np.ndarray, np.ndarray]:
    d = _fashion_mnist_dir(root)
    img_path, lab_path = (_idx_file(d, s) for s in FASHION_MNIST_FILES[split])
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (img_path, lab_path))
    if key not in _FASHION_CACHE:
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{img_path} holds arrays of shape {images.shape}, expected (n, 28, 28) images; "
                             f"replace it. {_FASHION_HELP}")
        if labels.ndim != 1:
            raise ValueError(f"{lab_path} holds arrays of shape {labels.shape}, expected a label vector (n,); "
                             f"replace it. {_FASHION_HELP}")
        if len(images) != len(labels):
            raise ValueError(f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels; "
                             f"the files do not belong together, replace them. {_FASHION_HELP}")
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{lab_path} holds label {int(labels.max())}, but Fashion-MNIST has labels 0-9; "
                             f"replace it. {_FASHION_HELP}")
        if len(_FASHION_CACHE) >= 2:  # at most the two splits of one copy in memory (train: 47 MB of bytes)
            _FASHION_CACHE.clear()
        _FASHION_CACHE[key] = (images, labels)
    return _FASHION_CACHE[key]


def _load_fashion_mnist(split: str, root, resize) -> TensorImageDataset:
    images, labels = _fashion_arrays("train" if split == "train" else "test", root)
    X = torch.from_numpy(images.astype(np.float32)[:, None]).div_(255.0)  # (n, 1, 28, 28), byte/255
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorImageDataset(_resize_bilinear(X, resize), y, FASHION_MNIST_CLASSES, name="fashion-mnist")


# --------------------------------------------------------------------------- local image data
def _transform(size: int, grayscale: bool, crop: bool = True):
    from torchvision import transforms as T

    steps = [T.Grayscale(1)] if grayscale else []
    steps += [T.Resize(size), T.CenterCrop(size)] if crop else [T.Resize((size, size))]
    steps.append(T.ToTensor())
    return T.Compose(steps)


def resolve_root(name: str, root=None) -> Path:
    """The directory ``load(name, ..., root=root)`` reads from (``root``, else ``$DNTK_DATA/<name>``).

    For ``"fashion-mnist"`` the first directory of :func:`fashion_mnist_dirs` that holds all four IDX
    files. Raises ``ValueError`` saying where to put the files when no root can be determined or found.
    """
    if name == "fashion-mnist":
        return _fashion_mnist_dir(root)
    if root is None:
        env = os.environ.get(_ENV_ROOT)
        if not env:
            raise ValueError(
                f"dataset {name!r} is read from local files and nothing is downloaded: pass root=<dir> "
                f"(or set ${_ENV_ROOT} so that ${_ENV_ROOT}/{name} is used). {_LAYOUT[name]}")
        root = Path(env) / name
    return Path(root).expanduser()



_LAYOUT = {
    "imagenette": ("Expected layout: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG, e.g. the "
                   "extracted imagenette2-160 archive from https://github.com/fastai/imagenette."),
    "imagewoof": ("Expected layout: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG, e.g. the "
                  "extracted imagewoof2-160 archive from https://github.com/fastai/imagenette."),
    "cifar10": ("Expected layout: <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, "
                "i.e. the extracted cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html."),
    "folder": "Expected layout: <path>/<split>/<class name>/<image files> (split = train, test or val).",
}


def _split_dir(base: Path, split: str, kind: str) -> Path:
    candidates = ["train"] if split == "train" else ([split, "val" if split == "test" else "test"])
    for c in candidates:
        if (base / c).is_dir():
            return base / c
    raise ValueError(f"no {split!r} split under {base}: put the images in {base / candidates[0]}/<class>/. {_LAYOUT[kind]}")


def _image_folder(directory: Path, size: int, grayscale: bool, kind: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(directory), transform=_transform(size, grayscale))
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images
        raise ValueError(f"could not read images from {directory}: {e}. {_LAYOUT[kind]}") from None


def _load_imagenet_subset(name: str, split: str, root, resize, grayscale) -> FolderDataset:
    base = resolve_root(name, root)
    if not base.is_dir():
        raise ValueError(f"{name} root {base} does not exist; put the files there. {_LAYOUT[name]}")
    size = int(resize or DEFAULT_SIZES[name])
    ds = _image_folder(_split_dir(base, split, name), size, grayscale, name)
    names = _IMAGENETTE_CLASSES if name == "imagenette" else _IMAGEWOOF_CLASSES
    classes = [names.get(c, c) for c in ds.classes]
    return FolderDataset(ds, classes, 1 if grayscale else 3, size, name=name)


def _load_cifar10(split: str, root, resize, grayscale) -> FolderDataset:
    from torchvision.datasets import CIFAR10

    base = resolve_root("cifar10", root)
    if not base.is_dir():
        raise ValueError(f"cifar10 root {base} does not exist; put the files there. {_LAYOUT['cifar10']}")
    size = int(resize or DEFAULT_SIZES["cifar10"])
    tf = _transform(size, grayscale, crop=False)
    try:
        ds = CIFAR10(str(base), train=(split == "train"), download=False, transform=tf)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted" (its download hint does not apply)
        raise ValueError(f"CIFAR-10 files not found or corrupted under {base}; dntk never downloads: put them in "
                         f"{base / 'cifar-10-batches-py'}. {_LAYOUT['cifar10']}") from None
    return FolderDataset(ds, list(ds.classes), 1 if grayscale else 3, size, name="cifar10")


def _load_folder(path: Path, split: str, resize, grayscale, name: str) -> FolderDataset:
    if not path.is_dir():
        raise ValueError(f"folder {path} does not exist; put the images there. {_LAYOUT['folder']}")
    size = int(resize or DEFAULT_SIZES["folder"])
    ds = _image_folder(_split_dir(path, split, "folder"), size, grayscale, "folder")
    return FolderDataset(ds, list(ds.classes), 1 if grayscale else 3, size, name=name)


# --------------------------------------------------------------------------- stacking
def labels_of(dataset) -> torch.Tensor:
    """Labels ``(N,)`` int64 of a map-style dataset of ``(input, label)`` items, without reading its inputs
    when it can: from its ``targets`` (this package's datasets, torchvision's), through ``Subset`` objects;
    otherwise by reading every item."""
    if isinstance(dataset, torch.utils.data.Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    t = getattr(dataset, "targets", None)
    if t is None or len(t) != len(dataset):
        t = [dataset[i][1] for i in range(len(dataset))]
    if torch.is_tensor(t):
        t = t.cpu().numpy()
    elif not isinstance(t, np.ndarray):  # a list of ints, NumPy scalars or one-element tensors
        t = np.asarray([v.item() if hasattr(v, "item") else v for v in t])
    if t.ndim != 1 or (t.size and t.dtype.kind not in "iu"):
        raise TypeError(f"labels must be integer class indices, one per item; got {t.dtype} of shape {t.shape}.")
    return torch.as_tensor(t, dtype=torch.int64)


def stratified_indices(targets, per_class: int, seed: int = 0, strict: bool = False) -> torch.Tensor:
    """Indices ``(M,)`` of a seeded class-balanced subset, sorted (dataset order kept).

    One ``torch.Generator`` seeded with ``seed``; for each class in increasing label order, the first
    ``per_class`` entries of a random permutation of that class's indices. A class with fewer samples
    is kept whole, unless ``strict`` (then it is a ``ValueError`` naming the class and its size).
    """
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(y).tolist():
        idx_c = torch.nonzero(y == c).flatten()
        if strict and per_class > len(idx_c):
            raise ValueError(f"train_per_class={per_class} is larger than class {c}, which has {len(idx_c)} training "
                             f"samples; use at most {int(torch.bincount(y).min())} per class (or None for all).")
        perm = torch.randperm(len(idx_c), generator=g)
        keep.append(idx_c[perm[:per_class]])
    return torch.sort(torch.cat(keep)).values


def subset_indices(dataset, limit=None, per_class=None, seed: int = 0) -> torch.Tensor:
    """Indices ``(M,)`` into `dataset` of the samples :func:`as_tensors` keeps (without reading any image).

    per_class: keep a seeded balanced subset (:func:`stratified_indices`: the first ``per_class``
        indices of a seeded permutation of each class, all of a class if it has fewer); the kept
        samples stay in dataset order.
    limit: then keep the first ``limit`` samples (in dataset order).
    """
    if len(dataset) == 0:
        raise ValueError("dataset is empty.")
    for arg, v in (("limit", limit), ("per_class", per_class)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{arg} must be a positive int or None, got {v!r}.")
    if per_class is not None:
        idx = stratified_indices(labels_of(dataset), int(per_class), seed=seed)
    else:
        idx = torch.arange(len(dataset))
    return idx if limit is None else idx[: int(limit)]


def as_tensors(dataset, limit=None, per_class=None, seed: int = 0):
    """Stack a dataset into ``X (N, C, H, W)`` float32 and ``y (N,)`` int64 (the samples of
    :func:`subset_indices` with the same arguments)."""
    idx = subset_indices(dataset, limit=limit, per_class=per_class, seed=seed)
    if isinstance(dataset, TensorImageDataset):
        return dataset.images[idx].clone(), dataset.targets[idx].clone()
    xs, ys = [], []
    for i in idx.tolist():
        x, y = dataset[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
