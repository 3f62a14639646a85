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
