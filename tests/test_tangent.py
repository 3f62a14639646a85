"""dntk.tangent: per-class logit Jacobians against independent references (autograd loops, finite differences)."""
import numpy as np
import pytest
import torch
from torch import nn

from dntk import tangent

from _nets import small_cnn


def mlp(seed=0, d_in=6, C=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, 7), nn.Tanh(), nn.Linear(7, C))


def loop_reference(model, x):
    """Plain loop: one torch.autograd.grad per sample and class (eval mode, trainable params only)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        per_class = []
        for c in range(out.shape[0]):
            g = torch.autograd.grad(out[c], params, retain_graph=True)
            per_class.append(torch.cat([t.reshape(-1) for t in g]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


CASES = {
    "mlp": (mlp, lambda g: torch.randn(5, 2, 3, generator=g)),
    "cnn": (small_cnn, lambda g: torch.rand(5, 1, 6, 6, generator=g)),
}


@pytest.mark.parametrize("method", ["exact", "fast"])
@pytest.mark.parametrize("case", list(CASES))
def test_class_gradients_equal_autograd_loop(case, method):
    build, data = CASES[case]
    model = build()
    x = data(torch.Generator().manual_seed(1))
    ref = loop_reference(model, x)
    G = tangent.class_gradients(model, x, method=method, batch_size=2)
    assert G.shape == ref.shape == (x.shape[0], ref.shape[1], tangent.num_params(model))
    assert G.dtype == torch.float32
    torch.testing.assert_close(G, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_finite_difference_float64(method):
    model = small_cnn(seed=3).double().eval()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    G = tangent.class_gradients(model, x, method=method)
    assert G.dtype == torch.float64
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    rng = np.random.default_rng(0)
    h = 1e-6
    for j in rng.choice(flat.numel(), 8, replace=False):
        fd = []
        for sgn in (1, -1):
            v = flat.clone()
            v[j] += sgn * h
            torch.nn.utils.vector_to_parameters(v, model.parameters())
            with torch.no_grad():
                fd.append(model(x))
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
        torch.testing.assert_close(G[:, :, j], (fd[0] - fd[1]) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_frozen_params_excluded_and_mode_restored(method):
    model = small_cnn()
    model[0].weight.requires_grad_(False)
    model.train()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert tangent.num_params(model) == P
    G = tangent.class_gradients(model, x, method=method)
    assert G.shape == (4, 3, P)
    assert model.training and model[1].training  # restored
    torch.testing.assert_close(G, loop_reference(model, x), rtol=1e-4, atol=1e-5)
    # the layout lists exactly the trainable tensors, contiguous from 0 to P
    lay = tangent.param_layout(model)
    assert lay[0].offset == 0 and lay[-1].offset + lay[-1].size == P
    assert "0.weight" not in [b.name for b in lay]


def test_batch_size_invariance_and_memmap_out(tmp_path):
    model = small_cnn()
    x = torch.rand(7, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    full = tangent.class_gradients(model, x, batch_size=7)
    for bs in (1, 3):
        torch.testing.assert_close(tangent.class_gradients(model, x, batch_size=bs), full, rtol=1e-5, atol=1e-6)
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float32, shape=tuple(full.shape))
    res = tangent.class_gradients(model, x.numpy().astype(np.float64), out=mm, batch_size=2)
    assert res is mm
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), full.numpy(), rtol=1e-5, atol=1e-6)


def test_logits_match_eval_forward():
    model = small_cnn().train()
    x = torch.rand(9, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    out = tangent.logits(model, x, batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))


def test_dataset_input():
    model = mlp()
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(tangent.class_gradients(model, ds, batch_size=2), tangent.class_gradients(model, x))


def test_bad_inputs():
    model = small_cnn()
    x = torch.rand(4, 1, 6, 6)
    with pytest.raises(TypeError, match="nn.Module"):
        tangent.class_gradients(lambda z: z, x)
    with pytest.raises(TypeError, match="floating-point"):
        tangent.class_gradients(model, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="could not be evaluated"):
        tangent.class_gradients(model, torch.rand(4, 3, 6, 6))  # wrong channel count
    with pytest.raises(ValueError, match="out has shape"):
        tangent.class_gradients(model, x, out=np.zeros((4, 3, 5), np.float32))
    with pytest.raises(ValueError, match="method"):
        tangent.class_gradients(model, x, method="magic")
    with pytest.raises(ValueError, match="batch_size"):
        tangent.class_gradients(model, x, batch_size=0)
    with pytest.raises(ValueError, match="NaN"):
        tangent.class_gradients(model, x * float("nan"))


@pytest.mark.parametrize("name,shape,width", [("convnet", (1, 8, 8), None), ("mlp", (1, 8, 8), None), ("resnet18", (3, 8, 8), 4)])
def test_fast_equals_exact_on_package_models(name, shape, width):
    models = pytest.importorskip("dntk.models")
    model = models.build(name, 10, in_channels=shape[0], width=width, seed=1)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    exact = tangent.class_gradients(model, x, method="exact")
    fast = tangent.class_gradients(model, x, method="fast")
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=2e-5)


class Scale(nn.Module):  # a parameterised layer the structured path does not know: torch.func fallback
    def __init__(self, d):
        super().__init__()
        self.alpha = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.alpha + self.alpha**2


class Tokens(nn.Module):  # Linear on (B, T, d) inputs, LayerNorm, GroupNorm, 'same' padding, tied weights
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding="same")
        self.gn = nn.GroupNorm(2, 4)
        self.lin = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.scale = Scale(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv(x)))  # (B, 4, H, W)
        t = h.flatten(2).transpose(1, 2)  # (B, T, 4)
        t = self.scale(self.ln(torch.tanh(self.lin(t))))
        t = self.lin(torch.tanh(t[..., :4]))  # the same Linear called twice
        return self.out(torch.tanh(t).mean(1))


def test_fast_path_structured_norms_fallback_and_reuse():
    torch.manual_seed(0)
    model = Tokens()
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.ln.bias.uniform_(-0.3, 0.3)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = loop_reference(model, x)
    torch.testing.assert_close(tangent.class_gradients(model, x, method="fast"), ref, rtol=1e-4, atol=1e-5)


class ParentUsesChildWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return x.flatten(1) @ self.lin.weight.T


def test_fast_path_refuses_parameters_used_outside_their_module():
    model = ParentUsesChildWeight()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="method='exact'"):
        tangent.class_gradients(model, x, method="fast")
    assert tangent.class_gradients(model, x, method="exact").shape == (2, 3, 15)


class TupleOut(nn.Module):  # owns parameters but returns a tuple: no structured rule and no fallback
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.ones(3))

    def forward(self, x):
        y = self.lin(x.flatten(1)) * self.gain
        return y, y


def test_fast_path_rejects_layer_without_fallback():
    inner = TupleOut()
    model = nn.Sequential(inner, Pick())
    with pytest.raises(ValueError, match="returns tuple"):
        tangent.class_gradients(model, torch.randn(2, 4), method="fast")
    assert tangent.class_gradients(model, torch.randn(2, 4), method="exact").shape == (2, 3, 18)


class Pick(nn.Module):
    def forward(self, t):
        return t[0]


# ----------------------------------------------------------------------------------------------------
# attention, transformers, other convolutions, tied/reused/frozen parameters: fast == torch.func,
# plain and projected with every kind
# ----------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Tokens -> TransformerEncoderLayer (self-attention through nn.MultiheadAttention) -> mean -> logits."""

    def __init__(self, batch_first=True, norm_first=False, C=3):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(5, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.1, activation="gelu",
                                                batch_first=batch_first, norm_first=norm_first)
        self.head = nn.Linear(8, C)

    def forward(self, x):  # x (B, T, 5)
        h = self.embed(x)
        if not self.batch_first:
            return self.head(self.layer(h.transpose(0, 1)).mean(0))
        return self.head(self.layer(h).mean(1))


class TinyViT(nn.Module):
    """Patch embedding, class token and position embedding as raw parameters, two encoder layers, head."""

    def __init__(self, C=3, d=8):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.5)
        layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, C)

    def forward(self, x):  # (B, 1, 4, 4) -> 4 patches + class token
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


class CrossAttention(nn.Module):
    """Queries attend to a different key/value sequence (kdim, vdim != embed_dim: separate projections),
    with a causal-style attention mask and a key padding mask; a second, packed attention with distinct
    query and key/value tensors."""

    def __init__(self, C=3):
        super().__init__()
        self.q = nn.Linear(5, 8)
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=4, batch_first=True)
        self.attn2 = nn.MultiheadAttention(8, 4, bias=False)
        self.head = nn.Linear(8, C)

    def forward(self, x):  # x (B, 3, 5)
        q = self.q(x)
        kv_k = torch.tanh(x[:, :, :4]).repeat(1, 2, 1)  # (B, 6, 4)
        k = torch.cat([kv_k, kv_k[:, :, :2]], dim=2)  # (B, 6, 6)
        mask = torch.triu(torch.ones(3, 6, dtype=torch.bool), diagonal=4)
        pad = torch.zeros(x.shape[0], 6, dtype=torch.bool)
        pad[:, -1] = True
        h, _ = self.attn(q, k, kv_k, attn_mask=mask, key_padding_mask=pad)
        h2, _ = self.attn2(h.transpose(0, 1), torch.tanh(h).transpose(0, 1), h.transpose(0, 1))
        return self.head(h2.transpose(0, 1).sum(1))


class Convs(nn.Module):
    """Conv1d, Conv3d, ConvTranspose2d, a grouped and a dilated Conv2d."""

    def __init__(self, C=3):
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 3, padding=1)
        self.c3 = nn.Conv3d(1, 2, 2)
        self.ct = nn.ConvTranspose2d(2, 2, 2, stride=2)
        self.grouped = nn.Conv2d(2, 4, 3, groups=2, padding=1)
        self.dilated = nn.Conv2d(4, 3, 3, dilation=2, padding=2)
        self.head = nn.Linear(3 + 2 + 3, C)

    def forward(self, x):  # x (B, 2, 4, 4)
        a = torch.relu(self.c1(x.flatten(2))).mean(2)  # (B, 3)
        b = torch.tanh(self.c3(x.unsqueeze(1))).mean((2, 3, 4))  # (B, 2)
        c = self.dilated(torch.relu(self.grouped(torch.tanh(self.ct(x))))).mean((2, 3))  # (B, 3)
        return self.head(torch.cat([a, b, c], 1))


class TiedReused(nn.Module):
    """A weight shared by two layers, a layer called twice, an in-place residual and frozen parameters."""

    def __init__(self, C=3):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight  # tied
        self.emb = nn.Embedding(7, 6)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(6, C)

    def forward(self, x):  # x (B, 6)
        h = torch.tanh(self.a(x))
        h = h + torch.tanh(self.a(h))  # reused
        h += self.frozen(h)  # in-place residual through a frozen layer
        h = torch.tanh(self.b(h)) + self.emb((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
        return self.head(h)


def _with_frozen_attention():
    torch.manual_seed(3)
    m = Encoder()
    m.layer.self_attn.in_proj_weight.requires_grad_(False)
    m.layer.linear1.requires_grad_(False)
    return m


ARCH = {
    "encoder": (lambda: (torch.manual_seed(0), Encoder())[1], (4, 3, 5)),
    "encoder-seq-first-prenorm": (lambda: (torch.manual_seed(1), Encoder(batch_first=False, norm_first=True))[1], (4, 3, 5)),
    "vit": (lambda: (torch.manual_seed(2), TinyViT())[1], (4, 1, 4, 4)),
    "cross-attention": (lambda: (torch.manual_seed(3), CrossAttention())[1], (4, 3, 5)),
    "frozen-attention": (_with_frozen_attention, (4, 3, 5)),
    "convs": (lambda: (torch.manual_seed(4), Convs())[1], (4, 2, 4, 4)),
    "tied-reused": (lambda: (torch.manual_seed(5), TiedReused())[1], (4, 6)),
}


@pytest.mark.parametrize("arch", list(ARCH))
def test_fast_path_equals_torch_func_on_attention_convs_and_shared_parameters(arch):
    build, shape = ARCH[arch]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    exact = tangent.class_gradients(model, x, method="exact")  # torch.func vmap(jacrev)
    assert exact.shape == (shape[0], 3, tangent.num_params(model))
    fast = tangent.class_gradients(model, x, method="fast", batch_size=3)
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["encoder", "vit", "cross-attention", "frozen-attention", "convs", "tied-reused"])
@pytest.mark.parametrize("kind", ["orthonormal", "gaussian", "rademacher", "sparse", "srht", "kronecker"])
def test_projected_fast_path_equals_exact_jacobian_times_R_on_these_models(arch, kind):
    from dntk import projection

    build, shape = ARCH[arch]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    proj = projection.make(kind, 16, seed=2)
    Gp = tangent.class_gradients(model, x, projector=proj, batch_size=3)
    J = tangent.class_gradients(model, x, method="exact")
    torch.testing.assert_close(Gp, J @ proj.matrix(), rtol=1e-4, atol=1e-5)


def test_attention_options_outside_the_fast_path_are_refused_clearly():
    model = nn.Sequential(Encoder())
    model[0].layer.self_attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="add_bias_kv.*method='exact'"):
        tangent.class_gradients(model, x)
    assert tangent.class_gradients(model, x, method="exact").shape[:2] == (2, 3)


# ----------------------------------------------------------------------------------------------------
# robustness
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(bad):
    model = small_cnn()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = bad
    x = torch.rand(2, 1, 6, 6)
    for call in (lambda: tangent.class_gradients(model, x), lambda: tangent.logits(model, x),
                 lambda: tangent.class_gradients(model, x, method="exact")):
        with pytest.raises(ValueError, match=r"parameter '3.weight' contains NaN or inf"):
            call()
    model = small_cnn()
    model[1].running_var[0] = float("nan")
    with pytest.raises(ValueError, match=r"buffer '1.running_var'"):
        tangent.class_gradients(model, x)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_names_the_device():
    model, x = small_cnn(), torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="'cuda'.*CUDA is not available"):
        tangent.class_gradients(model, x, device="cuda")
    with pytest.raises(ValueError, match="'cuda:0'"):
        tangent.logits(model, x, device="cuda:0")
    with pytest.raises(ValueError, match="not a valid torch device"):
        tangent.logits(model, x, device="gpu")
