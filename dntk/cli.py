"""Command line: ``dntk run``, ``dntk ledger``, ``dntk notebook``, ``dntk book``, ``dntk info``.

    dntk run params/digits-full.yaml [--set krr.lam_rel=1e-2 ...] [--quiet] [--nproc N]
    torchrun --nproc-per-node N -m dntk run params/smoke.yaml       (one shared run over N ranks)
    dntk ledger params/imagenette-resnet18.yaml [--set ...] [--json]
    dntk notebook 09_end_to_end [-p name value ...] [-f params.yaml] [--timeout 900]
    dntk book
    dntk info

Every user error — a configuration problem (unknown key, wrong type, non-finite value, missing dataset
root, unreadable file), a corrupt cached artifact, a bad checkpoint, a process group that cannot start —
is reported as one line ``dntk: error: …`` with exit status 2, before any heavy work where it can be
checked; ``-v`` adds the traceback. Any other failure prints one line too (exit status 1) and the
traceback with ``-v``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

from . import chapter

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user error reported as one line (exit status 2)."""


# ======================================================================================= run
def _cmd_run(args) -> int:
    from . import distributed, pipeline

    cfg = pipeline.load_config(args.config, args.set or [])
    if args.quiet:
        cfg = cfg.replace(progress=False)
    if args.nproc is not None:
        return _launch_ranks(args)
    ranks = distributed.init_from_env(args.backend, device=cfg.device)
    try:
        result = pipeline.run(cfg, ranks)
    finally:
        if ranks.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if ranks.rank == 0:
        print(result.table())
        print(f"\nresult: {result.path}")
    return 0


def _launch_ranks(args) -> int:
    """``dntk run CONFIG --nproc N``: start N ranks on this machine with torchrun (``torch.distributed.run``)."""
    if args.nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
        raise CLIError("--nproc starts its own ranks; do not combine it with torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "dntk"] + (["-v"] if args.verbose else []) + ["run", str(args.config)]
    for s in args.set or []:
        cmd += ["--set", s]
    if args.quiet:
        cmd.append("-q")
    if args.backend:
        cmd += ["--backend", args.backend]
    print("dntk: " + " ".join(cmd[1:]), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise CLIError(f"{args.nproc} ranks finished with exit status {rc} (the first failing rank's message is "
                       "above)")
    return 0


def _cmd_ledger(args) -> int:
    from . import ledger, pipeline

    cfg = pipeline.load_config(args.config, args.set or [], check_paths=False)
    led = ledger.from_config(cfg)
    if args.json:
        print(json.dumps(led.to_dict(), indent=1))
    else:
        print(led.table())
    return 0


# ================================================================================== notebook
def _resolve_notebook(name: str, root: Path) -> Path:
    p = Path(name)
    if p.suffix == ".py" and p.is_file():
        return p
    nbdir = root / "notebooks"
    candidates = sorted(nbdir.glob("[0-9][0-9]_*.py")) if nbdir.is_dir() else []
    stem = p.stem if p.suffix in (".py", ".ipynb") else name
    exact = [c for c in candidates if c.stem == stem]
    if exact:
        return exact[0]
    prefix = [c for c in candidates if c.stem.startswith(stem)]
    if len(prefix) == 1:
        return prefix[0]
    names = ", ".join(c.stem for c in candidates) or "(none found)"
    if len(prefix) > 1:
        raise CLIError(f"notebook {name!r} is ambiguous: {', '.join(c.stem for c in prefix)}")
    raise CLIError(f"no notebook {name!r} under {nbdir}; choose one of: {names}")


def notebook_parameters(params_file=None, pairs=()) -> dict:
    """Parameters for papermill: the YAML file's mapping, then ``-p name value`` pairs (values read as YAML)."""
    from .pipeline import ConfigError, parse_value, read_yaml

    params: dict = {}
    if params_file is not None:
        f = Path(params_file)
        try:
            loaded = read_yaml(f, "parameters file") or {}
        except ConfigError as e:
            raise CLIError(str(e)) from None
        if not isinstance(loaded, dict):
            raise CLIError(f"{f}: expected a mapping of parameter names to values")
        params.update(loaded)
    for name, value in pairs:
        params[name] = parse_value(value)
    return params


def _parameter_names(nb) -> set:
    """Names assigned in the cell tagged `parameters`."""
    import ast

    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                return set()
            names = set()
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for t in targets:
                    if isinstance(t, ast.Name):
                        names.add(t.id)
            return names
    return set()


def _cmd_notebook(args) -> int:
    try:
        import jupytext
        import papermill as pm
    except ImportError as e:
        raise CLIError(f"`dntk notebook` needs jupytext and papermill ({e}); pip install -e '.[book]'") from None

    root = chapter.repo_root()
    src = _resolve_notebook(args.name, root)
    params = notebook_parameters(args.file, args.parameters or [])
    nb = jupytext.read(src)
    known = _parameter_names(nb)
    unknown = sorted(set(params) - known) if known else []
    if unknown and not args.allow_unknown:
        raise CLIError(f"{src.name} has no parameter(s) {', '.join(unknown)}; its parameters are "
                       f"{', '.join(sorted(known))} (pass --allow-unknown to inject anyway)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{Path(args.file).stem}" if args.file else ""
    out = out_dir / f"{src.stem}{suffix}.ipynb"
    print(f"dntk: executing {src} -> {out} ({len(params)} parameter(s), timeout {args.timeout} s per cell)",
          file=sys.stderr)
    try:
        pm.execute_notebook(nb, str(out), parameters=params, kernel_name=args.kernel, cwd=str(src.parent),
                            execution_timeout=args.timeout, progress_bar=not args.quiet, log_output=False)
    except pm.PapermillExecutionError as e:
        raise CLIError(f"{src.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (see {out})") from None
    print(str(out))
    return 0


# ====================================================================================== book
def _cmd_book(args) -> int:
    root = chapter.repo_root()
    exe = Path(sys.executable).parent / "jupyter-book"
    jb = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if jb is None:
        raise CLIError("jupyter-book is not installed; pip install -e '.[book]' (or run `make book`)")
    cmd = [jb, "build", str(root), "--builder", "html", "-W", "-n", "--keep-going"]
    print("dntk: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, cwd=root)


# ====================================================================================== info
def info() -> dict:
    """Versions, device and thread settings of this machine."""
    import importlib.metadata as md

    import torch

    from . import __version__

    versions = {"dntk": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "POT", "PyYAML", "tqdm",
                 "matplotlib", "jupytext", "papermill", "jupyter-book", "traker"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    versions["torch"] = torch.__version__  # includes the CUDA build tag
    dev = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda}
    if torch.cuda.is_available():
        dev["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    dev["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    threads = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
               "cpu_count": os.cpu_count()}
    try:
        threads["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        threads[var] = os.environ.get(var)
    from .models import resolve_cache_dir

    paths = {"DNTK_CACHE": str(resolve_cache_dir()), "DNTK_DATA": os.environ.get("DNTK_DATA"),
             "platform": platform.platform()}
    return {"versions": versions, "device": dev, "threads": threads, "paths": paths}


def _cmd_info(args) -> int:
    d = info()
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    for section, items in d.items():
        print(f"[{section}]")
        for k, v in items.items():
            print(f"  {k:<22} {v}")
    return 0


# ==================================================================================== parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dntk", description="The Distilled Neural Tangent Kernel, reproduced.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log progress messages (logging level INFO) and show tracebacks of errors")
    # -v is accepted after the command too (dntk run CONFIG -v)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress messages and show tracebacks of errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run the whole pipeline from a YAML config", parents=[verbose])
    r.add_argument("config", help="YAML config, e.g. params/digits-full.yaml")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value (dotted key, value read as YAML); repeatable")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--nproc", type=int, metavar="N",
                   help="share the run over N processes on this machine (starts them with torchrun)")
    r.add_argument("--backend", choices=("gloo", "nccl"),
                   help="torch.distributed backend under torchrun/--nproc (default: nccl on CUDA, else gloo)")
    r.set_defaults(func=_cmd_run)

    lg = sub.add_parser("ledger", help="print the cost ledger (appendix §7) for a config's sizes (nothing is run)",
                        parents=[verbose])
    lg.add_argument("config")
    lg.add_argument("--set", action="append", metavar="KEY=VALUE")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=_cmd_ledger)

    nb = sub.add_parser("notebook", help="execute one chapter with papermill into runs/", parents=[verbose])
    nb.add_argument("name", help="chapter name or prefix, e.g. 09_end_to_end or 09")
    nb.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("NAME", "VALUE"),
                    help="set a notebook parameter (value read as YAML); repeatable")
    nb.add_argument("-f", "--file", help="YAML file of notebook parameters")
    nb.add_argument("--out", default="runs", help="output folder (default runs/)")
    nb.add_argument("--timeout", type=int, default=int(os.environ.get("NB_TIMEOUT", 900)),
                    help="per-cell execution timeout in seconds (default 900)")
    nb.add_argument("--kernel", default="python3")
    nb.add_argument("--allow-unknown", action="store_true", help="inject parameters the notebook does not declare")
    nb.add_argument("-q", "--quiet", action="store_true")
    nb.set_defaults(func=_cmd_notebook)

    b = sub.add_parser("book", help="build the HTML book (jupyter-book build . -W -n --keep-going)",
                       parents=[verbose])
    b.set_defaults(func=_cmd_book)

    i = sub.add_parser("info", help="versions, device and threads", parents=[verbose])
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)
    return p


#: Exceptions that mean the user asked for something that cannot be done as given: one line, exit status 2.
def _user_errors() -> tuple:
    from .distributed import DistributedError
    from .pipeline import ConfigError
    from .store import StoreError

    return (CLIError, ConfigError, StoreError, DistributedError, ValueError, TypeError, OSError)


def main(argv=None) -> int:
    """The ``dntk`` command; returns the exit status (0 ok, 2 user error, 1 other failure, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # before the heavy imports, so --help is instant
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dntk: interrupted; finished stages are cached and the next run resumes from them", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into one line
        user = isinstance(e, _user_errors())
        if verbose:
            traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not user:
            msg = f"{type(e).__name__}: {msg}"
        hint = "" if verbose else " (run with -v for the traceback)"
        print(f"dntk: error: {msg}{hint if not user else ''}", file=sys.stderr)
        return 2 if user else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
