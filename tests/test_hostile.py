"""Hostile inputs to dntk.models, dntk.wmdd, dntk.store, dntk.data, the model readers and the
config: each is a clear error (type AND a message naming the problem) or a clean recompute, never a silent
wrong result. Other hostile cases are tested beside their modules: non-finite features and
``relative_error`` against zeros in test_kernel.py, NaN weights through ``tangent`` in test_tangent.py, NaN
rows in ``Projector.project`` in test_projection.py, another model's or other inputs' distributed store in
test_distributed.py, preflight settings, damaged pipeline caches and concurrent runs in test_pipeline.py,
one-line CLI errors in test_cli.py."""
import os

import numpy as np
import pytest
import torch

from dntk import data, models, wmdd
from dntk.store import CorruptArtifactError, Store

C = 3


def _xy(n_per=6, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(C * n_per, channels, 8, 8, generator=g)
    y = torch.arange(C).repeat_interleave(n_per)
    return X, y


def _net(channels=1, seed=0):
    return models.build("convnet", C, in_channels=channels, width=4, seed=seed)


def _nan_weight(model):
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    return model


@pytest.fixture(scope="module")
def teacher():
    X, y = _xy(n_per=10)
    m = _net()
    models.train(m, (X, y), epochs=3, lr=1e-2, batch_size=10)
    return m


def _with(X, **changes):
    X = X.clone()
    for (i, j), v in changes.get("pixel", {}).items():
        X[i, 0, j, j] = v
    return X


def _nan_pixel():
    X, y = _xy()
    X[4, 0, 3, 3] = float("nan")
    return X, y


def _float_labels():
    X, y = _xy()
    return X, y.float() + 0.5


def _labels_out_of_range():
    X, y = _xy()
    y[-1] = C + 4
    return X, y


def _negative_label():
    X, y = _xy()
    y[0] = -1
    return X, y


def _empty():
    X, y = _xy()
    return X[:0], y[:0]


def _one_sample():
    X, y = _xy()
    return X[:1], y[:1]


# (id, call, error type, words the message must contain)
TRAIN_CASES = [
    ("nan-pixel", lambda: models.train(_net(), _nan_pixel(), epochs=1), ValueError, ["NaN"]),
    ("inf-pixel", lambda: models.train(_net(), (_with(_xy()[0], pixel={(0, 1): float("inf")}), _xy()[1]), epochs=1),
     ValueError, ["NaN or inf"]),
    ("lr-inf", lambda: models.train(_net(), _xy(), epochs=1, lr=float("inf")), ValueError, ["lr", "finite"]),
    ("lr-nan", lambda: models.train(_net(), _xy(), epochs=1, lr=float("nan")), ValueError, ["lr"]),
    ("lr-zero", lambda: models.train(_net(), _xy(), epochs=1, lr=0.0), ValueError, ["lr", "> 0"]),
    ("lr-negative", lambda: models.train(_net(), _xy(), epochs=1, lr=-1e-3), ValueError, ["lr"]),
    ("float-labels", lambda: models.train(_net(), _float_labels(), epochs=1), TypeError, ["integer", "float32"]),
    ("labels-out-of-range", lambda: models.train(_net(), _labels_out_of_range(), epochs=1), ValueError,
     ["labels", "0..2", "7"]),
    ("negative-label", lambda: models.train(_net(), _negative_label(), epochs=1), ValueError, ["labels", "-1"]),
    ("empty-set", lambda: models.train(_net(), _empty(), epochs=1), ValueError, ["empty"]),
    ("one-sample", lambda: models.train(_net(), _one_sample(), epochs=1), ValueError, ["at least 2 samples"]),
    ("batch-size-0", lambda: models.train(_net(), _xy(), epochs=1, batch_size=0), ValueError, ["batch_size"]),
    ("epochs-negative", lambda: models.train(_net(), _xy(), epochs=-1), ValueError, ["epochs"]),
    ("nan-weights", lambda: models.train(_nan_weight(_net()), _xy(), epochs=1), ValueError,
     ["head.weight", "NaN"]),
    ("wrong-channels", lambda: models.train(_net(channels=3), _xy(), epochs=1), ValueError, ["in_channels=1"]),
    ("integer-images", lambda: models.train(_net(), ((_xy()[0] * 255).to(torch.uint8), _xy()[1]), epochs=1),
     TypeError, ["floating point"]),
    ("diverges", lambda: models.train(models.build("mlp", C, width=8), _xy(), epochs=4, lr=1e12, optimizer="sgd",
                                      schedule=None, momentum=0.0), models.TrainingDivergedError,
     ["diverged in epoch", "of 4"]),
    ("unknown-optimizer", lambda: models.train(_net(), _xy(), epochs=1, optimizer="lbfgs"), ValueError, ["optimizer"]),
    ("momentum-1", lambda: models.train(_net(), _xy(), epochs=1, optimizer="sgd", momentum=1.0), ValueError,
     ["momentum"]),
]

EVALUATE_CASES = [
    ("labels-out-of-range", lambda: models.evaluate(_net(), _labels_out_of_range()), ValueError, ["labels", "0..2"]),
    ("nan-weights", lambda: models.evaluate(_nan_weight(_net()), _xy()), ValueError, ["NaN"]),
    ("nan-pixel", lambda: models.evaluate(_net(), _nan_pixel()), ValueError, ["NaN"]),
    ("float-labels", lambda: models.evaluate(_net(), _float_labels()), TypeError, ["integer"]),
    ("empty", lambda: models.evaluate(_net(), _empty()), ValueError, ["empty"]),
    ("batch-size-0", lambda: models.evaluate(_net(), _xy(), batch_size=0), ValueError, ["batch_size"]),
    ("dataset-out-of-range", lambda: models.evaluate(_net(), torch.utils.data.TensorDataset(*_labels_out_of_range())),
     ValueError, ["labels", "0..2"]),
]
if not torch.cuda.is_available():
    TRAIN_CASES.append(("cuda-on-cpu", lambda: models.train(_net(), _xy(), epochs=1, device="cuda"), ValueError,
                        ["CUDA is not available"]))


def _check(call, err, words):
    with pytest.raises(err) as e:
        call()
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_rejects(case):
    _check(*case[1:])


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_rejects(case):
    _check(*case[1:])


# --------------------------------------------------------------------------- checkpoints
def _garbage_file(path):
    path.write_bytes(os.urandom(2048))


def _truncated_checkpoint(path):
    models.save(_net(), path)
    path.write_bytes(path.read_bytes()[:300])


def _nan_checkpoint(path):
    torch.save(_nan_weight(_net()).state_dict(), path)


def _tampered_checkpoint(path):
    models.save(_net(), path)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["head.bias"] = torch.tensor([9.0, 9.0, 9.0])
    torch.save(obj, path)


def _text_file(path):
    path.write_text("not a checkpoint\n")


CHECKPOINT_CASES = [
    ("random-bytes", _garbage_file, ["not a readable PyTorch checkpoint"]),
    ("text", _text_file, ["not a readable PyTorch checkpoint"]),
    ("truncated", _truncated_checkpoint, ["not a readable PyTorch checkpoint"]),
    ("nan-weights", _nan_checkpoint, ["non-finite", "head.weight"]),
    ("tampered", _tampered_checkpoint, ["corrupt", "SHA-256"]),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_load_rejects_bad_checkpoints(tmp_path, case):
    _, make, words = case
    p = tmp_path / "w.pt"
    make(p)
    msg = _check(lambda: models.load(_net(), p), ValueError, words)
    assert str(p) in msg and "\n" not in msg.split("Details")[0]


# --------------------------------------------------------------------------- WMDD
def _no_bn():
    return models.build("mlp", C, in_channels=1, width=8, input_shape=(1, 8, 8))


def _wmdd_cases(teacher):
    X, y = _xy(n_per=10)
    X3 = X.repeat(1, 3, 1, 1)
    ds = wmdd.distill(teacher, (X, y), 1, iterations=2)
    nan_teacher = _nan_weight(models.build("convnet", C, width=4))
    return [
        ("distill-lr-inf", lambda: wmdd.distill(teacher, (X, y), 1, iterations=2, lr=float("inf")), ValueError,
         ["lr", "finite"]),
        ("distill-lr-zero", lambda: wmdd.distill(teacher, (X, y), 1, iterations=2, lr=0), ValueError, ["lr"]),
        ("distill-nan-teacher", lambda: wmdd.distill(nan_teacher, (X, y), 1, iterations=2), ValueError,
         ["NaN", "head.weight"]),
        ("distill-wrong-channels", lambda: wmdd.distill(teacher, (X3, y), 1, iterations=2), ValueError,
         ["1 input channel", "3"]),
        ("distill-no-batchnorm", lambda: wmdd.distill(_no_bn(), (X, y), 1, iterations=2), ValueError,
         ["no BatchNorm", "r_bn=0"]),
        ("distill-nan-images", lambda: wmdd.distill(teacher, _nan_pixel(), 1, iterations=2), ValueError, ["NaN"]),
        ("distill-float-labels", lambda: wmdd.distill(teacher, (X, y.float()), 1, iterations=2), TypeError,
         ["integers"]),
        ("distill-labels-out-of-range", lambda: wmdd.distill(teacher, (X, y + 1), 1, iterations=2), ValueError,
         ["labels must lie in 0..2"]),
        ("distill-negative-weight", lambda: wmdd.distill(teacher, (X, y), 1, r_bn=-1.0), ValueError, ["r_bn"]),
        ("distill-bad-init", lambda: wmdd.distill(teacher, (X, y), 1, init="zeros"), ValueError, ["init"]),
        ("distill-diverges", lambda: wmdd.distill(teacher, (X, y), 1, iterations=3, lr=1e30, r_bn=0.0,
                                                  pixel_range=(-1e38, 1e38), augment_images=False),
         models.TrainingDivergedError, ["WMDD synthesis", "iteration"]),
        ("student-wrong-channels", lambda: wmdd.train_student(_net(channels=3), ds, epochs=1), ValueError,
         ["student expects 3 input channel", "have 1"]),
        ("student-lr-inf", lambda: wmdd.train_student(_net(), ds, epochs=1, lr=float("inf")), ValueError, ["lr"]),
        ("student-nan-weights", lambda: wmdd.train_student(_nan_weight(_net()), ds, epochs=1), ValueError, ["NaN"]),
        ("student-nan-teacher", lambda: wmdd.train_student(_net(), ds, epochs=1, teacher=nan_teacher), ValueError,
         ["NaN"]),
        ("student-temperature-0", lambda: wmdd.train_student(_net(), ds, epochs=1, temperature=0), ValueError,
         ["temperature"]),
        ("student-batch-size-0", lambda: wmdd.train_student(_net(), ds, epochs=1, batch_size=0), ValueError,
         ["batch_size"]),
        ("student-wrong-classes", lambda: wmdd.train_student(models.build("convnet", 5, width=4), ds, epochs=1),
         ValueError, ["5 outputs", "3 classes"]),
        ("set-nan-images", lambda: wmdd.DistilledSet(images=ds.images * float("nan"), labels=ds.labels,
                                                     soft_labels=ds.soft_labels, weights=ds.weights,
                                                     atoms=ds.atoms), ValueError, ["images", "NaN"]),
        ("set-float-labels", lambda: wmdd.DistilledSet(images=ds.images, labels=ds.labels.float(),
                                                       soft_labels=ds.soft_labels, weights=ds.weights,
                                                       atoms=ds.atoms), TypeError, ["labels"]),
    ]


_WMDD_IDS = ["distill-lr-inf", "distill-lr-zero", "distill-nan-teacher", "distill-wrong-channels",
             "distill-no-batchnorm", "distill-nan-images", "distill-float-labels", "distill-labels-out-of-range",
             "distill-negative-weight", "distill-bad-init", "distill-diverges", "student-wrong-channels",
             "student-lr-inf", "student-nan-weights", "student-nan-teacher", "student-temperature-0",
             "student-batch-size-0", "student-wrong-classes", "set-nan-images", "set-float-labels"]


@pytest.mark.parametrize("case_id", _WMDD_IDS)
def test_wmdd_rejects(teacher, case_id):
    cases = {c[0]: c for c in _wmdd_cases(teacher)}
    assert set(cases) == set(_WMDD_IDS)
    _check(*cases[case_id][1:])


# --------------------------------------------------------------------------- corrupted caches and files
def _array_files(d):
    return sorted(p for p in d.iterdir() if p.suffix == ".npy")


def _random_bytes_same_size(d):
    f = max(_array_files(d), key=lambda p: p.stat().st_size)  # the largest array: weights / images
    raw = bytearray(f.read_bytes())
    raw[-64:] = os.urandom(64)
    f.write_bytes(bytes(raw))


def _untrained_weights_in_place(d, fresh_state):
    """Overwrite every cached weight array with a freshly initialised model's: a valid, untrained checkpoint."""
    import json

    meta = json.loads((d / "meta.json").read_text())
    state_refs = meta["body"]["state"]
    for name, ref in state_refs.items():
        np.save(d / f"a{ref['__array__']:05d}.npy", fresh_state[name].numpy(), allow_pickle=False)


@pytest.mark.parametrize("damage", ["random-bytes", "untrained-checkpoint", "truncated", "header-zeroed"])
def test_corrupted_cached_teacher_is_detected_and_retrained(tmp_path, caplog, damage):
    kw = dict(name="convnet", dataset="digits", seed=0, epochs=1, width=4, cache_dir=tmp_path)
    good = models.trained(**kw)
    store = Store(tmp_path)
    (key,) = store.keys("teacher")
    d = store.path("teacher", key)
    if damage == "random-bytes":
        _random_bytes_same_size(d)
    elif damage == "untrained-checkpoint":
        _untrained_weights_in_place(d, models.build("convnet", 10, width=4, seed=0).state_dict())
    elif damage == "header-zeroed":  # numpy's own error would suggest allow_pickle
        f = max(_array_files(d), key=lambda p: p.stat().st_size)
        raw = bytearray(f.read_bytes())
        raw[:64] = bytes(64)
        f.write_bytes(bytes(raw))
    else:
        f = _array_files(d)[0]
        f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CorruptArtifactError) as e:  # reading it directly: one line naming it
        store.load("teacher", key)
    assert str(d) in str(e.value) and "delete" in str(e.value) and "\n" not in str(e.value)
    with caplog.at_level("WARNING", logger="dntk"):
        again = models.trained(**kw)  # retrained, never loaded
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(good.state_dict()[k], again.state_dict()[k]) for k in good.state_dict())
    test = data.as_tensors(data.load("digits", "test"), limit=200)
    assert models.evaluate(again, test) == models.evaluate(good, test)


@pytest.mark.parametrize("damage", ["random-bytes", "meta-garbage", "missing-array"])
def test_garbage_distilled_set_is_detected(tmp_path, teacher, caplog, damage):
    X, y = _xy(n_per=10)
    good = wmdd.distill(teacher, (X, y), 2, iterations=3, cache_dir=tmp_path / "cache")
    saved = wmdd.save(good, tmp_path / "set")
    for d in (saved, Store(tmp_path / "cache").path("wmdd", Store(tmp_path / "cache").keys("wmdd")[0])):
        if damage == "random-bytes":
            _random_bytes_same_size(d)
        elif damage == "meta-garbage":
            (d / "meta.json").write_bytes(os.urandom(100))
        else:
            _array_files(d)[0].unlink()
    with pytest.raises(CorruptArtifactError) as e:
        wmdd.load(saved)
    assert isinstance(e.value, ValueError) and str(saved) in str(e.value) and "\n" not in str(e.value)
    with caplog.at_level("WARNING", logger="dntk"):
        again = wmdd.distill(teacher, (X, y), 2, iterations=3, cache_dir=tmp_path / "cache")
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.images, good.images) and torch.equal(again.soft_labels, good.soft_labels)


def test_not_a_distilled_set(tmp_path):
    with pytest.raises(ValueError, match="not a saved distilled set"):
        wmdd.load(tmp_path)
    (tmp_path / "tensors.pt").write_bytes(b"old format")
    with pytest.raises(ValueError, match="older dntk"):
        wmdd.load(tmp_path)


_TRAIN_IN_PARALLEL = r"""
import sys, torch
from dntk import models
m = models.trained("convnet", dataset="digits", seed=0, epochs=1, width=4, cache_dir=sys.argv[1])
torch.save(m.state_dict(), sys.argv[2])
print("ok")
"""


def test_two_processes_training_the_same_teacher_into_one_cache_both_finish(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / f"w{i}.pt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_IN_PARALLEL, str(tmp_path / "cache"), str(o)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for o in outs]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    a, b = (torch.load(o, weights_only=True) for o in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    store = Store(tmp_path / "cache")
    assert len(store.keys("teacher")) == 1
    assert [p.name for p in (tmp_path / "cache" / "teacher").iterdir() if p.name.startswith(".")] == []
    store.load("teacher", store.keys("teacher")[0])  # verifies


# --------------------------------------------------------------------------- image folders, data containers
def _png_folder(root, broken: str):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    bad = root / "train" / "dog" / "1.png"
    raw = bad.read_bytes()
    bad.write_bytes({"random-bytes": os.urandom(len(raw)), "empty": b"", "truncated": raw[: len(raw) // 2],
                     "broken-stream": raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:]}[broken])
    return bad


@pytest.mark.parametrize("broken", ["random-bytes", "empty", "truncated", "broken-stream"])
def test_corrupt_image_in_a_folder_dataset_names_the_file(tmp_path, broken):
    bad = _png_folder(tmp_path, broken)
    ds = data.load(f"folder:{tmp_path}", "train", resize=8)
    for call in (lambda: data.as_tensors(ds),
                 lambda: models.train(models.build("convnet", 2, in_channels=3, width=4), ds, epochs=1)):
        msg = _check(call, ValueError, [str(bad), "replace or delete that file"])
        assert "\n" not in msg


def test_numpy_pair_given_to_train_is_a_type_error():
    X, y = _xy()
    _check(lambda: models.train(_net(), (X.numpy(), y.numpy()), epochs=1), TypeError,
           ["must be torch tensors", "torch.from_numpy"])


# --------------------------------------------------------------------------- NaN weights in the other model readers
def _model_reader_cases():
    from dntk import kernel, theory, uncertainty

    X, y = _xy(n_per=2)
    v = torch.ones(len(X), C)
    return {
        "ntk_vector_product": lambda m: kernel.ntk_vector_product(m, X, v),
        "class_kernel_vector_product": lambda m: kernel.class_kernel_vector_product(m, X, v),
        "theory.loss_gradients": lambda m: theory.loss_gradients(m, X, y),
        "uncertainty.gradnorm": lambda m: uncertainty.gradnorm(m, X),
    }


@pytest.mark.parametrize("reader", ["ntk_vector_product", "class_kernel_vector_product", "theory.loss_gradients",
                                    "uncertainty.gradnorm"])
def test_nan_weight_model_is_refused_by_every_model_reader(reader):
    call = _model_reader_cases()[reader]
    _check(lambda: call(_nan_weight(_net())), ValueError, ["'head.weight' contains NaN or inf"])
    assert torch.isfinite(call(_net())).all()  # the same call on a finite model works


def test_nan_inputs_to_loss_gradients_are_refused():
    from dntk import theory

    X, y = _nan_pixel()
    _check(lambda: theory.loss_gradients(_net(), X, y), ValueError, ["inputs contains 1 NaN/inf"])


# --------------------------------------------------------------------------- pipeline settings
@pytest.mark.parametrize("override, key", [
    ("distill.options={pixel_range: [0, .inf]}", "distill.options.pixel_range[1]"),
    ("student.options={augment: {scale: .nan}}", "student.options.augment.scale"),
    ("gradient_distillation.options={tol: -.inf}", "gradient_distillation.options.tol"),
])
def test_non_finite_option_values_are_refused_naming_the_key(tmp_path, capsys, override, key):
    """A NaN/inf inside ``*.options`` is refused when the config is read (it used to fail after the teacher
    trained, in the stage cache's settings hash, without naming the key)."""
    from dntk import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ncache_dir: {tmp_path / 'cache'}\nprogress: false\n")
    assert cli.main(["run", str(cfg), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key} must be a finite number" in err[0], err
    assert not (tmp_path / "cache").exists()  # nothing ran


def test_read_only_run_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    """Root can write into a chmod-500 folder, so the failing write probe is simulated: what is checked is
    that preflight turns it into one line naming run_dir (tests/test_pipeline.py has the real chmod test)."""
    import tempfile

    from dntk import pipeline

    real = tempfile.mkstemp

    def refuse(*a, dir=None, **kw):
        if dir is not None and str(dir).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(pipeline.tempfile, "mkstemp", refuse)
    cfg = pipeline.Config.from_dict({"run_dir": str(tmp_path / "ro" / "run"), "cache_dir": str(tmp_path / "c")})
    with pytest.raises(pipeline.ConfigError) as e:
        pipeline.run(cfg)
    msg = str(e.value)
    assert "run_dir: cannot write into" in msg and "Permission denied" in msg and "\n" not in msg
    assert not (tmp_path / "c").exists()
