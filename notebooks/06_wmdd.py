# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # WMDD: distilling the inputs at which the tangent kernel is evaluated
#
# Every kernel in this book is built from per-class logit gradients
# $g_c(x) = \nabla_\theta f_c(x;\theta)$, one Jacobian evaluation per input. The first of the DNTK
# pipeline's three reductions (Sec 4.1 and App C.5 of {cite:t}`mahowald2026dntk`; appendix {ref}`maths-4-1`) shrinks the set of *inputs*: instead of the $N$
# training images we evaluate gradients at a small synthetic set of $m = C\cdot\mathrm{IPC}$ images
# (IPC = images per class) produced by **Wasserstein Metric Dataset Distillation** (WMDD,
# {cite:t}`liu2023wmdd`). The kernel model is then fitted on those $m$ points only.
#
# Why should a *synthetic* set do better than a random handful of real images? The paper's argument
# (Sec 3.3) is geometric: the distilled gradients span a subspace $S$ of parameter space, and the kernel
# they induce is the Nyström approximation $K_\Pi = G\,\Pi_S\,G^\top$ of the full class kernel, with
# error $\operatorname{tr}(K-K_\Pi) = \|G(I-\Pi_S)\|_F^2$ ({eq}`eq-kernel-fidelity`, the paper's eq 10). A good distilled set is one
# whose gradients capture much of the full training set's gradient energy.
#
# This chapter, on the scikit-learn digits and the small BatchNorm convnet every chapter uses, at
# IPC {glue:text}`ch06_ipcs` with {glue:text}`ch06_iterations` synthesis steps, compares WMDD against random and k-center subsets of real images of the same size
# (several seeds, mean ± std):
#
# 1. the distilled images, as a grid per class;
# 2. the DNTK built on each set (the paper's Sec 5.1 setting): test accuracy and fidelity of KRR;
# 3. the tangent-space claim: the fraction of the full training set's class-gradient energy captured
#    by the span of the set's class gradients, and the truncation ranks of the class kernels (Sec 5.2);
# 4. a student network trained only on each set with soft labels, and the teacher's accuracy on the
#    distilled images;
# 5. the number of Jacobian evaluations saved;
# 6. an ablation of the initialisation (noise or real images) and the BatchNorm-matching weight $r_{bn}$.

# %% tags=["parameters"]
ipcs = [1, 5, 10]            # images per class
seeds = [0, 1, 2]            # one distilled set (and one random / k-center subset) per seed
iterations = 100             # Adam steps of the synthesis (the official code uses 1000-2000)
lr = 0.05                    # synthesis learning rate (pixel units; cosine-annealed to 0)
r_bn = 10.0                  # weight of per-class BatchNorm matching
init = "real"                # initial images: "real" samples of the class or "noise"
flip = False                 # horizontal flips in the augmentation (digits are not mirror-symmetric)
proj_kind = "gaussian"       # JL projection of the class gradients (appendix §4.2)
proj_dim = 512               # its dimension k
lam_rel = 1e-3               # ridge: λ_c = lam_rel · tr(K_c)/m (appendix §1)
taus = [0.95, 0.99]          # energy thresholds of the truncation rank r(τ) (Def 3.1)
student_epochs = 100         # epochs of the student trained on each set (one batch per epoch)
student_lr = 3e-3
temperature = 4.0            # KL temperature of the soft-label loss
ablation_ipc = 1
ablation_inits = ["noise", "real"]
ablation_r_bn = [0.0, 1.0, 10.0]
model_name = "convnet"
dataset = "digits"
data_root = None             # where non-bundled datasets live (default $DNTK_DATA/<dataset>)
resize = None                # image size for folder datasets (e.g. 32 for ImageNette)
teacher_options = {}         # extra arguments of dntk.models.trained (epochs, lr, optimizer, ...)
cache_dir = None             # a folder to keep the distilled sets (papermill reruns reuse them)
device = "cpu"
progress = False

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from myst_nb import glue

from dntk import (
    chapter,
    data,
    gradient_distillation,
    krr,
    metrics,
    models,
    projection,
    spectral,
    tangent,
    wmdd,
)

chapter.use_book_style()
glue("ch06_ipcs", ", ".join(str(i) for i in ipcs), display=False)
for name, value in {"ch06_iterations": iterations, "ch06_student_epochs": student_epochs, "ch06_k": proj_dim,
                    "ch06_n_seeds": len(seeds), "ch06_ipc_min": min(ipcs), "ch06_ipc_max": max(ipcs)}.items():
    chapter.glue_number(name, value)

train_ds = data.load(dataset, "train", root=data_root, resize=resize)
test_ds = data.load(dataset, "test", root=data_root, resize=resize)
X_tr, y_tr = data.as_tensors(train_ds)
X_te, y_te = data.as_tensors(test_ds)
C = train_ds.num_classes
teacher = models.trained(model_name, dataset, root=data_root, resize=resize, device=device, **teacher_options)
logits_te = tangent.logits(teacher, X_te)
teacher_acc = metrics.accuracy(logits_te, y_te)
print(f"{dataset}: {len(X_tr)} training and {len(X_te)} test images of shape {tuple(X_tr.shape[1:])}, {C} classes")
print(f"teacher {model_name}: {tangent.num_params(teacher)} parameters, test accuracy {teacher_acc:.3f}")

# %% [markdown]
# ## The WMDD objective
#
# WMDD works in the teacher's **penultimate feature space** $\varphi(x)\in\mathbb{R}^D$ (the input of
# the last linear layer). For each class $c$ with real features $\{\varphi(x_i)\}_{y_i=c}$ it first
# computes a **free-support Wasserstein barycenter**: the $m$ points $b_{c,1},\dots,b_{c,m}$ (here
# $m$ = IPC) and weights $w_{c,j}$ that minimise the 2-Wasserstein distance to the empirical measure of
# the class,
#
# $$
# \min_{b_{c,1..m}}\; W_2^2\Big(\tfrac1m\textstyle\sum_j \delta_{b_{c,j}},\;
#   \tfrac1{n_c}\sum_{y_i=c}\delta_{\varphi(x_i)}\Big).
# $$
#
# With one input measure and uniform weights this is balanced $k$-means: every atom is the mean of an
# equal share of the class. We use POT's `ot.lp.free_support_barycenter`, started from $m$ seeded real
# features. Then it optimises $m$ images per class (pixels are the variables, the teacher is frozen) on
#
# $$
# \mathcal{L} = \mathrm{CE}\big(f(\tilde x_{c,j}), c\big)
#   + \big\|\varphi(\tilde x_{c,j}) - b_{c,j}\big\|_2
#   + r_{bn}\sum_{\ell\in\mathrm{BN}} \Big(\big\|\mu_\ell(\tilde X_c) - \mu_{\ell,c}\big\|_2
#   + \big\|\sigma^2_\ell(\tilde X_c) - \sigma^2_{\ell,c}\big\|_2\Big),
# $$
#
# averaged over images and classes: cross-entropy towards the class, each image's features pulled to
# "its" atom, and the per-channel mean and variance of every BatchNorm layer's input over the class's
# synthetic images matched to the same statistics over the class's real images. Adam (betas 0.5, 0.9)
# with a cosine learning rate, random resized crops and shifts scaled to the image size, and pixels
# clipped to the data range after each step, as in the official code (`Liu-Hy/WMDD`).
#
# ```{prf:proposition} One atom is the class mean
# :label: prop-wmdd-ipc1-mean
# With $m = 1$ the only transport plan sends all the mass to the single atom, so
# $W_2^2 = \frac1{n_c}\sum_i\|\varphi(x_i) - b\|^2$, minimised by $b = \frac1{n_c}\sum_i \varphi(x_i)$:
# at IPC 1, WMDD pulls each class's image towards the class's *mean feature* — a prototype.
# ```
#
# ```{prf:remark} Exact per-class BatchNorm statistics
# :label: rem-wmdd-exact-bn
# The official code averages per-batch variances, which depends on the batch size. `dntk.wmdd` merges
# per-batch counts, means and sums of squared deviations exactly (Chan et al.'s pairwise update), so
# $\mu_{\ell,c}$ and $\sigma^2_{\ell,c}$ are the mean and biased variance over *all* of the class's real
# data whatever the batch size; the tests check this against a one-batch computation.
# ```
#
# The barycenter of one class at IPC 5, in the first two principal components of the class's features:

# %%
feats_tr = wmdd.penultimate_features(teacher, X_tr)
c_show = 3
F3 = feats_tr[y_tr == c_show].double().numpy()
bc5 = wmdd.barycenter(F3, 5, seed=[0, c_show])
mu3 = F3.mean(0)
_, _, Vt = np.linalg.svd(F3 - mu3, full_matrices=False)
pf, pa = (F3 - mu3) @ Vt[:2].T, (bc5.atoms - mu3) @ Vt[:2].T
chapter.glue_number("ch06_c_show", c_show)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.6))
ax.scatter(pf[:, 0], pf[:, 1], s=8, c="0.6", label=f"real features, class {c_show}")
ax.scatter(pa[:, 0], pa[:, 1], s=80, marker="*", c="C3", label="barycenter atoms (IPC 5)")
ax.scatter([0], [0], s=60, marker="x", c="k", label="class mean (the IPC-1 atom)")
ax.set_xlabel("PC 1")
ax.set_ylabel("PC 2")
ax.legend(fontsize=9)
chapter.glue_figure("ch06-barycenter", fig)

# %% [markdown]
# ```{glue:figure} ch06-barycenter
# :name: fig-ch06-barycenter
# :alt: Scatter of the penultimate features of one digit class in their first two principal components, with five star-shaped barycenter atoms spread over the cloud and a cross at the class mean.
#
# The free-support Wasserstein barycenter of the teacher's features of digit {glue:text}`ch06_c_show` with five
# atoms (stars), in the first two principal components of the class's real features (grey); the cross is the
# class mean, the single atom at IPC 1.
# ```

# %% [markdown]
# ## Distilled sets and their baselines
#
# For every IPC and seed we build three sets of the same size $m = C\cdot\mathrm{IPC}$:
#
# - **WMDD**: `dntk.wmdd.distill` with the settings above; with `init="real"` the synthesis starts from
#   real images of the class (assigned to the atoms by an optimal matching of their features);
# - **random**: exactly those starting images — so WMDD vs random isolates what the synthesis adds;
# - **k-center**: greedy farthest-point selection in the teacher's feature space, per class, from a
#   seeded random start (`dntk.gradient_distillation.select("fps", ...)`).
#
# Soft labels are the teacher's logits on each set's images.

# %%
stats = wmdd.class_statistics(teacher, (X_tr, y_tr), device=device)  # features and BN statistics, once


def distill(ipc, seed, **kw):
    opts = dict(iterations=iterations, lr=lr, r_bn=r_bn, init=init, flip=flip, seed=seed, device=device,
                progress=progress, cache_dir=cache_dir, statistics=stats)
    opts.update(kw)
    return wmdd.distill(teacher, (X_tr, y_tr), ipc, **opts)


def kcenter_indices(ipc, seed):
    idx = []
    for c in range(C):
        rows = (y_tr == c).nonzero().flatten()
        sel = gradient_distillation.select("fps", feats_tr[rows], ipc, seed=seed)
        idx.append(rows[sel.indices])
    return torch.cat(idx)


sets = {}  # (method, ipc, seed) -> DistilledSet
for ipc in ipcs:
    for seed in seeds:
        res = distill(ipc, seed)
        sets["WMDD", ipc, seed] = res
        start = np.concatenate(res.settings["init_indices"]) if init == "real" else \
            np.concatenate([np.random.default_rng([seed, c]).choice((y_tr == c).nonzero().flatten().numpy(), ipc,
                                                                    replace=False) for c in range(C)])
        sets["random", ipc, seed] = wmdd.real_subset(teacher, (X_tr, y_tr), start, method="random")
        sets["k-center", ipc, seed] = wmdd.real_subset(teacher, (X_tr, y_tr), kcenter_indices(ipc, seed),
                                                       method="k-center")
methods = ["WMDD", "random", "k-center"]
print(f"{len(sets)} sets; WMDD at IPC {ipcs[-1]}, seed {seeds[0]}:", sets["WMDD", ipcs[-1], seeds[0]])

# %% [markdown]
# ### 1. The distilled images
#
# Each row is a class. Left: WMDD at the largest IPC (seed 0); right: the random real subset of the
# same seed — with `init="real"`, the images the synthesis started from. On digits the synthesis
# raises the contrast of the strokes and adds faint speckle around them.

# %%
def grid(images, ipc, cols=10):
    """(C·ipc, ch, H, W) -> one (C·H, cols·W[, 3]) image: a row per class, its first ``cols`` images."""
    x = images.reshape(C, ipc, *images.shape[1:])[:, :cols].clamp(0, 1)
    x = torch.nn.functional.pad(x, (0, 1, 0, 1), value=0.0 if x.shape[2] == 1 else 1.0)  # white gaps
    x = x.permute(0, 1, 3, 4, 2)  # channels last
    rows = torch.cat([torch.cat(list(row), dim=1) for row in x], dim=0).numpy()
    return rows[..., 0] if rows.shape[-1] == 1 else rows


ipc_show = ipcs[-1]
chapter.glue_number("ch06_ipc_show", ipc_show)

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 4.2))
panels = [("WMDD", ("WMDD", ipc_show, seeds[0])), ("random real subset", ("random", ipc_show, seeds[0]))]
for ax, (name, key) in zip(axes, panels):
    ax.imshow(grid(sets[key].images, ipc_show), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(name + (" (first 10)" if ipc_show > 10 else ""))
    ax.set_yticks((np.arange(C) + 0.5) * (X_tr.shape[-2] + 1))
    ax.set_yticklabels(train_ds.classes)
    ax.set_xticks([])
chapter.glue_figure("ch06-images", fig)

# %% [markdown]
# ```{glue:figure} ch06-images
# :name: fig-ch06-images
# :alt: Two grids of small grey digit images, one row per class: WMDD's synthetic images on the left and the real images they started from on the right; the synthetic ones have stronger strokes and faint speckle.
#
# The distilled images at IPC {glue:text}`ch06_ipc_show` (left, one row per class) and the real images the
# synthesis started from (right).
# ```

# %% [markdown]
# ### 2. The DNTK on each set (Sec 5.1)
#
# For each set $X_s$ we compute the projected class gradients $\tilde G_c(X_s) = G_c(X_s)R$
# ($R$ a seeded JL projection to $k$ = {glue:text}`ch06_k` dimensions, Gaussian by default, {ref}`maths-4-2`; the same $R$ for every
# set and for the test set), fit per-class KRR with the teacher's logits on $X_s$ as targets
# (`dntk.krr.ClassKRR`, $\lambda_c = \lambda_{rel}\operatorname{tr}(K_c)/m$), and predict the test set.
# *Accuracy* is agreement with the true labels, *fidelity* agreement with the teacher's predicted class.

# %%
proj = projection.make(proj_kind, proj_dim, seed=0)
G_te = tangent.class_gradients(teacher, X_te, projector=proj, device=device, progress=progress)
G_tr = tangent.class_gradients(teacher, X_tr, projector=proj, device=device, progress=progress)
# real subsets reuse their rows of G_tr; only the synthetic images need new Jacobian evaluations
feat_sets = {key: G_tr[torch.as_tensor(np.concatenate(s.settings["init_indices"]))] if key[0] != "WMDD"
             else tangent.class_gradients(teacher, s.images, projector=proj, device=device)
             for key, s in sets.items()}


def dntk_scores(key):
    s = sets[key]
    model = krr.ClassKRR(lam_rel=lam_rel).fit(feat_sets[key], s.soft_labels)
    pred = model.predict(G_te)
    return metrics.accuracy(pred, y_te), metrics.fidelity(pred, logits_te)


def mean_of(values):  # {(method, ipc, seed): v} -> {(method, ipc): (mean, std over seeds)}
    out = {}
    for (meth, ipc, _), v in values.items():
        out.setdefault((meth, ipc), []).append(v)
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in out.items()}


def show(title, values, extra=None, fmt="{:.3f} ± {:.3f}"):
    """Print an IPC × method table of mean ± std (``extra``: {column: {ipc: text}} appended)."""
    agg = mean_of(values)
    cols = methods + list(extra or {})
    print(title)
    print(f"{'IPC':>4} " + "".join(f"{c:>17}" for c in cols))
    for ipc in ipcs:
        cells = [fmt.format(*agg[m, ipc]) for m in methods] + [extra[c][ipc] for c in extra or {}]
        print(f"{ipc:>4} " + "".join(f"{c:>17}" for c in cells))


dntk_acc, dntk_fid = {}, {}
for key in sets:
    dntk_acc[key], dntk_fid[key] = dntk_scores(key)
show(f"DNTK test fidelity (agreement with the teacher), mean ± std over {len(seeds)} seeds", dntk_fid)
show(f"\nDNTK test accuracy (the teacher's: {teacher_acc:.3f})", dntk_acc)

# %% [markdown]
# ### 3. The tangent-space claim: energy captured and truncation ranks
#
# For class $c$, $G_c\in\mathbb{R}^{N\times k}$ stacks the projected class-$c$ gradients of the full
# training set and $S_c$ is the span of the class-$c$ gradients of the $m$ set images (all classes'
# images: the class-$c$ kernel is evaluated at every input). The **energy captured**
# $\|G_c\Pi_{S_c}\|_F^2/\|G_c\|_F^2 = 1 - \operatorname{tr}(K_c - K_{\Pi})/\operatorname{tr}K_c$
# ({eq}`eq-kernel-fidelity`) is how much of the full class kernel the set's Nyström approximation keeps. No
# $m$-dimensional subspace can capture more than the top-$m$ principal energy of $G_c$ ({prf:ref}`a-prop-energy-gap`),
# which we show as the ceiling. We average over classes.

# %%
def kernel_eigenvalues(G):  # eigenvalues of K = G Gᵀ from the smaller Gram matrix, descending
    G = G.double()
    return torch.linalg.eigvalsh(G @ G.T if G.shape[0] <= G.shape[1] else G.T @ G).flip(0).clamp(min=0)


eig_full = [kernel_eigenvalues(G_tr[:, c]) for c in range(C)]
ceiling = {ipc: float(np.mean([(ev[: C * ipc].sum() / ev.sum()).item() for ev in eig_full])) for ipc in ipcs}
energy, rank = {}, {tau: {} for tau in taus}
for key, Gs in feat_sets.items():
    energy[key] = float(metrics.coverage(G_tr, [Gs[:, c] for c in range(C)]).mean())
    eig_set = [kernel_eigenvalues(Gs[:, c]) for c in range(C)]
    for tau in taus:
        rank[tau][key] = float(np.mean([spectral.truncation_rank(ev, tau) for ev in eig_set]))
show("fraction of the full training set's class-gradient energy captured by the set's span (eq 10)", energy,
     extra={"PCA ceiling": {i: f"{ceiling[i]:.3f}" for i in ipcs}})
full_rank = {tau: float(np.mean([spectral.truncation_rank(ev, tau) for ev in eig_full])) for tau in taus}
for tau in taus:
    show(f"\ntruncation rank r({tau}) of the set's class kernels, mean over classes and seeds "
         f"(the full training set's, N = {len(X_tr)}: {full_rank[tau]:.1f})", rank[tau],
         extra={"m = C·IPC": {i: str(C * i) for i in ipcs}}, fmt="{:.1f} ± {:.1f}")

# %% [markdown]
# ### 4. Students trained on the sets, and the teacher on the distilled images
#
# The paper's second model (Sec 5.1) is the same architecture trained from scratch on the distilled
# set alone, with soft labels: loss $T^2\,\mathrm{KL}(\mathrm{softmax}(s/T)\,\|\,\mathrm{softmax}(f/T))$,
# the soft targets $s$ recomputed by the teacher on each augmented batch (the official code's
# relabelling), the barycenter weights weighting each image (uniform here). The same recipe trains a
# student on each baseline set.

# %%
student_acc, teacher_on_set = {}, {}
for key, s in sets.items():
    student = models.build(model_name, C, in_channels=train_ds.in_channels, seed=key[2])
    wmdd.train_student(student, s, epochs=student_epochs, lr=student_lr, temperature=temperature, teacher=teacher,
                       augment_images=True, flip=flip, seed=key[2], device=device)
    student_acc[key] = metrics.accuracy(tangent.logits(student, X_te), y_te)
    teacher_on_set[key] = s.settings["teacher_accuracy"]
show(f"student test accuracy (the teacher, trained on all {len(X_tr)} images: {teacher_acc:.3f})", student_acc)
show("\nteacher's accuracy on the set's own images", teacher_on_set)

# %% [markdown]
# ### 5. Jacobian evaluations saved
#
# Building the class kernels needs one Jacobian evaluation ($C$ logit gradients) per input. Fitting on
# the set instead of the training set saves a factor $N/m$; the test-side cost is unchanged.

# %%
print(f"{'IPC':>4} {'m = C·IPC':>10} {'N / m':>8}")
for ipc in ipcs:
    print(f"{ipc:>4} {C * ipc:>10} {len(X_tr) / (C * ipc):>7.1f}x")
print("ImageNette (N = 9469, C = 10) for comparison: IPC 10 -> "
      f"{9469 / 100:.0f}x, IPC 50 -> {9469 / 500:.0f}x")

# %% [markdown]
# ### 6. Ablation: initialisation and BatchNorm matching
#
# At the smallest IPC we vary the starting images (Gaussian noise with the data's mean and standard
# deviation, or real images) and $r_{bn}$, and compare the DNTK fidelity with the random real subsets.

# %%
abl = {}
for ini in ablation_inits:
    for rb in ablation_r_bn:
        for seed in seeds:
            if ini == init and rb == r_bn and ("WMDD", ablation_ipc, seed) in sets:
                s, Gs = sets["WMDD", ablation_ipc, seed], feat_sets["WMDD", ablation_ipc, seed]
            else:
                s = distill(ablation_ipc, seed, init=ini, r_bn=rb)
                Gs = tangent.class_gradients(teacher, s.images, projector=proj, device=device)
            pred = krr.ClassKRR(lam_rel=lam_rel).fit(Gs, s.soft_labels).predict(G_te)
            abl.setdefault((ini, rb), []).append(metrics.fidelity(pred, logits_te))
rand_abl = [dntk_fid["random", ablation_ipc, s] for s in seeds]
print(f"DNTK test fidelity at IPC {ablation_ipc}, mean ± std over {len(seeds)} seeds "
      f"(random real subsets: {np.mean(rand_abl):.3f} ± {np.std(rand_abl):.3f})")
print(f"{'init':>6} " + "".join(f"{'r_bn=' + format(rb, 'g'):>17}" for rb in ablation_r_bn))
for ini in ablation_inits:
    print(f"{ini:>6} " + "".join(f"{np.mean(abl[ini, rb]):>9.3f} ± {np.std(abl[ini, rb]):.3f}"
                                 for rb in ablation_r_bn))

# %% [markdown]
# ## What we find, and how it compares with the paper
#
# The summary below is recomputed from the tables above; the statements after it describe the default
# settings on digits and are checked by the assertions at the end.

# %%
fid = {k: v[0] for k, v in mean_of(dntk_fid).items()}
en = {k: v[0] for k, v in mean_of(energy).items()}
st = {k: v[0] for k, v in mean_of(student_acc).items()}
rk = {tau: {k: v[0] for k, v in mean_of(rank[tau]).items()} for tau in taus}
ipc1 = min(ipcs)
for ipc in ipcs:
    best = max(methods, key=lambda m: fid[m, ipc])
    print(f"IPC {ipc:>2}: DNTK fidelity    " + ", ".join(f"{m} {fid[m, ipc]:.3f}" for m in methods)
          + f" (best: {best})")
    print("        energy captured  " + ", ".join(f"{m} {en[m, ipc]:.3f}" for m in methods))
    print("        student accuracy " + ", ".join(f"{m} {st[m, ipc]:.3f}" for m in methods))
ipc_max = max(ipcs)
for name, value in {"ch06_fid_wmdd_max": fid["WMDD", ipc_max], "ch06_st_wmdd_min": st["WMDD", ipc1],
                    "ch06_st_wmdd_max": st["WMDD", ipc_max], "ch06_en_wmdd_max": en["WMDD", ipc_max],
                    "ch06_en_random_max": en["random", ipc_max], "ch06_teacher_acc": teacher_acc}.items():
    chapter.glue_number(name, value)
for ipc in ipcs:  # per set size, for the results page
    for name, table in (("fid", fid), ("en", en), ("st", st)):
        for meth in methods:
            chapter.glue_number(f"ch06_{name}_{meth.replace('-', '')}_{ipc}", table[meth, ipc])
    chapter.glue_number(f"ch06_ceiling_{ipc}", ceiling[ipc])

# %% [markdown]
# **Where WMDD helps the DNTK: one image per class.** At IPC 1 the kernel model fitted on the ten
# WMDD images agrees with the teacher more often than the one fitted on the ten real images the
# synthesis started from, and more often than k-center picks. With a single image per class the
# synthesis pulls each image's features to the class mean ({prf:ref}`prop-wmdd-ipc1-mean`) while
# keeping it confidently classified: a prototype is a better single anchor for the class kernel than an
# arbitrary real digit. The gain is a few points and of the order of the spread over seeds. The
# ablation shows it needs real-image initialisation: started from noise, {glue:text}`ch06_iterations` synthesis steps give
# images the teacher classifies perfectly but whose DNTK is *worse* than random real subsets, whatever
# $r_{bn}$; with real initialisation $r_{bn} \in \{0, 1, 10\}$ makes little difference at this budget.
#
# **Where real subsets match or beat it: IPC 5 and 10.** Digits is easy. With five or ten real images
# per class the DNTK is already within about two points of the teacher, and random and k-center
# subsets give a *higher* fidelity than WMDD, k-center the highest. We report this as it is rather than
# tune the comparison: the paper's setting (ImageNette, ResNet-18, where a few real images are far from
# representative) is in `params/wmdd-imagenette.yaml` for a GPU.
#
# **The tangent-space claim does not hold here.** The paper motivates WMDD by the subspace view: a
# distilled set whose gradients span the dominant directions of the full gradient matrix. On digits the
# span of WMDD's gradients captures *less* of the full training set's class-gradient energy than the
# span of random or k-center real subsets of the same size, at every IPC — all well below the PCA
# ceiling. Synthesis makes the images of a class more alike (each is pulled to a barycenter and made
# confidently classified), so their gradients are less diverse; the DNTK's IPC-1 fidelity gain is about
# which directions matter for the teacher's decision, not about total energy. The truncation ranks
# support the paper's redundancy observation (Sec 5.2) for every set: at $\tau = 0.95$ the class
# kernels of a set of $m$ images need far fewer than $m$ directions, and the full kernels far fewer
# than $N$.
#
# **Students.** Trained from scratch on the set alone with soft labels, a student of the same
# architecture does much better on WMDD images than on random or k-center real subsets at every IPC —
# the purpose WMDD was designed for (test accuracy {glue:text}`ch06_st_wmdd_min:.3f` at IPC
# {glue:text}`ch06_ipc_min` and {glue:text}`ch06_st_wmdd_max:.3f` at IPC {glue:text}`ch06_ipc_max`, after
# {glue:text}`ch06_student_epochs` epochs, mean over {glue:text}`ch06_n_seeds` seeds). The teacher classifies every
# image of every set correctly.
#
# **These numbers and the rest of the book.** The DNTK fidelity on the WMDD set at IPC {glue:text}`ch06_ipc_max`
# here is {glue:text}`ch06_fid_wmdd_max:.3f`. {doc}`09_end_to_end` runs the pipeline with its own, smaller
# settings (fewer images per class, fewer synthesis steps, a shorter student training), and the `digits-full` run
# on the results page uses yet others; their student and distilled-set numbers differ from this chapter's for that
# reason, and {doc}`../book/results` lists every number with the settings that produced it.
#
# **Cost.** The kernel needs one Jacobian evaluation per input, so fitting on the set saves $N/m$
# evaluations; the paper's 20–100× are ImageNette's $9469/m$ at IPC 50 and 10.
#
# Differences from the paper and the official code: a small convnet on 8×8 digits instead of
# ResNet-18 on ImageNette; {glue:text}`ch06_iterations` synthesis iterations instead of 1000–2000; real-image initialisation;
# no horizontal flips and a milder crop range (scaled to 8-pixel images); the feature loss is the mean
# per-image distance to the atom rather than one norm over the whole batch; exact per-class BN
# statistics ({prf:ref}`rem-wmdd-exact-bn`); students trained {glue:text}`ch06_student_epochs` epochs with the teacher relabelling
# each augmented batch (no CutMix).

# %% [markdown]
# ## Checks

# %% tags=["hide-input"]
# the barycenter at IPC 1 is the class mean (Proposition above), on the teacher's real features
np.testing.assert_allclose(wmdd.barycenter(F3, 1).atoms[0], F3.mean(0), atol=1e-10)
# every set has the requested size and class-major labels; the teacher classifies the distilled images
for (meth, ipc, seed), s in sets.items():
    assert len(s) == C * ipc and s.labels.tolist() == sum([[c] * ipc for c in range(C)], [])
assert min(sets["WMDD", i, s].settings["teacher_accuracy"] for i in ipcs for s in seeds) >= 0.9
# the target: at IPC 1 the DNTK on WMDD has higher mean test fidelity than on random real subsets
assert fid["WMDD", ipc1] > fid["random", ipc1], (fid["WMDD", ipc1], fid["random", ipc1])
assert fid["WMDD", ipc1] > fid["k-center", ipc1]
# energy captured never exceeds the PCA ceiling (Ky Fan, Prop 3.6) and grows with IPC
for ipc in ipcs:
    assert max(en[m, ipc] for m in methods) <= ceiling[ipc] + 1e-9
assert all(en["WMDD", a] < en["WMDD", b] for a, b in zip(ipcs, ipcs[1:]))
# redundancy (Sec 5.2): at τ = 0.95 the set kernels need well under m directions, the full ones under N/10
tau_lo = min(taus)
assert all(rk[tau_lo][m, ipcs[-1]] < 0.6 * C * ipcs[-1] for m in methods)
assert full_rank[tau_lo] < len(X_tr) / 10
# students learn more from WMDD images than from real subsets of the same size
for ipc in ipcs:
    assert st["WMDD", ipc] > max(st["random", ipc], st["k-center", ipc]), ipc
if dataset == "digits":  # the digits-specific findings stated above (other datasets: read the tables)
    # WMDD needs real initialisation: from noise it is worse, for every r_bn, and below random subsets
    if ablation_ipc == ipc1 and "noise" in ablation_inits and "real" in ablation_inits:
        assert all(np.mean(abl["real", rb]) > np.mean(abl["noise", rb]) for rb in ablation_r_bn)
        assert all(np.mean(abl["noise", rb]) < np.mean(rand_abl) for rb in ablation_r_bn)
    # saturation: from IPC 5 on, a real subset matches or beats WMDD's fidelity (reported, not tuned)
    for ipc in ipcs[1:]:
        assert max(fid["random", ipc], fid["k-center", ipc]) >= fid["WMDD", ipc] - 0.005
    # the negative energy finding: WMDD's span captures less than real subsets' at every IPC
    for ipc in ipcs:
        assert en["WMDD", ipc] < min(en["random", ipc], en["k-center", ipc]), ipc
