# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Where the kernel model's error comes from
#
# A kernel ridge regression (KRR) model of a network ({doc}`02_kernel_ridge_regression`) misses the network's logits for three
# different reasons, and Appendix B of {cite:t}`mahowald2026dntk` separates them (Prop B.3; appendix
# {ref}`maths-5`):
#
# 1. **approximation** — the network is not exactly a linear function of its tangent features;
# 2. **bias** — the ridge penalty λ shrinks the fit;
# 3. **variance** — the model is estimated from $N$ training points instead of the whole distribution.
#
# This chapter measures the three terms on real tangent features of the digits convnet as $N$ and λ vary,
# checks the exact identities behind the decomposition, and compares the bias with its closed form.

# %% tags=["parameters"]
k = 512                    # JL projection dimension of the tangent features
projector_kind = "gaussian"
n_grid = [25, 50, 100, 200, 400, 800]          # training-set sizes for the sweep over N
rho_grid = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]  # relative population ridge λ_pop / tr(Σ) for the sweep over λ
rho_fixed = 1e-4           # λ_pop / tr(Σ) used in the sweep over N
n_fixed = 200              # N used in the sweep over λ
n_draws = 5                # random training sets per (N, λ); the variance term is averaged over them
seed = 0
model_name = "convnet"
dataset = "digits"
device = "cpu"
progress = False

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

import dntk.data
import dntk.models
import dntk.projection
import dntk.tangent
from dntk import chapter
from dntk.error_decomposition import ErrorDecomposer

chapter.use_book_style()

# %% [markdown]
# ## The decomposition
#
# Write $g(x) \in \mathbb{R}^k$ for the (projected) tangent features of one class and $f(x)$ for that
# class's network logit, centred so that its population mean is zero (App B assumes this). With the
# population covariance $\Sigma = \mathbb{E}[g g^\top]$ and its sample version
# $\hat\Sigma = \frac1N \sum_i g(x_i) g(x_i)^\top$, App B defines three successive approximations of $f$:
#
# $$
# f^*(x) = g(x)^\top w^*,\; w^* = \Sigma^{+}\,\mathbb{E}[g f]; \qquad
# f_\lambda(x) = g(x)^\top w_\lambda,\; w_\lambda = (\Sigma + \lambda I)^{-1}\mathbb{E}[g f]; \qquad
# \hat f(x) = g(x)^\top \hat w,\; \hat w = (\hat\Sigma + \lambda I)^{-1}\tfrac1N \textstyle\sum_i g(x_i) f(x_i).
# $$
#
# $f^*$ is the best linear function of the gradient features, $f_\lambda$ its ridge-regularised version
# and $\hat f$ the KRR model fitted on $N$ points.
#
# ```{prf:proposition} Error decomposition (Prop B.3)
# :label: prop-error-decomposition
#
# For every input $x$,
#
# $$
# f - \hat f = \underbrace{(f - f^*)}_{\text{approximation}} + \underbrace{(f^* - f_\lambda)}_{\text{bias}}
# + \underbrace{(f_\lambda - \hat f)}_{\text{variance}},
# $$
#
# and therefore
#
# $$
# \mathbb{E}(f - \hat f)^2 \le 3\big(\mathbb{E}(f-f^*)^2 + \mathbb{E}(f^*-f_\lambda)^2
# + \mathbb{E}(f_\lambda-\hat f)^2\big).
# $$
#
# Moreover the approximation term is orthogonal to every linear function of the features, so in fact
# $\mathbb{E}(f - \hat f)^2 = \mathbb{E}(f-f^*)^2 + \mathbb{E}(f^*-\hat f)^2$.
# ```
#
# ```{prf:proof}
# The identity telescopes, and $(a+b+c)^2 \le 3(a^2+b^2+c^2)$ by Cauchy–Schwarz. For the last claim:
# $w^*$ minimises $\mathbb{E}(f - g^\top w)^2$, so $\mathbb{E}[g\,(f - f^*)] = 0$; every
# $f^* - \hat f = g^\top(w^* - \hat w)$ is linear in $g$, hence uncorrelated with $f - f^*$.
# ```
#
# **The bias in closed form.** Expanding in the eigenpairs $(\mu_j, v_j)$ of $\Sigma$,
# $w^* - w_\lambda = \lambda(\Sigma+\lambda I)^{-1} w^*$, so
#
# $$
# \mathbb{E}(f^* - f_\lambda)^2 = \sum_j \mu_j \Big(\frac{\lambda}{\mu_j + \lambda}\Big)^2 \langle v_j, w^*\rangle^2 ,
# $$
#
# which grows monotonically with λ and stays small when the target lives on eigendirections with
# $\mu_j \gg \lambda$ (the paper's condition [3]).
#
# **The variance** is the finite-sample term; App B argues it scales like
# $\sigma^2\, d_{\mathrm{eff}}(\lambda)/N$ with the effective dimension
# $d_{\mathrm{eff}}(\lambda) = \sum_j \mu_j/(\mu_j+\lambda)$ and $\sigma^2$ the residual variance
# $\mathbb{E}(f - f_\lambda)^2$ that the ridge fit cannot explain.
#
# **What stands in for the population.** We have no distribution, only data, so a *pool* plays its role:
# all {glue:text}`ch11_n_pool` digits (train and test splits together). Expectations are averages over the pool, $f^*$ is
# least squares on the pool, $f_\lambda$ is ridge on the pool, and each $\hat f$ is ridge on $N$ points
# drawn from the pool without replacement; all three are evaluated on the whole pool (appendix
# {ref}`maths-5`). Note
# the scaling: $(\hat\Sigma + \lambda I)^{-1}$ is KRR with ridge $N\lambda$ on the kernel $G G^\top$,
# so a fixed population λ means a KRR ridge that grows with $N$. We set
# $\lambda = \rho\,\mathrm{tr}(\Sigma)$ per class; for comparison, the library's default KRR rule
# $\lambda_{\text{KRR}} = 10^{-3}\,\mathrm{tr}(K)/N$ corresponds to $\rho = 10^{-3}/N$.
#
# The features are the tangent features projected to $k$ = {glue:text}`ch11_k` dimensions (`dntk.projection`,
# {doc}`07_random_projection`): with all $P$ = {glue:text}`ch11_P:,` exact features the pool's least squares
# would interpolate all {glue:text}`ch11_n_pool` points and the approximation term would vanish trivially.

# %%
model = dntk.models.trained(model_name, dataset=dataset, progress=progress)
X_tr, _ = dntk.data.as_tensors(dntk.data.load(dataset, "train"))
X_te, _ = dntk.data.as_tensors(dntk.data.load(dataset, "test"))
X_pool = torch.cat([X_tr, X_te])
projector = dntk.projection.make(projector_kind, k, seed=seed)
G_pool = dntk.tangent.class_gradients(model, X_pool, projector=projector, device=device, progress=progress)
f_pool = dntk.tangent.logits(model, X_pool)
n_pool, C, _ = G_pool.shape
chapter.glue_number("ch11_n_pool", n_pool)
chapter.glue_number("ch11_k", k)
chapter.glue_number("ch11_P", dntk.tangent.num_params(model))
print(f"pool: n = {n_pool} digits, C = {C} classes, features {tuple(G_pool.shape)} "
      f"({projector_kind} projection of P = {dntk.tangent.num_params(model)} to k = {k})")

# %% [markdown]
# `dntk.error_decomposition.ErrorDecomposer` factorises each class's pool features once (a thin SVD) and then returns
# the three terms for any training draw and λ.

# %%
dec = ErrorDecomposer(G_pool, f_pool)           # centres the logits by their pool mean
trace_sigma = (G_pool.double() ** 2).sum(2).mean(0)   # tr Σ_c = E‖g_c‖², (C,)
rng = torch.Generator().manual_seed(seed)
n_grid = sorted(int(n) for n in n_grid if int(n) < n_pool)


def draws(n):
    return torch.stack([torch.randperm(n_pool, generator=rng)[:n] for _ in range(n_draws)])


def measure(n, rho):
    d = dec.decompose(draws(n), rho * trace_sigma)
    ms = d.mean_squares()
    ms["bias+variance"] = float((d.bias + d.variance).pow(2).mean())
    ms["identity gap"] = float((d.approximation + d.bias + d.variance - d.total).abs().max())
    return ms


logit_var = float(dec.targets.pow(2).mean())
approx_ms = float((dec.targets - dec.f_star).pow(2).mean())
print(f"mean square of the centred logits: {logit_var:.3f}")
print(f"approximation term E(f − f*)²: {approx_ms:.4f}  "
      f"(linear R² of the logits on the features: {1 - approx_ms / logit_var:.4f})")

# %% [markdown]
# ## Sweep over the number of training points
#
# At fixed $\rho$ = {glue:text}`ch11_rho_fixed:.0e`, the mean squares over the pool (averaged over
# {glue:text}`ch11_n_draws` random training sets of each size):

# %%
chapter.glue_number("ch11_rho_fixed", rho_fixed)
chapter.glue_number("ch11_n_draws", n_draws)
chapter.glue_number("ch11_n_fixed", n_fixed)
by_n = [{"N": n, **measure(n, rho_fixed)} for n in n_grid]
hdr = f"{'N':>6}{'approx.':>10}{'bias':>10}{'variance':>10}{'total':>10}"
print(hdr)
for r in by_n:
    print(f"{r['N']:>6}{r['approximation']:>10.4f}{r['bias']:>10.4f}{r['variance']:>10.4f}{r['total']:>10.4f}")
Ns = np.array([r["N"] for r in by_n], dtype=float)
var_n = np.array([r["variance"] for r in by_n])
slope_n = float(np.polyfit(np.log(Ns), np.log(var_n), 1)[0])
print(f"log–log slope of the variance term against N: {slope_n:.2f} (App B: −1)")
chapter.glue_number("ch11_slope_n", slope_n)

# %% [markdown]
# ## Sweep over λ
#
# At fixed $N$ = {glue:text}`ch11_n_fixed`, varying $\rho = \lambda/\mathrm{tr}\,\Sigma$. The closed-form bias uses the
# eigendecomposition of the pool covariance $\Sigma = G^\top G/n$ per class (computed here independently
# of the library), and the variance is compared with the heuristic $\sigma^2 d_{\mathrm{eff}}(\lambda)/N$.

# %%
by_rho = [{"rho": rho, **measure(n_fixed, rho)} for rho in rho_grid]

bias_formula, var_heuristic = [], []
spectra = []
for c in range(C):
    G = G_pool[:, c, :].double()
    t = dec.targets[:, c]
    mu, V = torch.linalg.eigh(G.T @ G / n_pool)                 # Σ = Σ_j μ_j v_j v_jᵀ
    keep = mu > mu.max() * k * torch.finfo(torch.float64).eps
    coef = torch.zeros_like(mu)
    Vgf = V.T @ (G.T @ t / n_pool)                              # Vᵀ E[g f]
    coef[keep] = Vgf[keep] / mu[keep]                            # ⟨v_j, w*⟩, w* = Σ⁺ E[g f]
    spectra.append((mu, coef ** 2, t, G @ V, Vgf))
for rho in rho_grid:
    b, v = 0.0, 0.0
    for c, (mu, a2, t, GV, Vgf) in enumerate(spectra):
        lam = rho * float(trace_sigma[c])
        b += float((mu * (lam / (mu + lam)) ** 2 * a2).sum()) / C
        f_lam = GV @ (Vgf / (mu + lam))                          # g(x)ᵀ (Σ + λI)⁻¹ E[g f] on the pool
        sigma2 = float((t - f_lam).pow(2).mean())
        v += sigma2 * float((mu / (mu + lam)).sum()) / n_fixed / C
    bias_formula.append(b)
    var_heuristic.append(v)

print(f"{'ρ':>8}{'bias':>10}{'bias (formula)':>16}{'variance':>10}{'σ²d_eff/N':>11}{'total':>10}")
for r, bf, vh in zip(by_rho, bias_formula, var_heuristic):
    print(f"{r['rho']:>8.0e}{r['bias']:>10.4f}{bf:>16.4f}{r['variance']:>10.4f}{vh:>11.4f}{r['total']:>10.4f}")
best_rho = by_rho[int(np.argmin([r["total"] for r in by_rho]))]["rho"]
print(f"smallest total error at ρ = {best_rho:.0e} for N = {n_fixed}")
chapter.glue_number("ch11_best_rho", best_rho)

# %% tags=["hide-input"]
styles = (("approximation", "o-"), ("bias", "s-"), ("variance", "^-"), ("total", "k--"))
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.4), sharey=True)
ax = axes[0]
for key, style in styles:
    ax.loglog(Ns, [r[key] for r in by_n], style, label=key)
ax.loglog(Ns, var_n[0] * Ns[0] / Ns, ":", color="gray", label=r"$\propto 1/N$")
ax.set_xticks(Ns, [str(int(n)) for n in Ns])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("training points $N$")
ax.set_ylabel("mean square over the pool")
ax.set_title(rf"against $N$ ($\rho$ = {rho_fixed:.0e})")
ax = axes[1]
rhos = np.array(rho_grid)
for key, style in styles:
    ax.loglog(rhos, [max(r[key], 1e-12) for r in by_rho], style)
ax.loglog(rhos, np.maximum(bias_formula, 1e-12), "x", color="C1", ms=9, label="bias, closed form")
ax.loglog(rhos, var_heuristic, ":", color="C2", label=r"$\sigma^2 d_{\rm eff}/N$")
ax.set_xticks(rhos[::2])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel(r"$\rho = \lambda / \mathrm{tr}\,\Sigma$")
ax.set_title(f"against λ ($N$ = {n_fixed})")
fig.legend(loc="outside lower center", ncol=4, fontsize=9)
chapter.glue_figure("ch11-terms", fig)

# %% [markdown]
# ```{glue:figure} ch11-terms
# :name: fig-ch11-terms
# :alt: Two log-log panels: approximation, bias, variance and total error against the number of training points (the variance falls like 1/N) and against the ridge parameter (the bias grows and matches its closed form, the variance shrinks).
#
# The three error terms of {prf:ref}`prop-error-decomposition` on the digits pool. Left: against the
# number of training points $N$ at fixed ridge; the dotted grey line has slope $-1$. Right: against the
# relative ridge $\rho$ at fixed $N$, with the closed-form bias (crosses) and the heuristic
# $\sigma^2 d_{\mathrm{eff}}/N$ for the variance (dotted).
# ```

# %% [markdown]
# ## Reading the numbers
#
# - The **approximation** term does not depend on $N$ or λ. It is small: a linear function of the
#   projected tangent features explains most of the variance of the logits over the pool, which is
#   the "near the lazy regime" condition [1] of App B holding for this network on this data.
# - The **bias** term grows monotonically with λ and matches its spectral formula to round-off; for
#   small λ it is negligible because the logits live on the leading eigendirections of $\Sigma$.
# - The **variance** term falls roughly like $1/N$ (log–log slope {glue:text}`ch11_slope_n:.2f`) and shrinks
#   as λ grows; the heuristic
#   $\sigma^2 d_{\mathrm{eff}}/N$ gets its order of magnitude and its trend in λ right but is not a
#   bound (it assumes homoscedastic residuals).
# - Their sum shows the usual trade-off in λ: the total error is smallest at an intermediate λ
#   ($\rho$ = {glue:text}`ch11_best_rho:.0e` here).
#
# The paper states Prop B.3 and the scalings without measuring them; these are our own measurements on
# digits, so there is no paper number to compare with. The approximation term is measured in-sample on the
# pool (least squares with $k$ = {glue:text}`ch11_k` features on {glue:text}`ch11_n_pool` points), so it
# slightly underestimates the population value.

# %% [markdown]
# ## Checks

# %% tags=["hide-input"]
for r in by_n + by_rho:
    # the decomposition is an identity, and the approximation term is orthogonal to the rest
    assert r["identity gap"] < 1e-9, r
    assert abs(r["total"] - r["approximation"] - r["bias+variance"]) < 1e-9 * max(1.0, r["total"]), r
    assert r["total"] <= 3 * (r["approximation"] + r["bias"] + r["variance"]) + 1e-12
# approximation: small, and the same for every N and λ
assert approx_ms < 0.2 * logit_var, (approx_ms, logit_var)
assert max(abs(r["approximation"] - approx_ms) for r in by_n + by_rho) < 1e-12
# bias: grows with λ, equals its closed form, independent of N
bias_rho = np.array([r["bias"] for r in by_rho])
assert np.all(np.diff(bias_rho) > 0), bias_rho
assert np.allclose(bias_rho, bias_formula, rtol=1e-6, atol=1e-12), (bias_rho, bias_formula)
assert max(r["bias"] for r in by_n) - min(r["bias"] for r in by_n) < 1e-12
# variance: shrinks with N roughly like 1/N, and shrinks with λ
assert var_n[-1] < 0.1 * var_n[0], var_n
assert -1.6 < slope_n < -0.6, slope_n
var_rho = np.array([r["variance"] for r in by_rho])
assert var_rho[-1] < 0.5 * var_rho[0], var_rho
# bias–variance trade-off: the best λ is neither the smallest nor the largest on the grid
assert rho_grid[0] < best_rho < rho_grid[-1], best_rho
print("all checks passed")
