"""Tests for dntk.pipeline: config loading/validation, preflight, per-stage caching keyed by content,
resume, run-dir safety, outputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dntk.distributed as D
import dntk.pipeline as P
from dntk.pipeline import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny", "progress": False, "figures": False,
    "data": {"name": "digits", "train_per_class": 5, "test_limit": 20},
    "teacher": {"arch": "convnet", "width": 8, "epochs": 1, "batch_size": 32},
    "distill": {"method": "wmdd", "ipc": 2, "iterations": 2, "options": {"augment_images": False}},
    "student": {"epochs": 1},
    "projection": {"kind": "gaussian", "k": 16},
    "gradient_distillation": {"method": "local_global", "budget": 1, "n_clusters": 2, "tau": 0.9, "gamma": 0.5},
    "krr": {"lam_rel": 1e-3},
    "ledger": {"measure": False},
}


CALLS: dict = {}
# (module, function, counter name): every stage computation of a run
_STAGE_FUNCS = ((P, "_compute_teacher", "_compute_teacher"), (P, "_compute_distill", "_compute_distill"),
                (P, "_compute_student", "_compute_student"), (D, "featurize", "_compute_features"),
                (P, "_compute_gd", "_compute_gd"), (P, "_compute_krr", "_compute_krr"))


@pytest.fixture(scope="module")
def _patched(tmp_path_factory):
    """Wrap every stage computation with a call counter (module-wide); isolate model caches."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DNTK_CACHE", str(tmp_path_factory.mktemp("dntk-cache")))
    for module, name, counter in _STAGE_FUNCS:
        orig = getattr(module, name)

        def wrapper(*a, _orig=orig, _name=counter, **kw):
            CALLS[_name] = CALLS.get(_name, 0) + 1
            return _orig(*a, **kw)

        mp.setattr(module, name, wrapper)
    yield CALLS
    mp.undo()


@pytest.fixture
def counted(_patched):
    _patched.clear()
    return _patched


@pytest.fixture(scope="module")
def base(_patched, tmp_path_factory):
    """One complete tiny run (teacher + student, whole-training-set reference, figures), with its call counts."""
    root = tmp_path_factory.mktemp("base")
    _patched.clear()
    cfg = tiny(root, **{"figures": True, "krr.full_reference": True})
    result = P.run(cfg)
    return cfg, result, dict(_patched)


@pytest.fixture
def warm(base, tmp_path):
    """A fresh run folder whose stage cache already holds the base run's artifacts."""
    import shutil

    shutil.copytree(base[0].cache_path, tmp_path / "cache")
    return tiny(tmp_path, **{"krr.full_reference": True})


def tiny(tmp_path, **dotted):
    d = json.loads(json.dumps(TINY))
    d["run_dir"] = str(tmp_path / "run")
    d["cache_dir"] = str(tmp_path / "cache")
    cfg = Config.from_dict(d)
    return cfg.replace(**dotted) if dotted else cfg


def _status(result):
    return {(r["stage"], r["role"]): r["status"] for r in result.stages}


# ------------------------------------------------------------------------------------------ config
def test_defaults_and_yaml_float_forms(tmp_path):
    cfg = Config.from_dict({})
    assert cfg.data.name == "digits" and cfg.krr.lam_rel == 1e-3
    f = tmp_path / "c.yaml"
    f.write_text("krr:\n  lam_rel: 1e-2\nprojection:\n  k: 64\n")
    cfg = load_config(f)
    assert cfg.krr.lam_rel == 0.01 and isinstance(cfg.krr.lam_rel, float) and cfg.projection.k == 64
    cfg = load_config(f, ["krr.lam_rel=3e-4", "teacher.checkpoint=null", "distill.options={init: noise}"])
    assert cfg.krr.lam_rel == 3e-4 and cfg.teacher.checkpoint is None


@pytest.mark.parametrize("d, match", [
    ({"krr": {"lamda": 1}}, r"unknown key krr.lamda \(did you mean krr.lam_rel\?\)"),
    ({"bogus": 1}, "unknown key bogus"),
    ({"projection": {"k": "big"}}, r"projection.k must be int, got 'big' \(str\)"),
    ({"projection": {"k": 1.5}}, "projection.k must be int"),
    ({"student": {"enabled": "yes"}}, "student.enabled must be bool"),
    ({"krr": {"lam_rel": -1.0}}, "krr.lam_rel must be > 0"),
    ({"krr": {"targets": "labels"}}, "krr.targets is 'labels'; choose one of"),
    ({"gradient_distillation": {"tau": 1.5}}, r"tau must be in \(0, 1\]"),
    ({"teacher": {"arch": "vgg"}}, "teacher.arch is 'vgg'"),
    ({"data": {"name": "mnist"}}, "data.name is 'mnist'"),
    ({"projection": {"kind": "fft"}}, "projection.kind is 'fft'"),
    ({"data": "digits"}, "data must be DataConfig"),
    ({"device": "gpu"}, "device is 'gpu'"),
])
def test_bad_config_one_line_errors(d, match):
    with pytest.raises(ConfigError, match=match) as e:
        Config.from_dict(d, "x.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.yaml: ")


def test_missing_files_and_dataset_root(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "c.yaml"
    f.write_text(f"data:\n  name: imagenette\n  root: {tmp_path / 'no-such-folder'}\n")
    with pytest.raises(ConfigError, match="data.root: .*does not exist"):
        load_config(f)
    assert load_config(f, check_paths=False).data.name == "imagenette"
    f.write_text("teacher:\n  checkpoint: /no/such/ckpt.pt\n")
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        load_config(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["krr.lam_rel"])


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_that_are_pipeline_configs_validate(path):
    import yaml

    d = yaml.safe_load(path.read_text()) or {}
    if not {"data", "teacher"} & set(d):
        pytest.skip("a notebook parameter file, not a pipeline config")
    cfg = load_config(path, check_paths=False)
    assert cfg.name


def test_preflight_rejects_before_work(tmp_path, counted):
    # (counted: the stage functions are wrapped; none may be called)
    from dntk import models

    with pytest.raises(ConfigError, match="distill.ipc = 9 exceeds"):
        P.run(tiny(tmp_path, **{"distill.ipc": 9}))
    with pytest.raises(ConfigError, match="distill.options.bogus is not an argument"):
        P.run(tiny(tmp_path, **{"distill.options": {"bogus": 1}}))
    with pytest.raises(ConfigError, match="set by the config itself"):
        P.run(tiny(tmp_path, **{"student.options": {"epochs": 3}}))
    ck = tmp_path / "mlp.pt"
    models.save(models.build("mlp", 10, in_channels=1), ck)
    with pytest.raises(ConfigError, match="teacher.checkpoint: .*architecture"):
        P.run(tiny(tmp_path, **{"teacher.checkpoint": str(ck)}))
    assert counted == {}  # nothing heavy ran


# ------------------------------------------------------------------------------------ caching
def test_first_run_computes_each_stage_once_and_second_run_nothing(base, counted):
    cfg, r1, calls = base
    assert set(_status(r1).values()) == {"computed"}
    assert calls == {"_compute_teacher": 1, "_compute_distill": 1, "_compute_student": 1,
                     "_compute_features": 5, "_compute_gd": 2, "_compute_krr": 2}
    r2 = P.run(cfg)
    assert counted == {} and set(_status(r2).values()) == {"cached"}
    assert r2.metrics == r1.metrics


def test_changing_lambda_recomputes_only_krr(warm, counted):
    r = P.run(warm.replace(**{"krr.lam_rel": 1e-1}))
    assert counted == {"_compute_krr": 2}
    assert {k for k, v in _status(r).items() if v == "computed"} == {("krr", "teacher"), ("krr", "student")}
    counted.clear()
    P.run(warm.replace(**{"gradient_distillation.budget": 2, "student.enabled": False, "overwrite": True}))
    assert counted == {"_compute_gd": 1, "_compute_krr": 1}
    counted.clear()
    P.run(warm.replace(**{"projection.k": 12, "student.enabled": False, "krr.full_reference": False,
                          "overwrite": True}))
    assert counted == {"_compute_features": 2, "_compute_gd": 1, "_compute_krr": 1}


def test_interrupted_run_resumes(warm, counted, monkeypatch):
    cfg = warm.replace(**{"gradient_distillation.budget": 2})
    real_gd = P._compute_gd
    seen = []

    def crash(run, *a, **kw):
        seen.append(1)
        if len(seen) == 2:  # the student's Algorithm 1, after the teacher's finished
            raise KeyboardInterrupt("simulated crash in Algorithm 1")
        return real_gd(run, *a, **kw)

    monkeypatch.setattr(P, "_compute_gd", crash)
    with pytest.raises(KeyboardInterrupt):
        P.run(cfg)
    assert not (cfg.run_path / "result.json").exists()
    monkeypatch.setattr(P, "_compute_gd", real_gd)
    counted.clear()
    st = _status(P.run(cfg))
    assert st[("teacher", "")] == st[("distill", "")] == st[("student", "")] == "cached"
    assert st[("gradient_distillation", "teacher")] == st[("krr", "teacher")] == "cached"  # finished before the crash
    assert st[("gradient_distillation", "student")] == st[("krr", "student")] == "computed"
    assert counted == {"_compute_gd": 1, "_compute_krr": 1}


def test_run_dir_with_other_settings_is_refused(warm, counted):
    P.run(warm)
    before = (warm.run_path / "result.json").read_bytes()
    counted.clear()
    with pytest.raises(ConfigError, match=r"holds results of other settings \(krr.lam_rel: 0.001 -> 0.01\)"):
        P.run(warm.replace(**{"krr.lam_rel": 1e-2}))
    assert counted == {} and (warm.run_path / "result.json").read_bytes() == before
    P.run(warm.replace(**{"krr.lam_rel": 1e-2, "overwrite": True}))
    assert (warm.run_path / "result.json").read_bytes() != before
    assert counted == {"_compute_krr": 2}


def test_result_json_and_figures(base):
    cfg, res, _ = base
    d = json.loads((cfg.run_path / "result.json").read_text())
    for role in ("teacher", "student"):
        m = d["metrics"][role]
        assert 0 <= m["network_accuracy"] <= 1
        assert m["dntk"]["m_per_class"] == [1] * 10
        assert 0 <= m["dntk"]["fidelity"] <= 1 and 0 <= m["dntk"]["coverage"] <= 1 + 1e-9
        assert m["distilled"]["gradients_per_class"] == 20  # N_d = C·ipc rows in each class kernel
    assert d["metrics"]["teacher"]["full"]["gradients_per_class"] == 50
    assert "full" not in d["metrics"]["student"]
    assert d["ledger"]["sizes"]["N"] == 50 and d["ledger"]["sizes"]["ipc"] == 2
    assert d["ledger"]["summary"]["jacobians_vs_full"] == pytest.approx(2.5)
    measured = [r for r in d["ledger"]["rows"] if r["source"] == "measured"]
    assert {(r["pipeline"], r["stage"]) for r in measured} >= {("dntk", "jacobians"), ("dntk", "wmdd"),
                                                                ("jl", "jacobians")}
    assert load_config(cfg.run_path / "config.yaml").krr.full_reference is True
    assert {p.name for p in res.figures} == {"accuracy_fidelity.png", "ledger.png"}
    assert all(Path(p).stat().st_size > 1000 for p in res.figures)
    text = res.table()
    assert "DNTK (Algorithm 1 synthetic)" in text and "ledger:" in text


def test_baseline_selection_and_random_subset(warm, counted):
    cfg = warm.replace(**{"distill.method": "random", "student.enabled": False, "krr.full_reference": False,
                          "gradient_distillation.method": "fps", "gradient_distillation.budget": 20})
    res = P.run(cfg)
    assert "_compute_teacher" not in counted
    assert res.metrics["teacher"]["dntk"]["m_per_class"] == [20] * 10
    # each class kernel has N_d = C·ipc = 20 rows; with budget 20 fps keeps them all, so the DNTK
    # equals KRR on all distilled gradients
    assert res.metrics["teacher"]["dntk"]["accuracy"] == pytest.approx(res.metrics["teacher"]["distilled"]["accuracy"])


# ------------------------------------------------------------------------ allowed values, finiteness
def test_allowed_values_come_from_the_owning_modules():
    from dntk import data, models, projection, wmdd
    from dntk import gradient_distillation as gd

    for kind in projection.KINDS:
        assert Config.from_dict({"projection": {"kind": kind}}).projection.kind == kind
    for method in (*gd.SELECT_METHODS, *P.GD_METHODS):
        assert Config.from_dict({"gradient_distillation": {"method": method}}).gradient_distillation.method == method
    for arch in models.MODELS:
        assert Config.from_dict({"teacher": {"arch": arch}}).teacher.arch == arch
    for init in wmdd.INITS:
        assert Config.from_dict({"distill": {"init": init}}).distill.init == init
    with pytest.raises(ConfigError, match="choose one of " + ", ".join(data.DATASETS)):
        Config.from_dict({"data": {"name": "nope"}})
    # one default each: the config's defaults are the owning modules' defaults
    cfg = Config()
    assert (cfg.teacher.epochs, cfg.teacher.lr) == (models.TEACHER_DEFAULTS.epochs, models.TEACHER_DEFAULTS.lr)
    assert (cfg.distill.iterations, cfg.distill.lr) == (wmdd.WMDD_DEFAULTS.iterations, wmdd.WMDD_DEFAULTS.lr)
    assert cfg.student.epochs == wmdd.STUDENT_DEFAULTS.epochs


@pytest.mark.parametrize("override, key", [
    ("krr.lam_rel=.inf", "krr.lam_rel"), ("distill.lr=.nan", "distill.lr"), ("teacher.lr=-.inf", "teacher.lr"),
    ("ledger.forward_flops=.inf", "ledger.forward_flops"), ("projection.k=.inf", "projection.k"),
    ("student.temperature=1e999", "student.temperature"),
])
def test_non_finite_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"{key} must be (a finite number|int)"):
        load_config(None, [override])


# ------------------------------------------------------------------------------- hostile preflight
def _bytes_file(path, data: bytes):
    path.write_bytes(data)
    return str(path)


HOSTILE = {
    # name: (override builder (tmp_path -> dict of dotted keys), the config key the message must name)
    "orthonormal k > P": (lambda t: {"projection.kind": "orthonormal", "projection.k": 100_000}, "projection.k"),
    "srht k > P'": (lambda t: {"projection.kind": "srht", "projection.k": 10_000}, "projection.k"),
    "test_limit 1": (lambda t: {"data.test_limit": 1}, "data.test_limit"),
    "mlp with BatchNorm matching": (lambda t: {"teacher.arch": "mlp"}, "distill.r_bn"),
    "run_dir is a file": (lambda t: {"run_dir": _bytes_file(t / "f", b"x")}, "run_dir"),
    "cache_dir is a file": (lambda t: {"cache_dir": _bytes_file(t / "g", b"x")}, "cache_dir"),
    "cache_dir under a file": (lambda t: {"cache_dir": _bytes_file(t / "h", b"x") + "/sub"}, "cache_dir"),
    "garbage checkpoint": (lambda t: {"teacher.checkpoint": _bytes_file(t / "ck.pt", os.urandom(4096))},
                           "teacher.checkpoint"),
    "text checkpoint": (lambda t: {"teacher.checkpoint": _bytes_file(t / "ck.txt", b"not a checkpoint")},
                        "teacher.checkpoint"),
    "corrupt distilled set": (lambda t: {"distill.path": str(_corrupt_distilled(t))}, "distill.path"),
    "n_clusters > N_d": (lambda t: {"gradient_distillation.n_clusters": 1000}, "gradient_distillation.n_clusters"),
    "budget > N_d": (lambda t: {"gradient_distillation.method": "fps", "gradient_distillation.budget": 21},
                     "gradient_distillation.budget"),
    "ipc > class size": (lambda t: {"distill.ipc": 9}, "distill.ipc"),
    "unknown option": (lambda t: {"distill.options": {"bogus": 1}}, "distill.options.bogus"),
    "student without distilled set": (lambda t: {"distill.method": "none"}, "student.enabled"),
    "selection without budget": (lambda t: {"gradient_distillation.method": "kmeans",
                                            "gradient_distillation.budget": None}, "gradient_distillation.budget"),
}


def _corrupt_distilled(tmp_path):
    d = tmp_path / "distilled"
    d.mkdir()
    (d / "meta.json").write_text("{\"format\": 2, \"n_arrays\": 1}")
    (d / "tensors.pt").write_bytes(os.urandom(256))
    (d / "settings.json").write_text("{}")
    return d


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_settings_fail_in_preflight_naming_the_key(case, tmp_path, counted):
    build, key = HOSTILE[case]
    cfg_dict = json.loads(json.dumps(TINY))
    cfg_dict.update(run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    d = build(tmp_path)
    with pytest.raises(ConfigError) as e:
        P.run(Config.from_dict(cfg_dict).replace(**d))
    msg = str(e.value)
    assert key in msg and "\n" not in msg, msg
    assert counted == {}  # refused before any stage ran
    assert not (tmp_path / "run" / "result.json").exists()


def test_read_only_run_dir_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders; the probe cannot fail here")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="run_dir: cannot write into"):
            tiny(tmp_path).replace(run_dir=str(ro / "run")).validate(check_paths=True)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("content, match", [
    (b"\x00\x01\x02binary\xff\xfe", "not a text file"),
    (b"krr: [unclosed\n", "not valid YAML"),
    (b"- just\n- a list\n", "top level must be a mapping"),
])
def test_unreadable_config_files_are_one_line_errors(tmp_path, content, match):
    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(f)
    assert "\n" not in str(e.value)


def test_malformed_config_yaml_in_the_run_dir_is_reported(tmp_path, counted):
    cfg = tiny(tmp_path)
    cfg.run_path.mkdir(parents=True)
    (cfg.run_path / "config.yaml").write_text("krr: {lam_rel: [\n")
    with pytest.raises(ConfigError, match="holds an unreadable config.yaml .*overwrite=true"):
        P.run(cfg)
    assert counted == {}


# ------------------------------------------------------------------ content-keyed cache, corruption
def _artifact_dir(cfg, stage, result, role=""):
    key = next(r["key"] for r in result.stages if r["stage"] == stage and r["role"] == role)
    return cfg.cache_path / stage / key


def _damage_artifact(d, how):
    """Damage a stored artifact folder ``d`` in place: random bytes, a zeroed header, garbage images or
    an untrained checkpoint where the trained weights were."""
    import numpy as np

    arrays = sorted(d.glob("*.npy"))
    big = max(arrays, key=lambda p: p.stat().st_size)
    raw = bytearray(big.read_bytes())
    if how == "random-bytes":
        raw[-64:] = os.urandom(64)  # same size, random bytes in the weights / images
    elif how == "header-zeroed":
        raw[:64] = bytes(64)
    elif how == "garbage-images":  # a well-formed array of noise where the distilled images were
        meta = json.loads((d / "meta.json").read_text())
        f = d / f"a{meta['body']['images']['__array__']:05d}.npy"
        a = np.load(f)
        np.save(f, np.random.default_rng(0).random(a.shape).astype(a.dtype), allow_pickle=False)
        return
    elif how == "untrained-checkpoint":  # every weight array replaced by a freshly initialised network's
        from dntk import models

        meta = json.loads((d / "meta.json").read_text())
        fresh = models.build("convnet", 10, in_channels=1, width=8, seed=0).state_dict()
        for name, ref in meta["body"]["state"].items():
            np.save(d / f"a{ref['__array__']:05d}.npy", fresh[name].numpy(), allow_pickle=False)
        return
    big.write_bytes(bytes(raw))


@pytest.mark.parametrize("stage, how", [("teacher", "random-bytes"), ("teacher", "untrained-checkpoint"),
                                        ("teacher", "header-zeroed"), ("distill", "garbage-images"),
                                        ("distill", "random-bytes")])
def test_corrupt_cached_artifact_is_recomputed_never_mixed(base, warm, counted, stage, how):
    cfg, r1, _ = base
    r_warm = P.run(warm)
    assert set(_status(r_warm).values()) == {"cached"}
    _damage_artifact(_artifact_dir(warm, stage, r_warm), how)
    counted.clear()
    r = P.run(warm.replace(overwrite=True))
    st = _status(r)
    assert st[(stage, "")] == "recomputed" and counted == {f"_compute_{stage}": 1}
    assert {v for k, v in st.items() if k != (stage, "")} == {"cached"}
    # the recomputed artifact is the same (deterministic), so everything downstream, keyed by its content
    # checksum, is still valid; the numbers agree with the first run, none from the damaged copy
    assert r.metrics == r1.metrics


def test_changed_checkpoint_content_recomputes_everything_downstream(tmp_path, counted):
    from dntk import models

    ck = tmp_path / "teacher.pt"
    m_a = models.build("convnet", 10, in_channels=1, width=8, seed=1)
    models.save(m_a, ck)
    cfg = tiny(tmp_path, **{"teacher.checkpoint": str(ck), "student.enabled": False})
    r_a = P.run(cfg)
    counted.clear()
    assert set(_status(P.run(cfg)).values()) == {"cached"} and counted == {}
    m_b = models.build("convnet", 10, in_channels=1, width=8, seed=2)  # same path, other weights
    models.save(m_b, ck)
    r_b = P.run(cfg)
    assert set(_status(r_b).values()) == {"computed"}
    assert counted["_compute_distill"] == 1 and counted["_compute_features"] == 2
    X, y = P._Run(cfg).test_data()
    with torch.no_grad():
        acc_b = float((m_b.eval()(X).argmax(1) == y).double().mean())
    assert r_b.metrics["teacher"]["network_accuracy"] == pytest.approx(acc_b)
    assert r_b.info["stage_keys"]["teacher"] != r_a.info["stage_keys"]["teacher"]


def test_live_temporary_folders_survive_a_concurrent_run(warm, tmp_path):
    """clean_partial at the start of a run removes only leftovers whose owner process is gone."""
    import socket

    host = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in socket.gethostname())[:40] or "host"
    stage_dir = warm.cache_path / "krr"
    stage_dir.mkdir(parents=True, exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = stage_dir / f".abc.{host}.{os.getpid()}.1234abcd.tmp"
    orphan = stage_dir / f".abc.{host}.{int(dead.stdout)}.1234abcd.tmp"
    live.mkdir()
    orphan.mkdir()
    P.run(warm)
    assert live.is_dir() and not orphan.exists()


CONCURRENT = """
import json, sys
from dntk import pipeline
pipeline.run(pipeline.Config.from_dict(json.loads(sys.argv[1])))
"""


def test_two_concurrent_runs_into_one_run_dir_both_finish(tmp_path):
    d = json.loads(json.dumps(TINY))
    d.update(run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    d["student"]["enabled"] = False
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DNTK_CACHE": str(tmp_path / "models")}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, json.dumps(d)], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0 <= res["metrics"]["teacher"]["dntk"]["accuracy"] <= 1
    assert not [p for p in (tmp_path / "cache").rglob(".*.tmp")]


def test_stage_declarations_cover_every_stage():
    assert [s.name for s in P.STAGES] == ["teacher", "distill", "student", "features", "gradient_distillation", "krr"]
    cfg = Config()
    for s in P.STAGES:
        settings = s.settings(cfg)
        assert isinstance(settings, dict) and json.dumps(settings)
    # a stage's key changes with its own settings, not with another stage's
    krr = P._STAGE["krr"].settings
    assert krr(cfg) != krr(cfg.replace(**{"krr.lam_rel": 1e-2}))
    assert krr(cfg) == krr(cfg.replace(**{"projection.k": 64}))


def test_run_is_short():
    import inspect

    assert len(inspect.getsource(P.run).splitlines()) < 50


@pytest.mark.parametrize("name", ["smoke.yaml", "digits-full.yaml"])
def test_digits_configs_use_the_shared_teacher(name):
    from dntk import models

    t = load_config(ROOT / "params" / name, check_paths=False).teacher
    d = models.TEACHER_DEFAULTS
    assert (t.epochs, t.lr, t.optimizer, t.batch_size, t.weight_decay) == (
        d.epochs, d.lr, d.optimizer, d.batch_size, d.weight_decay)


def test_killed_algorithm1_resumes_with_its_finished_classes(warm, monkeypatch):
    """Each class's Algorithm 1 result is kept until the stage is stored: a run stopped in class 5
    recomputes only classes 5..9 of that stage, and the result equals an uninterrupted run's."""
    cfg = warm.replace(**{"gradient_distillation.budget": 3, "student.enabled": False, "overwrite": True})
    real = P._gd_class
    done = []

    def stop_at_5(run, G, t, labels):
        if len(done) == 5:
            raise KeyboardInterrupt("simulated kill in class 5")
        done.append(1)
        return real(run, G, t, labels)

    monkeypatch.setattr(P, "_gd_class", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        P.run(cfg)
    assert len(list((cfg.cache_path / "classes").iterdir())) >= 5
    calls = []
    monkeypatch.setattr(P, "_gd_class", lambda *a: calls.append(1) or real(*a))
    resumed = P.run(cfg)
    assert len(calls) == 5  # classes 5..9 only
    assert not [p for p in (cfg.cache_path / "classes").iterdir() if not p.name.startswith(".")]  # parts dropped
    fresh = P.run(cfg.replace(cache_dir=str(cfg.cache_path) + "-fresh"))
    assert resumed.metrics == fresh.metrics


# ------------------------------------------------------------------------------------------ memory
def test_full_reference_krr_reads_the_training_features_one_class_at_a_time(warm, monkeypatch):
    """The whole-training-set features stay a read-only memory map of the stored array; the full-reference
    KRR copies one class's ``(N, 1, k)`` rows at a time, never all of ``(N, C, k)``."""
    import numpy as np

    seen, real = [], P._class_features

    def spy(feats, c):
        out = real(feats, c)
        seen.append((type(feats), c, tuple(out.shape)))
        return out

    monkeypatch.setattr(P, "_class_features", spy)
    P.run(warm.replace(**{"krr.lam_rel": 2e-3}))
    assert [c for _, c, _ in seen] == list(range(10))
    assert all(t is np.memmap and shape == (50, 1, 16) for t, _, shape in seen), seen


@pytest.mark.parametrize("option", ["class_batch", "classes"])
def test_wmdd_chunking_options_are_refused(tmp_path, option):
    """The pipeline synthesises WMDD one class at a time (so that ranks share the classes)."""
    with pytest.raises(ConfigError, match=f"distill.options.{option}: the pipeline synthesises"):
        P.preflight(tiny(tmp_path, **{f"distill.options.{option}": [1] if option == "classes" else 2}))
