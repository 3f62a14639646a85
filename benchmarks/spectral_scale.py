"""Scale benchmark for dntk.spectral (appendix §4.3): spectral clustering of the class-averaged kernel and the
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
import time

import numpy as np

# ----------------------------------------------------------------------------- one case (child process)
from _memory import PeakRSS  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _report import table  # noqa: E402


def make_features(n, C, k, M, seed=0, r_shared=8, r_local=6, noise=0.05):
    """Planted clusters: F_i = a_i B_0 + b_i B_{y_i} + noise (rows of length C·k). ``a`` and ``b`` have a common first
    coefficient, so like real logit gradients all cosines are positive and points of a cluster are more alike.
    Returns (n, C, k) float32 and the planted labels."""
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
        a = 0.3 * torch.randn(e - s, r_shared, generator=gen) * (0.6 ** torch.arange(r_shared))
        a[:, 0] += 1.0
        F[s:e] = a @ B0 + noise * torch.randn(e - s, W, generator=gen) / W**0.5
        b = 0.5 * torch.randn(e - s, r_local, generator=gen) * (0.7 ** torch.arange(r_local))
        b[:, 0] += 1.5
        for j in range(M):
            rows = (y[s:e] == j).nonzero().flatten()
            F[s + rows] += b[rows] @ Bj[j]
    return F.reshape(n, C, k), y.numpy()


def run_case(args) -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from dntk import spectral as sp

    if args.threads:
        torch.set_num_threads(args.threads)
    F, y = make_features(args.n, args.classes, args.k, args.clusters, seed=args.seed)
    out = {"case": args.case, "n": args.n, "threads": torch.get_num_threads()}
    if args.case.startswith("cluster"):
        method = args.case.split("_", 1)[1]
        with PeakRSS() as mem:
            t, c = time.perf_counter(), time.process_time()
            labels = sp.spectral_clusters(F, args.clusters, method=method, seed=args.seed)
            out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
        out["ari_planted"] = adjusted_rand_score(y, labels)
    else:  # contain_<method>[_all]
        parts = args.case.split("_")
        method, classes = parts[1] if parts[1] != "matrix" else "matrix_free", range(args.classes if parts[-1] == "all" else 1)
        with PeakRSS() as mem:
            t, c0 = time.perf_counter(), time.process_time()
            res = [sp.containment(F[:, c], y, args.tau, method=method) for c in classes]
            out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c0
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
           "--clusters", str(args.clusters), "--tau", str(args.tau), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"  [{case} N={n}] failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


CLOCK = "cpu"   # which time the tables show: "cpu" (process CPU seconds, all threads) or "seconds" (wall clock)


def cell(r, key=None, fmt="{:.2f}"):
    return fmt.format(r[key or CLOCK]) if r else "—"


def ratio(a, b):
    return f"{a[CLOCK] / b[CLOCK]:.1f}×" if a and b else "—"


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
    ap.add_argument("--threads", type=int, default=0, help="torch threads per case (default: torch's choice)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="time shown: process CPU time (robust on a shared machine) or wall clock")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    global CLOCK
    CLOCK = "cpu" if args.clock == "cpu" else "seconds"

    import torch

    sizes = sorted({s for s in ([1000, 4000] if args.quick else [1000, 2000, 4000, 10_000, 30_000]) if s < args.n}
                   | {args.n})
    print(f"dntk.spectral scale benchmark: C = {args.classes}, k = {args.k}, M = {args.clusters} clusters, "
          f"τ = {args.tau}; torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}")
    print(f"times: {'process CPU seconds (all threads)' if CLOCK == 'cpu' else 'wall-clock seconds'}; "
          "MB = peak RSS increase over the process that already holds the features\n")
    res = {}
    for n in sizes:
        dense = n <= args.dense_max
        for case in ("cluster_dense", "cluster_matrix_free", "contain_dense", "contain_matrix_free", "contain_gram"):
            if "dense" in case and not dense:
                continue
            res[case, n] = spawn(case, n, args)
        print(f"  N = {n} done", file=sys.stderr, flush=True)
    n = args.n
    res["all_svd"] = spawn("contain_matrix_free_all", n, args)
    res["all_gram"] = spawn("contain_gram_all", n, args)

    g = res.get
    table("Spectral clustering of the class-averaged kernel (features (N, C, k) float32)",
          ["N", "features MB", "dense s", "dense MB", "matrix-free s", "matrix-free MB", "speed-up", "ARI vs planted (m-free)"],
          [[str(m), f"{m * args.classes * args.k * 4 / 2**20:.0f}", cell(g(("cluster_dense", m))),
            cell(g(("cluster_dense", m)), "extra_mb", "{:.0f}"), cell(g(("cluster_matrix_free", m))),
            cell(g(("cluster_matrix_free", m)), "extra_mb", "{:.0f}"),
            ratio(g(("cluster_dense", m)), g(("cluster_matrix_free", m))),
            cell(g(("cluster_matrix_free", m)), "ari_planted", "{:.3f}")] for m in sizes])
    table("Containment diagnostics (A), (B) of one class kernel (features (N, k))",
          ["N", "dense s", "dense MB", "m-free SVD s", "SVD MB", "m-free Gram s", "Gram MB", "dense/SVD", "SVD/Gram"],
          [[str(m), cell(g(("contain_dense", m))), cell(g(("contain_dense", m)), "extra_mb", "{:.0f}"),
            cell(g(("contain_matrix_free", m))), cell(g(("contain_matrix_free", m)), "extra_mb", "{:.0f}"),
            cell(g(("contain_gram", m))), cell(g(("contain_gram", m)), "extra_mb", "{:.0f}"),
            ratio(g(("contain_dense", m)), g(("contain_matrix_free", m))),
            ratio(g(("contain_matrix_free", m)), g(("contain_gram", m)))] for m in sizes])

    cm, a_svd, a_gram = g(("cluster_matrix_free", n)), res["all_svd"], res["all_gram"]
    print(f"N = {n}, all {args.classes} classes: features {n * args.classes * args.k * 4 / 2**30:.2f} GB float32")
    for name, a in (("SVD (exact)", a_svd), ("Gram (fast)", a_gram)):
        if cm and a:
            print(f"  clustering {cm[CLOCK]:.1f} s + containment [{name}] {a[CLOCK]:.1f} s "
                  f"= {cm[CLOCK] + a[CLOCK]:.1f} s (wall {cm['seconds'] + a['seconds']:.1f} s); "
                  f"peak extra memory {max(cm['extra_mb'], a['extra_mb']):.0f} MB; "
                  f"(A) mean {a['prop_a_mean']:.3f}, (B) mean {a['prop_b']:.3f}")
    dn = [m for m in sizes if g(("cluster_dense", m)) and g(("contain_dense", m))]
    if dn:
        n0 = dn[-1]
        scale = (n / n0) ** 3
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(f"  dense path at N = {n}: one N×N float64 matrix is {n * n * 8 / 2**30:.0f} GB (this machine has {ram:.0f} GB); "
              f"cubic extrapolation of the N = {n0} times: clustering ≈ {g(('cluster_dense', n0))[CLOCK] * scale / 3600:.1f} h, "
              f"containment ≈ {g(('contain_dense', n0))[CLOCK] * scale / 3600:.1f} h per class.")


if __name__ == "__main__":
    main()
