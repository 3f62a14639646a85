"""Tests of dntk.uncertainty against independent references (numpy inverses, autograd, scikit-learn)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from dntk import gradient_distillation as gd
from dntk import krr, models, projection, tangent
from dntk import uncertainty as U


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    """A tiny mlp on 3x3 inputs, a projector, features of 12 training and 5 test inputs."""
    model = models.build("mlp", 3, in_channels=1, width=6, input_shape=(1, 3, 3), seed=1)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 1, 3, 3, generator=g)
    Xt = torch.rand(5, 1, 3, 3, generator=g)
    proj = projection.make("gaussian", 16, seed=3)
    G = tangent.class_gradients(model, X, projector=proj)
    Gt = tangent.class_gradients(model, Xt, projector=proj)
    with torch.no_grad():
        T = model(X).double()
    return model, proj, U.fingerprint(model, proj), G, Gt, T


def _direct_variance(S, X, lam):
    """diag(k(X,X)) − k(X,S)(K + λI)⁻¹k(S,X) with explicit kernel matrices and a numpy inverse."""
    S, X = np.asarray(S, np.float64), np.asarray(X, np.float64)
    K = S @ S.T
    kxs = X @ S.T
    return np.einsum("ij,ij->i", X, X) - np.einsum("ij,jk,ik->i", kxs, np.linalg.inv(K + lam * np.eye(len(S))), kxs)


def _synthetic_fp(k, seed=0):
    model = models.build("mlp", 3, in_channels=1, width=4, input_shape=(1, 2, 2), seed=seed)
    return U.Fingerprint(projector=(("dim", k), ("kind", "gaussian"), ("seed", 0)),
                         model=U.fingerprint(model).model)


# ----------------------------------------------------------------------------- posterior variance
@pytest.mark.parametrize("m,k", [(7, 20), (40, 9)])   # dual (m ≤ k) and primal/Woodbury (m > k)
def test_variance_matches_direct_inverse(m, k):
    g = torch.Generator().manual_seed(m)
    C = 3
    S = torch.randn(m, C, k, generator=g, dtype=torch.float64)
    S[:, 1] *= 10.0                                  # classes of different scale
    X = torch.randn(6, C, k, generator=g, dtype=torch.float64)
    X[0] = S[0]                                      # one test point equal to a training row
    T = torch.randn(m, C, generator=g, dtype=torch.float64)
    fp = _synthetic_fp(k)
    lam = torch.tensor([0.3, 2.0, 1e-4], dtype=torch.float64)
    post = U.KernelPosterior(U.CompressedSet.from_features(S, T, fp, lam=lam))
    var = post.variance(X, fingerprint=fp)
    assert var.shape == (6, C) and var.dtype == torch.float64
    support = U.CompressedSet.from_features(S, T, fp, lam=lam)
    torch.testing.assert_close(U.KernelPosterior(support, device="cpu").variance(X, fingerprint=fp), var)
    for c in range(C):
        ref = _direct_variance(S[:, c], X[:, c], float(lam[c]))
        np.testing.assert_allclose(var[:, c].numpy(), ref, rtol=1e-7, atol=1e-9 * float(X[:, c].pow(2).sum(1).max()))
    # the mean is the KRR prediction k(x,S)(K+λI)⁻¹t
    mean = post.mean(X, fingerprint=fp)
    for c in range(C):
        Sc, Xc = S[:, c].numpy(), X[:, c].numpy()
        ref = Xc @ Sc.T @ np.linalg.solve(Sc @ Sc.T + float(lam[c]) * np.eye(m), T[:, c].numpy())
        np.testing.assert_allclose(mean[:, c].numpy(), ref, rtol=1e-7, atol=1e-8)
    # bounds: 0 ≤ σ² ≤ k(x,x), and scores
    prior = X.pow(2).sum(2)
    assert bool((var >= 0).all()) and bool((var <= prior * (1 + 1e-12)).all())
    rel = post.score(X, fingerprint=fp, kind="relative")
    np.testing.assert_allclose(rel.numpy(), (-var.sum(1) / prior.sum(1)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(post.score(X, fingerprint=fp, kind="variance").numpy(), -var.sum(1).numpy())


def test_orthogonal_gradient_has_prior_variance_and_training_row_small():
    fp = _synthetic_fp(4)
    S = torch.zeros(2, 1, 4, dtype=torch.float64)
    S[0, 0, 0], S[1, 0, 1] = 3.0, 2.0
    post = U.KernelPosterior(U.CompressedSet.from_features(S, torch.zeros(2, 1), fp, lam=1e-6))
    X = torch.zeros(2, 1, 4, dtype=torch.float64)
    X[0, 0, 2] = 5.0                                 # orthogonal to every row: σ² = k(x,x) = 25
    X[1, 0, 0] = 3.0                                 # a training row: σ² = λ·9/(9 + λ) ≈ λ
    var = post.variance(X, fingerprint=fp)[:, 0]
    assert math.isclose(float(var[0]), 25.0, rel_tol=1e-12)
    assert math.isclose(float(var[1]), 1e-6 * 9 / (9 + 1e-6), rel_tol=1e-6)


def test_algorithm1_synthetic_set_variance(tiny):
    model, proj, fp, G, Gt, T = tiny
    lam = krr.default_lam(G, 1e-2)
    res = gd.local_global(G, T, n_clusters=2, tau=0.99, gamma=0.5, budget=3, method="dense")
    syn = U.KernelPosterior(U.CompressedSet.from_synthesis(res, fp, lam=lam, name="dntk"))
    full = U.KernelPosterior(U.CompressedSet.from_features(G, T, fp, lam=lam, name="full"))
    v_syn, v_full = syn.variance(Gt, fingerprint=fp), full.variance(Gt, fingerprint=fp)
    for c in range(T.shape[1]):
        V = res[c].V.to(torch.float64)
        S = V.T @ G[:, c].double()                   # the synthetic rows written out: S = VᵀG̃_c
        np.testing.assert_allclose(v_syn[:, c].numpy(), _direct_variance(S, Gt[:, c].double(), float(lam[c])),
                                   rtol=1e-6, atol=1e-9)
    # compressing by an orthonormal V can only increase the variance (SᵀS ⪯ G̃ᵀG̃)
    assert bool((v_syn >= v_full - 1e-9 * v_full.abs().max()).all())
    # m=2 of the budget-3 result is Algorithm 1 run with budget=2 (nested budgets), and has more variance
    res2 = gd.local_global(G, T, n_clusters=2, tau=0.99, gamma=0.5, budget=2, method="dense")
    cut = U.CompressedSet.from_synthesis(res, fp, lam=lam, m=2)
    for c in range(T.shape[1]):
        torch.testing.assert_close(cut.features[c], res2[c].G_syn.double(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cut.targets[c], res2[c].t_syn.double(), rtol=1e-10, atol=1e-12)
    assert bool((U.KernelPosterior(cut).variance(Gt, fingerprint=fp) >= v_syn - 1e-9 * v_syn.max()).all())
    with pytest.raises(ValueError, match="m must be"):
        U.CompressedSet.from_synthesis(res, fp, lam=lam, m=0)


# ----------------------------------------------------------------------------- fingerprints
def test_fingerprint_mismatch_raises(tiny):
    model, proj, fp, G, Gt, T = tiny
    post = U.KernelPosterior(U.CompressedSet.from_features(G, T, fp, lam_rel=1e-2))
    post.variance(Gt, fingerprint=U.fingerprint(copy.deepcopy(model), projection.make("gaussian", 16, seed=3)))
    with pytest.raises(ValueError, match="projector seed"):
        post.variance(Gt, fingerprint=U.fingerprint(model, projection.make("gaussian", 16, seed=4)))
    with pytest.raises(ValueError, match="projector kind"):
        post.score(Gt, fingerprint=U.fingerprint(model, projection.make("rademacher", 16, seed=3)))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="model weights"):
        post.mean(Gt, fingerprint=U.fingerprint(other, proj))
    with pytest.raises(TypeError, match="Fingerprint"):
        post.variance(Gt, fingerprint="gaussian-16-3")
    with pytest.raises(ValueError, match="dim=8"):
        U.CompressedSet.from_features(G, T, U.fingerprint(model, projection.make("gaussian", 8, seed=3)))
    assert U.fingerprint(model).projector == (("dim", tangent.num_params(model)), ("kind", "none"))
    kron = U.fingerprint(model, projection.make("kronecker", 16, seed=3))
    with pytest.raises(ValueError, match="projector factors"):
        kron.require(U.fingerprint(model, projection.make("kronecker", 16, seed=3, factors="gaussian")))


def test_bad_inputs(tiny):
    model, proj, fp, G, Gt, T = tiny
    post = U.KernelPosterior(U.CompressedSet.from_features(G, T, fp, lam_rel=1e-2))
    bad = Gt.clone()
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        post.variance(bad, fingerprint=fp)
    bad[1, 0, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        post.score(bad, fingerprint=fp)
    with pytest.raises(ValueError, match="NaN/inf"):
        U.CompressedSet.from_features(bad, T[:5], fp)
    with pytest.raises(ValueError, match="width k=8"):
        post.variance(Gt[:, :, :8], fingerprint=fp)
    with pytest.raises(ValueError, match="empty"):
        post.variance(Gt[:0], fingerprint=fp)
    with pytest.raises(ValueError, match="kind"):
        post.score(Gt, fingerprint=fp, kind="entropy")
    with pytest.raises(ValueError, match="lam"):
        U.CompressedSet.from_features(G, T, fp, lam=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="targets"):
        U.CompressedSet.from_features(G, T[:, :2], fp)
    with pytest.raises(ValueError, match="out-of-distribution set has no points"):
        U.auroc(torch.ones(3), torch.ones(0))
    with pytest.raises(ValueError, match="score_in is empty"):
        U.fpr_at_tpr([], [1.0])
    with pytest.raises(ValueError, match="NaN/inf"):
        U.auroc([0.1, float("nan")], [0.3])
    with pytest.raises(ValueError, match="NaN/inf"):
        U.max_softmax(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="NaN/inf"):
        U.gradnorm(model, torch.full((2, 1, 3, 3), float("nan")))
    with pytest.raises(TypeError, match="Classifier"):
        U.gradnorm(torch.nn.Linear(9, 3), torch.rand(2, 9))
    with pytest.raises(ValueError, match="probabilities"):
        U.expected_calibration_error(torch.tensor([[0.5, 0.7]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        U.expected_calibration_error(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="temperature"):
        U.softmax(torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="tpr"):
        U.fpr_at_tpr([1.0], [0.0], tpr=1.5)


# ----------------------------------------------------------------------------- network scores
def test_msp_and_energy_hand_computed():
    z = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(U.max_softmax(z).numpy(), [0.75, 0.5], rtol=1e-12)
    np.testing.assert_allclose(U.energy(z).numpy(), [math.log(4.0), 1.0 + math.log(2.0)], rtol=1e-12)
    # T = 2: softmax(z/2) of [0, ln 3] is [1, √3]/(1 + √3); energy 2·log(1 + √3)
    np.testing.assert_allclose(U.max_softmax(z, 2.0)[0].item(), math.sqrt(3) / (1 + math.sqrt(3)), rtol=1e-12)
    np.testing.assert_allclose(U.energy(z, 2.0)[0].item(), 2 * math.log(1 + math.sqrt(3)), rtol=1e-12)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_gradnorm_matches_autograd_of_explicit_kl(tiny, T):
    model = copy.deepcopy(tiny[0]).double()
    X = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scores = U.gradnorm(model, X, temperature=T)
    C = model.num_classes
    for i in range(len(X)):
        model.zero_grad()
        p = torch.softmax(model(X[i:i + 1]) / T, dim=1)[0]
        u = torch.full((C,), 1.0 / C, dtype=torch.float64)
        kl = (u * (u.log() - p.log())).sum()         # KL(u ‖ softmax(f/T)), written out
        kl.backward()
        ref = model.head.weight.grad.abs().sum().item()
        assert math.isclose(float(scores[i]), ref, rel_tol=1e-10), (i, float(scores[i]), ref)


# ----------------------------------------------------------------------------- calibration
def test_ece_and_reliability_hand_computed():
    # 4 bins (0, .25], (.25, .5], (.5, .75], (.75, 1]; top probabilities .35, .45, .6, .9, 1.0
    probs = torch.tensor([[0.3, 0.35, 0.35], [0.45, 0.3, 0.25], [0.6, 0.4, 0.0], [0.05, 0.9, 0.05],
                          [0.0, 0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])
    # top classes: 1 (0.35), 0 (0.45), 0 (0.6), 1 (0.9), 2 (1.0) -> correct: no, yes, no, yes, yes
    r = U.reliability(probs, labels, n_bins=4)
    np.testing.assert_array_equal(r.count, [0, 2, 1, 2])
    np.testing.assert_allclose(r.confidence[1:], [(0.35 + 0.45) / 2, 0.6, 0.95])
    np.testing.assert_allclose(r.accuracy[1:], [0.5, 0.0, 1.0])
    assert math.isnan(r.accuracy[0])
    ece = 2 / 5 * abs(0.5 - 0.4) + 1 / 5 * abs(0.0 - 0.6) + 2 / 5 * abs(1.0 - 0.95)
    assert math.isclose(U.expected_calibration_error(probs, labels, n_bins=4), ece, rel_tol=1e-12)
    # a bin edge belongs to the lower bin: confidence 0.5 with 2 bins is in bin 0
    r2 = U.reliability(torch.tensor([[0.5, 0.5], [0.75, 0.25]]), torch.tensor([0, 0]), n_bins=2)
    np.testing.assert_array_equal(r2.count, [1, 1])


def test_fit_temperature_minimises_nll():
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(4000, 5, generator=g, dtype=torch.float64)
    T0 = 2.0
    y = torch.multinomial(torch.softmax(z / T0, 1), 1, generator=g)[:, 0]
    T = U.fit_temperature(z, y)
    # independent check: a dense grid of the NLL computed with torch's cross-entropy
    grid = np.exp(np.linspace(np.log(0.5), np.log(8.0), 4001))
    nll = [float(torch.nn.functional.cross_entropy(z / t, y)) for t in grid]
    t_grid = grid[int(np.argmin(nll))]
    assert abs(T - t_grid) <= 2 * (grid[1] - grid[0]) * t_grid / grid[0] + 1e-6, (T, t_grid)
    assert U.negative_log_likelihood(z, y, T) <= min(nll) + 1e-9
    assert abs(T - T0) < 0.2                         # labels drawn at T0 = 2: the fit recovers it
    # separable labels: NLL keeps falling as T -> 0, so T is clipped at the lower bound
    assert U.fit_temperature(z, z.argmax(1), bounds=(0.05, 20.0)) == 0.05


@pytest.mark.parametrize("seed", range(12))
def test_fit_temperature_matches_scipy_on_overconfident_logits(seed):
    # logits of an over- or under-confident classifier (scale and margin drawn at random); reference:
    # scipy's bounded Brent minimisation of the NLL over log T, computed with torch's cross-entropy
    from scipy.optimize import minimize_scalar

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (500,), generator=g)
    scale = 0.5 + 20 * float(torch.rand(1, generator=g))
    z = scale * torch.randn(500, 10, generator=g, dtype=torch.float64)
    z[torch.arange(500), y] += 2 * scale * float(torch.rand(1, generator=g))

    def nll(log_t):
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    ref = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded",
                          options={"xatol": 1e-10})
    T = U.fit_temperature(z, y)
    assert U.negative_log_likelihood(z, y, T) <= ref.fun + 1e-9
    assert abs(math.log(T) - ref.x) < 1e-3, (T, math.exp(ref.x))


# ----------------------------------------------------------------------------- detection metrics
def test_auroc_and_fpr_match_sklearn():
    g = np.random.default_rng(0)
    a = np.round(g.normal(1.0, 1.0, 300), 1)         # rounded: ties within and across the sets
    b = np.round(g.normal(0.0, 1.0, 200), 1)
    y = np.r_[np.ones(a.size), np.zeros(b.size)]
    s = np.r_[a, b]
    assert math.isclose(U.auroc(a, b), roc_auc_score(y, s), rel_tol=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for level in (0.95, 0.8, 0.5):
        assert math.isclose(U.fpr_at_tpr(a, b, level), fpr[np.searchsorted(tpr, level - 1e-12)], rel_tol=1e-12)
    d = U.detection_metrics(torch.tensor(a), torch.tensor(b))
    assert d["auroc"] == U.auroc(a, b) and d["fpr95"] == U.fpr_at_tpr(a, b)
    assert U.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and U.fpr_at_tpr([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert U.auroc([1.0], [1.0]) == 0.5
