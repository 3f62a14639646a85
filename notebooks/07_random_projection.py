# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Random projection of tangent features
#
# A per-class gradient has one entry per network parameter: about $3\times10^4$ for the digits
# convnet, $1.1\times10^7$ for a ResNet-18. Kernels only need *inner products* of gradients, and inner
# products survive a random projection to $k \ll P$ dimensions almost unchanged — the
# Johnson–Lindenstrauss (JL) lemma {cite}`dasgupta2003jl`. This chapter follows Sec 4.2 of
# {cite:t}`mahowald2026dntk` (Remark 4.1, App B.2–B.3; appendix {ref}`maths-4-2`): it states the lemma,
# checks that every projector in `dntk.projection` is unbiased, measures the kernel error against $k$ —
# also on the strongly concentrated gradients of an untrained network —, checks that the spectrum and
# with it the redundancy measure of Prop B.6 are preserved, compares kernel ridge regression on
# projected and exact features, and ends with a recipe for choosing $k$ from a small pilot batch.

# %% tags=["parameters"]
n_per_class = 6  # training digits per class (N = 10 * n_per_class)
n_test_per_class = 10  # test digits per class
ks = [32, 128, 512, 2048]  # projection dimensions for the error curves
k_main = 512  # the projection dimension used for spectra and KRR
n_seeds = 3  # independent projections per (kind, k)
n_unbiased_seeds = 40  # projections for the unbiasedness check
k_unbiased = 16
taus = [0.9, 0.95, 0.99]  # energy thresholds for Prop B.6
n_init_seeds = 3  # projections per kind for the untrained-network comparison
n_pilot = 24  # pilot inputs for choosing k
pilot_ks = [64, 256, 1024]  # projection dimensions measured on the pilot batch
pilot_seeds = 2  # projections per (kind, k) on the pilot batch
target_error = 0.05  # the kernel error k is chosen for
seed = 0

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from dntk import chapter, data, kernel, krr, metrics, models, projection, spectral, tangent

chapter.use_book_style()
_ = torch.manual_seed(seed)
model = models.trained("convnet", dataset="digits", seed=0)
train, test = data.load("digits", "train"), data.load("digits", "test")
Xtr, ytr = data.as_tensors(train, per_class=n_per_class, seed=seed)
Xte, yte = data.as_tensors(test, per_class=n_test_per_class, seed=seed)
C, P = train.num_classes, tangent.num_params(model)
layout = tangent.param_layout(model)
Gtr = tangent.class_gradients(model, Xtr)  # exact (N, C, P)
Gte = tangent.class_gradients(model, Xte)
K = kernel.class_kernels(Gtr)  # exact class kernels (C, N, N), float64
N = len(Xtr)
chapter.glue_number("ch07_P", P)
chapter.glue_number("ch07_N", N)
chapter.glue_number("ch07_N_test", len(Xte))
chapter.glue_number("ch07_k_main", k_main)
chapter.glue_number("ch07_s", projection.DEFAULT_SPARSE_S)

# %% [markdown]
# We work with the trained digits convnet ($P$ = {glue:text}`ch07_P:,` parameters, $C = 10$ classes),
# $N$ = {glue:text}`ch07_N` training digits and {glue:text}`ch07_N_test` test digits, whose exact
# class gradients $G_c \in \mathbb{R}^{N\times P}$ are small enough to keep.
#
# ## The Johnson–Lindenstrauss lemma
#
# ```{prf:theorem} Johnson–Lindenstrauss
# :label: thm-jl
#
# Let $R \in \mathbb{R}^{P\times k}$ have independent $\mathcal{N}(0, 1/k)$ entries. For any $n$ points
# $a_1,\dots,a_n \in \mathbb{R}^P$ and $\varepsilon \in (0, 1/2)$, if $k \ge c\,\varepsilon^{-2}\log n$
# then with high probability
# $(1-\varepsilon)\|a_i - a_j\|^2 \le \|R^\top a_i - R^\top a_j\|^2 \le (1+\varepsilon)\|a_i - a_j\|^2$
# for all pairs, and inner products move by at most $\varepsilon\,\|a_i\|\|a_j\|$.
# ```
#
# Two facts do the work. First, **unbiasedness**: $\mathbb{E}[RR^\top] = I$, so
# $\mathbb{E}\langle R^\top a, R^\top b\rangle = a^\top \mathbb{E}[RR^\top] b = \langle a, b\rangle$
# (appendix eq. {eq}`eq-jl-unbiased`). Second, **concentration**: each projected inner product has
# variance $(\langle a,b\rangle^2 + \|a\|^2\|b\|^2)/k$ for Gaussian $R$, so the error shrinks like
# $1/\sqrt{k}$, independently of $P$. The projected class gradients $\tilde G_c = G_c R$ give the
# projected class kernel $\tilde K_c = \tilde G_c \tilde G_c^\top$, an unbiased estimate of $K_c$.
#
# The paper uses $\tilde G = \sqrt{P/k}\, G Q$ with $Q$ a random $P\times k$ matrix with orthonormal
# columns. `dntk.projection.make(kind, k, seed)` offers it and five cheaper relatives, all unbiased and
# all generated piece by piece from counter-based seeds (the result does not depend on batch size,
# chunking or device, and the $P\times k$ matrix is never held when $P$ is large):
#
# | kind | $R$ | cost to project one gradient |
# |---|---|---|
# | `orthonormal` | $\sqrt{P/k}\,Q$, $Q$ from a QR of a Gaussian (small $P$ only) | $Pk$ |
# | `gaussian` | entries $\mathcal{N}(0, 1/k)$ | $Pk$ |
# | `rademacher` | entries $\pm 1/\sqrt{k}$ | $Pk$ |
# | `sparse` | exactly $s$ nonzeros $\pm1/\sqrt{s}$ per parameter, one in each of $s$ slices of the $k$ outputs | $sP$ |
# | `srht` | $\sqrt{P'/k}\,SHD$: random signs, Walsh–Hadamard transform, $k$ sampled coordinates | $P'\log_2 P'$ |
# | `kronecker` | per weight matrix $R_\mathrm{out}\otimes R_\mathrm{in}$, $k = k_\mathrm{out}k_\mathrm{in}$ | $\sum_\ell T_\ell(d_\mathrm{in}k_\mathrm{in} + d_\mathrm{out}k_\mathrm{out})$ |
#
# The `sparse` kind is the sparse JL transform of {cite:t}`kane2014sparser`: the position and sign of
# each parameter's $s$ nonzeros come from a hash of the parameter's index, so any slice of $R$ can be
# generated on its own. Its inner-product variance is the Gaussian one *minus*
# $2\sum_j a_j^2 b_j^2/k$, for any $s$. Summed over a kernel, its expected squared error is therefore
# never larger than a dense Gaussian's: clearly smaller when a few coordinates dominate, and about the
# same when the energy is spread out (the subtracted term is then negligible). This holds on average
# over random draws; a single draw of either kind can land above or below the other (next section).
# Since that variance does not depend on $s$, the default is the
# cheapest, $s$ = {glue:text}`ch07_s` (a CountSketch); a larger $s$ (option `s=`) tightens the tail of the
# worst-case distortion that the JL lemma bounds, at $s$ multiply–adds per parameter.
#
# The Kronecker kind never forms a per-sample layer gradient: a layer gradient is
# $\sum_t \delta_t a_t^\top$ (output gradient times input, summed over the $T_\ell$ positions of a
# convolution), and $(R_\mathrm{out}\otimes R_\mathrm{in})^\top \mathrm{vec}(\delta a^\top)
# = \mathrm{vec}\big((R_\mathrm{out}^\top\delta)(R_\mathrm{in}^\top a)^\top\big)$ (appendix eq.
# {eq}`eq-kronecker-projection`, as in LoGra {cite}`choe2024logra`). Its factors here have orthonormal
# columns (or rows, when a layer is narrower than the factor), scaled so that
# $\mathbb{E}[R_\bullet R_\bullet^\top] = I$ — still unbiased, and with a much smaller variance than
# Gaussian factors (`factors="gaussian"` gives those; the next section measures both).

# %%
def make(kind, k, s):
    return projection.make(kind, k, seed=s).bind(layout)


def project(G, proj):
    """(n, C, P) -> (n, C, k) with the projector's layout (equal to the streamed fast path)."""
    n = G.shape[0]
    return proj.project(G.reshape(n * C, P)).reshape(n, C, -1)


kinds = list(projection.KINDS)
# the same numbers as streaming the network through class_gradients(..., projector=...):
p = make("sparse", k_main, 0)
streamed = tangent.class_gradients(model, Xtr[:20], projector=p)
stream_gap = float((streamed - project(Gtr[:20], p)).norm() / streamed.norm())
chapter.glue_number("ch07_stream_gap", stream_gap)

# %% [markdown]
# Projecting the stored exact gradients and streaming the network through
# `tangent.class_gradients(model, X, projector=...)` — which never forms the $N\times C\times P$ array —
# agree to a relative difference of {glue:text}`ch07_stream_gap:.1e` (float32 round-off), so the
# sections below may project stored gradients.
#
# ## Unbiasedness
#
# For two real gradients $a = g_3(x_1)$, $b = g_3(x_2)$ we average $\langle R^\top a, R^\top b\rangle$
# over many independent projections (seeds) at a small $k$, where a single estimate is noisy. The mean
# must agree with $\langle a, b\rangle$ within its standard error.

# %%
a, b = Gtr[0, 3], Gtr[1, 3]
exact_ip = float(a @ b)
rows = []
for kind in kinds:
    est = np.array([float((lambda z: z[0] @ z[1])(make(kind, k_unbiased, s).project(torch.stack([a, b]))))
                    for s in range(n_unbiased_seeds)])
    se = est.std(ddof=1) / math.sqrt(len(est))
    rows.append((kind, est.mean(), se, (est.mean() - exact_ip) / se, est.std(ddof=1) / abs(exact_ip)))
chapter.glue_number("ch07_k_unbiased", k_unbiased)
chapter.glue_number("ch07_n_unbiased", n_unbiased_seeds)
chapter.glue_number("ch07_max_z", max(abs(r[3]) for r in rows))
print(f"<a, b> = {exact_ip:.4f}; k = {k_unbiased}, {n_unbiased_seeds} seeds")
print(f"{'kind':12s} {'mean':>9s} {'std err':>8s} {'z':>6s} {'rel. spread of one estimate':>28s}")
for kind, m, se, z, spread in rows:
    print(f"{kind:12s} {m:9.4f} {se:8.4f} {z:6.2f} {spread:28.3f}")

# %% [markdown]
# With $k$ = {glue:text}`ch07_k_unbiased` and {glue:text}`ch07_n_unbiased` seeds, every mean sits
# within a few standard errors of the exact value (largest $|z|$ = {glue:text}`ch07_max_z:.2f`). The
# spread of a single estimate differs between kinds: that is the variance, which the next section
# measures on whole kernels.
#
# ## Kernel error against $k$
#
# The relative Frobenius error $\|\tilde K - K\|_F / \|K\|_F$ over all $C$ class kernels, averaged over
# seeds, for every projector (`orthonormal` only up to $k = 512$: it holds the whole $P\times k$ matrix).

# %%
Kt_all = {}  # (kind, k, seed) -> projected class kernels (C, N, N); reused below
err = {kind: {} for kind in kinds}  # mean over seeds
err_seeds = {kind: {} for kind in kinds}  # one error per seed
feats = {}
for kind in kinds:
    for k in ks:
        if kind == "orthonormal" and k > 512:
            continue
        e = []
        for s in range(n_seeds):
            F = project(Gtr, make(kind, k, s))
            Kt_all[kind, k, s] = kernel.class_kernels(F)
            e.append(kernel.relative_error(Kt_all[kind, k, s], K))
            if k == k_main and s == 0:
                feats[kind] = F
        err[kind][k], err_seeds[kind][k] = float(np.mean(e)), e
slopes = {kind: np.polyfit(np.log(sorted(err[kind])), np.log([err[kind][k] for k in sorted(err[kind])]), 1)[0]
          for kind in kinds}


def expected_error(G, k):
    """sqrt(E‖K̃ − K‖²_F) / ‖K‖_F over all class kernels, for a Gaussian R and for the sparse JL transform
    (any s), from their inner-product variances (‖a‖²‖b‖² + ⟨a,b⟩² [− 2Σ_j a_j²b_j²]) / k."""
    var_g = var_s = norm2 = 0.0
    for c in range(G.shape[1]):
        A = G[:, c].double()
        Kc = A @ A.T
        v = float(torch.trace(Kc) ** 2 + (Kc**2).sum()) / k
        var_g, var_s = var_g + v, var_s + v - 2 * float(((A**2).sum(0) ** 2).sum()) / k
        norm2 += float((Kc**2).sum())
    return math.sqrt(var_g / norm2), math.sqrt(var_s / norm2)


rms_gauss, rms_sparse = expected_error(Gtr, k_main)
draw_dev = max(abs(e / rms - 1) for kind, rms in (("gaussian", rms_gauss), ("sparse", rms_sparse))
               for e in err_seeds[kind][k_main])
err_kron_gfactors = float(np.mean([kernel.relative_error(kernel.class_kernels(
    project(Gtr, projection.make("kronecker", k_main, seed=s, factors="gaussian").bind(layout))), K)
    for s in range(n_seeds)]))  # the Kronecker sketch with Gaussian instead of orthogonal factors
kron_local = np.diff(np.log([err["kronecker"][k] for k in ks])) / np.diff(np.log(ks))  # slope between neighbours
for kind in kinds:
    chapter.glue_number(f"ch07_err_{kind}", err[kind][k_main])
chapter.glue_number("ch07_n_seeds", n_seeds)
chapter.glue_number("ch07_rms_gaussian", rms_gauss)
chapter.glue_number("ch07_rms_sparse", rms_sparse)
chapter.glue_number("ch07_draw_dev", 100 * draw_dev)
chapter.glue_number("ch07_kron_ratio", err["kronecker"][k_main] / err["gaussian"][k_main])
chapter.glue_number("ch07_err_kron_gfactors", err_kron_gfactors)
for kind in ("gaussian", "kronecker"):
    chapter.glue_number(f"ch07_{kind}_lo", min(err_seeds[kind][k_main]))
    chapter.glue_number(f"ch07_{kind}_hi", max(err_seeds[kind][k_main]))
chapter.glue_number("ch07_slope_kron_curve", slopes["kronecker"])
chapter.glue_number("ch07_kron_local_lo", kron_local.min())
chapter.glue_number("ch07_kron_local_hi", kron_local.max())
chapter.glue_number("ch07_k_max", max(ks))
widths = [(p.shape[0], p[0].numel()) for p in model.parameters() if p.dim() >= 2]  # (d_out, d_in) per layer
chapter.glue_number("ch07_dout_lo", min(w[0] for w in widths))
chapter.glue_number("ch07_dout_hi", max(w[0] for w in widths))
chapter.glue_number("ch07_din_lo", min(w[1] for w in widths))
chapter.glue_number("ch07_din_hi", max(w[1] for w in widths))
chapter.glue_number("ch07_err_kron_kmax", err["kronecker"][max(ks)])
print(f"{'kind':12s} " + " ".join(f"{'k=' + str(k):>20s}" for k in ks) + "   (mean; min-max over seeds)")
for kind in kinds:
    print(f"{kind:12s} " + " ".join(f"{err[kind][k]:6.3f} ({min(err_seeds[kind][k]):.3f}-{max(err_seeds[kind][k]):.3f})"
                                    if k in err[kind] else f"{'':>20s}" for k in ks))
print(f"expected error at k = {k_main}: gaussian {rms_gauss:.4f}, sparse {rms_sparse:.4f}")

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.6))
for kind in kinds:
    kk = sorted(err[kind])
    ax.loglog(kk, [err[kind][k] for k in kk], "o-", label=kind)
k0 = ks[0]
ax.loglog(ks, [err["gaussian"][k0] * math.sqrt(k0 / k) for k in ks], "k--", lw=1, label="$\\propto 1/\\sqrt{k}$")
ax.set_xlabel("projection dimension $k$")
ax.set_ylabel("$\\|\\tilde K - K\\|_F / \\|K\\|_F$")
ax.legend(ncols=2)
chapter.glue_figure("ch07-error-vs-k", fig)

# %% [markdown]
# ```{glue:figure} ch07-error-vs-k
# :name: fig-ch07-error-vs-k
# :alt: Log-log plot of the relative kernel error against the projection dimension k for six projector kinds. Five lines fall together along a dashed one-over-square-root-of-k line; the Kronecker line lies higher and falls unevenly.
#
# Relative Frobenius error of the projected class kernels (all ten classes) against $k$, mean over
# {glue:text}`ch07_n_seeds` seeds, trained digits convnet, $N$ = {glue:text}`ch07_N` digits. Dashed:
# the $1/\sqrt{k}$ rate through the Gaussian error at the smallest $k$.
# ```
#
# The dense, sparse and SRHT projectors follow the $1/\sqrt{k}$ line and lie close together (at
# $k$ = {glue:text}`ch07_k_main`, mean over {glue:text}`ch07_n_seeds` seeds: Gaussian
# {glue:text}`ch07_err_gaussian:.3f`, sparse {glue:text}`ch07_err_sparse:.3f`, SRHT
# {glue:text}`ch07_err_srht:.3f`): at equal $k$ they are interchangeable, so the cheapest one wins. For
# the Gaussian and the sparse JL transform the variances above give the expected error exactly,
# $\sqrt{\mathbb{E}\|\tilde K - K\|_F^2}/\|K\|_F$: {glue:text}`ch07_rms_gaussian:.4f` and
# {glue:text}`ch07_rms_sparse:.4f` — the same, because on these trained gradients no few coordinates
# dominate. Every one of their draws lands within {glue:text}`ch07_draw_dev:.0f`% of it; the gap
# between their measured means is that scatter, not a difference between the two kinds.
#
# The Kronecker sketch differs in three ways. Its error is larger at equal $k$
# ({glue:text}`ch07_kron_ratio:.1f` times the Gaussian's at $k$ = {glue:text}`ch07_k_main`); it varies
# far more from draw to draw ({glue:text}`ch07_kronecker_lo:.3f`–{glue:text}`ch07_kronecker_hi:.3f` over
# the seeds there, against {glue:text}`ch07_gaussian_lo:.3f`–{glue:text}`ch07_gaussian_hi:.3f` for the
# Gaussian); and it does not fall along one power law: the slope between neighbouring $k$ in the figure
# ranges from {glue:text}`ch07_kron_local_lo:.2f` to {glue:text}`ch07_kron_local_hi:.2f`, for an overall
# fitted exponent of {glue:text}`ch07_slope_kron_curve:.2f`. (Its orthogonal factors already help: with
# Gaussian factors, `factors="gaussian"`, its mean error at $k$ = {glue:text}`ch07_k_main` is
# {glue:text}`ch07_err_kron_gfactors:.3f` instead of {glue:text}`ch07_err_kronecker:.3f`.) The reasons
# are structural. A layer's
# per-sample gradient $\sum_t \delta_t a_t^\top$ has low rank (rank one for a linear layer), and on such
# a block the Kronecker sketch is the product of two independent sketches with only
# $k_\mathrm{out} \approx k_\mathrm{in} \approx \sqrt{k}$ columns each; each contributes a relative
# variance of order $1/\sqrt{k}$, so on a rank-one block the error falls only like $k^{-1/4}$. And once a
# factor is at least as wide as the side of a layer it acts on, it is an exact isometry on that side:
# that part of the error is gone, and more columns on that side add nothing. The layers here have
# {glue:text}`ch07_din_lo`–{glue:text}`ch07_din_hi` inputs and {glue:text}`ch07_dout_lo`–{glue:text}`ch07_dout_hi`
# outputs, so over the measured range the factors pass several of these widths, and the error changes
# its rate as they do: a power law fitted through a few of its points depends on which $k$ and which seeds
# were measured (the pilot below, at other $k$ and on other digits, finds an exponent of
# {glue:text}`ch07_slope_kronecker:.2f`). It buys all this with speed — it never forms a layer
# gradient — so it pays off where $P$ is large and a larger $k$ is affordable (the featurisation
# benchmark states the $k$ at which it matches `gaussian` and what that costs).
#
# ## Concentrated gradients: the network at initialisation
#
# At initialisation — the classic NTK setting — a network's class gradients are far from spread out:
# a handful of parameters (mostly in the last layer) carry most of their energy. A projector whose
# entries are zero with high probability, such as the *very sparse* projection of
# {cite:t}`li2006verysparse` (entries $\pm1/\sqrt{kq}$ with probability $q = 1/\sqrt{P}$, else 0),
# then often misses a heavy coordinate altogether, and its kernel error explodes. The sparse JL
# transform gives every parameter exactly $s$ nonzeros, so no coordinate is ever dropped. We compare
# both with the dense projectors on the same convnet before training.

# %%
init_model = models.build("convnet", C, in_channels=1, seed=seed)
G_init = tangent.class_gradients(init_model, Xtr)
K_init = kernel.class_kernels(G_init)


def top_share(G, frac=0.01):
    """Mean over gradients of the energy fraction held by their largest ``frac`` of coordinates."""
    e = G.reshape(-1, G.shape[-1]).double() ** 2
    top = e.topk(max(1, int(frac * e.shape[1])), dim=1).values.sum(1)
    return float((top / e.sum(1)).mean())


def very_sparse_features(G, k, s):
    """The very sparse projection, built explicitly (P × k is small here), for comparison only."""
    g = torch.Generator().manual_seed(1000 + s)
    q = 1 / math.sqrt(P)
    R = (torch.rand(P, k, generator=g) < q) * torch.where(torch.rand(P, k, generator=g) < 0.5, 1.0, -1.0)
    return (G.reshape(-1, P) @ (R / math.sqrt(k * q))).reshape(G.shape[0], C, k)


init_kinds = ["gaussian", "rademacher", "sparse", "srht", "kronecker"]
err_init = {kind: [kernel.relative_error(kernel.class_kernels(project(G_init, make(kind, k_main, s))), K_init)
                   for s in range(n_init_seeds)] for kind in init_kinds}
err_init["very sparse"] = [kernel.relative_error(kernel.class_kernels(very_sparse_features(G_init, k_main, s)), K_init)
                           for s in range(n_init_seeds)]
share_init, share_trained = top_share(G_init), top_share(Gtr)
rms_init_gauss, rms_init_sparse = expected_error(G_init, k_main)
chapter.glue_number("ch07_rms_init_gaussian", rms_init_gauss)
chapter.glue_number("ch07_rms_init_sparse", rms_init_sparse)
chapter.glue_number("ch07_share_init", 100 * share_init)
chapter.glue_number("ch07_share_trained", 100 * share_trained)
chapter.glue_number("ch07_n_init_seeds", n_init_seeds)
for kind, e in err_init.items():
    chapter.glue_number(f"ch07_init_{kind.replace(' ', '_')}_lo", min(e))
    chapter.glue_number(f"ch07_init_{kind.replace(' ', '_')}_hi", max(e))
print(f"energy share of the top 1% of coordinates: {share_init:.2f} at initialisation, {share_trained:.2f} trained")
print(f"{'kind':12s} kernel error at k = {k_main}, {n_init_seeds} seeds (untrained network)")
for kind, e in err_init.items():
    print(f"{kind:12s} " + "  ".join(f"{v:.3f}" for v in e))
print(f"expected error: gaussian {rms_init_gauss:.4f}, sparse {rms_init_sparse:.4f}")

# %% [markdown]
# Before training the top 1% of coordinates hold {glue:text}`ch07_share_init:.0f`% of each class
# gradient's energy (after training: {glue:text}`ch07_share_trained:.0f`%). On these gradients the very
# sparse projection's kernel error is {glue:text}`ch07_init_very_sparse_lo:.2f`–{glue:text}`ch07_init_very_sparse_hi:.2f`
# over {glue:text}`ch07_n_init_seeds` seeds at $k$ = {glue:text}`ch07_k_main`, against
# {glue:text}`ch07_init_gaussian_lo:.3f`–{glue:text}`ch07_init_gaussian_hi:.3f` for the Gaussian; the
# sparse JL transform stays at {glue:text}`ch07_init_sparse_lo:.3f`–{glue:text}`ch07_init_sparse_hi:.3f` —
# below the Gaussian, as its smaller variance predicts when a few coordinates dominate (expected errors
# from the variances: sparse {glue:text}`ch07_rms_init_sparse:.3f`, Gaussian
# {glue:text}`ch07_rms_init_gaussian:.3f`, where on the trained network both were
# {glue:text}`ch07_rms_gaussian:.3f`). The Rademacher
# and SRHT projectors share that advantage (their entries have constant magnitude, so the
# $\sum_j a_j^2 b_j^2$ term cancels too); only the Gaussian and the Kronecker sketch pay for it.
#
# ## Eigenvalues are preserved
#
# Redundancy is read off the spectrum of $K_c$. Projection perturbs each eigenvalue by at most
# $\|\tilde K_c - K_c\|_2$ (Weyl), so the large ones — the ones that matter — are kept in relative
# terms, while the tail sits at the level of the projection noise.

# %%
c_show = 0
ev = torch.linalg.eigvalsh(K[c_show]).flip(0)
ev_proj = {kind: torch.linalg.eigvalsh(kernel.class_kernels(feats[kind])[c_show]).flip(0)
           for kind in ("gaussian", "srht", "kronecker")}

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.4))
ax.semilogy(np.arange(1, N + 1), ev.clamp_min(1e-12).numpy(), "k-", lw=2, label="exact $K_c$")
for kind, evt in ev_proj.items():
    ax.semilogy(np.arange(1, N + 1), evt.clamp_min(1e-12).numpy(), "--", label=f"{kind}")
ax.set_xlabel("index $i$")
ax.set_ylabel("$\\lambda_i$")
ax.legend()
chapter.glue_figure("ch07-spectrum", fig)

# %% [markdown]
# ```{glue:figure} ch07-spectrum
# :name: fig-ch07-spectrum
# :alt: Eigenvalues of the class-0 kernel on a log scale against their index: the exact spectrum as a solid line and three projected spectra as dashed lines that follow it closely over the large eigenvalues and flatten out in the tail.
#
# Eigenvalues of the class-0 kernel, exact and projected to $k$ = {glue:text}`ch07_k_main` with three
# projector kinds.
# ```
#
# ## The redundancy bracket (Prop B.6)
#
# The truncation rank $r(\tau) = \min\{r : S_r \ge \tau S_N\}$, with partial sums
# $S_r = \sum_{i\le r}\lambda_i$, measures how many directions hold a fraction $\tau$ of the kernel's
# energy (Def 3.1); parameter redundancy is $\beta = P/r(\tau)$. In practice it is computed from the
# projected kernel, $\tilde r(\tau)$ from $\tilde S_r$.
#
# ```{prf:proposition} Redundancy under projection (Prop B.6)
# :label: prop-b6-bracket
#
# Let $\varepsilon = \max_r |\tilde S_r / S_r - 1|$ be the largest relative error of the partial
# eigenvalue sums. Then
# $r\big(\tau\tfrac{1-\varepsilon}{1+\varepsilon}\big) \le \tilde r(\tau) \le r\big(\tau\tfrac{1+\varepsilon}{1-\varepsilon}\big)$
# (thresholds clipped to $[0, 1]$), so $\tilde\beta = P/\tilde r(\tau)$ is bracketed by $\beta$ at
# nearby thresholds.
# ```
#
# ```{prf:proof}
# If $S_r \ge \tau' S_N$ with $\tau' = \tau(1+\varepsilon)/(1-\varepsilon)$, then
# $\tilde S_r \ge (1-\varepsilon)S_r \ge \tau(1+\varepsilon)S_N \ge \tau\tilde S_N$, so
# $\tilde r(\tau) \le r(\tau')$. Symmetrically, $\tilde S_r \ge \tau\tilde S_N$ implies
# $S_r \ge \tilde S_r/(1+\varepsilon) \ge \tau(1-\varepsilon)S_N/(1+\varepsilon)$, so
# $r(\tau(1-\varepsilon)/(1+\varepsilon)) \le \tilde r(\tau)$.
# ```
#
# JL makes $\varepsilon = O(1/\sqrt{k})$ once $k$ exceeds the rank that matters. We measure
# $\varepsilon$ for every projector, $k$, seed and class, and check the bracket on these real gradients.

# %%
def partial_sum_error(ev, evt):
    S, St = torch.cumsum(ev, 0), torch.cumsum(evt, 0)
    return float((St / S - 1).abs().max())


def b6_bracket(ev, tau, eps):
    """(lower, upper) bounds of Prop B.6 for r̃(τ) from the exact eigenvalues ``ev``."""
    lo_t = tau * (1 - eps) / (1 + eps)
    hi_t = min(1.0, tau * (1 + eps) / (1 - eps)) if eps < 1 else 1.0
    lower = spectral.truncation_rank(ev, lo_t) if lo_t > 0 else 1
    return lower, spectral.truncation_rank(ev, hi_t)


ev_exact = torch.linalg.eigvalsh(K).flip(-1).clamp_min(0)  # (C, N)
eps_table = {kind: {} for kind in kinds}
checks, violations = 0, []
rank_shift = {}  # kind -> largest |r̃(τ) − r(τ)| at k_main over seeds, classes and τ
for kind in kinds:
    for k in sorted(err[kind]):
        e_k = []
        for s in range(n_seeds):
            ev_t = torch.linalg.eigvalsh(Kt_all[kind, k, s]).flip(-1).clamp_min(0)
            for c in range(C):
                eps = partial_sum_error(ev_exact[c], ev_t[c])
                e_k.append(eps)
                for tau in taus:
                    lo, hi = b6_bracket(ev_exact[c], tau, eps)
                    rt = spectral.truncation_rank(ev_t[c], tau)
                    checks += 1
                    if not lo <= rt <= hi:
                        violations.append((kind, k, s, c, tau, lo, rt, hi))
                    if k == k_main:
                        shift = abs(rt - spectral.truncation_rank(ev_exact[c], tau))
                        rank_shift[kind] = max(rank_shift.get(kind, 0), shift)
        eps_table[kind][k] = float(np.mean(e_k))
chapter.glue_number("ch07_b6_checks", checks)
chapter.glue_number("ch07_b6_violations", len(violations))
chapter.glue_number("ch07_eps_gauss_main", eps_table["gaussian"][k_main])
r_exact = [spectral.truncation_rank(ev_exact[c], tau) for c in range(C) for tau in taus]
chapter.glue_number("ch07_r_lo", min(r_exact))
chapter.glue_number("ch07_r_hi", max(r_exact))
chapter.glue_number("ch07_shift_gauss", rank_shift["gaussian"])
chapter.glue_number("ch07_shift_max", max(rank_shift[kd] for kd in kinds if kd != "kronecker"))
chapter.glue_number("ch07_shift_kron", rank_shift["kronecker"])
print(f"r(τ) over classes and τ = {taus}: {min(r_exact)}-{max(r_exact)} (of N = {N})")
print(f"largest |r̃(τ) − r(τ)| at k = {k_main}: " + ", ".join(f"{kd} {v}" for kd, v in rank_shift.items()))

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.6))
for kind in kinds:
    kk = sorted(eps_table[kind])
    ax.loglog(kk, [eps_table[kind][k] for k in kk], "o-", label=kind)
ax.loglog(ks, [eps_table["gaussian"][k0] * math.sqrt(k0 / k) for k in ks], "k--", lw=1, label="$\\propto 1/\\sqrt{k}$")
ax.set_xlabel("projection dimension $k$")
ax.set_ylabel("$\\varepsilon$ (mean over classes)")
ax.legend(ncols=2)
chapter.glue_figure("ch07-partial-sums", fig)

# %% [markdown]
# ```{glue:figure} ch07-partial-sums
# :name: fig-ch07-partial-sums
# :alt: Log-log plot of the partial-sum error epsilon against k for six projector kinds, all decreasing roughly along a dashed one-over-square-root-of-k line, Kronecker highest.
#
# The partial-sum error $\varepsilon = \max_r|\tilde S_r/S_r - 1|$ of the projected spectra, mean over
# the ten classes, against $k$.
# ```
#
# The bracket holds in all {glue:text}`ch07_b6_checks` checks ({glue:text}`ch07_b6_violations`
# violations), as it must: it is a deterministic consequence of the definition of $\varepsilon$. What
# JL adds is that $\varepsilon$ — and with it the width of the bracket — shrinks like $1/\sqrt{k}$; at
# $k$ = {glue:text}`ch07_k_main` the Gaussian's is {glue:text}`ch07_eps_gauss_main:.3f`. Measured
# directly, $\tilde r(\tau)$ differs there from $r(\tau)$ by at most {glue:text}`ch07_shift_gauss` for the
# Gaussian and at most {glue:text}`ch07_shift_max` for every kind but the Kronecker sketch
# ({glue:text}`ch07_shift_kron` for it), over the ten classes, the three thresholds and the
# {glue:text}`ch07_n_seeds` seeds, while $r(\tau)$ itself ranges from {glue:text}`ch07_r_lo` to
# {glue:text}`ch07_r_hi`: redundancy can be measured on projected features at a fraction of the cost.
#
# ## Kernel ridge regression on projected features
#
# The chapter on kernel ridge regression fits one ridge regression per class on the class kernel, with
# the network's own logits as targets (appendix {ref}`maths-1`). Here the same `dntk.krr.ClassKRR` runs
# on exact ($w = P$) and projected ($w = k$) features; test predictions use the same projector.

# %%
t_tr = tangent.logits(model, Xtr).double()
t_te = tangent.logits(model, Xte).double()


def krr_row(name, Ftr, Fte):
    pred = krr.ClassKRR().fit(Ftr, t_tr).predict(Fte)
    return (name, Ftr.shape[-1], metrics.accuracy(pred, yte), metrics.fidelity(pred, t_te),
            metrics.relative_logit_error(pred, t_te))


table = [krr_row("exact", Gtr, Gte)]
for kind in ("orthonormal", "gaussian", "sparse", "srht", "kronecker"):
    pr = make(kind, k_main, 0)
    table.append(krr_row(kind, project(Gtr, pr), project(Gte, pr)))
net_acc = metrics.accuracy(t_te, yte)
chapter.glue_number("ch07_net_acc", net_acc)
chapter.glue_number("ch07_krr_exact_acc", table[0][2])
chapter.glue_number("ch07_krr_max_acc_gap", max(abs(r[2] - table[0][2]) for r in table[1:]))
chapter.glue_number("ch07_krr_max_fid_gap", max(abs(r[3] - table[0][3]) for r in table[1:]))
print(f"{'features':12s} {'width':>7s} {'accuracy':>9s} {'fidelity':>9s} {'logit err':>10s}")
for name, w, acc, fid, lerr in table:
    print(f"{name:12s} {w:7d} {acc:9.3f} {fid:9.3f} {lerr:10.3f}")

# %% [markdown]
# The network itself gets {glue:text}`ch07_net_acc:.3f` of these test digits right, the exact-kernel
# model {glue:text}`ch07_krr_exact_acc:.3f`. At $k$ = {glue:text}`ch07_k_main` the projected kernels
# give essentially the exact-kernel model: accuracy and fidelity within
# {glue:text}`ch07_krr_max_acc_gap:.3f` and {glue:text}`ch07_krr_max_fid_gap:.3f` of it for every
# projector, the Kronecker sketch included despite its larger kernel error. The logit error grows a
# little — projection noise adds variance to the fit — and shrinks again as $k$ grows (next section).
#
# ### How far can projection move a KRR prediction? (App B.2)
#
# For training-point predictions $\hat f_c = K_c (K_c + \lambda I)^{-1} t_c$ and
# $\tilde f_c = \tilde K_c (\tilde K_c + \lambda I)^{-1} t_c$ (same $\lambda$),
# $\hat f_c - \tilde f_c = \lambda (\tilde K_c + \lambda I)^{-1} (K_c - \tilde K_c) (K_c + \lambda I)^{-1} t_c$,
# and each inverse has norm at most $1/\lambda$. Hence
#
# $$\|\hat f_c - \tilde f_c\| \le \frac{\|K_c - \tilde K_c\|_2}{\lambda}\,\|t_c\|
# = \varepsilon_2 \,\frac{\lambda_{\max}}{\lambda}\,\|t_c\|, \qquad \varepsilon_2 = \frac{\|K_c - \tilde K_c\|_2}{\lambda_{\max}(K_c)},$$
#
# the paper's form $|\hat f - \tilde f| \lesssim \varepsilon\,\|t\|\,\lambda_{\max}/\lambda$ (appendix eq.
# {eq}`eq-jl-krr-bound`). We compare the two sides for Gaussian projections of every $k$.

# %%
def fit_train(Kc, t, lam):
    A = Kc + lam * torch.eye(Kc.shape[0], dtype=Kc.dtype)
    return Kc @ torch.linalg.solve(A, t)


lam = 1e-3 * torch.diagonal(K, dim1=1, dim2=2).sum(-1) / N  # the default λ of ClassKRR, per class
bound_rows = []
for k in ks:
    Kt = Kt_all["gaussian", k, 0]
    for c in range(C):
        diff = float((fit_train(K[c], t_tr[:, c], lam[c]) - fit_train(Kt[c], t_tr[:, c], lam[c])).norm())
        bound = float(torch.linalg.matrix_norm(K[c] - Kt[c], ord=2) / lam[c] * t_tr[:, c].norm())
        bound_rows.append((k, c, diff, bound))
br = np.array(bound_rows)
print(f"{'k':>6s} {'max change/bound':>17s} {'median change':>14s} {'median bound':>13s}")
for k in ks:
    sel = br[br[:, 0] == k]
    print(f"{k:6d} {np.max(sel[:, 2] / sel[:, 3]):17.2e} {np.median(sel[:, 2]):14.3f} {np.median(sel[:, 3]):13.3g}")
med_change = [float(np.median(br[br[:, 0] == k, 2])) for k in ks]
med_bound = [float(np.median(br[br[:, 0] == k, 3])) for k in ks]
chapter.glue_number("ch07_b2_max_ratio", float(np.max(br[:, 2] / br[:, 3])))
chapter.glue_number("ch07_t_norm", float(t_tr.norm(dim=0).median()))
chapter.glue_number("ch07_b2_change_lo", med_change[-1])
chapter.glue_number("ch07_b2_change_hi", med_change[0])
chapter.glue_number("ch07_k_min", min(ks))

# %% [markdown]
# For each $k$ the table lists, over the ten classes, the largest ratio of the measured change
# $\|\hat f_c - \tilde f_c\|$ to its bound, and the median of the change and of the bound (Euclidean norms
# over the $N$ training points, in logit units; for scale, the median $\|t_c\|$ is
# {glue:text}`ch07_t_norm:.1f`). The bound holds with room to spare (the measured change is at most
# {glue:text}`ch07_b2_max_ratio:.1e` of it): it is a worst case over all directions of $t_c$, and
# $\lambda_{\max}/\lambda$ is large (here $\lambda$ is a thousandth of the mean eigenvalue). It still
# scales the right way — both medians shrink as $k$ grows — which is the content of App B.2. The change
# itself is a small fraction of $\|t_c\|$ once $k$ exceeds $N$ (median {glue:text}`ch07_b2_change_lo:.3f`
# at $k$ = {glue:text}`ch07_k_max`); at $k$ = {glue:text}`ch07_k_min`, below $N$ = {glue:text}`ch07_N`,
# the projected kernel has rank at most $k$ and the fit moves a lot (median
# {glue:text}`ch07_b2_change_hi:.1f`).
#
# ## Choosing $k$
#
# How large must $k$ be? Rules of thumb do not transfer between networks: the error at a given $k$
# depends on how the gradients are spread over the parameters, as the untrained network showed. (A
# popular default, TRAK's $k = 2048$ {cite}`park2023trak`, is too small for some models and wasteful
# for others.) The error is, however, a property of the gradients and of $k$ — not of how many inputs
# are featurised — so a *pilot batch* of a few dozen inputs predicts it. `projection.error_curve(model,
# X_pilot, kinds, dims)` computes the exact class kernels of the pilot once, then the projected ones for
# each kind, $k$ and seed. `projection.recommend_dim(curve, target, kind)` fits the power law
# $\text{err} \approx a\,k^{b}$ through the measured means ($b \approx -1/2$ for the JL projectors) and
# returns the $k$ at which it reaches the target, $\lceil(\text{target}/a)^{1/b}\rceil$.

# %%
X_pilot, _ = data.as_tensors(train, limit=n_pilot, seed=seed + 1)
pilot_kinds = ["gaussian", "sparse", "srht", "kronecker"]
curve = projection.error_curve(model, X_pilot, kinds=pilot_kinds, dims=pilot_ks, seeds=range(pilot_seeds))
k_rec = {kind: projection.recommend_dim(curve, target_error, kind) for kind in pilot_kinds}
# check the recommendation for sparse on the N training digits (not the pilot)
proj_rec = projection.make("sparse", k_rec["sparse"], seed=seed + 7)
err_rec = kernel.relative_error(kernel.class_kernels(tangent.class_gradients(model, Xtr, projector=proj_rec)), K)
chapter.glue_number("ch07_n_pilot", n_pilot)
chapter.glue_number("ch07_target", 100 * target_error)
for kind in pilot_kinds:
    chapter.glue_number(f"ch07_krec_{kind}", k_rec[kind])
    chapter.glue_number(f"ch07_slope_{kind}", curve.fit(kind)[1])
chapter.glue_number("ch07_err_rec", err_rec)
chapter.glue_number("ch07_pilot_seeds", pilot_seeds)
# the Kronecker sketch against the Gaussian at equal k, on the pilot and on the training digits
kron_vs_gauss = np.concatenate([curve.mean("kronecker") / curve.mean("gaussian"),
                                [err["kronecker"][k] / err["gaussian"][k] for k in ks]])
chapter.glue_number("ch07_kron_vs_gauss_lo", kron_vs_gauss.min())
chapter.glue_number("ch07_kron_vs_gauss_hi", kron_vs_gauss.max())
print(f"{'kind':10s} " + " ".join(f"{'k=' + str(d):>9s}" for d in pilot_ks) + f" {'k for ' + str(target_error):>12s}")
for kind in pilot_kinds:
    print(f"{kind:10s} " + " ".join(f"{v:9.4f}" for v in curve.mean(kind)) + f" {k_rec[kind]:12d}")

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(chapter.PAGE_WIDTH_IN * 0.7, 3.6))
kk = np.geomspace(min(pilot_ks), max(pilot_ks + [k_rec[kd] for kd in pilot_kinds if kd != "kronecker"]), 50)
for kind in pilot_kinds:
    a_fit, b_fit = curve.fit(kind)
    line, = ax.loglog(pilot_ks, curve.mean(kind), "o", label=kind)
    ax.loglog(kk, a_fit * kk**b_fit, "-", color=line.get_color(), lw=1)
ax.axhline(target_error, color="k", ls=":", lw=1)
ax.loglog([k_rec["sparse"]], [err_rec], "k*", ms=12, label="sparse at its recommended $k$ (training digits)")
ax.set_xlabel("projection dimension $k$")
ax.set_ylabel("kernel error on the pilot batch")
ax.legend(fontsize=9)
chapter.glue_figure("ch07-choosing-k", fig)

# %% [markdown]
# ```{glue:figure} ch07-choosing-k
# :name: fig-ch07-choosing-k
# :alt: Log-log plot of the pilot-batch kernel error against k for four projector kinds, with fitted power-law lines (near one over square root of k except for Kronecker), a dotted horizontal line at the target error and a star where the recommended sparse projection lands on the training digits, close to the target.
#
# Kernel error measured on a pilot batch of {glue:text}`ch07_n_pilot` digits (points) with the fitted
# power laws $a\,k^b$ (lines), the target error (dotted), and the error of the recommended `sparse`
# projection measured on the $N$ = {glue:text}`ch07_N` training digits (star).
# ```
#
# For a target kernel error of {glue:text}`ch07_target:.0f`%, the pilot of {glue:text}`ch07_n_pilot`
# digits asks for $k$ = {glue:text}`ch07_krec_sparse` with `sparse` (fitted exponent
# {glue:text}`ch07_slope_sparse:.2f`), {glue:text}`ch07_krec_gaussian` with `gaussian` and
# {glue:text}`ch07_krec_srht` with `srht`; the recommended sparse projection gives
# {glue:text}`ch07_err_rec:.3f` on the training digits, which the pilot never saw. For the Kronecker
# sketch the power law is a poor model (its error varies widely between draws and changes its rate with
# $k$, as the previous sections showed), so a fit through {glue:text}`ch07_pilot_seeds` seeds at three
# $k$ is unreliable: here it gives the exponent {glue:text}`ch07_slope_kronecker:.2f` and extrapolates to
# $k$ = {glue:text}`ch07_krec_kronecker:,`, while on the training digits the mean of
# {glue:text}`ch07_n_seeds` seeds fell faster (exponent {glue:text}`ch07_slope_kron_curve:.2f`, error
# {glue:text}`ch07_err_kron_kmax:.3f` at $k$ = {glue:text}`ch07_k_max`). What both measurements agree on
# is that at every measured $k$ its error is {glue:text}`ch07_kron_vs_gauss_lo:.1f`–{glue:text}`ch07_kron_vs_gauss_hi:.1f`
# times the Gaussian's, so it needs a much larger $k$ for this target; its recommended $k$ is a rough
# guide, to be checked by measuring at it.
#
# **Recommendation.** Measure, do not guess: run `error_curve` on 30–100 inputs of your own data with
# your own network at three values of $k$ a factor of four apart, drop the kinds whose fitted exponent is
# far from $-1/2$ or whose recommended $k$ is out of reach, and among the rest take the one that is
# cheapest on your hardware at `recommend_dim`'s $k$. On a CPU that is usually `sparse` ($s$
# multiply–adds per parameter, and in expectation at least as accurate as a dense Gaussian at equal $k$).
# The Kronecker
# sketch pays off only on large layers, where its speed buys the larger $k$ (the featurisation benchmark
# shows the trade-off on a ResNet-18). Because JL errors fall only like $1/\sqrt{k}$, halving the error
# costs four times the dimensions — and four times the storage of the features and the cost of every
# kernel built from them.
#
# ## Checks
#
# The claims of this chapter, asserted: streaming equals projecting, every projector is unbiased, the
# error falls like $1/\sqrt{k}$ and is comparable across the unstructured kinds, the sparse JL transform
# has the Gaussian's expected error on trained gradients and a smaller one on concentrated gradients,
# where the very sparse projection fails, the Kronecker sketch is less accurate, more variable and
# uneven in $k$, the Prop B.6 bracket and the App B.2 bound hold, projected KRR matches exact KRR, and
# the recommended $k$ meets its target.

# %% tags=["hide-input"]
assert stream_gap < 1e-5, stream_gap
for kind, m, se, z, spread in rows:
    assert abs(z) < 4.5, (kind, z)  # unbiased
for kind in ("gaussian", "rademacher", "srht", "sparse", "orthonormal"):
    assert -0.7 < slopes[kind] < -0.35, (kind, slopes[kind])  # ~ 1/sqrt(k)
    assert err[kind][k_main] < 2 * err["gaussian"][k_main], kind  # within 2x of gaussian at equal k
assert abs(rms_sparse / rms_gauss - 1) < 0.02, (rms_sparse, rms_gauss)  # same expected error when spread out
assert draw_dev < 0.3, draw_dev  # single draws scatter moderately around the expected error
assert slopes["kronecker"] < -0.2 and err["kronecker"][max(ks)] < err["kronecker"][min(ks)] / 2
assert err["kronecker"][k_main] > 1.5 * err["gaussian"][k_main]  # less accurate at equal k
assert err_kron_gfactors > 1.5 * err["kronecker"][k_main], err_kron_gfactors  # orthogonal factors help
draw_spread = {kd: np.ptp(err_seeds[kd][k_main]) / err[kd][k_main] for kd in ("gaussian", "kronecker")}
assert draw_spread["kronecker"] > 2 * draw_spread["gaussian"], draw_spread  # more variable from draw to draw
assert kron_local.max() - kron_local.min() > 0.2, kron_local  # no single power law
factor_sizes = [(projection.make("kronecker", k).k_out, projection.make("kronecker", k).k_in) for k in ks]
passed = {w[0] for w in widths if min(f[0] for f in factor_sizes) < w[0] <= max(f[0] for f in factor_sizes)} | \
         {w[1] for w in widths if min(f[1] for f in factor_sizes) < w[1] <= max(f[1] for f in factor_sizes)}
assert len(passed) >= 2, (passed, factor_sizes)  # the factors pass several layer widths over ks
assert share_init > 0.5 > share_trained, (share_init, share_trained)  # concentrated only before training
assert rms_init_sparse < 0.8 * rms_init_gauss, (rms_init_sparse, rms_init_gauss)  # smaller when concentrated
assert np.mean(err_init["sparse"]) <= 1.5 * np.mean(err_init["gaussian"]), err_init
assert min(err_init["very sparse"]) > 2 * max(err_init["sparse"]), err_init
assert not violations, violations[:5]
assert max(rank_shift[kd] for kd in kinds if kd != "kronecker") < 0.1 * N, rank_shift  # r̃(τ) close to r(τ)
assert eps_table["gaussian"][max(ks)] < eps_table["gaussian"][min(ks)] / 3
exact_acc, exact_fid = table[0][2], table[0][3]
for name, w, acc, fid, lerr in table[1:]:  # every projector, the Kronecker sketch included
    assert abs(acc - exact_acc) <= 0.05 and abs(fid - exact_fid) <= 0.05, (name, acc, fid)
assert (br[:, 2] <= br[:, 3] * (1 + 1e-9)).all()  # App B.2 bound
assert all(np.diff(med_change) < 0) and all(np.diff(med_bound) < 0), (med_change, med_bound)  # both shrink
t_norm = float(t_tr.norm(dim=0).median())
assert all(m < 0.01 * t_norm for k, m in zip(ks, med_change) if k > N), med_change  # small once k > N
assert min(ks) < N and med_change[0] > 0.1 * t_norm, med_change  # a rank-k kernel below N moves the fit
assert err_rec < 1.5 * target_error, (err_rec, k_rec)  # the pilot's recommendation carries over
for kind in ("gaussian", "sparse", "srht"):
    assert -0.7 < curve.fit(kind)[1] < -0.3, (kind, curve.fit(kind))
assert P > k_rec["sparse"] and k_rec["kronecker"] > 4 * k_rec["sparse"], k_rec
assert kron_vs_gauss.min() > 1.2, kron_vs_gauss  # less accurate than the Gaussian at every measured k
assert slopes["kronecker"] < curve.fit("kronecker")[1], (slopes["kronecker"], curve.fit("kronecker"))  # fits differ
