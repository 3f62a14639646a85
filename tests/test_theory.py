"""Tests for dntk.theory: every identity holds to round-off and every inequality holds, on random matrices and
on gradients of a small trained network (computed here with torch.func, independently of dntk.tangent);
planted violations (wrong projector, non-orthogonal "projector", step outside S, wrong gradients) are detected."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from dntk import theory as th

C = 4


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(12, C)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = Tiny().double()
    X = torch.randn(60, 1, 6, 6, dtype=torch.float64)
    y = (X[:, 0, :3].sum((1, 2)) > 0).long() + 2 * (X[:, 0, 3:].sum((1, 2)) > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    model.eval()
    return model, X, y


def ref_class_gradients(model, X):
    """(N, C, P) with torch.func jacrev, trainable parameters in named_parameters order."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(p, x):
        return functional_call(model, (p, buffers), (x[None],))[0]

    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    return torch.cat([J[n].reshape(X.shape[0], C, -1) for n in params], 2)


def _orth(P, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(P, d, generator=g, dtype=torch.float64))[0]


def _random_G(N=30, P=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 12, generator=g, dtype=torch.float64) @ torch.randn(12, P, generator=g, dtype=torch.float64) \
        + 0.1 * torch.randn(N, P, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module", params=["random", "network"])
def features(request, net):
    """(G (N, P) one class's gradients, G_s (m, P) a 'distilled' subset's)."""
    if request.param == "random":
        G = _random_G()
        return G, G[:6] + 0.01
    model, X, _ = net
    Gc = ref_class_gradients(model, X)[:, 1]
    return Gc[10:], Gc[:10]


# ----------------------------------------------------------------------------- eq 4
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_chain_rule_on_network(net, loss):
    model, X, y = net
    Xs, ys = X[:8], y[:8]
    targets = ys if loss == "ce" else torch.nn.functional.one_hot(ys, C).double()
    G = ref_class_gradients(model, Xs)
    chk = th.chain_rule(model, Xs, targets, loss=loss, gradients=G)
    assert chk.holds(1e-10), chk
    # independent lhs: plain autograd loop over parameters
    Lfn = (lambda f, t: nn.functional.cross_entropy(f, t)) if loss == "ce" else \
          (lambda f, t: 0.5 * (f - t).pow(2).sum(-1).mean())
    ref = torch.autograd.grad(Lfn(model(Xs), targets), list(model.parameters()))
    torch.testing.assert_close(chk.lhs, torch.cat([r.flatten() for r in ref]), rtol=1e-12, atol=1e-14)
    wrong = G[:, [1, 0, 2, 3]]                                     # planted: classes swapped
    assert not th.chain_rule(model, Xs, targets, loss=loss, gradients=wrong).holds(1e-3)


def test_chain_rule_default_gradients_from_tangent(net):
    pytest.importorskip("dntk.tangent")
    model, X, y = net
    assert th.chain_rule(model, X[:5], y[:5]).holds(1e-8)


def test_loss_gradients_match_autograd_loop(net):
    model, X, y = net
    Gl = th.loss_gradients(model, X[:7], y[:7], batch_size=3)
    for i in range(7):
        ref = torch.autograd.grad(nn.functional.cross_entropy(model(X[i:i + 1]), y[i:i + 1]), list(model.parameters()))
        torch.testing.assert_close(Gl[i], torch.cat([r.flatten() for r in ref]), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Thm 3.3
def _flat_hessian(model, X, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def L(t):
        ps, off = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = t[off:off + s.numel()].reshape(s)
            off += s.numel()
        return nn.functional.cross_entropy(functional_call(model, (ps, buffers), (X,)), y)

    return torch.autograd.functional.hessian(L, theta)


def test_smoothness_matches_exact_hessian(net):
    model, X, y = net
    H = _flat_hessian(model, X, y)
    ref = torch.linalg.eigvalsh(H).abs().max().item()
    beta = th.smoothness(model, X, y, n_iter=500, tol=1e-12)
    assert beta == pytest.approx(ref, rel=1e-4)


def test_one_step_regret_random_and_planted():
    g = torch.Generator().manual_seed(3)
    P = 40
    Q = _orth(P, 7, seed=4)
    grad = torch.randn(P, generator=g, dtype=torch.float64)
    delta = Q @ torch.randn(7, generator=g, dtype=torch.float64)
    res = th.one_step_regret(grad, Q, beta=2.5, delta=delta)
    assert set(res) == {"decrease", "residual", "regret", "optimal"}
    assert all(c.holds(1e-12) for c in res.values()), res
    # the decrease equals its closed form from the explicit projector matrix too
    PiM = Q @ Q.T
    assert th.one_step_regret(grad, PiM, beta=2.5, delta=delta)["decrease"].holds(1e-12)
    assert res["decrease"].lhs.item() == pytest.approx((PiM @ grad).pow(2).sum().item() / 5.0, rel=1e-12)
    # planted: a step outside S breaks the regret identity; an oblique projector breaks eq 6
    out = delta + 0.5 * torch.randn(P, generator=g, dtype=torch.float64)
    assert not th.one_step_regret(grad, Q, beta=2.5, delta=out)["regret"].holds(1e-3)
    B = Q + 0.3 * torch.randn(P, 7, generator=g, dtype=torch.float64)
    oblique = Q @ torch.linalg.solve(B.T @ Q, B.T)                 # idempotent, not symmetric
    assert torch.allclose(oblique @ oblique, oblique, atol=1e-10)
    bad = th.one_step_regret(grad, oblique, beta=2.5)
    assert not (bad["decrease"].holds(1e-3) and bad["residual"].holds(1e-3))


def test_thm_3_3_on_network_gradients(net):
    model, X, y = net
    Xs, ys, Xo, yo = X[:5], y[:5], X[5:], y[5:]
    Gs = ref_class_gradients(model, Xs)                             # distilled set: S = row(G_s)
    Q = th.basis(Gs.reshape(-1, Gs.shape[-1]))
    beta = th.smoothness(model, Xo, yo)
    up0 = th.upper_model(model, Xo, yo, torch.zeros(Q.shape[0]), beta)
    g = up0.extra["g"]
    a = th.chain_rule(model, Xs, ys, gradients=Gs).extra["a"]
    delta = -0.05 * torch.einsum("mcp,mc->p", Gs, a)                # realised step -η G_sᵀ a ∈ S
    res = th.one_step_regret(g, Q, beta, delta=delta)
    assert all(c.holds(1e-10) for c in res.values()), res
    # the true loss obeys the upper model at Δ* and at the realised step
    for d in (res["decrease"].extra["delta_star"], delta):
        chk = th.upper_model(model, Xo, yo, d, beta)
        assert chk.holds(0.0), chk
    # planted: a far too small smoothness constant along the (positively curved) gradient direction
    assert not th.upper_model(model, Xo, yo, -0.5 * g / g.norm(), 1e-4 * beta).holds(0.0)
    # the model's parameters are restored
    assert th.upper_model(model, Xo, yo, torch.zeros_like(g), beta).lhs.item() == pytest.approx(up0.extra["L"])


# ----------------------------------------------------------------------------- Cor 3.5
def test_pca_residual_random_and_network(net):
    model, X, y = net
    for A in (_random_G(40, 30, seed=5), th.loss_gradients(model, X, y)):
        n, P = A.shape
        Sigma = A.T @ A / n
        mu = np.linalg.eigvalsh(Sigma.numpy())[::-1]
        r = 5
        Q = _orth(P, r, seed=6)
        res = th.pca_residual(A, r, proj=Q)
        np.testing.assert_allclose(res["pca_minimum"].extra["mu"].numpy()[:min(n, P)], mu[:min(n, P)],
                                   atol=1e-10 * mu[0])
        assert res["pca_minimum"].rhs.item() == pytest.approx(mu[r:].sum(), rel=1e-8)
        assert all(c.holds(1e-10) for c in res.values()), res
        assert res["optimal"].lhs.item() < res["optimal"].rhs.item()   # a random subspace is strictly worse
        # planted: a non-orthogonal "projector" Q Qᵀ with non-orthonormal Q breaks the trace identity
        bad = th.pca_residual(A, r, proj=1.7 * Q)
        assert not bad["trace"].holds(1e-3)


# ----------------------------------------------------------------------------- eqs 7–10, Prop 3.6
def test_nystrom_identity(features):
    G, Gs = features
    chk = th.nystrom(G, Gs)
    assert chk.holds(1e-7), chk
    # brute force: explicit Π_S = G_sᵀ (G_s G_sᵀ)⁺ G_s
    Pi = Gs.T @ torch.linalg.pinv(Gs @ Gs.T, hermitian=True, rtol=1e-16) @ Gs
    torch.testing.assert_close(chk.lhs, G @ Pi @ G.T, rtol=1e-6, atol=1e-8 * chk.lhs.abs().max().item())


def test_kernel_fidelity_and_planted_violations(features):
    G, Gs = features
    Q = th.basis(Gs)
    res = th.kernel_fidelity(G, Q)
    assert all(c.holds(1e-9) for c in res.values()), res
    assert res["trace"].rhs.item() > 0
    P = G.shape[1]
    g = torch.Generator().manual_seed(7)
    B = Q + 0.5 * torch.randn(P, Q.shape[1], generator=g, dtype=torch.float64)
    oblique = Q @ torch.linalg.solve(B.T @ Q, B.T)
    bad = th.kernel_fidelity(G, oblique)
    assert not all(c.holds(1e-3) for c in bad.values())
    bad2 = th.kernel_fidelity(G, 2.0 * Q @ Q.T)                     # symmetric but not idempotent
    assert not bad2["psd"].holds(1e-3)


def test_energy_gap(features):
    G, Gs = features
    Q = th.basis(Gs)
    res = th.energy_gap(G, Q)
    assert all(c.holds(1e-10) for c in res.values()), res
    s2 = np.linalg.svd(G.numpy(), compute_uv=False) ** 2
    r = Q.shape[1]
    assert res["identity"].extra["tail"] == pytest.approx(s2[r:].sum(), rel=1e-10)
    # PCA projector: no gap
    V = torch.linalg.svd(G, full_matrices=False)[2][:r].T
    assert abs(th.energy_gap(G, V)["identity"].extra["gap"]) < 1e-10 * s2.sum()
    # planted: Π = 2 Q Qᵀ is no projector -> the identity fails
    assert not th.energy_gap(G, 2 * Q @ Q.T, r=r)["identity"].holds(1e-3)


def test_principal_gradient(features):
    G, _ = features
    for i in (0, 3):
        res = th.principal_gradient(G, i=i)
        assert all(c.holds(1e-9) for c in res.values()), res
    v = torch.ones(G.shape[0], dtype=torch.float64) / G.shape[0] ** 0.5
    lam = (G.T @ v).pow(2).sum().item()
    assert not th.principal_gradient(G, v, lam)["eigen"].holds(1e-3)   # not an eigenvector


def test_bad_inputs():
    G = _random_G()
    with pytest.raises(ValueError, match="beta"):
        th.one_step_regret(torch.ones(50), _orth(50, 3, 0), beta=0.0)
    with pytest.raises(ValueError, match="rows"):
        th.kernel_fidelity(G, _orth(49, 3, 0))
    with pytest.raises(ValueError, match="NaN"):
        th.energy_gap(G * float("nan"), _orth(50, 3, 0))
    with pytest.raises(ValueError, match="r must"):
        th.pca_residual(G, 0)
    with pytest.raises(ValueError, match="unit"):
        th.principal_gradient(G, torch.ones(30, dtype=torch.float64), 1.0)
