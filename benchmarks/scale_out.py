"""Scale-out benchmark: one process against two ``torch.distributed`` (gloo) ranks, and a modelled cluster.

Measured here, side by side in one run:

1. **Featurisation, split by samples** (:func:`dntk.distributed.class_gradients`): projected class
   gradients of ``N`` digits through the book's convnet into one on-disk array, by 1 and by 2 ranks, each
   rank reading only its shard of the dataset.
2. **WMDD, split by classes** (:func:`dntk.wmdd.distill` with ``classes=[c]`` under
   :func:`dntk.distributed.per_class`, assembled by :func:`dntk.wmdd.join`): 5 images per class, 50
   iterations, from the digits convnet, by 1 and by 2 ranks.
3. **Algorithm 1, split by classes** (:func:`dntk.distributed.per_class` with
   :func:`dntk.gradient_distillation.local_global` per class on one shared partition): synthetic
   planted-cluster features ``(N_d, C, k)``, by 1 and by 2 ranks.

Each rank's seconds are timed between two barriers (process start-up and imports excluded) and its peak
RSS is read from ``/proc``; the table prints throughput, the 2-vs-1 speed-up and peak memory per rank,
at the end and just before the timed work (the process, its imports and its inputs).
With two CPU cores shared by other work the speed-up is bounded by what the cores give.

4. **Modelled**, clearly so: the cost ledger (appendix §7) of ImageNet-1k with ResNet-50 (N = 1,281,167,
   C = 1000, P = 25.6 M, F = 4.1 GMAC, k = 4096 SRHT, 50 images per class, 5 synthetic gradients per class)
   with unit costs measured on this machine's convnet and scaled by the forward MACs, split over 8 and 64
   workers: featurisation by samples, WMDD, Algorithm 1 and KRR by classes (⌈C / W⌉ per worker). Pass
   ``--unit-costs FILE`` (a JSON of :class:`dntk.ledger.UnitCosts` measured on a GPU with
   ``dntk.ledger.measure_unit_costs``) to model GPUs instead of these CPUs.

    python benchmarks/scale_out.py                  # N = 1437 digits, C = 10
    python benchmarks/scale_out.py --n 400 --quick  # smaller
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

from dntk import distributed, ledger, models, projection
from dntk.distributed import Ranks


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _digits(n: int):
    from dntk import data

    X, _ = data.as_tensors(data.load("digits", "train"), limit=n)
    return X


def featurize_job(n: int, k: int, out_dir: str, tag: str):
    """One rank: featurise ``n`` digits (a Dataset; the rank reads its shard) into a shared array; writes its
    seconds and peak RSS."""
    from dntk import data

    torch.set_num_threads(1)
    model = models.build("convnet", 10, in_channels=1, seed=0)
    ds = torch.utils.data.Subset(data.load("digits", "train"), range(n))
    R = projection.make("gaussian", k, seed=0)
    ranks = Ranks.current()
    ranks.barrier()
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    distributed.class_gradients(model, ds, R, os.path.join(out_dir, f"{tag}.f32"), batch_size=64,
                                inputs_digest=f"the first {n} digits")
    ranks.barrier()
    sec = time.perf_counter() - t0
    with open(os.path.join(out_dir, f"{tag}-rank{ranks.rank}.json"), "w") as fh:
        json.dump({"seconds": sec, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before}, fh)


def wmdd_job(C: int, out_dir: str, tag: str):
    """One rank: WMDD on its share of the classes, rank 0 joins them; writes seconds, RSS and the images."""
    from dntk import data, wmdd

    torch.set_num_threads(1)
    model = models.build("convnet", C, in_channels=1, seed=0).eval()
    real = wmdd.RealData(data.load("digits", "train"))  # read by class, as the pipeline does
    ranks = Ranks.current()
    ranks.barrier()
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    parts = distributed.per_class(ranks, C, lambda c: wmdd.distill(
        model, real, 5, classes=[c], iterations=50, lr=0.05, r_bn=10.0, init="real", class_batch=1), "wmdd")
    if ranks.rank == 0:
        wmdd.join(parts, model).images.numpy().tofile(os.path.join(out_dir, f"{tag}.f32"))
    ranks.barrier()
    sec = time.perf_counter() - t0
    with open(os.path.join(out_dir, f"{tag}-rank{ranks.rank}.json"), "w") as fh:
        json.dump({"seconds": sec, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before}, fh)


class GeneratedImages(torch.utils.data.Dataset):
    """``n`` images ``(3, size, size)`` made from their index when read: a stand-in for a dataset on disk
    (nothing is held in memory but the labels ``i mod C``)."""

    def __init__(self, n: int, size: int, C: int):
        self.n, self.size, self.targets = n, size, [i % C for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        return torch.rand(3, self.size, self.size, generator=g), self.targets[i]


def wmdd_memory_job(n: int, size: int, by_class: bool, out_dir: str, tag: str):
    """One process, one class of WMDD from an ``n``-image dataset on "disk": the whole set stacked in memory
    first, or read by class (:class:`dntk.wmdd.RealData`); writes seconds and peak RSS."""
    from dntk import data, wmdd

    torch.set_num_threads(1)
    C = 10
    model = models.build("convnet", C, in_channels=3, seed=0).eval()
    ds = GeneratedImages(n, size, C)
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    real = wmdd.RealData(ds if by_class else data.as_tensors(ds))
    out = wmdd.distill(model, real, 5, classes=[0], iterations=10, lr=0.05, r_bn=10.0, init="real",
                       pixel_range=(0.0, 1.0))
    out.images.numpy().tofile(os.path.join(out_dir, f"{tag}.f32"))
    with open(os.path.join(out_dir, f"{tag}-rank0.json"), "w") as fh:
        json.dump({"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before}, fh)


def planted(n: int, C: int, k: int, M: int, seed: int = 0):
    """Planted local–global features ``(n, C, k)`` and targets ``(n, C)`` (a shared and a per-cluster basis)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, M, (n,), generator=g)
    B0 = torch.randn(8, C * k, generator=g)
    Bj = torch.randn(M, 8, C * k, generator=g)
    a = torch.randn(n, 8, generator=g).abs()
    b = torch.randn(n, 8, generator=g).abs()
    F = a @ B0 + torch.einsum("nr,nrd->nd", b, Bj[labels]) + 0.05 * torch.randn(n, C * k, generator=g)
    return F.reshape(n, C, k).float(), torch.randn(n, C, generator=g).double()


def algorithm1_job(n: int, C: int, k: int, out_dir: str, tag: str):
    """One rank: Algorithm 1 on its share of the classes (one shared partition); writes seconds and RSS."""
    from dntk import gradient_distillation as gd
    from dntk import spectral

    torch.set_num_threads(1)
    feats, targets = planted(n, C, k, M=10)
    labels = torch.as_tensor(spectral.spectral_clusters(feats, 10, method="dense" if n <= k else "matrix_free"))
    ranks = Ranks.current()
    ranks.barrier()
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    out = distributed.per_class(ranks, C, lambda c: gd.local_global(
        feats[:, c:c + 1], targets[:, c:c + 1], n_clusters=10, tau=0.99, gamma=0.5, budget=5, labels=labels)[0].m,
        "algorithm1")
    ranks.barrier()
    sec = time.perf_counter() - t0
    with open(os.path.join(out_dir, f"{tag}-rank{ranks.rank}.json"), "w") as fh:
        json.dump({"seconds": sec, "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before, "m": out}, fh)


def _run(job, world_size: int, args: tuple, out_dir: str, tag: str) -> list:
    distributed.launch(job, world_size, args=(*args, out_dir, tag))
    return [json.load(open(os.path.join(out_dir, f"{tag}-rank{r}.json"))) for r in range(world_size)]


def modelled(unit: ledger.UnitCosts, F_measured: float, workers=(1, 8, 64)) -> list:
    """Seconds of the DNTK build + one-time stages for ImageNet-1k / ResNet-50 on W workers (modelled)."""
    F = 4.09e9
    s = ledger.Sizes(N=1_281_167, C=1000, P=25_557_032, F=F, k=4096, ipc=50, m=5, N_test=50_000, I=1000,
                     image_numel=3 * 224 * 224, projector="srht", n_clusters=10, batch=64)
    scale = F / F_measured  # per-input costs scale with the forward MACs; the per-class VJPs with C
    u = dataclasses.replace(unit, jacobian_s=unit.jacobian_s * scale, featurize_s=unit.featurize_s * scale,
                            forward_s=unit.forward_s * scale)
    led = ledger.build_ledger(s, u)
    by_samples = {"jacobians", "projection"}
    rows = []
    for W in workers:
        total = {"samples": 0.0, "classes": 0.0}
        for r in led.rows:
            if r.pipeline != "dntk" or r.phase not in ("build", "one_time") or r.seconds is None:
                continue
            if r.stage in by_samples:
                total["samples"] += r.seconds / W
            else:  # WMDD, Algorithm 1, kernels and KRR are independent per class
                total["classes"] += r.seconds * math.ceil(s.C / W) / s.C
        rows.append((W, total["samples"], total["classes"], total["samples"] + total["classes"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1437, help="digits to featurise")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--nd", type=int, default=500, help="points per class for Algorithm 1 (N_d)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="smaller Algorithm 1 (N_d = 200, k = 128)")
    p.add_argument("--unit-costs", help="JSON of dntk.ledger.UnitCosts (e.g. measured on a GPU) for the model")
    p.add_argument("--wmdd-memory-n", type=int, default=50_000,
                   help="images of the generated dataset for the WMDD memory comparison")
    a = p.parse_args(argv)
    nd, kd = (200, 128) if a.quick else (a.nd, 512)
    print(f"Scale-out on this machine ({os.cpu_count()} CPUs, torch {torch.__version__}, gloo ranks, "
          "1 thread per rank)\n")
    lines = [f"{'work':<44}{'ranks':>6}{'seconds':>9}{'items/s':>10}{'speed-up':>9}{'peak RSS/rank':>15}"
             f"{'before the work':>17}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, job, args, items in (
                (f"featurise {a.n} digits, C=10, k={a.k}", featurize_job, (a.n, a.k), a.n),
                ("WMDD, ipc=5, 50 iterations, C=10", wmdd_job, (10,), 10),
                (f"Algorithm 1, N_d={nd}, C={a.classes}, k={kd}", algorithm1_job, (nd, a.classes, kd), a.classes)):
            base = None
            for w in (1, 2):
                res = _run(job, w, args, tmp, f"{job.__name__}-{w}")
                sec = max(r["seconds"] for r in res)
                base = base or sec
                rss = " / ".join(f"{r['peak_rss_mb']:.0f}" for r in res)
                before = " / ".join(f"{r['rss_before_mb']:.0f}" for r in res)
                lines.append(f"{name:<44}{w:>6}{sec:>9.2f}{items / sec:>10.1f}{base / sec:>8.2f}×{rss + ' MB':>15}"
                             f"{before + ' MB':>17}")
            if job in (featurize_job, wmdd_job):
                one, two = (np.fromfile(os.path.join(tmp, f"{job.__name__}-{w}.f32"), dtype=np.float32) for w in (1, 2))
                what = "features" if job is featurize_job else "distilled images"
                lines.append(f"  (1- and 2-rank {what} bit-identical: {bool(np.array_equal(one, two))})")
    print("\n".join(lines))

    n_mem, size = a.wmdd_memory_n, 64
    gb = n_mem * 3 * size * size * 4 / 2**30
    print(f"\nWMDD memory of one process synthesising one class (5 images, 10 iterations) from {n_mem} images "
          f"3x{size}x{size} generated when read ({gb:.2f} GiB as float32)")
    print(f"{'data':<34}{'seconds':>9}{'peak RSS':>12}{'before':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, by_class in (("whole set stacked in memory", False), ("read by class (RealData)", True)):
            r = _run(wmdd_memory_job, 1, (n_mem, size, by_class), tmp, f"mem-{int(by_class)}")[0]
            print(f"{label:<34}{r['seconds']:>9.2f}{r['peak_rss_mb']:>9.0f} MB{r['rss_before_mb']:>7.0f} MB")
        same = np.array_equal(*(np.fromfile(os.path.join(tmp, f"mem-{i}.f32"), dtype=np.float32) for i in (0, 1)))
        print(f"  (the two distilled classes bit-identical: {same})")

    model = models.build("convnet", 10, in_channels=1, seed=0)
    F_meas = ledger.model_stats(model, (1, 8, 8))["F"]
    if a.unit_costs:
        unit = ledger.UnitCosts(**json.load(open(a.unit_costs)))
        src = f"unit costs from {a.unit_costs}"
    else:
        torch.set_num_threads(1)
        unit = ledger.measure_unit_costs(model, _digits(64), projector=projection.make("gaussian", a.k, seed=0))
        src = "unit costs measured here on the digits convnet (one CPU thread), scaled by forward MACs"
    print(f"\nModelled (not run): ImageNet-1k, ResNet-50, DNTK build + one-time stages, {src}")
    print(f"{'workers':>8}{'by samples (s)':>16}{'by classes (s)':>16}{'total':>12}{'speed-up':>10}")
    rows = modelled(unit, F_meas)
    for W, smp, cls, tot in rows:
        print(f"{W:>8}{smp:>16.3g}{cls:>16.3g}{tot:>12.3g}{rows[0][3] / tot:>9.1f}×")
    print("(featurisation splits by samples, WMDD / Algorithm 1 / KRR by whole classes; communication, data "
          "loading and stragglers are not modelled)")
    if dist.is_initialized():  # pragma: no cover
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
