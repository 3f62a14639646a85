"""Tests for dntk.models: architectures, seeded training, guards, checkpoints, the cached trained model."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from dntk import data, models
from dntk.store import Store, content_hash


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def digits_small():
    X, y = data.as_tensors(data.load("digits", "train"), per_class=20, seed=0)
    return X, y


@pytest.mark.parametrize("name", ["convnet", "resnet18", "mlp"])
def test_build_shapes_and_head_features_split(name):
    m = models.build(name, num_classes=7, in_channels=1)
    assert isinstance(m, models.Classifier) and m.in_channels == 1 and m.num_classes == 7
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7
    assert not m.training  # built in eval mode
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        f = m.features(x)
        out = m(x)
    assert f.shape == (4, m.head.in_features) and out.shape == (4, 7)
    torch.testing.assert_close(out, m.head(f), rtol=0, atol=0)


def test_convnet_param_count_about_30k():
    # convnet, 10 classes, 1 channel, default width 32: channels (32, 32, 64), bias-free convs:
    # 288 + 9216 + 18432 (conv) + 256 (BN) + 650 (head) = 28,842 parameters.
    m = models.build("convnet", 10, in_channels=1)
    n = _nparams(m)
    assert 20_000 <= n <= 40_000
    assert n == 9 * (1 * 32 + 32 * 32 + 32 * 64) + 2 * (32 + 32 + 64) + 64 * 10 + 10
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 3
    assert models.build("convnet", 10, width=8).head.in_features == 16


@pytest.mark.parametrize("size", [8, 16, 32, 224])
def test_convnet_works_from_8_to_224_pixels(size):
    m = models.build("convnet", 3, in_channels=3, width=4)
    with torch.no_grad():
        assert m(torch.rand(2, 3, size, size)).shape == (2, 3)


@pytest.mark.parametrize("hw", [32, 8])
def test_resnet18_small_image_stem(hw):
    m = models.build("resnet18", 10, in_channels=3)
    assert m.features[0].kernel_size == (3, 3) and m.features[0].stride == (1, 1)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    assert m.head.in_features == 512
    ref = __import__("torchvision").models.resnet18(weights=None, num_classes=10)
    # same as torchvision's resnet18 except the stem: 64*3*7*7 -> 64*3*3*3 weights
    assert _nparams(m) == _nparams(ref) - 64 * 3 * 49 + 64 * 3 * 9
    x = torch.rand(2, 3, hw, hw)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.head(m.features(x)), rtol=0, atol=0)
        assert m(x).shape == (2, 10)


def test_mlp_input_shape():
    m = models.build("mlp", 5, in_channels=3, input_shape=(3, 4, 4), width=16)
    assert m(torch.rand(2, 3, 4, 4)).shape == (2, 5)
    assert _nparams(m) == (48 * 16 + 16) + (16 * 16 + 16) + (16 * 5 + 5)
    with pytest.raises(ValueError, match="input_shape"):
        m(torch.rand(2, 3, 8, 8))


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = models.build("convnet", 10, seed=1)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = models.build("convnet", 10, seed=1)
    c = models.build("convnet", 10, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.0.weight"], sc["features.0.weight"])


def test_unknown_model_and_bad_args():
    with pytest.raises(ValueError) as e:
        models.build("vgg", 10)
    assert all(n in str(e.value) for n in ("convnet", "resnet18", "mlp"))
    with pytest.raises(ValueError, match="num_classes"):
        models.build("convnet", 0)


def test_train_is_deterministic_and_reduces_loss(digits_small):
    X, y = digits_small
    ws = []
    for _ in range(2):
        m = models.build("convnet", 10, width=8, seed=0)
        h = models.train(m, (X, y), epochs=4, lr=1e-2, batch_size=32, seed=5)
        ws.append(m.state_dict())
        assert not m.training
    assert all(torch.equal(ws[0][k], ws[1][k]) for k in ws[0])  # includes BN running stats
    assert len(h["loss"]) == 4 and len(h["accuracy"]) == 4
    assert h["loss"][-1] < 0.8 * h["loss"][0]
    m3 = models.build("convnet", 10, width=8, seed=0)
    models.train(m3, (X, y), epochs=4, lr=1e-2, batch_size=32, seed=6)
    assert not torch.equal(m3.state_dict()["features.0.weight"], ws[0]["features.0.weight"])


def test_train_sgd_on_dataset_object():
    ds = data.load("digits", "test")
    m = models.build("mlp", 10, width=32)
    h = models.train(m, ds, epochs=3, lr=0.05, optimizer="sgd", batch_size=64, schedule=None)
    assert h["loss"][-1] < h["loss"][0]
    acc = models.evaluate(m, ds)
    # evaluate == accuracy computed by hand
    X, y = data.as_tensors(ds)
    with torch.no_grad():
        assert acc == pytest.approx((m(X).argmax(1) == y).double().mean().item())


def test_channel_mismatch_says_how_to_fix(digits_small):
    m = models.build("convnet", 10, in_channels=3)
    with pytest.raises(ValueError) as e:
        models.train(m, digits_small, epochs=1)
    assert "in_channels=1" in str(e.value) and "3" in str(e.value)
    with pytest.raises(ValueError, match="in_channels"):
        models.evaluate(m, data.load("digits", "test"))


def test_save_load_round_trip_exact(tmp_path, digits_small):
    m = models.build("convnet", 10, width=8, seed=0)
    models.train(m, digits_small, epochs=1, batch_size=64)
    p = models.save(m, tmp_path / "sub" / "w.pt")
    assert p.is_file() and not list(p.parent.glob("*.tmp"))
    m2 = models.load(models.build("convnet", 10, width=8, seed=9), p)
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    x = digits_small[0][:5]
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    with pytest.raises(ValueError, match="architecture"):
        models.load(models.build("convnet", 10, width=16), p)
    with pytest.raises(FileNotFoundError):
        models.load(m2, tmp_path / "missing.pt")


def test_trained_caches_in_the_store_and_equals_direct_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DNTK_CACHE", str(tmp_path))
    kw = dict(name="convnet", dataset="digits", seed=0, epochs=2, width=8)
    m1 = models.trained(**kw)
    assert not m1.training
    store = Store(tmp_path)
    (key,) = store.keys("teacher")
    art = store.load("teacher", key)
    assert store.settings("teacher", key)["epochs"] == 2 and len(art["history"]["loss"]) == 2
    assert art["test_accuracy"] == pytest.approx(models.evaluate(m1, data.load("digits", "test")))
    # the cached weights are those of training by hand with the same settings
    ref = models.build("convnet", 10, width=8, seed=0)
    models.train(ref, data.load("digits", "train"), epochs=2, seed=0)
    assert all(torch.equal(ref.state_dict()[k], m1.state_dict()[k]) for k in ref.state_dict())

    def boom(*a, **k):
        raise AssertionError("trained() retrained despite a cache hit")

    monkeypatch.setattr(models, "train", boom)
    m2 = models.trained(**kw)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and not m2.training
    # any change of settings is a different cache entry (and so would train)
    with pytest.raises(AssertionError, match="retrained"):
        models.trained(**{**kw, "epochs": 3})
    with pytest.raises(AssertionError, match="retrained"):
        models.trained(**{**kw, "cache_dir": tmp_path / "other"})


def test_teacher_defaults_are_defined_once():
    import inspect

    d = models.TEACHER_DEFAULTS
    sig = inspect.signature(models.train).parameters
    for name in ("epochs", "lr", "optimizer", "batch_size", "weight_decay", "schedule", "momentum"):
        assert sig[name].default == getattr(d, name)
    assert models.TEACHER_EPOCHS == d.epochs
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.epochs = 1


def test_train_leaves_global_rng_and_threads_alone(digits_small):
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    models.train(models.build("mlp", 10, width=8), digits_small, epochs=1, seed=3)
    assert torch.equal(torch.rand(4), expected) and torch.get_num_threads() == threads


def test_training_diverges_with_a_clear_error_naming_the_epoch(digits_small):
    m = models.build("mlp", 10, width=16, seed=0)
    with pytest.raises(models.TrainingDivergedError, match=r"diverged in epoch \d+ of 5") as e:
        models.train(m, digits_small, epochs=5, lr=1e12, optimizer="sgd", schedule=None, momentum=0.0)
    assert "lower lr" in str(e.value) or "NaN" in str(e.value)
    assert not m.training


def test_save_writes_a_verified_checksum_and_load_refuses_corruption(tmp_path):
    m = models.build("mlp", 3, width=4, seed=0)
    p = models.save(m, tmp_path / "w.pt")
    obj = torch.load(p, weights_only=True)
    assert obj["sha256"] == content_hash(m.state_dict())
    # same file layout, one weight changed but the recorded checksum kept: refused
    obj["state_dict"]["head.bias"] = obj["state_dict"]["head.bias"] + 1.0
    torch.save(obj, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="corrupt"):
        models.load(models.build("mlp", 3, width=4), tmp_path / "tampered.pt")
    # a plain state_dict (torch.save(model.state_dict())) still loads
    torch.save(m.state_dict(), tmp_path / "plain.pt")
    m2 = models.load(models.build("mlp", 3, width=4, seed=5), tmp_path / "plain.pt")
    assert torch.equal(m2.head.weight, m.head.weight)
