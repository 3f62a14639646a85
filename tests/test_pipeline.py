"""Tests for dntk.pipeline: config loading/validation, per-stage caching, resume, run-dir safety, outputs."""
import json
from pathlib import Path

import pytest

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
_STAGE_FUNCS = ("_compute_teacher", "_compute_distill", "_compute_student", "_compute_features",
                "_compute_gd", "_compute_krr")


@pytest.fixture(scope="module")
def _patched(tmp_path_factory):
    """Wrap every stage computation with a call counter (module-wide); isolate model caches."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DNTK_CACHE", str(tmp_path_factory.mktemp("dntk-cache")))
    for name in _STAGE_FUNCS:
        orig = getattr(P, name)

        def wrapper(*a, _orig=orig, _name=name, **kw):
            CALLS[_name] = CALLS.get(_name, 0) + 1
            return _orig(*a, **kw)

        mp.setattr(P, name, wrapper)
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
