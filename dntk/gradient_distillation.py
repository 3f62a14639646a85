"""Algorithm 1 (local–global gradient distillation) and the row-selection baselines. SPEC §4.3.

``local_global(features (N, C, k), targets (N, C), n_clusters, tau, gamma, budget)`` turns the
projected class gradients ``G̃_c`` into ``m_c`` *synthetic* gradients per class,
``G_syn = Vᵀ G̃_c`` and ``t_syn = Vᵀ t_c``, where the columns of the orthonormal ``V (N, m_c)`` are
local eigenvectors of the cluster blocks ``K̃_c[S_j, S_j]`` and the global eigenvectors of ``K̃_c``
that no cluster explains (the *gaps*). Two exact paths:

- ``"dense"`` — the reference: ``eigh`` of the ``N×N`` class kernel and of each cluster block, then
  Gram–Schmidt (classical, applied twice) on the candidate ``N``-vectors one at a time.
- ``"matrix_free"`` — never forms an ``N×N`` matrix: the matrix-free spectral clustering of
  ``dntk.spectral``; eigenpairs of ``G Gᵀ`` from the ``k×k`` Gram ``Gᵀ G`` (the thin SVD
  ``G = U Σ Wᵀ``, ``U = G W Σ⁻¹``, cost ``O(N k²)``; the class Gram is the sum of the cluster Grams; a
  cluster with ``|S_j| ≤ k`` uses its own ``|S_j|×|S_j|`` block, the smaller side), and the same
  Gram–Schmidt run on ``N×64`` blocks of candidates (``O(N·n·m)`` for ``n`` candidates, ``m`` kept).
  Eigenvectors from the Gram are accurate where ``λ ≫ ε·λ_1``; eigenvalues below ``max(N, k)·ε·λ_1``
  are treated as round-off and never selected.

Step 6 uses classical Gram–Schmidt applied twice (CGS2) rather than MGS: the same keep/drop decisions
in exact arithmetic, orthogonal to working precision, and it runs as matrix products.

``select(method, features_c (N, k), budget)`` gives the baselines of SPEC §4.3 at the same budget:
``random``, ``leverage`` (top-m ridge leverage scores), ``leverage_sampled``, ``fps`` (greedy
k-center), ``kmeans`` (nearest real row to each centre) and the ``pca`` reference (top-m global
eigenvectors: the rank-m KRR of SPEC §1).

Every eigenvector is sign-normalised (its largest-magnitude entry is positive), so both paths return
the same vectors, not only the same spans.
"""
from __future__ import annotations

import logging
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger("dntk")

__all__ = [
    "local_global", "local_global_grid", "LocalGlobalResult", "ClassSynthesis",
    "select", "Selection", "leverage_scores", "SELECT_METHODS", "DEFAULT_TOL",
]

#: Residual norm below which a unit candidate is dropped in step 6 (it lies in the span of the
#: vectors before it). Far above the round-off of both paths (~1e-12), far below real directions.
DEFAULT_TOL = 1e-6
#: Baselines accepted by :func:`select`.
SELECT_METHODS = ("random", "leverage", "leverage_sampled", "fps", "kmeans", "pca")
_PATHS = ("auto", "dense", "matrix_free")
_LOCAL, _GAP = 0, 1


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassSynthesis:
    """Algorithm 1's output for one class (SPEC §4.3, steps 2–6).

    G_syn: ``(m, k)`` float64 synthetic gradients ``Vᵀ G̃_c``; t_syn: ``(m,)`` ``Vᵀ t_c``;
    V: ``(N, m)`` orthonormal coefficients. r: global truncation rank ``r(τ)``; r_j: ``(M,)`` local
    ranks; eigvals: ``(r,)`` top global eigenvalues; A: ``(r,)`` alignments ``A_i``; gaps: 0-based
    indices ``i < r`` with ``A_i < γ``. source: ``(m, 2)`` int64, per column ``(cluster j, eigen
    index)`` for a local vector and ``(-1, i)`` for a gap; source_eigval: ``(m,)`` the eigenvalue each
    column was ordered by (non-increasing). n_local / n_gap: kept columns of each kind; n_candidates:
    candidates entering step 6 (``Σ_j r_j + |gaps|``).
    trace: ``tr(K̃_c) = ‖G̃_c‖_F²`` of the uncompressed class kernel (for λ, SPEC §4.3); n: N.
    """

    G_syn: torch.Tensor
    t_syn: torch.Tensor
    V: torch.Tensor
    r: int
    r_j: torch.Tensor
    eigvals: torch.Tensor
    A: torch.Tensor
    gaps: torch.Tensor
    source: torch.Tensor
    source_eigval: torch.Tensor
    n_local: int
    n_gap: int
    n_candidates: int
    trace: float
    n: int

    @property
    def m(self) -> int:
        """Number of synthetic gradients of this class."""
        return int(self.V.shape[1])


@dataclass(frozen=True)
class LocalGlobalResult:
    """Algorithm 1 on all classes: one shared partition, one :class:`ClassSynthesis` per class.

    labels: ``(N,)`` int64 cluster of each point (``None`` when ``n_clusters == 0``).
    """

    classes: tuple
    labels: torch.Tensor | None
    n_clusters: int
    tau: float
    gamma: float
    budget: int | None
    method: str
    settings: dict = field(default_factory=dict)

    def __getitem__(self, c: int) -> ClassSynthesis:
        return self.classes[c]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def G_syn(self) -> list:
        """Per class ``(m_c, k)`` synthetic gradients."""
        return [cs.G_syn for cs in self.classes]

    @property
    def t_syn(self) -> list:
        """Per class ``(m_c,)`` synthetic targets."""
        return [cs.t_syn for cs in self.classes]

    @property
    def m(self) -> list:
        """Per class number of synthetic gradients."""
        return [cs.m for cs in self.classes]

    @property
    def traces(self) -> list:
        """Per class ``tr(K̃_c)`` of the uncompressed kernel."""
        return [cs.trace for cs in self.classes]

    def counts(self) -> dict:
        """Totals over classes: synthetic gradients, local and gap ones."""
        return {"m": sum(self.m), "local": sum(cs.n_local for cs in self.classes),
                "gap": sum(cs.n_gap for cs in self.classes)}


# ----------------------------------------------------------------------------- validation


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}.")
    if not (x.is_floating_point()):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}.")
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; remove or fix those rows before distilling.")


def _check_unit_interval(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 < float(v) <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {v!r}.")
    return float(v)


def _check_int(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}.")
    return int(v)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0.0 < float(tol) < 1.0):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}.")
    return float(tol)


def _check_inputs(features, targets):
    features = _as_tensor(features, "features")
    if features.ndim != 3:
        raise ValueError(f"features must have shape (N, C, k), got {tuple(features.shape)}.")
    n, c, k = features.shape
    if n == 0 or c == 0 or k == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}.")
    _check_finite(features, "features")
    targets = _as_tensor(targets, "targets")
    if targets.ndim != 2 or targets.shape[1] != c:
        raise ValueError(f"targets must have shape (N, C) = (N, {c}), got {tuple(targets.shape)}.")
    if targets.shape[0] != n:
        raise ValueError(f"features and targets have different N ({n} and {targets.shape[0]}); "
                         "pass targets for the same points as the features.")
    _check_finite(targets, "targets")
    return features, targets


def _check_labels(labels, n: int, n_clusters: int) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got {tuple(labels.shape)} "
                         f"{labels.dtype}.")
    labels = labels.to(torch.int64)
    present = torch.unique(labels)
    if present.numel() != n_clusters or int(present.min()) != 0 or int(present.max()) != n_clusters - 1:
        raise ValueError(f"labels must use every cluster 0..{n_clusters - 1} (n_clusters={n_clusters}) "
                         f"at least once, got values {present.tolist()[:20]}.")
    return labels


def _resolve_path(method: str, n: int, k: int) -> str:
    if method not in _PATHS:
        raise ValueError(f"method must be one of {_PATHS}, got {method!r}.")
    if method == "auto":
        # The N×N kernel is no larger than the N×k features only when N <= k.
        return "dense" if n <= k else "matrix_free"
    return method


# ----------------------------------------------------------------------------- linear algebra


def _truncation_rank(eigvals: torch.Tensor, tau: float) -> int:
    """``r(τ) = min{r : Σ_{i≤r} λ_i ≥ τ Σ_i λ_i}`` (SPEC §2, Def 3.1) of non-increasing ``λ ≥ 0``."""
    from dntk.spectral import truncation_rank
    if eigvals.numel() == 0 or float(eigvals.max()) <= 0.0:
        return 0
    return int(truncation_rank(eigvals, tau))


#: Symmetric eigenproblems up to this size run on one thread (see :func:`_one_thread`).
_SMALL_EIGH = 1024


@contextmanager
def _one_thread(active: bool = True):
    """Run small dense kernels on one torch thread, then restore the setting.

    At this size (``eigh`` of ``k×k``, Gram–Schmidt on single vectors) extra threads gain little, and on
    an oversubscribed CPU every parallel region waits for a descheduled thread: measured on a shared
    2-core machine, ``eigh`` of 512×512 took 9× longer with two threads than with one.
    """
    n = torch.get_num_threads()
    if not active or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _eigh_desc(A: torch.Tensor):
    """``eigh`` with eigenvalues non-increasing (and their vectors), small problems on one thread."""
    with _one_thread(A.shape[0] <= _SMALL_EIGH):
        lam, U = torch.linalg.eigh(A)
    return lam.flip(0), U.flip(1)


def _sign_normalise(U: torch.Tensor) -> torch.Tensor:
    """Flip each column so its largest-magnitude entry is positive (a canonical eigenvector sign)."""
    if U.numel() == 0:
        return U
    idx = U.abs().argmax(dim=0)
    s = torch.sign(U[idx, torch.arange(U.shape[1])])
    s[s == 0] = 1.0
    return U * s


def _numerical_rank(lam: torch.Tensor, dim: int) -> int:
    """Eigenvalues above round-off (``λ_1 · dim · ε``); below it directions are noise."""
    if lam.numel() == 0 or float(lam[0]) <= 0.0:
        return 0
    return int((lam > lam[0] * dim * torch.finfo(torch.float64).eps).sum())


class _Eig:
    """Eigenpairs of ``K = G Gᵀ`` for ``G (n, k)`` float64, eigenvalues non-increasing.

    ``dense=True``: ``eigh`` of the ``n×n`` kernel (the reference). Otherwise the thin SVD through
    the ``k×k`` Gram when ``n > k`` (and the ``n×n`` block itself when ``n ≤ k``, which is then the
    smaller matrix). ``vectors(r)`` gives the top ``r`` sign-normalised unit eigenvectors ``(n, r)``.
    """

    def __init__(self, G: torch.Tensor, dense: bool, gram: torch.Tensor | None = None):
        n, k = G.shape
        self.n = n
        self._G = G
        if dense or n <= k:
            lam, U = _eigh_desc(G @ G.T)
            # Beyond min(n, k) the eigenvalues are 0 in exact arithmetic: keep both paths' spectra alike.
            self.lam = lam.clamp_min(0.0)[: min(n, k)]
            self._U, self._W = U, None
        else:
            lam, W = _eigh_desc(_gram(G) if gram is None else gram)
            self.lam = lam.clamp_min(0.0)
            self._U, self._W = None, W
        self.rank = _numerical_rank(self.lam, max(n, k))

    def vectors(self, r: int) -> torch.Tensor:
        if r > self.rank:
            raise RuntimeError("asked for eigenvectors beyond the numerical rank")  # guarded by callers
        if self._U is not None:
            return _sign_normalise(self._U[:, :r])
        U = (self._G @ self._W[:, :r]) / self.lam[:r].sqrt()
        return _sign_normalise(U)


def _gram(G: torch.Tensor) -> torch.Tensor:
    """``GᵀG (k, k)`` of a float64 ``G (n, k)``; on CPU one BLAS ``dsyrk`` (half the flops of a product)."""
    if G.device.type != "cpu":
        return G.T @ G
    from scipy.linalg.blas import dsyrk
    A = torch.from_numpy(dsyrk(1.0, G.contiguous().numpy().T, trans=0))    # upper triangle of GᵀG
    return A.triu() + A.triu(1).T


def _rank(eig: _Eig, tau: float) -> int:
    return min(_truncation_rank(eig.lam, tau), eig.rank)


def _gram_schmidt(vectors, tol: float, budget: int | None, n: int):
    """Gram–Schmidt with re-orthogonalisation (CGS2) over unit ``(n,)`` vectors, in the given order.

    A vector whose residual norm after projecting out the kept ones is below ``tol`` is dropped; stop
    once ``budget`` are kept. Returns ``(Q (n, m), kept positions)``. (Twice-applied classical GS is
    orthogonal to working precision, like MGS with re-orthogonalisation.)
    """
    cap = min(n, len(vectors) if budget is None else min(budget, len(vectors)))
    Q = torch.empty(cap, n, dtype=torch.float64)                     # kept vectors as rows
    kept = []
    for pos, v in enumerate(vectors):
        if len(kept) >= cap:        # budget met, or the kept vectors span R^n: nothing else survives
            break
        w = v.clone()
        Qk = Q[: len(kept)]
        for _ in range(2):
            w -= (Qk @ w) @ Qk
        nrm = float(w.norm())
        if nrm < tol:
            continue
        Q[len(kept)] = w / nrm
        kept.append(pos)
    return Q[: len(kept)].T.contiguous(), kept


def _block_gram_schmidt(get_block, n_cand: int, n: int, tol: float, budget: int | None, block: int = 64):
    """Step 6 in blocks of candidates, the same decisions as :func:`_gram_schmidt`.

    ``get_block(start, stop)`` materialises candidates ``start..stop-1`` as rows ``(b, n)`` (never
    ``n×n``). Each block is projected against the kept basis twice (BLAS3), then its vectors go
    through CGS2 one by one against the vectors kept from the same block.
    Returns ``(Q (n, m), kept positions)``.
    """
    cap = min(n, n_cand if budget is None else min(budget, n_cand))
    Q = torch.empty(cap, n, dtype=torch.float64)                     # kept vectors as rows
    kept, m = [], 0
    for start in range(0, n_cand, block):
        if m >= cap:
            break
        W = get_block(start, min(n_cand, start + block))
        Qm = Q[:m]
        for _ in range(2):
            W -= (W @ Qm.T) @ Qm
        m0 = m
        with _one_thread():
            for i in range(W.shape[0]):
                if m >= cap:
                    break
                w = W[i]
                Qb = Q[m0:m]
                for _ in range(2):
                    w -= (Qb @ w) @ Qb
                nrm = float(w.norm())
                if nrm < tol:
                    continue
                Q[m] = w / nrm
                kept.append(start + i)
                m += 1
    return Q[:m].T.contiguous(), kept


# ----------------------------------------------------------------------------- one class


class _ClassSpectra:
    """The τ-independent eigen-decompositions of one class (global and per cluster), up to τ_max."""

    def __init__(self, G: torch.Tensor, groups: list, tau_max: float, dense: bool, inv=None):
        """``G (N, k)`` float64 with rows sorted by cluster, ``groups`` the clusters' row slices, ``inv``
        the permutation back to the caller's row order (``None``: rows are in that order already)."""
        self.G = G
        self.inv = inv
        self.n = G.shape[0]
        self.dense = dense
        self.trace = float((G ** 2).sum())                           # tr(K̃_c), for λ (SPEC §4.3)
        self.groups = groups
        n, k = G.shape
        # Matrix-free: the cluster Grams G[S_j]ᵀG[S_j] sum to the global GᵀG, so form each once.
        grams = [_gram(G[idx]) for idx in groups] if (not dense and n > k and groups) else None
        self.glob = _Eig(G, dense, gram=sum(grams) if grams else None)
        self.r_max = _rank(self.glob, tau_max)
        self.U = self.glob.vectors(self.r_max)                      # (N, r_max)
        self.loc, self.Uloc, self.rj_max, self.C = [], [], [], []
        for j, idx in enumerate(groups):
            e = _Eig(G[idx], dense, gram=grams[j] if grams else None)
            rj = _rank(e, tau_max)
            Uj = e.vectors(rj)                                      # (|S_j|, rj)
            self.loc.append(e)
            self.Uloc.append(Uj)
            self.rj_max.append(rj)
            self.C.append(Uj.T @ self.U[idx])                       # (rj, r_max): U^{(j)ᵀ} u_i[S_j]

    def synthesize(self, t: torch.Tensor, tau: float, gamma: float, budget, tol: float) -> ClassSynthesis:
        n, M = self.n, len(self.groups)
        r = _rank(self.glob, tau)
        rj = [_rank(e, tau) for e in self.loc]
        lam = self.glob.lam[:r]
        # Step 3: A_i = Σ_j ‖U^{(j)}_{r_j}ᵀ u_i[S_j]‖², gaps = {i < r : A_i < γ}.
        A = torch.zeros(r, dtype=torch.float64)
        for j in range(M):
            A += (self.C[j][: rj[j], :r] ** 2).sum(0)
        gaps = torch.nonzero(A < gamma).flatten()
        # Steps 4–5: candidates (kind, cluster, index, eigenvalue); step 6 order: eigenvalue desc.
        cands = [(_LOCAL, j, l, float(self.loc[j].lam[l])) for j in range(M) for l in range(rj[j])]
        cands += [(_GAP, -1, int(i), float(lam[i])) for i in gaps]
        order = sorted(range(len(cands)), key=lambda a: (-cands[a][3], cands[a][0], cands[a][1], cands[a][2]))
        cands = [cands[a] for a in order]
        if self.dense:      # the reference: one explicit vector at a time
            V, kept = _gram_schmidt([self._candidates(cands, p, p + 1)[0] for p in range(len(cands))],
                                    tol, budget, n)
        else:
            V, kept = _block_gram_schmidt(lambda a, b: self._candidates(cands, a, b), len(cands), n, tol, budget)
        kc = [cands[p] for p in kept]
        source = torch.tensor([[j, l] for kind, j, l, _ in kc], dtype=torch.int64).reshape(-1, 2)
        G_syn, t_syn = V.T @ self.G, V.T @ t
        if self.inv is not None:
            V = V[self.inv]
        return ClassSynthesis(
            G_syn=G_syn, t_syn=t_syn, V=V, r=r, r_j=torch.tensor(rj, dtype=torch.int64),
            eigvals=lam.clone(), A=A, gaps=gaps, source=source,
            source_eigval=torch.tensor([e for *_, e in kc], dtype=torch.float64),
            n_local=sum(1 for c in kc if c[0] == _LOCAL), n_gap=sum(1 for c in kc if c[0] == _GAP),
            n_candidates=len(cands), trace=self.trace, n=n)

    def _candidates(self, cands, start: int, stop: int) -> torch.Tensor:
        """Candidates ``start..stop-1`` as explicit rows ``(b, N)`` (local ones zero-padded, step 3)."""
        W = torch.zeros(stop - start, self.n, dtype=torch.float64)
        for row, (kind, j, l, _) in enumerate(cands[start:stop]):
            if kind == _LOCAL:
                W[row, self.groups[j]] = self.Uloc[j][:, l]
            else:
                W[row] = self.U[:, l]
        return W


# ----------------------------------------------------------------------------- Algorithm 1


def _partition(features, n_clusters, labels, path, seed):
    n = features.shape[0]
    if n_clusters == 0:
        if labels is not None:
            raise ValueError("labels were given but n_clusters is 0 (no clusters); pass one or the other.")
        return None, []
    if labels is None:
        from dntk.spectral import spectral_clusters
        labels = torch.as_tensor(np.asarray(spectral_clusters(features, n_clusters, method=path, seed=seed)))
    labels = _check_labels(labels, n, n_clusters)
    return labels, labels


def _prepare(features, targets, n_clusters, taus, gammas, budget, method, seed, tol, labels):
    features, targets = _check_inputs(features, targets)
    n, C, k = features.shape
    n_clusters = _check_int(n_clusters, "n_clusters", 0)
    if n_clusters > n:
        raise ValueError(f"n_clusters ({n_clusters}) exceeds the number of points N ({n}); "
                         "use at most N clusters.")
    taus = [_check_unit_interval(t, "tau") for t in taus]
    gammas = [_check_unit_interval(g, "gamma") for g in gammas]
    if budget is not None:
        budget = _check_int(budget, "budget", 1)
    tol = _check_tol(tol)
    path = _resolve_path(method, n, k)
    labels, groups = _partition(features, n_clusters, labels, path, seed)
    return features, targets, n_clusters, taus, gammas, budget, tol, path, labels, groups


def local_global(features, targets, n_clusters: int, tau: float, gamma: float, budget: int | None = None,
                 method: str = "auto", seed: int = 0, tol: float = DEFAULT_TOL, labels=None,
                 progress: bool = False) -> LocalGlobalResult:
    """Algorithm 1, local–global gradient distillation (SPEC §4.3, steps 1–6).

    features: ``(N, C, k)`` projected class gradients ``G̃_c``; targets: ``(N, C)`` ``t_c``.
    n_clusters: ``M`` clusters of the class-averaged kernel ``K̄`` (step 1, one partition for all
        classes); ``0`` means no clusters — every global direction ``i ≤ r`` is then a gap
        (``A_i = 0``) and ``V = U_r``: the rank-``r`` KRR of SPEC §1.
    tau: energy threshold for ``r(τ)`` and ``r_j(τ)``; gamma: gap threshold (``A_i < γ``).
    budget: keep at most this many synthetic gradients per class (the first survivors of step 6).
    method: ``"dense"`` (eigh of ``N×N`` kernels, the reference), ``"matrix_free"`` (thin SVDs of the
        ``N×k`` blocks, never ``N×N``) or ``"auto"`` (dense iff ``N ≤ k``).
    labels: optional precomputed partition ``(N,)`` with values ``0..M-1`` (skips step 1).
    tol: a candidate whose Gram–Schmidt residual norm is below ``tol`` is dropped (step 6).
    Returns a :class:`LocalGlobalResult`; ``result[c]`` holds ``G_syn (m_c, k)``, ``t_syn (m_c,)``,
    ``V (N, m_c)`` with ``VᵀV = I`` and the diagnostics.
    """
    res = local_global_grid(features, targets, n_clusters, [tau], [gamma], budget=budget, method=method,
                            seed=seed, tol=tol, labels=labels, progress=progress)
    return res[(float(tau), float(gamma))]


def local_global_grid(features, targets, n_clusters: int, taus, gammas, budget: int | None = None,
                      method: str = "auto", seed: int = 0, tol: float = DEFAULT_TOL, labels=None,
                      progress: bool = False) -> dict:
    """Algorithm 1 for every ``(τ, γ)`` of a grid, sharing the partition and eigen-decompositions.

    Same arguments as :func:`local_global` with ``taus``/``gammas`` sequences; returns
    ``{(tau, gamma): LocalGlobalResult}`` (the grid search of the paper's App E.2, Fig 9). Each entry
    equals what :func:`local_global` returns for that pair.
    """
    taus, gammas = list(np.atleast_1d(taus).tolist()), list(np.atleast_1d(gammas).tolist())
    if not taus or not gammas:
        raise ValueError("taus and gammas must each hold at least one value.")
    (features, targets, n_clusters, taus, gammas, budget, tol, path, labels,
     _) = _prepare(features, targets, n_clusters, taus, gammas, budget, method, seed, tol, labels)
    n, C, k = features.shape
    settings = {"N": n, "C": C, "k": k, "tol": tol, "seed": seed}
    per = {(t, g): [] for t in taus for g in gammas}
    from tqdm.auto import tqdm
    # Work on the rows sorted by cluster, so that every S_j is a contiguous slice (no gathers); V is
    # returned in the original row order.
    if labels is not None:
        perm = torch.argsort(labels, stable=True)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n)
        ends = torch.cumsum(torch.bincount(labels, minlength=n_clusters), 0).tolist()
        groups = [slice(a, b) for a, b in zip([0] + ends[:-1], ends)]
    else:
        perm = inv = None
        groups = []
    for c in tqdm(range(C), disable=not progress, desc="Algorithm 1"):
        G, t = features[:, c, :], targets[:, c]
        if perm is not None:
            G, t = G[perm], t[perm]
        G, t = G.to(torch.float64).contiguous(), t.to(torch.float64)
        spec = _ClassSpectra(G, groups, max(taus), dense=(path == "dense"), inv=inv)
        for ta in taus:
            for ga in gammas:
                per[(ta, ga)].append(spec.synthesize(t, ta, ga, budget, tol))
        del spec, G
    return {key: LocalGlobalResult(classes=tuple(v), labels=labels, n_clusters=n_clusters, tau=key[0],
                                   gamma=key[1], budget=budget, method=path, settings=settings)
            for key, v in per.items()}


# ----------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Selection:
    """A baseline's compressed set for one class (SPEC §4.3).

    indices: ``(m,)`` int64 chosen rows (``None`` for ``pca``); V: ``(N, m)`` orthonormal coefficients
    for ``pca`` (``None`` for row selections); scores: ``(N,)`` ridge leverage scores for the leverage
    methods. ``apply(features_c, targets_c)`` gives the KRR training set ``(G (m, k), t (m,))``.
    """

    method: str
    indices: torch.Tensor | None
    V: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    @property
    def m(self) -> int:
        return int(self.indices.numel() if self.indices is not None else self.V.shape[1])

    def apply(self, features_c, targets_c):
        """``(G̃_c[I], t_c[I])`` for a row selection, ``(Vᵀ G̃_c, Vᵀ t_c)`` for ``pca``; float64."""
        G = _as_tensor(features_c, "features_c").to(torch.float64)
        t = _as_tensor(targets_c, "targets_c").to(torch.float64)
        if self.indices is not None:
            return G[self.indices], t[self.indices]
        return self.V.T @ G, self.V.T @ t


def _check_features_c(features_c) -> torch.Tensor:
    features_c = _as_tensor(features_c, "features_c")
    if features_c.ndim != 2 or features_c.shape[0] == 0 or features_c.shape[1] == 0:
        raise ValueError(f"features_c must have shape (N, k) (one class), got {tuple(features_c.shape)}.")
    _check_finite(features_c, "features_c")
    return features_c.to(torch.float64)


def _ridge(G: torch.Tensor, lam, lam_rel) -> float:
    if lam is not None:
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not float(lam) > 0:
            raise ValueError(f"lam must be a positive number, got {lam!r}.")
        return float(lam)
    if isinstance(lam_rel, bool) or not isinstance(lam_rel, numbers.Real) or not float(lam_rel) > 0:
        raise ValueError(f"lam_rel must be a positive number, got {lam_rel!r}.")
    tr = float((G ** 2).sum())
    if tr <= 0:
        raise ValueError("features_c is all zeros: the kernel has zero trace, so no ridge scale exists; "
                         "pass lam explicitly.")
    return float(lam_rel) * tr / G.shape[0]


def leverage_scores(features_c, lam: float | None = None, lam_rel: float = 1e-3) -> torch.Tensor:
    """Ridge leverage scores ``l_i = (K (K + λI)⁻¹)_{ii}`` of ``K = G Gᵀ`` (SPEC §4.3), ``(N,)`` float64.

    Computed without ``K``: ``l_i = g_iᵀ (GᵀG + λI)⁻¹ g_i`` (Woodbury) with one ``k×k`` Cholesky.
    λ defaults to ``lam_rel · tr(K)/N`` (the KRR default of SPEC §1).
    """
    G = _check_features_c(features_c)
    lam = _ridge(G, lam, lam_rel)
    k = G.shape[1]
    L = torch.linalg.cholesky(G.T @ G + lam * torch.eye(k, dtype=torch.float64))
    Z = torch.linalg.solve_triangular(L, G.T, upper=False)            # (k, N)
    return (Z ** 2).sum(0)


def _fps(G: torch.Tensor, m: int, start: int) -> torch.Tensor:
    """Greedy k-center: each step the row farthest (Euclidean) from the chosen set; ties → lowest index."""
    sq = (G ** 2).sum(1)
    chosen = [start]
    mind = (sq - 2 * G @ G[start] + sq[start]).clamp_min(0.0)
    mind[start] = -np.inf
    for _ in range(m - 1):
        i = int(torch.argmax(mind))
        chosen.append(i)
        d = (sq - 2 * G @ G[i] + sq[i]).clamp_min(0.0)
        mind = torch.minimum(mind, d)
        mind[chosen] = -np.inf
    return torch.tensor(chosen, dtype=torch.int64)


def _kmeans_rows(G: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=m, n_init=1, random_state=seed).fit(G.numpy())
    centres = torch.from_numpy(km.cluster_centers_).to(torch.float64)
    d = torch.cdist(centres, G)                                        # (m, N)
    used, out = set(), []
    for row in torch.argsort(d, dim=1):
        i = next(int(x) for x in row if int(x) not in used)
        used.add(i)
        out.append(i)
    return torch.tensor(out, dtype=torch.int64)


def select(method: str, features_c, budget: int, seed: int = 0, lam: float | None = None,
           lam_rel: float = 1e-3, start: int | None = None, scores=None) -> Selection:
    """A baseline compressed set of ``budget`` rows for one class (SPEC §4.3), from ``features_c (N, k)``.

    method: ``"random"`` (seeded), ``"leverage"`` (top-m ridge leverage scores, λ as in
    :func:`leverage_scores`), ``"leverage_sampled"`` (m rows without replacement, ∝ scores, seeded),
    ``"fps"`` (greedy k-center from a seeded random start, or ``start``), ``"kmeans"`` (k-means with m
    centres, seeded; the nearest unused real row to each centre) or ``"pca"`` (the top-m global
    eigenvectors as coefficients: the rank-m KRR reference, not a row selection).
    scores: precomputed :func:`leverage_scores` ``(N,)`` to reuse across budgets and seeds (leverage only).
    Returns a :class:`Selection`.
    """
    if method not in SELECT_METHODS:
        raise ValueError(f"method must be one of {SELECT_METHODS}, got {method!r}.")
    G = _check_features_c(features_c)
    n = G.shape[0]
    budget = _check_int(budget, "budget", 1)
    if budget > n:
        raise ValueError(f"budget ({budget}) exceeds the number of rows N ({n}).")
    seed = int(seed)
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        return Selection(method, torch.randperm(n, generator=gen)[:budget])
    if method in ("leverage", "leverage_sampled"):
        if scores is None:
            scores = leverage_scores(G, lam=lam, lam_rel=lam_rel)
        else:
            scores = _as_tensor(scores, "scores").to(torch.float64)
            if scores.shape != (n,) or not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
                raise ValueError(f"scores must be finite leverage scores >= 0 of shape ({n},), "
                                 f"got shape {tuple(scores.shape)}.")
        if method == "leverage":
            idx = torch.sort(-scores, stable=True).indices[:budget]
        else:
            idx = torch.multinomial(scores.clamp_min(0.0), budget, replacement=False, generator=gen)
        return Selection(method, idx, scores=scores)
    if method == "fps":
        if start is None:
            start = int(torch.randint(n, (1,), generator=gen))
        elif isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < n:
            raise ValueError(f"start must be a row index in [0, {n}), got {start!r}.")
        return Selection(method, _fps(G, budget, int(start)))
    if method == "kmeans":
        return Selection(method, _kmeans_rows(G, budget, seed))
    eig = _Eig(G, dense=False)
    if budget > eig.rank:
        raise ValueError(f"budget ({budget}) exceeds the numerical rank of features_c ({eig.rank}); "
                         "pca has no further directions.")
    return Selection(method, None, V=eig.vectors(budget))
