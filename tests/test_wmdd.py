"""Tests for dntk.wmdd (appendix §4.1) against independent references: POT called directly, class means,
mean/var computed on the whole class at once, brute-force Voronoi cells."""
import copy
import json
import os

import numpy as np
import ot
import pytest
import torch
from torch import nn

from dntk import wmdd
from dntk.store import Store

C, N_PER, H = 3, 16, 8


class TinyBN(nn.Module):
    """A small BN convnet with the dntk Classifier interface (.features, .head)."""

    def __init__(self, num_classes=C, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class TinyMLP(nn.Module):
    def __init__(self, num_classes=C, bn=True):
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(H * H, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def _data(seed=0, n_per=N_PER):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(C, 1, H, H, generator=g)
    X = (protos.repeat_interleave(n_per, 0) + 0.3 * torch.randn(C * n_per, 1, H, H, generator=g)).clamp(0, 1)
    y = torch.arange(C).repeat_interleave(n_per)
    return X, y


@pytest.fixture(scope="module")
def teacher_data():
    X, y = _data()
    model = TinyBN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):  # a few steps so the BN running statistics and weights are non-trivial
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    model.eval()
    return model, X, y


# ---------------------------------------------------------------------------------------------- barycenter
def test_barycenter_equals_direct_pot_call():
    rng = np.random.default_rng(1)
    F_ = rng.normal(size=(40, 5))
    bc = wmdd.barycenter(F_, 4, seed=[7, 2])
    assert len(set(bc.init.tolist())) == 4
    ref = ot.lp.free_support_barycenter([F_], [np.full(40, 1 / 40)], F_[bc.init].copy(), b=np.full(4, 0.25))
    np.testing.assert_allclose(bc.atoms, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bc.weights, 0.25)
    # same seed, same initialisation; another seed, another one
    assert np.array_equal(wmdd.barycenter(F_, 4, seed=[7, 2]).init, bc.init)
    assert not np.array_equal(wmdd.barycenter(F_, 4, seed=[8, 2]).init, bc.init)


def test_barycenter_ipc1_is_class_mean():
    F_ = np.random.default_rng(2).normal(size=(25, 6))
    np.testing.assert_allclose(wmdd.barycenter(F_, 1).atoms[0], F_.mean(0), rtol=0, atol=1e-12)


def test_weighted_barycenter_is_voronoi_fixed_point():
    rng = np.random.default_rng(3)
    F_ = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(10, 2)) + 6])
    bc = wmdd.barycenter(F_, 2, seed=0, weighted=True)
    assert abs(bc.weights.sum() - 1) < 1e-12
    assign = ((F_[:, None] - bc.atoms[None]) ** 2).sum(-1).argmin(1)  # brute-force Voronoi cells
    np.testing.assert_allclose(bc.weights, np.bincount(assign, minlength=2) / len(F_))
    for j in range(2):
        np.testing.assert_allclose(bc.atoms[j], F_[assign == j].mean(0), atol=1e-9)
    assert sorted(np.round(bc.weights, 6)) == [0.25, 0.75]


def test_barycenter_in_1d_is_the_closed_form_of_sorted_blocks():
    """In 1-D the optimal transport between n points and m equal-mass atoms is monotone, so the uniform
    barycenter with m atoms (n divisible by m) puts each atom at the mean of one block of n/m sorted points."""
    x = np.random.default_rng(4).normal(size=24) * 3
    for m in (1, 2, 3, 4, 6):
        bc = wmdd.barycenter(x[:, None], m, seed=m)
        blocks = np.sort(x).reshape(m, -1).mean(1)
        np.testing.assert_allclose(np.sort(bc.atoms[:, 0]), blocks, rtol=0, atol=1e-10)


def test_weighted_barycenter_is_a_kmeans_fixed_point():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(5)
    sizes, centres = (5, 15, 30), np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    F_ = np.concatenate([c + 0.5 * rng.normal(size=(n, 2)) for n, c in zip(sizes, centres)])
    for seed in range(4):
        # for one input measure a weighted barycenter is a fixed point of Lloyd's k-means: scikit-learn's
        # KMeans started at its atoms does not move them, and its cell masses are the weights
        bc = wmdd.barycenter(F_, 3, seed=seed, weighted=True)
        km = KMeans(3, init=bc.atoms, n_init=1, tol=0, algorithm="lloyd").fit(F_)
        np.testing.assert_allclose(bc.atoms, km.cluster_centers_, atol=1e-9)
        np.testing.assert_allclose(bc.weights, np.bincount(km.labels_, minlength=3) / len(F_), atol=1e-12)


def _pot_fixed_point_residual(feats, atoms, weights):
    """‖atoms − barycentric projection of the optimal plan‖: zero at a free-support barycenter (POT, direct)."""
    plan = ot.emd(ot.unif(len(feats)), np.asarray(weights, dtype=np.float64), ot.dist(feats, atoms))
    return np.abs(atoms - (plan.T @ feats) / plan.sum(0)[:, None]).max()


def test_distill_atoms_are_barycenters_of_the_penultimate_features(teacher_data):
    model, X, y = teacher_data
    for ipc in (1, 3):
        res = wmdd.distill(model, (X, y), ipc, iterations=0, seed=5)
        for c in range(C):
            with torch.no_grad():
                feats = model.features(X[y == c]).double().numpy()  # direct, no hook
            atoms = res.atoms[c].double().numpy()
            if ipc == 1:
                np.testing.assert_allclose(atoms[0], feats.mean(0), rtol=1e-5, atol=1e-6)
            assert _pot_fixed_point_residual(feats, atoms, res.weights[c].numpy()) < 1e-5


# ---------------------------------------------------------------------------------------------- BN statistics
def test_class_bn_statistics_exact_for_any_batch_size(teacher_data):
    model, X, y = teacher_data
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    ref = {}
    hooks = [b.register_forward_pre_hook(lambda mod, inp, i=i: ref.__setitem__(i, inp[0].double()))
             for i, b in enumerate(bns)]
    direct = []
    with torch.no_grad():
        for c in range(C):
            model(X[y == c])  # the whole class in one batch
            direct.append([(ref[i].mean(dim=(0, 2, 3)), ref[i].var(dim=(0, 2, 3), unbiased=False))
                           for i in range(len(bns))])
    for h in hooks:
        h.remove()
    for bs in (5, 1000):
        stats = wmdd.class_bn_statistics(model, X, y, batch_size=bs)
        assert len(stats) == len(bns)
        for l, (mean, var) in enumerate(stats):
            assert mean.shape == (C, bns[l].num_features) and mean.dtype == torch.float64
            for c in range(C):
                torch.testing.assert_close(mean[c], direct[c][l][0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(var[c], direct[c][l][1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- synthesis
def test_each_loss_term_decreases(teacher_data):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 2, iterations=40, lr=0.05, init="noise", augment_images=False, r_bn=1.0)
    for term in ("ce", "feature", "bn", "total"):
        h = np.asarray(res.history[term])
        assert h.shape == (40,)
        assert h[-5:].mean() < 0.8 * h[:5].mean(), (term, h[:5], h[-5:])
    # clipping keeps pixels in the data range
    assert res.images.min() >= X.min() and res.images.max() <= X.max()


def test_result_shapes_and_labels(teacher_data):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 2, iterations=3, seed=1)
    assert res.images.shape == (C * 2, 1, H, H) and res.images.dtype == torch.float32
    assert res.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert res.soft_labels.shape == (C * 2, C)
    torch.testing.assert_close(res.soft_labels, model(res.images).detach())
    assert res.weights.shape == (C, 2) and res.atoms.shape == (C, 2, 8)
    torch.testing.assert_close(res.weights.sum(1), torch.ones(C, dtype=torch.float64))
    assert res.settings["ipc"] == 2 and res.settings["betas"] == [0.5, 0.9]
    with pytest.raises(dataclasses_frozen_error()):
        res.images = None
    # real initialisation with zero iterations returns real samples of the right classes
    res0 = wmdd.distill(model, (X, y), 2, iterations=0, seed=1)
    for row, idx in enumerate(sum(res0.settings["init_indices"], [])):
        assert torch.equal(res0.images[row], X[idx]) and int(y[idx]) == int(res0.labels[row])


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_reproducible_for_a_seed(teacher_data):
    model, X, y = teacher_data
    kw = dict(iterations=10, seed=3, init="noise")
    a = wmdd.distill(model, (X, y), 2, **kw)
    b = wmdd.distill(model, (X, y), 2, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.soft_labels, b.soft_labels)
    assert a.history == b.history
    c = wmdd.distill(model, (X, y), 2, **{**kw, "seed": 4})
    assert not torch.equal(a.images, c.images)
    # chunking the classes rescales every term of an image's gradient by the same factor (the teacher
    # is in eval mode, so images do not interact) and Adam is scale-invariant: same images, up to eps
    e = wmdd.distill(model, (X, y), 2, **kw, augment_images=False)
    d = wmdd.distill(model, (X, y), 2, **kw, augment_images=False, class_batch=1)
    torch.testing.assert_close(d.images, e.images, rtol=0, atol=1e-4)
    assert not torch.equal(e.images, e.images.new_zeros(()).expand_as(e.images))


@pytest.mark.parametrize("init", ["real", "noise"])
def test_classes_synthesised_apart_and_joined_equal_one_call(teacher_data, init):
    """Each class is its own problem: distilling classes in separate calls (as ranks do) and joining them
    gives the one-call set bit for bit, augmentation included (its draws are seeded per class)."""
    model, X, y = teacher_data
    kw = dict(iterations=4, seed=3, init=init, class_batch=1)
    whole = wmdd.distill(model, (X, y), 2, **kw)
    C = whole.num_classes
    parts = [wmdd.distill(model, (X, y), 2, classes=cls, **kw) for cls in ([C - 1], list(range(C - 1)))]
    assert parts[0].settings["classes"] == [C - 1] and torch.equal(parts[0].labels, torch.full((2,), C - 1))
    joined = wmdd.join(parts, model)
    for name in ("images", "labels", "soft_labels", "weights", "atoms"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert joined.history == whole.history and joined.settings == whole.settings
    with pytest.raises(ValueError, match="cover the classes"):
        wmdd.join(parts[1:], model)
    with pytest.raises(ValueError, match="different settings"):
        wmdd.join([parts[1], wmdd.distill(model, (X, y), 2, classes=[C - 1], **{**kw, "seed": 4})], model)
    with pytest.raises(ValueError, match="partial sets"):
        wmdd.join([whole], model)
    with pytest.raises(ValueError, match="distinct class indices"):
        wmdd.distill(model, (X, y), 2, classes=[0, 0], **kw)
    with pytest.raises(ValueError, match="distinct class indices"):
        wmdd.distill(model, (X, y), 2, classes=[C], **kw)


def test_map_style_dataset_equals_tensors(teacher_data):
    model, X, y = teacher_data
    ds = torch.utils.data.TensorDataset(X, y)
    a = wmdd.distill(model, ds, 1, iterations=2)
    b = wmdd.distill(model, (X, y), 1, iterations=2)
    assert torch.equal(a.images, b.images)


def test_augment_identity_and_flip():
    x = torch.rand(4, 1, H, H)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(wmdd.augment(x, g, crop_scale=(1, 1), ratio=(1, 1), flip=False), x)
    out = wmdd.augment(x, g, crop_scale=(1, 1), ratio=(1, 1), flip=True)
    for i in range(4):
        assert torch.allclose(out[i], x[i], atol=1e-6) or torch.allclose(out[i], x[i].flip(-1), atol=1e-6)
    with pytest.raises(ValueError, match="B, C, H, W"):
        wmdd.augment(torch.rand(4, 64), g)


# ---------------------------------------------------------------------------------------------- student
def test_train_student_fits_soft_labels(teacher_data):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 3, iterations=20, seed=0)
    student = TinyBN(seed=9)
    hist = wmdd.train_student(student, res, epochs=60, lr=1e-2, temperature=2.0, augment_images=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert not student.training
    with torch.no_grad():
        agree = (student(res.images).argmax(1) == res.soft_labels.argmax(1)).float().mean()
    assert agree >= 0.8
    # relabelling by the teacher on augmented batches also trains
    hist2 = wmdd.train_student(TinyBN(seed=9), res, epochs=5, teacher=model)
    assert len(hist2["loss"]) == 5 and np.isfinite(hist2["loss"]).all()


# ---------------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path, teacher_data):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 2, iterations=4, weighted=True)
    p = wmdd.save(res, tmp_path / "set")
    back = wmdd.load(p)
    for k in ("images", "labels", "soft_labels", "weights", "atoms"):
        a, b = getattr(res, k), getattr(back, k)
        assert a.dtype == b.dtype and torch.equal(a, b), k
    assert back.settings == json.loads(json.dumps(res.settings)) and back.settings == res.settings
    assert back.history == res.history
    with pytest.raises(ValueError, match="not a saved distilled set"):
        wmdd.load(tmp_path / "nothing")


def test_interrupted_save_leaves_no_partial_set(tmp_path, teacher_data, monkeypatch):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 1, iterations=1)
    target = tmp_path / "set"
    real_save = np.save
    calls = {"n": 0}

    def interrupted_save(*a, **k):  # the third array file of the set: some written, then interrupted
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        wmdd.save(res, target)
    assert not target.exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    wmdd.save(res, target)
    calls["n"] = 0
    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):  # a failed overwrite keeps the old set intact
        wmdd.save(res, target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["set"] and torch.equal(wmdd.load(target).images, res.images)


class _Interrupting(nn.Module):
    """Wraps a teacher and raises KeyboardInterrupt on its ``after``-th forward call (a user's Ctrl-C)."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0
        self.features, self.head = inner.features, inner.head

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.after:
            raise KeyboardInterrupt
        return self.inner(x)


def test_cache_dir_reuses_and_interrupted_run_writes_nothing(tmp_path, teacher_data, caplog):
    model, X, y = teacher_data
    a = wmdd.distill(model, (X, y), 1, iterations=3, cache_dir=tmp_path)
    store = Store(tmp_path)
    assert len(store.keys("wmdd")) == 1
    with caplog.at_level("INFO", logger="dntk"):
        b = wmdd.distill(model, (X, y), 1, iterations=3, cache_dir=tmp_path)
    assert any("reusing" in r.getMessage() for r in caplog.records)
    assert torch.equal(a.images, b.images) and a.settings == b.settings and a.history == b.history
    with pytest.raises(KeyboardInterrupt):  # mid-synthesis
        wmdd.distill(_Interrupting(model, after=10), (X, y), 1, iterations=4, cache_dir=tmp_path)
    assert len(store.keys("wmdd")) == 1
    assert [p.name for p in (tmp_path / "wmdd").iterdir() if p.name.startswith(".")] == []
    # other teacher weights are another key, even with equal settings
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias.add_(0.01)
    wmdd.distill(other, (X, y), 1, iterations=3, cache_dir=tmp_path)
    assert len(store.keys("wmdd")) == 2


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs(teacher_data):
    model, X, y = teacher_data
    no_bn = nn.Sequential()
    no_bn.features = nn.Sequential(nn.Flatten(), nn.Linear(H * H, 4), nn.ReLU())
    no_bn.head = nn.Linear(4, C)
    no_bn.forward = lambda x: no_bn.head(no_bn.features(x))
    with pytest.raises(ValueError, match="r_bn=0"):
        wmdd.distill(no_bn, (X, y), 1, iterations=1)
    assert wmdd.distill(no_bn, (X, y), 1, iterations=2, r_bn=0).images.shape == (C, 1, H, H)
    with pytest.raises(ValueError, match="exceeds"):
        wmdd.distill(model, (X, y), N_PER + 1, iterations=1)
    keep = y != 1
    with pytest.raises(ValueError, match=r"\[1\] have no samples"):
        wmdd.distill(model, (X[keep], y[keep]), 1, iterations=1)
    with pytest.raises(ValueError, match="ipc"):
        wmdd.distill(model, (X, y), 0)
    with pytest.raises(ValueError, match="init"):
        wmdd.distill(model, (X, y), 1, init="zeros")
    # flat inputs: augmentation impossible; without it BatchNorm1d matching works
    Xf = X.reshape(len(X), -1)
    mlp = TinyMLP().eval()
    with pytest.raises(ValueError, match="not images"):
        wmdd.distill(mlp, (Xf, y), 1, iterations=1)
    res = wmdd.distill(mlp, (Xf, y), 2, iterations=5, augment_images=False)
    assert res.images.shape == (C * 2, H * H)
    with pytest.raises(ValueError, match="exceeds"):
        wmdd.barycenter(np.zeros((3, 2)), 4)


def test_real_subset_baseline(teacher_data):
    model, X, y = teacher_data
    idx = [0, 1, N_PER, N_PER + 1, 2 * N_PER, 2 * N_PER + 1]
    sub = wmdd.real_subset(model, (X, y), idx)
    assert torch.equal(sub.images, X[idx]) and sub.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        torch.testing.assert_close(sub.soft_labels, model(X[idx]))
        torch.testing.assert_close(sub.atoms.reshape(6, -1), model.features(X[idx]))
    with pytest.raises(ValueError, match="class-major"):
        wmdd.real_subset(model, (X, y), [N_PER, 0, 1, N_PER + 1, 2 * N_PER, 2 * N_PER + 1])


def test_precomputed_statistics_give_the_same_set(teacher_data):
    model, X, y = teacher_data
    st = wmdd.class_statistics(model, (X, y), batch_size=7)
    assert [f.shape for f in st.features] == [(N_PER, 8)] * C and st.counts.tolist() == [N_PER] * C
    a = wmdd.distill(model, (X, y), 2, iterations=5, statistics=st)
    b = wmdd.distill(model, (X, y), 2, iterations=5)
    torch.testing.assert_close(a.images, b.images)
    keep = torch.arange(len(y)) != 0
    with pytest.raises(ValueError, match="do not match"):
        wmdd.distill(model, (X[keep], y[keep]), 2, iterations=1, statistics=st)


def test_statistics_of_some_classes_equal_those_of_all(teacher_data):
    """A process synthesising class 1 only passes the teacher over class 1 only; its statistics are the
    all-class ones at that class, and distill refuses statistics that lack a requested class."""
    model, X, y = teacher_data
    full = wmdd.class_statistics(model, (X, y), batch_size=7)
    one = wmdd.class_statistics(model, (X, y), batch_size=7, classes=[1])
    assert one.classes == (1,) and full.classes == tuple(range(C))
    assert torch.equal(one.features[1], full.features[1]) and one.features[0] is None
    for m1, mf in zip(one.bn_mean + one.bn_var, full.bn_mean + full.bn_var):
        assert torch.equal(m1[1], mf[1]) and torch.isnan(m1[0]).all()
    a = wmdd.distill(model, (X, y), 2, iterations=5, classes=[1], statistics=one)
    b = wmdd.distill(model, (X, y), 2, iterations=5, classes=[1], statistics=full)
    assert torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match=r"lack class\(es\) \[0\]"):
        wmdd.distill(model, (X, y), 2, iterations=1, classes=[0, 1], statistics=one)
    with pytest.raises(ValueError, match="distinct class indices"):
        wmdd.class_statistics(model, (X, y), classes=[C])


class CountingDataset(torch.utils.data.Dataset):
    """A map-style dataset that records which items were read (and exposes ``targets`` as torchvision's do)."""

    def __init__(self, X, y):
        self.X, self.targets, self.read = X, y.tolist(), set()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.read.add(int(i))
        return self.X[i], self.targets[i]


def test_a_dataset_is_read_by_class_and_gives_the_pairs_set(teacher_data):
    """distill(classes=[1]) on a Dataset reads class 1's items (and item 0, for the input shape) only when
    the pixel range is given, and gives the set of the in-memory pair bit for bit."""
    model, X, y = teacher_data
    kw = dict(iterations=5, classes=[1], pixel_range=(0.0, 1.0))
    ds = CountingDataset(X, y)
    lazy = wmdd.distill(model, ds, 2, **kw)
    assert ds.read <= {0} | set(torch.nonzero(y == 1).flatten().tolist())
    assert torch.equal(lazy.images, wmdd.distill(model, (X, y), 2, **kw).images)
    # without pixel_range: one streamed pass (every item read) finds the same range, the same set
    real = wmdd.RealData(CountingDataset(X, y))
    assert torch.equal(wmdd.distill(model, real, 2, iterations=5, classes=[1]).images,
                       wmdd.distill(model, (X, y), 2, iterations=5, classes=[1]).images)


def test_a_dataset_of_integer_pixels_is_refused_as_the_pair_is(teacher_data):
    _, X, y = teacher_data
    raw = (X * 255).to(torch.uint8)
    with pytest.raises(TypeError, match="floating point"):
        wmdd.RealData((raw, y))
    with pytest.raises(TypeError, match="floating point"):
        wmdd.RealData(CountingDataset(raw, y))


def test_streamed_moments_equal_whole_tensor_reductions(teacher_data):
    _, X, y = teacher_data
    lo, hi, mu, sd = wmdd.RealData(CountingDataset(X, y)).moments()
    assert (lo, hi) == (float(X.min()), float(X.max()))
    torch.testing.assert_close(mu, X.mean((0, 2, 3)).reshape(-1, 1, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(sd, X.std((0, 2, 3)).reshape(-1, 1, 1), rtol=0, atol=1e-6)
    Xv = X.reshape(len(X), -1)
    _, _, mu_v, sd_v = wmdd.RealData(CountingDataset(Xv, y)).moments()
    torch.testing.assert_close(mu_v, Xv.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(sd_v, Xv.std(0), rtol=0, atol=1e-6)
    bad = X.clone()
    bad[5, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        wmdd.RealData(CountingDataset(bad, y)).moments()


def test_train_student_without_barycenter_weights(teacher_data):
    model, X, y = teacher_data
    with torch.no_grad():
        soft = model(X)
    full = wmdd.DistilledSet(images=X, labels=y, soft_labels=soft, weights=torch.zeros(C, 0, dtype=torch.float64),
                             atoms=torch.zeros(C, 0, 0))
    hist = wmdd.train_student(TinyBN(seed=3), full, epochs=3, augment_images=False)
    assert len(hist["loss"]) == 3
    bad = wmdd.DistilledSet(images=X, labels=y, soft_labels=soft, weights=torch.ones(C, 2, dtype=torch.float64),
                            atoms=torch.zeros(C, 2, 8))
    with pytest.raises(ValueError, match="use_weights=False"):
        wmdd.train_student(TinyBN(), bad, epochs=1)


def test_weighted_variant_weights_are_the_voronoi_masses_of_its_atoms(teacher_data):
    model, X, y = teacher_data
    res = wmdd.distill(model, (X, y), 3, iterations=5, weighted=True, seed=2)
    for c in range(C):
        with torch.no_grad():
            feats = model.features(X[y == c]).double().numpy()
        atoms = res.atoms[c].double().numpy()
        cells = ((feats[:, None] - atoms[None]) ** 2).sum(-1).argmin(1)  # brute-force Voronoi cells
        np.testing.assert_allclose(res.weights[c].numpy(), np.bincount(cells, minlength=3) / len(feats), atol=1e-12)
        live = res.weights[c].numpy() > 0
        np.testing.assert_allclose(atoms[live], [feats[cells == j].mean(0) for j in np.flatnonzero(live)], atol=1e-5)
    assert np.isfinite(res.history["bn"]).all()
