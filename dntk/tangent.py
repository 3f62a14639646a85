"""Per-class logit gradients ("tangent features") of a network, exact or JL-projected.

Appendix §0: ``g_c(x) = ∇_θ f_c(x; θ) ∈ R^P`` over the *trainable* parameters, BatchNorm in eval mode
(running statistics are buffers). ``class_gradients`` stacks them into ``(N, C, P)``, or projects them
to ``(N, C, k)`` with a projector from :mod:`dntk.projection` (appendix §4.2).

Two methods compute the same numbers:

* ``method="exact"`` — the ``torch.func`` recipe ``vmap(jacrev(f))`` chunked over samples (the reference).
* ``method="fast"`` (default) — one forward pass that captures every parameterised layer's input, one
  batched backward for all ``C`` classes (one-hot cotangents, ``is_grads_batched``) that captures the
  layers' output gradients, then per-sample parameter gradients from those two factors:
  ``Linear``/``Conv2d`` weights as ``Σ_t δ_t a_tᵀ`` (``unfold`` for convolutions), biases as ``Σ_t δ_t``,
  BatchNorm/LayerNorm/GroupNorm affine parameters from the normalised input, ``nn.MultiheadAttention``
  (hence ``TransformerEncoderLayer`` and ViTs) through its packed in-projection and its out-projection,
  each ``Σ_t δ_t x_tᵀ``; any other layer that owns parameters falls back to ``torch.func`` on that layer
  alone. The factors go to the projector's :class:`~dntk.projection.Accumulator` (layer by layer), so
  the ``(N, C, P)`` tensor is never formed when a projector is given.

The parameter order of the flat ``P`` axis is ``model.named_parameters()`` order (trainable only), each
tensor flattened row-major — the same for both methods and for :func:`param_layout`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    BatchedInputs,
    call_model,
    check_model,
    check_model_finite,
    eval_mode,
    model_dtype,
    on_device,
    split_parameters,
    trainable_parameters,
)

log = logging.getLogger("dntk")

__all__ = ["class_gradients", "logits", "num_params", "param_layout", "ParamBlock", "DEFAULT_MAX_BYTES"]

#: Default working-memory budget (bytes) for one batch of the fast path; sets the default batch size.
DEFAULT_MAX_BYTES = 1 << 30


# ----------------------------------------------------------------------------------------------------
# small public helpers
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamBlock:
    """One trainable parameter tensor on the flat ``P`` axis: ``name``, ``shape``, ``offset``, ``size``."""

    name: str
    shape: tuple
    offset: int
    size: int


def num_params(model: nn.Module) -> int:
    """Number ``P`` of trainable parameters (the width of unprojected tangent features)."""
    check_model(model)
    return sum(p.numel() for _, p in trainable_parameters(model))


def param_layout(model: nn.Module) -> list[ParamBlock]:
    """The flat parameter axis as a list of :class:`ParamBlock` (trainable parameters, module order)."""
    check_model(model)
    blocks, off = [], 0
    for n, p in trainable_parameters(model):
        blocks.append(ParamBlock(n, tuple(p.shape), off, p.numel()))
        off += p.numel()
    return blocks


def _progress(total, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# ----------------------------------------------------------------------------------------------------
# logits
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def logits(model: nn.Module, inputs, batch_size: int = 256, device=None) -> torch.Tensor:
    """Network logits ``f(x; θ)``, shape ``(N, C)``, model in eval mode, no gradients (appendix §0).

    Raises ``ValueError`` for a model with NaN/inf weights or inputs, or an unavailable ``device``.
    """
    check_model(model)
    _check_batch_size(batch_size)
    check_model_finite(model)
    with eval_mode(model), on_device(model, device) as dev:
        src = BatchedInputs(inputs, model_dtype(model))
        outs = []
        for s in range(0, src.n, batch_size):
            out = _call(model, src.get(s, min(src.n, s + batch_size), dev))
            outs.append(out.detach().cpu())
        if not outs:
            raise ValueError("inputs is empty (N = 0).")
        return torch.cat(outs)


_call = call_model


def _check_batch_size(b):
    if b is not None and (not isinstance(b, (int, np.integer)) or b < 1):
        raise ValueError(f"batch_size must be a positive integer, got {b!r}.")


# ----------------------------------------------------------------------------------------------------
# class_gradients
# ----------------------------------------------------------------------------------------------------
def class_gradients(
    model: nn.Module,
    inputs,
    projector=None,
    batch_size: int | None = None,
    device=None,
    out=None,
    progress: bool = False,
    method: str = "fast",
    max_bytes: int | None = None,
):
    """Per-class logit gradients ``G[i, c] = ∇_θ f_c(x_i)`` (appendix §0), optionally JL-projected (appendix §4.2).

    Parameters
    ----------
    model : nn.Module returning logits ``(B, C)``; put in eval mode for the call (restored afterwards);
        only parameters with ``requires_grad`` count.
    inputs : tensor / ndarray ``(N, ...)`` or a map-style Dataset of ``(x, y)``.
    projector : a projector from :func:`dntk.projection.make`, or ``None`` for the unprojected ``(N, C, P)``.
    batch_size : samples per batch; default from ``max_bytes``. Results do not depend on it.
    device : where to compute (the model is moved there for the call and moved back); default: the model's.
        A device that is not available (``"cuda"`` without CUDA) raises ``ValueError``.
    out : optional preallocated ``(N, C, w)`` array (torch tensor or NumPy array / ``np.memmap``, float32 or
        float16); filled and returned. Checked before any work.
    method : ``"fast"`` (layer-structured, default) or ``"exact"`` (``torch.func`` ``vmap(jacrev)``).
    max_bytes : working-memory budget per batch (default :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    ``(N, C, P)`` (no projector) or ``(N, C, k)`` float32 tensor (the model's dtype if it is float64),
    or ``out`` when given.

    Raises
    ------
    ValueError
        For a model with NaN/inf parameters or buffers, inputs with NaN/inf, a layer the fast path cannot
        take (the message says to use ``method="exact"``), or an unavailable ``device``.
    """
    check_model(model)
    _check_batch_size(batch_size)
    if method not in ("fast", "exact"):
        raise ValueError(f"method must be 'fast' or 'exact', got {method!r}.")
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive.")
    layout = param_layout(model)
    P = sum(b.size for b in layout)
    if P == 0:
        raise ValueError("the model has no trainable parameters (requires_grad=False everywhere).")
    check_model_finite(model)
    dtype = model_dtype(model)
    src = BatchedInputs(inputs, dtype)
    if src.n == 0:
        raise ValueError("inputs is empty (N = 0).")

    if projector is not None:
        from .projection import Projector

        if not isinstance(projector, Projector):
            raise TypeError(
                f"projector must come from dntk.projection.make(...), got {type(projector).__name__}."
            )
        projector.bind(layout)
        width = projector.dim
    else:
        width = P

    with eval_mode(model), on_device(model, device) as dev:
        x0 = src.get(0, 1, dev)
        with torch.no_grad():
            C = _call(model, x0).shape[1]
        result, out_np = _prepare_out(out, (src.n, C, width), dtype)
        if method == "exact":
            engine = _ExactEngine(model, layout, dev)
        else:
            engine = _FastEngine(model, layout, dev, C)
        bs = batch_size or engine.default_batch_size(x0, C, width, projector, max_bytes)
        if projector is not None:
            projector.prepare(dev)
        bar = _progress(src.n, progress, "class gradients")
        try:
            for s in range(0, src.n, bs):
                e = min(src.n, s + bs)
                feats = engine.batch(src.get(s, e, dev), C, projector, max_bytes)
                _write(result, out_np, s, e, feats)
                if bar is not None:
                    bar.update(e - s)
        finally:
            if bar is not None:
                bar.close()
            if projector is not None:
                projector.release()
    return out_np if out_np is not None else result


def _prepare_out(out, shape, dtype):
    if out is None:
        return torch.empty(shape, dtype=dtype if dtype == torch.float64 else torch.float32), None
    if isinstance(out, torch.Tensor):
        if tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but the features have shape {shape}.")
        if not out.is_floating_point():
            raise TypeError(f"out must be a floating-point array, got dtype {out.dtype}.")
        return out, None
    if isinstance(out, np.ndarray):
        if tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but the features have shape {shape}.")
        if out.dtype.kind != "f":
            raise TypeError(f"out must be a floating-point array, got dtype {out.dtype}.")
        if not out.flags.writeable:
            raise ValueError("out is read-only; open the memmap with mode 'r+' or 'w+'.")
        return None, out
    raise TypeError(f"out must be a torch.Tensor or a numpy array/memmap, got {type(out).__name__}.")


def _write(result, out_np, s, e, feats):
    if out_np is not None:
        out_np[s:e] = feats.detach().cpu().numpy().astype(out_np.dtype, copy=False)
    else:
        result[s:e] = feats.to(result.device, result.dtype)


# ----------------------------------------------------------------------------------------------------
# exact engine: torch.func vmap(jacrev)
# ----------------------------------------------------------------------------------------------------
class _ExactEngine:
    """Reference recipe: ``vmap(jacrev(f))`` over a chunk of samples, flattened to ``(B, C, P)``."""

    def __init__(self, model, layout, dev):
        self.model = model
        self.layout = layout
        self.names = [b.name for b in layout]
        self.params, self.rest = split_parameters(model)

    def default_batch_size(self, x0, C, width, projector, max_bytes):
        P = sum(b.size for b in self.layout)
        per_sample = 3 * C * P * x0.element_size()
        return int(max(1, min(256, max_bytes // max(per_sample, 1))))

    def jacobian(self, x):
        from torch.func import functional_call, jacrev, vmap

        model, rest = self.model, self.rest

        def f(p, xi):
            return functional_call(model, {**p, **rest}, (xi.unsqueeze(0),)).squeeze(0)

        jac = vmap(jacrev(f), in_dims=(None, 0))(self.params, x)
        B = x.shape[0]
        return torch.cat([jac[n].reshape(B, jac[n].shape[1], -1) for n in self.names], dim=2)

    def batch(self, x, C, projector, max_bytes):
        J = self.jacobian(x)  # (B, C, P)
        if projector is None:
            return J
        B = J.shape[0]
        return projector.project(J.reshape(B * C, -1)).reshape(B, C, -1)


# ----------------------------------------------------------------------------------------------------
# fast engine: captured activations × output gradients, layer by layer
# ----------------------------------------------------------------------------------------------------
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _unit_kind(m: nn.Module) -> str:
    """How the per-sample gradients of ``m``'s own parameters are formed."""
    t = type(m)
    if isinstance(m, nn.Linear) and t.forward is nn.Linear.forward:
        return "linear"
    if isinstance(m, nn.Conv2d) and t.forward is nn.Conv2d.forward and m.groups == 1 and m.padding_mode == "zeros":
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return "conv2d"
            if all(d * (k - 1) % 2 == 0 for d, k in zip(m.dilation, m.kernel_size)):
                return "conv2d"  # symmetric 'same' padding
            return "func"
        return "conv2d"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and t.forward in (
        nn.BatchNorm1d.forward, nn.BatchNorm2d.forward, nn.BatchNorm3d.forward, nn.modules.batchnorm._BatchNorm.forward
    ):
        return "bn" if m.track_running_stats and m.running_mean is not None else "func"
    if isinstance(m, nn.LayerNorm) and t.forward is nn.LayerNorm.forward:
        return "ln"
    if isinstance(m, nn.GroupNorm) and t.forward is nn.GroupNorm.forward:
        return "gn"
    if isinstance(m, nn.MultiheadAttention) and t.forward is nn.MultiheadAttention.forward:
        return "mha"
    return "func"


def _conv_padding(m):
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return tuple(m.padding)


class _Unit:
    def __init__(self, name, module, kind, roles, params):
        self.name, self.module, self.kind = name, module, kind
        self.roles = roles  # {"weight": block index, "bias": block index, or parameter name for func/mha}
        self.params = params  # {role name: parameter}
        self.verified = False  # mha: the decomposed forward was checked against the module's own once


class _Record:
    """One call of a unit during the forward pass: its (cloned) input factors and its output probes."""

    __slots__ = ("unit", "x", "args", "kwargs", "probes", "extra")


def _mha_supported(m: nn.MultiheadAttention) -> str | None:
    """Why the decomposed attention cannot reproduce ``m`` (``None`` if it can)."""
    if m.bias_k is not None or m.bias_v is not None:
        return "add_bias_kv=True"
    if m.add_zero_attn:
        return "add_zero_attn=True"
    return None


def _additive_mask(mask, dtype, name):
    """An attention mask as an additive float mask (``True`` in a boolean mask means *masked*)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise ValueError(f"{name} must be a boolean or floating-point mask, got dtype {mask.dtype}.")
    return mask.to(dtype)


class _FastEngine:
    def __init__(self, model, layout, dev, C):
        self.model = model
        self.layout = layout
        index = {name: i for i, name in enumerate(b.name for b in layout)}
        pid = {id(p): index[n] for n, p in model.named_parameters() if n in index}
        absorbed = set()  # children whose parameters a parent unit handles (an attention's out_proj)
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention) and _unit_kind(m) == "mha":
                why = _mha_supported(m)
                if why is not None:
                    raise ValueError(
                        f"layer {name!r} (MultiheadAttention with {why}) is not supported by the fast path; "
                        "use method='exact'."
                    )
                absorbed.add(id(m.out_proj))
        self.units = []
        for name, m in model.named_modules():
            if id(m) in absorbed:
                continue
            own = [(pn, p) for pn, p in m.named_parameters(recurse=False) if p.requires_grad]
            kind = _unit_kind(m)
            if kind == "mha":
                own += [(f"out_proj.{pn}", p) for pn, p in m.out_proj.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            roles = {pn: pid[id(p)] for pn, p in own}
            if kind not in ("func", "mha") and not set(roles) <= {"weight", "bias"}:
                kind = "func"
            self.units.append(_Unit(name, m, kind, roles, dict(own)))
        self.records: list[_Record] = []
        self._batched_ok = True
        self._checked = False
        self._batch_axes = None  # per record: the axis of the batch in its input and output

    def _find_batch_axes(self, x):
        """The batch axis of every recorded layer output, found by comparing a forward pass on one sample
        with one on that sample twice (sequence-first layers, e.g. ``(T, B, d)``, have it at axis 1)."""
        shapes = []
        for xx in (x[:1], torch.cat([x[:1], x[:1]])):
            self._run_forward(xx, grad=True)  # with gradients: the same code path as the real pass
            shapes.append([tuple(r.probes[0].shape) for r in self.records])
        self.records = []
        if len(shapes[0]) != len(shapes[1]):  # data-dependent control flow: assume batch-first
            return None
        axes = []
        for s1, s2 in zip(*shapes):
            diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
            axes.append(diff[0] if len(s1) == len(s2) and len(diff) == 1 and s1[diff[0]] == 1 else 0)
        return axes

    # ---------------------------------------------------------------- capture
    def _hook(self, unit):
        def hook(module, args, kwargs, output):
            if unit.kind == "mha":  # recorded by the decomposed forward itself
                return None
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"layer {unit.name!r} ({type(module).__name__}) owns trainable parameters but returns "
                    f"{type(output).__name__}, not a tensor; the fast path cannot take its gradients — use method='exact'."
                )
            r = _Record()
            r.unit, r.extra = unit, None
            x = args[0] if args else None
            if unit.kind == "func":
                if not all(not isinstance(a, torch.Tensor) or a.shape[:1] == output.shape[:1] for a in args):
                    raise ValueError(
                        f"layer {unit.name!r} ({type(module).__name__}) has tensor arguments without the batch axis "
                        "first; use method='exact'."
                    )
                r.args = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
                r.kwargs = dict(kwargs)
                r.x = None
            elif unit.kind == "bn":
                r.x = self._bn_normalised(module, x.detach())
            elif unit.kind == "ln":
                r.x = F.layer_norm(x.detach(), module.normalized_shape, None, None, module.eps)
            elif unit.kind == "gn":
                r.x = F.group_norm(x.detach(), module.num_groups, None, None, module.eps)
            else:
                r.x = x.detach().clone()
            probe = torch.zeros_like(output, requires_grad=True)
            r.probes = (probe,)
            self.records.append(r)
            return output + probe

        return hook

    def _mha_forward(self, unit):
        """``nn.MultiheadAttention.forward`` decomposed into its four projections, each with an output probe.

        ``q = x_q W_qᵀ + b_q`` (likewise ``k``, ``v``), ``o = softmax(q kᵀ/√d_h + mask) v`` per head,
        ``out = o W_oᵀ + b_o``: the weight gradients are ``Σ_t δ_t x_tᵀ`` like any linear layer.
        """
        m = unit.module

        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            if query.dim() != 3:
                raise ValueError(f"layer {unit.name!r}: unbatched attention inputs are not supported by the fast "
                                 "path; add a batch axis or use method='exact'.")
            same = query is key and key is value
            if not m.batch_first:
                query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            E, H = m.embed_dim, m.num_heads
            hd = E // H
            if m._qkv_same_embed_dim:
                Wq, Wk, Wv = m.in_proj_weight.chunk(3)
            else:
                Wq, Wk, Wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            bq, bk, bv = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
            q, k, v = F.linear(query, Wq, bq), F.linear(key, Wk, bk), F.linear(value, Wv, bv)
            pq, pk, pv = (torch.zeros_like(t, requires_grad=True) for t in (q, k, v))
            q, k, v = q + pq, k + pk, v + pv
            N, L, S = q.shape[0], q.shape[1], k.shape[1]
            qh = q.reshape(N, L, H, hd).transpose(1, 2)
            kh = k.reshape(N, S, H, hd).transpose(1, 2)
            vh = v.reshape(N, S, H, hd).transpose(1, 2)
            scores = (qh @ kh.transpose(-2, -1)) * (hd**-0.5)  # (N, H, L, S)
            am = _additive_mask(attn_mask, scores.dtype, "attn_mask")
            if am is not None:
                scores = scores + (am.reshape(N, H, L, S) if am.dim() == 3 else am)
            kpm = _additive_mask(key_padding_mask, scores.dtype, "key_padding_mask")
            if kpm is not None:
                scores = scores + kpm.reshape(N, 1, 1, S)
            attn = torch.softmax(scores, dim=-1)
            o = (attn @ vh).transpose(1, 2).reshape(N, L, E)
            out = F.linear(o, m.out_proj.weight, m.out_proj.bias)
            po = torch.zeros_like(out, requires_grad=True)
            out = out + po
            r = _Record()
            r.unit, r.x, r.args, r.kwargs = unit, None, (), {}
            r.probes = (pq, pk, pv, po)
            r.extra = {"q": query.detach(), "k": key.detach(), "v": value.detach(), "o": o.detach(), "same": same}
            self.records.append(r)
            if not unit.verified:
                with torch.no_grad():
                    args = (query, key, value) if m.batch_first else tuple(t.transpose(0, 1) for t in (query, key, value))
                    ref = type(m).forward(m, *args, key_padding_mask=key_padding_mask, need_weights=False,
                                          attn_mask=attn_mask, is_causal=is_causal)[0]
                    mine = out if m.batch_first else out.transpose(0, 1)
                    if not torch.allclose(mine, ref, rtol=1e-4, atol=1e-5 * (1 + float(ref.abs().max()))):
                        raise ValueError(
                            f"layer {unit.name!r} (MultiheadAttention): the decomposed attention of the fast path "
                            "does not reproduce this layer's output (an unsupported option?); use method='exact'."
                        )
                unit.verified = True
            out_ret = out if m.batch_first else out.transpose(0, 1)
            weights = None
            if need_weights:
                weights = attn.mean(dim=1) if average_attn_weights else attn
            return out_ret, weights

        return forward

    @staticmethod
    def _bn_normalised(m, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)

    def _run_forward(self, x, grad: bool):
        """Forward pass with the capture hooks (and decomposed attention) installed; records in ``self.records``."""
        self.records = []
        handles = [u.module.register_forward_hook(self._hook(u), with_kwargs=True) for u in self.units]
        patched = [u.module for u in self.units if u.kind == "mha"]
        for u in self.units:
            if u.kind == "mha":
                u.module.forward = self._mha_forward(u)
        try:
            with torch.enable_grad() if grad else torch.no_grad():
                return _call(self.model, x)
        finally:
            for h in handles:
                h.remove()
            for m in patched:
                del m.forward

    def _forward_backward(self, x, C):
        if self._batch_axes is None:
            self._batch_axes = self._find_batch_axes(x) or []
        out = self._run_forward(x, grad=True)
        axes = self._batch_axes if len(self._batch_axes) == len(self.records) else [0] * len(self.records)
        for r, a in zip(self.records, axes):
            if a == 0:
                continue
            if r.unit.kind not in ("linear", "ln"):
                raise ValueError(
                    f"layer {r.unit.name!r} ({type(r.unit.module).__name__}) is called with the batch on axis {a}, "
                    "not first; the fast path supports that for Linear and LayerNorm only — use method='exact'."
                )
            r.x = r.x.movedim(a, 0)
        if not self._checked:
            self._check_coverage(out)
        B = x.shape[0]
        probes = [p for r in self.records for p in r.probes]
        grads = None
        if self._batched_ok:
            V = torch.eye(C, dtype=out.dtype, device=out.device).unsqueeze(1).expand(C, B, C)
            try:
                grads = torch.autograd.grad(out, probes, grad_outputs=V, is_grads_batched=True,
                                            allow_unused=True, retain_graph=True)
            except RuntimeError as e:  # an op without a vmap rule for its backward
                log.info("batched backward unavailable (%s); falling back to one backward per class", e)
                self._batched_ok = False
        if grads is None:
            per_class = []
            for c in range(C):
                v = torch.zeros_like(out)
                v[:, c] = 1
                per_class.append(torch.autograd.grad(out, probes, grad_outputs=v, allow_unused=True,
                                                     retain_graph=c < C - 1))
            grads = [None if g[0] is None else torch.stack(g) for g in zip(*per_class)]
        # (C, ..., B at axis a + 1, ...) -> (B, C, ...), regrouped per record
        grouped, i = [], 0
        for r, a in zip(self.records, axes):
            gs = grads[i : i + len(r.probes)]
            grouped.append([None if g is None else g.movedim(a + 1, 0) for g in gs])
            i += len(r.probes)
        return grouped

    def _check_coverage(self, out):
        """Every parameter-owning unit must have been called, or its parameters must not reach the logits."""
        fired = {id(r.unit) for r in self.records}
        missing = [u for u in self.units if id(u) not in fired]
        if missing:
            params = [p for u in missing for p in u.params.values()]
            gs = torch.autograd.grad(out.sum(), params, allow_unused=True, retain_graph=True)
            if any(g is not None for g in gs):
                names = ", ".join(repr(u.name) for u in missing)
                raise ValueError(
                    f"the parameters of layer(s) {names} reach the logits without their module's forward being "
                    "called (they are used by a parent module directly); the fast path cannot see them — use "
                    "method='exact'."
                )
        self._checked = True

    # ---------------------------------------------------------------- batch size
    def default_batch_size(self, x0, C, width, projector, max_bytes):
        self._run_forward(x0, grad=True)
        es = x0.element_size()
        per = 0
        for r in self.records:
            if r.x is not None:
                xin = r.x.numel()
            elif r.extra is not None:
                xin = sum(t.numel() for t in r.extra.values() if isinstance(t, torch.Tensor))
            else:
                xin = sum(a.numel() for a in r.args if isinstance(a, torch.Tensor))
            per += (xin + (C + 2) * sum(p.numel() for p in r.probes)) * es
            if r.unit.kind == "conv2d":
                m = r.unit.module
                per += r.x[0].numel() * int(np.prod(m.kernel_size)) * es  # transient unfold
        self.records = []
        P = sum(b.size for b in self.layout)
        per += projector.bytes_per_sample(C) if projector is not None else 4 * C * P * es
        return int(max(1, min(256, max_bytes // max(per, 1))))

    # ---------------------------------------------------------------- per batch
    def batch(self, x, C, projector, max_bytes):
        grads = self._forward_backward(x, C)
        B = x.shape[0]
        items = [(r, g) for r, g in zip(self.records, grads) if any(t is not None for t in g)]
        self.records = []
        if projector is None:
            sink = _FlatAccumulator(self.layout, B, C, x.dtype, x.device)
            self._emit(items, sink, slice(0, B))
            return sink.result()
        step = projector.samples_per_accumulator(C, max_bytes) or B
        if step >= B:
            acc = projector.accumulator(B, C, x.device, max_bytes)
            self._emit(items, acc, slice(0, B))
            return acc.result()
        res = torch.empty(B, C, projector.dim, device=x.device)
        for s in range(0, B, step):
            e = min(B, s + step)
            acc = projector.accumulator(e - s, C, x.device, max_bytes)
            self._emit(items, acc, slice(s, e))
            res[s:e] = acc.result()
        return res

    def _emit(self, items, sink, sl):
        """Turn each record's (input factor, output gradient) into per-parameter contributions for ``sink``."""
        dt = sink.dtype
        for r, gs in items:
            u = r.unit
            if u.kind == "mha":
                self._emit_mha(r, gs, sink, sl)
                continue
            d_native = gs[0]
            d = d_native[sl].to(dt)  # (b, C, *out)
            b, C = d.shape[0], d.shape[1]
            if u.kind in ("linear", "conv2d"):
                if u.kind == "linear":
                    d_out = d.shape[-1]
                    D = d.reshape(b, C, -1, d_out).transpose(2, 3)  # (b, C, d_out, T)
                    src = _LinearInput(r.x[sl].to(dt))
                else:
                    d_out = d.shape[2]
                    D = d.reshape(b, C, d_out, -1)
                    src = _ConvInput(r.x[sl].to(dt), u.module)
                if "weight" in u.roles:
                    sink.outer(u.roles["weight"], D, src)
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], D.sum(3))
            elif u.kind in ("bn", "gn"):
                ch = d.shape[2]
                xh = r.x[sl].to(dt).reshape(b, 1, ch, -1)
                dd = d.reshape(b, C, ch, -1)
                if "weight" in u.roles:
                    sink.dense(u.roles["weight"], (dd * xh).sum(3))
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], dd.sum(3))
            elif u.kind == "ln":
                nshape = tuple(u.module.normalized_shape)
                nn_ = int(np.prod(nshape))
                xh = r.x[sl].to(dt).reshape(b, 1, -1, nn_)
                dd = d.reshape(b, C, -1, nn_)
                if "weight" in u.roles:
                    sink.dense(u.roles["weight"], (dd * xh).sum(2))
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], dd.sum(2))
            else:
                for pname, G in self._func_grads(r, d_native[sl], sl).items():
                    sink.dense(u.roles[pname], G.reshape(b, C, -1).to(dt))

    @staticmethod
    def _emit_mha(r, gs, sink, sl):
        """Attention: in-projection weights ``Σ_t δq_t x_tᵀ`` (``k``, ``v`` likewise; packed as one ``3E×E``
        block) and the out-projection ``Σ_t δ_t o_tᵀ``, each an outer product of captured factors."""
        u, ex, dt = r.unit, r.extra, sink.dtype
        dq, dk, dv, do = (
            None if g is None else g[sl].to(dt) for g in gs
        )  # (b, C, L|S, E)
        q_in, k_in, v_in, o = (ex[n][sl].to(dt) for n in ("q", "k", "v", "o"))
        ref = next(g for g in (dq, dk, dv, do) if g is not None)
        b, C = ref.shape[:2]

        def zeros_like_out(x, width):  # a missing (unused) gradient is zero
            return torch.zeros(b, C, x.shape[1], width, dtype=dt, device=ref.device)

        E = u.module.embed_dim
        dq = zeros_like_out(q_in, E) if dq is None else dq
        dk = zeros_like_out(k_in, E) if dk is None else dk
        dv = zeros_like_out(v_in, E) if dv is None else dv
        if "out_proj.weight" in u.roles or "out_proj.bias" in u.roles:
            do = zeros_like_out(o, E) if do is None else do
            Do = do.transpose(2, 3)  # (b, C, E, L)
            if "out_proj.weight" in u.roles:
                sink.outer(u.roles["out_proj.weight"], Do, _LinearInput(o))
            if "out_proj.bias" in u.roles:
                sink.dense(u.roles["out_proj.bias"], Do.sum(3))
        if "in_proj_weight" in u.roles:
            if ex["same"]:  # self-attention: one input, the three row blocks share it
                D = torch.cat([dq, dk, dv], dim=3).transpose(2, 3)  # (b, C, 3E, L)
                sink.outer(u.roles["in_proj_weight"], D, _LinearInput(q_in))
            else:  # distinct inputs: block-diagonal factors over the concatenated positions
                L, S = q_in.shape[1], k_in.shape[1]
                D = torch.zeros(b, C, 3 * E, L + 2 * S, dtype=dt, device=ref.device)
                D[:, :, :E, :L] = dq.transpose(2, 3)
                D[:, :, E : 2 * E, L : L + S] = dk.transpose(2, 3)
                D[:, :, 2 * E :, L + S :] = dv.transpose(2, 3)
                sink.outer(u.roles["in_proj_weight"], D, _LinearInput(torch.cat([q_in, k_in, v_in], dim=1)))
        for name, d, x in (("q_proj_weight", dq, q_in), ("k_proj_weight", dk, k_in), ("v_proj_weight", dv, v_in)):
            if name in u.roles:
                sink.outer(u.roles[name], d.transpose(2, 3), _LinearInput(x))
        if "in_proj_bias" in u.roles:
            sink.dense(u.roles["in_proj_bias"], torch.cat([dq.sum(2), dk.sum(2), dv.sum(2)], dim=2))

    @staticmethod
    def _func_grads(r, d, sl):
        """torch.func fallback for one layer: per-sample, per-class VJPs w.r.t. the layer's own parameters."""
        from torch.func import functional_call, vjp, vmap

        m = r.unit.module
        params = {pn: p.detach() for pn, p in m.named_parameters(recurse=False) if pn in r.unit.roles}
        tmask = [isinstance(a, torch.Tensor) for a in r.args]
        targs = [a[sl] for a, t in zip(r.args, tmask) if t]
        kwargs = r.kwargs

        def one(tensor_args, dd):  # one sample; dd (C, *out)
            it = iter(tensor_args)
            args = tuple(next(it).unsqueeze(0) if t else a for a, t in zip(r.args, tmask))
            _, pull = vjp(lambda p: functional_call(m, p, args, kwargs), params)
            return vmap(lambda v: pull(v.unsqueeze(0))[0])(dd)

        try:
            return vmap(one)(targs, d)
        except Exception as e:
            raise ValueError(
                f"layer {r.unit.name!r} ({type(m).__name__}) is not supported by the structured path and its "
                f"torch.func fallback failed ({e}); use method='exact'."
            ) from e


class _LinearInput:
    """Input factor of a Linear layer: ``a`` ``(b, T, d_in)``."""

    def __init__(self, x):
        self.a = x.reshape(x.shape[0], -1, x.shape[-1])
        self.T = self.a.shape[1]
        self.d_in = self.a.shape[2]

    def unfolded(self):  # (b, d_in, T)
        return self.a.transpose(1, 2)

    def project_in(self, Ri):  # (b, k_in, T)
        return (self.a @ Ri).transpose(1, 2)


class _ConvInput:
    """Input factor of a Conv2d layer: the input image batch and the layer geometry."""

    def __init__(self, x, m):
        self.x, self.m = x, m
        self.pad = _conv_padding(m)
        H, W = x.shape[-2:]
        kh, kw = m.kernel_size
        Ho = (H + 2 * self.pad[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
        Wo = (W + 2 * self.pad[1] - m.dilation[1] * (kw - 1) - 1) // m.stride[1] + 1
        self.T = Ho * Wo
        self.d_in = x.shape[1] * kh * kw

    def unfolded(self):  # (b, d_in·kh·kw, T)
        m = self.m
        return F.unfold(self.x, m.kernel_size, dilation=m.dilation, padding=self.pad, stride=m.stride)

    def project_in(self, Ri):  # Ri (d_in·kh·kw, k_in) -> (b, k_in, T) as a convolution with Riᵀ as kernel
        m = self.m
        w = Ri.T.reshape(Ri.shape[1], self.x.shape[1], *m.kernel_size)
        y = F.conv2d(self.x, w, None, m.stride, self.pad, m.dilation)
        return y.reshape(y.shape[0], y.shape[1], -1)


class _FlatAccumulator:
    """Unprojected: writes per-sample gradients into ``(b, C, P)`` at each block's offset (the accumulator
    protocol of :class:`dntk.projection.Accumulator` with ``R = I``)."""

    def __init__(self, layout, b, C, dtype, device):
        self.layout = layout
        self.dtype = dtype
        self.buf = torch.zeros(b, C, sum(x.size for x in layout), dtype=dtype, device=device)

    def dense(self, bi, G):
        blk = self.layout[bi]
        self.buf[:, :, blk.offset : blk.offset + blk.size] += G.reshape(G.shape[0], G.shape[1], -1)

    def outer(self, bi, D, src):
        b, C, d_out, T = D.shape
        W = torch.bmm(D.reshape(b, C * d_out, T), src.unfolded().transpose(1, 2))  # (b, C·d_out, d_in)
        self.dense(bi, W.reshape(b, C, -1))

    def result(self):
        return self.buf
