# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Redundancy in data and parameters
#
# The class kernels of the previous chapter are $N\times N$ matrices built from $P$-dimensional gradients,
# with $P$ = {glue:text}`ch03_P:,` for our small convnet and tens of millions for a ResNet. The premise of
# {cite:t}`mahowald2026dntk` (Sec 3.2; appendix {ref}`maths-2`) is that most of this size is **redundant**: a handful of directions — in data space *and* in
# parameter space — carry almost all of the kernel's variance. This chapter makes that precise and measures
# it on the trained digits convnet:
#
# 1. two definitions (data and parameter redundancy) and why they are one number, the *truncation rank*;
# 2. the eigenvalue spectra of the ten class kernels (the paper's Fig 2) with truncation ranks, effective
#    ranks and condition numbers;
# 3. what the redundancy buys: KRR restricted to the top-$r$ eigendirections against $r$ (the paper's Fig 5);
# 4. redundancy measured *after* a random projection of the gradients, and the interval (Prop B.6) in which
#    the true truncation rank must then lie.

# %% tags=["parameters"]
n_train = 250            # training points (a seeded random subset of the 1437 digits training images)
n_test = 200             # test points for the KRR-vs-rank curve
taus = [0.9, 0.95, 0.99] # energy thresholds τ of Def 3.1
ranks = [1, 2, 5, 10, 20, 50, 100]      # spectral cut-offs r for KRR (N is added)
proj_dims = [32, 64, 128, 256, 512]  # JL projection widths k for Prop B.6
proj_kind = "gaussian"   # projector kind (appendix §4.2)
lam_rel = 1e-3           # ridge: λ_c = lam_rel · tr(K_c) / N (appendix §1)
seed = 0
model_name = "convnet"
dataset = "digits"
device = "cpu"
progress = False

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import dntk.data
import dntk.models
import dntk.projection
import dntk.tangent
from dntk import chapter, metrics
from dntk import spectral as sp
from dntk.krr import ClassKRR

_ = torch.manual_seed(seed)
chapter.use_book_style()

# %% [markdown]
# ## Two kinds of redundancy, one number
#
# Fix a class $c$, let $G = G_c \in \mathbb{R}^{N\times P}$ be its gradient matrix (row $i$ is
# $g_c(x_i)^\top = \nabla_\theta f_c(x_i;\theta)^\top$) and $K = G G^\top$ its class kernel, with eigenvalues
# $\lambda_1 \ge \dots \ge \lambda_N \ge 0$.
#
# ```{prf:definition} Truncation rank and data redundancy (Def 3.1)
# :label: def-truncation-rank
#
# For an energy threshold $\tau \in (0, 1]$ the *truncation rank* of $K$ is
# $r(\tau) = \min\{ r : \sum_{i\le r} \lambda_i \ge \tau \sum_{i} \lambda_i \}$.
# The input set is $(\alpha,\tau)$-*data-redundant* with $\alpha = N / r(\tau)$: a rank-$r(\tau)$ kernel, as if
# built from $\alpha$ times fewer inputs, keeps a fraction $\tau$ of the kernel's variance $\operatorname{tr} K$.
# ```
#
# ```{prf:definition} Parameter redundancy (Def 3.2)
# :label: def-parameter-redundancy
#
# The parameters are $(\beta,\tau)$-*parameter-redundant* if some subspace $S \subset \mathbb{R}^P$ of dimension
# $\dim S \le P/\beta$ keeps a fraction $\tau$ of the gradient energy, $\|G\Pi_S\|_F^2 \ge \tau\,\|G\|_F^2$,
# where $\Pi_S$ is the orthogonal projector onto $S$ and $G\Pi_S$ projects every row of $G$.
# ```
#
# ```{prf:proposition} Both redundancies are the truncation rank
# :label: prop-redundancy-same-rank
#
# The smallest dimension of a subspace $S$ with $\|G\Pi_S\|_F^2 \ge \tau\|G\|_F^2$ is $r(\tau)$ of $K = GG^\top$.
# Hence the best parameter redundancy is $\beta = P/r(\tau)$ and $\alpha/\beta = N/P$.
# ```
#
# ```{prf:proof}
# Write the thin SVD $G = U\Sigma V^\top$. For an orthogonal projector $\Pi_S$ of rank $d$,
# $\|G\Pi_S\|_F^2 = \operatorname{tr}(\Pi_S G^\top G)$, and by Ky Fan's maximum principle this is at most
# $\sum_{i\le d}\sigma_i^2$, attained by $S = \operatorname{span}(v_1,\dots,v_d)$. Since
# $\|G\|_F^2 = \sum_i \sigma_i^2 = \operatorname{tr} K$ and the eigenvalues of $K$ are $\lambda_i = \sigma_i^2$, the
# condition $\max_{\dim S = d} \|G\Pi_S\|_F^2 \ge \tau\|G\|_F^2$ reads $\sum_{i\le d}\lambda_i \ge \tau\sum_i\lambda_i$,
# whose smallest solution is $d = r(\tau)$.
# ```
#
# So one spectrum answers both questions, and it can be computed from whichever side is smaller:
# `dntk.spectral.eig_from_features` takes the eigenpairs of $K$ from $G$ without ever forming an $N\times N$
# matrix when $N > P$ (thin SVD, $O(NP^2)$), and from $K$ itself when $N \le P$. Besides $r(\tau)$ we report the
# *effective rank* $(\sum\lambda_i)^2/\sum\lambda_i^2$, the condition number $\lambda_1/\lambda_N$ and
# $\lambda_{\min}$ (paper Sec 5.1, App D).

# %% [markdown]
# ## The network and its exact class gradients
#
# The digits convnet of every chapter (`dntk.models.trained()`), a seeded subset of {glue:text}`ch03_N` training
# and {glue:text}`ch03_n_test` test images, and the exact per-class gradients $(N, C, P)$ of both.

# %%
model = dntk.models.trained(model_name, dataset=dataset, progress=progress)
X_all, y_all = dntk.data.as_tensors(dntk.data.load(dataset, "train"))
X_tall, y_tall = dntk.data.as_tensors(dntk.data.load(dataset, "test"))
gen = torch.Generator().manual_seed(seed)
tr = torch.randperm(len(y_all), generator=gen)[:n_train]
te = torch.randperm(len(y_tall), generator=gen)[:n_test]
X_train, y_train, X_test, y_test = X_all[tr], y_all[tr], X_tall[te], y_tall[te]

G_train = dntk.tangent.class_gradients(model, X_train, device=device, progress=progress)
G_test = dntk.tangent.class_gradients(model, X_test, device=device, progress=progress)
f_train = dntk.tangent.logits(model, X_train)
f_test = dntk.tangent.logits(model, X_test)
N, C, P = G_train.shape
print(f"N = {N} training points, C = {C} classes, P = {P} parameters; test N* = {len(y_test)}")
chapter.glue_number("ch03_P", P)
chapter.glue_number("ch03_N", N)
chapter.glue_number("ch03_n_test", len(y_test))

# %% [markdown]
# ## The spectra of the ten class kernels (Fig 2)
#
# One eigendecomposition per class. As a check of the matrix-free path, class 0 is also decomposed the
# textbook way, `eigh` of the explicitly formed $K_0$; the two spectra must agree to round-off.

# %%
eig = [sp.eig_from_features(G_train[:, c]) for c in range(C)]     # (eigenvalues (N,), eigenvectors (N, N))
spectra = [ev for ev, _ in eig]
stats = [sp.spectrum_stats(ev, taus=taus, n=N) for ev in spectra]

ev_dense, _ = sp.eig_from_kernel(G_train[:, 0].double() @ G_train[:, 0].double().T)
eig_path_gap = float((ev_dense[: len(spectra[0])] - spectra[0]).abs().max() / ev_dense[0])
print(f"class 0: max |λ_dense − λ_matrix-free| / λ_1 = {eig_path_gap:.1e}")

head = f"{'class':>5}" + "".join(f"{'r(' + str(t) + ')':>9}" for t in taus) + \
       "".join(f"{'α(' + str(t) + ')':>9}" for t in taus) + f"{'β(' + str(max(taus)) + ')':>9}{'eff.rank':>9}{'cond.':>10}{'λ_min':>9}"
print(head)
for c, s in enumerate(stats):
    print(f"{c:>5}" + "".join(f"{s[f'r({t})']:>9d}" for t in taus) + "".join(f"{s[f'alpha({t})']:>9.1f}" for t in taus)
          + f"{P / s[f'r({max(taus)})']:>9.0f}{s['effective_rank']:>9.2f}"
          f"{s['condition_number']:>10.2e}{s['lambda_min']:>9.1f}")
r_tau = {t: np.array([s[f"r({t})"] for s in stats]) for t in taus}
lam_c = np.array([lam_rel * ev.sum().item() / N for ev in spectra])          # the KRR ridge of each class
print(f"ridge λ_c = {lam_rel:g}·tr(K_c)/N is {np.min(lam_c / [s['lambda_min'] for s in stats]):.2f}–"
      f"{np.max(lam_c / [s['lambda_min'] for s in stats]):.2f} × λ_min")
t_lo, t_hi = min(taus), max(taus)
for name, value in {"ch03_tau_lo": t_lo, "ch03_tau_hi": t_hi,
                    "ch03_r_lo_min": r_tau[t_lo].min(), "ch03_r_lo_max": r_tau[t_lo].max(),
                    "ch03_r_hi_min": r_tau[t_hi].min(), "ch03_r_hi_max": r_tau[t_hi].max(),
                    "ch03_alpha_lo_min": N / r_tau[t_lo].max(), "ch03_alpha_lo_max": N / r_tau[t_lo].min(),
                    "ch03_alpha_hi": N / np.median(r_tau[t_hi]), "ch03_beta_lo": P / np.median(r_tau[t_lo]),
                    "ch03_effrank_min": min(s["effective_rank"] for s in stats),
                    "ch03_effrank_max": max(s["effective_rank"] for s in stats),
                    "ch03_lmin_rel": float(np.median([s["lambda_min"] / ev[0].item() for s, ev in zip(stats, spectra)])),
                    "ch03_lam_rel": lam_rel}.items():
    chapter.glue_number(name, value)
# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.3))
cmap = plt.get_cmap("tab10")
for c, ev in enumerate(spectra):
    ev = ev.numpy()
    axes[0].semilogy(np.arange(1, len(ev) + 1), ev / ev[0], color=cmap(c), lw=1, label=f"{c}")
    axes[1].plot(np.arange(1, len(ev) + 1), np.cumsum(ev) / ev.sum(), color=cmap(c), lw=1)
for t in taus:
    axes[1].axhline(t, color="gray", ls=":", lw=0.8)
    axes[1].text(1.05, t, f"τ = {t}", ha="left", va="bottom", fontsize=9, color="gray")
axes[0].set_xlabel("index $i$")
axes[0].set_ylabel(r"$\lambda_i / \lambda_1$")
axes[0].legend(ncol=2, title="class", fontsize=9)
axes[1].set_xscale("log")
axes[1].set_xlabel("rank $r$")
axes[1].set_ylabel(r"$\sum_{i\leq r}\lambda_i / \mathrm{tr}\,K_c$")
chapter.glue_figure("ch03-spectra", fig)

# %% [markdown]
# ```{glue:figure} ch03-spectra
# :name: fig-ch03-spectra
# :alt: Left, the eigenvalues of the ten class kernels divided by the largest, falling steeply then flattening. Right, the cumulative share of the trace against the rank on a log axis, with horizontal lines at the energy thresholds.
#
# The spectra of the ten class kernels on {glue:text}`ch03_N` digits (the analogue of the paper's Fig 2).
# Left: eigenvalues relative to the largest. Right: the share of the trace captured by the top $r$
# eigenvalues; the truncation rank $r(\tau)$ ({prf:ref}`def-truncation-rank`) is where a curve crosses the
# dotted line at $\tau$.
# ```

# %% [markdown]
# What the numbers say:
#
# * **The spectra fall fast at first and then flatten.** A small share of the data directions
#   ($r(\tau)$ = {glue:text}`ch03_r_lo_min`–{glue:text}`ch03_r_lo_max` out of $N$ = {glue:text}`ch03_N` at
#   $\tau$ = {glue:text}`ch03_tau_lo`) carries that share of each kernel's variance, so the training subset is
#   $\alpha$ = {glue:text}`ch03_alpha_lo_min:.0f`–{glue:text}`ch03_alpha_lo_max:.0f` data-redundant and the parameters
#   are $\beta = P/r$ ≈ {glue:text}`ch03_beta_lo:.0f` redundant. The effective rank is only
#   {glue:text}`ch03_effrank_min:.1f`–{glue:text}`ch03_effrank_max:.1f`: the first eigenvalue alone holds a large
#   share of the trace. A large part of
#   it is the *mean* gradient that all inputs share (the kernels are uncentred, as in the paper).
# * **The tail is not negligible.** $r(\tau)$ at $\tau$ = {glue:text}`ch03_tau_hi` is
#   {glue:text}`ch03_r_hi_min`–{glue:text}`ch03_r_hi_max`, so the last percent of variance is spread over most of the
#   remaining directions ($\alpha$ ≈ {glue:text}`ch03_alpha_hi:.1f`). The smallest eigenvalue is about
#   {glue:text}`ch03_lmin_rel:.0e` $\lambda_1$ (median over the classes): with $P \gg N$ every kernel is full rank
#   and well enough conditioned that the default ridge $\lambda$ = {glue:text}`ch03_lam_rel` $\operatorname{tr}K/N$
#   lies *below* $\lambda_{\min}$ (printed above), so the full KRR
#   uses every direction; the rank cut-off below is what removes them.
#
# The paper reports truncation ranks "significantly lower than even [the size of] the distilled set" for
# ImageNette/ResNet-18; on digits we see the same shape of spectrum but, at $\tau = 0.99$, a weaker effect,
# which is expected for a network of {glue:text}`ch03_P:,` parameters on 8×8 images whose gradients are less
# over-parameterised. Rerun with `-p n_train 1437` for the whole training split.

# %% [markdown]
# ## What the redundancy buys: KRR on the top-$r$ eigendirections (Fig 5)
#
# If the kernel's useful information sits in its top directions, kernel ridge regression restricted to
# them should predict as well as the full model. With the thin SVD $G_c = U\Sigma V^\top$, the rank-$r$ model is
# $w^{(r)} = V_r\Sigma_r(\Sigma_r^2 + \lambda I)^{-1}U_r^\top t$ ({eq}`eq-krr-rank-r`; `ClassKRR(rank=r)`), fitted to the network's
# logits $t$ and scored on held-out digits by accuracy and fidelity (agreement with the network's argmax).

# %% [markdown]
# KRR sees the features only through inner products, and its weights $w = G_c^\top\alpha$ lie in the row space of
# $G_c$. So instead of the $P$-dimensional gradients we can hand `ClassKRR` their exact $N$-dimensional coordinates
# in that row space: $B_c = U_c\Sigma_c$ for the training points ($B_cB_c^\top = K_c$) and
# $B_c^* = K_c(X^*, X)\,U_c\Sigma_c^{-1}$ for the test points ($B_c^*B_c^\top = K_c(X^*, X)$), built from the
# eigenpairs above. Same model, same predictions, a hundred times narrower features.

# %%
def scores(pred):
    return (metrics.accuracy(pred, y_test), metrics.fidelity(pred, f_test),
            metrics.relative_logit_error(pred, f_test))


B_train = torch.stack([U * ev.sqrt() for ev, U in eig], 1)                       # (N, C, N)
B_test = torch.stack([(G_test[:, c].double() @ G_train[:, c].double().T) @ U / ev.sqrt()
                      for c, (ev, U) in enumerate(eig)], 1)                       # (N*, C, N)
r_grid = sorted({int(r) for r in ranks if 0 < int(r) < N} | {N})
krr_rows = [(r, *scores(ClassKRR(lam_rel=lam_rel, rank=r if r < N else None).fit(B_train, f_train).predict(B_test)))
            for r in r_grid]
# the same model as on the raw P-dimensional gradients (checked once, at r = 10)
coord_gap = float((ClassKRR(lam_rel=lam_rel, rank=10).fit(B_train, f_train).predict(B_test)
                   - ClassKRR(lam_rel=lam_rel, rank=10).fit(G_train, f_train).predict(G_test)).abs().max()
                  / f_test.abs().max())
print(f"row-space coordinates vs raw gradients, rank 10: max prediction gap / max |logit| = {coord_gap:.1e}")
net_acc = metrics.accuracy(f_test, y_test)
print(f"network test accuracy {net_acc:.3f}")
print(f"{'rank r':>7}{'test acc':>10}{'fidelity':>10}{'rel. logit err':>16}")
for r, a, f, e in krr_rows:
    print(f"{r:>7}{a:>10.3f}{f:>10.3f}{e:>16.3f}")

# %% tags=["hide-input"]
rr = np.array([row[0] for row in krr_rows])
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.3))
axes[0].plot(rr, [row[1] for row in krr_rows], "o-", label="accuracy")
axes[0].plot(rr, [row[2] for row in krr_rows], "s--", label="fidelity")
axes[0].axhline(net_acc, color="k", ls=":", lw=1, label="network")
for t, ls in zip(taus, ["-", "--", ":"]):
    axes[0].axvline(np.median(r_tau[t]), color="gray", ls=ls, lw=0.8, label=f"median r({t})")
axes[0].set_xscale("log")
axes[0].set_xlabel("rank $r$ of each class kernel")
axes[0].set_ylabel("fraction of test set")
axes[0].legend(fontsize=9, loc="lower right")
axes[1].loglog(rr, [row[3] for row in krr_rows], "o-")
axes[1].set_xlabel("rank $r$")
axes[1].set_ylabel("relative logit error")
chapter.glue_figure("ch03-rank-krr", fig)

# %% [markdown]
# ```{glue:figure} ch03-rank-krr
# :name: fig-ch03-rank-krr
# :alt: Left, test accuracy and fidelity of rank-r KRR rising to the network's level by a few dozen directions, with vertical lines at the median truncation ranks. Right, the relative logit error falling with the rank on log-log axes.
#
# Rank-$r$ KRR on the top $r$ eigendirections of each class kernel (the analogue of the paper's Fig 5): test
# accuracy and fidelity (left, with the network's accuracy dotted and the median truncation ranks as grey
# vertical lines) and the relative logit error (right).
# ```

# %% [markdown]
# Accuracy and fidelity saturate long before $r = N$: a few dozen directions per class — about $r(0.9)$ —
# reproduce the network's decisions, as in the paper's Fig 5. The logit values converge more slowly, since
# they also use the tail directions (down to the ridge level).

# %% [markdown]
# ## Redundancy after a random projection (Prop B.6)
#
# In practice (Sec 4.2) one never holds $G_c$: gradients are projected on the fly to $\tilde G_c = G_c R$ with a
# random $R \in \mathbb{R}^{P\times k}$, $\mathbb{E}[RR^\top] = I$, and every spectral quantity is computed from
# $\tilde K_c = \tilde G_c\tilde G_c^\top$. How far can its truncation rank $\tilde r(\tau)$ be from the true one?
# Let $S_r = \sum_{i\le r}\lambda_i$ be the partial eigenvalue sums of $K_c$, $\tilde S_r$ those of $\tilde K_c$, and
# $\varepsilon = \max_r |\tilde S_r/S_r - 1|$ their largest relative error (the Johnson–Lindenstrauss lemma makes
# it $O(1/\sqrt k)$ once $k$ exceeds the rank that matters).
#
# ```{prf:proposition} Truncation rank under projection (Prop B.6)
# :label: prop-jl-rank-bracket
#
# If $|\tilde S_r/S_r - 1| \le \varepsilon < 1$ for every $r$, then
# $\tilde r\big(\tau\tfrac{1-\varepsilon}{1+\varepsilon}\big) \le r(\tau) \le \tilde r\big(\tau\tfrac{1+\varepsilon}{1-\varepsilon}\big)$,
# where the upper bound is replaced by $N$ when $\tau\tfrac{1+\varepsilon}{1-\varepsilon} > 1$. Consequently the
# projected estimate $\tilde\beta = P/\tilde r(\tau)$ brackets the true parameter redundancy the same way.
# ```
#
# ```{prf:proof}
# *Upper bound.* Let $\tau' = \tau(1+\varepsilon)/(1-\varepsilon) \le 1$ and $r' = \tilde r(\tau')$, so
# $\tilde S_{r'} \ge \tau' \tilde S_N$. Then $S_{r'} \ge \tilde S_{r'}/(1+\varepsilon) \ge \tau'\tilde S_N/(1+\varepsilon)
# \ge \tau'(1-\varepsilon)S_N/(1+\varepsilon) = \tau S_N$, hence $r(\tau) \le r'$.
# *Lower bound.* Let $\tau'' = \tau(1-\varepsilon)/(1+\varepsilon)$ and $r = r(\tau)$. Then
# $\tilde S_r \ge (1-\varepsilon)S_r \ge (1-\varepsilon)\tau S_N \ge \tau\tfrac{1-\varepsilon}{1+\varepsilon}\tilde S_N = \tau''\tilde S_N$,
# so $\tilde r(\tau'') \le r$.
# ```
#
# (The appendix, {prf:ref}`a-prop-jl-rank-bracket`, states the same bracket with the roles of $r$ and $\tilde r$
# exchanged; the proof is symmetric. The
# paper's own statement of Prop B.6 was lost in the text version.) Below, the exact gradients are projected with
# a seeded `gaussian` projector at several widths $k$, $\varepsilon$ is measured per class, and the bracket is
# checked for every class, width and $\tau$.

# %%
ev_exact = [ev.double() for ev in spectra]
proj_rows = []
eps_by_k = {}
for k in proj_dims:
    R = dntk.projection.make(proj_kind, int(k), seed=seed)
    Gp = R.project(G_train.reshape(N * C, P)).reshape(N, C, int(k))
    eps_k = []
    for c in range(C):
        ev_p = sp.eig_from_features(Gp[:, c])[0]
        eps = sp.partial_sum_distortion(ev_exact[c], ev_p)
        eps_k.append(eps)
        for t in taus:
            r_true, r_proj = int(r_tau[t][c]), sp.truncation_rank(ev_p, t)
            lo, hi = sp.jl_rank_bracket(ev_p, t, eps, n=N) if eps < 1 else (1, N)
            proj_rows.append(dict(k=int(k), c=c, tau=t, eps=eps, r=r_true, r_proj=r_proj, lo=lo, hi=hi))
    eps_by_k[int(k)] = np.array(eps_k)

print(f"{'k':>6}{'ε median':>10}{'ε max':>8}   r(0.9) vs r̃(0.9) [bracket] for class 0")
for k in eps_by_k:
    row = next(p for p in proj_rows if p["k"] == k and p["c"] == 0 and p["tau"] == 0.9)
    print(f"{k:>6}{np.median(eps_by_k[k]):>10.3f}{eps_by_k[k].max():>8.3f}   "
          f"{row['r']:>4d} vs {row['r_proj']:>4d}  [{row['lo']}, {row['hi']}]")
bracket_ok = all(p["lo"] <= p["r"] <= p["hi"] for p in proj_rows)
print("bracket holds for every class, width and τ:", bracket_ok)

# %% tags=["hide-input"]
ks = np.array(list(eps_by_k))
med = np.array([np.median(eps_by_k[k]) for k in ks])
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.3))
axes[0].loglog(ks, med, "o-", label="median over classes")
axes[0].fill_between(ks, [eps_by_k[k].min() for k in ks], [eps_by_k[k].max() for k in ks], alpha=0.2,
                     label="min–max over classes")
axes[0].loglog(ks, med[0] * np.sqrt(ks[0] / ks), "k:", label=r"$\propto 1/\sqrt{k}$")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
axes[0].set_xlabel("projection width $k$")
axes[0].set_ylabel(r"$\varepsilon = \max_r |\tilde S_r / S_r - 1|$")
axes[0].legend(fontsize=9)
sel = [p for p in proj_rows if p["tau"] == 0.9]
for c in range(C):
    pts = [p for p in sel if p["c"] == c]
    axes[1].plot([p["k"] for p in pts], [p["r_proj"] for p in pts], color=cmap(c), lw=0.8, marker=".")
axes[1].axhspan(r_tau[0.9].min(), r_tau[0.9].max(), color="gray", alpha=0.25, label="true $r(0.9)$")
axes[1].set_xlabel("projection width $k$")
axes[1].set_ylabel(r"projected $\tilde r(0.9)$")
axes[1].legend(fontsize=9)
chapter.glue_figure("ch03-projection", fig)

# %% [markdown]
# ```{glue:figure} ch03-projection
# :name: fig-ch03-projection
# :alt: Left, the partial-sum distortion epsilon falling with the projection width, close to a one-over-square-root line. Right, the projected truncation rank of each class rising with the width towards the grey band of the true ranks.
#
# Spectra after a Gaussian JL projection of the exact gradients {cite}`dasgupta2003jl`. Left: the largest
# relative error $\varepsilon$ of the partial eigenvalue sums against the width $k$ (median and range over the
# classes; dotted: $\propto 1/\sqrt k$). Right: the projected truncation rank $\tilde r(0.9)$ of each class
# against $k$; the grey band spans the true $r(0.9)$ of all classes.
# ```

# %% [markdown]
# The distortion falls roughly like $1/\sqrt k$, and the projected truncation ranks approach the true ones from
# below (a random projection to $k$ dimensions can only *concentrate* a spectrum: $\tilde K_c$ has rank $\le k$).
# The bracket is guaranteed but not tight: $\varepsilon$ is the worst relative error over *all* partial sums,
# dominated by the first few, and $\tau(1+\varepsilon)/(1-\varepsilon)$ quickly exceeds 1 for $\tau$ near 1, where the
# bracket becomes trivial. The useful reading is the other direction: a projected estimate never overstates
# the redundancy by more than the factor the bracket allows.

# %% [markdown]
# ## Checks

# %% tags=["hide-input"]
# the matrix-free spectrum equals the dense eigh spectrum to round-off
assert eig_path_gap < 1e-8, eig_path_gap
# data redundancy: every class kernel keeps 90% of its variance in at most a quarter of the data directions
assert (r_tau[0.9] <= N / 4).all(), r_tau[0.9]
# truncation ranks grow with τ, and parameter redundancy is large: β = P / r(0.99) > 100 for every class
assert all((r_tau[a] <= r_tau[b]).all() for a, b in zip(taus, taus[1:]))
assert (P / r_tau[max(taus)] > 100).all()
# rank-r KRR: the row-space coordinates give the same model as the raw gradients
assert coord_gap < 1e-6, coord_gap
# rank-r KRR: a few dozen directions reproduce the full model; one direction does not
acc = {r: a for r, a, _, _ in krr_rows}
fid = {r: f for r, _, f, _ in krr_rows}
r_sat = min(r for r in acc if r >= np.max(r_tau[min(taus)]))
assert acc[r_sat] >= acc[N] - 0.02 and fid[r_sat] >= fid[N] - 0.02, (r_sat, acc, fid)
assert acc[min(acc)] < acc[N] - 0.3
# Prop B.6: the bracket holds everywhere, and the distortion shrinks with the projection width
assert bracket_ok
assert np.median(eps_by_k[max(eps_by_k)]) < np.median(eps_by_k[min(eps_by_k)])
print("all checks passed")
