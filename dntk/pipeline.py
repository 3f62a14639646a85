"""The whole DNTK pipeline from one config: data → teacher → WMDD → projected gradients → Algorithm 1 → KRR.

``Config`` is a tree of small dataclasses loaded from YAML (``Config.from_yaml``) and validated
before any heavy work: an unknown key, a value of the wrong type or outside its choices, or a missing
dataset root raises :class:`ConfigError` with one line saying what is wrong and where.

``run(config)`` executes the stages of SPEC §4 for the teacher (the trained network) and the
student (the same architecture trained on the distilled set, Sec 5.1), caching each stage's output
in a :class:`dntk.store.Store` under a key that hashes that stage's own settings and the keys of the
stages it reads from. Changing only ``krr.lam_rel`` therefore recomputes only the KRR stage, a second
identical run recomputes nothing, and an interrupted run resumes from the last finished stage
(writes are atomic). A finished run writes ``result.json``, ``config.yaml`` and the figures into
``run_dir``; a ``run_dir`` holding results of other settings is refused unless ``overwrite: true``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

__all__ = ["Config", "ConfigError", "load_config", "run", "RunResult", "STAGES"]

log = logging.getLogger("dntk")


class ConfigError(ValueError):
    """A configuration problem, reported as one line before any heavy work starts."""


# ================================================================================ config schema
@dataclass
class DataConfig:
    name: str = "digits"                 # digits | imagenette | imagewoof | cifar10 | folder:<path>
    root: Optional[str] = None           # dataset folder (default $DNTK_DATA/<name>); unused for digits
    resize: Optional[int] = None         # side length in pixels (None: the dataset's default)
    train_per_class: Optional[int] = None  # seeded class-balanced subset of the training split
    test_limit: Optional[int] = None     # first N test points (None: the whole test split)


@dataclass
class TeacherConfig:
    arch: str = "convnet"                # convnet | resnet18 | mlp
    width: Optional[int] = None
    checkpoint: Optional[str] = None     # weights saved by dntk.models.save (skips training)
    epochs: int = 30
    lr: float = 3e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = 64
    weight_decay: float = 0.0


@dataclass
class DistillConfig:
    method: Literal["wmdd", "random", "none"] = "wmdd"  # none: use the whole training set
    ipc: int = 10                        # images per class
    iterations: int = 300
    lr: float = 0.1
    r_bn: float = 10.0
    init: Literal["noise", "real"] = "real"
    path: Optional[str] = None           # a distilled set saved by dntk.wmdd.save (skips distillation)
    options: dict = field(default_factory=dict)  # further keyword arguments of dntk.wmdd.distill


@dataclass
class StudentConfig:
    enabled: bool = True
    epochs: int = 300
    lr: float = 3e-3
    temperature: float = 4.0
    options: dict = field(default_factory=dict)  # further keyword arguments of dntk.wmdd.train_student


@dataclass
class ProjectionConfig:
    kind: str = "gaussian"               # orthonormal | gaussian | rademacher | sparse | srht | kronecker
    k: int = 512
    seed: int = 0
    batch_size: Optional[int] = None     # samples per featurisation batch (None: from a memory budget)


@dataclass
class GradientDistillationConfig:
    method: str = "local_global"         # local_global | none | random | leverage | fps | kmeans | pca
    budget: Optional[int] = 5            # synthetic gradients per class (None: whatever Algorithm 1 keeps)
    n_clusters: int = 5
    tau: float = 0.99
    gamma: float = 0.5
    options: dict = field(default_factory=dict)


@dataclass
class KRRConfig:
    lam_rel: float = 1e-3                # λ = lam_rel · tr(K̃_c)/N of the uncompressed kernel (SPEC §4.3)
    targets: Literal["logits", "onehot", "soft"] = "logits"  # soft: the distilled set's teacher logits
    full_reference: bool = False         # also fit KRR on the whole training set (the "JL only" model)


@dataclass
class LedgerConfig:
    forward_flops: Optional[float] = None  # F (multiply-adds of one forward); None: counted on the model
    wmdd_iterations: Optional[int] = None  # I for the ledger (None: distill.iterations)
    n_full: Optional[int] = None         # N of the full training set (None: its actual size)
    measure: bool = True                 # time the unit costs on this machine
    measure_inputs: int = 32             # inputs used to time them


@dataclass
class Config:
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
        """Value checks beyond types (ranges, names, files); raises ConfigError with one line."""
        def bad(key, msg):
            raise ConfigError(f"{source}: {key} {msg}")

        from . import data as _data, models as _models

        n = self.data.name
        if not (n in _data.DATASETS[:-1] or n.startswith("folder:")):
            bad("data.name", f"is {n!r}; choose one of {', '.join(_data.DATASETS)}")
        if self.teacher.arch not in _models.MODELS:
            bad("teacher.arch", f"is {self.teacher.arch!r}; choose one of {', '.join(_models.MODELS)}")
        for key, v in (("data.resize", self.data.resize), ("data.train_per_class", self.data.train_per_class),
                       ("data.test_limit", self.data.test_limit), ("teacher.width", self.teacher.width),
                       ("teacher.batch_size", self.teacher.batch_size), ("distill.ipc", self.distill.ipc),
                       ("projection.k", self.projection.k), ("projection.batch_size", self.projection.batch_size),
                       ("ledger.measure_inputs", self.ledger.measure_inputs),
                       ("gradient_distillation.budget", self.gradient_distillation.budget),
                       ("gradient_distillation.n_clusters", self.gradient_distillation.n_clusters)):
            if v is not None and v < 1:
                bad(key, f"must be ≥ 1, got {v}")
        for key, v in (("teacher.epochs", self.teacher.epochs), ("distill.iterations", self.distill.iterations),
                       ("student.epochs", self.student.epochs), ("seed", self.seed)):
            if v < 0:
                bad(key, f"must be ≥ 0, got {v}")
        for key, v in (("teacher.lr", self.teacher.lr), ("distill.lr", self.distill.lr), ("student.lr", self.student.lr),
                       ("student.temperature", self.student.temperature), ("krr.lam_rel", self.krr.lam_rel)):
            if not v > 0:
                bad(key, f"must be > 0, got {v}")
        if self.distill.r_bn < 0 or self.teacher.weight_decay < 0:
            bad("distill.r_bn" if self.distill.r_bn < 0 else "teacher.weight_decay", "must be ≥ 0")
        for key, v in (("gradient_distillation.tau", self.gradient_distillation.tau),
                       ("gradient_distillation.gamma", self.gradient_distillation.gamma)):
            if not 0 < v <= 1:
                bad(key, f"must be in (0, 1], got {v}")
        kinds = ("orthonormal", "gaussian", "rademacher", "sparse", "srht", "kronecker")
        if self.projection.kind not in kinds:
            bad("projection.kind", f"is {self.projection.kind!r}; choose one of {', '.join(kinds)}")
        methods = ("local_global", "none", "random", "leverage", "fps", "kmeans", "pca")
        if self.gradient_distillation.method not in methods:
            bad("gradient_distillation.method",
                f"is {self.gradient_distillation.method!r}; choose one of {', '.join(methods)}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            bad("device", f"is {self.device!r}; use cpu, cuda, cuda:N or mps")
        if self.ledger.forward_flops is not None and not self.ledger.forward_flops > 0:
            bad("ledger.forward_flops", "must be > 0")
        if check_paths:
            self.check_paths(source)

    def check_paths(self, source: str = "config") -> None:
        """Files the config names must exist (dataset root, checkpoint, saved distilled set)."""
        if self.data.name != "digits":
            try:
                from . import data as _data
                if self.data.name.startswith("folder:"):
                    root = Path(self.data.name.split(":", 1)[1]).expanduser()
                else:
                    root = _data._resolve_root(self.data.name, self.data.root)
            except ValueError as e:
                raise ConfigError(f"{source}: data.root: {_first_line(e)}") from None
            if not root.exists():
                raise ConfigError(f"{source}: data.root: dataset folder {root} does not exist; "
                                  f"put the {self.data.name} files there or set data.root")
        for key, p in (("teacher.checkpoint", self.teacher.checkpoint), ("distill.path", self.distill.path)):
            if p is not None and not Path(p).expanduser().exists():
                raise ConfigError(f"{source}: {key}: {p} does not exist")
        if self.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ConfigError(f"{source}: device is {self.device!r} but no CUDA device is available here; "
                                  "use --set device=cpu")


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
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
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


# YAML 1.1 (PyYAML) reads 1e-3 as a string; accept the YAML 1.2 float forms too.
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
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
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
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


def load_config(path=None, overrides=(), check_paths: bool = True) -> Config:
    """Read a YAML config (or defaults when `path` is None), apply ``key=value`` overrides, validate.

    Every problem — unreadable file, unknown key, wrong type, value out of range, missing dataset
    root/checkpoint — raises :class:`ConfigError` with one line naming the key.
    """
    source = str(path) if path is not None else "config"
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            d = yaml.load(p.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML ({_first_line(e)})") from None
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


# ================================================================================ the run
#: Stages in execution order; a stage's key hashes its own settings and its upstream keys.
STAGES = ("teacher", "distill", "student", "features", "gradient_distillation", "krr")
#: Bump a stage's number when its code changes in a way that changes its output (invalidates caches).
STAGE_VERSIONS = {"teacher": 1, "distill": 1, "student": 1, "features": 1, "gradient_distillation": 1, "krr": 1}
#: Config keys that do not change any result (ignored when comparing a run directory's settings).
_VOLATILE = ("progress", "overwrite", "figures", "run_dir", "cache_dir")


def _file_digest(path) -> str:
    import hashlib

    h = hashlib.sha256()
    p = Path(path).expanduser()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


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
    """State of one pipeline run: lazily loaded data, the store, and a record of every stage."""

    def __init__(self, cfg: Config):
        from .store import Store

        self.cfg = cfg
        self.store = Store(cfg.cache_path)
        self.records: list[dict] = []
        self._train = self._test = self._meta = None
        self.bar = None

    # -------------------------------------------------------------------------- data (lazy)
    def meta(self) -> dict:
        if self._meta is None:
            from . import data

            ds = data.load(self.cfg.data.name, "train", root=self.cfg.data.root, resize=self.cfg.data.resize)
            size = ds.image_size if isinstance(ds.image_size, (tuple, list)) else (ds.image_size, ds.image_size)
            self._meta = {"num_classes": int(ds.num_classes), "in_channels": int(ds.in_channels),
                          "image_size": [int(v) for v in size], "classes": list(ds.classes),
                          "n_train_total": len(ds), "targets": ds.targets, "_ds": ds}
        return self._meta

    def train_data(self):
        if self._train is None:
            from . import data

            ds = self.meta()["_ds"]
            self._train = data.as_tensors(ds, per_class=self.cfg.data.train_per_class, seed=self.cfg.seed)
        return self._train

    def test_data(self):
        if self._test is None:
            from . import data

            ds = data.load(self.cfg.data.name, "test", root=self.cfg.data.root, resize=self.cfg.data.resize)
            self._test = data.as_tensors(ds, limit=self.cfg.data.test_limit)
        return self._test

    def data_settings(self) -> dict:
        d = dataclasses.asdict(self.cfg.data)
        if d["root"] is not None:
            d["root"] = str(Path(d["root"]).expanduser().resolve())
        d["seed"] = self.cfg.seed
        m = self.meta()  # a cheap fingerprint of the files: sizes and class names
        d["n_train_total"], d["classes"] = m["n_train_total"], m["classes"]
        return d

    def build_model(self):
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
    def stage(self, stage: str, role: str, settings: dict, compute) -> tuple[str, dict]:
        """Load the artifact of `stage` for `settings`, or compute and store it atomically."""
        settings = {"stage": stage, "version": STAGE_VERSIONS[stage], **settings}
        key = self.store.key(settings)
        label = f"{stage}[{role}]" if role else stage
        if self.bar is not None:
            self.bar.set_description(f"dntk {label}")
        if self.store.has(stage, key):
            art = self.store.load(stage, key)
            status = "cached"
            log.info("dntk: %s cached (%s)", label, key)
        else:
            log.info("dntk: computing %s (%s)", label, key)
            t0 = time.perf_counter()
            art = dict(compute())
            art["_seconds"] = time.perf_counter() - t0
            self.store.save(stage, key, art, settings)
            status = "computed"
        self.records.append({"stage": stage, "role": role, "key": key, "status": status,
                             "seconds": float(art.get("_seconds", float("nan")))})
        if self.bar is not None:
            self.bar.update(1)
        return key, art


# ---------------------------------------------------------------------------- stage computations
# Module-level so that tests can count or replace them; each returns a dict for the store.
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
    return {"state": state, "history": history}


def _distilled_dict(ds) -> dict:
    return {"images": ds.images, "labels": ds.labels, "soft_labels": ds.soft_labels, "weights": ds.weights,
            "atoms": ds.atoms, "settings": json.loads(json.dumps(ds.settings, default=str)),
            "history": json.loads(json.dumps(ds.history, default=float))}


def _as_distilled(art: dict):
    from .wmdd import DistilledSet

    return DistilledSet(images=art["images"], labels=art["labels"], soft_labels=art["soft_labels"],
                        weights=art["weights"], atoms=art["atoms"], settings=art.get("settings", {}),
                        history=art.get("history", {}))


def _compute_distill(run: _Run, teacher) -> dict:
    import torch

    from . import tangent

    cfg, d = run.cfg, run.cfg.distill
    if d.path:
        from . import wmdd

        return _distilled_dict(wmdd.load(d.path))
    X, y = run.train_data()
    C = run.meta()["num_classes"]
    if d.method == "wmdd":
        from . import wmdd

        ds = wmdd.distill(teacher, (X, y), d.ipc, iterations=d.iterations, lr=d.lr, r_bn=d.r_bn, init=d.init,
                          seed=cfg.seed, device=cfg.device, progress=cfg.progress, **d.options)
        return _distilled_dict(ds)
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
    return {"state": state, "history": json.loads(json.dumps(history, default=float))}


def make_projector(cfg: Config):
    from . import projection

    return projection.make(cfg.projection.kind, cfg.projection.k, seed=cfg.projection.seed)


def _compute_features(run: _Run, model, X) -> dict:
    from . import tangent

    cfg = run.cfg
    feats = tangent.class_gradients(model, X, projector=make_projector(cfg), batch_size=cfg.projection.batch_size,
                                    device=cfg.device, progress=cfg.progress)
    logits = tangent.logits(model, X, device=cfg.device)
    return {"features": feats.float().cpu(), "logits": logits.float().cpu()}


def _targets(kind: str, logits, labels, soft, C: int):
    import torch

    if kind == "logits":
        return logits.double()
    if kind == "soft":
        return soft.double()
    return torch.nn.functional.one_hot(labels.long(), C).double()


def _compute_gd(run: _Run, feats, targets) -> dict:
    import torch

    from . import gradient_distillation as gd

    g = run.cfg.gradient_distillation
    N, C, k = feats.shape
    out = {"G_syn": [], "t_syn": [], "n_local": [], "n_gap": [], "r": []}
    if g.method == "local_global":
        res = gd.local_global(feats, targets, n_clusters=min(g.n_clusters, N), tau=g.tau, gamma=g.gamma,
                              budget=g.budget, seed=run.cfg.seed, progress=run.cfg.progress, **g.options)
        for cs in res.classes:
            out["G_syn"].append(cs.G_syn.double().cpu())
            out["t_syn"].append(cs.t_syn.double().cpu())
            out["n_local"].append(int(cs.n_local))
            out["n_gap"].append(int(cs.n_gap))
            out["r"].append(int(cs.r))
    else:
        for c in range(C):
            if g.method == "none":
                G, t = feats[:, c, :].double(), targets[:, c].double()
            else:
                sel = gd.select(g.method, feats[:, c, :], min(g.budget or N, N), seed=run.cfg.seed, **g.options)
                G, t = sel.apply(feats[:, c, :], targets[:, c])
            out["G_syn"].append(G.double().cpu())
            out["t_syn"].append(t.double().cpu())
            out["n_local"].append(0)
            out["n_gap"].append(0)
            out["r"].append(-1)
    out["m"] = [int(G.shape[0]) for G in out["G_syn"]]
    return out


def _compute_krr(run: _Run, gd_art: dict, feats_d, targets_d, test_feats, train_ref=None) -> dict:
    from . import krr

    lam_rel = run.cfg.krr.lam_rel
    lam = krr.default_lam(feats_d, lam_rel)  # λ of the uncompressed distilled kernel (SPEC §4.3)
    t0 = time.perf_counter()
    model = krr.ClassKRR(lam_rel=lam_rel).fit_synthetic(gd_art["G_syn"], gd_art["t_syn"], lam=lam)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(test_feats.double())
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = krr.ClassKRR(lam=lam).fit(feats_d, targets_d)
    ref_fit_s = time.perf_counter() - t0
    out = {"pred": pred, "pred_distilled": ref.predict(test_feats.double()), "lam": lam,
           "fit_seconds": fit_s, "predict_seconds": predict_s, "distilled_fit_seconds": ref_fit_s}
    if train_ref is not None:
        f_tr, t_tr = train_ref
        t0 = time.perf_counter()
        full = krr.ClassKRR(lam_rel=lam_rel).fit(f_tr, t_tr)
        out["full_fit_seconds"] = time.perf_counter() - t0
        out["pred_full"] = full.predict(test_feats.double())
    return out


# ---------------------------------------------------------------------------------- preflight
def preflight(cfg: Config) -> None:
    """Every check that can fail before heavy work: paths, dataset, checkpoint architecture, option
    names, class sizes, and a run directory holding results of other settings. Raises ConfigError."""
    import inspect

    cfg.validate("config", check_paths=True)
    src = "config"
    # the run directory must not hold results of other settings
    rd = cfg.run_path
    prev = rd / "config.yaml"
    if prev.is_file() and not cfg.overwrite:
        try:
            old = yaml.load(prev.read_text(), Loader=_Loader) or {}
            old_sem = _semantic(Config.from_dict(old, str(prev)))
        except ConfigError:
            old_sem = None
        new_sem = _semantic(cfg)
        if old_sem != new_sem:
            changes = _diff(old_sem, new_sem) if old_sem is not None else ["(unreadable)"]
            raise ConfigError(
                f"run directory {rd} holds results of other settings ({'; '.join(changes[:3])}"
                f"{' …' if len(changes) > 3 else ''}); pass --set overwrite=true to replace them or "
                f"--set run_dir=<another folder> (the stage cache is shared and reused either way)")
    # option dictionaries must name real keyword arguments
    from . import gradient_distillation as gd, wmdd

    for key, fn, opts, taken in (
            ("distill.options", wmdd.distill, cfg.distill.options,
             {"iterations", "lr", "r_bn", "init", "seed", "device", "progress"}),
            ("student.options", wmdd.train_student, cfg.student.options,
             {"epochs", "lr", "temperature", "seed", "device", "progress"}),
            ("gradient_distillation.options",
             gd.local_global if cfg.gradient_distillation.method == "local_global" else gd.select,
             cfg.gradient_distillation.options,
             {"n_clusters", "tau", "gamma", "budget", "seed", "progress", "method", "features", "targets",
              "features_c"})):
        params = inspect.signature(fn).parameters
        for name in opts:
            if name in taken:
                raise ConfigError(f"{src}: {key}.{name} is set by the config itself; set it there instead")
            if name not in params:
                raise ConfigError(f"{src}: {key}.{name} is not an argument of {fn.__module__}.{fn.__name__}; "
                                  f"valid: {', '.join(p for p in params if p not in taken)}")
    # dataset, class sizes, checkpoint
    run = _Run(cfg)
    try:
        m = run.meta()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{src}: data: {_first_line(e)}") from None
    import torch

    counts = torch.bincount(torch.as_tensor(m["targets"]), minlength=m["num_classes"])
    if cfg.data.train_per_class is not None:
        counts = counts.clamp(max=cfg.data.train_per_class)
    if cfg.distill.method in ("wmdd", "random") and not cfg.distill.path and cfg.distill.ipc > int(counts.min()):
        raise ConfigError(f"{src}: distill.ipc = {cfg.distill.ipc} exceeds the {int(counts.min())} training "
                          f"samples of class {int(counts.argmin())}; lower distill.ipc")
    if cfg.distill.method == "none" and cfg.student.enabled:
        raise ConfigError(f"{src}: student.enabled needs a distilled set, but distill.method is 'none'; "
                          "set student.enabled=false")
    if cfg.teacher.checkpoint:
        from . import models

        try:
            models.load(run.build_model(), cfg.teacher.checkpoint)
        except (ValueError, RuntimeError, OSError) as e:
            raise ConfigError(f"{src}: teacher.checkpoint: {_first_line(e)}") from None
    if cfg.distill.path:
        from . import wmdd

        try:
            ds = wmdd.load(cfg.distill.path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"{src}: distill.path: {_first_line(e)}") from None
        want = (m["in_channels"], *m["image_size"])
        if ds.num_classes != m["num_classes"] or tuple(ds.images.shape[1:]) != want:
            raise ConfigError(f"{src}: distill.path holds {ds.num_classes} classes of shape "
                              f"{tuple(ds.images.shape[1:])}, but the data has {m['num_classes']} of {want}")
    if cfg.gradient_distillation.method not in ("none", "local_global") and cfg.gradient_distillation.budget is None:
        raise ConfigError(f"{src}: gradient_distillation.budget is required by method "
                          f"{cfg.gradient_distillation.method!r}")
    try:
        make_projector(cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{src}: projection: {_first_line(e)}") from None


# ---------------------------------------------------------------------------------- result
@dataclass
class RunResult:
    """What a run produced: metrics per model, the cost ledger, stage records; ``table()`` prints them."""
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
        from .store import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=_json_default))

    def table(self) -> str:
        lines = [f"DNTK run {self.config.name!r}: {self.config.data.name}, {self.config.teacher.arch}, "
                 f"WMDD ipc {self.config.distill.ipc} ({self.config.distill.method}), k={self.config.projection.k} "
                 f"({self.config.projection.kind}), {self.config.gradient_distillation.method} "
                 f"budget {self.config.gradient_distillation.budget}", "",
                 f"{'model':<9}{'predictor':<34}{'grads/class':>13}{'accuracy':>10}{'fidelity':>10}{'logit R²':>10}"]
        for role, m in self.metrics.items():
            lines.append(f"{role:<9}{'network':<34}{'':>13}{m['network_accuracy']:>10.4f}{1.0:>10.4f}{'':>10}")
            for name, label in (("full", "KRR, whole training set (JL only)"),
                                ("distilled", "KRR, all distilled gradients (DD+JL)"),
                                ("dntk", "DNTK (Algorithm 1 synthetic)")):
                if name in m:
                    r = m[name]
                    lines.append(f"{'':<9}{label:<34}{r['gradients_per_class']:>13.4g}{r['accuracy']:>10.4f}"
                                 f"{r['fidelity']:>10.4f}{r['logit_r2']:>10.4f}")
        st = " ".join(f"{r['stage']}{'[' + r['role'] + ']' if r['role'] else ''}:{r['status']}" for r in self.stages)
        lines += ["", "stages: " + st]
        if self.ledger is not None:
            sm = self.ledger.summary()
            lines += ["", f"ledger: DNTK build {sm['build_vs_full_ntk']:.3g}× cheaper than the full NTK, "
                          f"{sm['build_vs_jl']:.3g}× than JL only (one-time WMDD + Algorithm 1 excluded; "
                          f"included: {sm['build+one_time_vs_full_ntk']:.3g}× / {sm['build+one_time_vs_jl']:.3g}×)"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _metrics_for(pred, y, net_logits) -> dict:
    from . import metrics as M

    return {"accuracy": M.accuracy(pred, y), "fidelity": M.fidelity(pred, net_logits),
            "logit_r2": M.logit_r2(pred, net_logits), "relative_logit_error": M.relative_logit_error(pred, net_logits)}


# ---------------------------------------------------------------------------------- run
def run(config) -> RunResult:
    """Run the DNTK pipeline for `config` (a :class:`Config`, a dict, or a YAML path); see the module doc."""
    import torch

    from . import __version__, metrics as M
    from .store import atomic_write_text

    cfg = config if isinstance(config, Config) else (
        Config.from_dict(config) if isinstance(config, dict) else load_config(config))
    preflight(cfg)
    r = _Run(cfg)
    r.store.clean_partial()
    meta = r.meta()
    C = meta["num_classes"]
    roles = ["teacher"] + (["student"] if cfg.student.enabled else [])
    n_steps = 2 + len(roles) * 5 + (1 if cfg.student.enabled else 0) + (1 if cfg.krr.full_reference else 0)
    if cfg.progress:
        from tqdm.auto import tqdm
        r.bar = tqdm(total=n_steps, desc="dntk", leave=True)
    t_start = time.perf_counter()
    try:
        data_key = r.store.key(r.data_settings())
        t_set = dataclasses.asdict(cfg.teacher)
        if cfg.teacher.checkpoint:
            t_set = {"arch": cfg.teacher.arch, "width": cfg.teacher.width,
                     "checkpoint_sha": _file_digest(cfg.teacher.checkpoint)}
        from . import models as _models

        t_set["models_version"] = getattr(_models, "_CACHE_VERSION", 0)  # retrain when training code changes
        t_key, t_art = r.stage("teacher", "", {"data": data_key, "seed": cfg.seed, **t_set},
                               lambda: _compute_teacher(r))
        teacher = r.model_from_state(t_art["state"])

        d_set = ({"path_sha": _file_digest(cfg.distill.path)} if cfg.distill.path else
                 {**{k: v for k, v in dataclasses.asdict(cfg.distill).items() if k != "path"}, "seed": cfg.seed})
        if cfg.distill.method == "none" and not cfg.distill.path:
            d_set = {"method": "none"}
        elif cfg.distill.method == "random" and not cfg.distill.path:
            d_set = {"method": "random", "ipc": cfg.distill.ipc, "seed": cfg.seed}
        d_key, d_art = r.stage("distill", "", {"teacher": t_key, "data": data_key, **d_set},
                               lambda: _compute_distill(r, teacher))
        models_ = {"teacher": (t_key, teacher)}
        if cfg.student.enabled:
            s_key, s_art = r.stage("student", "", {"distill": d_key, "arch": cfg.teacher.arch,
                                                   "width": cfg.teacher.width, "seed": cfg.seed,
                                                   **dataclasses.asdict(cfg.student)},
                                   lambda: _compute_student(r, d_art))
            models_["student"] = (s_key, r.model_from_state(s_art["state"]))

        proj_set = {k: v for k, v in dataclasses.asdict(cfg.projection).items() if k != "batch_size"}
        test_key = r.store.key({"data": data_key, "test_limit": cfg.data.test_limit})
        y_test = None
        results, measured = {}, {}
        for role, (m_key, model) in models_.items():
            f_key, f_art = r.stage("features", f"{role}/distilled", {"model": m_key, "inputs": d_key, **proj_set},
                                   lambda: _compute_features(r, model, d_art["images"]))
            ft_key, ft_art = r.stage("features", f"{role}/test", {"model": m_key, "inputs": test_key, **proj_set},
                                     lambda: _compute_features(r, model, r.test_data()[0]))
            feats_d, logits_d = f_art["features"], f_art["logits"]
            targets = _targets(cfg.krr.targets, logits_d, d_art["labels"], d_art["soft_labels"], C)
            g_set = dataclasses.asdict(cfg.gradient_distillation)
            g_key, g_art = r.stage("gradient_distillation", role,
                                   {"features": f_key, "targets": cfg.krr.targets, "seed": cfg.seed, **g_set},
                                   lambda: _compute_gd(r, feats_d, targets))
            train_ref, fr_key = None, None
            if cfg.krr.full_reference and role == "teacher":
                fr_key, fr_art = r.stage("features", f"{role}/train",
                                         {"model": m_key, "inputs": data_key, "split": "train", **proj_set},
                                         lambda: _compute_features(r, model, r.train_data()[0]))
                if cfg.krr.targets == "logits":
                    t_tr = fr_art["logits"].double()
                elif cfg.krr.targets == "onehot":
                    t_tr = _targets("onehot", None, r.train_data()[1], None, C)
                else:  # soft labels exist only on the distilled set; the teacher's logits are the same thing
                    t_tr = fr_art["logits"].double()
                train_ref = (fr_art["features"], t_tr)
            k_key, k_art = r.stage("krr", role, {"gradient_distillation": g_key, "features": f_key,
                                                 "test_features": ft_key, "targets": cfg.krr.targets,
                                                 "lam_rel": cfg.krr.lam_rel, "full_reference": fr_key},
                                   lambda: _compute_krr(r, g_art, feats_d, targets, ft_art["features"], train_ref))
            # ---- metrics (cheap, never cached)
            if y_test is None:
                y_test = r.test_data()[1]
            net = ft_art["logits"]
            res = {"network_accuracy": M.accuracy(net, y_test),
                   "dntk": {**_metrics_for(k_art["pred"], y_test, net),
                            "gradients_per_class": sum(g_art["m"]) / C,
                            "m_per_class": list(g_art["m"]),
                            "n_local": int(sum(g_art["n_local"])), "n_gap": int(sum(g_art["n_gap"])),
                            "coverage": float(M.coverage(feats_d, g_art["G_syn"]).mean()),
                            "nystrom_error": float(M.nystrom_error(feats_d, g_art["G_syn"]).mean())},
                   "distilled": {**_metrics_for(k_art["pred_distilled"], y_test, net),
                                 "gradients_per_class": len(feats_d)}}
            if "pred_full" in k_art:
                res["full"] = {**_metrics_for(k_art["pred_full"], y_test, net),
                               "gradients_per_class": len(train_ref[0])}
            results[role] = res
            if role == "teacher":
                measured = {("dntk", "build", "jacobians"): float(f_art["_seconds"]),
                            ("dntk", "build", "projection"): _IN_JAC,
                            ("dntk", "one_time", "algorithm1"): float(g_art["_seconds"]),
                            ("dntk", "build", "krr"): float(k_art["fit_seconds"]),
                            ("dntk", "predict", "jacobians"): float(ft_art["_seconds"]),
                            ("dntk", "predict", "projection"): _IN_JAC,
                            ("dntk", "predict", "kernel"): float(k_art["predict_seconds"]),
                            ("dd_jl", "build", "jacobians"): float(f_art["_seconds"]),
                            ("dd_jl", "build", "projection"): _IN_JAC,
                            ("dd_jl", "build", "krr"): float(k_art["distilled_fit_seconds"])}
                if cfg.distill.method == "wmdd" and not cfg.distill.path:
                    measured[("dntk", "one_time", "wmdd")] = float(d_art["_seconds"])
                    measured[("dd_jl", "one_time", "wmdd")] = float(d_art["_seconds"])
                if train_ref is not None:
                    measured[("jl", "build", "jacobians")] = float(fr_art["_seconds"])
                    measured[("jl", "build", "projection")] = _IN_JAC
                    measured[("jl", "build", "krr")] = float(k_art["full_fit_seconds"])
        if r.bar is not None:
            r.bar.set_description("dntk ledger")
        led = _ledger(r, teacher, measured, y_test)
        if r.bar is not None:
            r.bar.update(1)
    finally:
        if r.bar is not None:
            r.bar.close()
    info = {"dntk": __version__, "torch": torch.__version__, "device": cfg.device,
            "seconds": time.perf_counter() - t_start, "cache_dir": str(cfg.cache_path),
            "classes": meta["classes"], "n_train": int(len(r.train_data()[0])) if r._train is not None else None,
            "n_distilled": int(len(d_art["images"])), "n_test": int(len(y_test)),
            "stage_keys": {f"{x['stage']}[{x['role']}]" if x["role"] else x["stage"]: x["key"] for x in r.records}}
    result = RunResult(cfg, results, led, r.records, info=info)
    _write_outputs(result)
    return result


_IN_JAC = (0.0, "measured, in jacobians")  # featurisation is one pass: its time is on the jacobians row


def _ledger(r: _Run, teacher, measured: dict, y_test):
    from . import ledger as L

    cfg = r.cfg
    m = r.meta()
    n_full = cfg.ledger.n_full or (len(r.train_data()[0]) if r._train is not None or cfg.data.train_per_class
                                   else m["n_train_total"])
    unit = None
    if cfg.ledger.measure:
        X = r.test_data()[0][: cfg.ledger.measure_inputs]
        unit = L.measure_unit_costs(teacher, X, projector=make_projector(cfg), device=cfg.device)
    led = L.from_config(cfg, model=teacher, unit=unit, n_full=int(n_full), n_test=int(len(y_test)))
    # measured seconds only for the sizes that were actually run
    if cfg.distill.method == "none":
        measured = {k: v for k, v in measured.items() if k[0] == "dntk" and k[1] != "one_time"}
    led.attach_measured(measured)
    led.notes.append("'measured' rows were run and timed by this pipeline (projection time is inside the "
                     "jacobians row: featurisation is one pass); other seconds are modelled from unit costs "
                     "measured on this machine" if unit else "'measured' rows were run and timed by this pipeline")
    led.notes.append("measured times of cached stages are those of the run that computed them")
    return led


def _write_outputs(result: RunResult) -> None:
    from .store import atomic_write_text

    cfg = result.config
    rd = cfg.run_path
    rd.mkdir(parents=True, exist_ok=True)
    figs = []
    if cfg.figures:
        try:
            figs = _figures(result, rd / "figures")
        except Exception as e:  # a plotting problem must not lose the run's numbers
            log.warning("dntk: figures not written (%s)", e)
    result.figures = figs
    atomic_write_text(rd / "config.yaml", cfg.to_yaml())
    result.path = result.save(rd / "result.json")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def _figures(result: RunResult, out: Path) -> list:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from . import ledger as L
    from .store import atomic_write_bytes
    import io

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(atomic_write_bytes(out / name, buf.getvalue()))

    # accuracy / fidelity per model and predictor
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, metric in zip(axes, ("accuracy", "fidelity")):
        labels, vals, colors = [], [], []
        for role, m in result.metrics.items():
            if metric == "accuracy":
                labels.append(f"{role}\nnetwork")
                vals.append(m["network_accuracy"])
                colors.append("0.6")
            for name, lab, col in (("full", "KRR full", "C0"), ("distilled", "DD+JL", "C1"), ("dntk", "DNTK", "C2")):
                if name in m:
                    labels.append(f"{role}\n{lab}")
                    vals.append(m[name][metric])
                    colors.append(col)
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_title(f"test {metric}")
        ax.set_ylim(0, 1.02)
    save(fig, "accuracy_fidelity.png")

    led = result.ledger
    if led is not None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        names = [L.PIPELINE_NAMES[p] for p in L.PIPELINES]
        b = [led.total(p, ("build",))["macs"] for p in L.PIPELINES]
        o = [led.total(p, ("one_time",))["macs"] for p in L.PIPELINES]
        x = range(len(names))
        ax.bar(x, b, label="build")
        ax.bar(x, o, bottom=b, label="one-time (WMDD, Algorithm 1)")
        ax.set_yscale("log")
        ax.set_xticks(list(x), names)
        ax.set_ylabel("multiply-adds")
        ax.set_title("cost ledger (SPEC §7)")
        ax.legend(fontsize=8)
        save(fig, "ledger.png")
    return paths
