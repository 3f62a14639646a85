"""The cost ledger of appendix §7: what each of the five NTK pipelines costs, stage by stage.

Pipelines, all on the same sizes ``(N, C, P, F, k)`` (appendix §7):

- ``full_ntk``       Jacobians of N (materialised), the full NTK (all C² class pairs), dual KRR on NC×NC;
- ``class_kernels``  Jacobians of N (materialised), class kernels of width P, dual KRR per class;
- ``jl``             Jacobians of N streamed through a projection to k, class kernels of width k, KRR;
- ``dd_jl``          the same on the N_d distilled points, plus WMDD (one-time);
- ``dntk``           DD + JL + Algorithm 1 (one-time), KRR on m synthetic gradients per class.

Every stage row has a *phase*: ``one_time`` (WMDD, Algorithm 1 — paid once per distilled set),
``build`` (everything needed to fit the kernel model) or ``predict`` (for ``N*`` test points), and
carries its operation count, peak memory (bytes), number of per-input Jacobian evaluations and
seconds. Conventions:

- Operation counts are **multiply–adds** (MACs), the leading terms of appendix §7's table; ``F`` is the
  MAC count of one forward pass, counted on the model with ``torch.utils.flop_counter`` (its FLOPs / 2).
  A per-input Jacobian is one forward plus ``C`` VJPs of twice the forward cost: ``F·(1 + 2C)``.
- KRR solves in the smaller space (appendix §1): dual ``C·n³/3`` when ``n ≤ w``, else primal
  ``C·(n·w² + w³/3)``; predictions use the same form (dual ``N*·C·n·w``, primal ``N*·C·w``). The full NTK
  solves the ``NC×NC`` system: ``(NC)³/3``. Eigendecompositions/SVDs of ``n×k`` blocks count ``n·k·min(n, k)``.
- Memory is *storage*: the bytes a stage's result occupies (features float32, 4 B; kernels and
  solves float64, 8 B; Jacobians ``n·C·P`` materialised by the two exact pipelines). The JL pipelines
  stream Jacobians straight into the projection, so they store none; their transient buffer
  (``batch·C·P`` floats for a batch of per-sample gradients, tunable by the batch size) is reported
  separately as ``working``.
- ``source`` says where the seconds come from: ``"measured"`` (the stage was run and timed),
  ``"modelled"`` (operation count ÷ a unit cost measured on this machine, see :func:`measure_unit_costs`),
  or ``"count only"`` (no unit costs given). Operation counts and memory are always modelled (counted).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

__all__ = ["Sizes", "UnitCosts", "MeasuredTimes", "Row", "Ledger", "PIPELINES", "PHASES", "build_ledger", "model_stats",
           "measure_unit_costs", "from_config", "projection_cost", "DATASET_SIZES"]

PIPELINES = ("full_ntk", "class_kernels", "jl", "dd_jl", "dntk")
PIPELINE_NAMES = {"full_ntk": "full NTK", "class_kernels": "class kernels", "jl": "JL only",
                  "dd_jl": "DD + JL", "dntk": "DNTK"}
PHASES = ("one_time", "build", "predict")

#: Published train / test split sizes, used when the dataset folder is not on this machine.
DATASET_SIZES = {"digits": (1437, 360), "imagenette": (9469, 3925), "imagewoof": (9025, 3929),
                 "cifar10": (50000, 10000)}

F32, F64 = 4, 8


@dataclass(frozen=True)
class Sizes:
    """The sizes a ledger is computed from (appendix §7 symbols)."""
    N: int                    # full training set
    C: int                    # classes
    P: int                    # trainable parameters
    F: float                  # MACs of one forward pass
    k: int                    # projection dimension
    ipc: int                  # distilled images per class (N_d = C·ipc)
    m: int                    # synthetic gradients per class
    N_test: int = 1           # test points predicted
    I: int = 1000             # WMDD synthesis iterations
    image_numel: int = 64     # pixels × channels of one input
    projector: str = "gaussian"
    layers: tuple = ()        # ((T_l, d_in, d_out), ...) per Linear/Conv weight, for "kronecker"
    p_vec: int = 0            # parameters in 1-D tensors (biases, norm affines), projected densely by "kronecker"
    n_clusters: int = 5       # M of Algorithm 1
    batch: int = 64           # streaming batch of the JL pipelines (working memory)

    def __post_init__(self):
        for name in ("N", "C", "P", "k", "ipc", "m", "N_test", "I", "image_numel", "n_clusters", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Sizes.{name} must be a positive int, got {v!r}")
        if not self.F > 0:
            raise ValueError(f"Sizes.F (forward MACs) must be > 0, got {self.F!r}")
        from .projection import KINDS

        if self.projector not in KINDS:
            raise ValueError(f"Sizes.projector {self.projector!r} is not a projector kind; choose one of "
                             f"{', '.join(KINDS)} (appendix §4.2)")
        if self.projector == "kronecker" and not self.layers:
            raise ValueError("a kronecker ledger needs Sizes.layers = ((T_l, d_in, d_out), ...); "
                             "get them with dntk.ledger.model_stats(model, input_shape)")

    @property
    def N_d(self) -> int:
        return self.C * self.ipc

    @property
    def P_pad(self) -> int:
        return 1 << max(0, (self.P - 1).bit_length())


@dataclass(frozen=True)
class UnitCosts:
    """Unit costs measured on one machine; seconds of a stage = its count × the matching unit cost.

    jacobian_s: seconds per input for one forward + one batched backward over the C classes (summed
        gradients, no per-sample work: the floor any per-sample method pays).
    featurize_s: seconds per input for projected per-class gradients (``class_gradients`` with the
        projector); projection's share is ``featurize_s - jacobian_s``.
    forward_s: seconds per input of one forward pass.
    mac_rate: float64 matrix-product multiply–adds per second (kernels, solves, SVDs).
    """
    jacobian_s: float
    featurize_s: float
    forward_s: float
    mac_rate: float
    device: str = "cpu"
    note: str = ""


@dataclass(frozen=True)
class MeasuredTimes:
    """Seconds a pipeline run measured for its stages (``None``: that stage did not run).

    Featurisation is one pass (per-sample gradients streamed into the projection), so its time is
    recorded on the Jacobian rows and the projection rows say "measured, in jacobians".

    Attributes
    ----------
    featurize_distilled, featurize_test, featurize_train : float or None
        Projected class gradients of the ``N_d`` distilled points, the ``N*`` test points and the
        ``N`` training points (the last only for the JL-only reference).
    wmdd, algorithm1 : float or None
        One-time stages: WMDD synthesis and Algorithm 1 (appendix §4.3).
    krr_fit, krr_predict : float or None
        The DNTK's KRR fit on the synthetic gradients and its test predictions.
    krr_distilled_fit, krr_full_fit : float or None
        KRR on all distilled gradients (DD + JL) and on the whole training set (JL only).
    """
    featurize_distilled: Optional[float] = None
    featurize_test: Optional[float] = None
    featurize_train: Optional[float] = None
    wmdd: Optional[float] = None
    algorithm1: Optional[float] = None
    krr_fit: Optional[float] = None
    krr_predict: Optional[float] = None
    krr_distilled_fit: Optional[float] = None
    krr_full_fit: Optional[float] = None

    def rows(self) -> dict:
        """``{(pipeline, phase, stage): seconds or (seconds, label)}`` for :meth:`Ledger.attach_measured`."""
        in_jac = (0.0, "measured, in jacobians")
        out = {}

        def put(value, *keys, projection=None):
            if value is None:
                return
            for key in keys:
                out[key] = float(value)
            for key in projection or ():
                out[key] = in_jac

        put(self.featurize_distilled, ("dntk", "build", "jacobians"), ("dd_jl", "build", "jacobians"),
            projection=(("dntk", "build", "projection"), ("dd_jl", "build", "projection")))
        put(self.featurize_test, ("dntk", "predict", "jacobians"), projection=(("dntk", "predict", "projection"),))
        put(self.featurize_train, ("jl", "build", "jacobians"), projection=(("jl", "build", "projection"),))
        put(self.wmdd, ("dntk", "one_time", "wmdd"), ("dd_jl", "one_time", "wmdd"))
        put(self.algorithm1, ("dntk", "one_time", "algorithm1"))
        put(self.krr_fit, ("dntk", "build", "krr"))
        put(self.krr_predict, ("dntk", "predict", "kernel"))
        put(self.krr_distilled_fit, ("dd_jl", "build", "krr"))
        put(self.krr_full_fit, ("jl", "build", "krr"))
        return out


@dataclass
class Row:
    pipeline: str
    phase: str
    stage: str
    macs: float
    memory: float             # bytes the stage's result occupies (stored: Jacobians, features, kernels, images)
    jacobians: int = 0        # per-input Jacobian evaluations
    working: float = 0.0      # transient bytes (a streamed batch of per-sample gradients), not stored
    seconds: Optional[float] = None
    source: str = "count only"
    formula: str = ""


def projection_cost(s: Sizes, n: int) -> float:
    """MACs to project the class gradients of `n` inputs (appendix §7 row "projection").

    dense ``n·C·P·k``; sparse ``n·C·P·s`` (``s`` nonzeros per input coordinate); SRHT ``n·C·P'·log₂P'``;
    kronecker ``n·C·(Σ_l T_l (d_in k_in + d_out k_out + k) + P_vec·k)``.
    """
    if s.projector in ("gaussian", "rademacher", "orthonormal"):
        return float(n) * s.C * s.P * s.k
    if s.projector == "sparse":  # sparse JL transform: s nonzeros (scatter-adds) per input coordinate
        from .projection import DEFAULT_SPARSE_S

        return float(n) * s.C * s.P * DEFAULT_SPARSE_S
    if s.projector == "srht":
        return float(n) * s.C * s.P_pad * math.log2(s.P_pad)
    # kronecker (dntk.projection): per weight Σ_t (R_outᵀ δ_t)(R_inᵀ a_t)ᵀ with k = k_out·k_in,
    # k_out the largest divisor of k not above √k; 1-D parameters through a dense N(0, 1/k) block
    k_out = max(d for d in range(1, math.isqrt(s.k) + 1) if s.k % d == 0)
    k_in = s.k // k_out
    per = sum(T * (d_in * k_in + d_out * k_out + s.k) for T, d_in, d_out in s.layers) + s.p_vec * s.k
    return float(n) * s.C * per


def _krr(C: int, n: int, w: int, pairs: bool = False):
    """(MACs, memory, form) of a KRR solve on n points of width w per class (smaller space)."""
    dual = C * n ** 3 / 3.0
    primal = C * (n * w ** 2 + w ** 3 / 3.0)
    if n <= w:
        return dual, C * n * n * F64, "dual"
    return primal, C * w * w * F64, "primal"


def build_ledger(s: Sizes, unit: Optional[UnitCosts] = None, measured: Optional[dict] = None) -> "Ledger":
    """The ledger of appendix §7 for sizes `s`.

    unit: measured unit costs; stage seconds are then modelled from them (``source="modelled"``).
    measured: ``{(pipeline, stage): seconds}`` of stages actually run; they replace the modelled
        seconds and are labelled ``"measured"``.
    """
    C, P, F, k, N, Nd, m, Nt = s.C, s.P, float(s.F), s.k, s.N, s.N_d, s.m, s.N_test
    jac = F * (1 + 2 * C)
    rows: list[Row] = []

    def add(pipeline, phase, stage, macs, memory, jacobians=0, formula="", kind="mac", working=0.0):
        rows.append(Row(pipeline, phase, stage, float(macs), float(memory), int(jacobians), float(working),
                        formula=formula))
        rows[-1]._kind = kind  # how to turn the count into seconds

    # ---- exact pipelines: Jacobians materialised
    for pl in ("full_ntk", "class_kernels"):
        add(pl, "build", "jacobians", N * jac, N * C * P * F32, N, "N·F·(1+2C)", "jacobian")
    add("full_ntk", "build", "kernel", N * N * C * C * P, N * N * C * C * F64, 0, "N²·C²·P")
    add("full_ntk", "build", "krr", (N * C) ** 3 / 3.0, (N * C) ** 2 * F64, 0, "(NC)³/3")
    add("class_kernels", "build", "kernel", N * N * C * P, N * N * C * F64, 0, "N²·C·P")
    add("class_kernels", "build", "krr", C * N ** 3 / 3.0, C * N * N * F64, 0, "C·N³/3")
    for pl in ("full_ntk", "class_kernels"):
        add(pl, "predict", "jacobians", Nt * jac, Nt * C * P * F32, Nt, "N*·F·(1+2C)", "jacobian")
    add("full_ntk", "predict", "kernel", Nt * N * C * C * P, Nt * N * C * C * F64, 0, "N*·N·C²·P")
    add("class_kernels", "predict", "kernel", Nt * N * C * P, Nt * N * C * F64, 0, "N*·N·C·P")

    # ---- projected pipelines
    stream = s.batch * C * P * F32  # working memory of streamed per-sample gradients
    for pl, n in (("jl", N), ("dd_jl", Nd), ("dntk", Nd)):
        nn = "N" if pl == "jl" else "N_d"
        add(pl, "build", "jacobians", n * jac, 0.0, n, f"{nn}·F·(1+2C)", "jacobian", stream)
        add(pl, "build", "projection", projection_cost(s, n), n * C * k * F32, 0, f"{nn}·C·proj({s.projector})",
            "projection")
    for pl, n in (("jl", N), ("dd_jl", Nd)):
        nn = "N" if pl == "jl" else "N_d"
        add(pl, "build", "kernel", n * n * C * k, n * n * C * F64, 0, f"{nn}²·C·k")
        macs, mem, form = _krr(C, n, k)
        add(pl, "build", "krr", macs, mem, 0, f"{form} KRR, n={nn}")
    add("dntk", "build", "kernel", C * m * m * k, C * m * m * F64, 0, "C·m²·k")
    macs, mem, form = _krr(C, m, k)
    add("dntk", "build", "krr", macs, mem, 0, f"{form} KRR, n=m")

    # one-time: WMDD (features of N real inputs + I steps over the C·ipc images, forward+backward = 3F)
    for pl in ("dd_jl", "dntk"):
        add(pl, "one_time", "wmdd", N * F + s.I * Nd * 3 * F, Nd * s.image_numel * F32, 0, "N·F + I·C·ipc·3F",
            "forward")
    # Algorithm 1, matrix-free: per class global SVD of N_d×k and local SVDs of |S_j|×k,
    # plus the clustering sketch (top-M singular vectors of the stacked N_d×Ck features)
    M = s.n_clusters
    sizes_j = [Nd // M + (1 if j < Nd % M else 0) for j in range(M)]
    alg1 = C * (Nd * k * min(Nd, k) + sum(sj * k * min(sj, k) for sj in sizes_j)) + Nd * C * k * M
    add("dntk", "one_time", "algorithm1", alg1, Nd * C * k * F32, 0, "C·(N_d·k·min(N_d,k) + Σ_j|S_j|·k·min) + N_d·C·k·M")

    # predictions for N* test points
    for pl, n in (("jl", N), ("dd_jl", Nd), ("dntk", m)):
        add(pl, "predict", "jacobians", Nt * jac, 0.0, Nt, "N*·F·(1+2C)", "jacobian", stream)
        add(pl, "predict", "projection", projection_cost(s, Nt), Nt * C * k * F32, 0, f"N*·C·proj({s.projector})",
            "projection")
        _, _, form = _krr(C, n, k)
        if form == "dual":
            add(pl, "predict", "kernel", Nt * C * n * k, Nt * C * n * F64, 0, "N*·C·n·k (dual)")
        else:
            add(pl, "predict", "kernel", Nt * C * k, Nt * C * F64, 0, "N*·C·k (primal)")

    order = {"one_time": 0, "build": 1, "predict": 2}
    rows = [r for _, r in sorted(enumerate(rows), key=lambda ir: (PIPELINES.index(ir[1].pipeline),
                                                                   order[ir[1].phase], ir[0]))]
    led = Ledger(s, rows, unit)
    if unit is not None:
        for r in rows:
            r.seconds = led._model_seconds(r)
            r.source = "modelled"
    for r in rows:
        del r._kind
    if measured:
        led.attach_measured(measured)
    return led


@dataclass
class Ledger:
    sizes: Sizes
    rows: list
    unit: Optional[UnitCosts] = None
    notes: list = field(default_factory=list)

    def _model_seconds(self, r) -> float:
        u, s = self.unit, self.sizes
        kind = getattr(r, "_kind", "mac")
        if kind == "jacobian":
            return r.jacobians * u.jacobian_s
        if kind == "projection":
            n = s.N_d if r.pipeline in ("dd_jl", "dntk") and r.phase == "build" else (
                s.N if r.phase == "build" else s.N_test)
            return n * max(u.featurize_s - u.jacobian_s, 0.0)
        if kind == "forward":
            return r.macs / s.F * u.forward_s
        return r.macs / u.mac_rate

    def attach_measured(self, measured: dict) -> None:
        """Replace seconds by measured ones: ``{(pipeline, stage): s}`` or ``{(pipeline, phase, stage): s}``;
        a value ``(s, label)`` sets the source label too (e.g. ``(0.0, "measured, in jacobians")``)."""
        for key, val in measured.items():
            sec, label = val if isinstance(val, tuple) else (val, "measured")
            hit = False
            for r in self.rows:
                if (len(key) == 2 and (r.pipeline, r.stage) == tuple(key) and r.phase != "predict") or \
                        (len(key) == 3 and (r.pipeline, r.phase, r.stage) == tuple(key)):
                    r.seconds, r.source, hit = float(sec), label, True
            if not hit:
                raise KeyError(f"no ledger row {key}")

    def attach_times(self, times: MeasuredTimes) -> None:
        """Replace the seconds of the stages a pipeline run measured (see :class:`MeasuredTimes`)."""
        self.attach_measured(times.rows())

    # ------------------------------------------------------------------------- totals
    def total(self, pipeline: str, phases: Sequence[str] = ("build",)) -> dict:
        """Sum of MACs, Jacobians and seconds, and the peak memory, over the given phases."""
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
        rs = [r for r in self.rows if r.pipeline == pipeline and r.phase in phases]
        secs = [r.seconds for r in rs]
        return {"macs": sum(r.macs for r in rs), "memory": max((r.memory for r in rs), default=0.0),
                "working": max((r.working for r in rs), default=0.0),
                "jacobians": sum(r.jacobians for r in rs),
                "seconds": None if not rs or any(x is None for x in secs) else sum(secs),
                "measured": bool(rs) and all(r.source.startswith("measured") for r in rs)}

    def reduction(self, pipeline: str = "dntk", vs: str = "full_ntk", phases: Sequence[str] = ("build",),
                  what: str = "macs") -> float:
        """``total(vs)[what] / total(pipeline)[what]`` — how many times cheaper `pipeline` is."""
        a, b = self.total(vs, phases)[what], self.total(pipeline, phases)[what]
        if a is None or b is None:
            return float("nan")
        return a / b if b else float("inf")

    def summary(self) -> dict:
        """The headline factors: DNTK vs full NTK and vs JL only, for each phase grouping."""
        out = {}
        groups = {"build": ("build",), "build+one_time": ("build", "one_time"), "predict": ("predict",),
                  "kernel_only": None}
        for name, phases in groups.items():
            for vs in ("full_ntk", "jl"):
                if phases is None:
                    a = sum(r.macs for r in self.rows if r.pipeline == vs and r.phase == "build" and r.stage in ("kernel", "krr"))
                    b = sum(r.macs for r in self.rows if r.pipeline == "dntk" and r.phase == "build" and r.stage in ("kernel", "krr"))
                    out[f"{name}_vs_{vs}"] = a / b
                else:
                    out[f"{name}_vs_{vs}"] = self.reduction("dntk", vs, phases)
        out["memory_vs_full_ntk"] = self.reduction("dntk", "full_ntk", ("build",), "memory")
        out["memory_vs_jl"] = self.reduction("dntk", "jl", ("build",), "memory")
        out["jacobians_vs_full"] = self.sizes.N / self.sizes.N_d
        return out

    # ------------------------------------------------------------------------- output
    def to_dict(self) -> dict:
        return {"sizes": {**asdict(self.sizes), "N_d": self.sizes.N_d, "layers": len(self.sizes.layers)},
                "unit_costs": None if self.unit is None else asdict(self.unit),
                "rows": [asdict(r) for r in self.rows],
                "totals": {pl: {ph: self.total(pl, (ph,)) for ph in PHASES} for pl in PIPELINES},
                "summary": self.summary(), "notes": list(self.notes)}

    def table(self, stages: bool = True) -> str:
        """A plain-text table: per-stage rows (optional), then totals and reduction factors."""
        s = self.sizes
        lines = [f"Cost ledger (appendix §7): N={s.N}, N_d={s.N_d} (ipc {s.ipc}), m={s.m}, C={s.C}, P={s.P:,}, "
                 f"F={_fmt(s.F)} MAC, k={s.k} ({s.projector}), N*={s.N_test}, I={s.I}",
                 "counts in multiply-adds; storage = bytes of a stage's result, working = transient streamed buffer; "
                 "seconds: measured | modelled from measured unit costs"]
        hdr = (f"{'pipeline':<14}{'phase':<10}{'stage':<12}{'MACs':>10}{'storage':>10}{'working':>10}"
               f"{'Jacobians':>11}{'seconds':>11}  source")
        if stages:
            lines += ["", hdr, "-" * len(hdr)]
            for r in self.rows:
                lines.append(f"{PIPELINE_NAMES[r.pipeline]:<14}{r.phase:<10}{r.stage:<12}{_fmt(r.macs):>10}"
                             f"{_fmt_bytes(r.memory):>10}{_fmt_bytes(r.working) if r.working else '':>10}"
                             f"{r.jacobians:>11,}{_fmt_s(r.seconds):>11}  {r.source}")
        lines += ["", f"{'pipeline':<14}{'build MACs':>12}{'+one-time':>12}{'predict':>12}{'storage':>10}"
                      f"{'Jacobians':>11}{'build s':>10}{'vs full':>10}{'vs JL':>9}"]
        for pl in PIPELINES:
            b, o, p = self.total(pl, ("build",)), self.total(pl, ("build", "one_time")), self.total(pl, ("predict",))
            lines.append(f"{PIPELINE_NAMES[pl]:<14}{_fmt(b['macs']):>12}{_fmt(o['macs']):>12}{_fmt(p['macs']):>12}"
                         f"{_fmt_bytes(b['memory']):>10}{b['jacobians']:>11,}{_fmt_s(b['seconds']):>10}"
                         f"{self.reduction(pl, 'full_ntk'):>9.3g}×{self.reduction(pl, 'jl'):>8.3g}×")
        sm = self.summary()
        lines += ["", "DNTK reduction factors (MACs):",
                  f"  build (kernel model, one-time excluded): {sm['build_vs_full_ntk']:.3g}× vs full NTK, "
                  f"{sm['build_vs_jl']:.3g}× vs JL only  (10^{math.log10(sm['build_vs_full_ntk']):.1f}, "
                  f"10^{math.log10(sm['build_vs_jl']):.1f})",
                  f"  build + one-time (WMDD, Algorithm 1):    {sm['build+one_time_vs_full_ntk']:.3g}× vs full NTK, "
                  f"{sm['build+one_time_vs_jl']:.3g}× vs JL only",
                  f"  kernel + solve only:                     {sm['kernel_only_vs_full_ntk']:.3g}× vs full NTK, "
                  f"{sm['kernel_only_vs_jl']:.3g}× vs JL only",
                  f"  per prediction:                          {sm['predict_vs_full_ntk']:.3g}× vs full NTK, "
                  f"{sm['predict_vs_jl']:.3g}× vs JL only",
                  f"  peak storage (build):                    {sm['memory_vs_full_ntk']:.3g}× vs full NTK, "
                  f"{sm['memory_vs_jl']:.3g}× vs JL only",
                  f"  Jacobian evaluations: {sm['jacobians_vs_full']:.3g}× fewer (N / N_d)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(x: float) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    if -2 <= e < 4:
        return f"{x:.4g}"
    return f"{x / 10 ** e:.2f}e{e}"


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(b) < 1000:
            return f"{b:.3g}{unit}"
        b /= 1000.0
    return f"{b:.3g}EB"


def _fmt_s(x) -> str:
    if x is None:
        return "—"
    if x < 1e-3:
        return f"{x:.1e}"
    if x < 1e5:
        return f"{x:.3g}"
    return f"{x:.2e}"


# ============================================================================ measuring the model
def model_stats(model, input_shape) -> dict:
    """P (trainable), F (forward MACs of one input), the weights ``(T, d_in, d_out)`` of Linear/Conv2d
    layers (``T`` output positions) and ``p_vec`` (parameters in 1-D tensors).

    F is ``torch.utils.flop_counter.FlopCounterMode``'s FLOP count of one forward pass / 2.
    """
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    layers, handles = [], []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            T = out.shape[-1] * out.shape[-2]
            d_in = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            layers.append((int(T), int(d_in), int(mod.out_channels)))
        else:
            layers.append((1, int(mod.in_features), int(mod.out_features)))

    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and any(p.requires_grad for p in mod.parameters(recurse=False)):
            handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    p0 = next(model.parameters())
    x = torch.zeros((1, *input_shape), dtype=p0.dtype, device=p0.device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    p_vec = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dim() <= 1)
    return {"P": int(P), "F": fc.get_total_flops() / 2.0, "layers": tuple(layers), "p_vec": int(p_vec)}


def measure_unit_costs(model, inputs, projector=None, repeats: int = 3, device="cpu") -> UnitCosts:
    """Time the unit costs on this machine (best of `repeats`, after warm-ups): see :class:`UnitCosts`.

    inputs: a small batch ``(n, C_in, H, W)``; projector: the pipeline's projector (for featurize_s;
    ``None`` times unprojected per-class gradients).
    """
    import torch

    from ._common import eval_mode, on_device

    with on_device(model, device), eval_mode(model):
        return _measure_unit_costs(model, torch.as_tensor(inputs).to(device), projector, repeats, device)


def _measure_unit_costs(model, X, projector, repeats: int, device) -> UnitCosts:
    import torch

    from . import tangent

    n = len(X)

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn):
        ts = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    params = [p for p in model.parameters() if p.requires_grad]

    def floor():  # one forward + one batched backward for all C classes (one-hot cotangents)
        out = model(X)
        C = out.shape[1]
        eye = torch.eye(C, dtype=out.dtype, device=out.device)[:, None, :].expand(C, *out.shape)
        try:
            torch.autograd.grad(out, params, grad_outputs=eye, is_grads_batched=True)
        except RuntimeError:  # a layer without batching rules: C plain backward passes
            out = model(X)
            for c in range(C):
                torch.autograd.grad(out[:, c].sum(), params, retain_graph=c < C - 1)

    with torch.no_grad():
        model(X)  # warm-ups: first calls pay for lazy initialisation (vmap rules, tile generation)
    floor()
    tangent.class_gradients(model, X[:2], projector=projector, device=device)
    t_fwd = timed(lambda: torch.no_grad()(model)(X)) / n
    t_jac = timed(floor) / n
    t_feat = timed(lambda: tangent.class_gradients(model, X, projector=projector, device=device)) / n
    A = torch.randn(512, 512, dtype=torch.float64, device=device)
    t_mm = timed(lambda: A @ A)
    return UnitCosts(jacobian_s=t_jac, featurize_s=max(t_feat, t_jac), forward_s=t_fwd, mac_rate=512 ** 3 / t_mm,
                     device=str(device), note=f"measured on {n} inputs, best of {repeats}")


def from_config(cfg, model=None, unit: Optional[UnitCosts] = None, measured: Optional[dict] = None,
                n_full: Optional[int] = None, n_test: Optional[int] = None) -> Ledger:
    """The ledger for a :class:`dntk.pipeline.Config`'s sizes (builds the untrained model to count P and F).

    N and N* come from ``cfg.ledger.n_full``/the dataset's published split sizes unless given.
    """
    from . import models

    name = cfg.data.name
    base = name.split(":", 1)[0]
    in_ch, size, C = _data_shape(cfg)
    if model is None:
        extra = {"input_shape": (in_ch, size, size)} if cfg.teacher.arch == "mlp" else {}
        model = models.build(cfg.teacher.arch, C, in_channels=in_ch, width=cfg.teacher.width, **extra)
    st = model_stats(model, (in_ch, size, size))
    N = n_full or cfg.ledger.n_full or DATASET_SIZES.get(base, (None, None))[0]
    Nt = n_test or cfg.data.test_limit or DATASET_SIZES.get(base, (None, None))[1]
    if N is None or Nt is None:
        raise ValueError(f"no known size for dataset {name!r}; set ledger.n_full and data.test_limit")
    if cfg.data.train_per_class and not (n_full or cfg.ledger.n_full):
        N = min(N, cfg.data.train_per_class * C)
    ipc = cfg.distill.ipc if cfg.distill.method != "none" else max(1, N // C)
    m = cfg.gradient_distillation.budget or ipc
    if cfg.gradient_distillation.method == "none":
        m = ipc
    s = Sizes(N=int(N), C=C, P=st["P"], F=float(cfg.ledger.forward_flops or st["F"]), k=cfg.projection.k,
              ipc=ipc, m=min(m, ipc), N_test=int(Nt), I=int(cfg.ledger.wmdd_iterations or cfg.distill.iterations or 1),
              image_numel=in_ch * size * size, projector=cfg.projection.kind,
              layers=st["layers"] if cfg.projection.kind == "kronecker" else (), p_vec=st["p_vec"],
              n_clusters=cfg.gradient_distillation.n_clusters, batch=cfg.projection.batch_size or 64)
    led = build_ledger(s, unit, measured)
    led.notes.append(f"F counted with torch.utils.flop_counter on {cfg.teacher.arch} at {in_ch}×{size}×{size}"
                     if not cfg.ledger.forward_flops else "F given in the config (ledger.forward_flops)")
    return led


def _data_shape(cfg):
    """(in_channels, image side, classes) of the config's dataset without reading it where possible."""
    from . import data

    name = cfg.data.name
    base = name.split(":", 1)[0]
    if base == "digits":
        return 1, int(cfg.data.resize or 8), 10
    if base in ("imagenette", "imagewoof", "cifar10"):
        return 3, int(cfg.data.resize or data.DEFAULT_SIZES[base]), 10
    ds = data.load(name, "train", root=cfg.data.root, resize=cfg.data.resize)
    return int(ds.in_channels), int(ds.image_size[0] if isinstance(ds.image_size, (tuple, list)) else ds.image_size), int(ds.num_classes)
