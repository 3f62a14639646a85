"""Tests for dntk.store: round trips, keys, atomicity and refusal of inconsistent artifacts."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from dntk.store import Store, StoreError, atomic_write_text, canonical_json, settings_hash


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


def test_leftover_tmp_folder_is_ignored_and_cleaned(tmp_path):
    store = Store(tmp_path)
    s = {"a": 3}
    key = store.key(s)
    leftover = tmp_path / "st" / f".{key}.deadbeef.tmp"
    leftover.mkdir(parents=True)
    (leftover / "a00000.npy").write_bytes(b"partial")
    assert not store.has("st", key) and store.keys("st") == []
    assert store.clean_partial() == 1
    assert not leftover.exists()


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
