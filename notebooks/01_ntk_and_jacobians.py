# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # The neural tangent kernel and per-class Jacobians
#
# Everything in this book is built from one object: the gradient of a network's output with respect
# to its parameters. This chapter defines it (Sec 3.1 and App A.1–A.2 of {cite:t}`mahowald2026dntk`, eq 1;
# appendix {ref}`maths-0`), computes it
# for a small trained convolutional network on the scikit-learn digits, checks two independent exact
# ways of getting the kernel it induces against each other, and counts what the kernel costs — which
# is the reason the rest of the paper exists.
#
# **Setting.** A classifier $f(x;\theta) \in \mathbb{R}^C$ returns $C$ logits (pre-softmax scores);
# $\theta \in \mathbb{R}^P$ are its *trainable* parameters. BatchNorm layers are used in evaluation
# mode, so their running statistics are fixed buffers, not parameters, and each input is processed on
# its own (no batch dependence).

# %% tags=["parameters"]
n_per_class = 8  # samples per class for the class kernels (N = 10 * n_per_class)
n_ntk = 12  # samples for the full C×C-block NTK
seed = 0

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from dntk import chapter, data, kernel, models, tangent

_ = torch.manual_seed(seed)
chapter.use_book_style()
model = models.trained("convnet", dataset="digits", seed=0)
train = data.load("digits", "train")
X, y = data.as_tensors(train, per_class=n_per_class, seed=seed)
C = train.num_classes
P = tangent.num_params(model)
print(f"convnet: P = {P:,} trainable parameters, C = {C} classes; N = {len(X)} digits of shape {tuple(X.shape[1:])}")

# %% [markdown]
# ## Per-class gradients and the empirical NTK
#
# ```{prf:definition} Per-class logit gradient and Jacobian
# :label: def-class-gradient
#
# For an input $x$ and class $c$, the *per-class logit gradient* is
# $g_c(x) = \nabla_\theta f_c(x;\theta) \in \mathbb{R}^P$. Stacking the $C$ of them as rows gives the
# Jacobian $J(x) \in \mathbb{R}^{C\times P}$. For a set $X = \{x_i\}_{i=1}^N$, the *class gradient
# matrix* $G_c \in \mathbb{R}^{N\times P}$ has row $i$ equal to $g_c(x_i)^\top$.
# ```
#
# ```{prf:definition} Empirical neural tangent kernel (eq 1)
# :label: def-empirical-ntk
#
# $$\Theta(x, x') = J(x)\, J(x')^\top \in \mathbb{R}^{C\times C}, \qquad
# \Theta(x,x')_{cc'} = \langle g_c(x), g_{c'}(x') \rangle .$$
#
# Over $N$ inputs it is an $NC \times NC$ matrix made of $C\times C$ blocks. The *class kernel* keeps
# one diagonal entry of every block: $K_c = G_c G_c^\top \in \mathbb{R}^{N\times N}$, and the
# test–train *cross kernel* is $K_c(X^*, X) = G_c(X^*)\, G_c^\top$.
# ```
#
# The NTK {cite}`jacot2018ntk` describes the network linearised around its current parameters: a small
# parameter step $\Delta$ changes the logits by $J(x)\Delta$, and gradient descent on the linearised model is
# kernel regression with $\Theta$. The paper (and this book) works with the $C$ class kernels instead of the
# full $\Theta$: one kernel regression per logit, $C$ times fewer entries and no cross-class terms.
#
# `dntk.tangent.class_gradients(model, X)` returns the stack $(G_1, \dots, G_C)$ as an array of shape
# $(N, C, P)$. It has two methods that must give the same numbers: the `torch.func` reference
# (`vmap(jacrev(f))`, chunked over samples) and the default *fast* path, which captures each layer's
# input in one forward pass, gets the gradients at every layer's output for all $C$ classes in one
# batched backward pass, and forms per-sample weight gradients as outer products of the two.

# %%
G = tangent.class_gradients(model, X)  # fast path (default)
G_exact = tangent.class_gradients(model, X, method="exact")  # torch.func vmap(jacrev)
fast_vs_exact = float((G - G_exact).norm() / G_exact.norm())
print(f"G: shape {tuple(G.shape)}, dtype {G.dtype}")
print(f"relative difference fast vs torch.func: {fast_vs_exact:.1e}")

# %% [markdown]
# ## The full NTK and its class-kernel diagonal
#
# On a handful of inputs we can afford $\Theta$ in full. `dntk.kernel.empirical_ntk` returns it as an
# $(N, N, C, C)$ array (accumulated in float64); `dntk.kernel.ntk_matrix` lays it out as the
# $NC\times NC$ matrix with row index $i\cdot C + c$. The class kernels are its $(c, c)$ entries.

# %%
Gs = G[:n_ntk]
Theta = kernel.empirical_ntk(Gs)  # (n, n, C, C)
K_small = kernel.class_kernels(Gs)  # (C, n, n)
diag_gap = max(float((Theta[:, :, c, c] - K_small[c]).abs().max()) for c in range(C))
M = kernel.ntk_matrix(Theta).numpy()
chapter.glue_number("ch01_n_ntk", n_ntk)

# %% tags=["hide-input"]
fig, ax = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.3))
lim = np.abs(M).max()
im = ax[0].imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
ax[0].set_title(f"$\\Theta$, {n_ntk * C}×{n_ntk * C}")
ax[0].set_xlabel("$j\\cdot C + c'$")
ax[0].set_ylabel("$i\\cdot C + c$")
fig.colorbar(im, ax=ax[0], shrink=0.8)
blk = np.abs(Theta.numpy()).mean(axis=(0, 1))
im = ax[1].imshow(blk, cmap="viridis")
ax[1].set_title("mean $|\\Theta_{cc'}|$ over pairs")
ax[1].set_xlabel("class $c'$")
ax[1].set_ylabel("class $c$")
fig.colorbar(im, ax=ax[1], shrink=0.8)
chapter.glue_figure("ch01-ntk", fig)

# %% [markdown]
# ```{glue:figure} ch01-ntk
# :name: fig-ch01-ntk
# :alt: Left, a heatmap of the full empirical NTK matrix of a dozen digits made of ten-by-ten class blocks. Right, a ten-by-ten heatmap of the mean absolute NTK entry for each pair of classes, brightest on the diagonal.
#
# The full empirical NTK $\Theta$ of {glue:text}`ch01_n_ntk` digits, laid out as an $NC\times NC$ matrix with
# row index $i\cdot C + c$ (left), and the mean absolute entry $|\Theta_{cc'}|$ of each pair of classes over
# all pairs of inputs (right).
# ```
#
# The diagonal of the right panel (same-class pairs $\Theta_{cc}$, i.e. the class kernels) carries
# clearly more mass than the off-diagonal cross-class terms, which is part of why the paper can drop
# the cross-class terms.
#
# ## Two exact recipes for the kernel
#
# Forming $J$ costs memory $O(NCP)$. There is a second exact recipe that never stores a Jacobian:
#
# ```{prf:proposition} NTK–vector product
# :label: prop-ntk-vp
#
# For $v \in \mathbb{R}^{M\times C}$ (one $C$-vector $v_j$ per input $x'_j$),
# $\sum_j \Theta(x_i, x'_j)\, v_j = J(x_i)\, u$ with $u = \sum_j J(x'_j)^\top v_j \in \mathbb{R}^P$.
# ```
#
# ```{prf:proof}
# $\sum_j J(x_i) J(x'_j)^\top v_j = J(x_i) \big(\sum_j J(x'_j)^\top v_j\big)$ by linearity.
# ```
#
# $u$ is one vector–Jacobian product (a backward pass over the $M$ inputs with cotangents $v$), and
# $J(x_i)u$ is one Jacobian–vector product (a forward-mode pass), so $\Theta v$ costs about two
# passes over the data and $O(P)$ memory. `dntk.kernel.ntk_vector_product` implements it with
# `torch.func.vjp`/`jvp`; `class_kernel_vector_product` does the same per class ($K_c v_c$).
# Both are checked against the stored-Jacobian kernels below.

# %%
g = torch.Generator().manual_seed(seed)
Xs = X[:n_ntk]
v = torch.randn(n_ntk, C, generator=g, dtype=torch.float64)
Tv_free = kernel.ntk_vector_product(model, Xs, v)
Tv_stored = torch.einsum("ijcd,jd->ic", Theta, v)
ntk_recipes_gap = float((Tv_free - Tv_stored).norm() / Tv_stored.norm())

Kv_free = kernel.class_kernel_vector_product(model, Xs, v)
Kv_stored = torch.einsum("cij,jc->ic", K_small, v)
class_recipes_gap = float((Kv_free - Kv_stored).norm() / Kv_stored.norm())
print(f"Θv   matrix-free vs stored Jacobians: relative difference {ntk_recipes_gap:.1e}")
print(f"K_c v matrix-free vs stored Jacobians: relative difference {class_recipes_gap:.1e}")

# %% [markdown]
# Both differences are at float32 round-off: the two recipes compute the same kernel. (The stored
# recipe accumulates the inner products in float64; the matrix-free one runs the network in float32.)
#
# ## What the kernel costs
#
# With $N$ inputs, $C$ classes, $P$ parameters and $F$ multiply–adds per forward pass (appendix {ref}`maths-7`; a
# per-class gradient costs a share of one forward and $C$ backward passes of about $2F$ each):
#
# | object | time | memory |
# |---|---|---|
# | full NTK $\Theta$ (all class pairs) | $O(N^2C^2P)$ | $O(N^2C^2)$ |
# | class kernels only | $O(N^2CP)$ | $O(N^2C)$ |
# | stored per-class gradients $G$ | $O(N(1+2C)F)$ to compute | $O(NCP)$ |
#
# Here is what that means for this model on the whole digits training set, and for the paper's
# setting (ResNet-18 on ImageNette, about 9.5k training images).

# %%
import torchvision
from torch.utils.flop_counter import FlopCounterMode


def forward_macs(net, shape):
    """Multiply–adds F of one forward pass, counted by torch's FLOP counter (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net.eval()(torch.zeros(1, *shape))
    return fc.get_total_flops() // 2


def cost_rows(N, C, P, F):
    """(multiply–adds, bytes) of each object; kernels in float64, gradients in float32."""
    return {
        "full NTK": (N**2 * C**2 * P, N**2 * C**2 * 8),
        "class kernels": (N**2 * C * P, N**2 * C * 8),
        "stored gradients": (N * (1 + 2 * C) * F, N * C * P * 4),  # one forward + C backward passes each
    }


resnet = torchvision.models.resnet18(num_classes=10)  # the paper's ImageNette model, 224×224 inputs
settings = {
    "digits convnet": (len(train), C, P, forward_macs(model, tuple(X.shape[1:]))),
    "ImageNette ResNet-18 (paper)": (9469, 10, tangent.num_params(resnet), forward_macs(resnet, (3, 224, 224))),
}
print(f"{'setting':30s} {'object':18s} {'multiply-adds':>15s} {'memory':>12s}")
for name, (N_, C_, P_, F_) in settings.items():
    for obj, (macs, mem) in cost_rows(N_, C_, P_, F_).items():
        print(f"{name:30s} {obj:18s} {macs:15.2e} {mem / 2**30:10.2f} GiB")
        name = ""
digits_rows = cost_rows(*settings["digits convnet"])
paper_rows = cost_rows(*settings["ImageNette ResNet-18 (paper)"])
chapter.glue_number("ch01_N_train", len(train))
chapter.glue_math("ch01_digits_ntk_macs", digits_rows["full NTK"][0])
chapter.glue_number("ch01_digits_ntk_gib", digits_rows["full NTK"][1] / 2**30)
chapter.glue_number("ch01_digits_grad_gib", digits_rows["stored gradients"][1] / 2**30)
chapter.glue_math("ch01_paper_ntk_macs", paper_rows["full NTK"][0])
chapter.glue_number("ch01_paper_ntk_gib", paper_rows["full NTK"][1] / 2**30)
chapter.glue_number("ch01_paper_grad_tib", paper_rows["stored gradients"][1] / 2**40)

# %% [markdown]
# For the small convnet the full NTK on {glue:text}`ch01_N_train:,` digits already needs
# {glue:md}`ch01_digits_ntk_macs:myst` multiply–adds and {glue:text}`ch01_digits_ntk_gib:.1f` GiB, and storing all
# per-class gradients another {glue:text}`ch01_digits_grad_gib:.1f` GiB. At the paper's scale the full NTK is
# {glue:md}`ch01_paper_ntk_macs:myst` multiply–adds and {glue:text}`ch01_paper_ntk_gib:.0f` GiB for the kernel
# alone, and the gradients would take about {glue:text}`ch01_paper_grad_tib:.0f` TiB.
# Dropping cross-class terms saves a factor $C$; the rest of the paper removes the remaining factors —
# projecting $P$ down to $k$ (random projection), shrinking $N$
# (dataset distillation) and compressing the kernel itself (gradient distillation).
#
# ## The class-kernel spectrum
#
# The eigenvalues $\lambda_1 \ge \dots \ge \lambda_N \ge 0$ of each class kernel (computed in float64)
# fall off by orders of magnitude: a few directions carry most of the kernel. This *redundancy* is what
# the paper exploits.

# %%
K = kernel.class_kernels(G)  # (C, N, N) float64
eig = torch.linalg.eigvalsh(K).flip(-1)  # descending, per class
eff_rank = (eig.sum(-1) ** 2 / (eig**2).sum(-1))
chapter.glue_number("ch01_N", len(X))

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN, 3.4))
for c in range(C):
    ax.semilogy(np.arange(1, len(X) + 1), (eig[c] / eig[c, 0]).clamp_min(1e-16).numpy(), lw=1, label=f"class {c}")
ax.set_xlabel("index $i$")
ax.set_ylabel("$\\lambda_i / \\lambda_1$ of $K_c$")
ax.legend(ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
chapter.glue_figure("ch01-spectra", fig)

# %% [markdown]
# ```{glue:figure} ch01-spectra
# :name: fig-ch01-spectra
# :alt: Ten decreasing curves on a logarithmic axis, one per class, showing the class-kernel eigenvalues divided by the largest one falling by several orders of magnitude.
#
# Eigenvalues of the ten class kernels $K_c$ on $N$ = {glue:text}`ch01_N` digits, each divided by its
# largest eigenvalue.
# ```

# %%
print(f"effective rank (Σλ)²/Σλ² per class: {np.round(eff_rank.numpy(), 1)} (N = {len(X)})")

# %% [markdown]
# The effective rank of each class kernel is a small fraction of $N$; later chapters turn this into the
# paper's redundancy measures.
#
# ## Checks
#
# The claims of this chapter, asserted: the fast path equals `torch.func`, the class kernels are the
# diagonal of $\Theta$, the two exact recipes agree, the kernels are symmetric positive semi-definite,
# the spectrum is strongly concentrated, and the cost ratios are the ones in the table.

# %% tags=["hide-input"]
assert G.shape == (len(X), C, P)
assert fast_vs_exact < 1e-5, fast_vs_exact
assert diag_gap < 1e-9, diag_gap
assert ntk_recipes_gap < 1e-4 and class_recipes_gap < 1e-4, (ntk_recipes_gap, class_recipes_gap)
assert torch.allclose(K, K.transpose(1, 2))
assert (eig[:, -1] > -1e-8 * eig[:, 0]).all()  # PSD up to round-off
assert (eff_rank < 0.25 * len(X)).all(), eff_rank
rows = cost_rows(*settings["digits convnet"])
assert rows["full NTK"][0] == C * rows["class kernels"][0]
assert rows["full NTK"][1] == C * rows["class kernels"][1]
assert rows["class kernels"][0] > 10 * rows["stored gradients"][0]  # the kernel, not the gradients, dominates
