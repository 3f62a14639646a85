# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Dataset distillation as subspace selection
#
# Dataset distillation (DD) replaces a training set by a handful of (often synthetic) inputs on which training
# works about as well. Section 3.3 of {cite:t}`mahowald2026dntk` (appendix {ref}`maths-3`) looks at DD through the tangent kernel: around trained
# parameters $\theta$, the distilled inputs $\tilde x_1, \dots, \tilde x_m$ matter only through the **subspace of
# parameter space spanned by their logit gradients**. Every update they can produce lies in that subspace; how
# much one such update can lower the loss on the *real* data is governed by how much of the real gradient lies
# in it; and the same subspace decides how well the distilled points serve as *inducing points* of the kernel.
#
# This chapter states each of those results as a numbered theorem with its proof, and then checks it
# numerically on the gradients of the trained digits convnet: a few training images play the distilled set,
# other training images play the "outer" data the distilled set should stand in for. Every identity must
# hold to round-off, every inequality must hold, and the chapter ends by asserting so. The final section
# compares how well random, k-center and PCA subspaces do, the practical content of Cor 3.5.

# %% tags=["parameters"]
m = 10                   # distilled-set size for the theorem checks (m·C gradient rows span S)
n_out = 300              # outer (real) data points
n_pool = 400             # candidate points the random / k-center selections draw from
m_grid = [1, 2, 5, 10, 20]   # distilled-set sizes for the subspace comparison
power_iters = 30         # Hessian power iterations for the smoothness constant β
check_class = 0          # class whose kernel is used for the kernel-side checks (eqs 9, 10, Prop 3.6)
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
import dntk.tangent
from dntk import chapter
from dntk import spectral as sp
from dntk import theory as th

_ = torch.manual_seed(seed)
chapter.use_book_style()
chapter.glue_number("ch04_check_class", check_class)
checks = {}              # every statement checked below, by name: (relative error, tolerance)


def record(name, chk, tol):
    checks[name] = (chk.error(), tol)
    rel = "=" if chk.relation == "=" else "≤"
    print(f"{name:<34} {chk.statement:<52} rel. error {chk.error():.1e}  ({rel}, tolerance {tol:g})")

# %% [markdown]
# ## Setting
#
# The trained convnet (`dntk.models.trained()`) and three disjoint, seeded subsets of the digits training set:
# the **distilled set** $X_s$ ($m$ real images standing in for distilled ones), the **outer data** ($n_{\text{out}}$
# images whose loss we want to lower), and a **pool** from which the last section selects subsets.

# %%
model = dntk.models.trained(model_name, dataset=dataset, progress=progress)
X_all, y_all = dntk.data.as_tensors(dntk.data.load(dataset, "train"))
perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
i_s, i_out, i_pool = perm[:m], perm[m:m + n_out], perm[m + n_out:m + n_out + n_pool]
X_s, y_s = X_all[i_s], y_all[i_s]
X_out, y_out = X_all[i_out], y_all[i_out]
P = dntk.tangent.num_params(model)
C = int(y_all.max()) + 1
G_s = dntk.tangent.class_gradients(model, X_s, device=device)          # (m, C, P)
G_out = dntk.tangent.class_gradients(model, X_out, device=device)      # (n_out, C, P)
print(f"P = {P} parameters, C = {C}; distilled m = {m} (S has dimension ≤ m·C = {m * C}), outer n = {n_out}")

# %% [markdown]
# ## Distillation chooses a subspace
#
# Stack the logit gradients of the distilled inputs into $G_s \in \mathbb{R}^{mC\times P}$ (one row
# $g_c(\tilde x_j)^\top$ per input and class). Its row space is the **tangent subspace** of the distilled set,
#
# $$ S = \operatorname{rowspace}(G_s), \qquad \Pi_S = G_s^\top (G_sG_s^\top)^{+} G_s \quad\text{(eq 3)}, $$
#
# with $\Pi_S$ the orthogonal projector onto $S$ (`dntk.theory.basis` returns an orthonormal basis $Q$ of $S$,
# $\Pi_S = QQ^\top$, without ever forming a $P\times P$ matrix).
#
# ```{prf:lemma} Loss gradients lie in the logit-gradient span (eq 4, Lemma C.1)
# :label: lem-chain-rule
#
# For any per-example loss $\ell(f(\tilde x_j), \tilde y_j)$ with logit sensitivities $a_{j,c} = \partial\ell/\partial f_c$,
# the gradient of the distilled loss $L_s = \sum_j \ell(f(\tilde x_j), \tilde y_j)$ is
# $\nabla_\theta L_s = \sum_j\sum_c a_{j,c}\, g_c(\tilde x_j) = G_s^\top a \in S$.
# ```
#
# ```{prf:proof}
# The loss depends on $\theta$ only through the logits, so by the chain rule
# $\nabla_\theta \ell(f(\tilde x_j;\theta)) = \sum_c \frac{\partial \ell}{\partial f_c}\nabla_\theta f_c(\tilde x_j;\theta)
# = \sum_c a_{j,c}\, g_c(\tilde x_j)$. Summing over $j$ gives $G_s^\top a$, a combination of the rows of $G_s$.
# ```
#
# So whatever loss and labels a distillation method uses, a gradient step on the distilled set moves
# $\theta$ *inside* $S$: the inputs pick the subspace, the labels only pick the coefficients $a$. Checked
# with autograd on the mean cross-entropy of the distilled set (the mean puts a $1/m$ into $a$), and again on
# the outer data, where the per-example loss gradients from `torch.func` must equal $\sum_c a_{i,c} g_c(x_i)$:

# %%
chain = th.chain_rule(model, X_s, y_s, gradients=G_s)
record("eq 4 (distilled set)", chain, 1e-4)
Gamma = th.loss_gradients(model, X_out, y_out)                          # (n_out, P) per-example ∇ℓ
a_out = th.chain_rule(model, X_out, y_out, gradients=G_out).extra["a"] * n_out   # per-example sensitivities
Gamma_chain = torch.einsum("ncp,nc->np", G_out.double(), a_out)
record("eq 4 (outer, per example)", th.Check("eq 4 per example: ∇ℓ_i = Σ_c a_ic g_c(x_i)", Gamma, Gamma_chain), 1e-4)

# %% [markdown]
# The tolerance is float32's: the network and its gradients are float32, everything after that is float64.

# %% [markdown]
# ## One step of progress is a projection
#
# How much can one step inside $S$ lower the loss $L$ on the outer data? Assume $L$ is $\beta$-smooth
# ($\|\nabla^2 L\|_2 \le \beta$), write $g = \nabla L(\theta)$, and use the standard quadratic upper model.
#
# ```{prf:theorem} One-step smoothness regret (Thm 3.3)
# :label: thm-one-step-regret
#
# Let $q(\Delta) = L(\theta) + g^\top\Delta + \tfrac{\beta}{2}\|\Delta\|^2$. Then $L(\theta+\Delta) \le q(\Delta)$ for every
# $\Delta$. Over $\Delta \in S$, $q$ is minimised by $\Delta^* = -\tfrac1\beta\Pi_S g$, which guarantees the decrease
#
# $$ q(0) - q(\Delta^*) = \frac{\|\Pi_S g\|^2}{2\beta} = \frac{\|g\|^2 - \|(I-\Pi_S)g\|^2}{2\beta} \quad\text{(eq 6)}, $$
#
# and any realised step $\Delta \in S$ (for instance $\Delta = -\eta\, G_s^\top a$) falls short of it by exactly
# $q(\Delta) - q(\Delta^*) = \tfrac\beta2\|\Delta - \Delta^*\|^2$ (the regret, eq 5).
# ```
#
# ```{prf:proof}
# $L(\theta+\Delta) \le q(\Delta)$ is the descent lemma: integrate $\nabla L$ along the segment and bound the change
# of the gradient by $\beta\|\Delta\|$. For $\Delta = Qz \in S$, $q(Qz) = L + (Q^\top g)^\top z + \tfrac\beta2\|z\|^2$ is
# minimised at $z = -Q^\top g/\beta$, i.e. $\Delta^* = -\Pi_S g/\beta$, with value $L - \|\Pi_S g\|^2/(2\beta)$. Since
# $\Pi_S$ is an orthogonal projector, $\|g\|^2 = \|\Pi_S g\|^2 + \|(I-\Pi_S)g\|^2$. Finally, for $\Delta\in S$,
# $g^\top\Delta = (\Pi_S g)^\top\Delta = -\beta\,\Delta^{*\top}\Delta$, so
# $q(\Delta) - q(\Delta^*) = \tfrac\beta2(\|\Delta\|^2 - 2\Delta^{*\top}\Delta + \|\Delta^*\|^2) = \tfrac\beta2\|\Delta-\Delta^*\|^2$.
# ```
#
# Maximising the guaranteed progress therefore means minimising the **projection residual** $\|(I-\Pi_S)g\|^2$:
# a good distilled set spans the directions the real-data gradient points in.
#
# We need $\beta$. A network's loss has no useful global smoothness constant, so we estimate the local one,
# the largest $|\text{eigenvalue}|$ of the Hessian of the outer loss at $\theta$, by power iteration on
# Hessian-vector products (`dntk.theory.smoothness`), and then *check* the upper model $L(\theta+\Delta) \le q(\Delta)$
# with the true loss for the two steps we use. The realised step is one gradient step on the distilled set
# with step size $1/\beta$.

# %%
beta = th.smoothness(model, X_out, y_out, n_iter=power_iters, seed=seed)
Q_s = th.basis(G_s.reshape(m * C, P))                                   # (P, dim S)
up0 = th.upper_model(model, X_out, y_out, torch.zeros(P), beta)
g = up0.extra["g"]                                                      # ∇L on the outer data, (P,)
delta = -(1.0 / beta) * torch.einsum("mcp,mc->p", G_s.double(), chain.extra["a"])   # = -(1/β) ∇L_s ∈ S
one = th.one_step_regret(g, Q_s, beta, delta=delta)
print(f"β ≈ {beta:.3g};  dim S = {Q_s.shape[1]};  L(θ) = {up0.extra['L']:.4g};  ‖g‖ = {g.norm():.3g}")
print(f"share of the outer gradient inside S: ‖Π_S g‖² / ‖g‖² = {one['residual'].lhs / (g @ g):.3f}")
for key in one:
    record(f"Thm 3.3 {key}", one[key], 1e-10)
for name, step in (("Δ*", one["decrease"].extra["delta_star"]), ("realised Δ", delta)):
    chk = th.upper_model(model, X_out, y_out, step, beta)
    record(f"Thm 3.3 upper model at {name}", chk, 0.0)
    print(f"    true decrease L(θ) − L(θ+{name}) = {up0.extra['L'] - chk.lhs.item():.3e}, "
          f"model decrease q(0) − q({name}) = {up0.extra['L'] - chk.rhs.item():.3e}")

# %% [markdown]
# The realised distilled step is *worse* than $\Delta^*$ by exactly the regret term: the distilled labels produce
# coefficients $a$ that are not the best ones for the outer data (Remark 3.4 of the paper — soft labels are
# meant to close this gap). Both steps lower the true loss by no less than the model guarantees.

# %% [markdown]
# ## Competing objectives pick a PCA subspace
#
# A distilled set should serve many outer objectives at once (different batches, examples, tasks), each with
# its own gradient $g$. Averaging the residual of {prf:ref}`thm-one-step-regret` over them gives a clean
# optimisation problem over subspaces.
#
# ```{prf:corollary} PCA of the gradient covariance (Cor 3.5)
# :label: cor-pca-subspace
#
# Let $\Sigma = \mathbb{E}[gg^\top]$ with eigenvalues $\mu_1\ge\mu_2\ge\dots$. For every orthogonal projector $\Pi$,
# $\mathbb{E}\|(I-\Pi)g\|^2 = \operatorname{tr}\Sigma - \operatorname{tr}(\Pi\Sigma)$, and among all $r$-dimensional subspaces
# the minimum, $\sum_{i>r}\mu_i$, is attained by the span of the top-$r$ eigenvectors of $\Sigma$.
# ```
#
# ```{prf:proof}
# $\|(I-\Pi)g\|^2 = g^\top(I-\Pi)g = \operatorname{tr}((I-\Pi)gg^\top)$ because $I-\Pi$ is symmetric and idempotent;
# take expectations. By Ky Fan's maximum principle $\operatorname{tr}(\Pi\Sigma) \le \sum_{i\le r}\mu_i$ for rank-$r$
# projectors, with equality for the top-$r$ eigenspace.
# ```
#
# Realisable subspaces $S$ (spans of logit gradients of $m$ inputs) are a subset of all $mC$-dimensional
# subspaces, so PCA is an upper bound on what any distilled set of that size can achieve. Here the
# objectives are the $n_{\text{out}}$ per-example losses and $\Sigma = \frac1n\Gamma^\top\Gamma$ with $\Gamma$ the
# per-example loss gradients from above; the check compares $S$ with the PCA subspace of the same dimension.

# %%
pca = th.pca_residual(Gamma, Q_s.shape[1], proj=Q_s)
for key in pca:
    record(f"Cor 3.5 {key}", pca[key], 1e-10)
mu = pca["pca_minimum"].extra["mu"]
print(f"E‖(I−Π)g‖² / tr Σ:  distilled S {pca['optimal'].rhs / mu.sum():.3f},  "
      f"PCA of the same dimension {pca['optimal'].lhs / mu.sum():.3f}")

# %% [markdown]
# ## Inducing points and kernel fidelity
#
# The same subspace acts on the kernel. Fix a class $c$ and write $G = G_c(X) \in \mathbb{R}^{N\times P}$ for the
# outer data's class-$c$ gradients and $G_{s} = G_c(X_s) \in \mathbb{R}^{m\times P}$ for the distilled inputs'.
# Projecting the gradients onto a subspace defines a new kernel, $K_\Pi(x,x') = g_c(x)^\top\,\Pi\, g_c(x')$ (eq 7).
#
# ```{prf:proposition} Distilled inputs are inducing points (eqs 8–9)
# :label: prop-nystrom
#
# With $\Pi = \Pi_S$ the projector onto $\operatorname{rowspace}(G_s)$,
# $K_\Pi(X, X) = K_{Xs}K_{ss}^{+}K_{sX}$ with $K_{Xs} = GG_s^\top$ and $K_{ss} = G_sG_s^\top$ — the Nyström
# approximation of the class kernel with the distilled inputs as landmarks.
# ```
#
# ```{prf:proof}
# $G\Pi_SG^\top = GG_s^\top(G_sG_s^\top)^{+}G_sG^\top = K_{Xs}K_{ss}^{+}K_{sX}$.
# ```
#
# ```{prf:proposition} Kernel fidelity (eq 10)
# :label: prop-kernel-fidelity
#
# For every orthogonal projector $\Pi$, $K - K_\Pi = G(I-\Pi)G^\top \succeq 0$, hence
# $\|K-K_\Pi\|_* = \operatorname{tr}(K-K_\Pi) = \|G(I-\Pi)\|_F^2$ and $\|K-K_\Pi\|_2 \le \|G(I-\Pi)\|_2^2$.
# ```
#
# ```{prf:proof}
# $I-\Pi = (I-\Pi)^\top(I-\Pi)$, so $K - K_\Pi = (G(I-\Pi))(G(I-\Pi))^\top$, a Gram matrix: positive semi-definite,
# with nuclear norm equal to its trace $\|G(I-\Pi)\|_F^2$ and spectral norm $\|G(I-\Pi)\|_2^2$ (the bound holds with
# equality).
# ```
#
# ```{prf:proposition} Energy-gap decomposition (Prop 3.6)
# :label: prop-energy-gap
#
# Let $\sigma_1\ge\sigma_2\ge\dots$ be the singular values of $G$ and $\Pi$ any rank-$r$ orthogonal projector. Then
#
# $$ \|G(I-\Pi)\|_F^2 = \sum_{i>r}\sigma_i^2 + \Big(\sum_{i\le r}\sigma_i^2 - \|G\Pi\|_F^2\Big), $$
#
# where the second term is $\ge 0$ and vanishes exactly when $\Pi$ captures as much energy as the top-$r$ right
# singular subspace (PCA).
# ```
#
# ```{prf:proof}
# $\|G(I-\Pi)\|_F^2 = \|G\|_F^2 - \|G\Pi\|_F^2$ for an orthogonal projector, and $\|G\|_F^2 = \sum_i\sigma_i^2$; split
# the sum at $r$. By Ky Fan, $\|G\Pi\|_F^2 = \operatorname{tr}(\Pi G^\top G) \le \sum_{i\le r}\sigma_i^2$.
# ```
#
# Together with {prf:ref}`prop-kernel-fidelity` this says: the trace error of the distilled (Nyström) kernel is
# the unavoidable PCA tail plus a *misalignment* term that measures how far the distilled subspace is from
# the best one. All three statements, checked for the kernel of class {glue:text}`ch04_check_class`:

# %%
G_c, G_sc = G_out[:, check_class], G_s[:, check_class]
Q_c = th.basis(G_sc)
record("eq 9 Nyström form", th.nystrom(G_c, G_sc), 1e-8)
fid = th.kernel_fidelity(G_c, Q_c)
for key in fid:
    record(f"eq 10 {key}", fid[key], 1e-10)
gap = th.energy_gap(G_c, Q_c)
for key in gap:
    record(f"Prop 3.6 {key}", gap[key], 1e-10)
tr_K = float(G_c.double().pow(2).sum())
print(f"class {check_class}: Nyström trace error / tr K = {fid['trace'].rhs / tr_K:.3f} "
      f"= PCA tail {gap['identity'].extra['tail'] / tr_K:.3f} + misalignment {gap['identity'].extra['gap'] / tr_K:.3f}")

# %% [markdown]
# **The checks can fail.** They are not tautologies of the code: hand the same functions a *non-orthogonal*
# "projector" — here an oblique projection onto the same subspace, idempotent but not symmetric — and the
# identities break (shown, not asserted as passing):

# %%
gen = torch.Generator().manual_seed(seed)
B = Q_c + 0.5 * torch.randn(Q_c.shape, generator=gen, dtype=torch.float64)
Q_small = Q_c[:2000]                                    # a 2000-parameter slice keeps the P×P matrix small
B_small = B[:2000]
oblique = Q_small @ torch.linalg.solve(B_small.T @ Q_small, B_small.T)      # idempotent, not symmetric
bad = th.kernel_fidelity(G_c[:, :2000], oblique)
print({k: f"{v.error():.1e}" for k, v in bad.items()})

# %% [markdown]
# ## Which subspace? Random, k-center and PCA
#
# {prf:ref}`cor-pca-subspace` makes a concrete prediction: the fraction of the best possible one-step decrease
# that a subspace guarantees, averaged over the outer examples,
# $\mathbb{E}\|\Pi g\|^2/\mathbb{E}\|g\|^2 = \operatorname{tr}(\Pi\Sigma)/\operatorname{tr}\Sigma$, is largest for the PCA subspace of
# $\Sigma$, and every realisable distilled set of $m$ inputs (dimension $mC$) lies below that curve. We compare two
# ways of picking $m$ real inputs from the pool — uniformly at random, and greedy **k-center** (farthest-point)
# selection on the network's penultimate features — with the PCA bound, for growing $m$.
#
# On the kernel side, Props 3.6 and eq 10 make the analogous prediction for the relative Nyström error
# $\|G_c(I-\Pi)\|_F^2/\|G_c\|_F^2$ of each class kernel when the $m$ selected inputs are its landmarks (dimension
# $m$): PCA of $G_c$ gives the floor (the tail), selections pay the misalignment on top (averaged over classes).
#
# Nested selections and Gram–Schmidt make this cheap: the first $d$ columns of the QR factor of the stacked
# gradients of the first points span exactly the subspace of those points, so one QR per method gives the whole
# curve.

# %%
m_max = max(m_grid)
X_pool = X_all[i_pool]
with torch.no_grad():
    phi = model.features(X_pool).double()
# greedy k-center: start from the point closest to the mean, then repeatedly take the farthest point
order_kc = [int((phi - phi.mean(0)).norm(dim=1).argmin())]
dist = (phi - phi[order_kc[0]]).norm(dim=1)
for _ in range(m_max - 1):
    order_kc.append(int(dist.argmax()))
    dist = torch.minimum(dist, (phi - phi[order_kc[-1]]).norm(dim=1))
order_rand = torch.randperm(len(i_pool), generator=torch.Generator().manual_seed(seed + 1))[:m_max].tolist()
sel = {"random": order_rand, "k-center": order_kc}
G_sel = {name: dntk.tangent.class_gradients(model, X_pool[idx], device=device).double() for name, idx in sel.items()}

trS = float(mu.sum())
tr_Kc = G_out.double().pow(2).sum((0, 2))                                  # tr K_c per class
decrease = {"PCA (bound)": [float(mu[:mm * C].sum()) / trS for mm in m_grid]}
ev_c = [sp.eig_from_features(G_out[:, c])[0] for c in range(C)]           # spectra of the class kernels
nystrom_err = {"PCA (floor)": [float(np.mean([ev_c[c][mm:].sum() / ev_c[c].sum() for c in range(C)]))
                               for mm in m_grid]}
for name, Gsel in G_sel.items():
    Qall, _ = torch.linalg.qr(Gsel.reshape(m_max * C, P).T)              # nested bases, (P, m_max·C)
    cum = torch.cumsum((Gamma @ Qall).pow(2).sum(0) / n_out, 0)
    decrease[name] = [float(cum[mm * C - 1]) / trS for mm in m_grid]
    errs = np.zeros((C, len(m_grid)))
    for c in range(C):
        Qc, _ = torch.linalg.qr(Gsel[:, c].T)                           # (P, m_max), nested per class
        cum_c = torch.cumsum((G_out[:, c].double() @ Qc).pow(2).sum(0), 0)
        errs[c] = [1 - float(cum_c[mm - 1] / tr_Kc[c]) for mm in m_grid]
    nystrom_err[name] = errs.mean(0).tolist()

print(f"{'m':>4}{'dim S':>7}" + "".join(f"{k:>14}" for k in decrease) + "   | Nyström error:" +
      "".join(f"{k:>13}" for k in nystrom_err))
for j, mm in enumerate(m_grid):
    print(f"{mm:>4}{mm * C:>7}" + "".join(f"{v[j]:>14.3f}" for v in decrease.values()) + "   |" + " " * 15 +
          "".join(f"{v[j]:>13.3f}" for v in nystrom_err.values()))

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.3))
styles = {"PCA (bound)": "k-", "PCA (floor)": "k-", "random": "o--", "k-center": "s-."}
for name, v in decrease.items():
    axes[0].plot(np.array(m_grid) * C, v, styles[name], label=name)
axes[0].set_xlabel(r"subspace dimension $mC$")
axes[0].set_ylabel(r"$\mathrm{tr}(\Pi\Sigma) / \mathrm{tr}\,\Sigma$")
axes[0].set_xscale("log")
axes[0].legend(fontsize=9)
for name, v in nystrom_err.items():
    axes[1].plot(m_grid, v, styles[name], label=name)
axes[1].set_xlabel("landmarks $m$")
axes[1].set_ylabel("relative Nyström error")
axes[1].set_xscale("log")
axes[1].set_yscale("log")
axes[1].legend(fontsize=9)
chapter.glue_figure("ch04-subspaces", fig)

# %% [markdown]
# ```{glue:figure} ch04-subspaces
# :name: fig-ch04-subspaces
# :alt: Left, the share of the best one-step decrease against the subspace dimension for PCA, random and k-center subspaces, PCA highest. Right, the relative Nyström error against the number of landmarks on log-log axes, PCA lowest.
#
# Random and k-center selections of real inputs against PCA. Left: the guaranteed one-step decrease as a share
# of the best ({prf:ref}`cor-pca-subspace`); PCA is an upper bound. Right: the relative Nyström trace error
# $\|G_c(I-\Pi)\|_F^2/\|G_c\|_F^2$ ({eq}`eq-kernel-fidelity`), averaged over the classes; PCA is the floor.
# ```

# %% [markdown]
# PCA is, as the corollary says, an upper bound for the decrease (and a floor for the kernel error), and the gap
# to it is large: with a handful of real images the realisable subspaces capture well under the share that
# the same number of PCA directions would. That gap is exactly the misalignment term of
# {prf:ref}`prop-energy-gap` and is what a *good* distillation method (or Algorithm 1 later in the book, which
# builds synthetic gradients from eigenvectors) must close. Random and k-center selection are of similar
# quality here, k-center slightly ahead at most sizes: spreading the picks over feature space helps a little, but it
# does not look at the gradients at all. The paper states these results without a numerical study, so
# there is no figure to compare with; the identities and inequalities are exact, and the comparison is ours.

# %% [markdown]
# ## From eigenvectors back to gradients (Remark 4.2)
#
# A last identity that later chapters rely on: if $v$ is a unit eigenvector of $K = GG^\top$ with eigenvalue
# $\lambda$, then $G^\top v$ — a linear combination of the real gradients with coefficients $v$ — has norm $\sqrt\lambda$
# and is the corresponding principal direction of feature space ($G^\top G\,(G^\top v) = \lambda\, G^\top v$). That is
# how Algorithm 1 turns kernel eigenvectors into synthetic gradients.

# %%
for i in (0, 5):
    for key, chk in th.principal_gradient(G_c, i=i).items():
        record(f"Remark 4.2 {key} (i = {i})", chk, 1e-8)

# %% [markdown]
# ## Checks

# %% tags=["hide-input"]
failed = {k: v for k, v in checks.items() if not v[0] <= v[1]}
assert not failed, failed
# the kernel-side identities genuinely depend on an orthogonal projector
assert not all(c.holds(1e-3) for c in bad.values())
# the realised step lies in S and is no better than the best step in S; both lower the true loss
assert one["regret"].lhs.item() >= 0
# Cor 3.5 on the whole curve: PCA bounds every realisable subspace of the same dimension
for name in sel:
    assert all(p >= s - 1e-12 for p, s in zip(decrease["PCA (bound)"], decrease[name])), name
    assert all(p <= s + 1e-12 for p, s in zip(nystrom_err["PCA (floor)"], nystrom_err[name])), name
# more landmarks never hurt (nested subspaces)
assert all(np.all(np.diff(v) >= -1e-12) for v in decrease.values())
print(f"all {len(checks)} statements hold")
