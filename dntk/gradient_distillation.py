"""Algorithm 1 (local–global gradient distillation) and the paper's main experiment (appendix §4.3).

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
  are round-off (the rule of :mod:`dntk.linalg`, whose :func:`~dntk.linalg.gram_eig` both paths call)
  and never selected.

Step 6 uses classical Gram–Schmidt applied twice (CGS2) rather than MGS: the same keep/drop decisions
in exact arithmetic, orthogonal to working precision, and it runs as matrix products.

The row-selection baselines (``random``, ``leverage``, ``fps``, ``kmeans``, ``pca``) live in
:mod:`dntk.baselines` (``select`` is re-exported here); :func:`compare` runs the paper's main experiment
(Sec 5.3, Figs 1 and 6): Algorithm 1 against every baseline at equal budgets, scored by KRR accuracy,
fidelity, coverage and Nyström error.

Every eigenvector is sign-normalised (its largest-magnitude entry is positive), so both paths return
the same vectors, not only the same spans.
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from ._common import check_finite, check_int, progress_bar, real_tensor, torch_threads
from .baselines import SEEDED_METHODS, SELECT_METHODS, Selection, leverage_scores, select
from .linalg import gram, gram_eig, gram_matrix_eig, sign_normalise

log = logging.getLogger("dntk")

__all__ = [
    "local_global", "local_global_grid", "local_global_streamed", "class_major_reader", "LocalGlobalResult",
    "ClassSynthesis", "DEFAULT_TOL",
    "score", "Score", "compare", "Comparison", "ComparisonRow", "COMPARE_METHODS", "METHOD_LABELS",
    # re-exported from dntk.baselines
    "select", "Selection", "leverage_scores", "SELECT_METHODS", "SEEDED_METHODS",
]

#: Residual norm below which a unit candidate is dropped in step 6 (it lies in the span of the
#: vectors before it). Far above the round-off of both paths (~1e-12), far below real directions.
DEFAULT_TOL = 1e-6
_PATHS = ("auto", "dense", "matrix_free")
_LOCAL, _GAP = 0, 1


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassSynthesis:
    """Algorithm 1's output for one class (appendix §4.3, steps 2–6).

    G_syn: ``(m, k)`` float64 synthetic gradients ``Vᵀ G̃_c``; t_syn: ``(m,)`` ``Vᵀ t_c``;
    V: ``(N, m)`` orthonormal coefficients. r: global truncation rank ``r(τ)``; r_j: ``(M,)`` local
    ranks; eigvals: ``(r,)`` top global eigenvalues; A: ``(r,)`` alignments ``A_i``; gaps: 0-based
    indices ``i < r`` with ``A_i < γ``. source: ``(m, 2)`` int64, per column ``(cluster j, eigen
    index)`` for a local vector and ``(-1, i)`` for a gap; source_eigval: ``(m,)`` the eigenvalue each
    column was ordered by (non-increasing). n_local / n_gap: kept columns of each kind; n_candidates:
    candidates entering step 6 (``Σ_j r_j + |gaps|``).
    trace: ``tr(K̃_c) = ‖G̃_c‖_F²`` of the uncompressed class kernel (for λ, appendix §4.3); n: N.
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
        return int(self.G_syn.shape[0])


def _per_class(attribute: str, doc: str) -> property:
    """A read-only attribute listing ``ClassSynthesis.<attribute>`` of every class, documented by `doc`."""
    return property(lambda self: [getattr(cs, attribute) for cs in self.classes], doc=doc)


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

    G_syn = _per_class("G_syn", "Per class ``(m_c, k)`` synthetic gradients.")
    t_syn = _per_class("t_syn", "Per class ``(m_c,)`` synthetic targets.")
    m = _per_class("m", "Per class number of synthetic gradients.")
    traces = _per_class("trace", "Per class ``tr(K̃_c)`` of the uncompressed kernel.")

    def counts(self) -> dict:
        """Totals over classes: synthetic gradients, local and gap ones."""
        return {"m": sum(self.m), "local": sum(cs.n_local for cs in self.classes),
                "gap": sum(cs.n_gap for cs in self.classes)}


# ----------------------------------------------------------------------------- validation


def _float_tensor(x, name: str) -> torch.Tensor:
    x = real_tensor(x, name)
    return x if x.is_floating_point() else x.to(torch.float64)


def _check_unit_interval(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 < float(v) <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {v!r}.")
    return float(v)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0.0 < float(tol) < 1.0):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}.")
    return float(tol)


def _check_inputs(features, targets):
    features = _float_tensor(features, "features")
    if features.ndim != 3:
        raise ValueError(f"features must have shape (N, C, k), got {tuple(features.shape)}.")
    n, c, k = features.shape
    if n == 0 or c == 0 or k == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}.")
    check_finite(features, "features")
    targets = _float_tensor(targets, "targets")
    if targets.ndim != 2 or targets.shape[1] != c:
        raise ValueError(f"targets must have shape (N, C) = (N, {c}), got {tuple(targets.shape)}.")
    if targets.shape[0] != n:
        raise ValueError(f"features and targets have different N ({n} and {targets.shape[0]}); "
                         "pass targets for the same points as the features.")
    check_finite(targets, "targets")
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
    """``r(τ) = min{r : Σ_{i≤r} λ_i ≥ τ Σ_i λ_i}`` (appendix §2, Def 3.1) of non-increasing ``λ ≥ 0``."""
    from dntk.spectral import truncation_rank
    if eigvals.numel() == 0 or float(eigvals.max()) <= 0.0:
        return 0
    return int(truncation_rank(eigvals, tau))


#: Symmetric eigenproblems up to this size run on one torch thread: at this size (``eigh`` of ``k×k``,
#: Gram–Schmidt on single vectors) extra threads gain little, and on an oversubscribed CPU every parallel
#: region waits for a descheduled thread (measured on a shared 2-core machine: ``eigh`` of 512×512 took 9×
#: longer with two threads than with one).
_SMALL_EIGH = 1024


def _eig(G: torch.Tensor, dense: bool, gram_matrix: torch.Tensor | None = None):
    """Eigenpairs of ``K = G Gᵀ`` (:func:`dntk.linalg.gram_eig`): the ``n×n`` kernel when ``dense`` (the
    reference) or ``n ≤ k``, else the ``k×k`` Gram (optionally precomputed as ``gram_matrix``)."""
    n, k = G.shape
    side = "left" if (dense or n <= k) else "right"
    with torch_threads(1 if (n if side == "left" else k) <= _SMALL_EIGH else None):
        return gram_eig(G, side=side, gram_matrix=gram_matrix)


def _vectors(eig, r: int) -> torch.Tensor:
    """The top ``r`` sign-normalised unit eigenvectors ``(n, r)`` of ``K`` (``r ≤`` the numerical rank)."""
    return sign_normalise(eig.left_vectors(r))


def _rank(eig, tau: float) -> int:
    return min(_truncation_rank(eig.eigenvalues, tau), eig.rank)


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
        with torch_threads(1):
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


def _class_synthesis(G_syn, t_syn, V, r, rj, lam, A, gaps, kept, n_candidates, trace, n) -> ClassSynthesis:
    """A :class:`ClassSynthesis` from step 6's output and the kept candidates ``(kind, cluster, index, λ)``."""
    return ClassSynthesis(
        G_syn=G_syn, t_syn=t_syn, V=V, r=r, r_j=torch.tensor(rj, dtype=torch.int64), eigvals=lam.clone(), A=A,
        gaps=gaps, source=torch.tensor([[j, l] for _, j, l, _ in kept], dtype=torch.int64).reshape(-1, 2),
        source_eigval=torch.tensor([e for *_, e in kept], dtype=torch.float64),
        n_local=sum(1 for c in kept if c[0] == _LOCAL), n_gap=sum(1 for c in kept if c[0] == _GAP),
        n_candidates=n_candidates, trace=trace, n=n)


def _candidates(glob, loc, C, tau: float, gamma: float):
    """Steps 2–5 from the spectra: ranks, alignments, gaps and the ordered candidates of step 6.

    ``glob``/``loc``: :class:`dntk.linalg.GramEig` of the class and of each cluster; ``C[j] (rj_max, r_max)``
    the overlaps ``U^{(j)ᵀ} u_i[S_j]``. Returns ``(r, r_j, λ_{1..r}, A (r,), gaps, candidates)``, candidates
    ``(kind, cluster, index, eigenvalue)`` in step 6's order (eigenvalue non-increasing).
    """
    r = _rank(glob, tau)
    rj = [_rank(e, tau) for e in loc]
    lam = glob.eigenvalues[:r]
    # Step 3: A_i = Σ_j ‖U^{(j)}_{r_j}ᵀ u_i[S_j]‖², gaps = {i < r : A_i < γ}.
    A = torch.zeros(r, dtype=torch.float64)
    for j in range(len(loc)):
        A += (C[j][: rj[j], :r] ** 2).sum(0)
    gaps = torch.nonzero(A < gamma).flatten()
    # Steps 4–5: candidates (kind, cluster, index, eigenvalue); step 6 order: eigenvalue desc.
    cands = [(_LOCAL, j, l, float(loc[j].eigenvalues[l])) for j in range(len(loc)) for l in range(rj[j])]
    cands += [(_GAP, -1, int(i), float(lam[i])) for i in gaps]
    cands.sort(key=lambda c: (-c[3], c[0], c[1], c[2]))
    return r, rj, lam, A, gaps, cands



class _ClassSpectra:
    """The τ-independent eigen-decompositions of one class (global and per cluster), up to τ_max."""

    def __init__(self, G: torch.Tensor, groups: list, tau_max: float, dense: bool, inv=None):
        """``G (N, k)`` float64 with rows sorted by cluster, ``groups`` the clusters' row slices, ``inv``
        the permutation back to the caller's row order (``None``: rows are in that order already)."""
        self.G = G
        self.inv = inv
        self.n = G.shape[0]
        self.dense = dense
        self.trace = float((G ** 2).sum())                           # tr(K̃_c), for λ (appendix §4.3)
        self.groups = groups
        n, k = G.shape
        # Matrix-free: the cluster Grams G[S_j]ᵀG[S_j] sum to the global GᵀG, so form each once.
        grams = [gram(G[idx]) for idx in groups] if (not dense and n > k and groups) else None
        self.glob = _eig(G, dense, gram_matrix=sum(grams) if grams else None)
        self.r_max = _rank(self.glob, tau_max)
        self.U = _vectors(self.glob, self.r_max)                      # (N, r_max)
        self.loc, self.Uloc, self.rj_max, self.C = [], [], [], []
        for j, idx in enumerate(groups):
            e = _eig(G[idx], dense, gram_matrix=grams[j] if grams else None)
            rj = _rank(e, tau_max)
            Uj = _vectors(e, rj)                                     # (|S_j|, rj)
            self.loc.append(e)
            self.Uloc.append(Uj)
            self.rj_max.append(rj)
            self.C.append(Uj.T @ self.U[idx])                       # (rj, r_max): U^{(j)ᵀ} u_i[S_j]

    def synthesize(self, t: torch.Tensor, tau: float, gamma: float, budget, tol: float) -> ClassSynthesis:
        n = self.n
        r, rj, lam, A, gaps, cands = _candidates(self.glob, self.loc, self.C, tau, gamma)
        if self.dense:      # the reference: one explicit vector at a time
            V, kept = _gram_schmidt([self._candidates(cands, p, p + 1)[0] for p in range(len(cands))],
                                    tol, budget, n)
        else:
            V, kept = _block_gram_schmidt(lambda a, b: self._candidates(cands, a, b), len(cands), n, tol, budget)
        G_syn, t_syn = V.T @ self.G, V.T @ t
        if self.inv is not None:
            V = V[self.inv]
        return _class_synthesis(G_syn, t_syn, V, r, rj, lam, A, gaps, [cands[p] for p in kept], len(cands),
                                self.trace, n)

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
    n_clusters = check_int(n_clusters, "n_clusters", 0)
    if n_clusters > n:
        raise ValueError(f"n_clusters ({n_clusters}) exceeds the number of points N ({n}); "
                         "use at most N clusters.")
    taus = [_check_unit_interval(t, "tau") for t in taus]
    gammas = [_check_unit_interval(g, "gamma") for g in gammas]
    if budget is not None:
        budget = check_int(budget, "budget", 1)
    tol = _check_tol(tol)
    path = _resolve_path(method, n, k)
    labels, groups = _partition(features, n_clusters, labels, path, seed)
    return features, targets, n_clusters, taus, gammas, budget, tol, path, labels, groups


def local_global(features, targets, n_clusters: int, tau: float, gamma: float, budget: int | None = None,
                 method: str = "auto", seed: int = 0, tol: float = DEFAULT_TOL, labels=None,
                 progress: bool = False) -> LocalGlobalResult:
    """Algorithm 1, local–global gradient distillation (appendix §4.3, steps 1–6).

    Per class, ``G_syn = Vᵀ G̃_c`` and ``t_syn = Vᵀ t_c`` with ``V`` orthonormal: local eigenvectors of the
    cluster blocks and the global eigenvectors that no cluster explains (the gaps).

    Parameters
    ----------
    features : array ``(N, C, k)``
        Projected class gradients ``G̃_c``; finite.
    targets : array ``(N, C)``
        Targets ``t_c``; finite.
    n_clusters : int
        ``M`` clusters of the class-averaged kernel ``K̄`` (step 1, one partition for all classes), at most
        ``N``; ``0`` means no clusters — every global direction ``i ≤ r`` is then a gap (``A_i = 0``) and
        ``V = U_r``: the rank-``r`` KRR of appendix §1.
    tau : float
        Energy threshold in ``(0, 1]`` for ``r(τ)`` and ``r_j(τ)``.
    gamma : float
        Gap threshold in ``(0, 1]``: global direction ``i`` is a gap when ``A_i < γ``.
    budget : int, optional
        Keep at most this many synthetic gradients per class (the first survivors of step 6).
    method : {"auto", "dense", "matrix_free"}
        ``"dense"``: ``eigh`` of ``N×N`` kernels (the reference); ``"matrix_free"``: eigenpairs from the
        ``k×k`` Grams (:func:`dntk.linalg.gram_eig`), never ``N×N``; ``"auto"``: dense iff ``N ≤ k``.
    seed : int
        Seed of the spectral clustering (step 1).
    tol : float
        A candidate whose Gram–Schmidt residual norm is below ``tol`` is dropped (step 6).
    labels : array ``(N,)`` of int, optional
        A precomputed partition with values ``0..M-1`` (skips step 1).
    progress : bool
        Show a progress bar over classes.

    Returns
    -------
    LocalGlobalResult
        ``result[c]`` holds ``G_syn (m_c, k)``, ``t_syn (m_c,)``, ``V (N, m_c)`` with ``VᵀV = I`` and the
        diagnostics.
    """
    res = local_global_grid(features, targets, n_clusters, [tau], [gamma], budget=budget, method=method,
                            seed=seed, tol=tol, labels=labels, progress=progress)
    return res[(float(tau), float(gamma))]


def local_global_grid(features, targets, n_clusters: int, taus, gammas, budget: int | None = None,
                      method: str = "auto", seed: int = 0, tol: float = DEFAULT_TOL, labels=None,
                      progress: bool = False) -> dict:
    """Algorithm 1 for every ``(τ, γ)`` of a grid, sharing the partition and eigendecompositions (appendix §4.3).

    The grid search of the paper's App E.2 (Fig 9). Each entry equals what :func:`local_global` returns for
    that pair.

    Parameters
    ----------
    features, targets, n_clusters, budget, method, seed, tol, labels, progress
        As in :func:`local_global`.
    taus, gammas : sequence of float
        The thresholds to combine, each in ``(0, 1]``.

    Returns
    -------
    dict
        ``{(tau, gamma): LocalGlobalResult}`` for every pair.
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




# ----------------------------------------------------------------------------- out of core


def _class_statistics(read_class, c: int, n: int, labels: torch.Tensor, n_clusters: int, t: torch.Tensor,
                      block_rows: int):
    """One pass over class ``c``'s rows: per-cluster Grams ``G[S_j]ᵀG[S_j] (M, k, k)`` and moments
    ``G[S_j]ᵀ t[S_j] (M, k)``, float64, reading ``block_rows`` rows at a time."""
    grams = moments = None
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        name = f"read_class({c}, {start}, {stop})"
        B = real_tensor(read_class(c, start, stop), name)
        if B.ndim != 2 or B.shape[0] != stop - start or (grams is not None and B.shape[1] != grams.shape[1]):
            raise ValueError(f"{name} must return an array of shape ({stop - start}, k) with the same k for every "
                             f"block, got {tuple(B.shape)}.")
        check_finite(B, name)
        B = B.to(torch.float64)
        if grams is None:
            k = B.shape[1]
            grams = torch.zeros(n_clusters, k, k, dtype=torch.float64)
            moments = torch.zeros(n_clusters, k, dtype=torch.float64)
        lab = labels[start:stop]
        perm = torch.argsort(lab, stable=True)
        B, tb = B[perm], t[start:stop][perm]
        ends = torch.cumsum(torch.bincount(lab, minlength=n_clusters), 0).tolist()
        for j, (a, b) in enumerate(zip([0] + ends[:-1], ends)):
            if b > a:
                grams[j] += gram(B[a:b].contiguous())
                moments[j] += B[a:b].T @ tb[a:b]
    return grams, moments


def _synthesize_from_statistics(grams, moments, sizes, tau: float, gamma: float, budget, tol: float):
    """Steps 2–6 for one class from its per-cluster Grams and moments alone (see :func:`local_global_streamed`)."""
    n = int(sum(sizes))
    total = grams.sum(0)
    glob = gram_matrix_eig(total, n)
    loc = [gram_matrix_eig(grams[j], sizes[j]) for j in range(len(sizes))]
    r_all = glob.rank
    # Unit eigenvectors of K and K[S_j] are G x with x = v/σ; their overlaps in k-space:
    # U^{(j)ᵀ} u_i[S_j] = x^{(j)ᵀ} G[S_j]ᵀG[S_j] x_i = (σ^{(j)}/σ_i) w^{(j)ᵀ} v_i.
    V, sv = glob.basis[:, :r_all], glob.eigenvalues[:r_all].sqrt()
    X_loc = [e.basis[:, :e.rank] / e.eigenvalues[:e.rank].sqrt() for e in loc]
    C = [(e.basis[:, :e.rank].T @ V) * (e.eigenvalues[:e.rank].sqrt()[:, None] / sv[None, :]) for e in loc]
    r, rj, lam, A, gaps, cands = _candidates(glob, loc, C, tau, gamma)
    # Step 6 as a Cholesky of the candidates' Gram matrix (classical Gram–Schmidt in its inner product):
    # local-local products vanish across clusters, local-gap ones are x^{(j)ᵀ} Gram_j x_i.
    X = [(X_loc[j][:, l], j) if kind == _LOCAL else (V[:, l] / sv[l], -1) for kind, j, l, _ in cands]
    cap = min(n, len(X) if budget is None else min(budget, len(X)))
    L = torch.zeros(cap, cap, dtype=torch.float64)
    kept = []
    def inner(q, x, j):         # ⟨cand_q, cand_p⟩ over the intersection of their supports
        xq, jq = X[q]
        if j >= 0 and jq >= 0:
            return float(xq @ (grams[j] @ x)) if jq == j else 0.0
        return float(xq @ ((grams[max(j, jq)] if max(j, jq) >= 0 else total) @ x))

    for p, (x, j) in enumerate(X):
        if len(kept) >= cap:
            break
        Gx = (grams[j] if j >= 0 else total) @ x
        b = torch.tensor([inner(q, x, j) for q in kept], dtype=torch.float64)
        m = len(kept)
        y = torch.linalg.solve_triangular(L[:m, :m], b[:, None], upper=False)[:, 0] if m else b
        res2 = float(x @ Gx) - float(y @ y)
        if res2 < tol * tol:
            continue
        L[m, :m], L[m, m] = y, res2 ** 0.5
        kept.append(p)
    m = len(kept)
    L = L[:m, :m]
    # V_syn = Cand L⁻ᵀ, so G_syn = L⁻¹ Candᵀ G and t_syn = L⁻¹ Candᵀ t, with Cand_pᵀ G = x_pᵀ Gram_{S(p)}.
    P = torch.stack([(grams[X[p][1]] if X[p][1] >= 0 else total) @ X[p][0] for p in kept]) if m else \
        torch.zeros(0, total.shape[0], dtype=torch.float64)
    q = torch.tensor([float(X[p][0] @ (moments[X[p][1]] if X[p][1] >= 0 else moments.sum(0))) for p in kept],
                     dtype=torch.float64)
    G_syn = torch.linalg.solve_triangular(L, P, upper=False) if m else P
    t_syn = torch.linalg.solve_triangular(L, q[:, None], upper=False)[:, 0] if m else q
    return _class_synthesis(G_syn, t_syn, None, r, rj, lam, A, gaps, [cands[p] for p in kept], len(cands),
                            float(torch.diagonal(total).sum()), n)


def local_global_streamed(read_class, n: int, n_classes: int, targets, labels, tau: float, gamma: float,
                          budget: int | None = None, tol: float = DEFAULT_TOL, block_rows: int = 65536,
                          progress: bool = False) -> LocalGlobalResult:
    """Algorithm 1 out of core: steps 2–6 from one pass over each class's rows, one class at a time (appendix §4.3).

    Algorithm 1 depends on a class's features ``G̃_c (N, k)`` only through the per-cluster Gram matrices
    ``Γ_j = G̃_c[S_j]ᵀ G̃_c[S_j] (k, k)`` and moments ``b_j = G̃_c[S_j]ᵀ t_c[S_j] (k,)``: the eigenpairs of
    ``K̃_c`` and ``K̃_c[S_j, S_j]`` come from ``Σ_j Γ_j`` and ``Γ_j`` (:func:`dntk.linalg.gram_matrix_eig`), every
    candidate of step 6 is ``G̃ x`` restricted to its support, so their inner products are ``xᵀ Γ x'`` and the
    Gram–Schmidt of step 6 is a Cholesky factorisation of the candidates' Gram matrix; and
    ``G_syn = L⁻¹ Candᵀ G̃_c``, ``t_syn = L⁻¹ Candᵀ t_c`` need only ``xᵀ Γ`` and ``xᵀ b``. So the class is read
    once, ``block_rows`` rows at a time, and memory is ``O(M k² + block_rows·k)``: no ``N×N`` and no ``N×k``
    matrix. The result equals :func:`local_global` on the same partition up to the sign of each synthetic
    gradient (the inner products are formed from Grams, so round-off grows with ``λ_1/λ`` of the candidates;
    decisions can differ only for a candidate whose Gram–Schmidt residual lies within round-off of ``tol``).

    Parameters
    ----------
    read_class : callable ``(c, start, stop) -> array (stop − start, k)``
        Rows ``start..stop-1`` of class ``c``'s features (e.g. from a class-major memmap, see
        :func:`class_major_reader`); finite.
    n : int
        Number of points ``N``.
    n_classes : int
        Number of classes ``C``.
    targets : array ``(N, C)``
        Targets ``t_c``; finite.
    labels : array ``(N,)`` of int
        The partition of step 1, values ``0..M-1`` (e.g. from :func:`dntk.spectral.spectral_clusters`).
    tau, gamma, budget, tol
        As in :func:`local_global`.
    block_rows : int
        Rows read at a time.
    progress : bool
        Show a progress bar over classes.

    Returns
    -------
    LocalGlobalResult
        As from :func:`local_global`, except ``V`` is ``None`` in every class (it would be ``N×m``) and
        ``method == "streamed"``.
    """
    n = check_int(n, "n", 1)
    n_classes = check_int(n_classes, "n_classes", 1)
    block_rows = check_int(block_rows, "block_rows", 1)
    if not callable(read_class):
        raise TypeError(f"read_class must be a callable (c, start, stop) -> rows, got {type(read_class).__name__}.")
    T = _float_tensor(targets, "targets")
    if T.shape != (n, n_classes):
        raise ValueError(f"targets must have shape (N, C) = ({n}, {n_classes}), got {tuple(T.shape)}.")
    check_finite(T, "targets")
    T = T.to(torch.float64)
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    n_clusters = int(lab.max()) + 1 if lab.numel() and not lab.is_floating_point() else 0
    labels = _check_labels(lab, n, max(n_clusters, 1))
    tau, gamma = _check_unit_interval(tau, "tau"), _check_unit_interval(gamma, "gamma")
    if budget is not None:
        budget = check_int(budget, "budget", 1)
    tol = _check_tol(tol)
    sizes = torch.bincount(labels, minlength=n_clusters).tolist()
    classes, k = [], None
    bar = progress_bar(n_classes, "Algorithm 1 (streamed)", progress)
    for c in range(n_classes):
        grams, moments = _class_statistics(read_class, c, n, labels, n_clusters, T[:, c], block_rows)
        if k is not None and grams.shape[1] != k:
            raise ValueError(f"class {c} has feature width {grams.shape[1]} but class 0 has {k}.")
        k = grams.shape[1]
        with torch_threads(1 if k <= _SMALL_EIGH else None):
            classes.append(_synthesize_from_statistics(grams, moments, sizes, tau, gamma, budget, tol))
        bar.update(1)
    bar.close()
    return LocalGlobalResult(classes=tuple(classes), labels=labels, n_clusters=n_clusters, tau=tau, gamma=gamma,
                             budget=budget, method="streamed",
                             settings={"N": n, "C": n_classes, "k": k, "tol": tol, "block_rows": block_rows})


def class_major_reader(path, n: int, n_classes: int, k: int, dtype="float32"):
    """A ``read_class`` for :func:`local_global_streamed` over a raw class-major file ``(C, N, k)``.

    Each call maps only the requested rows and unmaps them on return, so the pages read do not stay in
    the process's resident memory.

    Parameters
    ----------
    path : str or os.PathLike
        A file of ``C·N·k`` values of ``dtype``, class-major (class ``c``'s ``N×k`` block contiguous).
    n, n_classes, k : int
        ``N``, ``C`` and ``k``.
    dtype : str
        numpy dtype of the file.

    Returns
    -------
    callable
        ``read(c, start, stop) -> numpy.ndarray (stop − start, k)`` (a copy).
    """
    import os

    dt = np.dtype(dtype)
    size = os.path.getsize(path)
    if size != n * n_classes * k * dt.itemsize:
        raise ValueError(f"{path} holds {size} bytes, but a ({n_classes}, {n}, {k}) {dt} array needs "
                         f"{n * n_classes * k * dt.itemsize}; check N, C, k and the dtype.")

    def read(c: int, start: int, stop: int) -> np.ndarray:
        offset = ((c * n + start) * k) * dt.itemsize
        mm = np.memmap(path, dtype=dt, mode="r", offset=offset, shape=(stop - start, k))
        out = np.array(mm)
        del mm
        return out

    return read


# ----------------------------------------------------------------------------- the main experiment

#: Methods accepted by :func:`compare`: Algorithm 1 and every baseline of :mod:`dntk.baselines`.
COMPARE_METHODS = ("local_global",) + SELECT_METHODS
#: Display names of the methods (for tables and legends).
METHOD_LABELS = {"local_global": "Algorithm 1", "pca": "PCA (rank m)", "random": "random",
                 "leverage": "leverage (top)", "leverage_sampled": "leverage (sampled)", "fps": "FPS",
                 "kmeans": "k-means"}
_COMPARE_METRICS = ("accuracy", "fidelity", "coverage", "nystrom_error")


@dataclass(frozen=True)
class Score:
    """How well one compressed set stands in for the uncompressed one (see :func:`score`).

    Attributes
    ----------
    accuracy, fidelity : float
        Test accuracy and agreement with the network's argmax of per-class KRR on the compressed set.
    coverage, nystrom_error : float or None
        Mean over classes of :func:`dntk.metrics.coverage` and :func:`dntk.metrics.nystrom_error` against
        the uncompressed features (``None`` when :func:`score` was not given them).
    """

    accuracy: float
    fidelity: float
    coverage: float | None = None
    nystrom_error: float | None = None


def score(G_syn, t_syn, lam, test_features, test_labels, test_logits, features=None) -> Score:
    """Score one compressed set: KRR on it, evaluated on a test set (the paper's protocol, Sec 5.3).

    Fits ``w_c = (G_synᵀ G_syn + λ_c I)⁻¹ G_synᵀ t_syn`` per class (appendix §4.3;
    :meth:`dntk.krr.ClassKRR.fit_synthetic`) with ``λ`` of the *uncompressed* set, predicts
    ``f̂_c(x) = g̃_c(x)ᵀ w_c`` at the test points (appendix eq. (18)) and reports accuracy and fidelity;
    with ``features``, also how much of the uncompressed kernel the compressed set spans.

    Parameters
    ----------
    G_syn : list of C arrays ``(m_c, k)``
        The compressed gradients per class (e.g. ``LocalGlobalResult.G_syn``).
    t_syn : list of C arrays ``(m_c,)``
        Their targets.
    lam : float or array ``(C,)``
        Per-class ridge, normally :func:`dntk.krr.default_lam` of the uncompressed features.
    test_features : array ``(M, C, k)``
        Projected class gradients of the test points.
    test_labels : array ``(M,)``
        Integer test labels.
    test_logits : array ``(M, C)``
        The network's test logits.
    features : array ``(N, C, k)``, optional
        The uncompressed features, for coverage and Nyström error.

    Returns
    -------
    Score
    """
    from . import metrics
    from .krr import ClassKRR

    pred = ClassKRR().fit_synthetic(G_syn, t_syn, lam=lam).predict(test_features)
    cov = nys = None
    if features is not None:
        G_syn = list(G_syn)
        cov = float(metrics.coverage(features, G_syn).mean())
        nys = float(metrics.nystrom_error(features, G_syn).mean())
    return Score(accuracy=metrics.accuracy(pred, test_labels), fidelity=metrics.fidelity(pred, test_logits),
                 coverage=cov, nystrom_error=nys)


@dataclass(frozen=True)
class ComparisonRow:
    """One compressed set of :func:`compare`, scored on the test set.

    A row of the comparison table: the method, its budget and seed, then its scores (the same ridge and
    test points for every row, so rows compare).

    Attributes
    ----------
    method : str
        One of :data:`COMPARE_METHODS`.
    m : int
        The budget (gradients per class).
    seed : int or None
        The seed of a randomised baseline; ``None`` for the deterministic methods.
    accuracy, fidelity : float
        KRR on the compressed set (ridge of the uncompressed set), test accuracy and agreement with the
        network's argmax.
    coverage, nystrom_error : float
        :func:`dntk.metrics.coverage` and :func:`dntk.metrics.nystrom_error` of the compressed set against
        the uncompressed training features, averaged over the classes.
    n_local, n_gap : int or None
        Algorithm 1 only: local and gap gradients kept, summed over the classes.
    """

    method: str
    m: int
    seed: int | None
    accuracy: float
    fidelity: float
    coverage: float
    nystrom_error: float
    n_local: int | None = None
    n_gap: int | None = None


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`: one :class:`ComparisonRow` per method, budget and seed.

    Attributes
    ----------
    rows : tuple of ComparisonRow
    budgets : tuple of int
    methods : tuple of str
    full : dntk.metrics.Report
        KRR on the whole uncompressed training set, on the same test set (the ceiling).
    lam : torch.Tensor
        ``(C,)`` the per-class ridge ``λ_c`` used by every fit (appendix §1, §4.3).
    result : LocalGlobalResult or None
        Algorithm 1 at the largest budget (a smaller budget keeps a prefix of it), if it was compared.
    """

    rows: tuple
    budgets: tuple
    methods: tuple
    full: object
    lam: torch.Tensor
    result: LocalGlobalResult | None = None

    def values(self, method: str, metric: str) -> np.ndarray:
        """``(len(budgets), n_seeds)`` values of one metric for one method (``n_seeds = 1`` if deterministic)."""
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not compared; compared: {self.methods}.")
        if metric not in _COMPARE_METRICS:
            raise ValueError(f"metric must be one of {_COMPARE_METRICS}, got {metric!r}.")
        return np.array([[getattr(r, metric) for r in self.rows if r.method == method and r.m == m]
                         for m in self.budgets], dtype=np.float64)

    def summary(self, metric: str) -> dict:
        """``{method: (mean, min, max)}``, each ``(len(budgets),)``, over the seeds of one metric."""
        out = {}
        for method in self.methods:
            v = self.values(method, metric)
            out[method] = (v.mean(1), v.min(1), v.max(1))
        return out

    def counts(self) -> dict:
        """Algorithm 1's ``{m: (local, gap)}`` gradients kept per budget, summed over the classes."""
        return {r.m: (r.n_local, r.n_gap) for r in self.rows if r.method == "local_global"}

    def table(self, metric: str) -> str:
        """A plain-text table of one metric: a row per method (mean over seeds), a column per budget."""
        lines = [f"{metric} (mean over seeds where seeded)",
                 f"{'method':<22}" + "".join(f"{'m=' + str(m):>8}" for m in self.budgets)]
        for method, (mean, _, _) in self.summary(metric).items():
            lines.append(f"{METHOD_LABELS[method]:<22}" + "".join(f"{v:>8.3f}" for v in mean))
        return "\n".join(lines)


def compare(features, targets, test_features, test_labels, test_logits, budgets,
            methods=COMPARE_METHODS, seeds=(0,), *, n_clusters: int = 10, tau: float = 0.95,
            gamma: float = 0.9, labels=None, lam_rel: float = 1e-3, seed: int = 0,
            progress: bool = False) -> Comparison:
    """Algorithm 1 against the row-selection baselines at equal budgets (the paper's Sec 5.3, Figs 1 and 6).

    For every method and budget ``m`` a compressed training set per class is built — ``(Vᵀ G̃_c, Vᵀ t_c)``
    for Algorithm 1 and ``pca``, ``(G̃_c[I], t_c[I])`` for the row selections — and scored identically:
    per-class KRR on it with the ridge of the *uncompressed* set, ``λ_c = lam_rel · tr(K̃_c)/N``
    (appendix §1, §4.3), predicting from the test features; test accuracy, fidelity, and the coverage and
    Nyström error (appendix §3 eq. (10)) of the compressed set, averaged over classes.

    Parameters
    ----------
    features : array ``(N, C, k)``
        Projected class gradients ``G̃`` of the training (or distilled) set.
    targets : array ``(N, C)``
        Regression targets ``t`` (normally the network's logits).
    test_features : array ``(M, C, k)``
        Projected class gradients of the test points (same projector).
    test_labels : array ``(M,)``
        Integer test labels (for accuracy).
    test_logits : array ``(M, C)``
        The network's test logits (for fidelity).
    budgets : sequence of int
        Gradients per class ``m``, each in ``[1, N]``.
    methods : sequence of str
        A subset of :data:`COMPARE_METHODS`.
    seeds : sequence of int
        Seeds of the randomised baselines (:data:`dntk.baselines.SEEDED_METHODS`); the deterministic
        methods run once.
    n_clusters, tau, gamma : int, float, float
        Algorithm 1's ``M``, ``τ`` and ``γ`` (see :func:`local_global`); Algorithm 1 runs once at the
        largest budget and each smaller budget keeps a prefix of its ``V`` (step 6).
    labels : array ``(N,)``, optional
        A precomputed partition for Algorithm 1's step 1 (default: spectral clustering with ``seed``).
    lam_rel : float
        Relative ridge, for KRR and the leverage scores.
    seed : int
        Seed of Algorithm 1's clustering.
    progress : bool
        Show a progress bar over methods.

    Returns
    -------
    Comparison
        Frozen: ``rows`` (method, m, seed, accuracy, fidelity, coverage, nystrom_error), the full-KRR
        ceiling ``full``, and helpers ``values``/``summary``/``table``/``counts``.

    Examples
    --------
    >>> res = compare(G_tr, f_tr, G_te, y_te, f_te, [1, 2, 5, 10], seeds=(0, 1, 2), n_clusters=10,
    ...               labels=labels)                                             # doctest: +SKIP
    >>> mean, lo, hi = res.summary("fidelity")["local_global"]                   # doctest: +SKIP
    >>> print(res.table("accuracy")); res.counts(); res.full.accuracy             # doctest: +SKIP
    """
    from . import metrics
    from .krr import ClassKRR, default_lam

    features, targets = _check_inputs(features, targets)
    N, C, _ = features.shape
    methods = tuple(methods)
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be a non-empty subset of {COMPARE_METHODS}, got unknown {unknown}.")
    budgets = tuple(check_int(m, "budgets", 1) for m in np.atleast_1d(np.asarray(budgets, dtype=object)))
    if not budgets or max(budgets) > N:
        raise ValueError(f"budgets must be a non-empty list of integers in [1, N = {N}], got {list(budgets)}.")
    seeds = tuple(int(check_int(s, "seeds", 0)) for s in seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed.")
    lam = default_lam(features, lam_rel)
    G64, T64 = features.to(torch.float64), targets.to(torch.float64)

    def row(method, m, s, sets, n_local=None, n_gap=None):
        sc = score([a for a, _ in sets], [b for _, b in sets], lam, test_features, test_labels, test_logits,
                   features=G64)
        return ComparisonRow(method=method, m=m, seed=s, accuracy=sc.accuracy, fidelity=sc.fidelity,
                             coverage=sc.coverage, nystrom_error=sc.nystrom_error, n_local=n_local, n_gap=n_gap)

    full_pred = ClassKRR(lam_rel=lam_rel).fit(G64, T64).predict(test_features)
    full = metrics.report(full_pred, test_labels, test_logits)
    rows, result = [], None
    bar = progress_bar(len(methods), "compare", progress)
    for method in methods:
        if method == "local_global":
            result = local_global(G64, T64, n_clusters, tau=tau, gamma=gamma, budget=max(budgets), seed=seed,
                                  labels=labels)
            for m in budgets:
                cs = result.classes
                rows.append(row(method, m, None, [(c.G_syn[:m], c.t_syn[:m]) for c in cs],
                                  n_local=sum(int((c.source[:m, 0] >= 0).sum()) for c in cs),
                                  n_gap=sum(int((c.source[:m, 0] < 0).sum()) for c in cs)))
        elif method == "pca":
            V = [select("pca", G64[:, c], max(budgets)).V for c in range(C)]
            for m in budgets:
                rows.append(row(method, m, None, [(V[c][:, :m].T @ G64[:, c], V[c][:, :m].T @ T64[:, c])
                                                    for c in range(C)]))
        else:
            lev = ([leverage_scores(G64[:, c], lam_rel=lam_rel) for c in range(C)]
                   if method.startswith("leverage") else [None] * C)
            for m in budgets:
                for s in (seeds if method in SEEDED_METHODS else (None,)):
                    sets = [select(method, G64[:, c], m, seed=0 if s is None else s, lam_rel=lam_rel,
                                   scores=lev[c]).apply(G64[:, c], T64[:, c]) for c in range(C)]
                    rows.append(row(method, m, s, sets))
        bar.update(1)
    bar.close()
    return Comparison(rows=tuple(rows), budgets=budgets, methods=methods, full=full, lam=lam, result=result)
