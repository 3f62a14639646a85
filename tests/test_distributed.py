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
