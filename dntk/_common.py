"""Shared plumbing used by several dntk modules (private: not part of the public API).

One place for the small things every stage needs, so that each is written once:
input checks, the eval/device context for models, the ``functional_call`` parameter split,
progress bars and learning-rate schedules (the Gram-matrix eigendecomposition is the public
:mod:`dntk.linalg`).
Persistence (atomic writes, checksums) lives in :mod:`dntk.store`, not here.

Sections are owned by the module that introduced them; add new helpers at the end of the
section they belong to, with a numpydoc docstring.
"""
from __future__ import annotations

import contextlib


# --- input checking -----------------------------------------------------------------------
class BatchedInputs:
    """Uniform batched access to model inputs: a tensor, an ndarray, or a map-style Dataset of ``(x, y)``.

    Tensors are checked once at construction (floating point, a batch axis, finite); dataset items are
    checked batch by batch in :meth:`get`. ``n`` is the number of samples.
    """

    def __init__(self, inputs, dtype):
        import numpy as np
        import torch

        self.dataset = None
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(np.ascontiguousarray(inputs))
        if isinstance(inputs, torch.Tensor):
            if not inputs.is_floating_point():
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

    def get(self, start: int, stop: int, device):
        """Samples ``[start, stop)`` as one tensor ``(b, ...)`` on ``device`` in the model's dtype."""
        import torch

        if self.tensor is not None:
            x = self.tensor[start:stop]
        else:
            items = [self.dataset[i] for i in range(start, stop)]
            items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
            x = torch.stack([torch.as_tensor(it) for it in items])
            if not x.is_floating_point():
                raise TypeError(f"dataset items must be floating-point tensors, got dtype {x.dtype}.")
            if not torch.isfinite(x).all():
                raise ValueError(f"dataset items {start}..{stop - 1} contain NaN or inf; clean the data first.")
        return x.to(device=device, dtype=self.dtype)


def real_tensor(x, name: str):
    """``x`` as a real torch tensor (no copy where possible): a tensor, a numpy array, or a (nested) list of numbers.

    Integer arrays are accepted (callers convert to float64); complex, boolean and non-numeric inputs raise
    ``TypeError`` naming ``name``. Values are not checked here (see :func:`check_finite`).
    """
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {x.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a torch tensor or a numpy array of numbers ({e}).") from None
    else:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}.")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating-point array, got dtype {t.dtype}.")
    return t


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the count of NaN/inf entries if the tensor ``x`` holds any."""
    import torch

    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); clean or drop those entries first "
                         f"(e.g. check the gradients or the network's outputs).")


def check_int(value, name: str, low: int) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool) ``≥ low``, else ``ValueError`` naming ``name``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_positive(value, name: str) -> float:
    """``float(value)`` if ``value`` is a finite real number ``> 0`` (not a bool).

    Raises ``TypeError`` for a non-number and ``ValueError`` for zero, a negative, NaN or inf, naming ``name``.
    """
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}.")
    return value


def class_features(x, name: str = "features", finite: bool = True):
    """Per-class features as a real tensor of shape ``(N, C, k)`` (points, classes, feature width), all ≥ 1.

    Raises ``ValueError`` naming ``name`` for another shape, an empty axis or (with ``finite``) NaN/inf.
    """
    t = real_tensor(x, name)
    if t.ndim != 3:
        raise ValueError(f"{name} must have shape (N, C, k) (points, classes, feature width), got shape "
                         f"{tuple(t.shape)}.")
    if min(t.shape) == 0:
        raise ValueError(f"{name} has an empty dimension, shape {tuple(t.shape)}; need N, C, k ≥ 1.")
    if finite:
        check_finite(t, name)
    return t


def per_class_positive(value, C: int, name: str, device=None):
    """A positive scalar or a length-``C`` sequence as a ``(C,)`` float64 tensor, every entry finite and > 0."""
    import numbers

    import torch

    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number or a length-{C} array, got a bool.")
    if isinstance(value, numbers.Real):
        v = torch.full((C,), float(value), dtype=torch.float64)
    else:
        v = real_tensor(value, name).to(torch.float64).reshape(-1).cpu()
        if v.numel() == 1:
            v = v.expand(C).clone()
        elif v.numel() != C:
            raise ValueError(f"{name} must be a scalar or have one value per class (C={C}), got {v.numel()} values.")
    if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0 for every class, got {v.tolist()}; "
                         f"ridge regression needs a positive regulariser.")
    return v.to(device) if device is not None else v


# --- models: eval/device context, functional_call parameter split --------------------------
def check_model(model) -> None:
    """Raise ``TypeError`` unless ``model`` is a ``torch.nn.Module``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")


def check_model_finite(model) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer of ``model`` that holds NaN or inf.

    One fused reduction per tensor (no host copy of the weights); call it once per public call.
    """
    import torch

    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"the model's {kind} {name!r} contains NaN or inf (diverged training or a corrupt checkpoint); "
                    "reload a finite checkpoint or retrain."
                )


def model_dtype(model):
    """The floating dtype of ``model``'s first floating parameter (``torch.float32`` if it has none)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def resolve_device(device):
    """``torch.device(device)``, with a clear ``ValueError`` when that device is not available here.

    ``None`` is returned unchanged (callers read it as "where the model already is").
    """
    import torch

    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device ('cpu', 'cuda', 'cuda:1', 'mps').") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine; use device='cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was requested but MPS is not available on this machine; use device='cpu'.")
    return dev


@contextlib.contextmanager
def eval_mode(model):
    """Context manager: ``model.eval()`` inside, and every submodule's own ``training`` flag restored on exit.

    (``model.train()`` afterwards would be wrong for a model whose submodules were deliberately frozen in
    eval mode, so each flag is saved and put back, also when the body raises.)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def on_device(model, device):
    """Context manager: move ``model`` to ``device`` for the body and back afterwards; yields the device.

    ``device=None`` keeps the model where it is (the device of its first parameter or buffer, CPU if it
    has none). An unavailable device raises ``ValueError`` naming it (see :func:`resolve_device`).
    """
    import torch

    tensors = list(model.parameters()) + list(model.buffers())
    cur = tensors[0].device if tensors else torch.device("cpu")
    req = resolve_device(device)
    dev = cur if req is None else req
    if dev == cur:
        yield dev
        return
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(cur)


def trainable_parameters(model) -> list:
    """``[(name, parameter)]`` of the parameters with ``requires_grad`` in ``named_parameters()`` order.

    This order, each tensor flattened row-major, defines the flat ``P`` axis of tangent features.
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def split_parameters(model) -> tuple[dict, dict]:
    """The ``functional_call`` split: ``(params, rest)`` of detached tensors.

    ``params`` holds the trainable parameters (the variables of ``∇_θ``, in :func:`trainable_parameters`
    order); ``rest`` the frozen parameters and all buffers, so that ``functional_call(model, {**params,
    **rest}, args)`` evaluates the model with every tensor given explicitly.
    """
    params = {n: p.detach() for n, p in trainable_parameters(model)}
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    rest.update(dict(model.named_buffers()))
    return params, rest


def call_model(model, x):
    """``model(x)`` checked to be logits ``(batch, C)``; a failure inside torch becomes a ``ValueError``
    that names the input shape and dtype (a channel or size mismatch otherwise surfaces deep in torch)."""
    import torch

    try:
        out = model(x)
    except Exception as e:
        raise ValueError(
            f"the model could not be evaluated on inputs of shape {tuple(x.shape)} (dtype {x.dtype}): {e}"
        ) from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, C); got "
            + (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
        )
    return out


# --- progress bars and schedules ------------------------------------------------------------
class _NoBar:
    """A do-nothing stand-in for a tqdm bar."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, enabled: bool, leave: bool = False):
    """A ``tqdm.auto`` bar of ``total`` steps, or a no-op object with the same methods when disabled
    (``tqdm`` is then not even imported)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave)


def cosine_factor(step: int, total: int) -> float:
    """Cosine learning-rate decay ``½(1 + cos(π·min(step, total)/total))``: 1 at step 0, 0 at ``total``.

    ``total <= 0`` gives 1 (nothing to decay over).
    """
    import math

    if total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def cosine_schedule(optimizer, total_steps: int):
    """``LambdaLR`` scaling every group's lr by :func:`cosine_factor` (``step`` = scheduler steps so far)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Context manager: ``torch.set_num_threads(n)`` inside, the previous count restored on exit
    (``n=None`` changes nothing)."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- linear algebra: Gram-matrix eigendecomposition -----------------------------------------
# The Gram-matrix eigendecomposition is public: :mod:`dntk.linalg` (``gram_eig`` and its round-off rule).
