"""On-disk artifact cache for the pipeline: atomic writes, keyed by a hash of the settings.

An artifact is a (possibly nested) dict whose leaves are tensors, NumPy arrays or JSON values
(numbers, strings, booleans, None, lists of those). It is stored as one directory
``<root>/<stage>/<key>/`` holding ``meta.json`` (the settings that produced it, the JSON part and a
manifest of arrays) and one ``.npy`` file per array. The directory is assembled under a temporary
name and renamed into place in one ``os.replace`` call, so a crash mid-write never leaves a
half-written artifact: either the whole directory is there or none of it is. Loading never unpickles
(``np.load(allow_pickle=False)``), so a cache directory from elsewhere cannot run code.

The key is ``settings_hash(settings)``: the SHA-256 of the canonical JSON of the settings (sorted
keys, floats by ``repr``), so equal settings give the same key on every machine and run. A stored
artifact whose recorded settings do not hash to its directory name (edited by hand, copied from
another run, written by a different code version) raises :class:`StoreError` instead of being used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["Store", "StoreError", "settings_hash", "canonical_json", "atomic_write_text", "atomic_write_bytes"]

log = logging.getLogger("dntk")

FORMAT_VERSION = 1
_KEY_LEN = 16


class StoreError(RuntimeError):
    """A cache directory is inconsistent with the settings that claim to have produced it."""


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
            if k == "__array__":
                raise ValueError(f"{where}: the key '__array__' is reserved by the store")
            out[k] = _encode(v, arrays, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
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
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


class Store:
    """Artifacts under ``root/<stage>/<key>/``, written atomically, keyed by ``settings_hash``.

    >>> store = Store("runs/cache")
    >>> key = store.key({"lam_rel": 1e-3, "upstream": "9f0c..."})
    >>> if not store.has("krr", key):
    ...     store.save("krr", key, {"pred": pred}, settings)
    >>> store.load("krr", key)["pred"]
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # keys and paths ------------------------------------------------------------------------
    @staticmethod
    def key(settings: Any) -> str:
        return settings_hash(settings)

    def path(self, stage: str, key: str) -> Path:
        if not stage or "/" in stage or stage.startswith("."):
            raise ValueError(f"stage name {stage!r} must be a plain folder name")
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"artifact key {key!r} must be a plain folder name")
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """True when a complete artifact is stored (an interrupted write leaves nothing here)."""
        return (self.path(stage, key) / "meta.json").is_file()

    def keys(self, stage: str) -> list[str]:
        d = self.root / stage
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file())

    # read / write --------------------------------------------------------------------------
    def save(self, stage: str, key: str, artifact: Mapping[str, Any], settings: Any) -> Path:
        """Store `artifact` for `settings` (whose hash must be `key`) atomically; returns its folder.

        An existing artifact under the same key is replaced only if it was produced by the same
        settings (same key ⇒ same settings, so the content is a recomputation of the same thing).
        """
        if settings_hash(settings) != key:
            raise ValueError(f"key {key} is not the hash of the given settings ({settings_hash(settings)})")
        if not isinstance(artifact, Mapping):
            raise TypeError(f"an artifact is a dict of tensors/arrays/JSON values, got {type(artifact).__name__}")
        final = self.path(stage, key)
        if final.exists():
            self._check_meta(stage, key, self._read_meta(final))
        arrays: list = []
        body = _encode(dict(artifact), arrays, stage)
        meta = {
            "format": FORMAT_VERSION,
            "stage": stage,
            "key": key,
            "settings": _canonical(settings),
            "n_arrays": len(arrays),
            "body": body,
        }
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            for i, a in enumerate(arrays):
                with open(tmp / f"a{i:05d}.npy", "wb") as fh:
                    np.save(fh, a, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            # meta.json last: its presence marks a complete artifact
            with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
                json.dump(meta, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if final.exists():  # same settings: swap the old copy out, then delete it
                old = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.debug("stored %s/%s (%d arrays)", stage, key, len(arrays))
        return final

    def load(self, stage: str, key: str, mmap: bool = False) -> dict:
        """The artifact stored under `key`, tensors as tensors and arrays as arrays.

        `mmap=True` maps NumPy arrays read-only instead of reading them (tensors are always copied).
        Raises `KeyError` if absent and :class:`StoreError` if the folder is inconsistent.
        """
        d = self.path(stage, key)
        if not (d / "meta.json").is_file():
            raise KeyError(f"no artifact {stage}/{key} under {self.root}")
        meta = self._read_meta(d)
        self._check_meta(stage, key, meta)
        arrays = []
        for i in range(int(meta["n_arrays"])):
            f = d / f"a{i:05d}.npy"
            if not f.is_file():
                raise StoreError(f"artifact {d} is missing {f.name}; delete the folder to recompute it")
            arrays.append(np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None))
        return _decode(meta["body"], arrays)

    def settings(self, stage: str, key: str) -> dict:
        """The settings recorded with an artifact."""
        meta = self._read_meta(self.path(stage, key))
        self._check_meta(stage, key, meta)
        return meta["settings"]

    def delete(self, stage: str, key: str) -> None:
        d = self.path(stage, key)
        if d.exists():
            trash = d.parent / f".{key}.{uuid.uuid4().hex[:8]}.del"
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def clean_partial(self) -> int:
        """Remove leftovers of interrupted writes (hidden ``.tmp``/``.old``/``.del`` folders); returns the count."""
        n = 0
        if not self.root.is_dir():
            return 0
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir():
                continue
            for p in stage_dir.iterdir():
                if p.name.startswith(".") and p.suffix in {".tmp", ".old", ".del"}:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    n += 1
        return n

    # internals -----------------------------------------------------------------------------
    @staticmethod
    def _read_meta(d: Path) -> dict:
        try:
            with open(d / "meta.json", encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"cannot read {d / 'meta.json'} ({e}); delete {d} to recompute it") from e

    @staticmethod
    def _check_meta(stage: str, key: str, meta: dict) -> None:
        if meta.get("format") != FORMAT_VERSION:
            raise StoreError(
                f"artifact {stage}/{key} was written by store format {meta.get('format')!r}, this is "
                f"format {FORMAT_VERSION}; delete it (or use another cache folder) to recompute"
            )
        if meta.get("stage") != stage or meta.get("key") != key:
            raise StoreError(f"artifact folder {stage}/{key} holds {meta.get('stage')}/{meta.get('key')}")
        try:
            h = settings_hash(meta.get("settings"))
        except (TypeError, ValueError) as e:
            raise StoreError(f"artifact {stage}/{key} has unreadable settings: {e}") from e
        if h != key:
            raise StoreError(
                f"artifact {stage}/{key} holds results of other settings (they hash to {h}); "
                "it was edited or copied from elsewhere — delete it or choose another cache folder"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"
