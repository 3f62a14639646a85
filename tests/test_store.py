"""Tests for dntk.store: round trips, keys, checksums, atomicity, safe concurrent cleanup, refusals."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dntk.store import (
    STALE_AFTER_SECONDS,
    CorruptArtifactError,
    Store,
    StoreError,
    artifact_checksum,
    atomic_write_text,
    canonical_json,
    content_hash,
    file_sha256,
    owner_tag,
    read_artifact,
    settings_hash,
    write_artifact,
)


def test_settings_hash_is_sha256_of_sorted_json():
    s = {"b": 1, "a": [1.5, "x", None, True], "c": {"z": 0.001, "y": 2}}
    text = json.dumps(
        {"a": [1.5, "x", None, True], "b": 1, "c": {"y": 2, "z": 0.001}}, separators=(",", ":")
    )
    assert canonical_json(s) == text
    assert settings_hash(s) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_settings_hash_order_and_int_float_invariance_but_sensitive_to_values():
    a = {"lam_rel": 1e-3, "k": 64, "nested": {"x": 1, "y": (2, 3)}}
    b = {"nested": {"y": [2, 3], "x": 1.0}, "k": 64, "lam_rel": 0.001}
    assert settings_hash(a) == settings_hash(b)
    assert settings_hash(a) != settings_hash({**a, "lam_rel": 1e-2})
    assert settings_hash({"flag": True}) != settings_hash({"flag": 1})
    with pytest.raises(ValueError):
        settings_hash({"x": float("nan")})
    with pytest.raises(TypeError):
        settings_hash({"x": object()})


def test_round_trip_nested_tensors_arrays_json(tmp_path):
    store = Store(tmp_path)
    g = torch.Generator().manual_seed(0)
    art = {
        "features": torch.randn(5, 3, 4, generator=g),
        "labels": torch.arange(5),
        "np": np.linspace(0, 1, 7).astype(np.float64),
        "classes": [{"G_syn": torch.randn(2, 4, generator=g), "r": 3}, {"G_syn": torch.zeros(0, 4), "r": 0}],
        "info": {"name": "digits", "acc": 0.95, "none": None, "flag": False},
    }
    settings = {"stage": "x", "k": 4}
    key = store.key(settings)
    assert not store.has("feat", key)
    store.save("feat", key, art, settings)
    assert store.has("feat", key) and store.keys("feat") == [key]
    back = store.load("feat", key)
    assert torch.equal(back["features"], art["features"]) and back["features"].dtype == torch.float32
    assert torch.equal(back["labels"], art["labels"]) and back["labels"].dtype == torch.int64
    assert isinstance(back["np"], np.ndarray) and np.array_equal(back["np"], art["np"])
    assert torch.equal(back["classes"][0]["G_syn"], art["classes"][0]["G_syn"])
    assert back["classes"][1]["G_syn"].shape == (0, 4) and back["classes"][0]["r"] == 3
    assert back["info"] == art["info"]
    assert store.settings("feat", key) == {"k": 4, "stage": "x"}
    mm = store.load("feat", key, mmap=True)["np"]
    assert isinstance(mm, np.memmap) and np.array_equal(mm, art["np"])


def test_save_rejects_wrong_key_and_unstorable_values(tmp_path):
    store = Store(tmp_path)
    s = {"a": 1}
    with pytest.raises(ValueError, match="not the hash"):
        store.save("st", "0" * 16, {"x": 1}, s)
    with pytest.raises(TypeError, match="cannot store"):
        store.save("st", store.key(s), {"x": object()}, s)
    with pytest.raises(TypeError, match="object arrays"):
        store.save("st", store.key(s), {"x": np.array([None, 1], dtype=object)}, s)
    assert store.keys("st") == []  # nothing half-written
    with pytest.raises(KeyError):
        store.load("st", store.key(s))


def test_crash_mid_write_leaves_no_artifact(tmp_path, monkeypatch):
    store = Store(tmp_path)
    s = {"a": 2}
    key = store.key(s)
    calls = {"n": 0}
    real_save = np.save

    def failing_save(fh, a, allow_pickle=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_save(fh, a, allow_pickle=allow_pickle)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        store.save("st", key, {"a": np.ones(3), "b": np.zeros(2), "c": np.zeros(1)}, s)
    monkeypatch.setattr(np, "save", real_save)
    assert not store.has("st", key)
    assert os.listdir(tmp_path / "st") == []  # temporary folder removed
    store.save("st", key, {"a": np.ones(3)}, s)
    assert np.array_equal(store.load("st", key)["a"], np.ones(3))


def test_leftover_of_a_dead_process_is_cleaned_but_a_live_ones_is_kept(tmp_path):
    store = Store(tmp_path)
    s = {"a": 3}
    key = store.key(s)
    host = owner_tag().rsplit(".", 1)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    orphan = tmp_path / "st" / f".{key}.{host}.{dead_pid}.deadbeef.tmp"
    live = tmp_path / "st" / f".{key}.{host}.{os.getpid()}.cafecafe.tmp"
    other_host = tmp_path / "st" / f".{key}.elsewhere.{dead_pid}.01234567.tmp"
    unnamed_old = tmp_path / "st" / f".{key}.deadbeef.tmp"
    for p in (orphan, live, other_host, unnamed_old):
        p.mkdir(parents=True)
        (p / "a00000.npy").write_bytes(b"partial")
    old = time.time() - 2 * STALE_AFTER_SECONDS
    os.utime(unnamed_old, (old, old))
    assert not store.has("st", key) and store.keys("st") == []
    assert store.clean_partial() == 2
    assert not orphan.exists() and not unnamed_old.exists()
    assert live.exists() and other_host.exists()  # owner alive / cannot be checked and recent


_CONCURRENT = r"""
import sys, numpy as np
from dntk.store import Store
store = Store(sys.argv[1])
tag = int(sys.argv[2])
for i in range(15):
    store.clean_partial()
    s = {"writer": tag, "i": i}
    got = store.fetch("st", s, lambda: {"x": np.full(300_000, float(tag * 100 + i))})
    assert float(got.artifact["x"][0]) == tag * 100 + i
print("ok")
"""


def test_two_processes_writing_into_one_store_both_finish(tmp_path):
    """Each process cleans partial writes before every save (as a pipeline run does at start); neither may
    delete the other's in-progress temporary folder."""
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tmp_path), str(t)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for t in (1, 2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    store = Store(tmp_path)
    assert len(store.keys("st")) == 30
    assert [p.name for p in (tmp_path / "st").iterdir() if p.name.startswith(".")] == []


def test_concurrent_writers_of_one_key_keep_one_complete_copy(tmp_path):
    store = Store(tmp_path)
    s = {"same": 1}
    key = store.key(s)
    d = store.path("st", key)
    first = write_artifact(d, {"x": np.arange(4.0)}, {"stage": "st", "key": key, "settings": s, "inputs": {}})
    # a second writer that finishes after the first one and must not replace its copy
    again = write_artifact(d, {"x": np.arange(4.0)}, {"stage": "st", "key": key, "settings": s, "inputs": {}},
                           replace=False)
    assert again == first and np.array_equal(store.load("st", key)["x"], np.arange(4.0))
    assert sorted(os.listdir(d.parent)) == [key]


def test_artifact_from_other_settings_is_refused(tmp_path):
    store = Store(tmp_path)
    s = {"lam_rel": 1e-3}
    key = store.key(s)
    d = store.save("krr", key, {"p": np.ones(2)}, s)
    meta = json.loads((d / "meta.json").read_text())
    meta["settings"] = {"lam_rel": 1e-2}  # e.g. copied in from another run
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="other settings"):
        store.load("krr", key)
    with pytest.raises(StoreError, match="other settings"):
        store.save("krr", key, {"p": np.zeros(2)}, s)  # nothing overwritten silently
    assert np.array_equal(np.load(d / "a00000.npy"), np.ones(2))


def test_missing_array_file_is_reported(tmp_path):
    store = Store(tmp_path)
    s = {"a": 4}
    d = store.save("st", store.key(s), {"x": np.ones(2)}, s)
    (d / "a00000.npy").unlink()
    with pytest.raises(StoreError, match="missing"):
        store.load("st", store.key(s))


def test_resave_same_settings_replaces_and_delete(tmp_path):
    store = Store(tmp_path)
    s = {"a": 5}
    key = store.key(s)
    store.save("st", key, {"x": np.ones(2)}, s)
    store.save("st", key, {"x": np.full(2, 7.0)}, s)
    assert np.array_equal(store.load("st", key)["x"], np.full(2, 7.0))
    assert sorted(os.listdir(tmp_path / "st")) == [key]
    store.delete("st", key)
    assert not store.has("st", key)


def test_bad_stage_or_key_names(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        store.path("../x", "abc")
    with pytest.raises(ValueError):
        store.path("st", "a/b")


def test_atomic_write_text(tmp_path):
    p = tmp_path / "sub" / "result.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["result.json"]


# ------------------------------------------------------------------------------ checksums
def test_recorded_checksums_match_an_independent_sha256_of_the_files(tmp_path):
    store = Store(tmp_path)
    s = {"a": 6}
    d = store.save("st", store.key(s), {"x": np.arange(5.0), "y": torch.ones(2, 3), "n": 3}, s)
    meta = json.loads((d / "meta.json").read_text())
    files = [hashlib.sha256((d / f"a{i:05d}.npy").read_bytes()).hexdigest() for i in range(2)]
    assert meta["arrays"] == files
    assert file_sha256(d / "a00001.npy") == files[1]
    body_and_digests = json.dumps({"body": meta["body"], "arrays": files}, sort_keys=True, separators=(",", ":"))
    assert meta["checksum"] == hashlib.sha256(body_and_digests.encode()).hexdigest()
    assert artifact_checksum(meta["body"], files) == meta["checksum"] == store.checksum("st", store.key(s))


def _corrupt_same_size(f):
    raw = bytearray(f.read_bytes())
    raw[-8:] = os.urandom(8) if raw[-8:] != b"\x00" * 8 else b"\x01" * 8
    f.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["bytes", "truncate", "header", "meta-garbage", "meta-body"])
def test_corrupted_artifact_is_reported_in_one_line_naming_it(tmp_path, how):
    store = Store(tmp_path)
    s = {"a": 7}
    key = store.key(s)
    d = store.save("st", key, {"x": np.arange(64.0), "v": 1}, s)
    f = d / "a00000.npy"
    if how == "bytes":
        _corrupt_same_size(f)
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[:40])
    elif how == "header":
        raw = bytearray(f.read_bytes())
        raw[:64] = b"\x00" * 64
        f.write_bytes(bytes(raw))
    elif how == "meta-garbage":
        (d / "meta.json").write_bytes(b"\xff\xfe garbage")
    else:
        meta = json.loads((d / "meta.json").read_text())
        meta["body"]["v"] = 2
        (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError) as e:
        store.load("st", key)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and "delete" in msg


def test_fetch_computes_then_caches_then_recomputes_a_corrupt_copy(tmp_path, caplog):
    store = Store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0)}

    a = store.fetch("st", {"k": 1}, compute, inputs={"teacher": "ab" * 32})
    b = store.fetch("st", {"k": 1}, compute, inputs={"teacher": "ab" * 32})
    assert (a.status, b.status, len(calls)) == ("computed", "cached", 1)
    assert a.key == b.key == store.key({"k": 1}, {"teacher": "ab" * 32}) != store.key({"k": 1})
    assert a.checksum == b.checksum and torch.equal(b.artifact["x"], torch.arange(6.0))
    assert store.inputs("st", a.key) == {"teacher": "ab" * 32}
    other = store.fetch("st", {"k": 1}, compute, inputs={"teacher": "cd" * 32})  # other teacher weights
    assert other.status == "computed" and other.key != a.key and len(calls) == 2
    _corrupt_same_size(store.path("st", a.key) / "a00000.npy")
    with caplog.at_level("WARNING", logger="dntk"):
        c = store.fetch("st", {"k": 1}, compute, inputs={"teacher": "ab" * 32})
    assert c.status == "recomputed" and len(calls) == 3 and torch.equal(c.artifact["x"], torch.arange(6.0))
    assert any("SHA-256" in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
    assert store.fetch("st", {"k": 1}, compute, inputs={"teacher": "ab" * 32}).status == "cached"


def test_read_artifact_outside_a_store(tmp_path):
    d = tmp_path / "set"
    checksum = write_artifact(d, {"images": torch.zeros(2, 1, 3, 3), "meta": {"ipc": 1}}, {"kind": "test"})
    art, meta = read_artifact(d)
    assert meta["kind"] == "test" and meta["checksum"] == checksum and art["meta"] == {"ipc": 1}
    with pytest.raises(FileNotFoundError, match="no stored artifact"):
        read_artifact(tmp_path / "nothing")
    write_artifact(tmp_path / "nan", {"r2": float("nan"), "hi": float("inf"), "lo": [float("-inf")]})
    back, _ = read_artifact(tmp_path / "nan")
    assert np.isnan(back["r2"]) and back["hi"] == float("inf") and back["lo"] == [float("-inf")]
    with pytest.raises(ValueError, match="reserved"):
        write_artifact(tmp_path / "bad", {"__float__": "1"})
    assert not (tmp_path / "bad").exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_content_hash_follows_content_not_identity():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 4, generator=g)
    assert content_hash(t) == content_hash(t.clone()) == content_hash(t.numpy().copy())
    assert content_hash(t) == hashlib.sha256(b"A<f4[3, 4]" + t.numpy().tobytes()).hexdigest()
    assert content_hash(t) != content_hash(t.reshape(4, 3))  # same bytes, other shape
    assert content_hash(t) != content_hash(t.double())
    assert content_hash(t.T) == content_hash(t.T.contiguous())
    from dntk import models

    m1, m2 = models.build("mlp", 3, width=4, seed=0), models.build("mlp", 3, width=4, seed=0)
    assert content_hash(m1) == content_hash(m2) == content_hash(m1.state_dict())
    with torch.no_grad():
        m2.head.bias[0] += 1e-6
    assert content_hash(m1) != content_hash(m2)
    assert content_hash({"a": t, "b": [1, "x"]}) == content_hash({"b": (1, "x"), "a": t.clone()})
    assert content_hash({"a": t}) != content_hash({"b": t})


def test_store_root_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        Store(f)


def test_fetch_checks_the_folder_is_writable_before_computing(tmp_path):
    (tmp_path / "st").write_text("a file where the stage folder should be")
    calls = []
    with pytest.raises(StoreError, match="cannot create the cache folder") as e:
        Store(tmp_path).fetch("st", {"a": 1}, lambda: calls.append(1) or {"x": 1})
    assert calls == [] and str(tmp_path / "st") in str(e.value)
