"""Sharded featurisation over ``torch.distributed`` ranks, into one array on disk.

Each rank computes the projected class gradients (SPEC §0, §4.2) of a contiguous slice of the ``N``
inputs and writes its rows into a shared ``np.memmap`` of shape ``(N, C, k)``, so ``N×C×k`` never has to
fit in one process's memory and the work splits evenly over machines or GPUs. Projectors are
counter-seeded, so the sharded result equals the single-process :func:`dntk.tangent.class_gradients`
whatever the number of ranks.

Interruption is safe: a rank marks its shard done (an atomically written marker file) only after its
rows are flushed, and a rerun with the same settings and world size skips finished shards.

Usage (one process per rank, e.g. under ``torchrun``)::

    torch.distributed.init_process_group("gloo")      # or "nccl" with device=f"cuda:{local_rank}"
    feats = dntk.distributed.class_gradients(model, X, projector, "feats.f32")

or on one machine without a launcher: ``dntk.distributed.launch(worker, world_size=4)``.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist

from . import tangent

__all__ = ["shard", "class_gradients", "is_complete", "launch"]


def shard(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows split into ``world_size`` contiguous shards
    whose sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _marker(path: str, rank: int, world_size: int) -> str:
    return f"{path}.shard{rank}of{world_size}.done"


def _header_path(path: str) -> str:
    return f"{path}.json"


def _atomic_write_text(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def is_complete(path: str) -> bool:
    """True when every shard of the array at ``path`` has been written."""
    try:
        header = json.loads(open(_header_path(path)).read())
    except FileNotFoundError:
        return False
    w = header["world_size"]
    return all(os.path.exists(_marker(path, r, w)) for r in range(w))


def _slice_inputs(inputs, start: int, stop: int):
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return inputs[start:stop]
    return torch.utils.data.Subset(inputs, range(start, stop))


def class_gradients(
    model: torch.nn.Module,
    inputs,
    projector,
    path: str,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    batch_size: int | None = None,
    device=None,
    dtype: str = "float32",
    progress: bool = False,
) -> np.memmap:
    """Projected class gradients ``(N, C, k)`` of ``inputs`` computed by all ranks into ``path``.

    ``rank``/``world_size`` default to the initialised ``torch.distributed`` process group (or ``0``/``1``
    without one). Every rank must pass the same model, inputs and projector. Returns the finished array
    opened read-only, on every rank. ``path`` holding features of other settings raises ``ValueError``
    (delete it or choose another path) instead of being overwritten.
    """
    if projector is None:
        raise ValueError("distributed featurisation needs a projector (dntk.projection.make(...)); "
                         "unprojected (N, C, P) features are for small models, use dntk.tangent.class_gradients.")
    initialised = dist.is_available() and dist.is_initialized()
    rank = (dist.get_rank() if initialised else 0) if rank is None else int(rank)
    world_size = (dist.get_world_size() if initialised else 1) if world_size is None else int(world_size)
    n = len(inputs)
    if n == 0:
        raise ValueError("inputs is empty (N = 0).")
    start, stop = shard(n, world_size, rank)

    x0 = inputs[0:1] if isinstance(inputs, (torch.Tensor, np.ndarray)) else torch.as_tensor(inputs[0][0])[None]
    C = tangent.logits(model, x0).shape[1]
    header = {"shape": [n, C, projector.dim], "dtype": np.dtype(dtype).name, "projector": [projector.kind, projector.dim, projector.seed],
              "num_params": tangent.num_params(model), "world_size": world_size}
    if rank == 0:
        _create_or_check(path, header)
    if initialised:
        dist.barrier()
    else:
        _create_or_check(path, header)

    if not os.path.exists(_marker(path, rank, world_size)) and stop > start:
        mm = np.memmap(path, dtype=header["dtype"], mode="r+", shape=tuple(header["shape"]))
        tangent.class_gradients(model, _slice_inputs(inputs, start, stop), projector=projector,
                                batch_size=batch_size, device=device, out=mm[start:stop], progress=progress)
        mm.flush()
        del mm
    if not os.path.exists(_marker(path, rank, world_size)):
        _atomic_write_text(_marker(path, rank, world_size), f"{start} {stop}\n")
    if initialised:
        dist.barrier()
    return np.memmap(path, dtype=header["dtype"], mode="r", shape=tuple(header["shape"]))


def _create_or_check(path: str, header: dict) -> None:
    """Create the array and its header, or check that an existing one was made with the same settings."""
    hp = _header_path(path)
    if os.path.exists(hp):
        old = json.loads(open(hp).read())
        if old != header:
            diff = {k: (old.get(k), header[k]) for k in header if old.get(k) != header[k]}
            raise ValueError(f"{path} holds features from other settings {diff}; delete {path}* or choose "
                             "another path.")
        if os.path.exists(path):
            return
    for r in range(header["world_size"]):  # a fresh array: stale markers would skip work
        if os.path.exists(_marker(path, r, header["world_size"])):
            os.remove(_marker(path, r, header["world_size"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mm = np.memmap(path, dtype=header["dtype"], mode="w+", shape=tuple(header["shape"]))
    del mm
    _atomic_write_text(hp, json.dumps(header))


def _worker(rank, world_size, init_file, backend, fn, args):
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(fn, world_size: int, args: tuple = (), backend: str = "gloo") -> None:
    """Run ``fn(*args)`` in ``world_size`` local processes joined in one process group (for one machine
    or for testing; on a cluster use ``torchrun``). ``fn`` must be importable (defined at module level)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}.")
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_worker, args=(world_size, os.path.join(tmp, "init"), backend, fn, args),
                                    nprocs=world_size, join=True)
