"""Tests for the command line (dntk.cli, python -m dntk)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dntk.cli as cli
import dntk.pipeline as P

ROOT = Path(__file__).resolve().parents[1]


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_info_json(capsys):
    assert cli.main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    import torch

    assert d["versions"]["torch"] == torch.__version__
    assert d["threads"]["torch_threads"] == torch.get_num_threads()
    assert "cuda_available" in d["device"]


def test_run_reports_config_errors_in_one_line(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    line = _err_line(capsys)
    assert line.startswith("dntk: error: config file") and line.endswith("does not exist")
    f = tmp_path / "c.yaml"
    f.write_text("krr:\n  lamda: 1\n")
    assert cli.main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dntk: error: ") and "unknown key krr.lamda" in err[0]
    f.write_text("name: x\n")
    assert cli.main(["run", str(f), "--set", "krr.lam_rel=abc"]) == 2
    assert "krr.lam_rel must be float, got 'abc'" in _err_line(capsys)
    f.write_text("data:\n  name: imagewoof\n  root: /no/such/dir\n")
    assert cli.main(["run", str(f)]) == 2
    line = _err_line(capsys)
    assert "data.root" in line and "does not exist" in line


def test_run_passes_overrides_to_the_pipeline(tmp_path, monkeypatch, capsys):
    seen = {}

    class Fake:
        path = tmp_path / "result.json"

        def table(self):
            return "TABLE"

    def fake_run(cfg, ranks=None):
        seen["cfg"] = cfg
        return Fake()

    monkeypatch.setattr(P, "run", fake_run)
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nkrr:\n  lam_rel: 1e-3\n")
    assert cli.main(["run", str(f), "--set", "krr.lam_rel=1e-2", "--set", "projection.k=64", "-q"]) == 0
    cfg = seen["cfg"]
    assert cfg.krr.lam_rel == 1e-2 and cfg.projection.k == 64 and cfg.progress is False
    assert "TABLE" in capsys.readouterr().out


def test_ledger_command_on_imagenette_params(capsys):
    path = ROOT / "params" / "imagenette-resnet18.yaml"
    if not path.is_file():
        pytest.skip("params/imagenette-resnet18.yaml not written yet")
    assert cli.main(["ledger", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["summary"]["build_vs_full_ntk"] >= 1e4
    assert d["sizes"]["N"] == 9469


def test_notebook_parameters_and_resolution(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("n_train: 100\nlam_rel: 1e-3\n")
    params = cli.notebook_parameters(f, [("n_train", "200"), ("name", "abc"), ("flag", "true")])
    assert params == {"n_train": 200, "lam_rel": 1e-3, "name": "abc", "flag": True}
    with pytest.raises(cli.CLIError, match="does not exist"):
        cli.notebook_parameters(tmp_path / "none.yaml")
    with pytest.raises(cli.CLIError, match="no notebook 'zz_nothing'"):
        cli._resolve_notebook("zz_nothing", ROOT)


NB = '''# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% tags=["parameters"]
n = 2

# %%
assert n == 5, n
print("n is", n)
'''


def test_notebook_runs_through_papermill_with_parameters(tmp_path, capsys):
    src = tmp_path / "01_tiny.py"
    src.write_text(NB)
    out = tmp_path / "runs"
    rc = cli.main(["notebook", str(src), "-p", "n", "5", "--out", str(out), "--timeout", "120", "-q"])
    assert rc == 0, capsys.readouterr().err
    nb = json.loads((out / "01_tiny.ipynb").read_text())
    texts = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "n is 5" in texts
    # a failing assertion is reported in one line with the cell and the error
    rc = cli.main(["notebook", str(src), "--out", str(out), "--timeout", "120", "-q"])
    line = _err_line(capsys)
    assert rc == 2 and "AssertionError" in line and "see " in line
    # an unknown parameter is refused before execution
    rc = cli.main(["notebook", str(src), "-p", "m", "1", "--out", str(out)])
    line = _err_line(capsys)
    assert rc == 2 and "has no parameter(s) m" in line


def test_python_dash_m_dntk():
    out = subprocess.run([sys.executable, "-m", "dntk", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("run", "ledger", "notebook", "book", "info"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "dntk", "run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "config" in out.stderr


def test_book_command_builds_with_warnings_as_errors(monkeypatch):
    seen = {}

    def fake_call(cmd, cwd=None):
        seen["cmd"], seen["cwd"] = cmd, cwd
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    assert cli.main(["book"]) == 0
    cmd = seen["cmd"]
    assert cmd[0].endswith("jupyter-book") and cmd[1] == "build"
    assert {"-W", "-n", "--keep-going"} <= set(cmd) and cmd[cmd.index("--builder") + 1] == "html"
    assert Path(seen["cwd"]) == ROOT


# ---------------------------------------------------------------- user errors: one line, -v traceback
def _write_cfg(tmp_path, text: str) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(f"run_dir: {tmp_path / 'run'}\nprogress: false\nfigures: false\n" + text)
    return str(f)


def _garbage(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


USER_ERRORS = {
    "binary config": (lambda t: _garbage(t, "c.yaml", bytes(range(256)) * 4), [], "not a text file"),
    "malformed YAML": (lambda t: _garbage(t, "c.yaml", b"krr: {lam_rel: [\n"), [], "not valid YAML"),
    "garbage checkpoint": (lambda t: _write_cfg(t, ""), ["teacher.checkpoint=" + "{ck}"], "teacher.checkpoint"),
    "corrupt distilled set": (lambda t: _write_cfg(t, ""), ["distill.path={ds}"], "distill.path"),
    ".inf value": (lambda t: _write_cfg(t, ""), ["krr.lam_rel=.inf"], "krr.lam_rel must be a finite number"),
    "run_dir is a file": (lambda t: _write_cfg(t, ""), ["run_dir={file}"], "run_dir"),
    "k > P": (lambda t: _write_cfg(t, ""), ["projection.kind=orthonormal", "projection.k=1000000"], "projection.k"),
    "n_clusters > N_d": (lambda t: _write_cfg(t, ""), ["gradient_distillation.n_clusters=1000"],
                         "gradient_distillation.n_clusters = 1000 exceeds"),
    ".inf option": (lambda t: _write_cfg(t, ""), ["distill.options={{pixel_range: [0, .inf]}}"],  # (braces doubled: str.format)
                    "distill.options.pixel_range[1] must be a finite number"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_are_one_line_and_verbose_shows_the_traceback(case, tmp_path, capsys):
    build, sets, match = USER_ERRORS[case]
    cfg = build(tmp_path)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "tensors.pt").write_bytes(b"\x80\x04garbage")
    (ds / "settings.json").write_text("{not json")
    fill = {"ck": _garbage(tmp_path, "ck.pt", bytes(range(256)) * 16), "ds": str(ds),
            "file": _garbage(tmp_path, "afile", b"x")}
    argv = ["run", cfg] + [a for s in sets for a in ("--set", s.format(**fill))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dntk: error: ") and match in err[0], err
    assert cli.main(["-v"] + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and match in err.strip().splitlines()[-1]
    assert cli.main(argv + ["-v"]) == 2  # -v after the command works too
    assert "Traceback" in capsys.readouterr().err


def test_unexpected_failures_are_one_line_with_a_hint(monkeypatch, tmp_path, capsys):
    def boom(cfg, ranks=None):
        raise ZeroDivisionError("inside")

    monkeypatch.setattr(P, "run", boom)
    cfg = _write_cfg(tmp_path, "")
    assert cli.main(["run", cfg]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dntk: error: ZeroDivisionError: inside (run with -v for the traceback)"]


def test_nproc_validation(tmp_path, capsys, monkeypatch):
    cfg = _write_cfg(tmp_path, "")
    assert cli.main(["run", cfg, "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in _err_line(capsys)
    seen = {}
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    assert cli.main(["run", cfg, "--nproc", "2", "--set", "seed=1", "-q"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("dntk") + 1:] == ["run", cfg, "--set", "seed=1", "-q"]
