"""Work shared by ``torch.distributed`` ranks: sharded featurisation into one array on disk, classes split
over ranks, and the process group a pipeline run uses.

Featurisation (:func:`class_gradients`): each rank computes the projected class gradients (appendix §0,
§4.2) of a contiguous slice of the ``N`` inputs and writes its rows into a shared ``np.memmap`` of shape
``(N, C, k)``, so ``N×C×k`` never has to fit in one process's memory. Projectors are counter-seeded, so the
sharded result equals the single-process :func:`dntk.tangent.class_gradients` whatever the number of ranks.

Nothing stale is ever returned: the array's header (``<path>.json``) records the model's content hash
(:func:`dntk.store.content_hash` of its weights), the projector, ``P``, the shape and the world size; each
shard's completion record (``<path>.shard<r>of<w>.json``, written atomically after its rows are flushed)
records the content hash of that shard's inputs (or of the caller's digest of all inputs and the shard's
rows) and the SHA-256 of the rows written. A rerun with the same settings reuses a shard only if its inputs
hash equally and its rows still match their checksum; an
array made by another model or projector is refused with a clear error.

Pipeline runs (:func:`dntk.pipeline.run`) get a :class:`Ranks` — the rank, the world size and a record of
which rank did what — and use :func:`featurize` (samples split over ranks) and :func:`per_class`
(whole classes split over ranks, results gathered in class order).

Usage (one process per rank, e.g. under ``torchrun``)::

    torch.distributed.init_process_group("gloo")      # or "nccl" with device=f"cuda:{local_rank}"
    feats = dntk.distributed.class_gradients(model, X, projector, "feats.f32")

or on one machine without a launcher: ``dntk.distributed.launch(worker, world_size=4)``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from . import tangent
from .store import atomic_write_text, content_hash

__all__ = ["shard", "class_gradients", "is_complete", "launch", "Ranks", "init_from_env", "featurize",
           "per_class", "DistributedError", "DEFAULT_TIMEOUT_S", "COLLECTIVE_TIMEOUT_S"]

#: Seconds a rank waits to reach the rendezvous (rank 0's store) before failing with a clear error.
DEFAULT_TIMEOUT_S = 300.0
#: Seconds a collective (barrier, gather) may wait: long, because ranks wait there while rank 0 trains the
#: teacher or distils; a rank that dies is reported by torchrun, which then stops the others.
COLLECTIVE_TIMEOUT_S = 24 * 3600.0


class DistributedError(RuntimeError):
    """The process group cannot be set up or used as asked (one line saying what to do)."""


def shard(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows split into ``world_size`` contiguous shards
    whose sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


# ----------------------------------------------------------------------------- the on-disk array
def _record_path(path: str, rank: int, world_size: int) -> str:
    return f"{path}.shard{rank}of{world_size}.json"


def _header_path(path: str) -> str:
    return f"{path}.json"


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": True}


def _rows_sha256(mm, start: int, stop: int) -> str:
    h = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, mm[0:1].nbytes))
    for i in range(start, stop, step):
        h.update(np.ascontiguousarray(mm[i:min(stop, i + step)]).reshape(-1).view(np.uint8))
    return h.hexdigest()


def is_complete(path: str) -> bool:
    """True when every shard of the array at ``path`` has a completion record (checksums are verified
    by :func:`class_gradients`, which every rank calls before using the array)."""
    header = _read_json(_header_path(path))
    if not header or "world_size" not in header:
        return False
    w = header["world_size"]
    return all((_read_json(_record_path(path, r, w)) or {}).get("rows") for r in range(w))


def _slice_inputs(inputs, start: int, stop: int):
    """Rows ``[start, stop)`` of `inputs`: a view of a tensor/array, or a ``Subset`` of a Dataset (whose
    items are read only when iterated, so a rank never loads another rank's rows)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return inputs[start:stop]
    if not (isinstance(inputs, torch.utils.data.Dataset) and hasattr(inputs, "__len__")):
        raise TypeError("inputs must be a tensor or array (N, ...) or a map-style Dataset of (x, y) with a length; "
                        f"got {type(inputs).__name__}.")
    return torch.utils.data.Subset(inputs, range(start, stop))


def _first_input(inputs, i: int) -> torch.Tensor:
    """Row ``i`` of `inputs` as a batch of one ``(1, ...)``."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(inputs[i:i + 1])
    item = inputs[i]
    return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)[None]


def _inputs_hash(inputs) -> str:
    """Content hash of inputs: a tensor/array, or a Dataset of ``(x, y)`` read item by item."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return content_hash(inputs)
    h = hashlib.sha256()
    for i in range(len(inputs)):
        h.update(content_hash(torch.as_tensor(inputs[i][0])).encode())
    return h.hexdigest()


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
    inputs_digest: str | None = None,
) -> np.memmap:
    """Projected class gradients ``(N, C, k)`` of ``inputs`` computed by all ranks into ``path``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; every rank passes the same weights (its content hash is in the header).
    inputs : Tensor ``(N, c, h, w)``, array, or map-style Dataset of ``(x, y)``
        Every rank passes the same inputs; each rank reads only its own contiguous shard of rows (a
        ``Subset`` of a Dataset, iterated batch by batch), so a Dataset never has to fit in memory.
    projector : dntk.projection.Projector
        The JL projector (appendix §4.2).
    path : str
        The array file; ``<path>.json`` and ``<path>.shard<r>of<w>.json`` are written beside it.
    rank, world_size : int, optional
        Default: the initialised ``torch.distributed`` process group, else ``0``/``1``.
    inputs_digest : str, optional
        A content digest of all of `inputs` that the caller already has (the pipeline's data checksums).
        A shard's completion record then names ``(inputs_digest, rows)`` instead of a hash of the shard's
        rows, so reusing a finished shard reads none of its inputs. Default: hash the shard's rows (for a
        Dataset that reads the shard once more).

    Returns
    -------
    numpy.memmap ``(N, C, k)``
        The finished array, opened read-only, on every rank.

    Raises
    ------
    ValueError
        ``path`` holds features of another model, projector, size or world size (delete ``path*``
        or choose another path), or the inputs are empty.
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

    C = tangent.logits(model, _first_input(inputs, start if stop > start else 0)).shape[1]
    header = {"shape": [n, C, projector.dim], "dtype": np.dtype(dtype).name,
              "projector": projector.identity(),
              "num_params": tangent.num_params(model), "model": content_hash(model), "world_size": world_size}
    if rank == 0 or not initialised:
        _create_or_check(path, header)
    if initialised:
        dist.barrier()
        if rank != 0:
            _create_or_check(path, header)

    part = _slice_inputs(inputs, start, stop)
    if inputs_digest is not None:
        wanted = content_hash({"digest": str(inputs_digest), "n": n, "rows": [start, stop]})
    else:
        wanted = _inputs_hash(part) if stop > start else content_hash([])
    rec_path = _record_path(path, rank, world_size)
    rec = _read_json(rec_path) or {}
    mm = np.memmap(path, dtype=header["dtype"], mode="r+", shape=tuple(header["shape"]))
    reuse = (rec.get("rows") == [start, stop] and rec.get("inputs") == wanted
             and rec.get("sha256") == _rows_sha256(mm, start, stop))
    if not reuse:
        if os.path.exists(rec_path):
            os.remove(rec_path)  # invalid from here until the new rows are flushed
        if stop > start:
            tangent.class_gradients(model, part, projector=projector, batch_size=batch_size, device=device,
                                    out=mm[start:stop], progress=progress)
        mm.flush()
        atomic_write_text(rec_path, json.dumps({"rows": [start, stop], "inputs": wanted,
                                                "sha256": _rows_sha256(mm, start, stop)}))
    del mm
    if initialised:
        dist.barrier()
    return np.memmap(path, dtype=header["dtype"], mode="r", shape=tuple(header["shape"]))


def _create_or_check(path: str, header: dict) -> None:
    """Create the array and its header, or check that an existing one was made with the same settings."""
    hp = _header_path(path)
    old = _read_json(hp)
    if old is not None:
        if old != header:
            diff = {k: ("…" if k == "model" else old.get(k), "…" if k == "model" else header[k])
                    for k in header if old.get(k) != header[k]}
            what = "another model" if "model" in diff else "other settings"
            raise ValueError(f"{path} holds features from {what} {diff}; delete {path}* or choose another path.")
        if os.path.exists(path) and os.path.getsize(path) == int(np.prod(header["shape"])) * np.dtype(header["dtype"]).itemsize:
            return
    for r in range(header["world_size"]):  # a fresh array: stale records would skip work
        if os.path.exists(_record_path(path, r, header["world_size"])):
            os.remove(_record_path(path, r, header["world_size"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mm = np.memmap(path, dtype=header["dtype"], mode="w+", shape=tuple(header["shape"]))
    del mm
    atomic_write_text(hp, json.dumps(header))


# ----------------------------------------------------------------------------- process groups
@dataclass
class Ranks:
    """The processes sharing one pipeline run: this process's ``rank``, the ``world_size``, and
    ``work_log`` — for each stage, which rank computed which rows or classes (``result.json``'s ``info``).

    ``Ranks.single()`` is one process; ``Ranks.current()`` reads the initialised ``torch.distributed``
    process group (or is single without one).
    """

    rank: int = 0
    world_size: int = 1
    work_log: dict = field(default_factory=dict)

    @classmethod
    def single(cls) -> "Ranks":
        return cls(0, 1)

    @classmethod
    def current(cls) -> "Ranks":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls.single()

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, …]`` on every rank."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def check_work(self, num_classes: int) -> None:
        """Refuse a world size that leaves a rank without a class to work on."""
        if self.world_size > num_classes:
            raise DistributedError(f"world size {self.world_size} exceeds the {num_classes} classes that the "
                                   f"ranks share; use at most {num_classes} processes (--nproc / torchrun "
                                   "--nproc-per-node)")


def init_from_env(backend: str | None = None, device: str = "cpu",
                  timeout_s: float | None = None) -> Ranks:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); a single process when ``WORLD_SIZE`` is unset or 1.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default: ``nccl`` for a CUDA ``device``, else ``gloo``. NCCL without CUDA is refused.
    device : str
        The config's device.
    timeout_s : float, optional
        Seconds to wait for the rendezvous (rank 0's store); default ``$DNTK_DIST_TIMEOUT`` or
        :data:`DEFAULT_TIMEOUT_S`. A rank that cannot reach it fails with :class:`DistributedError` after
        this long instead of hanging. Collectives wait up to :data:`COLLECTIVE_TIMEOUT_S`.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise DistributedError("WORLD_SIZE and RANK must be integers (set by torchrun)") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"bad process group: RANK={rank}, WORLD_SIZE={world_size}; need 0 <= RANK < WORLD_SIZE")
    if world_size == 1:
        return Ranks.single()
    if dist.is_initialized():
        return Ranks.current()
    backend = backend or ("nccl" if str(device).startswith("cuda") else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError("the nccl backend needs CUDA, and no CUDA device is available here; use "
                               "--backend gloo (and device: cpu)")
    if backend not in ("gloo", "nccl"):
        raise DistributedError(f"backend {backend!r} is not supported; use gloo (CPU) or nccl (CUDA)")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DistributedError(f"WORLD_SIZE={world_size} but {var} is not set; start the ranks with torchrun "
                                   "(torchrun --nproc-per-node N -m dntk run CONFIG) or `dntk run CONFIG --nproc N`")
    timeout_s = float(os.environ.get("DNTK_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)) if timeout_s is None else timeout_s
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if rank != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # the store is hosted elsewhere
        _wait_for_rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world_size, timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=max(timeout_s, COLLECTIVE_TIMEOUT_S)))
    except Exception as e:  # torch raises several types (RuntimeError, DistStoreError, TimeoutError)
        raise DistributedError(
            f"rank {rank} could not join the {world_size} processes at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']} within {timeout_s:g} s ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "check that every rank was started and can reach rank 0") from None
    return Ranks.current()


def _wait_for_rendezvous(addr: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
    """Wait until the rendezvous store at ``addr:port`` accepts connections, or fail after `timeout_s`."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"rank {rank} could not join the {world_size} processes: nothing answers at {addr}:{port} "
                    f"after {timeout_s:g} s ({e.strerror or type(e).__name__}); check that rank 0 was started and "
                    "is reachable (DNTK_DIST_TIMEOUT sets the wait)") from None
            time.sleep(0.2)


def featurize(run, model, inputs, shard_name: str, label: str, inputs_digest: str | None = None) -> dict:
    """Projected class gradients ``(n, C, k)`` and logits ``(n, C)`` of `inputs` for a pipeline run.

    Parameters
    ----------
    run : dntk.pipeline._Run
        The run (its config, store and :class:`Ranks`).
    model : torch.nn.Module
    inputs : Tensor ``(n, c, h, w)`` or map-style Dataset of ``(x, y)``
        Several ranks each read only their contiguous shard of it.
    shard_name : str
        File name of the shared array under ``<cache>/shards/``.
    label : str
        Name of the stage in ``ranks.work_log``.
    inputs_digest : str, optional
        The pipeline's checksum of `inputs` (see :func:`class_gradients`).

    Returns
    -------
    dict
        ``features``: float32 array ``(n, C, k)`` (a read-only ``np.memmap`` of the shared array when
        several ranks computed it, so no rank holds all of it in memory); ``logits``: tensor ``(n, C)``,
        each rank computing its shard's rows and gathering the others'.
    """
    cfg, ranks = run.cfg, run.ranks
    from .pipeline import make_projector

    projector = make_projector(cfg)
    if ranks.world_size == 1:
        feats = tangent.class_gradients(model, inputs, projector=projector, batch_size=cfg.projection.batch_size,
                                        device=cfg.device, progress=cfg.progress).float().cpu().numpy()
        logits = tangent.logits(model, inputs, device=cfg.device)
    else:
        n = len(inputs)
        path = str(run.store.root / "shards" / f"{shard_name}.f32")
        feats = class_gradients(model, inputs, projector, path, batch_size=cfg.projection.batch_size,
                                device=cfg.device, progress=cfg.progress and ranks.rank == 0,
                                inputs_digest=inputs_digest)
        start, stop = shard(n, ranks.world_size, ranks.rank)
        mine = tangent.logits(model, _slice_inputs(inputs, start, stop), device=cfg.device) if stop > start else None
        logits = torch.cat([part for part in ranks.all_gather(mine) if part is not None])
        ranks.work_log[label] = {str(r): list(shard(n, ranks.world_size, r)) for r in range(ranks.world_size)}
    return {"features": feats, "logits": logits.float().cpu()}


def per_class(ranks: Ranks, num_classes: int, fn, label: str) -> list:
    """``[fn(0), …, fn(C-1)]`` with whole classes split over the ranks (contiguous blocks, sizes differing
    by at most one) and gathered on every rank in class order; records the split in ``ranks.work_log``."""
    lo, hi = shard(num_classes, ranks.world_size, ranks.rank)
    mine = [fn(c) for c in range(lo, hi)]
    if ranks.world_size == 1:
        return mine
    parts = ranks.all_gather(mine)
    ranks.work_log[label] = {str(r): list(range(*shard(num_classes, ranks.world_size, r)))
                             for r in range(ranks.world_size)}
    return [x for part in parts for x in part]


# ----------------------------------------------------------------------------- local launcher
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
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError("the nccl backend needs CUDA, and no CUDA device is available here; use gloo")
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_worker, args=(world_size, os.path.join(tmp, "init"), backend, fn, args),
                                    nprocs=world_size, join=True)
