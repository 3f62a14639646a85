"""The whole DNTK pipeline from one config: data → teacher → WMDD → projected gradients → Algorithm 1 → KRR.

``Config`` is a tree of small dataclasses loaded from YAML (:func:`load_config`). Its allowed values
(datasets, architectures, projector kinds, selection methods) are imported from the modules that own
them. :func:`preflight` validates everything that can be validated before any training — types, ranges,
finite numbers, option names, the dataset, the checkpoint, ``projection.k`` against the model's ``P``,
cluster and budget sizes against the distilled set, writable folders — and raises :class:`ConfigError`
with one line naming the config key.

:func:`run` executes the stages in :data:`STAGES` (appendix §4) for the teacher (the trained network) and
the student (the same architecture trained on the distilled set, Sec 5.1). Each stage is declared once:
the config values it reads (:class:`Stage`), the artifacts it consumes and a compute function. Its
artifact is cached in a :class:`dntk.store.Store` under a key that hashes those settings **and the
content checksums of the artifacts it consumed** (teacher weights, distilled set, features), so a
changed or corrupted upstream artifact can never be mixed with cached downstream results. Changing only
``krr.lam_rel`` recomputes only the KRR stage; a second identical run recomputes nothing; an interrupted
run resumes from the last finished stage. A finished run writes ``result.json``, ``config.yaml`` and the
figures (:mod:`dntk.report`) into ``run_dir``; a ``run_dir`` holding results of other settings is refused
unless ``overwrite: true``.

Under ``torchrun`` (or ``dntk run CONFIG --nproc N``) the run is shared by the ranks: see
:mod:`dntk.distributed` and :func:`run`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import re
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from .models import TEACHER_DEFAULTS
from .wmdd import STUDENT_DEFAULTS, WMDD_DEFAULTS

__all__ = ["Config", "ConfigError", "load_config", "read_yaml", "parse_value", "YAMLLoader", "preflight", "run",
           "RunResult", "Stage", "STAGES", "make_projector"]

log = logging.getLogger("dntk")


class ConfigError(ValueError):
    """A configuration problem, reported as one line before any heavy work starts."""


# ================================================================================ config schema
@dataclass
class DataConfig:
    """Dataset and subset (``data:``): see :func:`dntk.data.load`."""

    name: str = "digits"                 # one of dntk.data.DATASETS, or folder:<path>
    root: Optional[str] = None           # dataset folder (default $DNTK_DATA/<name>); unused for digits
    resize: Optional[int] = None         # side length in pixels (None: the dataset's default)
    train_per_class: Optional[int] = None  # seeded class-balanced subset of the training split
    test_limit: Optional[int] = None     # first N test points (None: the whole test split)


@dataclass
class TeacherConfig:
    """The trained network (``teacher:``): architecture, checkpoint or training settings.

    Training defaults are :data:`dntk.models.TEACHER_DEFAULTS` (the book's shared digits teacher).
    """

    arch: str = "convnet"                # one of dntk.models.MODELS
    width: Optional[int] = None
    checkpoint: Optional[str] = None     # weights saved by dntk.models.save (skips training)
    epochs: int = TEACHER_DEFAULTS.epochs
    lr: float = TEACHER_DEFAULTS.lr
    optimizer: Literal["adam", "sgd"] = TEACHER_DEFAULTS.optimizer
    batch_size: int = TEACHER_DEFAULTS.batch_size
    weight_decay: float = TEACHER_DEFAULTS.weight_decay


@dataclass
class DistillConfig:
    """Dataset distillation (``distill:``): WMDD (appendix §4.1), a random real subset, or none.

    WMDD defaults are :data:`dntk.wmdd.WMDD_DEFAULTS`.
    """

    method: Literal["wmdd", "random", "none"] = "wmdd"  # none: use the whole training set
    ipc: int = 10                        # images per class
    iterations: int = WMDD_DEFAULTS.iterations
    lr: float = WMDD_DEFAULTS.lr
    r_bn: float = WMDD_DEFAULTS.r_bn
    init: str = WMDD_DEFAULTS.init       # one of dntk.wmdd.INITS
    path: Optional[str] = None           # a distilled set saved by dntk.wmdd.save (skips distillation)
    options: dict = field(default_factory=dict)  # further keyword arguments of dntk.wmdd.distill


@dataclass
class StudentConfig:
    """The student network trained on the distilled set only (``student:``); defaults
    :data:`dntk.wmdd.STUDENT_DEFAULTS`."""

    enabled: bool = True
    epochs: int = STUDENT_DEFAULTS.epochs
    lr: float = STUDENT_DEFAULTS.lr
    temperature: float = STUDENT_DEFAULTS.temperature
    options: dict = field(default_factory=dict)  # further keyword arguments of dntk.wmdd.train_student


@dataclass
class ProjectionConfig:
    """The JL projector of the class gradients (``projection:``, appendix §4.2)."""

    kind: str = "gaussian"               # one of dntk.projection.KINDS
    k: int = 512
    seed: int = 0
    batch_size: Optional[int] = None     # samples per featurisation batch (None: from a memory budget)


@dataclass
class GradientDistillationConfig:
    """Algorithm 1 or a selection baseline (``gradient_distillation:``, appendix §4.3)."""

    method: str = "local_global"         # local_global | none | one of gradient_distillation.SELECT_METHODS
    budget: Optional[int] = 5            # synthetic gradients per class (None: whatever Algorithm 1 keeps)
    n_clusters: int = 5
    tau: float = 0.99
    gamma: float = 0.5
    options: dict = field(default_factory=dict)


@dataclass
class KRRConfig:
    """Per-class kernel ridge regression (``krr:``, appendix §1 and §4.3)."""

    lam_rel: float = 1e-3                # λ = lam_rel · tr(K̃_c)/N of the uncompressed kernel (appendix §4.3)
    targets: Literal["logits", "onehot", "soft"] = "logits"  # soft: the distilled set's teacher logits
    full_reference: bool = False         # also fit KRR on the whole training set (the "JL only" model)


@dataclass
class LedgerConfig:
    """The cost ledger (``ledger:``, appendix §7)."""

    forward_flops: Optional[float] = None  # F (multiply-adds of one forward); None: counted on the model
    wmdd_iterations: Optional[int] = None  # I for the ledger (None: distill.iterations)
    n_full: Optional[int] = None         # N of the full training set (None: its actual size)
    measure: bool = True                 # time the unit costs on this machine
    measure_inputs: int = 32             # inputs used to time them


@dataclass
class Config:
    """One pipeline run: every setting, validated; ``Config.from_yaml``/``from_dict`` build it."""

    name: str = "dntk"
    seed: int = 0
    device: str = "cpu"
    run_dir: Optional[str] = None        # default runs/<name>
    cache_dir: Optional[str] = None      # default <run_dir>/cache
    overwrite: bool = False
    progress: bool = True
    figures: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    gradient_distillation: GradientDistillationConfig = field(default_factory=GradientDistillationConfig)
    krr: KRRConfig = field(default_factory=KRRConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)

    # ---------------------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, d: Optional[dict], source: str = "config") -> "Config":
        """Build and validate a Config from a (nested) dict; unknown keys and wrong types raise ConfigError."""
        cfg = _build(cls, {} if d is None else d, "", source)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path, overrides=(), check_paths: bool = True) -> "Config":
        """Load a YAML file, apply ``key=value`` overrides (dotted keys), validate (see :func:`load_config`)."""
        return load_config(path, overrides, check_paths=check_paths)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **dotted) -> "Config":
        """A validated copy with dotted keys replaced: ``cfg.replace(**{"krr.lam_rel": 1e-2})``."""
        d = self.to_dict()
        for k, v in dotted.items():
            _set_dotted(d, k, v, "replace")
        return Config.from_dict(d, "replace")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / _safe_name(self.name)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.run_path / "cache"

    # ---------------------------------------------------------------------------- validation
    def validate(self, source: str = "config", check_paths: bool = False) -> None:
        """Value checks beyond types (ranges, allowed names, files); raises ConfigError with one line.

        The allowed names come from the modules that own them: :data:`dntk.data.DATASETS`,
        :data:`dntk.models.MODELS`, :data:`dntk.projection.KINDS` and
        :data:`dntk.gradient_distillation.SELECT_METHODS` (plus ``local_global`` and ``none``).
        """
        def bad(key, msg):
            raise ConfigError(f"{source}: {key} {msg}")

        from . import data as _data
        from . import gradient_distillation as _gd
        from . import models as _models
        from . import projection as _projection
        from . import wmdd as _wmdd

        n = self.data.name
        names = [d for d in _data.DATASETS if ":" not in d]
        if not (n in names or n.startswith("folder:")):
            bad("data.name", f"is {n!r}; choose one of {', '.join(_data.DATASETS)}")
        if self.teacher.arch not in _models.MODELS:
            bad("teacher.arch", f"is {self.teacher.arch!r}; choose one of {', '.join(_models.MODELS)}")
        if self.distill.init not in _wmdd.INITS:
            bad("distill.init", f"is {self.distill.init!r}; choose one of {', '.join(_wmdd.INITS)}")
        if self.projection.kind not in _projection.KINDS:
            bad("projection.kind", f"is {self.projection.kind!r}; choose one of {', '.join(_projection.KINDS)}")
        methods = GD_METHODS + tuple(_gd.SELECT_METHODS)
        if self.gradient_distillation.method not in methods:
            bad("gradient_distillation.method",
                f"is {self.gradient_distillation.method!r}; choose one of {', '.join(methods)}")
        for key, v in (("data.resize", self.data.resize), ("data.train_per_class", self.data.train_per_class),
                       ("teacher.width", self.teacher.width),
                       ("teacher.batch_size", self.teacher.batch_size), ("distill.ipc", self.distill.ipc),
                       ("projection.k", self.projection.k), ("projection.batch_size", self.projection.batch_size),
                       ("ledger.measure_inputs", self.ledger.measure_inputs), ("ledger.n_full", self.ledger.n_full),
                       ("ledger.wmdd_iterations", self.ledger.wmdd_iterations),
                       ("gradient_distillation.budget", self.gradient_distillation.budget),
                       ("gradient_distillation.n_clusters", self.gradient_distillation.n_clusters)):
            if v is not None and v < 1:
                bad(key, f"must be ≥ 1, got {v}")
        if self.data.test_limit is not None and self.data.test_limit < 2:
            bad("data.test_limit", f"must be ≥ 2 (accuracy and logit R² need two test points), "
                                   f"got {self.data.test_limit}")
        for key, v in (("teacher.epochs", self.teacher.epochs), ("distill.iterations", self.distill.iterations),
                       ("student.epochs", self.student.epochs), ("seed", self.seed),
                       ("projection.seed", self.projection.seed)):
            if v < 0:
                bad(key, f"must be ≥ 0, got {v}")
        for key, v in (("teacher.lr", self.teacher.lr), ("distill.lr", self.distill.lr), ("student.lr", self.student.lr),
                       ("student.temperature", self.student.temperature), ("krr.lam_rel", self.krr.lam_rel)):
            if not v > 0:
                bad(key, f"must be > 0, got {v}")
        for key, v in (("distill.r_bn", self.distill.r_bn), ("teacher.weight_decay", self.teacher.weight_decay)):
            if v < 0:
                bad(key, f"must be ≥ 0, got {v}")
        for key, v in (("gradient_distillation.tau", self.gradient_distillation.tau),
                       ("gradient_distillation.gamma", self.gradient_distillation.gamma)):
            if not 0 < v <= 1:
                bad(key, f"must be in (0, 1], got {v}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            bad("device", f"is {self.device!r}; use cpu, cuda, cuda:N or mps")
        if self.ledger.forward_flops is not None and not self.ledger.forward_flops > 0:
            bad("ledger.forward_flops", f"must be > 0, got {self.ledger.forward_flops}")
        if self.gradient_distillation.method in _gd.SELECT_METHODS and self.gradient_distillation.budget is None:
            bad("gradient_distillation.budget", f"is required by method {self.gradient_distillation.method!r} "
                                                "(how many gradients per class to select)")
        if self.distill.method == "none" and self.student.enabled:
            bad("student.enabled", "needs a distilled set, but distill.method is 'none'; set student.enabled=false")
        if check_paths:
            self.check_paths(source)

    def check_paths(self, source: str = "config") -> None:
        """Files the config names must exist (dataset root, checkpoint, saved distilled set), the run and
        cache folders must be folders that can be created and written, and CUDA must exist if asked for."""
        if self.data.name.startswith("folder:"):
            root = Path(self.data.name.split(":", 1)[1]).expanduser()
            if not root.is_dir():
                raise ConfigError(f"{source}: data.name: dataset folder {root} does not exist")
        elif self.data.root is not None and not Path(self.data.root).expanduser().is_dir():
            raise ConfigError(f"{source}: data.root: dataset folder {self.data.root} does not exist; "
                              f"put the {self.data.name} files there or set data.root")
        for key, p in (("teacher.checkpoint", self.teacher.checkpoint), ("distill.path", self.distill.path)):
            if p is not None and not Path(p).expanduser().exists():
                raise ConfigError(f"{source}: {key}: {p} does not exist")
        for key, p in (("run_dir", self.run_path), ("cache_dir", self.cache_path)):
            problem = _unwritable(p)
            if problem:
                raise ConfigError(f"{source}: {key}: {problem}; set {key} to a writable folder")
        if self.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ConfigError(f"{source}: device is {self.device!r} but no CUDA device is available here; "
                                  "use --set device=cpu")


#: Methods of ``gradient_distillation.method`` besides the selection baselines of
#: :data:`dntk.gradient_distillation.SELECT_METHODS`: Algorithm 1, or every distilled gradient.
GD_METHODS = ("local_global", "none")


def _unwritable(path: Path) -> Optional[str]:
    """Why `path` cannot be used as a folder to write into (None when it can): a file in the way, or an
    existing ancestor where nothing can be created. Probes by creating a temporary file."""
    p = Path(path).expanduser()
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                return f"{q} is a file, not a folder"
            try:
                fd, probe = tempfile.mkstemp(prefix=".dntk-write-probe-", dir=q)
            except OSError as e:
                return f"cannot write into {q} ({e.strerror or type(e).__name__})"
            os.close(fd)
            os.unlink(probe)
            return None
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s) or "dntk"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(_type_name(a) for a in args) + " or null"
    return getattr(tp, "__name__", str(tp))


def _check_finite_tree(value, key: str, source: str) -> None:
    """Raise :class:`ConfigError` naming the entry (``key.name[i]``) of a nested option value that is NaN or inf."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        _check_finite_tree(v, f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}", source)


def _coerce(value, tp, key: str, source: str):
    """Check `value` against annotation `tp` (no silent coercion except int → float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{source}: {key} is {value!r}; choose one of {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{source}: {key} must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            _check_finite_tree(value, key, source)
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key + ".", source)
        if value is None:
            return tp()
    else:  # pragma: no cover - schema uses only the types above
        return value
    got = "null" if value is None else f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{source}: {key} must be {_type_name(tp)}, got {got}")


def _build(cls, d: dict, prefix: str, source: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {prefix}{k}{hint}; valid keys here: {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], prefix + k, source)
    return cls(**kwargs)


class YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads the YAML 1.2 float forms (``1e-3``; YAML 1.1 reads a string)."""


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str):
    """A ``--set``/``-p`` value as YAML would read it (``1e-3`` → float, ``null`` → None, ``[1,2]`` → list)."""
    try:
        return yaml.load(text, Loader=YAMLLoader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(d: dict, key: str, value, source: str) -> None:
    parts = key.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])} is not a section, cannot set {key}")
        cur = nxt
    cur[parts[-1]] = value


def read_yaml(path, what: str = "config file") -> Any:
    """Read a YAML file with :class:`YAMLLoader`; any unreadable file raises ConfigError in one line.

    A missing file, a folder, a binary or non-UTF-8 file and malformed YAML are all reported with the
    path and what to do (``what`` names the file in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist" if not p.exists() else f"{what} {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (not UTF-8); give a YAML {what}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or type(e).__name__})") from None
    if "\x00" in text:
        raise ConfigError(f"{p}: not a text file (it contains NUL bytes); give a YAML {what}")
    try:
        return yaml.load(text, Loader=YAMLLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({_first_line(e)})") from None


def load_config(path=None, overrides=(), check_paths: bool = True) -> Config:
    """Read a YAML config (or defaults when `path` is None), apply ``key=value`` overrides, validate.

    Every problem — unreadable file, unknown key, wrong type, non-finite number, value out of range,
    missing dataset root/checkpoint — raises :class:`ConfigError` with one line naming the key.
    """
    source = str(path) if path is not None else "config"
    d: dict = {}
    if path is not None:
        d = read_yaml(path) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(d).__name__}")
    d = copy.deepcopy(d)
    for ov in overrides:
        if isinstance(ov, str):
            if "=" not in ov:
                raise ConfigError(f"--set {ov!r}: expected key=value, e.g. --set krr.lam_rel=1e-2")
            k, v = ov.split("=", 1)
            v = parse_value(v)
        else:
            k, v = ov
        k = k.strip()
        if not k:
            raise ConfigError(f"--set {ov!r}: empty key")
        _set_dotted(d, k, v, f"--set {k}")
    cfg = _build(Config, d, "", source)
    cfg.validate(source, check_paths=check_paths)
    return cfg


# ================================================================================ the stages
@dataclass(frozen=True)
class Stage:
    """One cached stage of a run, declared once: what it computes and which config values it reads.

    A stage's store key hashes ``{"stage", "version", **settings(config), **extra}`` together with the
    content checksums of the artifacts it consumed (``consumes``), so it is recomputed when either its
    own settings or anything upstream changed (appendix §4 for the stages themselves).

    Attributes
    ----------
    name : str
        Folder of its artifacts in the store.
    version : int
        Bumped when its code changes in a way that changes its output (invalidates caches).
    settings : callable
        ``settings(config) -> dict``: the config values its result depends on.
    consumes : tuple of str
        Names of the content checksums in its key (artifacts of earlier stages, files, the data).
    """

    name: str
    version: int
    settings: Callable[[Config], dict]
    consumes: tuple


def _teacher_settings(c: Config) -> dict:
    from .models import TRAINING_VERSION

    if c.teacher.checkpoint:  # the weights come from the file, whose content is in the key
        return {"arch": c.teacher.arch, "width": c.teacher.width}
    return {**{k: v for k, v in dataclasses.asdict(c.teacher).items() if k != "checkpoint"}, "seed": c.seed,
            "training_version": TRAINING_VERSION}


def _distill_settings(c: Config) -> dict:
    d = c.distill
    if d.path:
        return {"method": "file"}
    if d.method == "none":
        return {"method": "none"}
    if d.method == "random":
        return {"method": "random", "ipc": d.ipc, "seed": c.seed}
    return {**{k: v for k, v in dataclasses.asdict(d).items() if k != "path"}, "seed": c.seed}


STAGES = (
    Stage("teacher", 1, _teacher_settings, ("data", "checkpoint")),
    Stage("distill", 2, _distill_settings, ("data", "teacher", "distilled_file")),
    Stage("student", 1, lambda c: {"arch": c.teacher.arch, "width": c.teacher.width, "seed": c.seed,
                                   **dataclasses.asdict(c.student)}, ("distill",)),
    Stage("features", 1, lambda c: {k: v for k, v in dataclasses.asdict(c.projection).items() if k != "batch_size"},
          ("model", "inputs")),
    Stage("gradient_distillation", 2, lambda c: {"targets": c.krr.targets, "seed": c.seed,
                                                  **dataclasses.asdict(c.gradient_distillation)},
          ("features", "distill")),
    Stage("krr", 2, lambda c: {"targets": c.krr.targets, "lam_rel": c.krr.lam_rel},
          ("gradient_distillation", "features", "test_features", "train_features")),
)
_STAGE = {s.name: s for s in STAGES}
#: Config keys that do not change any result (ignored when comparing a run directory's settings).
_VOLATILE = ("progress", "overwrite", "figures", "run_dir", "cache_dir")


def path_digest(path) -> str:
    """SHA-256 of a file, or of a folder's files (names and bytes, in sorted order); 64 hex digits."""
    import hashlib

    from .store import file_sha256

    p = Path(path).expanduser()
    if not p.is_dir():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


@dataclass
class StageRecord:
    """What happened to one stage in a run (``result.stages`` holds these as dicts)."""

    stage: str
    role: str
    key: str
    status: str      #: "computed", "cached" or "recomputed" (a corrupt stored copy was replaced)
    seconds: float   #: compute time (of the run that computed it, for cached stages)
    rank: int = 0    #: the rank that computed or loaded it


def _semantic(cfg: Config) -> dict:
    d = cfg.to_dict()
    for k in _VOLATILE:
        d.pop(k, None)
    return d


def _diff(a: dict, b: dict, prefix: str = "") -> list:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


class _Run:
    """State of one pipeline run: lazily loaded data, the store, the ranks, and a record of every stage."""

    def __init__(self, cfg: Config, ranks=None):
        from .distributed import Ranks
        from .store import Store

        self.cfg = cfg
        self.ranks = ranks or Ranks.single()
        self.store = Store(cfg.cache_path)
        self.records: list[StageRecord] = []
        self.computing: tuple = ("", "")  # (stage, key) being computed, for its per-class results
        self._train = self._test = self._meta = None
        self.bar = None

    # -------------------------------------------------------------------------- data (lazy)
    def _load(self, split: str):
        from . import data

        d = self.cfg.data
        return data.load(d.name, split, root=d.root, resize=d.resize)

    def meta(self) -> dict:
        """Classes, channels, image size and training-split labels of the dataset (read once)."""
        if self._meta is None:
            ds = self._load("train")
            size = ds.image_size if isinstance(ds.image_size, (tuple, list)) else (ds.image_size, ds.image_size)
            self._meta = {"num_classes": int(ds.num_classes), "in_channels": int(ds.in_channels),
                          "image_size": [int(v) for v in size], "classes": list(ds.classes),
                          "n_train_total": len(ds), "targets": ds.targets, "dataset": ds}
        return self._meta

    def train_data(self):
        """``(X (N, c, h, w), y (N,))``: the training split, or its seeded ``data.train_per_class`` subset."""
        if self._train is None:
            from . import data

            self._train = data.as_tensors(self.meta()["dataset"], per_class=self.cfg.data.train_per_class,
                                          seed=self.cfg.seed)
        return self._train

    def test_data(self):
        """``(X (N*, c, h, w), y (N*,))``: the first ``data.test_limit`` test points (all by default)."""
        if self._test is None:
            from . import data

            self._test = data.as_tensors(self._load("test"), limit=self.cfg.data.test_limit)
        return self._test

    def split_data(self, split: str):
        """``(dataset, labels (n,))``: the samples of :meth:`train_data` / :meth:`test_data` as a ``Subset`` of
        the loaded dataset, whose images are read only when indexed (featurisation reads a rank's shard)."""
        import torch

        from . import data

        if split == "train":
            ds, kw = self.meta()["dataset"], {"per_class": self.cfg.data.train_per_class, "seed": self.cfg.seed}
        else:
            ds, kw = self._load("test"), {"limit": self.cfg.data.test_limit}
        idx = data.subset_indices(ds, **kw)
        subset = torch.utils.data.Subset(ds, idx.tolist())
        return subset, data.labels_of(subset)

    def data_checksum(self, split: str = "train") -> str:
        """Fingerprint of the data a stage reads: the data settings, split sizes and class names."""
        from .store import content_hash

        d = dataclasses.asdict(self.cfg.data)
        if d["root"] is not None:
            d["root"] = str(Path(d["root"]).expanduser().resolve())
        m = self.meta()
        d.update(split=split, seed=self.cfg.seed, n_train_total=m["n_train_total"], classes=m["classes"])
        if split == "train":
            d.pop("test_limit")
        return content_hash(d)

    def build_model(self):
        """A fresh (untrained) model of ``teacher.arch`` for this dataset."""
        from . import models

        m = self.meta()
        extra = {"input_shape": (m["in_channels"], *m["image_size"])} if self.cfg.teacher.arch == "mlp" else {}
        return models.build(self.cfg.teacher.arch, m["num_classes"], in_channels=m["in_channels"],
                            width=self.cfg.teacher.width, seed=self.cfg.seed, **extra)

    def model_from_state(self, state: dict):
        model = self.build_model()
        model.load_state_dict(state)
        return model.to(self.cfg.device).eval()

    # -------------------------------------------------------------------------- cached stages
    def fetch(self, stage: str, role: str, inputs: dict, compute, mmap: bool = False, **extra):
        """The artifact of `stage` for this config, `extra` settings and `inputs` (content checksums),
        from the store (verified) or computed (and stored atomically); records what happened. ``mmap``:
        NumPy arrays of the artifact come back as read-only memory maps of the stored files.

        Returns :class:`dntk.store.Fetched` whose ``checksum`` is the content hash of the artifact
        without its timings: the identity that consuming stages put in their keys."""
        settings, inputs = self._keyed(stage, inputs, extra)
        label = f"{stage}[{role}]" if role else stage
        if self.bar is not None:
            self.bar.set_description(f"dntk {label}")

        def timed():
            log.info("dntk: computing %s", label)
            self.computing = (stage, self.store.key(settings, inputs))
            t0 = time.perf_counter()
            art = dict(compute())
            art.setdefault("_seconds", time.perf_counter() - t0)
            return art

        got = self.store.fetch(stage, settings, timed, inputs=inputs, mmap=mmap)
        if got.status != "cached" and self.ranks.rank == 0:
            self.drop_class_parts(stage, got.key)
        # what consumers key on: the content, without the timings (which differ between equal results)
        got = got._replace(checksum=content_hash_of({k: v for k, v in got.artifact.items()
                                                     if not k.endswith("seconds")}))
        self.records.append(StageRecord(stage, role, got.key, got.status, float(got.artifact["_seconds"]),
                                        self.ranks.rank))
        if self.bar is not None:
            self.bar.update(1)
        return got

    def _keyed(self, stage: str, inputs: dict, extra: dict) -> tuple[dict, dict]:
        """The settings and input checksums that key `stage` (see :class:`Stage`)."""
        spec = _STAGE[stage]
        unknown = set(inputs) - set(spec.consumes)
        if unknown:  # a programming error: every consumed checksum is declared in STAGES
            raise RuntimeError(f"stage {stage} does not declare the inputs {sorted(unknown)}")
        settings = {"stage": stage, "version": spec.version, **spec.settings(self.cfg), **extra}
        return settings, {k: v for k, v in inputs.items() if v is not None}

    def collective(self, stage: str, role: str, inputs: dict, compute, mmap: bool = False, **extra):
        """:meth:`fetch` of a stage whose computation all ranks share (sharded featurisation, classes
        split over ranks): all ranks compute, rank 0 stores, the others read what it stored."""
        if self.ranks.world_size == 1:
            return self.fetch(stage, role, inputs, compute, mmap=mmap, **extra)
        settings, keyed = self._keyed(stage, inputs, extra)
        self.ranks.barrier()
        stored = self.ranks.broadcast(self.store.has(stage, self.store.key(settings, keyed)))
        ready = _computed_by_rank0(stage)
        if not stored:
            self.computing = (stage, self.store.key(settings, keyed))
            t0 = time.perf_counter()
            art = dict(compute())
            art["_seconds"] = time.perf_counter() - t0
            ready = lambda: art  # noqa: E731
        if self.ranks.rank == 0:
            got = self.fetch(stage, role, inputs, ready, mmap=mmap, **extra)
        self.ranks.barrier()
        if self.ranks.rank != 0:
            got = self.fetch(stage, role, inputs, _computed_by_rank0(stage), mmap=mmap, **extra)
            self.records[-1].status = self.records[-1].status if stored else "computed"
        return got

    def per_class(self, num_classes: int, fn, label: str) -> list:
        """``[fn(0), …, fn(C-1)]`` for the stage being computed, whole classes split over the ranks
        (:func:`dntk.distributed.per_class`); each class's result is kept in the store until the stage's
        artifact is stored, so a run killed midway resumes with the classes it had finished."""
        from .distributed import per_class

        stage, key = self.computing

        def kept(c: int) -> dict:
            from .store import StoreError

            try:
                return self.store.fetch("classes", {"stage": stage, "key": key, "class": c}, lambda: fn(c)).artifact
            except (FileNotFoundError, StoreError):  # a concurrent run stored the stage and dropped its parts
                return dict(fn(c))

        return per_class(self.ranks, num_classes, kept, label)

    def drop_class_parts(self, stage: str, key: str) -> None:
        """Remove the per-class results of a stage once its whole artifact is stored."""
        for c in range(self.meta()["num_classes"]):
            self.store.delete("classes", self.store.key({"stage": stage, "key": key, "class": c}))

    def shared(self, stage: str, role: str, inputs: dict, compute, **extra):
        """:meth:`fetch` done by rank 0 alone (the others wait, then read its stored artifact)."""
        if self.ranks.world_size == 1:
            return self.fetch(stage, role, inputs, compute, **extra)
        if self.ranks.rank == 0:
            got = self.fetch(stage, role, inputs, compute, **extra)
            if got.status != "cached":
                self.ranks.work_log[f"{stage}[{role}]" if role else stage] = {"0": "all"}
        self.ranks.barrier()
        if self.ranks.rank != 0:
            got = self.fetch(stage, role, inputs, _computed_by_rank0(stage), **extra)
        return got

    # -------------------------------------------------------------------------- the stages
    def teacher(self):
        """``(Fetched, model)`` of the trained network."""
        ck = self.cfg.teacher.checkpoint
        got = self.shared("teacher", "", {"data": self.data_checksum(), "checkpoint": ck and path_digest(ck)},
                          lambda: _compute_teacher(self))
        return got, self.model_from_state(got.artifact["state"])

    def distilled(self, teacher_f, teacher):
        """Fetched distilled set (WMDD, a random real subset, the whole training set, or a saved file)."""
        p = self.cfg.distill.path
        inputs = {"data": self.data_checksum(), "teacher": teacher_f.checksum, "distilled_file": p and path_digest(p)}
        if self.cfg.distill.method == "wmdd" and not p:  # WMDD's classes are split over the ranks
            return self.collective("distill", "", inputs, lambda: _compute_distill(self, teacher))
        return self.shared("distill", "", inputs, lambda: _compute_distill(self, teacher))

    def student(self, distilled):
        """``(Fetched, model)`` of the student trained on the distilled set."""
        got = self.shared("student", "", {"distill": distilled.checksum}, lambda: _compute_student(self, distilled.artifact))
        return got, self.model_from_state(got.artifact["state"])

    def features(self, role: str, split: str, model_f, model, inputs_checksum: str, inputs):
        """Fetched projected class gradients ``(n, C, k)`` and logits ``(n, C)`` of `inputs` (a tensor or a
        Dataset; sharded over ranks, each reading only its rows).

        The training split's features (the largest) stay a read-only ``np.memmap`` of the stored array, so
        stages read them one class ``(n, k)`` at a time (:func:`_class_features`); the others are tensors.
        """
        import numpy as np
        import torch

        from .distributed import featurize

        shard_name = content_hash_of(model_f.checksum, inputs_checksum, repr(make_projector(self.cfg)))[:16]
        got = self.collective("features", f"{role}/{split}", {"model": model_f.checksum, "inputs": inputs_checksum},
                              lambda: featurize(self, model, inputs, shard_name, f"features[{role}/{split}]",
                                                inputs_digest=inputs_checksum),
                              mmap=split == "train", split=split)
        if self.ranks.world_size > 1 and self.ranks.rank == 0:  # stored: the shards are no longer needed
            for f in (self.store.root / "shards").glob(f"{shard_name}.f32*"):
                f.unlink(missing_ok=True)
        if split != "train" and isinstance(got.artifact["features"], np.ndarray):
            got.artifact["features"] = torch.from_numpy(np.array(got.artifact["features"]))
        return got

    def evaluate(self, role: str, model_f, model, distilled) -> tuple[dict, Any]:
        """Metrics of the DNTK (and of KRR on all distilled / all training gradients) for one model,
        and the measured stage times (:class:`dntk.ledger.MeasuredTimes`)."""
        from . import ledger, report

        cfg, d = self.cfg, distilled.artifact
        f_d = self.features(role, "distilled", model_f, model, distilled.checksum, d["images"])
        test_cs = content_hash_of(self.data_checksum("test"), cfg.data.test_limit)
        test_set, test_labels = self.split_data("test")
        f_t = self.features(role, "test", model_f, model, test_cs, test_set)
        targets = _targets(cfg.krr.targets, f_d.artifact["logits"], d["labels"], d["soft_labels"], self.meta()["num_classes"])
        g = self.collective("gradient_distillation", role, {"features": f_d.checksum, "distill": distilled.checksum},
                            lambda: _compute_gd(self, f_d.artifact["features"], targets, role))
        f_tr = train_ref = None
        if cfg.krr.full_reference and role == "teacher":
            train_set, train_labels = self.split_data("train")
            f_tr = self.features(role, "train", model_f, model, self.data_checksum(), train_set)
            t_tr = _targets(cfg.krr.targets if cfg.krr.targets == "onehot" else "logits", f_tr.artifact["logits"],
                            train_labels, None, self.meta()["num_classes"])
            train_ref = (f_tr.artifact["features"], t_tr)
        k = self.collective("krr", role, {"gradient_distillation": g.checksum, "features": f_d.checksum,
                                          "test_features": f_t.checksum, "train_features": f_tr and f_tr.checksum},
                            lambda: _compute_krr(self, g.artifact, f_d.artifact["features"], targets,
                                                 f_t.artifact["features"], train_ref, role))
        metrics = report.role_metrics(f_d.artifact["features"], f_t.artifact["logits"], test_labels,
                                      g.artifact, k.artifact, n_train=train_ref and len(train_ref[0]))
        def secs(f):
            return float(f.artifact["_seconds"])

        wmdd = cfg.distill.method == "wmdd" and not cfg.distill.path
        times = ledger.MeasuredTimes(
            featurize_distilled=secs(f_d), featurize_test=secs(f_t), featurize_train=f_tr and secs(f_tr),
            wmdd=float(d["_seconds"]) if wmdd else None, algorithm1=secs(g),
            krr_fit=float(k.artifact["fit_seconds"]), krr_predict=float(k.artifact["predict_seconds"]),
            krr_distilled_fit=float(k.artifact["distilled_fit_seconds"]),
            krr_full_fit=float(k.artifact["full_fit_seconds"]) if f_tr else None)
        return metrics, times

    def ledger(self, teacher, times):
        """The cost ledger (appendix §7) for this run's sizes, with the measured stage times attached."""
        from . import ledger as L

        cfg, m = self.cfg, self.meta()
        n_full = cfg.ledger.n_full or (len(self.train_data()[0]) if self._train is not None or cfg.data.train_per_class
                                       else m["n_train_total"])
        unit = None
        if cfg.ledger.measure:
            X = self.test_data()[0][: cfg.ledger.measure_inputs]
            unit = L.measure_unit_costs(teacher, X, projector=make_projector(cfg), device=cfg.device)
        led = L.from_config(cfg, model=teacher, unit=unit, n_full=int(n_full), n_test=int(len(self.test_data()[1])))
        measured = times.rows()
        if cfg.distill.method == "none":  # N_d = N: only the DNTK's own build rows were run at these sizes
            measured = {key: v for key, v in measured.items() if key[0] == "dntk" and key[1] != "one_time"}
        led.attach_measured(measured)
        led.notes.append("'measured' rows were run and timed by this pipeline (projection time is inside the "
                         "jacobians row: featurisation is one pass); other seconds are modelled from unit costs "
                         "measured on this machine" if unit else "'measured' rows were run and timed by this pipeline")
        led.notes.append("measured times of cached stages are those of the run that computed them")
        return led

    def info(self, t_start: float, distilled) -> dict:
        import torch

        from . import __version__

        m = self.meta()
        return {"dntk": __version__, "torch": torch.__version__, "device": self.cfg.device,
                "seconds": time.perf_counter() - t_start, "cache_dir": str(self.cfg.cache_path),
                "classes": m["classes"], "n_train": len(self.train_data()[0]) if self._train is not None else None,
                "n_distilled": int(len(distilled.artifact["images"])), "n_test": int(len(self.test_data()[1])),
                "world_size": self.ranks.world_size, "work": self.ranks.work_log,
                "stage_keys": {f"{x.stage}[{x.role}]" if x.role else x.stage: x.key for x in self.records}}

    @contextlib.contextmanager
    def progress(self, n_roles: int):
        """Context: a progress bar over the stages (silent when ``progress`` is off and on ranks > 0)."""
        from ._common import progress_bar

        cfg = self.cfg
        total = 2 + n_roles * 4 + (1 if cfg.student.enabled else 0) + (1 if cfg.krr.full_reference else 0)
        self.bar = progress_bar(total, "dntk", cfg.progress and self.ranks.rank == 0, leave=True)
        try:
            yield self.bar
        finally:
            self.bar.close()
            self.bar = None


def content_hash_of(*parts) -> str:
    """The content hash (:func:`dntk.store.content_hash`) of a few values: tensors, dicts, JSON values."""
    from .store import content_hash

    return content_hash(list(parts))


def _computed_by_rank0(stage: str):
    def compute():
        raise RuntimeError(f"stage {stage}: the artifact rank 0 stored cannot be read here (is the cache folder "
                           "shared by all ranks, and was it not changed meanwhile?); rerun the job")
    return compute


# ---------------------------------------------------------------------------- stage computations
# Each returns a dict for the store (tensors, arrays, JSON values).
def _compute_teacher(run: _Run) -> dict:
    from . import models

    cfg, t = run.cfg, run.cfg.teacher
    if t.checkpoint:
        model = run.build_model()
        models.load(model, t.checkpoint)
        history = {}
    elif cfg.data.train_per_class is None:
        model = models.trained(t.arch, dataset=cfg.data.name, seed=cfg.seed, epochs=t.epochs, lr=t.lr,
                               width=t.width, progress=cfg.progress, root=cfg.data.root, resize=cfg.data.resize,
                               optimizer=t.optimizer, batch_size=t.batch_size, weight_decay=t.weight_decay,
                               device=cfg.device)
        history = {}
    else:
        model = run.build_model()
        history = models.train(model, run.train_data(), epochs=t.epochs, lr=t.lr, optimizer=t.optimizer,
                               batch_size=t.batch_size, weight_decay=t.weight_decay, seed=cfg.seed,
                               device=cfg.device, progress=cfg.progress)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"state": state, "history": _plain(history)}


def _plain(obj):
    """JSON-safe copy of a history/settings dict (numbers as floats, anything else as text)."""
    return json.loads(json.dumps(obj, default=lambda o: float(o) if isinstance(o, (int, float)) else str(o)))


def _distilled_dict(ds) -> dict:
    return {"images": ds.images, "labels": ds.labels, "soft_labels": ds.soft_labels, "weights": ds.weights,
            "atoms": ds.atoms, "settings": _plain(ds.settings), "history": _plain(ds.history)}


def _as_distilled(art: dict):
    from .wmdd import DistilledSet

    return DistilledSet(images=art["images"], labels=art["labels"], soft_labels=art["soft_labels"],
                        weights=art["weights"], atoms=art["atoms"], settings=art.get("settings", {}),
                        history=art.get("history", {}))


def _compute_distill(run: _Run, teacher) -> dict:
    import torch

    from . import tangent, wmdd

    cfg, d = run.cfg, run.cfg.distill
    if d.path:
        return _distilled_dict(wmdd.load(d.path))
    C = run.meta()["num_classes"]
    if d.method == "wmdd":  # one class at a time, the classes split over the ranks (each kept when done);
        real = wmdd.RealData(run.split_data("train")[0])  # a rank reads the images of its classes only
        kw = dict(iterations=d.iterations, lr=d.lr, r_bn=d.r_bn, init=d.init, seed=cfg.seed, device=cfg.device,
                  progress=cfg.progress and run.ranks.rank == 0, **d.options)
        parts = run.per_class(C, lambda c: _distilled_dict(wmdd.distill(teacher, real, d.ipc, classes=[c], **kw)),
                              "distill")
        batch = {"batch_size": d.options["batch_size"]} if "batch_size" in d.options else {}
        return _distilled_dict(wmdd.join([_as_distilled(p) for p in parts], teacher, device=cfg.device, **batch))
    X, y = run.train_data()
    if d.method == "random":  # seeded random real subset of ipc per class, class-major
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:d.ipc]]
                         for c in range(C)])
        images, labels = X[idx], y[idx]
        weights = torch.full((C, d.ipc), 1.0 / d.ipc, dtype=torch.float64)
        atoms = torch.zeros(C, d.ipc, 0)
    else:  # "none": the whole training set
        images, labels = X, y
        weights = torch.zeros(C, 0, dtype=torch.float64)
        atoms = torch.zeros(C, 0, 0)
    soft = tangent.logits(teacher, images).float().cpu()
    return {"images": images, "labels": labels, "soft_labels": soft, "weights": weights, "atoms": atoms,
            "settings": {"method": d.method, "ipc": d.ipc, "seed": cfg.seed}, "history": {}}


def _compute_student(run: _Run, distilled: dict) -> dict:
    from . import wmdd

    cfg, s = run.cfg, run.cfg.student
    model = run.build_model()
    history = wmdd.train_student(model, _as_distilled(distilled), epochs=s.epochs, lr=s.lr,
                                 temperature=s.temperature, seed=cfg.seed, device=cfg.device,
                                 progress=cfg.progress, **s.options)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"state": state, "history": _plain(history)}


def make_projector(cfg: Config):
    """The projector of ``cfg.projection`` (:func:`dntk.projection.make`)."""
    from . import projection

    return projection.make(cfg.projection.kind, cfg.projection.k, seed=cfg.projection.seed)


def _targets(kind: str, logits, labels, soft, C: int):
    import torch

    if kind == "logits":
        return logits.double()
    if kind == "soft":
        return soft.double()
    return torch.nn.functional.one_hot(labels.long(), C).double()


def _compute_gd(run: _Run, feats, targets, role: str = "") -> dict:
    """Algorithm 1 (or a selection baseline) per class, the classes split over the ranks."""

    g = run.cfg.gradient_distillation
    labels = None
    if g.method == "local_global" and g.n_clusters:
        from . import spectral

        N, _, k = feats.shape  # step 1: one partition for all classes, so every rank can take whole classes
        labels = spectral.spectral_clusters(feats, g.n_clusters, method="dense" if N <= k else "matrix_free",
                                            seed=run.cfg.seed)
    parts = run.per_class(feats.shape[1], lambda c: _gd_class(run, feats[:, c, :], targets[:, c], labels),
                          f"gradient_distillation[{role}]")
    return {key: [p[key] for p in parts] for key in ("G_syn", "t_syn", "n_local", "n_gap", "r", "m")}


def _gd_class(run: _Run, G, t, labels) -> dict:
    """Synthetic gradients ``G_syn (m, k)`` and targets ``t_syn (m,)`` of one class."""
    import torch

    from . import gradient_distillation as gd

    g = run.cfg.gradient_distillation
    if g.method == "local_global":
        cs = gd.local_global(G[:, None, :], t[:, None], n_clusters=g.n_clusters, tau=g.tau, gamma=g.gamma,
                             budget=g.budget, seed=run.cfg.seed,
                             labels=None if labels is None else torch.as_tensor(labels), **g.options)[0]
        G_syn, t_syn, extra = cs.G_syn, cs.t_syn, {"n_local": int(cs.n_local), "n_gap": int(cs.n_gap), "r": int(cs.r)}
    elif g.method == "none":
        G_syn, t_syn, extra = G, t, {}
    else:
        G_syn, t_syn = gd.select(g.method, G, g.budget, seed=run.cfg.seed, **g.options).apply(G, t)
        extra = {}
    out = {"G_syn": G_syn.double().cpu(), "t_syn": t_syn.double().cpu(), "n_local": 0, "n_gap": 0, "r": -1}
    out.update(extra)
    out["m"] = int(out["G_syn"].shape[0])
    return out


def _compute_krr(run: _Run, gd_art: dict, feats_d, targets_d, test_feats, train_ref=None, role: str = "") -> dict:
    """KRR on the synthetic gradients (the DNTK), on all distilled gradients and optionally on the whole
    training set, with λ_c from the uncompressed distilled kernel (appendix §4.3): test predictions
    ``(N*, C)``. Classes are independent, so they are split over the ranks."""
    import torch

    parts = per_class_krr(run, gd_art, feats_d, targets_d, test_feats, train_ref, role)
    out = {"pred": torch.cat([p["pred"] for p in parts], 1),
           "pred_distilled": torch.cat([p["pred_distilled"] for p in parts], 1),
           "lam": torch.cat([p["lam"] for p in parts]),
           **{f"{name}_seconds": sum(p[name] for p in parts) for name in ("fit", "predict", "distilled_fit")}}
    if train_ref is not None:
        out["pred_full"] = torch.cat([p["pred_full"] for p in parts], 1)
        out["full_fit_seconds"] = sum(p["full_fit"] for p in parts)
    return out


def _class_features(feats, c: int):
    """Class ``c``'s features ``(n, 1, k)`` as a tensor: of a tensor ``(n, C, k)``, a view; of a (memory-mapped)
    array, a copy of that class's rows only, so the whole ``(n, C, k)`` is never read into memory."""
    import numpy as np
    import torch

    if isinstance(feats, torch.Tensor):
        return feats[:, c:c + 1]
    return torch.from_numpy(np.ascontiguousarray(feats[:, c:c + 1]))


def per_class_krr(run: _Run, gd_art: dict, feats_d, targets_d, test_feats, train_ref, role: str) -> list:
    """One dict per class: predictions ``(N*, 1)`` of the three KRR models, ``λ_c`` and the fit/predict times."""
    from . import krr

    lam_rel = run.cfg.krr.lam_rel

    def one(c: int) -> dict:
        sl = slice(c, c + 1)
        lam = krr.default_lam(feats_d[:, sl], lam_rel)
        t = [time.perf_counter()]
        dntk = krr.ClassKRR(lam_rel=lam_rel).fit_synthetic([gd_art["G_syn"][c]], [gd_art["t_syn"][c]], lam=lam)
        t.append(time.perf_counter())
        pred = dntk.predict(test_feats[:, sl].double())
        t.append(time.perf_counter())
        ref = krr.ClassKRR(lam=lam).fit(feats_d[:, sl], targets_d[:, sl])
        t.append(time.perf_counter())
        out = {"pred": pred, "pred_distilled": ref.predict(test_feats[:, sl].double()), "lam": lam,
               "fit": t[1] - t[0], "predict": t[2] - t[1], "distilled_fit": t[3] - t[2]}
        if train_ref is not None:
            f_tr, t_tr = train_ref
            t0 = time.perf_counter()
            full = krr.ClassKRR(lam_rel=lam_rel).fit(_class_features(f_tr, c), t_tr[:, sl])
            out["full_fit"] = time.perf_counter() - t0
            out["pred_full"] = full.predict(test_feats[:, sl].double())
        return out

    return run.per_class(feats_d.shape[1], one, f"krr[{role}]")


# ---------------------------------------------------------------------------------- preflight
def preflight(cfg: Config) -> None:
    """Every check that can fail before heavy work; raises :class:`ConfigError` naming the config key.

    Config values and paths (:meth:`Config.validate`), writable ``run_dir``/``cache_dir``, a run
    directory holding results of other settings, option names of ``*.options``, the dataset and its
    class sizes, the checkpoint and saved distilled set (readable, matching architecture and data),
    ``projection.k`` against the model's parameter count ``P``, WMDD's BatchNorm matching against the
    architecture, and cluster/budget sizes against the distilled set.
    """
    cfg.validate("config", check_paths=True)
    src = "config"
    _check_run_dir(cfg)
    _check_options(cfg)
    run = _Run(cfg)
    try:
        m = run.meta()
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(f"{src}: data: {_first_line(e)}") from None
    import torch

    from . import tangent

    model = run.build_model()
    if cfg.teacher.checkpoint:
        from . import models

        try:
            models.load(model, cfg.teacher.checkpoint)
        except Exception as e:  # any unreadable or mismatched file is the user's to fix
            raise ConfigError(f"{src}: teacher.checkpoint: {cfg.teacher.checkpoint} cannot be used "
                              f"({_first_line(e)})") from None
    try:
        make_projector(cfg).bind(tangent.param_layout(model))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{src}: projection.k / projection.kind: {_first_line(e)} (the {cfg.teacher.arch} has "
                          f"P = {tangent.num_params(model):,} parameters)") from None
    wmdd_runs = cfg.distill.method == "wmdd" and not cfg.distill.path
    if wmdd_runs and cfg.distill.r_bn > 0 and not any(
            isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
        raise ConfigError(f"{src}: distill.r_bn = {cfg.distill.r_bn} matches BatchNorm statistics, but "
                          f"teacher.arch {cfg.teacher.arch!r} has no BatchNorm layer; set distill.r_bn=0")
    counts = torch.bincount(torch.as_tensor(m["targets"]), minlength=m["num_classes"])
    if cfg.data.train_per_class is not None:
        counts = counts.clamp(max=cfg.data.train_per_class)
    n_distilled = _check_distilled(cfg, m, counts)
    g = cfg.gradient_distillation
    if g.method == "local_global" and g.n_clusters > n_distilled:
        raise ConfigError(f"{src}: gradient_distillation.n_clusters = {g.n_clusters} exceeds the {n_distilled} "
                          "distilled points that Algorithm 1 clusters; lower it")
    if g.method not in GD_METHODS and g.budget > n_distilled:
        raise ConfigError(f"{src}: gradient_distillation.budget = {g.budget} exceeds the {n_distilled} distilled "
                          f"gradients per class that {g.method!r} selects from; lower it")


def _check_run_dir(cfg: Config) -> None:
    """The run directory must not hold results of other settings (unless ``overwrite``)."""
    rd = cfg.run_path
    prev = rd / "config.yaml"
    if not prev.is_file() or cfg.overwrite:
        return
    try:
        old = read_yaml(prev, "run configuration")
        old_sem = _semantic(Config.from_dict(old if isinstance(old, dict) else {"?": old}, str(prev)))
    except ConfigError as e:
        raise ConfigError(f"run directory {rd} holds an unreadable config.yaml ({e}); pass --set overwrite=true "
                          "to replace that run or --set run_dir=<another folder>") from None
    new_sem = _semantic(cfg)
    if old_sem != new_sem:
        changes = _diff(old_sem, new_sem)
        raise ConfigError(
            f"run directory {rd} holds results of other settings ({'; '.join(changes[:3])}"
            f"{' …' if len(changes) > 3 else ''}); pass --set overwrite=true to replace them or "
            f"--set run_dir=<another folder> (the stage cache is shared and reused either way)")


def _check_options(cfg: Config) -> None:
    """Option dictionaries must name real keyword arguments that the config does not set itself."""
    import inspect

    from . import gradient_distillation as gd
    from . import wmdd

    g = cfg.gradient_distillation
    for key, fn, opts, taken in (
            ("distill.options", wmdd.distill, cfg.distill.options,
             {"iterations", "lr", "r_bn", "init", "seed", "device", "progress"}),
            ("student.options", wmdd.train_student, cfg.student.options,
             {"epochs", "lr", "temperature", "seed", "device", "progress"}),
            ("gradient_distillation.options", gd.local_global if g.method == "local_global" else gd.select,
             g.options, {"n_clusters", "tau", "gamma", "budget", "seed", "progress", "method", "features",
                         "targets", "features_c", "labels"} - ({"method"} if g.method == "local_global" else set()))):
        params = inspect.signature(fn).parameters
        if key == "distill.options" and ({"class_batch", "classes"} & set(opts)):
            raise ConfigError(f"config: distill.options.{sorted({'class_batch', 'classes'} & set(opts))[0]}: the "
                              "pipeline synthesises the WMDD classes one at a time (so that ranks can share them); "
                              "drop this option")
        for name in opts:
            if name in taken:
                raise ConfigError(f"config: {key}.{name} is set by the config itself; set it there instead")
            if name not in params:
                raise ConfigError(f"config: {key}.{name} is not an argument of {fn.__module__}.{fn.__name__}; "
                                  f"valid: {', '.join(p for p in params if p not in taken)}")


def _check_distilled(cfg: Config, m: dict, counts) -> int:
    """Check the distilled-set settings against the data; returns the points per class kernel ``N_d``."""
    d = cfg.distill
    if d.path:
        from . import wmdd

        try:
            ds = wmdd.load(d.path)
        except Exception as e:  # any unreadable or malformed folder is the user's to fix
            raise ConfigError(f"config: distill.path: {d.path} is not a usable distilled set ({_first_line(e)})") from None
        want = (m["in_channels"], *m["image_size"])
        if ds.num_classes != m["num_classes"] or tuple(ds.images.shape[1:]) != want:
            raise ConfigError(f"config: distill.path holds {ds.num_classes} classes of shape "
                              f"{tuple(ds.images.shape[1:])}, but the data has {m['num_classes']} of {want}")
        return int(len(ds.images))
    if d.method == "none":
        return int(counts.sum())
    if d.ipc > int(counts.min()):
        raise ConfigError(f"config: distill.ipc = {d.ipc} exceeds the {int(counts.min())} training "
                          f"samples of class {int(counts.argmin())}; lower distill.ipc")
    return d.ipc * m["num_classes"]


# ---------------------------------------------------------------------------------- run
def run(config, ranks=None) -> "RunResult":
    """Run the DNTK pipeline for `config` (a :class:`Config`, a dict, or a YAML path); see the module doc.

    ``ranks`` (a :class:`dntk.distributed.Ranks`; default: the initialised ``torch.distributed`` process
    group, else one process) share the run: rank 0 owns the run directory and trains the teacher and the
    student; featurisation is sharded by samples (each rank reading only its rows of the datasets), WMDD,
    Algorithm 1 and KRR by whole classes, each class's result kept in the store until its stage is stored
    (a killed run resumes with the classes it finished); the training features are read one class at a time
    from the stored array. Every rank returns the same metrics; rank 0 also measures the ledger and writes the outputs.
    The result equals the single-process one (features bit-identical, metrics equal).
    """
    from . import report
    from .distributed import Ranks

    cfg = config if isinstance(config, Config) else (
        Config.from_dict(config) if isinstance(config, dict) else load_config(config))
    preflight(cfg)
    r = _Run(cfg, ranks or Ranks.current())
    r.ranks.check_work(r.meta()["num_classes"])
    if r.ranks.rank == 0:
        r.store.clean_partial()  # removes only leftovers whose owner process is gone
    t_start = time.perf_counter()
    with r.progress(2 if cfg.student.enabled else 1):
        teacher_f, teacher = r.teacher()
        distilled = r.distilled(teacher_f, teacher)
        models_ = {"teacher": (teacher_f, teacher)}
        if cfg.student.enabled:
            models_["student"] = r.student(distilled)
        metrics, times = {}, None
        for role, (model_f, model) in models_.items():
            metrics[role], t = r.evaluate(role, model_f, model, distilled)
            times = times or t
        led = r.ledger(teacher, times) if r.ranks.rank == 0 else None
    result = RunResult(cfg, metrics, led, [dataclasses.asdict(x) for x in r.records], info=r.info(t_start, distilled))
    if r.ranks.rank == 0:
        report.write_outputs(result)
    r.ranks.barrier()
    return result


# ---------------------------------------------------------------------------------- result
@dataclass
class RunResult:
    """What a run produced: metrics per model, the cost ledger, stage records; ``table()`` prints them.

    Attributes
    ----------
    config : Config
    metrics : dict
        ``{"teacher": {...}, "student": {...}}``: network accuracy and, per predictor (``dntk``,
        ``distilled``, ``full``), accuracy, fidelity, logit R² and sizes (see :func:`dntk.report.role_metrics`).
    ledger : dntk.ledger.Ledger or None
    stages : list of dict
        One :class:`StageRecord` per stage (``stage``, ``role``, ``key``, ``status``, ``seconds``, ``rank``).
    path : Path or None
        ``result.json`` once written.
    figures : list of Path
    info : dict
        Versions, sizes, timings, ``world_size`` and which rank computed which shard or classes (``work``).
    """

    config: Config
    metrics: dict
    ledger: Any
    stages: list
    path: Optional[Path] = None
    figures: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "metrics": self.metrics,
                "ledger": None if self.ledger is None else self.ledger.to_dict(),
                "stages": self.stages, "figures": [str(f) for f in self.figures], "info": self.info}

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON to `path` (atomically)."""
        from .report import save_json

        return save_json(self.to_dict(), path)

    def table(self) -> str:
        """The results table (:func:`dntk.report.table`)."""
        from .report import table

        return table(self)

    def __str__(self) -> str:
        return self.table()
