# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Algorithm 1 against sampling baselines
#
# {doc}`08_gradient_distillation` built Algorithm 1: per class it replaces the $N$ projected gradients by $m$
# synthetic ones, $G_{\rm syn} = V^\top\tilde G_c$, whose coefficient vectors are local and global ("gap")
# eigenvectors of the class kernel. The obvious alternative is to keep $m$ *real* gradients — rows of
# $\tilde G_c$ chosen by some rule — and run KRR on those. Sec 5.3 of {cite:t}`mahowald2026dntk` compares the two at equal budgets
# on ImageNette/ResNet-18 (Figs 1 and 6) and reports that with five synthetic gradients per class Algorithm 1
# reaches 76% accuracy and 78% fidelity, above every sampling baseline at every compression ratio.
#
# This chapter runs the same comparison on the digits convnet:
#
# * budgets $m \in \{1, 2, 5, 10, 20, 50\}$ gradients per class;
# * Algorithm 1 against four row-selection baselines ({ref}`maths-4-3`): **random** rows, ridge **leverage** scores
#   (the top $m$, and $m$ sampled in proportion to the scores), **FPS** (greedy $k$-center / farthest point
#   sampling) and **$k$-means** (the real row nearest to each of $m$ centres); the seeded ones over three seeds;
#   plus **PCA**, the top-$m$ global eigenvectors (the rank-$m$ KRR), as a reference line;
# * four metrics: test accuracy, fidelity (agreement with the network), and two measures of how much of the
#   kernel the compressed set keeps — subspace coverage and relative Nyström error;
# * how many of Algorithm 1's gradients are local and how many are gaps, and a grid search over its two
#   thresholds $(\tau, \gamma)$ with the Pareto front of fidelity against the number of synthetic gradients (Fig 9);
# * all of it on the real training set and on a WMDD-distilled set (the paper's setting).

# %% tags=["parameters"]
per_class = None         # training images per digit (None: all 1437 training images)
budgets = [1, 2, 5, 10, 20, 50]      # gradients per class
seeds = [0, 1, 2]        # seeds of the randomised baselines
n_clusters = 10          # M for Algorithm 1
tau = 0.95               # Algorithm 1's energy threshold (fixed a priori for the budget comparison)
gamma = 0.9              # Algorithm 1's gap threshold
grid_taus = [0.5, 0.6, 0.7, 0.8, 0.9]
grid_gammas = [0.25, 0.5, 0.75, 0.9, 1.0]
wmdd_ipc = 20            # distilled images per class for the second comparison (0: skip it)
wmdd_iterations = 100    # WMDD synthesis steps (chapter 6)
proj_kind = "gaussian"
proj_dim = 512           # k
lam_rel = 1e-3           # λ_c = lam_rel · tr(K̃_c)/N of the uncompressed set, for every method
seed = 0
model_name = "convnet"
dataset = "digits"
device = "cpu"
progress = False

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from myst_nb import glue

from dntk import chapter, data, tangent, wmdd
from dntk.baselines import SEEDED_METHODS
from dntk.gradient_distillation import METHOD_LABELS, compare, local_global_grid, score, select
from dntk.spectral import spectral_clusters

_ = torch.manual_seed(seed)
chapter.use_book_style()
chapter.glue_number("ch10_k", proj_dim)
chapter.glue_number("ch10_wmdd_ipc", wmdd_ipc)
chapter.glue_number("ch10_tau", tau)
chapter.glue_number("ch10_gamma", gamma)

# %% [markdown]
# ## Features, targets, and how a compressed set is scored
#
# Projected class gradients ($k$ = {glue:text}`ch10_k`) of the training and test images, and the network's logits as
# regression targets. Every method produces, per class, a small training set $(G_{\rm syn}, t_{\rm syn})$ —
# real rows and their targets for the baselines, $(V^\top\tilde G_c, V^\top t_c)$ for Algorithm 1 and PCA — and
# is then scored identically:
#
# * **KRR** on the compressed set with the ridge of the *uncompressed* set, $\lambda_c = 10^{-3}\operatorname{tr}\tilde
#   K_c/N$ ({eq}`eq-krr-synthetic`), predicting from the test points' projected gradients; test **accuracy** and **fidelity**
#   (agreement with the network's argmax).
# * **Coverage** $\|\tilde G\Pi\|_F^2/\|\tilde G\|_F^2$ with $\Pi$ the orthogonal projector onto the row space of
#   $G_{\rm syn}$ — the fraction of the class's gradient energy inside the compressed set's span — and the
#   **relative Nyström error** $\|\tilde G(I-\Pi)\|_F^2/\|\tilde G\|_F^2 = \operatorname{tr}(\tilde K - \tilde K_\Pi)/\operatorname{tr}\tilde K$
#   ({eq}`eq-kernel-fidelity`, the paper's eq 10), the trace-norm error of the Nyström kernel that the compressed set induces. Both are averaged
#   over the classes (`dntk.metrics.coverage`, `dntk.metrics.nystrom_error`).

# %%
setup = chapter.projected_setup(proj_kind, proj_dim, per_class=per_class, seed=seed, model_name=model_name,
                                dataset=dataset, device=device, progress=progress)
model, proj = setup.model, setup.projector
y_tr, y_te = setup.y_train, setup.y_test
G_tr, G_te, f_tr, f_te = setup.G_train, setup.G_test, setup.f_train, setup.f_test
N, C, k = G_tr.shape
print(f"training set: N = {N}, C = {C}, k = {k}; test set: {len(y_te)} images")

BASELINES = ("random", "leverage", "leverage_sampled", "fps", "kmeans")   # the row-selection baselines


def run_compare(G, T, budgets, labels):
    """Every method at every budget on features G (N, C, k) with targets T (N, C), scored on the test set."""
    return compare(G, T, G_te, y_te, f_te, budgets, seeds=seeds, n_clusters=n_clusters, tau=tau, gamma=gamma,
                   labels=labels, lam_rel=lam_rel, seed=seed)

# %% [markdown]
# ## The comparison on the training set
#
# One partition of the class-averaged kernel (Algorithm 1's step 1, computed once), Algorithm 1 at the fixed
# $(\tau, \gamma)$ of the parameters cell, and every baseline at every budget.

# %%
labels = torch.as_tensor(spectral_clusters(G_tr, n_clusters, method="matrix_free", seed=seed))
res = run_compare(G_tr, f_tr, budgets, labels)
lg, counts = res.result, res.counts()
acc_full, fid_full = res.full.accuracy, res.full.fidelity
print(f"full KRR on all N = {N} rows: accuracy {acc_full:.3f}, fidelity {fid_full:.3f}\n")
for metric in ("accuracy", "fidelity", "coverage", "nystrom_error"):
    print(res.table(metric), end="\n\n")


# %% tags=["hide-input"]
def plot_metrics(res):
    """A 2×2 figure of accuracy, fidelity, coverage and Nyström error against the budget m."""
    ms = list(res.budgets)
    fig, axes = plt.subplots(2, 2, figsize=(chapter.PAGE_WIDTH_IN, 6.4), sharex=True)
    axes = axes.ravel()
    styles = {"local_global": dict(color="k", lw=2.2, marker="o"), "pca": dict(color="gray", ls="--", marker=".")}
    cmap = plt.get_cmap("tab10")
    for ax, (key, label) in zip(axes, [("accuracy", "test accuracy"), ("fidelity", "fidelity"),
                                       ("coverage", "coverage"), ("nystrom_error", "relative Nyström error")]):
        for i, (name, (mean, lo, hi)) in enumerate(res.summary(key).items()):
            st = styles.get(name, dict(color=cmap(i), marker="."))
            ax.plot(ms, mean, label=METHOD_LABELS[name], **st)
            if name in SEEDED_METHODS:
                ax.fill_between(ms, lo, hi, color=st["color"], alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(label)
        if key == "nystrom_error":
            ax.set_yscale("log")
    for ax in axes[2:]:
        ax.set_xlabel("gradients per class $m$")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize=9)
    return fig


chapter.glue_number("ch10_N", N)
chapter.glue_figure("ch10-train", plot_metrics(res))

# %% [markdown]
# ```{glue:figure} ch10-train
# :name: fig-ch10-train
# :alt: Four panels against the number of gradients per class on a log axis: test accuracy, fidelity, subspace coverage and relative Nyström error, for Algorithm 1 (thick black), the rank-m PCA reference (dashed grey) and five sampling baselines; Algorithm 1 is highest in accuracy and fidelity at small budgets.
#
# Algorithm 1 against the sampling baselines on the digits training set ($N$ = {glue:text}`ch10_N`), at
# budgets of $m$ gradients per class. Bands show the minimum and maximum over the baselines' seeds; the
# dashed grey line is the rank-$m$ PCA reference. The analogue of the paper's Figs 1 and 6.
# ```

# %% [markdown]
# Reading the plots (the analogue of the paper's Figs 1 and 6):
#
# * **Algorithm 1 leads at small budgets.** With one to ten gradients per class its accuracy and fidelity
#   are far above every way of *choosing* real gradients. A real gradient mixes the direction that matters
#   with the idiosyncrasies of one input; a synthetic gradient is an eigen-direction, i.e. an average over
#   all the inputs of a cluster weighted by their share in that direction.
# * **It also beats PCA at the smallest budgets, although PCA covers more of the kernel.** PCA's coverage is
#   the highest possible for any $m$-dimensional span (Ky Fan, {prf:ref}`a-prop-energy-gap`) and its Nyström error the
#   lowest, yet the rank-1 and rank-2 KRR classify almost nothing correctly: the leading *global*
#   eigenvector of a class kernel is almost the constant vector, i.e. its synthetic gradient is the mean
#   gradient shared by all inputs (the kernels are uncentred; printed below), which carries more than half
#   of the trace and says nothing about which digit an input is. Algorithm 1's first candidates are the top
#   *local* eigenvectors — for class $c$ nearly always that of the cluster of digit $c$ — which is exactly what
#   separates the classes. Coverage is a statement about the kernel, not about the decision.
# * **By $m = 20$–$50$ everything converges** to the full KRR: the class kernels have truncation ranks of a few
#   dozen at $\tau = 0.9$, and any reasonable set of that size spans them.

# %% [markdown]
# Two numbers behind the PCA remark, per class: how close the top global eigenvector $u_1$ is to the constant
# vector $\mathbf 1/\sqrt N$ (then $\tilde G_c^\top u_1 \propto$ the mean gradient: Remark 4.2), the share of the
# kernel's trace it carries, and which digit the cluster of Algorithm 1's first synthetic gradient belongs to.

# %%
pca = [select("pca", G_tr[:, c], 1) for c in range(C)]         # the top global eigenvector u_1 of each class
majority = {j: int(torch.mode(y_tr[labels == j]).values) for j in range(n_clusters)}
cos_u1 = [float(p.V[:, 0].sum().abs() / N ** 0.5) for p in pca]
share_u1 = [float((p.V[:, 0] @ G_tr[:, c].double()).pow(2).sum() / G_tr[:, c].double().pow(2).sum())
            for c, p in enumerate(pca)]
first_digit = [majority[int(cs.source[0, 0])] if cs.source[0, 0] >= 0 else -1 for cs in lg.classes]
print(f"{'class':>5}{'cos(u_1, 1/√N)':>16}{'share of tr K':>15}{'digit of 1st synthetic gradient':>33}")
for c in range(C):
    print(f"{c:>5}{cos_u1[c]:>16.3f}{share_u1[c]:>15.3f}{first_digit[c]:>33}")
own_first = sum(first_digit[c] == c for c in range(C))
print(f"Algorithm 1 starts with the cluster of its own digit in {own_first} of {C} classes")

# %%
print("Algorithm 1's synthetic gradients per budget, summed over the classes (local, gap):")
for m in budgets:
    loc, gap = counts[m]
    print(f"  m = {m:>2}: {loc:>4} local, {gap:>3} gap")
print(f"without a budget at τ = {tau}, γ = {gamma} Algorithm 1 would keep {sum(cs.n_candidates for cs in lg.classes)} "
      "candidates before step 6")

# %% [markdown]
# With up to ten gradients per class the synthetic sets are made of **local** gradients only: step 6 orders
# candidates by eigenvalue, and the top local eigenvalues of the ten digit clusters are larger than those of
# the gap directions, which sit further down the global spectrum ({numref}`fig-ch08-spectra`). Gaps enter from
# $m = 20$ on, and they make up a large part of unbudgeted sets — which is what the grid search below varies.
#
# ## Grid search over $(\tau, \gamma)$ and the Pareto front (Fig 9)
#
# Without a budget, $\tau$ sets how deep into each spectrum the candidates go ($r$ and $r_j$) and $\gamma$ how many
# global directions count as gaps. Each $(\tau,\gamma)$ gives a synthetic set of some size and some fidelity;
# a configuration is **Pareto-optimal** if no other one reaches at least its fidelity with fewer gradients.
# The partition and all eigendecompositions are shared across the grid (`local_global_grid`).

# %%
grid = local_global_grid(G_tr, f_tr, n_clusters, grid_taus, grid_gammas, labels=labels)
pts = []
for (t_, g_), r_ in grid.items():
    sc = score(r_.G_syn, r_.t_syn, res.lam, G_te, y_te, f_te)      # the same KRR and ridge as the comparison
    cnt = r_.counts()
    pts.append(dict(tau=t_, gamma=g_, m=cnt["m"], local=cnt["local"], gap=cnt["gap"], acc=sc.accuracy,
                    fid=sc.fidelity))
order = sorted(pts, key=lambda p: (p["m"], -p["fid"]))
front, best = [], -1.0
for p in order:
    if p["fid"] > best:
        front.append(p)
        best = p["fid"]
print(f"{'τ':>5}{'γ':>6}{'m (all classes)':>17}{'local':>7}{'gap':>6}{'accuracy':>10}{'fidelity':>10}  Pareto")
for p in sorted(pts, key=lambda p: (p["tau"], p["gamma"])):
    print(f"{p['tau']:>5}{p['gamma']:>6}{p['m']:>17}{p['local']:>7}{p['gap']:>6}{p['acc']:>10.3f}{p['fid']:>10.3f}"
          f"  {'*' if p in front else ''}")
fid_spread = max(p["fid"] for p in pts) - min(p["fid"] for p in pts)
worst_vs_full = fid_full - min(p["fid"] for p in pts)
front_gaps = sum(p["gap"] > 0 for p in front)
for name, value in {"ch10_grid_n": len(pts), "ch10_fid_spread": fid_spread, "ch10_fid_spread_images":
                    round(fid_spread * len(y_te)), "ch10_worst_vs_full": worst_vs_full, "ch10_front_n": len(front),
                    "ch10_front_gaps": front_gaps, "ch10_n_test": len(y_te)}.items():
    chapter.glue_number(name, value)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN, 3.6))
cm = plt.get_cmap("viridis")
for i, t_ in enumerate(grid_taus):
    sel = [p for p in pts if p["tau"] == t_]
    ax.scatter([p["m"] for p in sel], [p["fid"] for p in sel], color=cm(i / max(1, len(grid_taus) - 1)),
               label=f"τ = {t_}", s=[20 + 60 * p["gamma"] for p in sel])
ax.step([p["m"] for p in front], [p["fid"] for p in front], where="post", color="k", lw=1, label="Pareto front")
ax.axhline(fid_full, color="gray", ls=":", lw=1, label="full KRR")
ax.set_xscale("log")
ax.set_xlabel("synthetic gradients (all classes)")
ax.set_ylabel("fidelity")
ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
chapter.glue_figure("ch10-pareto", fig)

fig, axes = plt.subplots(1, 2, figsize=(chapter.PAGE_WIDTH_IN, 3.4))
for ax, key in zip(axes, ["local", "gap"]):
    Z = np.array([[next(p[key] for p in pts if p["tau"] == t_ and p["gamma"] == g_) for g_ in grid_gammas]
                  for t_ in grid_taus])
    im = ax.imshow(Z, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(grid_gammas)), [str(g) for g in grid_gammas])
    ax.set_yticks(range(len(grid_taus)), [str(t) for t in grid_taus])
    ax.set_xlabel("γ")
    ax.set_ylabel("τ")
    ax.set_title(f"{key} gradients (all classes)")
    for a in range(len(grid_taus)):
        for b in range(len(grid_gammas)):
            ax.text(b, a, int(Z[a, b]), ha="center", va="center", fontsize=9, color="w" if Z[a, b] < Z.max() / 2 else "k")
chapter.glue_figure("ch10-grid-counts", fig)

# %% [markdown]
# ```{glue:figure} ch10-pareto
# :name: fig-ch10-pareto
# :alt: Scatter of fidelity against the total number of synthetic gradients for every (tau, gamma) pair of the grid, coloured by tau with marker size growing with gamma, with the Pareto front as a black step line and the full KRR's fidelity as a dotted line.
#
# The $(\tau, \gamma)$ grid search without a budget (the analogue of the paper's Fig 9): fidelity against the
# size of the synthetic set, summed over the classes. Colour: $\tau$; marker size grows with $\gamma$; black
# steps: the Pareto front; dotted: the full KRR on all training rows.
# ```
#
# ```{glue:figure} ch10-grid-counts
# :name: fig-ch10-grid-counts
# :alt: Two heatmaps over the tau-gamma grid with the count printed in each cell: the number of local gradients (left), which changes only with tau, and the number of gap gradients (right), which grows with gamma.
#
# How many of the synthetic gradients in {numref}`fig-ch10-pareto` are local (left) and gaps (right), summed
# over the classes, for every $(\tau, \gamma)$.
# ```

# %% [markdown]
# The number of local gradients depends on $\tau$ only (one per cluster and class while $\tau \le 0.7$: each
# cluster's top eigenvector, close to its mean gradient, already holds that share of the cluster's energy),
# the number of gaps on both thresholds, growing with $\gamma$. Every one of the {glue:text}`ch10_grid_n`
# configurations reproduces the full KRR: the worst is {glue:text}`ch10_worst_vs_full:.3f` below its fidelity,
# and best and worst differ by {glue:text}`ch10_fid_spread:.3f`, that is {glue:text}`ch10_fid_spread_images`
# of the {glue:text}`ch10_n_test` test images. At that resolution the Pareto front
# ({glue:text}`ch10_front_n` configurations, {glue:text}`ch10_front_gaps` of them with gap gradients) is
# decided by a test image or two, so on digits the grid does not show the paper's finding that gap gradients
# buy fidelity; it shows that without a budget Algorithm 1 is insensitive to $(\tau, \gamma)$ here, because
# the clusters (the digits) explain most of each kernel. The paper finds Pareto-optimal settings
# "sporadically distributed" on ImageNette, where the kernels are far less clustered.

# %% [markdown]
# ## The same comparison on a WMDD-distilled set
#
# The paper runs Algorithm 1 on the gradients of a *distilled* set: WMDD ({doc}`06_wmdd`, {ref}`maths-4-1`)
# synthesises {glue:text}`ch10_wmdd_ipc` images per class, the class kernels are built over these $N = C\cdot\text{ipc}$ images, and
# Algorithm 1 compresses each class to a handful of synthetic gradients (the paper: 500 distilled images,
# five synthetic gradients per class, a 100× compression). Targets are the teacher's logits at the distilled
# images (WMDD's soft labels); scores are on the real test set as before.

# %%
if wmdd_ipc:
    dset = wmdd.distill(model, data.load(dataset, "train"), wmdd_ipc, iterations=wmdd_iterations, seed=seed,
                        device=device, progress=progress)
    G_d = tangent.class_gradients(model, dset.images, projector=proj, device=device, progress=progress)
    f_d = tangent.logits(model, dset.images)
    budgets_d = [m for m in budgets if m <= len(dset)]
    labels_d = torch.as_tensor(spectral_clusters(G_d, n_clusters, seed=seed))
    res_d = run_compare(G_d, f_d, budgets_d, labels_d)
    print(f"distilled set: N = {len(dset)} images ({wmdd_ipc} per class); "
          f"full KRR on it: accuracy {res_d.full.accuracy:.3f}, fidelity {res_d.full.fidelity:.3f}\n")
    for metric in ("accuracy", "fidelity", "coverage"):
        print(res_d.table(metric), end="\n\n")
    print("Algorithm 1 (local, gap) per budget:", res_d.counts())
    chapter.glue_number("ch10_N_d", len(dset))
    acc_d = res_d.summary("accuracy")
    for i, m in enumerate(budgets_d):  # for the results page
        best_base = max(BASELINES, key=lambda n, i=i: acc_d[n][0][i])
        chapter.glue_number(f"ch10_d_alg_{m}", acc_d["local_global"][0][i])
        chapter.glue_number(f"ch10_d_pca_{m}", acc_d["pca"][0][i])
        chapter.glue_number(f"ch10_d_base_{m}", acc_d[best_base][0][i])
        glue(f"ch10_d_basename_{m}", METHOD_LABELS[best_base], display=False)
    chapter.glue_figure("ch10-wmdd", plot_metrics(res_d))

# %% [markdown]
# ```{glue:figure} ch10-wmdd
# :name: fig-ch10-wmdd
# :alt: The same four panels as the training-set figure, for the WMDD-distilled set: Algorithm 1 is again highest in accuracy and fidelity at small budgets.
#
# As {numref}`fig-ch10-train`, on the WMDD-distilled set of $N$ = {glue:text}`ch10_N_d` images
# ({glue:text}`ch10_wmdd_ipc` per class); scores on the real test set.
# ```

# %% [markdown]
# ## What reproduces and what differs
#
# * **Reproduced: the ordering.** On the real training set, at every budget up to ten per class, Algorithm 1's
#   fidelity is at least that of every sampling baseline (random, leverage, FPS, $k$-means), against the best
#   of their three seeds; its coverage is the highest of all *row-based* sets at every budget, and its Nyström
#   error the lowest. On the WMDD-distilled set the same holds up to $m = 5$ against the best seed of every
#   baseline, and up to $m = 10$ against their seed averages (the assertions below check both).
# * **Reproduced: five synthetic gradients suffice.** At $m = 5$ per class Algorithm 1 stays within a few
#   points of the full KRR and above 90% test accuracy, on the training set and on the distilled set (the
#   paper: 76% on ImageNette with a ResNet-18, a much harder task; our absolute numbers are higher because
#   digits is easy, not because the method does better).
# * **Different: gaps.** In the paper the gap representatives (step 5) are part of the small synthetic sets;
#   on digits the eigenvalue order of step 6 fills budgets of up to ten per class with local gradients only,
#   and gaps enter from $m = 20$ on. The local–global structure is there ({numref}`fig-ch08-spectra` shows the
#   gaps), but at
#   small budgets the local part wins.
# * **Beyond the paper: PCA.** The paper does not compare with the top global eigenvectors. On digits they are
#   useless at $m \le 2$, behind Algorithm 1 at $m = 5$ and comparable from $m = 10$ on, even though they cover
#   more of the kernel at every budget: what the classifier needs is not simply the most energy.

# %% tags=["hide-input"]
fid = res.summary("fidelity")
acc_lg = res.summary("accuracy")["local_global"][0]
for i, m in enumerate(budgets):
    if m > 10:
        continue
    for name in BASELINES:
        assert fid["local_global"][0][i] >= fid[name][2][i], (m, name)      # ≥ the best seed of each baseline
assert acc_lg[budgets.index(5)] >= 0.9, "five synthetic gradients per class: test accuracy ≥ 0.9"
cov, nys = res.summary("coverage"), res.summary("nystrom_error")
for i, m in enumerate(budgets):    # best coverage and lowest Nyström error of all row-based sets, every budget
    assert all(cov["local_global"][0][i] >= cov[name][2][i] for name in BASELINES), m
    assert all(nys["local_global"][0][i] <= nys[name][1][i] for name in BASELINES), m
assert all(counts[m][0] + counts[m][1] == C * m for m in budgets if m <= min(cs.n_candidates for cs in lg.classes))
assert front[0]["m"] == min(p["m"] for p in pts)
assert worst_vs_full <= 0.02, "every (τ, γ) without a budget reproduces the full KRR's fidelity"
assert min(cos_u1) > 0.9 and min(share_u1) > 0.4, "u_1 ≈ the constant vector, carrying a large share of tr K"
assert own_first >= C - 2, "Algorithm 1's first synthetic gradient comes from the cluster of its own digit"
assert all(p["local"] == next(q["local"] for q in pts if q["tau"] == p["tau"]) for p in pts), "local count depends on τ only"
for t_ in grid_taus:
    gaps_t = [next(p["gap"] for p in pts if p["tau"] == t_ and p["gamma"] == g_) for g_ in sorted(grid_gammas)]
    assert gaps_t == sorted(gaps_t), "more gaps as γ grows"
if wmdd_ipc:
    fid_d = res_d.summary("fidelity")
    for i, m in enumerate(budgets_d):
        for name in BASELINES:
            if m <= 5:
                assert fid_d["local_global"][0][i] >= fid_d[name][2][i], ("distilled", m, name)   # best seed
            if m <= 10:
                assert fid_d["local_global"][0][i] >= fid_d[name][0][i], ("distilled", m, name)   # seed mean
    assert acc_d["local_global"][0][budgets_d.index(5)] >= 0.9
