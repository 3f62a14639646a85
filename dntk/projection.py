"""Johnson–Lindenstrauss projectors for tangent features: ``G̃ = G R`` with ``R ∈ R^{P×k}`` (appendix §4.2).

Every projector is unbiased for inner products, ``E[⟨Rᵀa, Rᵀb⟩] = ⟨a, b⟩`` (appendix eq. (eq-jl-unbiased)),
and reproducible from its seed: each piece of ``R`` is generated from a counter-derived seed (the seed, the
parameter tensor and the position inside it), so the output does not depend on batch size, chunking, the
order in which layers are visited or the device, and the whole ``P×k`` matrix is never held when ``P`` is
large (generated pieces are cached across calls while they fit ``cache_bytes``).

Kinds (``make(kind, dim, seed, **options)``), one :class:`Projector` subclass each:

``orthonormal``  the paper's ``√(P/k)·Q``, ``Q`` the Q factor of a Gaussian ``P×k`` (small ``P`` only).
``gaussian``     entries ``N(0, 1/k)``, generated in tiles of rows.
``rademacher``   entries ``±1/√k``, generated in tiles of rows.
``sparse``       the sparse JL transform of Kane and Nelson (block construction): every input coordinate
                 has exactly ``s`` nonzeros ``±1/√s``, one in each of ``s`` equal slices of the ``k`` outputs,
                 placed and signed by a counter-based hash of ``(seed, tensor, coordinate, slice)``. No
                 coordinate is ever dropped, so gradients concentrated on a few parameters are projected at
                 least as well as by a dense Gaussian in expectation (its inner-product variance is the
                 Gaussian's minus ``2 Σ_j a_j² b_j² / k``: clearly smaller when a few coordinates dominate,
                 about equal when the energy is spread; single draws scatter either way). Cost ``s``
                 multiply–adds per coordinate.
``srht``         ``√(P'/k)·S H D`` on the zero-padded length ``P' = 2^⌈log₂P⌉``: random signs ``D``, the
                 normalised Walsh–Hadamard transform ``H`` (``O(P' log P')``), ``k`` sampled coordinates ``S``.
``kronecker``    per weight tensor ``W`` (``d_out × d_in``, conv kernels flattened) the factored sketch
                 ``(R_out ⊗ R_in)ᵀ vec(W) = vec(R_outᵀ W R_in)`` (appendix eq. (eq-kronecker-projection)),
                 ``k = k_out·k_in``, with factors ``E[R Rᵀ] = I``: by default *orthogonal* (``√(d/k_•)·Q``,
                 Haar ``Q``), or Gaussian (``factors="gaussian"``); vectors (biases, norm affines) use a dense
                 ``N(0, 1/k)`` block. The per-sample layer gradient is never formed.

The interface (in the style of TRAK's projectors): a projector binds to a parameter layout (the trainable
tensors of a model, or a plain width ``P``) on first use; :meth:`Projector.project` maps ``(n, P)`` to
``(n, k)``; :meth:`Projector.accumulator` returns an :class:`Accumulator` that receives one batch of
per-sample layer gradients — as dense blocks or as the two factors ``Σ_t δ_t a_tᵀ`` of a linear or
convolutional layer — and sums their projections. :func:`dntk.tangent.class_gradients` uses nothing else.
:func:`error_curve` measures the kernel error of each kind against exact gradients on a pilot batch.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ._common import resolve_device

__all__ = ["make", "KINDS", "DEFAULT_SPARSE_S", "Projector", "Accumulator", "fwht", "error_curve", "ErrorCurve",
           "recommend_dim"]

KINDS = ("orthonormal", "gaussian", "rademacher", "sparse", "srht", "kronecker")
_KIND_ID = {k: i + 1 for i, k in enumerate(KINDS)}
_TILE_ELEMS = 1 << 22  # entries per generated dense tile (16 MiB in float32)
_REGISTRY: dict[str, type] = {}

#: Default number of nonzeros per input coordinate of the ``sparse`` kind. The kernel's mean-square error
#: does not depend on ``s`` (see :class:`SparseProjector`); ``s = 1`` (a CountSketch) is the cheapest,
#: larger ``s`` tightens the tail of the worst-case distortion at ``s`` multiply–adds per coordinate.
DEFAULT_SPARSE_S = 1


@dataclass(frozen=True)
class _Block:
    shape: tuple
    offset: int
    size: int


def _layout(spec) -> list[_Block]:
    """Normalise a layout: an int ``P``, a list of shapes, or a list of objects with ``.shape``."""
    if isinstance(spec, (int, np.integer)):
        spec = [(int(spec),)]
    blocks, off = [], 0
    for item in spec:
        shape = tuple(int(s) for s in (item.shape if hasattr(item, "shape") else item))
        if any(s < 0 for s in shape):
            raise ValueError(f"bad parameter shape {shape} in the layout.")
        n = int(np.prod(shape)) if shape else 1
        blocks.append(_Block(shape, off, n))
        off += n
    if off == 0:
        raise ValueError("the layout has no parameters (P = 0).")
    return blocks


def _seed_words(seed: int, *ids: int) -> np.ndarray:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, *[int(i) for i in ids]]).generate_state(2, np.uint32)


def _generator(seed: int, *ids: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``(seed, *ids)`` — the counter-based stream of one tile."""
    state = _seed_words(seed, *ids)
    g = torch.Generator()
    g.manual_seed(int(state[0]) | (int(state[1]) << 32) & 0x7FFFFFFFFFFFFFFF)
    return g


_SIGN_LUT = torch.tensor([[1.0 if (b >> i) & 1 else -1.0 for i in range(8)] for b in range(256)], dtype=torch.float32)


def _random_signs(n: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """``n`` independent ``±scale`` (float32) from random bytes, 8 signs per byte."""
    nbytes = (n + 7) // 8
    b = torch.empty(nbytes, dtype=torch.uint8).random_(0, 256, generator=g)
    lut = _SIGN_LUT if scale == 1.0 else _SIGN_LUT * scale
    return torch.nn.functional.embedding(b.long(), lut).reshape(-1)[:n]


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x·c mod 2³²`` for int64 ``x`` and ``c`` in ``[0, 2³²)``: the low 32 bits of the int64 product, which
    two's-complement wrap-around leaves exact on every device (checked against pure Python in the tests)."""
    return (x * c) & 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (Wellons' ``lowbias32``) on int64 values in ``[0, 2³²)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (length ``2^m``): ``x H``.

    Uses the Sylvester factorisation ``H_{2^m} = H_{2^{a}} ⊗ H_{2^{b}} ⊗ …`` with small dense factors
    applied by matrix products along each axis: ``O(L log L)``-like work with few memory passes.
    """
    L = x.shape[-1]
    m = L.bit_length() - 1
    if L != 1 << m:
        raise ValueError(f"fwht needs a power-of-two length, got {L}.")
    lead = x.shape[:-1]
    n = int(np.prod(lead)) if lead else 1
    if m == 0:
        return x.clone()
    facs, left = [], m  # factor sizes of at most 2^5 (32×32 blocks balance FLOPs against memory passes)
    while left > 0:
        f = min(5, left)
        facs.append(f)
        left -= f
    y = x.reshape(n, L)
    before = 1
    for f in facs:
        s = 1 << f
        after = L // (before * s)
        H = _hadamard(s, x.dtype, x.device)
        if after >= 64:  # one large product per leading index
            y = torch.matmul(H, y.reshape(n * before, s, after))
        else:  # short trailing axis: transpose so the product is one tall GEMM
            y = (y.reshape(n * before, s, after).transpose(1, 2) @ H).transpose(1, 2).contiguous()
        before *= s
    return y.reshape(*lead, L)


_H_CACHE: dict = {}


def _hadamard(s, dtype, device):
    key = (s, dtype, str(device))
    if key not in _H_CACHE:
        H = torch.ones(1, 1, dtype=torch.float64)
        while H.shape[0] < s:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        _H_CACHE[key] = H.to(dtype=dtype, device=device)
    return _H_CACHE[key]


def _orthonormal_columns(A: torch.Tensor) -> torch.Tensor:
    """Haar-distributed orthonormal columns from a Gaussian ``A`` (tall): ``A L⁻ᵀ`` with ``L = chol(AᵀA)``
    (Gram–Schmidt by Cholesky: the Q of ``A = QR`` with positive ``diag(R)``, via BLAS-3 products)."""
    n, k = A.shape
    if 2 * k > n:  # nearly square: AᵀA is too ill-conditioned for Cholesky; Householder QR
        Q, R = torch.linalg.qr(A)
        return Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q.dtype)
    for _ in range(2):  # CholeskyQR2: the second pass restores orthogonality to round-off
        L = torch.linalg.cholesky(A.T @ A)
        A = torch.linalg.solve_triangular(L, A.T, upper=False).T
    return A


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}.")
    return int(v)


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------
def _register(cls):
    _REGISTRY[cls.kind] = cls
    return cls


def make(kind: str, dim: int, seed: int = 0, **options) -> Projector:
    """A JL projector of kind ``kind`` to ``dim = k`` dimensions (appendix §4.2); see the module docstring.

    Parameters
    ----------
    kind : one of :data:`KINDS`.
    dim : the projection dimension ``k`` (positive integer).
    seed : non-negative integer; the same ``(kind, dim, seed, options)`` give the same ``R`` for the same
        layout, on any device and for any batching.
    **options : ``cache_bytes`` (every kind: keep generated pieces of ``R`` across calls up to this many
        bytes, default 256 MiB); ``tile_rows`` (``gaussian``, ``rademacher``, ``kronecker``: rows per
        generated tile, part of the projector's identity); ``s`` (``sparse``: nonzeros per input
        coordinate, default :data:`DEFAULT_SPARSE_S`, at most ``k``); ``max_entries`` (``orthonormal``:
        largest ``P·k`` allowed, default ``2**25``); ``k_out``/``k_in`` and ``factors`` (``kronecker``:
        the factorisation ``k = k_out·k_in``, default the most balanced one, and ``"orthogonal"``
        (default) or ``"gaussian"`` factors).

    Returns
    -------
    Projector
        An instance of the kind's subclass, not yet bound to a layout.
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown projector kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim (the projection dimension k) must be a positive integer, got {dim!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    cls = _REGISTRY[kind]
    allowed = {"cache_bytes"} | set(cls.options)
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for kind {kind!r}; allowed: {sorted(allowed)}.")
    return cls(int(dim), int(seed), **options)


# ----------------------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------------------
class Projector(abc.ABC):
    """A JL map ``x ↦ x R`` with ``R ∈ R^{P×k}``; one subclass per kind, created by :func:`make`.

    Attributes (every kind): ``kind``, ``dim`` (``k``), ``seed``, ``P`` and ``blocks`` (``None`` until
    bound), ``device`` (where generated pieces of ``R`` live).
    """

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, seed: int, cache_bytes: int = 256 << 20):
        self.dim, self.seed = dim, seed
        self.cache_bytes = _check_int("cache_bytes", cache_bytes, 0)
        self.blocks = None
        self.P = None
        self.device = torch.device("cpu")
        self._cache: dict = {}
        self._cache_used = 0
        self._last: dict = {}

    def __repr__(self):
        bound = f", P={self.P}" if self.P is not None else ""
        return f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim}, seed={self.seed}{bound})"

    # ------------------------------------------------------------------ binding and lifecycle
    def bind(self, layout) -> Projector:
        """Bind to a layout: an int ``P``, a list of shapes, or ``dntk.tangent.param_layout(model)``."""
        blocks = _layout(layout)
        if self.blocks is not None:
            if [b.shape for b in blocks] != [b.shape for b in self.blocks]:
                P = sum(b.size for b in blocks)
                raise ValueError(
                    f"this projector is bound to a layout with P = {self.P} in {len(self.blocks)} tensor(s); got P = {P} "
                    f"in {len(blocks)} tensor(s). A projector is tied to one model size: make a new one "
                    "(the same kind, dim and seed give the same R for the same layout)."
                )
            return self
        self._check_layout(blocks, sum(b.size for b in blocks))
        self.blocks, self.P = blocks, sum(b.size for b in blocks)
        return self

    def _check_layout(self, blocks, P):
        """Kind-specific checks of a layout before binding (raise ``ValueError``)."""

    def identity(self) -> dict:
        """What determines ``R`` for a given layout: ``kind``, ``dim``, ``seed`` and the options that change
        it (e.g. ``s`` for ``sparse``, ``tile_rows`` for the tiled dense kinds). Equal identities and
        layouts give equal ``R``; use it to fingerprint stored features."""
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed, **self._identity_options()}

    def _identity_options(self) -> dict:
        return {}

    def _require_bound(self):
        if self.blocks is None:
            raise ValueError("the projector is not bound yet; call bind(P) or project(x) first.")

    def prepare(self, device=None) -> Projector:
        """Place generated state on ``device`` (called at the start of a featurisation run)."""
        dev = torch.device("cpu") if device is None else resolve_device(device)
        if dev != self.device:
            self._cache, self._cache_used, self._last = {}, 0, {}
        self.device = dev
        return self

    def release(self):
        """Drop the per-run piece cache (pieces kept within ``cache_bytes`` stay)."""
        self._last = {}

    def _cached(self, key, build):
        """A generated piece of ``R``: from the cache, or built and kept (within ``cache_bytes``, else only
        until the next piece is built)."""
        if key in self._cache:
            return self._cache[key]
        if key in self._last:
            return self._last[key]
        val = build()
        nbytes = sum(t.numel() * t.element_size() for t in (val if isinstance(val, tuple) else (val,))
                     if isinstance(t, torch.Tensor) and t.layout == torch.strided)
        nbytes += sum(t.values().numel() * 16 for t in (val if isinstance(val, tuple) else (val,))
                      if isinstance(t, torch.Tensor) and t.layout != torch.strided)
        if self._cache_used + nbytes <= self.cache_bytes:
            self._cache[key] = val
            self._cache_used += nbytes
        else:
            self._last = {key: val}
        return val

    # ------------------------------------------------------------------ what tangent.class_gradients calls
    @abc.abstractmethod
    def accumulator(self, n: int, C: int, device, max_bytes: int) -> Accumulator:
        """A fresh :class:`Accumulator` for ``n`` samples × ``C`` classes (the projector must be bound)."""

    def bytes_per_sample(self, C: int) -> int:
        """Working bytes per sample held by an accumulator (sizes the default batch)."""
        return 2 * 4 * C * self.dim

    def samples_per_accumulator(self, C: int, max_bytes: int) -> int | None:
        """Largest number of samples one accumulator may hold within ``max_bytes`` (``None``: no limit)."""
        return None

    # ------------------------------------------------------------------ generic entry points
    def project(self, x) -> torch.Tensor:
        """``x R`` for ``x`` ``(n, P)`` (torch or numpy) → ``(n, k)`` float32, computed block by block.

        Raises ``ValueError`` for rows with NaN or inf (a projection would spread them over every output).
        """
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.asarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or numpy array of shape (n, P), got {type(x).__name__}.")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (n, P), got {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got dtype {x.dtype}.")
        bad = ~torch.isfinite(x).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(f"x has NaN or inf in {int(bad.sum())} row(s) (first: {rows}); "
                             "clean the gradients (a diverged model?) before projecting.")
        if self.blocks is None:
            self.bind(int(x.shape[1]))
        if x.shape[1] != self.P:
            raise ValueError(f"x has width {x.shape[1]} but the projector is bound to P = {self.P}.")
        x = x.to(self.device, torch.float32)
        n, k = x.shape[0], self.dim
        out = torch.empty(n, k, device=self.device)
        step = self.samples_per_accumulator(1, 256 << 20) or n
        step = max(1, min(n, step))
        for s in range(0, n, step):
            e = min(n, s + step)
            acc = self.accumulator(e - s, 1, self.device, 256 << 20)
            for b, blk in enumerate(self.blocks):
                acc.dense(b, x[s:e, blk.offset : blk.offset + blk.size].unsqueeze(1))
            out[s:e] = acc.result().reshape(e - s, k)
        return out

    def matrix(self) -> torch.Tensor:
        """The explicit ``R`` ``(P, k)`` (small ``P`` only; for tests and illustrations)."""
        self._require_bound()
        if self.P * self.dim > (1 << 26):
            raise ValueError(f"matrix() would hold P·k = {self.P * self.dim:,} entries; it is for small P only.")
        return self.project(torch.eye(self.P, device=self.device))


class Accumulator(abc.ABC):
    """Sums the projections of one batch's per-sample, per-class parameter gradients, block by block.

    A block's gradient arrives either dense, :meth:`dense` ``G`` ``(n, C, size)``, or as the two factors of
    a linear/convolutional weight, :meth:`outer` ``D`` ``(n, C, d_out, T)`` and an input factor ``src``
    whose gradient is ``Σ_t D[..., t] a_tᵀ``. ``src`` offers ``d_in``, ``T``, ``unfolded()`` →
    ``(n, d_in, T)`` and ``project_in(R_in (d_in, r))`` → ``(n, r, T)`` (``a_tᵀ R_in`` for every position).
    :meth:`result` returns ``(n, C, k)``. Every gradient contribution must arrive exactly once.
    """

    dtype = torch.float32

    def __init__(self, proj: Projector, n: int, C: int, device, max_bytes: int):
        self.proj, self.n, self.C, self.max_bytes = proj, n, C, int(max_bytes)
        self.acc = torch.zeros(n, C, proj.dim, device=device)

    @abc.abstractmethod
    def dense(self, b: int, G: torch.Tensor) -> None:
        """Add the projection of block ``b``'s gradient ``G`` ``(n, C, size)``."""

    def outer(self, b: int, D: torch.Tensor, src) -> None:
        """Add the projection of block ``b``'s gradient ``Σ_t D[:, :, :, t] a_tᵀ`` (formed in channel chunks)."""
        n, C, d_out, T = D.shape
        A = src.unfolded()  # (n, d_in, T)
        oc = int(max(1, min(d_out, self.max_bytes // (4 * 4 * max(1, n * C * src.d_in)))))
        for o0 in range(0, d_out, oc):
            o1 = min(d_out, o0 + oc)
            G = torch.bmm(D[:, :, o0:o1].reshape(n, C * (o1 - o0), T), A.transpose(1, 2))
            self._dense_rows(b, o0 * src.d_in, G.reshape(n, C, -1))

    def _dense_rows(self, b, start, G):
        """Rows ``[start, start + G.shape[2])`` of block ``b`` (for kinds whose ``R`` splits by rows)."""
        raise NotImplementedError

    def result(self) -> torch.Tensor:
        """The accumulated ``(n, C, k)`` projections."""
        return self.acc


# ----------------------------------------------------------------------------------------------------
# dense row-block kinds: gaussian, rademacher, orthonormal
# ----------------------------------------------------------------------------------------------------
class _DenseRowsProjector(Projector):
    """Kinds whose ``R`` is a dense matrix read by rows: ``rows(b, start, stop)`` → ``(stop-start, k)``."""

    def __init__(self, dim, seed, tile_rows=None, cache_bytes=256 << 20):
        super().__init__(dim, seed, cache_bytes)
        self.tile_rows = max(1, _TILE_ELEMS // dim) if tile_rows is None else _check_int("tile_rows", tile_rows, 1)

    @abc.abstractmethod
    def _sample_tile(self, rows: int, g: torch.Generator) -> torch.Tensor:
        """``rows × k`` float32 entries of ``R`` from the tile's generator."""

    def _identity_options(self):
        return {"tile_rows": self.tile_rows}

    def _tile(self, b: int, t: int) -> torch.Tensor:
        blk = self.blocks[b]
        rows = min(self.tile_rows, blk.size - t * self.tile_rows)
        return self._cached((b, t), lambda: self._sample_tile(rows, _generator(self.seed, _KIND_ID[self.kind], b, t, 0)).to(self.device))

    def rows(self, b: int, start: int, stop: int) -> torch.Tensor:
        """Dense rows ``[start, stop)`` of block ``b`` of ``R``, shape ``(stop - start, k)``."""
        tr = self.tile_rows
        parts = []
        for t in range(start // tr, (stop - 1) // tr + 1):
            T = self._tile(b, t)
            lo, hi = max(start - t * tr, 0), min(stop - t * tr, T.shape[0])
            parts.append(T[lo:hi])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def rows_matmul(self, b: int, start: int, G: torch.Tensor) -> torch.Tensor:
        """``G @ R[block b, rows start:start + r]`` for ``G`` ``(n, r)`` → ``(n, k)``, tile by tile."""
        stop = start + G.shape[1]
        tr = self.tile_rows
        out = G.new_zeros(G.shape[0], self.dim)
        for t in range(start // tr, (stop - 1) // tr + 1):
            T = self._tile(b, t)
            lo, hi = max(start - t * tr, 0), min(stop - t * tr, T.shape[0])
            g0 = t * tr + lo - start
            out.addmm_(G[:, g0 : g0 + hi - lo], T[lo:hi])
        return out

    def accumulator(self, n, C, device, max_bytes):
        self._require_bound()
        return _DenseRowsAccumulator(self, n, C, device, max_bytes)


class _DenseRowsAccumulator(Accumulator):
    """``acc += G_block R_block`` by row chunks. For a layer with few positions (``T < C``) the input side
    is contracted with ``R`` first and shared by all classes (``T·P_l·k`` instead of ``C·P_l·k``)."""

    def dense(self, b, G):
        n, C = G.shape[:2]
        G = G.reshape(n * C, -1)
        step = max(1, self.max_bytes // (8 * max(1, n * C + self.proj.dim)))
        for s in range(0, G.shape[1], step):
            self.acc += self.proj.rows_matmul(b, s, G[:, s : s + step]).reshape(self.acc.shape)

    def _dense_rows(self, b, start, G):
        n, C = G.shape[:2]
        self.acc += self.proj.rows_matmul(b, start, G.reshape(n * C, -1)).reshape(self.acc.shape)

    def outer(self, b, D, src):
        n, C, d_out, T = D.shape
        d_in, k = src.d_in, self.proj.dim
        if (T * d_in * k + C * T * k) >= (C * T * d_in + C * d_in * k):
            return super().outer(b, D, src)
        per_o = 4 * max(n * T * k, d_in * k)
        oc = int(max(1, min(d_out, self.max_bytes // (4 * per_o))))
        At = src.unfolded().transpose(1, 2).reshape(n * T, d_in)
        for o0 in range(0, d_out, oc):
            o1 = min(d_out, o0 + oc)
            n_o = o1 - o0
            R = self.proj.rows(b, o0 * d_in, o1 * d_in).reshape(n_o, d_in, k)
            M = (At @ R.permute(1, 0, 2).reshape(d_in, n_o * k)).reshape(n, T * n_o, k)  # rows (t, o)
            self.acc += torch.bmm(D[:, :, o0:o1].permute(0, 1, 3, 2).reshape(n, C, T * n_o), M)


@_register
class GaussianProjector(_DenseRowsProjector):
    """Entries ``N(0, 1/k)``, generated tile by tile (appendix §4.2)."""

    kind = "gaussian"
    options = ("tile_rows",)

    def _sample_tile(self, rows, g):
        return torch.empty(rows, self.dim).normal_(0.0, 1.0 / math.sqrt(self.dim), generator=g)


@_register
class RademacherProjector(_DenseRowsProjector):
    """Entries ``±1/√k``, generated tile by tile (appendix §4.2)."""

    kind = "rademacher"
    options = ("tile_rows",)

    def _sample_tile(self, rows, g):
        return _random_signs(rows * self.dim, g, 1.0 / math.sqrt(self.dim)).reshape(rows, self.dim)


@_register
class OrthonormalProjector(_DenseRowsProjector):
    """The paper's ``R = √(P/k)·Q``, ``Q`` Haar-distributed orthonormal columns (appendix §4.2); small ``P``."""

    kind = "orthonormal"
    options = ("max_entries",)

    def __init__(self, dim, seed, max_entries=1 << 25, cache_bytes=256 << 20):
        super().__init__(dim, seed, cache_bytes=cache_bytes)
        self.max_entries = _check_int("max_entries", max_entries, 1)

    def _check_layout(self, blocks, P):
        if self.dim > P:
            raise ValueError(f"orthonormal projection needs k <= P; got k = {self.dim} > P = {P}. Use 'gaussian' instead.")
        if P * self.dim > self.max_entries:
            raise ValueError(
                f"orthonormal holds the whole P×k matrix (P·k = {P * self.dim:,} > max_entries = {self.max_entries:,}); "
                "use 'gaussian', 'sparse', 'srht' or 'kronecker' for large models, or raise max_entries."
            )

    def _sample_tile(self, rows, g):  # pragma: no cover - rows() is overridden
        raise NotImplementedError

    def _identity_options(self):
        return {}

    def _q(self):
        if ("Q",) not in self._cache:  # always kept: its size is bounded by max_entries
            A = torch.randn(self.P, self.dim, generator=_generator(self.seed, _KIND_ID["orthonormal"], 0, 0, 0),
                            dtype=torch.float64)
            Q = _orthonormal_columns(A)
            self._cache[("Q",)] = (Q * math.sqrt(self.P / self.dim)).to(torch.float32).to(self.device)
        return self._cache[("Q",)]

    def rows(self, b, start, stop):
        off = self.blocks[b].offset
        return self._q()[off + start : off + stop]

    def rows_matmul(self, b, start, G):
        return G @ self.rows(b, start, start + G.shape[1])


# ----------------------------------------------------------------------------------------------------
# sparse JL transform
# ----------------------------------------------------------------------------------------------------
@_register
class SparseProjector(Projector):
    """Sparse JL transform (Kane–Nelson block construction; appendix §4.2): exactly ``s`` nonzeros per row.

    Row ``j`` of block ``b`` of ``R`` has one entry ``±1/√s`` in each slice ``[i·k/s, (i+1)·k/s)`` of the
    outputs, ``i = 0…s−1``, at the position and with the sign given by a 32-bit hash of ``j`` keyed by
    ``(seed, b, i)``: any row range is generated on its own, on any device, with the same numbers.
    ``E[R Rᵀ] = I``; the variance of a projected inner product is
    ``(‖a‖²‖b‖² + ⟨a,b⟩² − 2Σ_j a_j²b_j²)/k``, whatever ``s`` (``s`` sharpens the tails, and costs ``s``
    multiply–adds per coordinate). Default ``s`` = :data:`DEFAULT_SPARSE_S`.
    """

    kind = "sparse"
    options = ("s", "tile_rows")

    def __init__(self, dim, seed, s=None, tile_rows=None, cache_bytes=256 << 20):
        super().__init__(dim, seed, cache_bytes)
        self.s = min(DEFAULT_SPARSE_S, dim) if s is None else _check_int("s", s, 1)
        if self.s > dim:
            raise ValueError(f"sparse needs s <= k (one nonzero per slice of the k outputs); got s = {self.s} > k = {dim}.")
        if dim >= 1 << 24:
            raise ValueError(f"sparse supports k < 2^24, got k = {dim}.")
        self.tile_rows = (1 << 19) // self.s if tile_rows is None else _check_int("tile_rows", tile_rows, 1)
        self._bounds = [i * dim // self.s for i in range(self.s + 1)]

    def _identity_options(self):
        return {"s": self.s}

    def _keys(self, b):
        return self._cached(("keys", b), lambda: torch.tensor(
            [int(_seed_words(self.seed, _KIND_ID["sparse"], b, i)[0]) for i in range(self.s)], dtype=torch.int64))

    def entries(self, b: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Nonzeros of rows ``[start, stop)`` of block ``b``: output columns ``(r, s)`` int64 and values ``(r, s)``."""
        j = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        keys = self._keys(b).to(self.device)
        h = _hash32((j[:, None] + keys[None, :]) & 0xFFFFFFFF)  # (r, s)
        lo = torch.tensor(self._bounds[:-1], dtype=torch.int64, device=self.device)
        width = torch.tensor(self._bounds[1:], dtype=torch.int64, device=self.device) - lo
        col = lo + (((h & 0xFFFFFF) * width) >> 24)
        val = torch.where((h >> 31) == 1, 1.0, -1.0).to(torch.float32) * (1.0 / math.sqrt(self.s))
        return col, val

    def rows_matmul(self, b: int, start: int, G: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """``G @ R[block b, rows start:start + r]`` for ``G`` ``(n, r)`` → ``(n, k)``: for each of the ``s``
        nonzeros of every row, one scatter-add of the signed column of ``G`` into its output (the layout
        of ``G`` is used as it is; no transposed copy). ``owned=True`` lets it scale ``G`` in place."""
        stop = start + G.shape[1]
        out = G.new_zeros(G.shape[0], self.dim)
        for lo in range(start, stop, self.tile_rows):
            hi = min(stop, lo + self.tile_rows)
            col, val = self._cached((b, lo, hi), lambda lo=lo, hi=hi: self.entries(b, lo, hi))
            Gp = G[:, lo - start : hi - start]
            if owned:  # scale in place: by the first signs, then by the ratio of consecutive signs (±1)
                Gp.mul_(val[:, 0])
                for i in range(self.s):
                    if i:
                        Gp.mul_(val[:, i] * val[:, i - 1] * self.s)
                    out.index_add_(1, col[:, i], Gp)
            else:
                for i in range(self.s):
                    out.index_add_(1, col[:, i], Gp * val[:, i])
        return out

    def accumulator(self, n, C, device, max_bytes):
        self._require_bound()
        return _SparseAccumulator(self, n, C, device, max_bytes)


class _SparseAccumulator(Accumulator):
    """Sparse JL: per-sample gradients formed a chunk of rows at a time (within ``max_bytes``) and multiplied
    by the sparse rows of ``R`` for that chunk."""

    def _step(self, nC):
        """Rows per chunk: within the budget, and at most one piece of ``R`` (``tile_rows``) so the formed
        gradient chunk stays cache-sized (large fresh buffers cost more in page faults than they save)."""
        return max(1, min(self.proj.tile_rows, self.max_bytes // (8 * max(1, nC))))

    def dense(self, b, G):
        n, C = G.shape[:2]
        G = G.reshape(n * C, -1)
        step = self._step(n * C)
        for s in range(0, G.shape[1], step):
            self.acc += self.proj.rows_matmul(b, s, G[:, s : s + step]).reshape(self.acc.shape)

    def _dense_rows(self, b, start, G):  # G is a chunk formed by Accumulator.outer: ours to scale
        n, C = G.shape[:2]
        self.acc += self.proj.rows_matmul(b, start, G.reshape(n * C, -1), owned=True).reshape(self.acc.shape)

    def outer(self, b, D, src):
        n, C, d_out, T = D.shape
        d_in, size = src.d_in, d_out * src.d_in
        step = self._step(n * C)
        if step < d_in:
            return super().outer(b, D, src)
        At = src.unfolded().transpose(1, 2)  # (n, T, d_in)
        for r0 in range(0, size, step):
            r1 = min(size, r0 + step)
            o0, o1 = r0 // d_in, -(-r1 // d_in)  # form only the channels this row range covers
            G = torch.bmm(D[:, :, o0:o1].reshape(n, C * (o1 - o0), T), At).reshape(n * C, (o1 - o0) * d_in)
            part = self.proj.rows_matmul(b, r0, G[:, r0 - o0 * d_in : r1 - o0 * d_in], owned=True)
            self.acc += part.reshape(self.acc.shape)


# ----------------------------------------------------------------------------------------------------
# SRHT
# ----------------------------------------------------------------------------------------------------
@_register
class SRHTProjector(Projector):
    """``R = √(P'/k)·(S H D)ᵀ`` restricted to the first ``P`` rows (appendix §4.2); whole vectors at once."""

    kind = "srht"

    def _check_layout(self, blocks, P):
        Pp = 1 << max(0, (P - 1).bit_length())
        if self.dim > Pp:
            raise ValueError(f"srht samples k of P' = {Pp} coordinates; got k = {self.dim} > P'.")

    @property
    def padded_width(self) -> int:
        """``P' = 2^⌈log₂P⌉`` (after binding)."""
        self._require_bound()
        return 1 << max(0, (self.P - 1).bit_length())

    def _srht_state(self):
        def build():
            Pp = self.padded_width
            g = _generator(self.seed, _KIND_ID["srht"], 0, 0, 1)
            signs = torch.cat([_random_signs(min(1 << 24, Pp - s), g) for s in range(0, Pp, 1 << 24)])
            g2 = _generator(self.seed, _KIND_ID["srht"], 0, 0, 2)
            rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,), generator=g2))))
            idx = torch.from_numpy(rng.choice(Pp, size=self.dim, replace=False).astype(np.int64))
            return signs.to(self.device), idx.to(self.device)
        return self._cached(("srht",), build)

    def transform_padded(self, X: torch.Tensor) -> torch.Tensor:
        """SRHT of zero-padded vectors ``X`` ``(n, P')`` (modified in place) → ``(n, k)``."""
        signs, idx = self._srht_state()
        X.mul_(signs)
        return fwht(X)[:, idx] * (1.0 / math.sqrt(self.dim))

    def bytes_per_sample(self, C):
        return 2 * 4 * C * (self.dim + self.padded_width)

    def samples_per_accumulator(self, C, max_bytes):
        return int(max(1, max_bytes // (3 * 4 * C * self.padded_width)))

    def accumulator(self, n, C, device, max_bytes):
        self._require_bound()
        return _SRHTAccumulator(self, n, C, device, max_bytes)


class _SRHTAccumulator(Accumulator):
    """SRHT needs whole vectors: gradients are written into a zero-padded ``(n, C, P')`` buffer."""

    def __init__(self, proj, n, C, device, max_bytes):
        self.proj, self.n, self.C, self.max_bytes = proj, n, C, int(max_bytes)
        self.buf = torch.zeros(n, C, proj.padded_width, device=device)

    def dense(self, b, G):
        blk = self.proj.blocks[b]
        self.buf[:, :, blk.offset : blk.offset + blk.size] += G.reshape(G.shape[0], G.shape[1], -1)

    def _dense_rows(self, b, start, G):
        off = self.proj.blocks[b].offset + start
        self.buf[:, :, off : off + G.shape[2]] += G

    def result(self):
        n, C = self.n, self.C
        return self.proj.transform_padded(self.buf.reshape(n * C, -1)).reshape(n, C, self.proj.dim)


# ----------------------------------------------------------------------------------------------------
# Kronecker (LoGra-style) factored sketch
# ----------------------------------------------------------------------------------------------------
@_register
class KroneckerProjector(Projector):
    """Per weight tensor ``(R_out ⊗ R_in)ᵀ vec(∇W)`` (appendix eq. (eq-kronecker-projection)); dense
    ``N(0, 1/k)`` rows for 1-D tensors. ``k = k_out·k_in``."""

    kind = "kronecker"
    options = ("k_out", "k_in", "factors", "tile_rows")

    def __init__(self, dim, seed, k_out=None, k_in=None, factors="orthogonal", tile_rows=None, cache_bytes=256 << 20):
        super().__init__(dim, seed, cache_bytes)
        if k_out is None and k_in is None:
            k_out = max(d for d in range(1, int(math.isqrt(dim)) + 1) if dim % d == 0)
        if k_out is None:
            k_out = dim // int(k_in)
        if k_in is None:
            k_in = dim // int(k_out)
        if int(k_out) < 1 or int(k_in) < 1 or int(k_out) * int(k_in) != dim:
            raise ValueError(f"kronecker needs k_out * k_in == dim = {dim}, got k_out={k_out}, k_in={k_in}.")
        self.k_out, self.k_in = int(k_out), int(k_in)
        if factors not in ("orthogonal", "gaussian"):
            raise ValueError(f"factors must be 'orthogonal' or 'gaussian', got {factors!r}.")
        self.factor_kind = factors
        self._vectors = _KroneckerVectorRows(dim, seed, tile_rows=tile_rows, cache_bytes=cache_bytes)

    def bind(self, layout):
        super().bind(layout)
        self._vectors.bind(layout)
        return self

    def _identity_options(self):
        return {"k_out": self.k_out, "k_in": self.k_in, "factors": self.factor_kind, "tile_rows": self._vectors.tile_rows}

    def prepare(self, device=None):
        super().prepare(device)
        self._vectors.prepare(device)
        return self

    def release(self):
        super().release()
        self._vectors.release()

    def factors(self, b: int):
        """``(R_out (d_out, k_out), R_in (d_in, k_in))`` of a ≥2-D block ``b``."""
        self._require_bound()
        blk = self.blocks[b]
        if len(blk.shape) < 2:
            raise ValueError(f"block {b} has shape {blk.shape}: factors() exists for ≥2-D blocks only.")
        d_out, d_in = blk.shape[0], blk.size // blk.shape[0]
        return self._cached((b, "kron"), lambda: (self._factor(d_out, self.k_out, b, 1), self._factor(d_in, self.k_in, b, 2)))

    def _factor(self, d, kk, b, stream):
        """One factor ``F`` ``(d, kk)`` with ``E[F Fᵀ] = I``: Gaussian ``N(0, 1/kk)``, or orthogonal —
        ``√(d/kk)·Q`` with Haar orthonormal columns when ``d ≥ kk``, orthonormal rows when ``d < kk``."""
        g = _generator(self.seed, _KIND_ID["kronecker"], b, 0, stream)
        if self.factor_kind == "gaussian":
            return torch.randn(d, kk, generator=g).mul_(1 / math.sqrt(kk)).to(self.device)
        A = torch.randn(max(d, kk), min(d, kk), generator=g, dtype=torch.float64)
        Q = _orthonormal_columns(A)
        F_ = Q * math.sqrt(d / kk) if d >= kk else Q.T
        return F_.to(torch.float32).contiguous().to(self.device)

    def vector_block(self, b: int) -> torch.Tensor:
        """The dense ``(size, k)`` block of ``R`` for a 1-D tensor ``b`` (Gaussian ``N(0, 1/k)`` rows)."""
        return self._vectors.rows(b, 0, self.blocks[b].size)

    def kron_dense(self, b: int, G: torch.Tensor) -> torch.Tensor:
        """Projection of full per-sample gradients of block ``b``: ``G`` ``(n, size)`` → ``(n, k)``."""
        blk = self.blocks[b]
        if len(blk.shape) >= 2:
            Ro, Ri = self.factors(b)
            W = G.reshape(G.shape[0], Ro.shape[0], Ri.shape[0])
            return (Ro.T @ W @ Ri).reshape(G.shape[0], self.dim)
        return self._vectors.rows_matmul(b, 0, G)

    def accumulator(self, n, C, device, max_bytes):
        self._require_bound()
        return _KroneckerAccumulator(self, n, C, device, max_bytes)


class _KroneckerVectorRows(GaussianProjector):
    """The dense ``N(0, 1/k)`` rows of a Kronecker projector's 1-D blocks (drawn from the kronecker streams)."""

    kind = "kronecker"


class _KroneckerAccumulator(Accumulator):
    """``Σ_t (R_outᵀ δ_t)(R_inᵀ a_t)ᵀ`` per layer; the layer gradient is never formed."""

    def dense(self, b, G):
        n, C = G.shape[:2]
        self.acc += self.proj.kron_dense(b, G.reshape(n * C, -1)).reshape(self.acc.shape)

    def outer(self, b, D, src):
        n, C, d_out, T = D.shape
        Ro, Ri = self.proj.factors(b)
        At = src.project_in(Ri)  # (n, k_in, T)
        Dt = torch.matmul(Ro.T, D.reshape(n * C, d_out, T))  # (n·C, k_out, T)
        self.acc += torch.bmm(Dt.reshape(n, C * Ro.shape[1], T), At.transpose(1, 2)).reshape(self.acc.shape)


# ----------------------------------------------------------------------------------------------------
# choosing k: the kernel error of each kind on a pilot batch
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorCurve:
    """Kernel error of projectors against exact gradients on a pilot batch (from :func:`error_curve`).

    ``errors[kind]`` is an array ``(len(dims), n_seeds)`` of relative Frobenius errors
    ``‖K̃ − K‖_F / ‖K‖_F`` over all class kernels; ``seconds[kind]`` the mean featurisation time per
    ``(dim, seed)`` on the pilot batch, shape ``(len(dims),)``.
    """

    kinds: tuple
    dims: tuple
    errors: dict
    seconds: dict
    n_pilot: int
    P: int

    def mean(self, kind: str) -> np.ndarray:
        """Mean error over seeds for each ``dim``, shape ``(len(dims),)``."""
        return self.errors[kind].mean(axis=1)

    def fit(self, kind: str) -> tuple[float, float]:
        """``(a, b)`` of the least-squares power law ``err ≈ a·k^b`` through the mean errors (log-log).

        JL projectors give ``b ≈ −1/2``; the Kronecker sketch decays more slowly on low-rank layer
        gradients. Needs at least two dimensions.
        """
        if kind not in self.errors:
            raise ValueError(f"the curve has no measurements for {kind!r}; it holds {', '.join(self.kinds)}.")
        if len(self.dims) < 2:
            raise ValueError("fitting a power law needs errors at two or more dimensions; pass more dims.")
        b, log_a = np.polyfit(np.log(np.asarray(self.dims, dtype=float)), np.log(self.mean(kind)), 1)
        return float(np.exp(log_a)), float(b)


def error_curve(model, X_pilot, kinds=None, dims=(128, 512, 2048), seeds=(0, 1, 2), batch_size=None,
                device=None, progress: bool = False) -> ErrorCurve:
    """Relative class-kernel error of each projector kind and dimension on a pilot batch (appendix §4.2).

    Computes the exact class kernels ``K_c = G_c G_cᵀ`` from unprojected gradients of ``X_pilot`` once,
    then, for every kind, ``k`` in ``dims`` and seed, the projected ``K̃_c = G̃_c G̃_cᵀ`` and
    ``‖K̃ − K‖_F / ‖K‖_F`` over all classes. Use a pilot of a few dozen to a few hundred inputs: the
    exact gradients take ``N·C·P`` floats. The error is a property of the gradients (how concentrated
    they are) and of ``k``, so a pilot batch predicts it for the full data set.

    Parameters
    ----------
    model : the network (as for :func:`dntk.tangent.class_gradients`).
    X_pilot : inputs ``(n, ...)``.
    kinds : projector kinds (default: every kind in :data:`KINDS` that fits; ``orthonormal`` is skipped
        when ``P·k`` is too large for it).
    dims : projection dimensions ``k``.
    seeds : projector seeds (the spread over seeds is the run-to-run variation).

    Returns
    -------
    ErrorCurve
    """
    import time

    from . import kernel, tangent

    kinds = tuple(KINDS if kinds is None else kinds)
    for kd in kinds:
        if kd not in _REGISTRY:
            raise ValueError(f"unknown projector kind {kd!r}; choose from {', '.join(KINDS)}.")
    dims = tuple(_check_int("each dim", d, 1) for d in dims)
    seeds = tuple(_check_int("each seed", s, 0) for s in seeds)
    if not dims or not seeds:
        raise ValueError("dims and seeds must be non-empty.")
    G = tangent.class_gradients(model, X_pilot, batch_size=batch_size, device=device)
    K = kernel.class_kernels(G)
    P = G.shape[2]
    if kinds == tuple(KINDS) and P * max(dims) > (1 << 25):
        kinds = tuple(kd for kd in kinds if kd != "orthonormal")
    errors, seconds = {}, {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(kinds) * len(dims) * len(seeds), desc="error curve", leave=False)
    for kd in kinds:
        E = np.zeros((len(dims), len(seeds)))
        T = np.zeros(len(dims))
        for i, d in enumerate(dims):
            for j, s in enumerate(seeds):
                t0 = time.perf_counter()
                Gp = tangent.class_gradients(model, X_pilot, projector=make(kd, d, seed=s), batch_size=batch_size,
                                             device=device)
                T[i] += (time.perf_counter() - t0) / len(seeds)
                E[i, j] = kernel.relative_error(kernel.class_kernels(Gp), K)
                if bar is not None:
                    bar.update(1)
        errors[kd], seconds[kd] = E, T
    if bar is not None:
        bar.close()
    return ErrorCurve(kinds, dims, errors, seconds, int(G.shape[0]), int(P))


def recommend_dim(curve: ErrorCurve, target: float, kind: str = "sparse") -> int:
    """Smallest ``k`` expected to reach a target kernel error, from the power law fitted to ``curve``.

    With ``err ≈ a·k^b`` (:meth:`ErrorCurve.fit`; ``b ≈ −1/2`` for JL projectors) the answer is
    ``⌈(target / a)^{1/b}⌉``. Raises ``ValueError`` for a kind the curve does not hold, a target outside
    ``(0, 1)``, or errors that do not fall with ``k`` (``b > −0.05``: more dimensions would not help).
    The result may exceed the number of parameters ``P`` — then projecting is pointless for that kind.
    """
    if not 0 < float(target) < 1:
        raise ValueError(f"target must lie in (0, 1), got {target!r}.")
    a, b = curve.fit(kind)
    if b > -0.05:
        raise ValueError(f"the {kind!r} errors on this curve do not fall with k (fitted exponent {b:.2f}); "
                         "measure at more widely spaced dims, or with more seeds.")
    return int(math.ceil((float(target) / a) ** (1.0 / b)))
