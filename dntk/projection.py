"""Johnson–Lindenstrauss projectors for tangent features: ``G̃ = G R`` with ``R ∈ R^{P×k}`` (SPEC §4.2).

Every projector is unbiased for inner products, ``E[⟨Rᵀa, Rᵀb⟩] = ⟨a, b⟩``, and reproducible from its
seed: ``R`` is cut into fixed *tiles* (rows of one parameter tensor), and each tile is generated from its
own counter-derived seed ``(seed, block, tile)``. The output therefore does not depend on batch size,
chunking or the order in which layers are visited, and the whole ``P×k`` matrix is never held when ``P``
is large (tiles are cached across calls only while ``P·k`` fits ``cache_bytes``).

Kinds (``make(kind, dim, seed)``):

``orthonormal``  the paper's ``√(P/k)·Q``, ``Q`` the Q factor of a Gaussian ``P×k`` (small ``P`` only).
``gaussian``     entries ``N(0, 1/k)``.
``rademacher``   entries ``±1/√k``.
``sparse``       very sparse (Li–Hastie–Church): ``±1/√(k q)`` with probability ``q/2`` each, else 0;
                 ``q = density`` (default ``1/√P``; ``1/3`` is Achlioptas). Applied as a sparse product.
``srht``         ``√(P'/k)·S H D`` on the zero-padded length ``P' = 2^⌈log₂P⌉``: random signs ``D``, the
                 normalised Walsh–Hadamard transform ``H`` (``O(P' log P')``), ``k`` sampled coordinates ``S``.
``kronecker``    per weight tensor ``W`` (``d_out × d_in``, conv kernels flattened) the factored sketch
                 ``(R_out ⊗ R_in)ᵀ vec(W) = vec(R_outᵀ W R_in)``, ``k = k_out·k_in``, with factors
                 ``E[R Rᵀ] = I``: by default *orthogonal* (``√(d/k_•)·Q``, Haar ``Q`` with orthonormal
                 columns, or orthonormal rows when ``d < k_•``) — unbiased like the Gaussian factors of
                 SPEC §4.2 (``factors="gaussian"``, variance ``1/k_out``, ``1/k_in``) but with about a third
                 of their kernel error, because the factors' column norms do not fluctuate; vectors
                 (biases, norm affines) use a dense ``N(0, 1/k)`` block. All blocks map into the same ``k`` coordinates and add up, exactly
                 like the row blocks of one ``P×k`` matrix. With :func:`dntk.tangent.class_gradients`
                 the per-sample layer gradient is never formed: ``Σ_t (R_outᵀ δ_t)(R_inᵀ a_t)ᵀ``.

A projector binds to a parameter layout (the trainable tensors of a model, or a plain width ``P``) on
first use; using it with a different layout raises ``ValueError``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["make", "KINDS", "Projector", "fwht"]

KINDS = ("orthonormal", "gaussian", "rademacher", "sparse", "srht", "kronecker")
_KIND_ID = {k: i + 1 for i, k in enumerate(KINDS)}
_TILE_ELEMS = 1 << 22  # entries per generated tile (16 MiB in float32)


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


def _generator(seed: int, *ids: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``(seed, *ids)`` — the counter-based stream of one tile."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, *[int(i) for i in ids]]).generate_state(2, np.uint32)
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
    # factor sizes of at most 2^5 (32×32 blocks balance FLOPs against memory passes on CPU)
    facs, left = [], m
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


def _csr_columns(S: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Columns ``[lo, hi)`` of a CSR matrix, as CSR (rows stay sorted, so the order is kept)."""
    crow, col, val = S.crow_indices(), S.col_indices(), S.values()
    row = torch.repeat_interleave(torch.arange(S.shape[0]), crow[1:] - crow[:-1])
    keep = (col >= lo) & (col < hi)
    counts = torch.bincount(row[keep], minlength=S.shape[0])
    new_crow = torch.zeros(S.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=new_crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(new_crow, col[keep] - lo, val[keep], (S.shape[0], hi - lo), check_invariants=False)


_H_CACHE: dict = {}


def _hadamard(s, dtype, device):
    key = (s, dtype, str(device))
    if key not in _H_CACHE:
        H = torch.ones(1, 1, dtype=torch.float64)
        while H.shape[0] < s:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        _H_CACHE[key] = H.to(dtype=dtype, device=device)
    return _H_CACHE[key]


def make(kind: str, dim: int, seed: int = 0, **options) -> "Projector":
    """A JL projector of kind ``kind`` to ``dim = k`` dimensions (SPEC §4.2). See the module docstring.

    Options: ``tile_rows`` (rows per generated tile; part of the projector's identity),
    ``cache_bytes`` (keep generated tiles across calls while ``P·k·4`` is below this; default 256 MiB),
    ``density`` (``sparse``), ``k_out``/``k_in`` (``kronecker``; default the most balanced factorisation of
    ``dim``), ``factors`` (``kronecker``: ``"orthogonal"`` (default) or ``"gaussian"``), ``max_entries``
    (``orthonormal``: largest ``P·k`` allowed, default ``2**25``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown projector kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim (the projection dimension k) must be a positive integer, got {dim!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    allowed = {"tile_rows", "cache_bytes"} | {
        "orthonormal": {"max_entries"},
        "sparse": {"density"},
        "kronecker": {"k_out", "k_in", "factors"},
    }.get(kind, set())
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for kind {kind!r}; allowed: {sorted(allowed)}.")
    return Projector(kind, int(dim), int(seed), **options)


class Projector:
    """One interface for every kind: ``project(x (n, P)) -> (n, k)``; bound to a layout on first use.

    Attributes: ``kind``, ``dim`` (k), ``seed``, ``P`` (after binding), ``mode`` — how
    :func:`dntk.tangent.class_gradients` feeds it: ``"rows"`` (row blocks of ``R``), ``"full"`` (whole
    gradient vectors, SRHT) or ``"kron"`` (layer factors).
    """

    def __init__(self, kind, dim, seed, tile_rows=None, cache_bytes=256 << 20, max_entries=1 << 25,
                 density=None, k_out=None, k_in=None, factors="orthogonal"):
        self.kind, self.dim, self.seed = kind, dim, seed
        self.mode = {"srht": "full", "kronecker": "kron"}.get(kind, "rows")
        self.dense_rows = kind in ("orthonormal", "gaussian", "rademacher")
        self._tile_rows_opt = tile_rows
        self.tile_rows = int(tile_rows) if tile_rows is not None else max(1, _TILE_ELEMS // dim)
        if self.tile_rows < 1:
            raise ValueError("tile_rows must be a positive integer.")
        self.cache_bytes = int(cache_bytes)
        self.max_entries = int(max_entries)
        if density is not None and not (0 < float(density) <= 1):
            raise ValueError(f"density must lie in (0, 1], got {density!r}.")
        self._density_opt = None if density is None else float(density)
        if kind == "kronecker":
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
            self.kron_factors = factors
        self.blocks = None
        self.P = None
        self.device = torch.device("cpu")
        self._cache = {}
        self._last = {}

    def __repr__(self):
        bound = f", P={self.P}" if self.P is not None else ""
        return f"Projector(kind={self.kind!r}, dim={self.dim}, seed={self.seed}{bound})"

    # ------------------------------------------------------------------ binding
    def bind(self, layout) -> "Projector":
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
        P = sum(b.size for b in blocks)
        k = self.dim
        if self.kind == "orthonormal":
            if k > P:
                raise ValueError(f"orthonormal projection needs k <= P; got k = {k} > P = {P}. Use 'gaussian' instead.")
            if P * k > self.max_entries:
                raise ValueError(
                    f"orthonormal holds the whole P×k matrix (P·k = {P * k:,} > max_entries = {self.max_entries:,}); "
                    "use 'gaussian', 'srht' or 'kronecker' for large models, or raise max_entries."
                )
        if self.kind == "srht":
            self.P_pad = 1 << max(0, (P - 1).bit_length())
            if k > self.P_pad:
                raise ValueError(f"srht samples k of P' = {self.P_pad} coordinates; got k = {k} > P'.")
        if self.kind == "sparse":
            self.density = self._density_opt if self._density_opt is not None else min(1.0, 1.0 / math.sqrt(P))
            if self._tile_rows_opt is None:  # tiles of about 2^18 nonzeros (stored sparse)
                self.tile_rows = max(1, int((1 << 18) / (k * self.density)))
        self.blocks, self.P = blocks, P
        self._persist = P * k * 4 <= self.cache_bytes
        return self

    def _require_bound(self):
        if self.blocks is None:
            raise ValueError("the projector is not bound yet; call bind(P) or project(x) first.")

    # ------------------------------------------------------------------ lifecycle used by class_gradients
    def prepare(self, device=None):
        """Move generated state to ``device`` (called at the start of a featurisation run)."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev != self.device:
            self._cache, self._last = {}, {}
        self.device = dev
        if self.kind == "orthonormal":
            self._orthonormal()
        return self

    def release(self):
        """Drop per-run tile caches (the persistent cache of small projectors is kept)."""
        self._last = {}

    # ------------------------------------------------------------------ tiles (counter-based)
    def _tile(self, b: int, t: int, stream: int = 0) -> torch.Tensor:
        """Tile ``t`` of block ``b``: rows ``[t·tile_rows, (t+1)·tile_rows)`` of that block's ``R`` rows."""
        key = (b, t, stream)
        if key in self._cache:
            return self._cache[key]
        if key in self._last:
            return self._last[key]
        blk = self.blocks[b]
        r0 = t * self.tile_rows
        rows = min(self.tile_rows, blk.size - r0)
        k = self.dim
        if self.kind == "sparse":
            R = self._sparse_tile(rows, _generator(self.seed, _KIND_ID[self.kind], b, t, stream))
        else:
            g = _generator(self.seed, _KIND_ID[self.kind], b, t, stream)
            if self.kind in ("gaussian", "kronecker"):  # scaled in the same pass as the sampling
                R = torch.empty(rows, k).normal_(0.0, 1.0 / math.sqrt(k), generator=g)
            else:
                R = _random_signs(rows * k, g, 1.0 / math.sqrt(k)).reshape(rows, k)
        R = R.to(self.device)
        if self._persist:
            self._cache[key] = R
        else:
            self._last = {key: R}
        return R

    def _sparse_tile(self, rows, g):
        """CSR of ``Rᵀ`` for one tile (``k × rows``): Binomial count, uniform positions, random signs."""
        k, q = self.dim, self.density
        n = rows * k
        rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,), generator=g))))
        cnt = int(rng.binomial(n, q))
        flat = np.sort(rng.choice(n, size=cnt, replace=False)) if cnt else np.zeros(0, np.int64)
        r, c = flat // k, flat % k
        vals = (rng.integers(0, 2, cnt).astype(np.float32) * 2 - 1) / math.sqrt(k * q)
        order = np.lexsort((r, c))  # CSR of Rᵀ: rows of Rᵀ are the k output columns
        c, r, vals = c[order], r[order], vals[order]
        crow = np.zeros(k + 1, np.int64)
        np.cumsum(np.bincount(c, minlength=k), out=crow[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(
                torch.from_numpy(crow), torch.from_numpy(r.astype(np.int64)), torch.from_numpy(vals), (k, rows),
                check_invariants=False,
            )

    def _orthonormal(self):
        if ("Q",) not in self._cache:
            g = _generator(self.seed, _KIND_ID["orthonormal"], 0, 0, 0)
            A = torch.randn(self.P, self.dim, generator=g, dtype=torch.float64)
            Q = _orthonormal_columns(A)  # Haar-distributed columns
            self._cache[("Q",)] = (Q * math.sqrt(self.P / self.dim)).to(torch.float32).to(self.device)
        return self._cache[("Q",)]

    def rows(self, b: int, start: int, stop: int) -> torch.Tensor:
        """Dense rows ``[start, stop)`` of block ``b`` of ``R`` (``dense_rows`` kinds), ``(stop-start, k)``."""
        if self.kind == "orthonormal":
            off = self.blocks[b].offset
            return self._orthonormal()[off + start : off + stop]
        tr = self.tile_rows
        parts = []
        for t in range(start // tr, (stop - 1) // tr + 1):
            T = self._tile(b, t)
            lo, hi = max(start - t * tr, 0), min(stop - t * tr, T.shape[0])
            parts.append(T[lo:hi])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def rows_matmul(self, b: int, start: int, G: torch.Tensor) -> torch.Tensor:
        """``G @ R[block b rows start:start+r]`` for ``G`` ``(n, r)`` → ``(n, k)`` (any rows-mode kind)."""
        stop = start + G.shape[1]
        if self.kind == "orthonormal":
            return G @ self.rows(b, start, stop)
        if self.kind != "sparse":  # tile by tile: no concatenated copy of R
            tr = self.tile_rows
            out = G.new_zeros(G.shape[0], self.dim)
            for t in range(start // tr, (stop - 1) // tr + 1):
                T = self._tile(b, t)
                lo, hi = max(start - t * tr, 0), min(stop - t * tr, T.shape[0])
                g0 = t * tr + lo - start
                out.addmm_(G[:, g0 : g0 + hi - lo], T[lo:hi])
            return out
        tr = self.tile_rows
        out = None
        for t in range(start // tr, (stop - 1) // tr + 1):
            ST = self._tile(b, t)  # (k, rows) CSR of this tile's Rᵀ
            lo, hi = max(start - t * tr, 0), min(stop - t * tr, ST.shape[1])
            g0 = t * tr + lo - start
            if lo != 0 or hi != ST.shape[1]:
                ST = _csr_columns(ST, lo, hi)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                part = torch.sparse.mm(ST, G[:, g0 : g0 + hi - lo].T.contiguous()).T
            out = part if out is None else out + part
        return out

    # ------------------------------------------------------------------ kronecker factors
    def factors(self, b: int):
        """``(R_out (d_out, k_out), R_in (d_in, k_in))`` of a ≥2-D block ``b`` (``kronecker``)."""
        self._require_bound()
        blk = self.blocks[b]
        if self.kind != "kronecker" or len(blk.shape) < 2:
            raise ValueError("factors() exists for ≥2-D blocks of a 'kronecker' projector only.")
        key = (b, "kron")
        if key not in self._cache:
            d_out, d_in = blk.shape[0], blk.size // blk.shape[0]
            self._cache[key] = (self._factor(d_out, self.k_out, b, 1), self._factor(d_in, self.k_in, b, 2))
        return self._cache[key]

    def _factor(self, d, kk, b, stream):
        """One factor ``F`` ``(d, kk)`` with ``E[F Fᵀ] = I``: Gaussian ``N(0, 1/kk)``, or (default) orthogonal —
        ``√(d/kk)·Q`` with Haar orthonormal columns when ``d ≥ kk``, orthonormal rows (``F Fᵀ = I``) when ``d < kk``."""
        g = _generator(self.seed, _KIND_ID["kronecker"], b, 0, stream)
        if self.kron_factors == "gaussian":
            return torch.randn(d, kk, generator=g).mul_(1 / math.sqrt(kk)).to(self.device)
        A = torch.randn(max(d, kk), min(d, kk), generator=g, dtype=torch.float64)
        Q = _orthonormal_columns(A)
        F_ = Q * math.sqrt(d / kk) if d >= kk else Q.T
        return F_.to(torch.float32).contiguous().to(self.device)

    def vector_block(self, b):
        """Kronecker: the dense ``(size, k)`` block of ``R`` for a 1-D parameter ``b`` (biases, norm affines):
        Gaussian ``N(0, 1/k)`` rows, generated tile by tile like the ``gaussian`` kind."""
        blk = self.blocks[b]
        return self.rows(b, 0, blk.size)

    def kron_dense(self, b: int, G: torch.Tensor) -> torch.Tensor:
        """Kronecker projection of full per-sample gradients of block ``b``: ``G`` ``(n, size)`` → ``(n, k)``."""
        blk = self.blocks[b]
        if len(blk.shape) >= 2:
            Ro, Ri = self.factors(b)
            W = G.reshape(G.shape[0], Ro.shape[0], Ri.shape[0])
            return (Ro.T @ W @ Ri).reshape(G.shape[0], self.dim)
        return self.rows_matmul(b, 0, G)

    # ------------------------------------------------------------------ srht
    def _srht_state(self):
        if ("srht",) not in self._cache:
            Pp = self.P_pad
            g = _generator(self.seed, _KIND_ID["srht"], 0, 0, 1)
            signs = torch.cat([_random_signs(min(1 << 24, Pp - s), g) for s in range(0, Pp, 1 << 24)])
            g2 = _generator(self.seed, _KIND_ID["srht"], 0, 0, 2)
            rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,), generator=g2))))
            idx = torch.from_numpy(rng.choice(Pp, size=self.dim, replace=False).astype(np.int64))
            self._cache[("srht",)] = (signs.to(self.device), idx.to(self.device))
        return self._cache[("srht",)]

    def srht_padded(self, X: torch.Tensor) -> torch.Tensor:
        """SRHT of zero-padded vectors ``X`` ``(n, P')`` (modified in place) → ``(n, k)``."""
        signs, idx = self._srht_state()
        X.mul_(signs)
        Y = fwht(X)
        return Y[:, idx] * (1.0 / math.sqrt(self.dim))

    # ------------------------------------------------------------------ generic entry point
    def project(self, x) -> torch.Tensor:
        """``x R`` for ``x`` ``(n, P)`` (torch or numpy) → ``(n, k)`` float32, computed block by block."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.asarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or numpy array of shape (n, P), got {type(x).__name__}.")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (n, P), got {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got dtype {x.dtype}.")
        if self.blocks is None:
            self.bind(int(x.shape[1]))
        if x.shape[1] != self.P:
            raise ValueError(f"x has width {x.shape[1]} but the projector is bound to P = {self.P}.")
        x = x.to(self.device, torch.float32)
        n, k = x.shape[0], self.dim
        if self.kind == "srht":
            out = torch.empty(n, k, device=self.device)
            step = max(1, (256 << 20) // (4 * self.P_pad))
            for s in range(0, n, step):
                buf = torch.zeros(min(step, n - s), self.P_pad, device=self.device)
                buf[:, : self.P] = x[s : s + step]
                out[s : s + step] = self.srht_padded(buf)
            return out
        out = torch.zeros(n, k, device=self.device)
        for b, blk in enumerate(self.blocks):
            xb = x[:, blk.offset : blk.offset + blk.size]
            if self.kind == "kronecker":
                out += self.kron_dense(b, xb)
                continue
            step = self.tile_rows * max(1, (64 << 20) // max(1, 4 * self.tile_rows * k))
            for s in range(0, blk.size, step):
                out += self.rows_matmul(b, s, xb[:, s : s + step])
        return out

    def matrix(self) -> torch.Tensor:
        """The explicit ``R`` ``(P, k)`` (small ``P`` only; for tests and illustrations)."""
        self._require_bound()
        if self.P * self.dim > (1 << 26):
            raise ValueError(f"matrix() would hold P·k = {self.P * self.dim:,} entries; it is for small P only.")
        return self.project(torch.eye(self.P, device=self.device))
