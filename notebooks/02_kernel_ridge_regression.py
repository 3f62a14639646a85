# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Kernel ridge regression on the network's tangent kernel
#
# The previous chapter built, for a trained network, one *class kernel* per output class,
# $K_c(x, x') = g_c(x)^\top g_c(x')$ with $g_c(x) = \nabla_\theta f_c(x;\theta)$ the gradient of logit
# $c$ with respect to the parameters. This chapter turns those kernels into a predictor: kernel ridge
# regression (KRR, paper App A.3, eqs 16–18) fitted to the **network's own logits**. If the kernel
# model reproduces the network — same predicted class (*fidelity*), close logits — we can study the
# network through the kernel, which is the premise of the whole paper.
#
# What this chapter shows, on the scikit-learn digits dataset and the small convnet every chapter uses:
#
# 1. the three formulas (dual solve, Woodbury primal solve, prediction) and why both solves agree;
# 2. a table: the network's test accuracy next to the KRR's test accuracy, fidelity and logit error;
# 3. how those numbers saturate as the number of training points grows (the trend of the paper's Fig 1);
# 4. a numerical check that the dual and the primal solves give the same model.

# %% tags=["parameters"]
n_train_max = 500        # training points for the largest kernel (the digits train split has 1437)
n_grid = [10, 20, 50, 100, 200]   # smaller training-set sizes for the saturation curve (n_train_max is added)
lam_rel = 1e-3           # ridge: λ_c = lam_rel · tr(K_c) / N (appendix §1)
n_loo = 200              # training points for the leave-one-out λ selection at the end
seed = 0                 # which random training subset
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
from dntk import chapter, metrics
from dntk.krr import ClassKRR

_ = torch.manual_seed(seed)
chapter.use_book_style()
n_train_max = min(int(n_train_max), 1437 if dataset == "digits" else int(n_train_max))
n_grid = sorted({int(n) for n in n_grid if 0 < int(n) < n_train_max} | {n_train_max})

# %% [markdown]
# ## The three formulas
#
# Fix a class $c$ and write $G = G_c \in \mathbb{R}^{N\times P}$ for the matrix whose row $i$ is
# $g_c(x_i)^\top$, so that the class kernel on the training set is $K = G G^\top \in \mathbb{R}^{N\times N}$.
# The regression targets are the network's logits $t_i = f_c(x_i;\theta)$ — we want a kernel model *of the
# network*, not a new classifier fitted to labels. Ridge regression with regulariser $\lambda > 0$
# (eq 16) has the dual solution
#
# $$
# \alpha = (K + \lambda I_N)^{-1} t, \qquad \hat f_c(x) = K_c(x, X)\,\alpha = g_c(x)^\top G^\top \alpha .
# $$
#
# The prediction is linear in the test gradient, $\hat f_c(x) = g_c(x)^\top w$ with weight vector
# $w = G^\top\alpha \in \mathbb{R}^P$ (eq 18). The same $w$ solves a $P\times P$ system (eq 17):
#
# ```{prf:lemma} Push-through (Woodbury) identity
# :label: lem-krr-woodbury
#
# For any $G \in \mathbb{R}^{N\times P}$ and $\lambda > 0$,
# $\;(G^\top G + \lambda I_P)^{-1} G^\top = G^\top (G G^\top + \lambda I_N)^{-1}$.
# Hence the ridge weights are $w = G^\top (K + \lambda I)^{-1} t = (G^\top G + \lambda I)^{-1} G^\top t$.
# ```
#
# ```{prf:proof}
# $G^\top (G G^\top + \lambda I_N) = G^\top G G^\top + \lambda G^\top = (G^\top G + \lambda I_P)\, G^\top$.
# Both brackets are symmetric positive definite because $\lambda > 0$, so multiply by
# $(G^\top G + \lambda I_P)^{-1}$ on the left and by $(G G^\top + \lambda I_N)^{-1}$ on the right.
# ```
#
# The lemma lets us solve in whichever space is smaller. The *dual* solve factorises the $N\times N$
# matrix $K + \lambda I$ (cost $O(N^2 P + N^3/3)$), the *primal* solve the $P\times P$ (or, after a
# random projection to width $k$, $k\times k$) matrix $G^\top G + \lambda I$ (cost $O(N P^2 + P^3/3)$).
# `dntk.krr.ClassKRR` picks the dual when $N \le P$ and the primal otherwise, always with a float64
# Cholesky factorisation. Here $P$ = {glue:text}`ch02_P:,` parameters and $N \le$ {glue:text}`ch02_n_max`, so the dual is the one
# that runs; the primal solve becomes the cheap one once gradients are projected to a few hundred
# dimensions (later chapters).
#
# **Choosing λ.** The kernel's scale depends on the network, so λ is set relative to it:
# $\lambda_c = \lambda_{\text{rel}}\,\mathrm{tr}(K_c)/N$, i.e. $\lambda_{\text{rel}}$ times the mean
# eigenvalue of $K_c$ ({eq}`eq-lambda-rel`). `ClassKRR(select="loo")` or `select="gcv"` instead picks
# $\lambda_{\text{rel}}$ per class on a grid from closed-form leave-one-out residuals
# $e = (I-H)t \oslash \operatorname{diag}(I-H)$ with $H = K(K+\lambda I)^{-1}$ (Allen's PRESS
# {cite}`allen1974press`, {eq}`eq-loo-press`), which needs one
# eigendecomposition of $K$ for the whole grid; we use it at the end of the chapter.
#
# The full predictor stacks the classes, $\hat f(x) = (\hat f_1(x),\dots,\hat f_C(x))$, and is scored on
# held-out test points by **accuracy** (argmax matches the label), **fidelity** (argmax matches the
# network's argmax), the **relative logit error** $\|\hat f - f\|_F/\|f\|_F$ and the logit $R^2$.

# %% [markdown]
# ## The network and its tangent features
#
# `dntk.models.trained()` returns the convnet trained on the digits training split (trained once and
# cached). We draw a seeded random subset of {glue:text}`ch02_n_max` training points; the smaller training sets
# of the saturation curve are prefixes of the same random order, so they are nested.

# %%
model = dntk.models.trained(model_name, dataset=dataset, progress=progress)
X_all, y_all = dntk.data.as_tensors(dntk.data.load(dataset, "train"))
X_test, y_test = dntk.data.as_tensors(dntk.data.load(dataset, "test"))
order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))[:n_train_max]
X_train, y_train = X_all[order], y_all[order]

f_train = dntk.tangent.logits(model, X_train)           # regression targets (N, C)
f_test = dntk.tangent.logits(model, X_test)             # what the kernel model should reproduce
net_test_acc = metrics.accuracy(f_test, y_test)
P = dntk.tangent.num_params(model)
C = f_test.shape[1]
print(f"{model_name}: P = {P} trainable parameters, C = {C} classes")
print(f"train subset N = {len(y_train)} of {len(y_all)}, test N* = {len(y_test)}")
print(f"network test accuracy: {net_test_acc:.4f}")
chapter.glue_number("ch02_P", P)
chapter.glue_number("ch02_n_max", n_train_max)
chapter.glue_number("ch02_n_all", len(y_all))
chapter.glue_number("ch02_n_loo", min(int(n_loo), n_train_max))

# %% [markdown]
# The exact per-class gradients of every training and test point, `(N, C, P)` float32
# ({doc}`01_ntk_and_jacobians` checks them against autograd). At the default sizes they take
# {glue:text}`ch02_feat_mib:.0f` MiB; the dual
# solve only ever needs the $N\times N$ class kernels built from them (float64, computed one class at a time).

# %%
G_train = dntk.tangent.class_gradients(model, X_train, device=device, progress=progress)
G_test = dntk.tangent.class_gradients(model, X_test, device=device, progress=progress)
print("train features", tuple(G_train.shape), "test features", tuple(G_test.shape))
print(f"memory: {(G_train.numel() + G_test.numel()) * 4 / 2**20:.0f} MiB (float32)")
chapter.glue_number("ch02_feat_mib", (G_train.numel() + G_test.numel()) * 4 / 2**20)

# %% [markdown]
# ## KRR on the full class kernels
#
# A `ClassKRR` fit is ten independent ridge regressions, one per class, each on its own kernel $K_c$ and
# its own target column. We fit it on every training-set size of the grid at once (the saturation curve
# below reuses these fits); the largest, all {glue:text}`ch02_n_max` points, is "the full-kernel KRR".

# %%
def evaluate(pred):
    return {
        "accuracy": metrics.accuracy(pred, y_test),
        "fidelity": metrics.fidelity(pred, f_test),
        "rel. logit error": metrics.relative_logit_error(pred, f_test),
        "logit R²": metrics.logit_r2(pred, f_test),
    }


rows = []
for n in n_grid:
    krr = ClassKRR(lam_rel=lam_rel).fit(G_train[:n], f_train[:n])
    rows.append({"N": n, **evaluate(krr.predict(G_test))})
full = rows[-1]                                           # krr is now the N = n_train_max fit
print(f"solver: {krr.solver_} (N = {krr.n_samples_fit_} ≤ P = {krr.n_features_in_}),  "
      f"λ_c / (tr K_c / N) = {lam_rel:g}")
print()
print(f"{'model':<34}{'test acc':>9}{'fidelity':>10}{'rel. logit err':>16}{'logit R²':>10}")
print(f"{'network (' + model_name + ')':<34}{net_test_acc:>9.4f}{1.0:>10.4f}{0.0:>16.4f}{1.0:>10.4f}")
print(f"{f'KRR on class kernels, N = {n_train_max}':<34}{full['accuracy']:>9.4f}{full['fidelity']:>10.4f}"
      f"{full['rel. logit error']:>16.4f}{full['logit R²']:>10.4f}")
chapter.glue_number("ch02_fid", full["fidelity"])
chapter.glue_number("ch02_logit_err", full["rel. logit error"])

# %% [markdown]
# The kernel model agrees with the network on almost every test digit (fidelity {glue:text}`ch02_fid:.3f`) and
# recovers the logits to within a relative error of {glue:text}`ch02_logit_err:.3f`, although it is a linear model in the tangent features: around the trained parameters
# the network behaves very much like its linearisation on this data.

# %% [markdown]
# ## Saturation with the number of training points
#
# Fig 1 of {cite:t}`mahowald2026dntk` shows that accuracy and fidelity of the kernel model climb to the network's level
# with few training points. The fits above used nested random subsets of growing size $N$ (same λ rule),
# each scored on the same test set.

# %%
print(f"{'N':>6}{'test acc':>10}{'fidelity':>10}{'rel. logit err':>16}{'logit R²':>10}")
for r in rows:
    print(f"{r['N']:>6}{r['accuracy']:>10.4f}{r['fidelity']:>10.4f}{r['rel. logit error']:>16.4f}{r['logit R²']:>10.4f}")

# %% tags=["hide-input"]
Ns = np.array([r["N"] for r in rows])
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.2))
axes[0].plot(Ns, [r["accuracy"] for r in rows], "o-", label="KRR accuracy")
axes[0].plot(Ns, [r["fidelity"] for r in rows], "s--", label="KRR fidelity")
axes[0].axhline(net_test_acc, color="k", lw=1, ls=":", label="network accuracy")
axes[0].set_xscale("log")
axes[0].set_xlabel("training points $N$")
axes[0].set_ylabel("fraction of test set")
axes[0].legend(loc="lower right")
axes[1].loglog(Ns, [r["rel. logit error"] for r in rows], "o-")
axes[1].set_xlabel("training points $N$")
axes[1].set_ylabel(r"$\|\hat f - f\|_F / \|f\|_F$ on test")
chapter.glue_figure("ch02-saturation", fig)

# %% [markdown]
# ```{glue:figure} ch02-saturation
# :name: fig-ch02-saturation
# :alt: Left, test accuracy and fidelity of the kernel model rising with the number of training points to the network's accuracy. Right, the relative logit error falling on log-log axes.
#
# KRR on the exact class kernels as the number $N$ of training points grows: test accuracy and fidelity
# (left) against the network's accuracy (dotted), and the relative error of the predicted logits (right).
# ```

# %% [markdown]
# Accuracy and fidelity reach the network's level with a few hundred points at most, while the logit
# error keeps falling slowly: the argmax is easy to reproduce, the exact logit values need more of the
# kernel's spectrum. That this happens with so few points is the first sign of the *data redundancy*
# the next chapter quantifies with the kernels' eigenvalue spectra.

# %% [markdown]
# ## Dual = primal
#
# With $P$ = {glue:text}`ch02_P:,` the primal $P\times P$ system is far too big to factorise here
# ({glue:text}`ch02_primal_gib:.1f` GiB in float64), so we
# check {prf:ref}`lem-krr-woodbury` numerically on the gradients of the **last BatchNorm layer and the
# linear head** — the same network, restricted to its final {glue:text}`ch02_k_tail` parameters, which is itself a valid
# tangent kernel (of the sub-network in which only those parameters train). Forcing `solver="dual"`
# ($N\times N$) and `solver="primal"` ($k\times k$) must give the same weights and predictions up to
# round-off.

# %%
layout = {b.name: b for b in dntk.tangent.param_layout(model)}
tail = [n for n in layout if n.startswith("head.")]
last_bn = [n for n in layout if n.startswith("features.") and len(layout[n].shape) == 1][-2:]
cols = torch.cat([torch.arange(layout[n].offset, layout[n].offset + layout[n].size) for n in last_bn + tail])
H_train, H_test = G_train[:, :, cols], G_test[:, :, cols]
chapter.glue_number("ch02_k_tail", len(cols))
chapter.glue_number("ch02_primal_gib", P**2 * 8 / 2**30)
dual = ClassKRR(lam_rel=lam_rel, solver="dual").fit(H_train, f_train)
primal = ClassKRR(lam_rel=lam_rel, solver="primal").fit(H_train, f_train)
p_dual, p_primal = dual.predict(H_test), primal.predict(H_test)
dual_primal_gap = float((p_dual - p_primal).abs().max() / p_dual.abs().max())
weight_gap = float((dual.weights_ - primal.weights_).norm() / dual.weights_.norm())
print(f"parameters used: {', '.join(last_bn + tail)}  (k = {len(cols)}), N = {len(H_train)}")
print(f"max |dual − primal| / max |dual| on test predictions: {dual_primal_gap:.1e}")
print(f"‖w_dual − w_primal‖ / ‖w_dual‖: {weight_gap:.1e}")
print(f"this sub-kernel alone: test acc {metrics.accuracy(p_dual, y_test):.4f}, "
      f"fidelity {metrics.fidelity(p_dual, f_test):.4f}")

# %% [markdown]
# ## λ by closed-form leave-one-out
#
# How much does the λ rule matter? `dntk.krr.loo_gcv` returns the exact leave-one-out residuals for a
# whole grid of λ from one eigendecomposition per class (a test checks them against brute-force
# refits). Below, on the first {glue:text}`ch02_n_loo` training points: the mean squared LOO residual across
# $\lambda_{\text{rel}}$, and the test metrics with λ chosen per class by LOO next to the default λ.

# %%
lam_grid = 10.0 ** np.arange(-12.0, 1.01, 1.0)
n_loo = min(int(n_loo), n_train_max)
krr_loo = ClassKRR(select="loo", lam_grid=lam_grid).fit(G_train[:n_loo], f_train[:n_loo])
loo = evaluate(krr_loo.predict(G_test))
default_loo = evaluate(ClassKRR(lam_rel=lam_rel).fit(G_train[:n_loo], f_train[:n_loo]).predict(G_test))
print("λ_rel chosen by LOO per class:", " ".join(f"{v:.0e}" for v in krr_loo.lam_rel_.tolist()))
loo_mse = float(krr_loo.loo_residuals_.pow(2).mean())
test_mse = float((krr_loo.predict(G_test) - f_test.double()).pow(2).mean())
print(f"logit mean squared error: LOO estimate {loo_mse:.4f}, measured on the test set {test_mse:.4f}")
for name, r in ((f"default λ_rel = {lam_rel:g}", default_loo), ("λ_rel chosen by LOO", loo)):
    print(f"N = {n_loo}, {name:<22}: test acc {r['accuracy']:.4f}, fidelity {r['fidelity']:.4f}, "
          f"rel. logit error {r['rel. logit error']:.4f}")

chapter.glue_number("ch02_lam_rel", lam_rel)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.0))
ax.loglog(krr_loo.lam_grid_, krr_loo.cv_scores_[0], "o-", label="class 0")
ax.loglog(krr_loo.lam_grid_, krr_loo.cv_scores_.mean(0), "k--", label="mean over classes")
ax.axvline(lam_rel, color="gray", ls=":", label="default")
ax.set_xlabel(r"$\lambda_{\mathrm{rel}}$")
ax.set_ylabel("mean squared LOO residual")
ax.legend()
chapter.glue_figure("ch02-loo", fig)

# %% [markdown]
# ```{glue:figure} ch02-loo
# :name: fig-ch02-loo
# :alt: Mean squared leave-one-out residual against the relative ridge parameter on log-log axes, flat for small values and rising for large ones, with the default marked by a dotted vertical line.
#
# Closed-form leave-one-out error of the logits against $\lambda_{\text{rel}}$, for one class and averaged
# over the classes; the dotted line is the default $\lambda_{\text{rel}}$ = {glue:text}`ch02_lam_rel`.
# ```

# %% [markdown]
# Leave-one-out prefers almost no regularisation: the logits are so well described by the tangent
# features that the kernel model can nearly interpolate them without overfitting, and the LOO curve is
# flat below the default $\lambda_{\text{rel}}$ = {glue:text}`ch02_lam_rel`, which is why the default and the LOO choice give
# the same test metrics. The LOO estimate of the logit error, computed from the training points alone,
# is close to the error measured on the test set.

# %% [markdown]
# ## How this compares with the paper
#
# The paper's Fig 1 uses ImageNette, a ResNet-18 and a WMDD-distilled training set ({doc}`06_wmdd`); we use
# 8×8 digits, a convnet with {glue:text}`ch02_P:,` parameters and random subsets of the real
# training set, so the absolute numbers differ: our network is already ≈ 99% accurate and the kernel model
# matches it almost exactly. The *trend* reproduces: fidelity and accuracy saturate at the network's
# level with a small fraction of the training set. By default the largest kernel uses {glue:text}`ch02_n_max`
# of the {glue:text}`ch02_n_all` training points so that the chapter runs in under a minute on two CPU cores; for the whole split
# rerun it with papermill overrides, e.g.
# `make run NB=02_kernel_ridge_regression P='-p n_train_max 1437'`.

# %% [markdown]
# ## Checks
# The chapter's claims, asserted so that a change that breaks them fails the build.

# %% tags=["hide-input"]
# the kernel model reproduces the network on held-out digits
assert full["fidelity"] >= 0.95, full
assert full["accuracy"] >= net_test_acc - 0.03, (full, net_test_acc)
assert full["rel. logit error"] < 0.25 and full["logit R²"] > 0.9, full
# saturation: more training points never make the largest-N model worse than the smallest one,
# and the logit error falls substantially over the grid
assert rows[-1]["fidelity"] >= rows[0]["fidelity"] and rows[-1]["accuracy"] >= rows[0]["accuracy"]
assert rows[-1]["rel. logit error"] < 0.5 * rows[0]["rel. logit error"]
# dual and primal solves are the same model (Woodbury, eq 17)
assert dual.solver_ == "dual" and primal.solver_ == "primal"
assert dual_primal_gap < 1e-8 and weight_gap < 1e-6, (dual_primal_gap, weight_gap)
# leave-one-out (closed form) predicts the held-out logit error, and its λ is as good as the default
assert 0.5 < loo_mse / test_mse < 2.0, (loo_mse, test_mse)
assert loo["fidelity"] >= default_loo["fidelity"] - 0.01, (loo, default_loo)
print("all checks passed")
