"""Sharded featurisation: equals the single-process result, resumes, refuses foreign files."""
import numpy as np
import pytest
import torch

from dntk import distributed, models, projection, tangent


def _setup():
    model = models.build("convnet", 3, in_channels=1, width=4, seed=0)
    X = torch.rand(13, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return model, X, projection.make("gaussian", 32, seed=3)


def _rank_job(path):
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path, batch_size=4)


@pytest.mark.parametrize("n,w", [(10, 3), (2, 4), (7, 1), (100, 7)])
def test_shards_partition_the_rows(n, w):
    bounds = [distributed.shard(n, w, r) for r in range(w)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_two_gloo_ranks_equal_single_process(tmp_path):
    path = str(tmp_path / "feats.f32")
    distributed.launch(_rank_job, world_size=2, args=(path,))
    model, X, R = _setup()
    ref = tangent.class_gradients(model, X, projector=R, method="exact")
    got = np.memmap(path, dtype="float32", mode="r", shape=tuple(ref.shape))
    assert distributed.is_complete(path)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_resume_computes_only_missing_shards(tmp_path, monkeypatch):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path, rank=0, world_size=2)
    assert not distributed.is_complete(path)
    calls = []
    real = tangent.class_gradients
    monkeypatch.setattr(tangent, "class_gradients", lambda m, x, **kw: calls.append(len(x)) or real(m, x, **kw))
    distributed.class_gradients(model, X, R, path, rank=0, world_size=2)  # already done: nothing computed
    assert calls == []
    out = distributed.class_gradients(model, X, R, path, rank=1, world_size=2)
    assert calls == [distributed.shard(13, 2, 1)[1] - distributed.shard(13, 2, 1)[0]]
    assert distributed.is_complete(path)
    ref = real(model, X, projector=R, method="exact")
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


class _RecordingDataset(torch.utils.data.Dataset):
    """A Dataset of ``(x, 0)`` that records which rows were read."""

    def __init__(self, X):
        self.X, self.read = X, set()

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        self.read.add(int(i))
        return self.X[i], 0


@pytest.mark.parametrize("digest", [None, "digest-of-the-inputs"])
def test_each_rank_reads_only_its_shard_of_a_dataset(tmp_path, digest):
    """Featurising a Dataset, a rank reads only its own rows; the shards together equal one process's
    features bit for bit; with the caller's digest a finished shard is reused without reading its rows."""
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    ds = _RecordingDataset(X)
    for rank in (0, 1):
        ds.read.clear()
        distributed.class_gradients(model, ds, R, path, rank=rank, world_size=2, batch_size=4, inputs_digest=digest)
        assert ds.read == set(range(*distributed.shard(len(X), 2, rank)))
    ref = tangent.class_gradients(model, X, projector=R, batch_size=5)
    np.testing.assert_array_equal(np.memmap(path, dtype="float32", mode="r", shape=tuple(ref.shape)), ref.numpy())
    start, stop = distributed.shard(len(X), 2, 1)
    ds.read.clear()
    distributed.class_gradients(model, ds, R, path, rank=1, world_size=2, inputs_digest=digest)
    assert ds.read == ({start} if digest else set(range(start, stop)))  # one row tells the number of classes
    if digest:  # another digest: the shard is recomputed
        ds.read.clear()
        distributed.class_gradients(model, ds, R, path, rank=1, world_size=2, inputs_digest="other inputs")
        assert ds.read == set(range(start, stop))


def test_foreign_file_is_refused(tmp_path):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path)
    with pytest.raises(ValueError, match="other settings"):
        distributed.class_gradients(model, X, projection.make("gaussian", 16, seed=3), path)


def test_needs_a_projector(tmp_path):
    model, X, _ = _setup()
    with pytest.raises(ValueError, match="projector"):
        distributed.class_gradients(model, X, None, str(tmp_path / "f"))


# ------------------------------------------------------------------ nothing stale is ever returned
def test_another_model_at_the_same_path_is_refused(tmp_path):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path)
    other = models.build("convnet", 3, in_channels=1, width=4, seed=1)  # same shapes, other weights
    with pytest.raises(ValueError, match="another model"):
        distributed.class_gradients(other, X, R, path)


def test_other_inputs_of_the_same_size_are_recomputed(tmp_path):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path)
    X2 = torch.rand(X.shape, generator=torch.Generator().manual_seed(5))
    got = distributed.class_gradients(model, X2, R, path)
    ref = tangent.class_gradients(model, X2, projector=R, method="exact")
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_corrupted_rows_are_recomputed(tmp_path, monkeypatch):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    first = np.array(distributed.class_gradients(model, X, R, path))
    mm = np.memmap(path, dtype="float32", mode="r+", shape=first.shape)
    mm[3] = 123.0
    mm.flush()
    del mm
    calls = []
    real = tangent.class_gradients
    monkeypatch.setattr(tangent, "class_gradients", lambda m, x, **kw: calls.append(len(x)) or real(m, x, **kw))
    got = distributed.class_gradients(model, X, R, path)
    assert calls == [len(X)]
    np.testing.assert_array_equal(got, first)


def test_other_world_size_is_refused(tmp_path):
    path = str(tmp_path / "feats.f32")
    model, X, R = _setup()
    distributed.class_gradients(model, X, R, path, rank=0, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        distributed.class_gradients(model, X, R, path, rank=0, world_size=3)


# ------------------------------------------------------------------ process groups: clear errors
def test_more_ranks_than_classes_is_refused():
    with pytest.raises(distributed.DistributedError, match="exceeds the 10 classes"):
        distributed.Ranks(0, 11).check_work(10)
    distributed.Ranks(0, 10).check_work(10)


def test_nccl_without_cuda_is_refused(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(distributed.DistributedError, match="nccl backend needs CUDA"):
        distributed.init_from_env("nccl")
    with pytest.raises(distributed.DistributedError, match="nccl backend needs CUDA"):
        distributed.init_from_env(None, device="cuda")
    with pytest.raises(distributed.DistributedError, match="nccl backend needs CUDA"):
        distributed.launch(_rank_job, 2, backend="nccl")


@pytest.mark.parametrize("env, match", [({"WORLD_SIZE": "2", "RANK": "2"}, "need 0 <= RANK < WORLD_SIZE"),
                                        ({"WORLD_SIZE": "two"}, "must be integers"),
                                        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set")])
def test_bad_process_group_environment(monkeypatch, env, match):
    for var in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(distributed.DistributedError, match=match):
        distributed.init_from_env()


def test_unreachable_rendezvous_times_out_with_a_message(tmp_path):
    """A rank whose rank 0 never comes fails after the timeout with one line, instead of hanging."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nprogress: false\n")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DNTK_DIST_TIMEOUT": "3", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "dntk", "run", str(cfg)], env=env, capture_output=True, text=True,
                         timeout=120)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(err) == 1 and "could not join the 2 processes" in err[0] and "Traceback" not in out.stderr


# ------------------------------------------------------------------ the pipeline over two gloo ranks
def _pipeline_rank(cfg_dict, out_dir):
    import json

    from dntk import pipeline

    res = pipeline.run(pipeline.Config.from_dict(cfg_dict))
    rank = torch.distributed.get_rank()
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump({"metrics": res.metrics, "info": res.info, "stages": res.stages}, fh, default=str)


def test_smoke_config_over_two_gloo_ranks_equals_one_process(tmp_path, monkeypatch):
    """params/smoke.yaml: one process, then the same run shared by two gloo ranks (the teacher reused from the
    single run's cache, so the ranks distil (WMDD split over classes), featurise reading their shards of the
    datasets, and run Algorithm 1 and KRR): the distilled images and features are bit-identical, the metrics
    equal, and result.json records who did what."""
    import json
    import shutil
    from pathlib import Path

    from dntk import pipeline
    from dntk.store import Store

    monkeypatch.setenv("DNTK_CACHE", str(Path.home() / ".cache" / "dntk"))  # the shared trained teacher
    root = Path(__file__).resolve().parents[1]
    cfg = pipeline.load_config(root / "params" / "smoke.yaml").replace(
        progress=False, figures=False, run_dir=str(tmp_path / "one"), cache_dir=str(tmp_path / "cache1"),
        **{"ledger.measure": False})
    single = pipeline.run(cfg)
    shutil.copytree(tmp_path / "cache1" / "teacher", tmp_path / "cache2" / "teacher")
    d = cfg.replace(run_dir=str(tmp_path / "two"), cache_dir=str(tmp_path / "cache2")).to_dict()
    distributed.launch(_pipeline_rank, world_size=2, args=(d, str(tmp_path)))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    written = json.loads((tmp_path / "two" / "result.json").read_text())
    assert r0["metrics"] == r1["metrics"] == written["metrics"] == json.loads(json.dumps(single.metrics))
    assert written["info"]["world_size"] == 2
    work = written["info"]["work"]
    assert work["gradient_distillation[teacher]"] == {"0": [0, 1, 2, 3, 4], "1": [5, 6, 7, 8, 9]}
    assert work["features[teacher/train]"] == {"0": [0, 719], "1": [719, 1437]}
    assert work["krr[student]"] == {"0": [0, 1, 2, 3, 4], "1": [5, 6, 7, 8, 9]}
    assert work["distill"] == {"0": [0, 1, 2, 3, 4], "1": [5, 6, 7, 8, 9]}
    assert work["student"] == {"0": "all"}
    assert "teacher" not in work  # the teacher came from the cache
    computed = {(s["stage"], s["role"]) for s in written["stages"] if s["status"] == "computed"}
    assert ("features", "teacher/distilled") in computed and ("teacher", "") not in computed
    # same content keys, bit-identical features
    assert written["info"]["stage_keys"] == single.info["stage_keys"]
    s1, s2 = Store(tmp_path / "cache1"), Store(tmp_path / "cache2")
    d1, d2 = (s.load("distill", single.info["stage_keys"]["distill"]) for s in (s1, s2))
    assert all(torch.equal(d1[name], d2[name]) for name in ("images", "soft_labels", "atoms", "weights"))
    assert d1["history"] == d2["history"]
    for label, key in single.info["stage_keys"].items():
        if label.startswith("features"):
            a, b = s1.load("features", key), s2.load("features", key)
            assert np.array_equal(np.asarray(a["features"]), np.asarray(b["features"])), label
            assert torch.equal(a["logits"], b["logits"]), label


def _pipeline_rank_killed(cfg_dict, out_dir, kill_at):
    """A rank of a two-rank run; rank 1 SIGKILLs itself when it reaches Algorithm 1 for class `kill_at`
    (`kill_at` None: no kill). Every rank writes how many classes it computed."""
    import json
    import os
    import signal

    from dntk import pipeline

    rank = torch.distributed.get_rank()
    real, calls = pipeline._gd_class, []

    def counted(run, G, t, labels):
        if rank == 1 and kill_at is not None and run.computing[0] == "gradient_distillation" and len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(1)
        return real(run, G, t, labels)

    pipeline._gd_class = counted
    real_featurize, featurized = distributed.featurize, []
    distributed.featurize = lambda *a, **kw: featurized.append(1) or real_featurize(*a, **kw)
    res = pipeline.run(pipeline.Config.from_dict(cfg_dict))
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump({"metrics": res.metrics, "calls": len(calls), "featurized": len(featurized)}, fh)


def test_rank_killed_mid_run_and_relaunched_reuses_finished_work(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    from dntk import pipeline

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import TINY

    monkeypatch.setenv("DNTK_CACHE", str(tmp_path / "models"))
    d = json.loads(json.dumps(TINY))
    d.update(run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    d["student"]["enabled"] = False
    with pytest.raises(Exception):  # noqa: B017 - torch reports the killed process in its own exception type
        distributed.launch(_pipeline_rank_killed, world_size=2, args=(d, str(tmp_path), 6))
    assert not (tmp_path / "run" / "result.json").exists()
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2  # finished stages survived the kill
    distributed.launch(_pipeline_rank_killed, world_size=2, args=(d, str(tmp_path), None))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # rank 1 had finished class 5 before killing itself, so it recomputes only its other four classes;
    # how many of classes 0..4 rank 0 finished before torch terminated it depends on timing
    assert r1["calls"] == 4 and r0["calls"] <= 5
    assert r0["featurized"] == r1["featurized"] == 0
    single = pipeline.run(pipeline.Config.from_dict({**d, "run_dir": str(tmp_path / "one"),
                                                     "cache_dir": str(tmp_path / "cache1")}))
    assert r0["metrics"] == r1["metrics"] == json.loads(json.dumps(single.metrics))
