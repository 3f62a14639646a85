"""Scale benchmark for dntk.spectral (issue 4, SPEC §4.3): spectral clustering of the class-averaged kernel and the
containment diagnostics (properties A and B) of projected gradients, matrix-free against dense.

The matrix-free path never forms an N×N matrix: clustering works on the stacked (N, C·k) features, containment on
thin SVDs of (N, k) and (|S_j|, k). The dense path forms K̄ (cosine-normalised, clipped) for scikit-learn and K_c for
eigh. Each case runs in a fresh subprocess so that its peak memory (RSS, sampled every 5 ms) is its own.

    python benchmarks/spectral_scale.py                      # N = 100 000, C = 10, k = 512, dense up to N = 4000
    python benchmarks/spectral_scale.py --n 20000 --quick    # smaller

Features are synthetic (a seeded planted-cluster model: a shared low-rank part, a low-rank part per cluster and
noise), float32 like projected gradients. Prints a table; no assertions on time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


# ----------------------------------------------------------------------------- one case (child process)
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 5 ms), in MB."""

    def __enter__(self):
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def make_features(n, C, k, M, seed=0, r_shared=8, r_local=6, noise=0.05):
    """Planted clusters: F_i = a_i B_0 + b_i B_{y_i} + noise (rows of length C·k; b_i has a cluster mean, so points of
    a cluster are positively correlated), returned as (n, C, k) float32 with the planted labels."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    W = C * k
    B0 = torch.randn(r_shared, W, generator=gen) / W**0.5
    Bj = torch.randn(M, r_local, W, generator=gen) / W**0.5
    y = torch.randperm(n, generator=gen) % M
    F = torch.empty(n, W)
    step = 8192
    for s in range(0, n, step):
        e = min(n, s + step)
        a = torch.randn(e - s, r_shared, generator=gen) * (0.6 ** torch.arange(r_shared))
        a[:, 0] += 1.0
        F[s:e] = a @ B0 + noise * torch.randn(e - s, W, generator=gen) / W**0.5
        b = torch.randn(e - s, r_local, generator=gen) * (0.7 ** torch.arange(r_local))
        b[:, 0] += 2.0
        for j in range(M):
            rows = (y[s:e] == j).nonzero().flatten()
            F[s + rows] += b[rows] @ Bj[j]
    return F.reshape(n, C, k), y.numpy()


def run_case(args) -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from dntk import spectral as sp

    F, y = make_features(args.n, args.classes, args.k, args.clusters, seed=args.seed)
    out = {"case": args.case, "n": args.n}
    if args.case.startswith("cluster"):
        method = args.case.split("_", 1)[1]
        with PeakRSS() as mem:
            t = time.perf_counter()
            labels = sp.spectral_clusters(F, args.clusters, method=method, seed=args.seed)
            out["seconds"] = time.perf_counter() - t
        out["ari_planted"] = adjusted_rand_score(y, labels)
    else:  # contain_<method>[_all]
        parts = args.case.split("_")
        method, classes = parts[1] if parts[1] != "matrix" else "matrix_free", range(args.classes if parts[-1] == "all" else 1)
        with PeakRSS() as mem:
            t = time.perf_counter()
            res = [sp.containment(F[:, c], y, args.tau, method=method) for c in classes]
            out["seconds"] = time.perf_counter() - t
        out["prop_a_mean"] = float(np.mean([r.prop_a.mean().item() for r in res]))
        out["prop_b"] = float(np.mean([r.prop_b for r in res]))
        out["rank"] = res[0].rank
    out["peak_mb"] = mem.peak
    out["extra_mb"] = mem.peak - mem.base
    out["data_mb"] = F.numel() * F.element_size() / 2**20
    return out


# ----------------------------------------------------------------------------- driver
def spawn(case, n, args) -> dict | None:
    cmd = [sys.executable, __file__, "--case", case, "--n", str(n), "--classes", str(args.classes), "--k", str(args.k),
           "--clusters", str(args.clusters), "--tau", str(args.tau), "--seed", str(args.seed)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"  [{case} N={n}] failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt_s(r):
    return f"{r['seconds']:8.2f}" if r else f"{'—':>8}"


def fmt_mb(r):
    return f"{r['extra_mb']:9.0f}" if r else f"{'—':>9}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-max", type=int, default=4000, help="largest N for the dense path")
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    import torch

    sizes = sorted({s for s in ([1000, 4000] if args.quick else [1000, 2000, 4000, 10_000, 30_000]) if s < args.n} | {args.n})
    print(f"dntk.spectral scale benchmark: C = {args.classes}, k = {args.k}, M = {args.clusters} clusters, τ = {args.tau}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("time in seconds; memory = peak RSS increase over the process holding the features (MB); "
          "containment for one class (and all classes at the largest N)\n")
    head = (f"{'N':>8} | {'cluster dense':>13} {'MB':>9} | {'cluster m-free':>14} {'MB':>9} {'ratio':>6} {'ARI':>5} | "
            f"{'contain dense':>13} {'MB':>9} | {'contain m-free':>14} {'MB':>9} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    rows = []
    for n in sizes:
        dense = n <= args.dense_max
        cd = spawn("cluster_dense", n, args) if dense else None
        cm = spawn("cluster_matrix_free", n, args)
        kd = spawn("contain_dense", n, args) if dense else None
        km = spawn("contain_matrix_free", n, args)
        rows.append((n, cd, cm, kd, km))
        ratio_c = f"{cd['seconds'] / cm['seconds']:6.1f}" if cd and cm else f"{'—':>6}"
        ratio_k = f"{kd['seconds'] / km['seconds']:6.1f}" if kd and km else f"{'—':>6}"
        ari = f"{cm['ari_planted']:5.2f}" if cm else f"{'—':>5}"
        print(f"{n:>8} | {fmt_s(cd):>13} {fmt_mb(cd)} | {fmt_s(cm):>14} {fmt_mb(cm)} {ratio_c} {ari} | "
              f"{fmt_s(kd):>13} {fmt_mb(kd)} | {fmt_s(km):>14} {fmt_mb(km)} {ratio_k}", flush=True)

    n = args.n
    allc = spawn("contain_matrix_free_all", n, args)
    cm = rows[-1][2]
    print()
    data_gb = n * args.classes * args.k * 4 / 2**30
    print(f"N = {n}: features {data_gb:.2f} GB (float32).")
    if cm and allc:
        print(f"  matrix-free clustering {cm['seconds']:.1f} s (+{cm['extra_mb']:.0f} MB, ARI vs planted {cm['ari_planted']:.2f}); "
              f"containment for all {args.classes} classes {allc['seconds']:.1f} s (+{allc['extra_mb']:.0f} MB); "
              f"together {cm['seconds'] + allc['seconds']:.1f} s.")
        print(f"  (A) mean {allc['prop_a_mean']:.3f}, (B) mean {allc['prop_b']:.3f}, global r(τ) of class 0 = {allc['rank']}.")
    # where the dense path runs out: its N×N float64 matrices and O(N³) eigensolvers, extrapolated from the largest run
    dn = [r for r in rows if r[1] and r[3]]
    if dn:
        n0, cd0, _, kd0, _ = dn[-1]
        scale = (n / n0) ** 3
        print(f"  dense path at N = {n}: one N×N float64 matrix is {n * n * 8 / 2**30:.0f} GB "
              f"(this machine: {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM); "
              f"cubic extrapolation from N = {n0}: clustering ≈ {cd0['seconds'] * scale / 3600:.0f} h, "
              f"containment ≈ {kd0['seconds'] * scale / 3600:.0f} h.")


if __name__ == "__main__":
    main()
