"""Tests for dntk.data: digits split, value ranges, folder loading, as_tensors, error messages."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from dntk import data


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def test_digits_split_sizes_and_attributes(digits):
    tr, te = digits
    assert len(tr) == 1437 and len(te) == 360
    for ds in (tr, te):
        assert ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
        assert ds.in_channels == 1 and ds.image_size == (8, 8)
        x, y = ds[0]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)


def test_digits_split_is_a_stratified_partition_of_sklearn_digits(digits):
    tr, te = digits
    d = load_digits()
    Xtr, ytr = data.as_tensors(tr)
    Xte, yte = data.as_tensors(te)
    # together the two splits are exactly sklearn's 1797 images (pixel / 16), each once
    ref = torch.from_numpy(d.images.reshape(len(d.images), -1) / 16.0).float()
    both = torch.cat([Xtr, Xte]).reshape(-1, 64)
    assert torch.equal(torch.sort(both, dim=0).values, torch.sort(ref, dim=0).values)
    rows_ref = {tuple(r.tolist()) + (int(t),) for r, t in zip(ref, d.target)}
    rows = [tuple(r.tolist()) + (int(t),) for r, t in zip(both, torch.cat([ytr, yte]))]
    assert set(rows) == rows_ref
    # stratified: each class's test count is its share of 360, within rounding
    full = np.bincount(d.target, minlength=10)
    test_counts = np.bincount(yte.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - full * 360 / 1797) <= 1)
    assert np.array_equal(np.bincount(ytr.numpy(), minlength=10) + test_counts, full)


def test_digits_values_in_unit_interval_and_split_is_fixed(digits):
    tr, _ = digits
    X, _ = data.as_tensors(tr)
    assert X.min() >= 0 and X.max() <= 1 and X.max() > 0.9
    X2, y2 = data.as_tensors(data.load("digits", "train"))
    assert torch.equal(X, X2)


def test_digits_resize_is_bilinear(digits):
    ds = data.load("digits", "test", resize=16)
    assert ds.image_size == (16, 16) and len(ds) == 360
    x, _ = ds[3]
    ref = F.interpolate(digits[1][3][0][None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert x.shape == (1, 16, 16)
    torch.testing.assert_close(x, ref.clamp(0, 1))
    assert x.min() >= 0 and x.max() <= 1


def test_as_tensors_per_class_and_limit(digits):
    tr, _ = digits
    X, y = data.as_tensors(tr, per_class=7, seed=3)
    assert X.shape == (70, 1, 8, 8) and y.dtype == torch.int64
    assert np.array_equal(np.bincount(y.numpy(), minlength=10), [7] * 10)
    # selected samples keep dataset order: find their indices in the full tensor
    Xall, yall = data.as_tensors(tr)
    flat = Xall.reshape(len(Xall), -1)
    idx = [int(torch.nonzero((flat == r).all(1)).flatten()[0]) for r in X.reshape(len(X), -1)]
    assert idx == sorted(idx)
    assert torch.equal(yall[idx], y)
    # seeded: same seed same subset, other seed a different one
    assert torch.equal(data.as_tensors(tr, per_class=7, seed=3)[0], X)
    assert not torch.equal(data.as_tensors(tr, per_class=7, seed=4)[0], X)
    Xl, yl = data.as_tensors(tr, limit=25)
    assert torch.equal(Xl, Xall[:25]) and torch.equal(yl, yall[:25])
    assert data.as_tensors(tr, per_class=7, limit=20, seed=3)[0].shape[0] == 20


def _write_folder(root, splits=("train", "val"), classes=("cat", "dog"), n=3, size=(20, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_folder_loading(tmp_path):
    _write_folder(tmp_path)
    ds = data.load(f"folder:{tmp_path}", "train", resize=10)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.in_channels == 3 and ds.image_size == (10, 10)
    x, y = ds[4]
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32 and y == 1
    assert x.min() >= 0 and x.max() <= 1
    # "test" falls back to the val/ directory
    X, y = data.as_tensors(data.load(f"folder:{tmp_path}", "test", resize=10))
    assert X.shape == (6, 3, 10, 10) and y.tolist() == [0, 0, 0, 1, 1, 1]
    g = data.load(f"folder:{tmp_path}", "train", resize=10, grayscale=True)
    assert g.in_channels == 1 and g[0][0].shape == (1, 10, 10)
    Xp, yp = data.as_tensors(ds, per_class=2)
    assert Xp.shape == (4, 3, 10, 10) and sorted(yp.tolist()) == [0, 0, 1, 1]


def test_folder_no_resize_uses_default_size(tmp_path):
    _write_folder(tmp_path, splits=("train",), n=1, size=(80, 70))
    ds = data.load(f"folder:{tmp_path}", "train")
    s = data.DEFAULT_SIZES["folder"]
    assert ds[0][0].shape == (3, s, s)


def test_imagenette_layout_from_root(tmp_path):
    _write_folder(tmp_path, classes=("n01440764", "n02102040"), n=2)
    ds = data.load("imagenette", "val", root=tmp_path, resize=8)
    assert ds.classes == ["tench", "English springer"] and len(ds) == 4 and ds[0][0].shape == (3, 8, 8)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        data.load("mnist")
    msg = str(e.value)
    assert "mnist" in msg and all(n in msg for n in ("digits", "imagenette", "imagewoof", "cifar10", "folder:"))


def test_bad_split_and_resize():
    with pytest.raises(ValueError, match="split"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="resize"):
        data.load("digits", resize=0)


def test_missing_root_names_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DNTK_DATA", raising=False)
    with pytest.raises(ValueError) as e:
        data.load("imagenette")
    assert "root" in str(e.value) and "DNTK_DATA" in str(e.value) and "train" in str(e.value)
    missing = tmp_path / "nowhere"
    for name in ("imagewoof", "cifar10"):
        with pytest.raises(ValueError) as e:
            data.load(name, root=missing)
        assert str(missing) in str(e.value) and "layout" in str(e.value).lower()
    with pytest.raises(ValueError) as e:
        data.load(f"folder:{missing}")
    assert str(missing) in str(e.value)
    # env var root: $DNTK_DATA/<name>
    monkeypatch.setenv("DNTK_DATA", str(tmp_path))
    with pytest.raises(ValueError) as e:
        data.load("imagewoof")
    assert str(tmp_path / "imagewoof") in str(e.value)


def test_missing_split_directory(tmp_path):
    _write_folder(tmp_path, splits=("train",), n=1)
    with pytest.raises(ValueError) as e:
        data.load(f"folder:{tmp_path}", "test")
    assert str(tmp_path / "test") in str(e.value)


def test_missing_cifar_files_says_where_to_put_them(tmp_path):
    with pytest.raises(ValueError) as e:
        data.load("cifar10", "train", root=tmp_path)  # exists, but holds no batches
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "download=True" not in msg


def test_cifar10_reads_local_batches(tmp_path, monkeypatch):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for nm in names:
        with open(d / nm, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # torchvision checks md5 sums of the real files: switch the checks off for this fake copy
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    ds = data.load("cifar10", "test", root=tmp_path)
    assert len(ds) == 4 and ds.num_classes == 10 and ds.in_channels == 3 and ds.image_size == (32, 32)
    x, y = ds[2]
    assert x.shape == (3, 32, 32) and y == 2 and 0 <= x.min() and x.max() <= 1


# --------------------------------------------------------------------------- Fashion-MNIST (IDX files)
def _idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file written independently of dntk: big-endian magic 0x0000080<ndim>, dims, raw bytes."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fashion(d, n_train=30, n_test=20, gz=True, seed=0):
    """Small Fashion-MNIST copy in ``d``: labels cycle 0..9, random pixel bytes. Returns the arrays."""
    import gzip

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labs)
        arrays[split] = (imgs, labs)
        for stem, arr in zip(data.FASHION_MNIST_FILES[split], (imgs, labs)):
            if gz:
                with gzip.open(d / f"{stem}.gz", "wb") as f:
                    f.write(_idx_bytes(arr))
            else:
                (d / stem).write_bytes(_idx_bytes(arr))
    return arrays


@pytest.fixture
def no_fashion_env(monkeypatch, tmp_path):
    """No $DNTK_DATA and an empty system directory, so only what a test writes is found."""
    monkeypatch.delenv("DNTK_DATA", raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system-empty")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_matches_raw_bytes(tmp_path, no_fashion_env, gz):
    arrays = _write_fashion(tmp_path / "fm", gz=gz)
    for split in ("train", "test"):
        ds = data.load("fashion-mnist", split, root=tmp_path / "fm")
        imgs, labs = arrays[split]
        assert len(ds) == len(labs) and ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (28, 28)
        assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot"]
        X, y = data.as_tensors(ds)
        assert X.dtype == torch.float32 and X.shape == (len(labs), 1, 28, 28)
        np.testing.assert_array_equal(X.numpy()[:, 0], imgs.astype(np.float32) / 255.0)  # pixels = byte / 255
        np.testing.assert_array_equal(y.numpy(), labs.astype(np.int64))
    assert len(data.load("fashion-mnist", "val", root=tmp_path / "fm")) == 20  # "val" = the test split


def test_fashion_mnist_search_order(tmp_path, monkeypatch, no_fashion_env):
    system = tmp_path / "system"
    sys_arrays = _write_fashion(system, n_train=10, seed=1)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system)
    assert len(data.load("fashion-mnist", "train")) == 10  # only the system copy exists
    # torchvision's layout under $DNTK_DATA comes before the system directory
    env = tmp_path / "env"
    _write_fashion(env / "FashionMNIST" / "raw", n_train=40, seed=2)
    monkeypatch.setenv("DNTK_DATA", str(env))
    assert len(data.load("fashion-mnist", "train")) == 40
    # $DNTK_DATA/fashion-mnist comes first
    _write_fashion(env / "fashion-mnist", n_train=50, seed=3)
    assert len(data.load("fashion-mnist", "train")) == 50
    assert data.resolve_root("fashion-mnist") == env / "fashion-mnist"
    # an explicit root wins, in its own torchvision layout too, and never falls back
    explicit = tmp_path / "explicit"
    _write_fashion(explicit / "FashionMNIST" / "raw", n_train=60, seed=4)
    assert len(data.load("fashion-mnist", "train", root=explicit)) == 60
    with pytest.raises(ValueError, match="not found"):
        data.load("fashion-mnist", "train", root=tmp_path / "elsewhere")
    X, _ = data.as_tensors(data.load("fashion-mnist", "train", root=system))
    np.testing.assert_array_equal(X.numpy()[:, 0] * 255.0, sys_arrays["train"][0].astype(np.float32))


def test_fashion_mnist_missing_files_message(tmp_path, no_fashion_env):
    with pytest.raises(ValueError) as e:
        data.load("fashion-mnist", "train")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "system-empty") in msg
    assert "dataset-fashion-mnist" in msg and "DNTK_DATA" in msg and "download=True" in msg  # both routes
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as e:
        data.load("fashion-mnist", "test", root=empty)
    assert str(empty) in str(e.value) and str(empty / "FashionMNIST" / "raw") in str(e.value)


def test_fashion_mnist_corrupt_files(tmp_path, no_fashion_env):
    d = tmp_path / "fm"
    _write_fashion(d, gz=False)
    img = d / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes(good[:-100])  # truncated payload
    with pytest.raises(ValueError, match="truncated") as e:
        data.load("fashion-mnist", "train", root=d)
    assert str(img) in str(e.value)
    img.write_bytes(good[:6])  # truncated inside the header
    with pytest.raises(ValueError, match="truncated") as e:
        data.load("fashion-mnist", "train", root=d)
    assert str(img) in str(e.value)
    img.write_bytes(b"\x00\x00\x08\x02" + good[4:])  # wrong magic (a 2-D file)
    with pytest.raises(ValueError, match="magic") as e:
        data.load("fashion-mnist", "train", root=d)
    assert str(img) in str(e.value)
    img.write_bytes(good)
    lab = d / "train-labels-idx1-ubyte"
    lab.write_bytes(_idx_bytes(np.zeros(29, dtype=np.uint8)))  # 30 images, 29 labels
    with pytest.raises(ValueError, match="30 images") as e:
        data.load("fashion-mnist", "train", root=d)
    assert str(lab) in str(e.value)
    lab.write_bytes(_idx_bytes(np.full(30, 12, dtype=np.uint8)))  # label out of range
    with pytest.raises(ValueError, match="label 12"):
        data.load("fashion-mnist", "train", root=d)
    img.write_bytes(_idx_bytes(np.zeros((30, 32, 32), dtype=np.uint8)))  # wrong image shape
    with pytest.raises(ValueError, match="28, 28"):
        data.load("fashion-mnist", "train", root=d)
    # a cut-off gzip stream
    d2 = tmp_path / "fm2"
    _write_fashion(d2, gz=True)
    gzf = d2 / "t10k-images-idx3-ubyte.gz"
    gzf.write_bytes(gzf.read_bytes()[:200])
    with pytest.raises(ValueError) as e:
        data.load("fashion-mnist", "test", root=d2)
    assert str(gzf) in str(e.value)
    gzf.write_bytes(b"not a gzip file at all")
    with pytest.raises(ValueError) as e:
        data.load("fashion-mnist", "test", root=d2)
    assert str(gzf) in str(e.value)


def test_fashion_mnist_train_per_class(tmp_path, no_fashion_env):
    d = tmp_path / "fm"
    arrays = _write_fashion(d, n_train=50)  # 5 per class
    full = data.load("fashion-mnist", "train", root=d)
    sub = data.load("fashion-mnist", "train", root=d, train_per_class=3, seed=7)
    assert len(sub) == 30 and np.array_equal(np.bincount(sub.targets.numpy(), minlength=10), [3] * 10)
    # independent reference: the same seeded per-class permutation written out with torch directly
    labs = torch.as_tensor(arrays["train"][1].astype(np.int64))
    g = torch.Generator().manual_seed(7)
    ref = []
    for c in range(10):
        idx_c = torch.nonzero(labs == c).flatten()
        ref.append(idx_c[torch.randperm(len(idx_c), generator=g)[:3]])
    ref = torch.sort(torch.cat(ref)).values
    assert torch.equal(sub.images, full.images[ref]) and torch.equal(sub.targets, labs[ref])
    # the same subset as as_tensors(per_class=...), which the pipeline uses
    Xp, yp = data.as_tensors(full, per_class=3, seed=7)
    assert torch.equal(Xp, sub.images) and torch.equal(yp, sub.targets)
    assert not torch.equal(data.load("fashion-mnist", "train", root=d, train_per_class=3, seed=8).images, sub.images)
    assert len(data.load("digits", "train", train_per_class=4)) == 40
    with pytest.raises(ValueError, match="larger than class"):
        data.load("fashion-mnist", "train", root=d, train_per_class=6)
    with pytest.raises(ValueError, match="split"):
        data.load("fashion-mnist", "test", root=d, train_per_class=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="train_per_class"):
            data.load("fashion-mnist", "train", root=d, train_per_class=bad)
    with pytest.raises(ValueError, match="per_class"):
        data.load("imagenette", "train", root=d, train_per_class=2)


def test_fashion_mnist_resize(tmp_path, no_fashion_env):
    d = tmp_path / "fm"
    _write_fashion(d)
    ds = data.load("fashion-mnist", "test", root=d, resize=32)
    ref = F.interpolate(data.load("fashion-mnist", "test", root=d).images, size=(32, 32), mode="bilinear",
                        align_corners=False).clamp(0, 1)
    assert ds.image_size == (32, 32)
    torch.testing.assert_close(ds.images, ref)


def test_fashion_mnist_installed_copy_if_present():
    """The real files on this machine (the Debian package), when installed: official counts and balance."""
    if not all((data.FASHION_MNIST_SYSTEM_DIR / (s + ".gz")).is_file()
               for pair in data.FASHION_MNIST_FILES.values() for s in pair):
        pytest.skip("dataset-fashion-mnist is not installed here (make data installs it)")
    tr = data.load("fashion-mnist", "train", root=data.FASHION_MNIST_SYSTEM_DIR)
    te = data.load("fashion-mnist", "test", root=data.FASHION_MNIST_SYSTEM_DIR)
    assert len(tr) == 60000 and len(te) == 10000
    assert np.array_equal(np.bincount(te.targets.numpy()), [1000] * 10)
    assert np.array_equal(np.bincount(tr.targets.numpy()), [6000] * 10)


def test_labels_of_reads_targets_through_subsets_without_reading_images():
    class NoImages(torch.utils.data.Dataset):
        targets = [3, 1, 4, 1, 5, 9, 2, 6]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            raise AssertionError("an image was read")

    inner = torch.utils.data.Subset(NoImages(), [7, 5, 3, 1])
    outer = torch.utils.data.Subset(inner, [2, 0])
    assert data.labels_of(outer).tolist() == [1, 6]
    assert data.labels_of(inner).dtype == torch.int64
    # without `targets`, the labels come from the items
    pairs = torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1]))
    assert data.labels_of(torch.utils.data.Subset(pairs, [2, 1])).tolist() == [1, 0]
    # float labels are refused, not truncated
    with pytest.raises(TypeError, match="integer class indices"):
        data.labels_of(torch.utils.data.TensorDataset(torch.zeros(2, 2), torch.tensor([0.0, 1.5])))
