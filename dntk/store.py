"""The one persistence layer of dntk: checksummed artifacts, written atomically, keyed by content.

Everything dntk keeps on disk goes through this module: the pipeline's stage cache, the trained-teacher
cache of :func:`dntk.models.trained`, WMDD's distilled-set cache and :func:`dntk.wmdd.save`, model
checkpoints (:func:`dntk.models.save`) and the headers of :mod:`dntk.distributed`.

Guarantees
----------
* **Atomic.** A file is written to a temporary name in its folder, flushed, ``fsync``-ed and renamed
  into place with ``os.replace``; an artifact directory is assembled under a temporary name and renamed
  in one call. A crash leaves either the old complete artifact or the new one, never half of one, and a
  failed write removes its temporary file or folder.
* **Checksummed.** Every array file of an artifact is recorded with its SHA-256 in ``meta.json``, and the
  artifact carries one content checksum over its JSON body and those digests (:func:`artifact_checksum`)
  plus the checksums of the inputs it consumed. Everything is verified on every read; a mismatch raises
  :class:`CorruptArtifactError` with one line naming the folder and what to do. :meth:`Store.fetch`
  instead recomputes a corrupt artifact (with a one-line warning).
* **Keyed by settings and content.** ``key = settings_hash({"settings": …, "inputs": …})`` where the
  inputs are content hashes (:func:`content_hash`) of what the stage consumed (teacher weights, a
  distilled set, data), so nothing downstream of a changed or corrupted artifact is reused. An artifact
  whose recorded settings and inputs do not hash to its folder name is refused.
* **Never unpickles.** Arrays are ``.npy`` read with ``allow_pickle=False``; metadata is JSON.
* **Safe to share.** Temporary folders carry their owner's host and pid
  (``.<key>.<host>.<pid>.<random>.tmp``); :meth:`Store.clean_partial` removes only those whose owner
  process is gone (or, for other hosts and unrecognised names, that have been untouched for a day), so
  concurrent runs into one folder both finish. Two processes computing the same key both succeed: the
  second finds the first one's complete artifact and keeps it.

Layout: ``<root>/<stage>/<key>/meta.json`` and ``a00000.npy``, ``a00001.npy``, … (one per array leaf).
An artifact is a (possibly nested) dict whose leaves are tensors, NumPy arrays or JSON values.
Settings (what keys hash) must be finite; a non-finite number inside an artifact is kept as it is (a
NaN metric is a result, not corruption).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch

__all__ = [
    "Store",
    "StoreError",
    "CorruptArtifactError",
    "Fetched",
    "settings_hash",
    "canonical_json",
    "content_hash",
    "file_sha256",
    "owner_tag",
    "artifact_checksum",
    "write_artifact",
    "read_artifact",
    "atomic_write_text",
    "atomic_write_bytes",
]

log = logging.getLogger("dntk")

FORMAT_VERSION = 2
_KEY_LEN = 16
_META = "meta.json"
#: Temporary folders of other hosts (whose pids cannot be checked) are removed after this many seconds.
STALE_AFTER_SECONDS = 24 * 3600.0


class StoreError(RuntimeError, ValueError):
    """A stored artifact cannot be used as it is (inconsistent, corrupt, or of another format)."""


class CorruptArtifactError(StoreError):
    """A stored artifact's bytes do not match the checksums recorded when it was written."""


# ------------------------------------------------------------------------------ settings keys
def _canonical(obj: Any) -> Any:
    """Plain-JSON form of settings: dicts with sorted string keys, tuples as lists, floats exact."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"settings keys must be strings, got {k!r} ({type(k).__name__})")
            out[k] = _canonical(v)
        return dict(sorted(out.items()))
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            raise ValueError(f"settings must be finite numbers, got {f}")
        # integral floats hash like ints so that `lam: 1` and `lam: 1.0` are the same setting
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"settings must be JSON-like (dict, list, str, number, bool, None); got {type(obj).__name__}")


def canonical_json(settings: Any) -> str:
    """The canonical JSON text of `settings` (sorted keys, no whitespace) that `settings_hash` hashes."""
    return json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(settings: Any) -> str:
    """16 hex digits of SHA-256 over `canonical_json(settings)`; equal settings give equal keys."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:_KEY_LEN]


def _keyed(settings: Any, inputs: Mapping[str, str] | None) -> Any:
    """What a key hashes: the settings alone, or settings and input checksums together."""
    if not inputs:
        return settings
    for name, digest in inputs.items():
        if not isinstance(digest, str) or not digest:
            raise TypeError(f"input checksum {name!r} must be a non-empty string (from content_hash or "
                            f"Store.checksum); got {digest!r}")
    return {"settings": settings, "inputs": dict(inputs)}


# ------------------------------------------------------------------------------ content hashes
def _as_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), np.dtype(t.numpy().dtype).str


def _hash_into(h, obj: Any) -> None:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        a, dt = _as_numpy(obj)
        h.update(f"A{dt}{list(a.shape)}".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("content_hash cannot hash object arrays; use numeric arrays")
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{list(a.shape)}".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        return
    if isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            ks = str(k).encode()
            h.update(b"K%d:" % len(ks) + ks)
            _hash_into(h, obj[k])
        return
    if isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _hash_into(h, v)
        return
    text = canonical_json(obj).encode()
    h.update(b"J%d:" % len(text) + text)


def content_hash(obj: Any) -> str:
    """SHA-256 (64 hex digits) of the content of a tensor, array, model, or nested dict/list of those.

    A model is hashed through its ``state_dict()`` (names, dtypes, shapes and bytes of every parameter
    and buffer), so two models with equal weights hash equally and any changed weight changes the hash.
    A tensor and a NumPy array with the same dtype, shape and values hash equally. Use the result in a
    stage's key (``Store.fetch(..., inputs={"teacher": content_hash(model)})``) so that the stage is
    recomputed whenever what it consumed changes.

    Parameters
    ----------
    obj : torch.Tensor, numpy.ndarray, torch.nn.Module, Mapping, list, tuple or JSON scalar
        What to hash. Floats are hashed by their bytes (NaN is allowed here: it is content).

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    h = hashlib.sha256()
    _hash_into(h, obj)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks of ``chunk`` bytes (64 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ atomic files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def owner_tag() -> str:
    """``<host>.<pid>`` of this process, as written into the names of its temporary files and folders.

    :meth:`Store.clean_partial` reads it back to tell an abandoned temporary entry (owner gone) from an
    in-progress one. The host name is reduced to letters, digits and ``-``.
    """
    host = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, ``fsync`` and ``os.replace``.

    The temporary file is removed if anything fails; the folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------ artifact folders
def _encode(obj: Any, arrays: list, where: str) -> Any:
    """Replace array leaves by manifest references, collecting the arrays (in order) into `arrays`."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            raise TypeError(f"{where}: bfloat16 tensors are not supported by the store; cast to float32")
        arrays.append(t.contiguous().numpy())
        return {"__array__": len(arrays) - 1, "torch": True}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: object arrays cannot be stored safely; use numeric arrays")
        arrays.append(np.ascontiguousarray(obj))
        return {"__array__": len(arrays) - 1, "torch": False}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: artifact keys must be strings, got {k!r}")
            if k in ("__array__", "__float__"):
                raise ValueError(f"{where}: the key {k!r} is reserved by the store")
            out[k] = _encode(v, arrays, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}  # JSON has no NaN/inf: a tagged string that _decode turns back
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"{where}: cannot store a {type(obj).__name__}; artifacts hold tensors, arrays and JSON values"
    )


def _decode(obj: Any, arrays: list) -> Any:
    if isinstance(obj, dict):
        if "__array__" in obj:
            a = arrays[obj["__array__"]]
            return torch.from_numpy(np.array(a)) if obj["torch"] else a
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def artifact_checksum(body: Any, array_digests: list[str]) -> str:
    """The content checksum of an artifact: SHA-256 over its JSON body and its arrays' file digests.

    ``body`` is the JSON part with arrays replaced by manifest references; ``array_digests`` are the
    SHA-256 of the ``.npy`` files in order (each covers dtype, shape and bytes). 64 hex digits.
    """
    text = json.dumps({"body": body, "arrays": list(array_digests)}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class _HashingWriter:
    """File-like object that writes to ``fh`` and feeds every byte to a SHA-256 (``np.save`` writes to it
    in bounded chunks, so no second copy of a large array is made)."""

    def __init__(self, fh):
        self.fh = fh
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.fh.write(data)


def _save_npy(path: Path, a: np.ndarray) -> str:
    """Write ``a`` as ``.npy`` to `path` (flushed and fsync-ed); returns the file's SHA-256."""
    with open(path, "wb") as fh:
        w = _HashingWriter(fh)
        np.save(w, a, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return w.sha.hexdigest()


def write_artifact(path: str | os.PathLike, artifact: Mapping[str, Any], record: Mapping[str, Any] | None = None,
                   *, replace: bool = True) -> str:
    """Write `artifact` as the folder `path` atomically, with checksums; returns its content checksum.

    Parameters
    ----------
    path : path-like
        The artifact folder to create (its parent is created if needed).
    artifact : Mapping
        Nested dict whose leaves are tensors, NumPy arrays or JSON values (non-finite floats are
        stored as tagged strings and come back as floats).
    record : Mapping, optional
        Extra JSON fields stored in ``meta.json`` beside the checksums (e.g. settings, inputs).
    replace : bool
        Replace an existing folder at `path` (moved aside, then removed); if False, or if another
        process put a complete artifact there while this one was being written, the existing one is
        kept and this write is discarded.

    Returns
    -------
    str
        The checksum recorded in ``meta.json`` (:func:`artifact_checksum`).
    """
    if not isinstance(artifact, Mapping):
        raise TypeError(f"an artifact is a dict of tensors/arrays/JSON values, got {type(artifact).__name__}")
    final = Path(path)
    arrays: list = []
    body = _encode(dict(artifact), arrays, final.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f".{final.name}.{owner_tag()}.{uuid.uuid4().hex[:8]}"
    tmp = final.parent / f"{tag}.tmp"
    tmp.mkdir()
    try:
        digests = [_save_npy(tmp / f"a{i:05d}.npy", a) for i, a in enumerate(arrays)]
        checksum = artifact_checksum(body, digests)
        meta = {**dict(record or {}), "format": FORMAT_VERSION, "n_arrays": len(arrays), "body": body,
                "arrays": digests, "checksum": checksum}
        # meta.json last: its presence marks a complete artifact
        with open(tmp / _META, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, sort_keys=True, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists() and replace:
            trash = final.parent / f"{tag}.del"
            try:
                os.replace(final, trash)
            except FileNotFoundError:  # another process removed it meanwhile
                pass
            else:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # the folder exists and is not empty: another writer finished first (or replace=False)
            if not (final / _META).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            log.debug("%s was written by another process meanwhile; keeping that copy", final)
            return _read_meta(final).get("checksum", "")
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checksum


def _read_meta(d: Path) -> dict:
    try:
        with open(d / _META, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptArtifactError(f"cannot read {d / _META} ({type(e).__name__}: {e}); delete {d} "
                                   "to recompute it") from None
    if not isinstance(meta, dict):
        raise CorruptArtifactError(f"{d / _META} is not an artifact record; delete {d} to recompute it")
    return meta


def read_artifact(path: str | os.PathLike, mmap: bool = False, verify: bool = True) -> tuple[dict, dict]:
    """Read an artifact folder written by :func:`write_artifact`, verifying every checksum.

    Parameters
    ----------
    path : path-like
        The artifact folder.
    mmap : bool
        Map NumPy arrays read-only instead of reading them (tensors are always copied).
    verify : bool
        Check each array file's SHA-256 and the artifact checksum (default). Only skip this for
        a folder just verified in the same process.

    Returns
    -------
    (artifact, meta) : (dict, dict)
        The artifact (tensors as tensors, arrays as arrays) and the ``meta.json`` record.

    Raises
    ------
    FileNotFoundError
        No complete artifact at `path`.
    CorruptArtifactError
        A file is missing, unreadable or does not match its recorded checksum.
    StoreError
        The folder was written by another store format.
    """
    d = Path(path)
    if not (d / _META).is_file():
        raise FileNotFoundError(f"no stored artifact at {d} (no {_META})")
    meta = _read_meta(d)
    if meta.get("format") != FORMAT_VERSION:
        raise StoreError(f"{d} was written by store format {meta.get('format')!r}, this dntk reads format "
                         f"{FORMAT_VERSION}; delete it (or use another folder) to recompute it")
    try:
        n = int(meta["n_arrays"])
        digests = list(meta["arrays"])
        body = meta["body"]
        recorded = meta["checksum"]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptArtifactError(f"{d / _META} lacks field {e}; delete {d} to recompute it") from None
    if len(digests) != n:
        raise CorruptArtifactError(f"{d / _META} lists {len(digests)} checksums for {n} arrays; delete {d}")
    if verify and artifact_checksum(body, digests) != recorded:
        raise CorruptArtifactError(f"{d / _META} was modified after it was written (checksum mismatch); "
                                   f"delete {d} to recompute it")
    arrays = []
    for i in range(n):
        f = d / f"a{i:05d}.npy"
        if not f.is_file():
            raise CorruptArtifactError(f"artifact {d} is missing {f.name}; delete {d} to recompute it")
        if verify and file_sha256(f) != digests[i]:
            raise CorruptArtifactError(f"{f} does not match its recorded SHA-256 (corrupted on disk); "
                                       f"delete {d} to recompute it")
        try:
            arrays.append(np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None))
        except (ValueError, OSError, EOFError) as e:
            raise CorruptArtifactError(f"{f} is not a readable array ({e}); delete {d} to recompute it") from None
    try:
        return _decode(body, arrays), meta
    except (IndexError, KeyError, TypeError) as e:
        raise CorruptArtifactError(f"{d / _META} has a malformed body ({e}); delete {d}") from None


# ------------------------------------------------------------------------------ the store
class Fetched(NamedTuple):
    """What :meth:`Store.fetch` returns."""

    key: str            #: the artifact's key (hash of settings and inputs)
    artifact: dict      #: the stored artifact
    checksum: str       #: its content checksum (64 hex digits), to key what consumes it
    status: str         #: "cached", "computed" or "recomputed" (a corrupt copy was replaced)


class Store:
    """Checksummed artifacts under ``root/<stage>/<key>/``, keyed by settings and input checksums.

    >>> store = Store("runs/cache")
    >>> got = store.fetch("krr", {"lam_rel": 1e-3}, lambda: {"pred": pred},
    ...                   inputs={"features": feats_checksum})
    >>> got.artifact["pred"], got.status            # "computed", then "cached" on the next run

    Lower level: ``key = store.key(settings, inputs)``, ``store.has(stage, key)``,
    ``store.save(stage, key, artifact, settings, inputs)``, ``store.load(stage, key)``,
    ``store.checksum(stage, key)``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"the cache folder {self.root} is a file; choose a folder path")

    # keys and paths ------------------------------------------------------------------------
    @staticmethod
    def key(settings: Any, inputs: Mapping[str, str] | None = None) -> str:
        """The key of `settings` and the content checksums of the `inputs` a stage consumes."""
        return settings_hash(_keyed(settings, inputs))

    def path(self, stage: str, key: str) -> Path:
        """The folder of artifact `stage`/`key` (plain names only)."""
        if not isinstance(stage, str) or not stage or "/" in stage or os.sep in stage or stage.startswith("."):
            raise ValueError(f"stage name {stage!r} must be a plain folder name")
        if not isinstance(key, str) or not key or "/" in key or os.sep in key or key.startswith("."):
            raise ValueError(f"artifact key {key!r} must be a plain folder name")
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """True when a complete artifact is stored (an interrupted write leaves nothing here).

        Completeness only: :meth:`load` verifies the checksums.
        """
        return (self.path(stage, key) / _META).is_file()

    def keys(self, stage: str) -> list[str]:
        """Keys of the complete artifacts of `stage`, sorted."""
        d = self.root / stage
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / _META).is_file())

    # read / write --------------------------------------------------------------------------
    def save(self, stage: str, key: str, artifact: Mapping[str, Any], settings: Any,
             inputs: Mapping[str, str] | None = None) -> Path:
        """Store `artifact` for `settings` and `inputs` (which must hash to `key`) atomically.

        Returns the artifact's folder. An existing artifact under `key` is replaced only if it records
        the same settings and inputs (a recomputation of the same thing) or is unreadable; one that
        records other settings raises :class:`StoreError` (it was edited or copied in by hand).
        """
        if self.key(settings, inputs) != key:
            raise ValueError(f"key {key} is not the hash of the given settings and inputs "
                             f"({self.key(settings, inputs)}); use Store.key(settings, inputs)")
        final = self.path(stage, key)
        if (final / _META).is_file():
            try:
                self._check_meta(stage, key, _read_meta(final))
            except CorruptArtifactError:
                pass  # unreadable: replaced below
        self._write(stage, key, artifact, settings, inputs)
        return final

    def _write(self, stage, key, artifact, settings, inputs, replace: bool = True) -> str:
        record = {"stage": stage, "key": key, "settings": _canonical(settings),
                  "inputs": _canonical(dict(inputs or {}))}
        checksum = write_artifact(self.path(stage, key), artifact, record, replace=replace)
        log.debug("stored %s/%s", stage, key)
        return checksum

    def load(self, stage: str, key: str, mmap: bool = False) -> dict:
        """The artifact stored under `key`, verified against its checksums.

        `mmap=True` maps NumPy arrays read-only instead of reading them (tensors are always copied).
        Raises `KeyError` if absent, :class:`CorruptArtifactError` if its bytes changed and
        :class:`StoreError` if the folder holds another artifact.
        """
        d = self.path(stage, key)
        if not (d / _META).is_file():
            raise KeyError(f"no artifact {stage}/{key} under {self.root}")
        self._check_meta(stage, key, _read_meta(d))
        art, _ = read_artifact(d, mmap=mmap)
        return art

    def fetch(self, stage: str, settings: Any, compute: Callable[[], Mapping[str, Any]],
              inputs: Mapping[str, str] | None = None, mmap: bool = False) -> Fetched:
        """Load the artifact of `stage` for `settings` and `inputs`, or compute and store it.

        A stored copy that fails verification is reported in one warning line and recomputed.

        Parameters
        ----------
        stage : str
            Folder name of the stage.
        settings : JSON-like
            Everything that determines the result besides the inputs.
        compute : callable
            ``compute() -> dict`` producing the artifact when it is not stored (or is corrupt).
        inputs : Mapping[str, str], optional
            Content checksums of what the stage consumes (:func:`content_hash`, :meth:`checksum`).
        mmap : bool
            As in :meth:`load`.

        Returns
        -------
        Fetched
            ``(key, artifact, checksum, status)``.
        """
        key = self.key(settings, inputs)
        d = self.path(stage, key)
        status = "computed"
        if (d / _META).is_file():
            try:
                self._check_meta(stage, key, _read_meta(d))
                art, meta = read_artifact(d, mmap=mmap)
                return Fetched(key, art, meta["checksum"], "cached")
            except StoreError as e:
                log.warning("dntk: %s; recomputing it", str(e).split("; delete")[0])
                self.delete(stage, key)
                status = "recomputed"
        self._check_writable(stage)  # before a possibly long computation, not after it
        written = None
        art = dict(compute())
        if not (d / _META).is_file():  # else another process stored it meanwhile: keep that copy
            # never move aside a copy that another process finished meanwhile (it may be reading it back)
            written = self._write(stage, key, art, settings, inputs, replace=False)
        # read back what is on disk, so a computed artifact is exactly what a later run loads; verified
        # unless it is the copy this call just wrote (a concurrent writer's copy is checked in full)
        meta = _read_meta(d)
        self._check_meta(stage, key, meta)
        art, meta = read_artifact(d, mmap=mmap, verify=meta.get("checksum") != written)
        return Fetched(key, art, meta["checksum"], status)

    def checksum(self, stage: str, key: str) -> str:
        """The recorded content checksum of a stored artifact (64 hex digits; not re-verified)."""
        meta = _read_meta(self.path(stage, key))
        self._check_meta(stage, key, meta)
        return str(meta["checksum"])

    def settings(self, stage: str, key: str) -> dict:
        """The settings recorded with an artifact."""
        meta = _read_meta(self.path(stage, key))
        self._check_meta(stage, key, meta)
        return meta["settings"]

    def inputs(self, stage: str, key: str) -> dict:
        """The input checksums recorded with an artifact (empty if it consumed none)."""
        meta = _read_meta(self.path(stage, key))
        self._check_meta(stage, key, meta)
        return dict(meta.get("inputs") or {})

    def delete(self, stage: str, key: str) -> None:
        """Remove an artifact (moved aside first, so readers never see half of it)."""
        d = self.path(stage, key)
        if d.exists():
            trash = d.parent / f".{key}.{owner_tag()}.{uuid.uuid4().hex[:8]}.del"
            try:
                os.replace(d, trash)
            except FileNotFoundError:
                return
            shutil.rmtree(trash, ignore_errors=True)

    def clean_partial(self, stale_after: float = STALE_AFTER_SECONDS) -> int:
        """Remove leftovers of interrupted writes whose owner process is gone; returns the count.

        A temporary entry (``.*.tmp``, ``.*.del``, ``.*.old``) named with this host and a pid is
        removed when that pid no longer runs; one of another host, or with no owner in its name, is
        removed only once untouched for `stale_after` seconds. In-progress writes of live processes
        are never touched, so concurrent runs sharing this store both finish.
        """
        n = 0
        if not self.root.is_dir():
            return 0
        host = owner_tag().rsplit(".", 1)[0]
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir() or stage_dir.name.startswith("."):
                continue
            for p in stage_dir.iterdir():
                if not (p.name.startswith(".") and p.suffix in {".tmp", ".old", ".del"}):
                    continue
                if not _orphaned(p, host, stale_after):
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
        return n

    # internals -----------------------------------------------------------------------------
    def _check_writable(self, stage: str) -> None:
        d = self.root / stage
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the cache folder {d} ({type(e).__name__}: {e.strerror or e}); "
                             "choose a writable cache folder") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise StoreError(f"the cache folder {d} is not writable; choose a writable cache folder")

    @staticmethod
    def _check_meta(stage: str, key: str, meta: dict) -> None:
        where = f"cached artifact {stage}/{key}"
        if meta.get("format") != FORMAT_VERSION:
            raise StoreError(
                f"{where} was written by store format {meta.get('format')!r}, this is "
                f"format {FORMAT_VERSION}; delete it (or use another cache folder) to recompute"
            )
        if meta.get("stage") != stage or meta.get("key") != key:
            raise StoreError(f"{where} holds {meta.get('stage')}/{meta.get('key')}; delete it to recompute")
        try:
            h = settings_hash(_keyed(meta.get("settings"), meta.get("inputs") or None))
        except (TypeError, ValueError) as e:
            raise StoreError(f"{where} has unreadable settings ({e}); delete it to recompute") from None
        if h != key:
            raise StoreError(
                f"{where} holds results of other settings (they hash to {h}): "
                "it was edited or copied from elsewhere; delete it or choose another cache folder"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _orphaned(p: Path, host: str, stale_after: float) -> bool:
    """True if the temporary entry `p` (``.<name>.<host>.<pid>.<rand>.<suffix>``) has no live owner."""
    parts = p.name[1:].rsplit(".", 4)  # name may contain dots; the last four fields are fixed
    if len(parts) == 5 and parts[2].isdigit() and parts[1] == host:
        return not _pid_alive(int(parts[2]))
    try:
        age = time.time() - p.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > stale_after
