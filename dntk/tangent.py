"""Per-class logit gradients ("tangent features") of a network, exact or JL-projected.

SPEC §0: ``g_c(x) = ∇_θ f_c(x; θ) ∈ R^P`` over the *trainable* parameters, BatchNorm in eval mode
(running statistics are buffers). ``class_gradients`` stacks them into ``(N, C, P)``, or projects them
to ``(N, C, k)`` with a projector from :mod:`dntk.projection` (SPEC §4.2).

Two methods compute the same numbers:

* ``method="exact"`` — the ``torch.func`` recipe ``vmap(jacrev(f))`` chunked over samples (the reference).
* ``method="fast"`` (default) — one forward pass that captures every parameterised layer's input, one
  batched backward for all ``C`` classes (one-hot cotangents, ``is_grads_batched``) that captures the
  layers' output gradients, then per-sample parameter gradients from those two factors:
  ``Linear``/``Conv2d`` weights as ``Σ_t δ_t a_tᵀ`` (``unfold`` for convolutions), biases as ``Σ_t δ_t``,
  BatchNorm/LayerNorm/GroupNorm affine parameters from the normalised input; any other layer that owns
  parameters falls back to ``torch.func`` on that layer alone. Projectors consume these factors directly
  (layer by layer, tile by tile), so the ``(N, C, P)`` tensor is never formed when a projector is given.

The parameter order of the flat ``P`` axis is ``model.named_parameters()`` order (trainable only), each
tensor flattened row-major — the same for both methods and for :func:`param_layout`.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def num_params(model: nn.Module) -> int:
    """Number ``P`` of trainable parameters (the width of unprojected tangent features)."""
    _check_model(model)
    return sum(p.numel() for _, p in _trainable(model))


def param_layout(model: nn.Module) -> list[ParamBlock]:
    """The flat parameter axis as a list of :class:`ParamBlock` (trainable parameters, module order)."""
    _check_model(model)
    blocks, off = [], 0
    for n, p in _trainable(model):
        blocks.append(ParamBlock(n, tuple(p.shape), off, p.numel()))
        off += p.numel()
    return blocks


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def _on_device(model: nn.Module, device):
    """Temporarily move ``model`` to ``device`` (restored afterwards)."""
    tensors = list(model.parameters()) + list(model.buffers())
    cur = tensors[0].device if tensors else torch.device("cpu")
    dev = cur if device is None else torch.device(device)
    if dev == cur:
        yield dev
        return
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(cur)


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class _Inputs:
    """Uniform batched access to a tensor, an ndarray, or a map-style Dataset of ``(x, y)`` pairs."""

    def __init__(self, inputs, dtype: torch.dtype):
        self.dataset = None
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(np.ascontiguousarray(inputs))
        if isinstance(inputs, torch.Tensor):
            if not (inputs.is_floating_point()):
                raise TypeError(
                    f"inputs must be a floating-point tensor (images as float in [0, 1]), got dtype {inputs.dtype}; "
                    "convert with x.float()."
                )
            if inputs.dim() < 2:
                raise ValueError(
                    f"inputs must be batched with shape (N, ...), got shape {tuple(inputs.shape)}; add a batch axis."
                )
            if not torch.isfinite(inputs).all():
                raise ValueError("inputs contain NaN or inf; clean the data first.")
            self.tensor = inputs
            self.n = inputs.shape[0]
        elif isinstance(inputs, torch.utils.data.Dataset) and hasattr(inputs, "__len__"):
            self.dataset = inputs
            self.tensor = None
            self.n = len(inputs)
        else:
            raise TypeError(
                "inputs must be a torch.Tensor or numpy array of shape (N, ...) or a map-style Dataset of (x, y); "
                f"got {type(inputs).__name__}."
            )
        self.dtype = dtype

    def get(self, start: int, stop: int, device) -> torch.Tensor:
        if self.tensor is not None:
            x = self.tensor[start:stop]
        else:
            items = [self.dataset[i] for i in range(start, stop)]
            items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
            x = torch.stack([torch.as_tensor(it) for it in items])
            if not x.is_floating_point():
                raise TypeError(f"dataset items must be floating-point tensors, got dtype {x.dtype}.")
        return x.to(device=device, dtype=self.dtype)


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
    """Network logits ``f(x; θ)``, shape ``(N, C)``, model in eval mode, no gradients (SPEC §0)."""
    _check_model(model)
    _check_batch_size(batch_size)
    with _eval_mode(model), _on_device(model, device) as dev:
        src = _Inputs(inputs, _model_dtype(model))
        outs = []
        for s in range(0, src.n, batch_size):
            out = _call(model, src.get(s, min(src.n, s + batch_size), dev))
            outs.append(out.detach().cpu())
        if not outs:
            raise ValueError("inputs is empty (N = 0).")
        return torch.cat(outs)


def _call(model, x):
    try:
        out = model(x)
    except Exception as e:  # a shape/channel mismatch surfaces deep inside torch: say what was passed
        raise ValueError(
            f"the model could not be evaluated on inputs of shape {tuple(x.shape)} (dtype {x.dtype}): {e}"
        ) from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, C); got "
            + (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
        )
    return out


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
    """Per-class logit gradients ``G[i, c] = ∇_θ f_c(x_i)`` (SPEC §0), optionally JL-projected (SPEC §4.2).

    Parameters
    ----------
    model : nn.Module returning logits ``(B, C)``; put in eval mode for the call (restored afterwards);
        only parameters with ``requires_grad`` count.
    inputs : tensor / ndarray ``(N, ...)`` or a map-style Dataset of ``(x, y)``.
    projector : a projector from :func:`dntk.projection.make`, or ``None`` for the unprojected ``(N, C, P)``.
    batch_size : samples per batch; default from ``max_bytes``. Results do not depend on it.
    device : where to compute (the model is moved there for the call and moved back); default: the model's.
    out : optional preallocated ``(N, C, w)`` array (torch tensor or NumPy array / ``np.memmap``, float32 or
        float16); filled and returned. Checked before any work.
    method : ``"fast"`` (layer-structured, default) or ``"exact"`` (``torch.func`` ``vmap(jacrev)``).
    max_bytes : working-memory budget per batch (default :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    ``(N, C, P)`` (no projector) or ``(N, C, k)`` float32 tensor (the model's dtype if it is float64),
    or ``out`` when given.
    """
    _check_model(model)
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
    dtype = _model_dtype(model)
    src = _Inputs(inputs, dtype)
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

    with _eval_mode(model), _on_device(model, device) as dev:
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
        params = dict(model.named_parameters())
        self.params = {n: params[n].detach() for n in self.names}
        self.rest = {n: p.detach() for n, p in model.named_parameters() if n not in self.params}
        self.rest.update(dict(model.named_buffers()))

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
    return "func"


def _conv_padding(m):
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return tuple(m.padding)


class _Unit:
    def __init__(self, name, module, kind, roles):
        self.name, self.module, self.kind = name, module, kind
        self.roles = roles  # {"weight": block index, "bias": block index, or param name for func}


class _Record:
    """One call of a unit during the forward pass: its (cloned) input factor and its output probe."""

    __slots__ = ("unit", "x", "args", "kwargs", "probe")


class _FastEngine:
    def __init__(self, model, layout, dev, C):
        self.model = model
        self.layout = layout
        index = {name: i for i, name in enumerate(b.name for b in layout)}
        pid = {id(p): index[n] for n, p in model.named_parameters() if n in index}
        self.units = []
        for name, m in model.named_modules():
            own = [(pn, p) for pn, p in m.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            kind = _unit_kind(m)
            roles = {pn: pid[id(p)] for pn, p in own}
            if kind != "func" and not set(roles) <= {"weight", "bias"}:
                kind = "func"
            self.units.append(_Unit(name, m, kind, roles))
        self.records: list[_Record] = []
        self._batched_ok = True
        self._checked = False

    # ---------------------------------------------------------------- capture
    def _hook(self, unit):
        def hook(module, args, kwargs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"layer {unit.name!r} ({type(module).__name__}) owns trainable parameters but returns "
                    f"{type(output).__name__}, not a tensor; the fast path cannot take its gradients — use method='exact'."
                )
            r = _Record()
            r.unit = unit
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
            r.probe = torch.zeros_like(output, requires_grad=True)
            self.records.append(r)
            return output + r.probe

        return hook

    @staticmethod
    def _bn_normalised(m, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)

    def _forward_backward(self, x, C):
        self.records = []
        handles = [u.module.register_forward_hook(self._hook(u), with_kwargs=True) for u in self.units]
        try:
            with torch.enable_grad():
                out = _call(self.model, x)
        finally:
            for h in handles:
                h.remove()
        if not self._checked:
            self._check_coverage(out)
        B = x.shape[0]
        probes = [r.probe for r in self.records]
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
        # (C, B, ...) -> (B, C, ...)
        return [None if g is None else g.transpose(0, 1) for g in grads]

    def _check_coverage(self, out):
        """Every parameter-owning unit must have been called, or its parameters must not reach the logits."""
        fired = {id(r.unit) for r in self.records}
        missing = [u for u in self.units if id(u) not in fired]
        if missing:
            params = [p for u in missing for p in u.module.parameters(recurse=False) if p.requires_grad]
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
        self.records = []
        handles = [u.module.register_forward_hook(self._hook(u), with_kwargs=True) for u in self.units]
        try:
            with torch.no_grad():
                _call(self.model, x0)
        finally:
            for h in handles:
                h.remove()
        es = x0.element_size()
        per = 0
        for r in self.records:
            xin = r.x.numel() if r.x is not None else sum(a.numel() for a in r.args if isinstance(a, torch.Tensor))
            per += (xin + (C + 2) * r.probe.numel()) * es
            if r.unit.kind == "conv2d":
                m = r.unit.module
                per += r.x[0].numel() * int(np.prod(m.kernel_size)) * es  # transient unfold
        self.records = []
        per += 2 * C * width * es
        if projector is None or projector.mode == "full":
            P = sum(b.size for b in self.layout)
            padded = getattr(projector, "P_pad", P) if projector is not None else P
            per += 2 * C * padded * es
        return int(max(1, min(256, max_bytes // max(per, 1))))

    # ---------------------------------------------------------------- per batch
    def batch(self, x, C, projector, max_bytes):
        grads = self._forward_backward(x, C)
        B = x.shape[0]
        items = [(r, g) for r, g in zip(self.records, grads) if g is not None]
        self.records = []
        P = sum(b.size for b in self.layout)
        dt = x.dtype
        if projector is None:
            sink = _FlatSink(self.layout, B, C, dt, x.device, max_bytes)
            self._emit(items, sink, slice(0, B))
            return sink.buf
        if projector.mode == "rows":
            sink = _RowsSink(self.layout, projector, B, C, x.device, max_bytes)
            self._emit(items, sink, slice(0, B))
            return sink.acc
        if projector.mode == "kron":
            sink = _KronSink(self.layout, projector, B, C, x.device, max_bytes)
            self._emit(items, sink, slice(0, B))
            return sink.acc
        # full vectors (SRHT): sub-batches of samples so that (b, C, P') fits the budget
        res = torch.empty(B, C, projector.dim, device=x.device)
        step = int(max(1, min(B, max_bytes // (3 * 4 * C * projector.P_pad))))
        for s in range(0, B, step):
            e = min(B, s + step)
            sink = _FlatSink(self.layout, e - s, C, torch.float32, x.device, max_bytes, width=projector.P_pad)
            self._emit(items, sink, slice(s, e))
            res[s:e] = projector.srht_padded(sink.buf.reshape((e - s) * C, -1)).reshape(e - s, C, -1)
        return res

    def _emit(self, items, sink, sl):
        """Turn each record's (input factor, output gradient) into per-parameter contributions for ``sink``."""
        for r, d_native in items:
            u = r.unit
            d = d_native
            d = d[sl].to(sink.dtype)  # (b, C, *out)
            b, C = d.shape[0], d.shape[1]
            if u.kind in ("linear", "conv2d"):
                if u.kind == "linear":
                    d_out = d.shape[-1]
                    D = d.reshape(b, C, -1, d_out).transpose(2, 3)  # (b, C, d_out, T)
                    src = _LinearInput(r.x[sl].to(sink.dtype))
                else:
                    d_out = d.shape[2]
                    D = d.reshape(b, C, d_out, -1)
                    src = _ConvInput(r.x[sl].to(sink.dtype), u.module)
                if "weight" in u.roles:
                    sink.outer(u.roles["weight"], D, src)
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], D.sum(3))
            elif u.kind in ("bn", "gn"):
                ch = d.shape[2]
                xh = r.x[sl].to(sink.dtype).reshape(b, 1, ch, -1)
                dd = d.reshape(b, C, ch, -1)
                if "weight" in u.roles:
                    sink.dense(u.roles["weight"], (dd * xh).sum(3))
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], dd.sum(3))
            elif u.kind == "ln":
                nshape = tuple(u.module.normalized_shape)
                nn_ = int(np.prod(nshape))
                xh = r.x[sl].to(sink.dtype).reshape(b, 1, -1, nn_)
                dd = d.reshape(b, C, -1, nn_)
                if "weight" in u.roles:
                    sink.dense(u.roles["weight"], (dd * xh).sum(2))
                if "bias" in u.roles:
                    sink.dense(u.roles["bias"], dd.sum(2))
            else:
                for pname, G in self._func_grads(r, d_native[sl], sl).items():
                    sink.dense(u.roles[pname], G.reshape(b, C, -1).to(sink.dtype))

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


class _FlatSink:
    """Unprojected: writes per-sample gradients into ``buf`` ``(b, C, width)`` at each block's offset."""

    def __init__(self, layout, b, C, dtype, device, max_bytes, width=None):
        self.layout = layout
        P = sum(x.size for x in layout)
        self.dtype = dtype
        self.buf = torch.zeros(b, C, width or P, dtype=dtype, device=device)

    def dense(self, bi, G):
        blk = self.layout[bi]
        self.buf[:, :, blk.offset : blk.offset + blk.size] += G.reshape(G.shape[0], G.shape[1], -1)

    def outer(self, bi, D, src):
        b, C, d_out, T = D.shape
        A = src.unfolded()  # (b, d_in, T)
        W = torch.bmm(D.reshape(b, C * d_out, T), A.transpose(1, 2))  # (b, C·d_out, d_in)
        self.dense(bi, W.reshape(b, C, -1))


class _RowsSink:
    """Row-block projectors: ``acc += G_block R_block`` tile by tile (``R`` rows generated once per batch).

    For a layer with ``T`` positions and ``T < C`` the input side is contracted with ``R`` first and shared by
    all classes (cost ``T·P_l·k`` instead of ``C·P_l·k``).
    """

    def __init__(self, layout, proj, b, C, device, max_bytes):
        self.layout, self.proj, self.max_bytes = layout, proj, max_bytes
        self.dtype = torch.float32
        self.acc = torch.zeros(b, C, proj.dim, device=device)

    def _step(self, n_rows):
        """Rows per product: within the budget, and whole tiles for the sparse kind (one product per tile)."""
        step = max(1, self.max_bytes // (8 * max(1, n_rows + self.proj.dim)))
        tr = self.proj.tile_rows
        return (step // tr) * tr if (not self.proj.dense_rows and step >= tr) else step

    def dense(self, bi, G):
        b, C = G.shape[:2]
        G = G.reshape(b * C, -1)
        n = G.shape[1]
        step = self._step(b * C)
        for s in range(0, n, step):
            self.acc += self.proj.rows_matmul(bi, s, G[:, s : s + step]).reshape(self.acc.shape)

    def outer(self, bi, D, src):
        b, C, d_out, T = D.shape
        d_in, k = src.d_in, self.proj.dim
        shared = self.proj.dense_rows and (T * d_in * k + C * T * k) < (C * T * d_in + C * d_in * k)
        if shared:
            per_o = 4 * max(b * T * k, d_in * k)
        else:
            per_o = 4 * max(b * C * d_in, d_in * k)
        oc = int(max(1, min(d_out, self.max_bytes // (4 * per_o))))
        A = src.unfolded()  # (b, d_in, T)
        tr = self.proj.tile_rows
        if not self.proj.dense_rows and 16 * b * C * (tr + d_in) <= self.max_bytes:
            # sparse kind: one sparse product per tile, forming only the channels that tile covers
            At, n = A.transpose(1, 2), d_out * d_in
            for r0 in range(0, n, tr):
                r1 = min(n, r0 + tr)
                o0, o1 = r0 // d_in, -(-r1 // d_in)
                G = torch.bmm(D[:, :, o0:o1].reshape(b, C * (o1 - o0), T), At).reshape(b * C, (o1 - o0) * d_in)
                part = self.proj.rows_matmul(bi, r0, G[:, r0 - o0 * d_in : r1 - o0 * d_in])
                self.acc += part.reshape(self.acc.shape)
            return
        At = A.transpose(1, 2).reshape(b * T, d_in) if shared else None
        for o0 in range(0, d_out, oc):
            o1 = min(d_out, o0 + oc)
            n_o = o1 - o0
            Dc = D[:, :, o0:o1]
            if shared:
                R = self.proj.rows(bi, o0 * d_in, o1 * d_in).reshape(n_o, d_in, k)
                M = (At @ R.permute(1, 0, 2).reshape(d_in, n_o * k)).reshape(b, T * n_o, k)  # rows (t, o)
                self.acc += torch.bmm(Dc.permute(0, 1, 3, 2).reshape(b, C, T * n_o), M)
            else:
                G = torch.bmm(Dc.reshape(b, C * n_o, T), A.transpose(1, 2))  # (b, C·n_o, d_in)
                self.acc += self.proj.rows_matmul(bi, o0 * d_in, G.reshape(b * C, n_o * d_in)).reshape(self.acc.shape)


class _KronSink:
    """Kronecker projector: ``Σ_t (R_outᵀ δ_t)(R_inᵀ a_t)ᵀ`` per layer; the layer gradient is never formed."""

    def __init__(self, layout, proj, b, C, device, max_bytes):
        self.layout, self.proj = layout, proj
        self.dtype = torch.float32
        self.acc = torch.zeros(b, C, proj.dim, device=device)

    def dense(self, bi, G):
        b, C = G.shape[:2]
        self.acc += self.proj.kron_dense(bi, G.reshape(b * C, -1)).reshape(self.acc.shape)

    def outer(self, bi, D, src):
        b, C, d_out, T = D.shape
        Ro, Ri = self.proj.factors(bi)
        At = src.project_in(Ri)  # (b, k_in, T)
        Dt = torch.matmul(Ro.T, D.reshape(b * C, d_out, T))  # (b·C, k_out, T)
        self.acc += torch.bmm(Dt.reshape(b, C * Ro.shape[1], T), At.transpose(1, 2)).reshape(self.acc.shape)
