# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Local–global gradient distillation (Algorithm 1)
#
# After dataset distillation and a random projection, each class $c$ is described by a matrix of projected
# gradients $\tilde G_c \in \mathbb{R}^{N\times k}$ (row $i$ is the projected gradient of the logit $f_c$ at input
# $x_i$) and the kernel $\tilde K_c = \tilde G_c\tilde G_c^\top$. Kernel ridge regression (KRR) on these rows costs
# $O(Nk^2 + k^3)$ per class and, more importantly, every test prediction needs all $N$ rows. The paper's third
# compression stage in {cite:t}`mahowald2026dntk`, **local–global gradient distillation** (Sec 4.3, Algorithm 1), replaces the $N$ rows by a
# few *synthetic* gradients $m_c \ll N$: linear combinations $G_{\rm syn} = V^\top\tilde G_c$ of the real ones, with
# an orthonormal coefficient matrix $V\in\mathbb{R}^{N\times m_c}$ and matching synthetic targets
# $t_{\rm syn} = V^\top t_c$.
#
# The coefficient vectors are eigenvectors. Some come from **local** kernels — the blocks $\tilde K_c[S_j, S_j]$
# of clusters $S_j$ of similar inputs — and some from the **global** kernel, namely those global eigenvectors
# that no cluster explains (the *gaps*). The paper only sketches the algorithm; the book's appendix
# ({prf:ref}`a-alg-local-global` in {ref}`maths-4-3`) states every step, and this chapter walks through them on
# the digits convnet:
#
# 1. one partition of the inputs, from the class-averaged kernel;
# 2. global eigenpairs and the truncation rank $r(\tau)$;
# 3. local eigenpairs, the alignment $\mathcal A_i$ of each global direction with the local spans, and the gap set;
# 4. the local candidate coefficient vectors;
# 5. the gap candidate coefficient vectors;
# 6. orthonormalisation in order of eigenvalue, a budget, and the synthetic set;
#
# then the KRR the synthetic set gives, the two exact implementations (dense and matrix-free), and the
# special case in which Algorithm 1 *is* the rank-$r$ KRR. The comparison with sampling baselines is the next
# chapter, {doc}`10_local_global_vs_baselines`.

# %% tags=["parameters"]
per_class = 60           # training images per digit (a seeded balanced subset of the 1437; None = all)
proj_kind = "gaussian"   # JL projector (appendix §4.2)
proj_dim = 512           # projection width k
n_clusters = 10          # M, clusters of the class-averaged kernel
tau = 0.95               # energy threshold for r(τ) and r_j(τ)
gamma = 0.9              # gap threshold: global direction i is a gap if A_i < γ
budget = 5               # synthetic gradients per class for the budgeted run
show_class = 3           # the class whose spectra are plotted
lam_rel = 1e-3           # ridge λ_c = lam_rel · tr(K̃_c)/N of the uncompressed set (appendix §1, §4.3)
seed = 0
model_name = "convnet"
dataset = "digits"
device = "cpu"
progress = False

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from dntk import chapter, metrics
from dntk.gradient_distillation import local_global
from dntk.krr import ClassKRR, default_lam
from dntk.spectral import spectral_clusters

_ = torch.manual_seed(seed)
chapter.use_book_style()
for name, value in {"ch08_tau": tau, "ch08_gamma": gamma, "ch08_budget": budget, "ch08_k": proj_dim,
                    "ch08_M": n_clusters, "ch08_show_class": show_class, "ch08_lam_rel": lam_rel}.items():
    chapter.glue_number(name, value)

# %% [markdown]
# ## Projected class gradients of the digits convnet
#
# The trained convnet of every chapter, a balanced subset of the training images, the whole test split, and
# for both the per-class logit gradients projected to $k$ dimensions by a seeded Gaussian JL map
# (`dntk.chapter.projected_setup`, which calls `dntk.tangent.class_gradients` with a projector from
# `dntk.projection.make` and returns everything as one frozen record). The regression targets are
# the network's own logits, $t_{c,i} = f_c(x_i;\theta)$, as everywhere in this book.

# %%
setup = chapter.projected_setup(proj_kind, proj_dim, per_class=per_class, seed=seed, model_name=model_name,
                                dataset=dataset, device=device, progress=progress)
y_tr, y_te = setup.y_train, setup.y_test
G_tr, G_te, f_tr, f_te = setup.G_train, setup.G_test, setup.f_train, setup.f_test
N, C, k = G_tr.shape
print(f"N = {N} training points, C = {C} classes, k = {k}; {len(y_te)} test points")

# %% [markdown]
# ## Step 1 — one partition for all classes
#
# Spectral clustering {cite}`ng2002spectral` of the class-averaged kernel $\bar K = \frac1C\sum_c \tilde K_c$, with the cosine-normalised
# $\bar K$ clipped at 0 as affinity (`dntk.spectral.spectral_clusters`). The same partition $S_1,\dots,S_M$ serves
# every class, so the clusters describe the inputs, not one logit. The table shows how the clusters line up
# with the digit labels (which the clustering never sees).

# %%
labels = torch.as_tensor(spectral_clusters(G_tr, n_clusters, method="dense", seed=seed))
table = np.zeros((n_clusters, C), dtype=int)
np.add.at(table, (labels.numpy(), y_tr.numpy()), 1)
purity = table.max(1).sum() / N
print("rows: clusters, columns: digits")
print("      " + "".join(f"{d:>5}" for d in range(C)))
for j in range(n_clusters):
    print(f"S_{j:<3} " + "".join(f"{v:>5}" for v in table[j]))
print(f"purity (share of points in their cluster's majority digit): {purity:.3f}")
chapter.glue_number("ch08_purity", purity)

# %% [markdown]
# ## Steps 2 and 3 — global and local spectra, alignment and gaps
#
# For class $c$ with kernel $K = \tilde K_c$:
#
# * **global** eigenpairs $(\lambda_i, u_i)$ of $K$ and the truncation rank
#   $r = r(\tau) = \min\{r : \sum_{i\le r}\lambda_i \ge \tau\sum_i\lambda_i\}$;
# * **local** eigenpairs $(\lambda^{(j)}_i, u^{(j)}_i)$ of each block $K[S_j,S_j]$ with their own ranks $r_j(\tau)$;
# * the **alignment** $\mathcal A_i \in [0, 1]$ of global direction $i\le r$ with the union of the local top
#   eigenspaces, {eq}`eq-alignment` in the appendix: the fraction of $u_i$'s energy that the local spans capture;
# * the **gap set** $\mathcal{G} = \{i\le r : \mathcal A_i < \gamma\}$: global directions that the clusters, taken
#   one at a time, do not explain. A larger $\gamma$ makes more gaps.
#
# The alignment, written out (with $U^{(j)}_{r_j}$ the top $r_j$ local eigenvectors of cluster $j$ and $u_i[S_j]$
# the entries of $u_i$ on that cluster):
#
# $$
# \mathcal A_i = \sum_j \big\|U^{(j)\top}_{r_j}\, u_i[S_j]\big\|^2 .
# $$
#
# `local_global` returns all of these per class; {numref}`fig-ch08-spectra` shows them for digit
# {glue:text}`ch08_show_class`.

# %%
lam_full = default_lam(G_tr, lam_rel)
res = local_global(G_tr, f_tr, n_clusters, tau=tau, gamma=gamma, method="matrix_free", labels=labels)
cs = res[show_class]
print(f"class {show_class}: r(τ={tau}) = {cs.r}; local ranks r_j = {cs.r_j.tolist()}")
g_list = cs.gaps.tolist()
print(f"{len(g_list)} gaps (A_i < γ = {gamma}) among the r = {cs.r} global directions"
      + (f", the first at i = {g_list[0] + 1}" if g_list else ""))
print(f"{'class':>5}{'r':>6}{'Σ r_j':>7}{'|gaps|':>8}{'m_c':>6}{'local':>7}{'gap':>5}")
for c in range(C):
    s = res[c]
    print(f"{c:>5}{s.r:>6}{int(s.r_j.sum()):>7}{len(s.gaps):>8}{s.m:>6}{s.n_local:>7}{s.n_gap:>5}")

# %% tags=["hide-input"]
G_c = G_tr[:, show_class].double()
lam_glob = torch.linalg.eigvalsh(G_c @ G_c.T).flip(0).clamp_min(0)
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.4))
n_show = min(N, 3 * cs.r)
axes[0].semilogy(np.arange(1, n_show + 1), lam_glob[:n_show], "k-", lw=1.5, label="global $K$")
cmap = plt.get_cmap("tab10")
for j in range(n_clusters):
    idx = labels == j
    lam_j = torch.linalg.eigvalsh(G_c[idx] @ G_c[idx].T).flip(0).clamp_min(1e-12)
    axes[0].semilogy(np.arange(1, min(len(lam_j), n_show) + 1), lam_j[:n_show], color=cmap(j % 10), lw=0.8,
                     label="clusters $S_j$" if j == 0 else None)
    axes[0].plot(int(cs.r_j[j]), lam_j[int(cs.r_j[j]) - 1], "o", color=cmap(j % 10), ms=4)
axes[0].axvline(cs.r, color="k", ls=":", lw=1)
axes[0].set_xlabel("index $i$")
axes[0].set_ylabel("eigenvalue")
axes[0].set_title("global and local spectra")
axes[0].legend()
gap_mask = np.isin(np.arange(cs.r), cs.gaps.numpy())
axes[1].bar(np.arange(1, cs.r + 1), cs.A.numpy(), color=np.where(gap_mask, "tab:red", "tab:blue"), width=0.9)
axes[1].axhline(gamma, color="k", ls="--", lw=1)
axes[1].set_xlabel(r"global direction $i \leq r$")
axes[1].set_ylabel(r"alignment $\mathcal{A}_i$")
axes[1].set_title("alignment with the local spans")
chapter.glue_figure("ch08-spectra", fig)

# %% [markdown]
# ```{glue:figure} ch08-spectra
# :name: fig-ch08-spectra
# :alt: Left, eigenvalue curves on a log scale of the global kernel of one class and of its ten cluster blocks, with dots at the local truncation ranks and a vertical line at the global rank. Right, bars of the alignment of each global direction, blue above the gap threshold and red below it.
#
# Algorithm 1's steps 2 and 3 for digit {glue:text}`ch08_show_class`. Left: the spectrum of the global class
# kernel (black) and of the ten cluster blocks (colours); dots mark the local truncation ranks $r_j$, the
# dotted line the global rank $r$ at $\tau$ = {glue:text}`ch08_tau`. Right: the alignment $\mathcal A_i$ of
# each global direction $i \le r$; red bars are the gaps, below the dashed line $\gamma$ =
# {glue:text}`ch08_gamma`.
# ```

# %% [markdown]
# The leading global directions are well explained by the clusters ($A_i$ close to 1): they are, to a good
# approximation, the top directions *of one cluster* (the leading one typically belongs to the cluster of digit
# $c$ itself, where the gradient of logit $c$ is largest). Further down the spectrum, global directions
# spread across clusters and are only partly captured by any local top space — these are the gaps, the
# "connective" directions of the paper's Sec 3.4 and Fig 4.
#
# ## Remark 4.2 — an eigenvector of the kernel is a principal direction of the features
#
# ```{prf:remark} Synthetic gradients from eigenvectors (Remark 4.2)
# :label: rem-eigvec-gradient
#
# Let $G \in \mathbb{R}^{N\times k}$ and $K = GG^\top$. If $v$ is a unit eigenvector of $K$ with eigenvalue $\lambda > 0$,
# then $g = G^\top v \in \mathbb{R}^k$ satisfies $\|g\|^2 = \lambda$, and $g/\sqrt{\lambda}$ is the corresponding right
# singular vector of $G$ — the principal direction of the rows of $G$ belonging to $\lambda$.
# ```
#
# ```{prf:proof}
# $\|G^\top v\|^2 = v^\top G G^\top v = v^\top K v = \lambda$. With the thin SVD $G = U\Sigma W^\top$, $K = U\Sigma^2U^\top$,
# so $v = u_i$ for a $\lambda = \sigma_i^2$ (for a simple eigenvalue) and $G^\top u_i = W\Sigma U^\top u_i = \sigma_i w_i$.
# ```
#
# So a synthetic gradient $g = \tilde G_c^\top v$ is one vector of the same $k$-dimensional space as the real
# gradients, pointing along a principal direction and carrying exactly that direction's energy. The check
# below runs over every global direction $i\le r$ of the plotted class.

# %%
U_s, S_s, Wh_s = torch.linalg.svd(G_c, full_matrices=False)
u = U_s[:, : cs.r]
g = G_c.T @ u                                                         # (k, r): G̃ᵀ u_i
norm_err = float(((g ** 2).sum(0) - S_s[: cs.r] ** 2).abs().max() / S_s[0] ** 2)
dir_err = float((g / S_s[: cs.r] - Wh_s[: cs.r].T).abs().max())
print(f"max_i |‖G̃ᵀu_i‖² − λ_i| / λ_1 = {norm_err:.1e};  max |G̃ᵀu_i/√λ_i − w_i| = {dir_err:.1e}")

# %% [markdown]
# ## Steps 4–6 — candidates, order, orthonormalisation
#
# The candidate coefficient vectors are the local top eigenvectors $\tilde u^{(j)}_i$ ($i \le r_j$, zero-padded
# from $S_j$ to all $N$ inputs; step 4) and the gap eigenvectors $u_i$, $i\in\mathcal G$ (step 5). Step 6 sorts
# them by their eigenvalue, largest first, and runs Gram–Schmidt in that order, dropping any candidate whose
# residual after projecting out the earlier ones is below a tolerance of $10^{-6}$: it lies in their span already.
# With a budget $m$ the first $m$ survivors are kept. The result is $V$ with $V^\top V = I$, and
#
# $$G_{\rm syn} = V^\top\tilde G_c \in\mathbb{R}^{m_c\times k},\qquad t_{\rm syn} = V^\top t_c.$$
#
# Local vectors from different clusters are orthogonal (disjoint supports), so without gaps nothing would
# be dropped; a drop can only happen where a gap direction is (nearly) inside the span of the vectors that
# came before it, or a local vector inside the span of earlier gaps and locals. A gap $u_i$ keeps at least
# $\sqrt{1 - A_i} > \sqrt{1-\gamma}$ of its norm outside the local spans, so drops are rare unless $\gamma$ is
# close to 1.

# %% tags=["hide-input"]
ev_order = cs.source_eigval.numpy()
is_gap = (cs.source[:, 0] < 0).numpy()
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN, 3.0))
pos = np.arange(1, cs.m + 1)
ax.semilogy(pos[~is_gap], ev_order[~is_gap], ".", color="tab:blue", label="local (step 4)")
ax.semilogy(pos[is_gap], ev_order[is_gap], "x", color="tab:red", label="gap (step 5)")
ax.set_xlabel("position in $V$ (after step 6)")
ax.set_ylabel("eigenvalue of the candidate")
ax.legend()
chapter.glue_number("ch08_m_show", cs.m)
chapter.glue_number("ch08_N", N)
chapter.glue_figure("ch08-order", fig)

# %% [markdown]
# ```{glue:figure} ch08-order
# :name: fig-ch08-order
# :alt: Eigenvalue of each synthetic gradient's source eigenvector against its position in the synthetic set, decreasing, with local candidates as blue dots and gap candidates as red crosses.
#
# The synthetic set of digit {glue:text}`ch08_show_class` after step 6: {glue:text}`ch08_m_show` coefficient
# vectors for $N$ = {glue:text}`ch08_N` training points, in order of decreasing eigenvalue; local candidates
# (step 4) and gap candidates (step 5) interleave.
# ```

# %%
VtV_err = max(float((s.V.T @ s.V - torch.eye(s.m, dtype=torch.float64)).abs().max()) for s in res.classes)
order_ok = all(bool((s.source_eigval[1:] <= s.source_eigval[:-1]).all()) for s in res.classes)
# Columns before the first gap are local eigenvectors untouched by Gram–Schmidt (disjoint supports), so by
# Remark 4.2 their synthetic gradients carry exactly their eigenvalue's energy.
syn_err, n_checked = 0.0, 0
for s in res.classes:
    first_gap = int(torch.nonzero(s.source[:, 0] < 0).flatten()[0]) if s.n_gap else s.m
    e = (s.G_syn[:first_gap] ** 2).sum(1)
    syn_err = max(syn_err, float(((e - s.source_eigval[:first_gap]) / s.source_eigval[0]).abs().max()))
    n_checked += first_gap
print(f"max |VᵀV − I| = {VtV_err:.1e};  ordered by eigenvalue: {order_ok};  "
      f"‖G_syn row‖² = its eigenvalue for the {n_checked} leading local rows, max relative error {syn_err:.1e}")
print(f"dropped as dependent: {sum(s.n_candidates - s.m for s in res.classes)} of "
      f"{sum(s.n_candidates for s in res.classes)} candidates over all classes")

# %% [markdown]
# ## The KRR a synthetic set gives
#
# Per class, KRR on the synthetic set solves $w_c = (G_{\rm syn}^\top G_{\rm syn} + \lambda I)^{-1}G_{\rm syn}^\top t_{\rm syn}$
# (`ClassKRR.fit_synthetic`) and predicts $\hat f_c(x) = \tilde g_c(x)^\top w_c$ from the test point's projected
# gradient. The ridge $\lambda_c = 10^{-3}\operatorname{tr}\tilde K_c/N$ is that of the *uncompressed* set, so
# compressing does not silently change the regularisation ({eq}`eq-krr-synthetic`). Since $V^\top V = I$,
# $G_{\rm syn}^\top G_{\rm syn} = \tilde G_c^\top VV^\top\tilde G_c$: this is KRR on the rows of $\tilde G_c$ projected
# onto the span of $V$ — a sketched KRR with a data-dependent sketch.
#
# We compare the full KRR on all $N$ rows, Algorithm 1 without a budget, Algorithm 1 with
# {glue:text}`ch08_budget` synthetic gradients per class, and the rank-$r$ KRR at the same $r$
# ({eq}`eq-krr-rank-r`). Scores: test accuracy and
# fidelity (agreement with the network's argmax).

# %%
def scores(pred):
    return metrics.accuracy(pred, y_te), metrics.fidelity(pred, f_te)

full = ClassKRR(lam_rel=lam_rel).fit(G_tr, f_tr)
pred_full = full.predict(G_te)
pred_lg = ClassKRR().fit_synthetic(res.G_syn, res.t_syn, lam=lam_full).predict(G_te)
res_b = local_global(G_tr, f_tr, n_clusters, tau=tau, gamma=gamma, budget=budget, method="matrix_free",
                     labels=labels)
pred_b = ClassKRR().fit_synthetic(res_b.G_syn, res_b.t_syn, lam=lam_full).predict(G_te)
rows = [("full KRR (all N rows)", N * C, scores(pred_full)),
        (f"Algorithm 1, τ={tau}, γ={gamma}", sum(res.m), scores(pred_lg)),
        (f"Algorithm 1, budget {budget}/class", sum(res_b.m), scores(pred_b))]
print(f"{'model':<32}{'gradients':>10}{'accuracy':>10}{'fidelity':>10}")
for name, m, (acc, fid) in rows:
    print(f"{name:<32}{m:>10}{acc:>10.3f}{fid:>10.3f}")
print(f"budgeted run: {res_b.counts()['local']} local and {res_b.counts()['gap']} gap gradients "
      f"({N * C / sum(res_b.m):.0f}× fewer than the N·C real rows)")
chapter.glue_number("ch08_acc_budget", scores(pred_b)[0])
chapter.glue_number("ch08_acc_full", scores(pred_full)[0])
chapter.glue_number("ch08_m_unbudgeted", sum(res.m) / C)

# %% [markdown]
# ## Two exact implementations
#
# The paper eigendecomposes the full $N\times N$ kernel, which becomes the bottleneck as $N$ grows. Every
# eigendecomposition of Algorithm 1 has an exact twin that works on the $N\times k$ features instead
# (`method="matrix_free"`): the eigenpairs of $K = \tilde G\tilde G^\top$ come from the thin SVD $\tilde G = U\Sigma W^\top$
# (via the $k\times k$ matrix $\tilde G^\top\tilde G$, $O(Nk^2)$), local ones from the row blocks $\tilde G[S_j]$, the
# clustering from the top singular vectors of the normalised stacked features, and the Gram–Schmidt of step 6
# runs on blocks of candidate vectors. `method="dense"` keeps the textbook version: `eigh` of the $N\times N$
# kernels. On the same partition both must return the same synthetic set (eigenvectors are sign-normalised, so
# not only the same span).

# %%
res_d = local_global(G_tr, f_tr, n_clusters, tau=tau, gamma=gamma, method="dense", labels=labels)
chapter.glue_number("ch08_dense_gib", 100_000**2 * 8 / 2**30)
same_counts = all(a.m == b.m and torch.equal(a.gaps, b.gaps) for a, b in zip(res_d.classes, res.classes))
V_gap = max(float((a.V.abs() - b.V.abs()).abs().max()) for a, b in zip(res_d.classes, res.classes))
pred_d = ClassKRR().fit_synthetic(res_d.G_syn, res_d.t_syn, lam=lam_full).predict(G_te)
pred_gap = float((pred_d - pred_lg).abs().max() / pred_lg.abs().max())
print(f"same r, gaps and m in every class: {same_counts}; max |V_dense| − |V_matrix-free| = {V_gap:.1e}; "
      f"relative prediction difference {pred_gap:.1e}")

# %% [markdown]
# The benchmark `benchmarks/algorithm1_scale.py` times both paths as $N$ grows (the book's Algorithm 1
# benchmark page, {doc}`../book/benchmarks_algorithm1`, has the measured table): the dense path needs one
# $N\times N$ float64 kernel per class ({glue:text}`ch08_dense_gib:.0f` GiB at $N = 100\,000$) and $O(N^3)$ eigendecompositions, the matrix-free one $O(NCk)$ memory and
# $O(Nk^2)$ time per class.
#
# ## A special case: Algorithm 1 is the rank-$r$ KRR
#
# ```{prf:proposition} No clusters, all gaps: rank-$r$ KRR
# :label: prop-lg-rank-r
#
# With no clusters ($A_i = 0$ for all $i$, so every $i\le r$ is a gap for any $\gamma > 0$) Algorithm 1 returns
# $V = U_r$, and KRR on its synthetic set equals the rank-$r$ KRR $w^{(r)} = W_r\Sigma_r(\Sigma_r^2+\lambda I)^{-1}U_r^\top t$.
# ```
#
# ```{prf:proof}
# The candidates are $u_1,\dots,u_r$, already orthonormal and in eigenvalue order, so $V = U_r$. Then
# $G_{\rm syn} = U_r^\top U\Sigma W^\top = \Sigma_r W_r^\top$ and $t_{\rm syn} = U_r^\top t$, hence
# $w = (W_r\Sigma_r^2W_r^\top + \lambda I)^{-1}W_r\Sigma_r U_r^\top t = W_r(\Sigma_r^2+\lambda I)^{-1}\Sigma_r U_r^\top t$,
# because $W_r$ has orthonormal columns and $(W_r\Sigma_r^2W_r^\top + \lambda I)W_r = W_r(\Sigma_r^2 + \lambda I)$.
# ```
#
# In code, `n_clusters=0` means "no clusters". The check compares with `ClassKRR(rank=r)`, class by class.

# %%
res0 = local_global(G_tr, f_tr, 0, tau=tau, gamma=1.0, method="matrix_free")
pred0 = ClassKRR().fit_synthetic(res0.G_syn, res0.t_syn, lam=lam_full).predict(G_te)
rank_gap = 0.0
for c in range(C):
    ref = ClassKRR(lam=float(lam_full[c]), rank=res0[c].r).fit(G_tr[:, c:c + 1], f_tr[:, c:c + 1]).predict(G_te[:, c:c + 1])
    rank_gap = max(rank_gap, float((pred0[:, c] - ref[:, 0]).abs().max() / ref.abs().max()))
print(f"no clusters, γ = 1: all {sum(res0.m)} synthetic gradients are gaps ({res0.counts()['gap']}); "
      f"max relative difference to rank-r KRR = {rank_gap:.1e}")
print("rank-r KRR at the same r: accuracy {:.3f}, fidelity {:.3f}".format(*scores(pred0)))

# %% [markdown]
# ## What we found
#
# * On the digits class kernels the clusters of $\bar K$ are the digits (high purity), and the leading global
#   eigendirections of each class kernel are local: they sit inside single clusters. The gaps appear further
#   down the spectrum; with $\tau$ = {glue:text}`ch08_tau`, $\gamma$ = {glue:text}`ch08_gamma` they are a minority
#   of the synthetic set, and their
#   number grows with $\gamma$ (the next chapter's grid).
# * Remark 4.2 holds to round-off: each synthetic gradient built from an eigenvector is a principal direction
#   of feature space carrying exactly its eigenvalue's energy.
# * Without a budget Algorithm 1 keeps {glue:text}`ch08_m_unbudgeted:.0f` gradients per class on average and
#   reproduces the full KRR (test accuracy {glue:text}`ch08_acc_full:.3f`); with {glue:text}`ch08_budget` per
#   class it still reaches {glue:text}`ch08_acc_budget:.3f`. Why five *local* directions do better than the five
#   top *global* directions of PCA — and better than sampling real gradients — is the subject of
#   {doc}`10_local_global_vs_baselines`.
# * The dense and matrix-free implementations agree to round-off, and with no clusters Algorithm 1 reduces
#   exactly to the rank-$r$ KRR of {ref}`maths-1` ({prf:ref}`a-prop-lg-rank-r`).

# %% tags=["hide-input"]
assert purity > 0.9, "the clusters of the class-averaged kernel should follow the digits"
assert norm_err < 1e-8 and dir_err < 1e-6, "Remark 4.2"
assert VtV_err < 1e-10 and syn_err < 1e-8 and n_checked >= C and order_ok
assert same_counts and V_gap < 1e-6 and pred_gap < 1e-6, "dense and matrix-free paths must agree"
assert rank_gap < 1e-8, "no clusters + all gaps must be the rank-r KRR"
assert all(m <= budget for m in res_b.m)
acc_full, fid_full = scores(pred_full)
assert scores(pred_lg)[1] >= fid_full - 0.01, "the unbudgeted synthetic set reproduces the full KRR"
assert scores(pred_b)[0] >= 0.9, "five synthetic gradients per class keep ≥ 90% test accuracy"
