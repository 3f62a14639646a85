"""Scale benchmark for Algorithm 1 (dntk.gradient_distillation.local_global, SPEC §4.3): matrix-free against dense.

The matrix-free path never forms an N×N matrix: clustering on the stacked (N, C·k) features, eigenpairs from the
k×k Gram of each (N, k) class block and of each cluster's rows, Gram–Schmidt on (N, 64) blocks of candidates. The
dense path forms the N×N class kernels (and the N×N affinity for scikit-learn) and eigendecomposes them. Each case
runs in a fresh subprocess, so its peak memory (RSS sampled every 5 ms) is its own.

    python benchmarks/algorithm1_scale.py                       # N = 100 000, C = 10, k = 512; dense up to N = 4000
    python benchmarks/algorithm1_scale.py --n 20000 --quick     # smaller
    python benchmarks/algorithm1_scale.py --markdown            # also print the tables as Markdown

Features are synthetic float32 (a seeded planted-cluster model: a low-rank part shared by all clusters, a low-rank
part per cluster, and noise; like real logit gradients all cosines are positive). Prints tables; no assertions.
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


def make_features(n, C, k, M, seed=0, r_shared=8, r_local=8, noise=0.05):
    """Planted local–global structure, rows of length C·k: ``F_i = a_i B_0 + b_i B_{y_i} + noise`` with a shared
    basis ``B_0`` (global directions) and one basis ``B_j`` per cluster (local directions); ``a`` and ``b`` have a
    positive first coefficient (a mean gradient), so all cosines are positive. Returns features (n, C, k) float32, targets (n, C), labels (n,)."""
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
        a = 0.3 * torch.randn(e - s, r_shared, generator=gen) * (0.7 ** torch.arange(r_shared))
        a[:, 0] = 1.0 + a[:, 0].abs()
        F[s:e] = a @ B0 + noise * torch.randn(e - s, W, generator=gen) / W**0.5
        b = 0.5 * torch.randn(e - s, r_local, generator=gen) * (0.75 ** torch.arange(r_local))
        b[:, 0] = 1.5 + b[:, 0].abs()
        for j in range(M):
            rows = (y[s:e] == j).nonzero().flatten()
            F[s + rows] += b[rows] @ Bj[j]
    F = F.reshape(n, C, k)
    T = F.sum(2) * 0.1 + torch.randn(n, C, generator=gen)
    return F, T, y


def run_case(args) -> dict:
    import torch

    from dntk.gradient_distillation import local_global
    from dntk.spectral import spectral_clusters

    if args.threads:
        torch.set_num_threads(args.threads)
    F, T, y = make_features(args.n, args.classes, args.k, args.clusters, seed=args.seed)
    out = {"case": args.case, "n": args.n, "threads": torch.get_num_threads(),
           "data_mb": F.numel() * F.element_size() / 2**20}
    budget = args.budget or None
    if args.case in ("dense", "matrix_free"):
        with PeakRSS() as mem:
            t, c = time.perf_counter(), time.process_time()
            labels = torch.as_tensor(spectral_clusters(F, args.clusters, method=args.case, seed=args.seed))
            out["cluster_s"], out["cluster_cpu"] = time.perf_counter() - t, time.process_time() - c
            res = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method=args.case,
                               labels=labels)
            out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
        out["peak_mb"], out["extra_mb"] = mem.peak, mem.peak - mem.base
        cnt = res.counts()
        out.update(m=cnt["m"], local=cnt["local"], gap=cnt["gap"], r=float(np.mean([cs.r for cs in res.classes])))
        from sklearn.metrics import adjusted_rand_score
        out["ari"] = adjusted_rand_score(y.numpy(), labels.numpy())
    elif args.case == "agree":   # dense and matrix-free on the same partition: same synthetic set up to signs
        labels = y
        d = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method="dense", labels=labels)
        f = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method="matrix_free", labels=labels)
        out["same_m"] = all(a.m == b.m for a, b in zip(d.classes, f.classes))
        out["max_dV"] = max(float((a.V.abs() - b.V.abs()).abs().max()) for a, b in zip(d.classes, f.classes))
    return out


# ----------------------------------------------------------------------------- driver
def spawn(case, n, args) -> dict | None:
    cmd = [sys.executable, __file__, "--case", case, "--n", str(n), "--classes", str(args.classes), "--k", str(args.k),
           "--clusters", str(args.clusters), "--tau", str(args.tau), "--gamma", str(args.gamma),
           "--budget", str(args.budget), "--seed", str(args.seed), "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        print(f"  [{case} N={n}] failed: {last}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(title, head, rows, markdown=False):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(title)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print()
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---:" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.95)
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--budget", type=int, default=0, help="synthetic gradients per class (0: no budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-max", type=int, default=4000, help="largest N for the dense path")
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="the N to run (default: a ladder up to --n)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per case (default: torch's choice)")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    import torch

    if args.sizes:
        sizes = sorted(set(args.sizes))
    else:
        sizes = sorted({s for s in ([1000, 4000] if args.quick else [1000, 2000, 4000, 10_000, 30_000])
                        if s < args.n} | {args.n})
    print(f"Algorithm 1 scale benchmark: C = {args.classes}, k = {args.k}, M = {args.clusters} clusters, "
          f"τ = {args.tau}, γ = {args.gamma}, budget = {args.budget or 'none'}; torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("s = wall-clock seconds of steps 1–6 (clustering included), cpu = process CPU seconds (all threads); "
          "MB = peak RSS increase over the process that already holds the features\n")
    res = {}
    for n in sizes:
        for case in ("dense", "matrix_free"):
            if case == "dense" and n > args.dense_max:
                continue
            res[case, n] = spawn(case, n, args)
        print(f"  N = {n} done", file=sys.stderr, flush=True)
    agree = spawn("agree", 1000, args)

    def c(r, key, fmt="{:.1f}"):
        return fmt.format(r[key]) if r else "—"

    rows = []
    for n in sizes:
        d, f = res.get(("dense", n)), res.get(("matrix_free", n))
        dense_model = f"needs {8 * n * n / 2**30:.1f} GiB per N×N kernel" if not d else ""
        rows.append([f"{n:,}", f"{n * args.classes * args.k * 4 / 2**20:.0f}",
                     c(d, "seconds"), c(d, "cpu"), c(d, "extra_mb", "{:.0f}"),
                     c(f, "seconds"), c(f, "cpu"), c(f, "extra_mb", "{:.0f}"), c(f, "cluster_s"),
                     f"{d['seconds'] / f['seconds']:.1f}×" if d and f else "—",
                     f"{f['m']:,} ({f['local']:,}/{f['gap']:,})" if f else "—",
                     c(f, "ari", "{:.3f}"), dense_model])
    table(f"Algorithm 1, all {args.classes} classes (features (N, C, k) float32)",
          ["N", "features MB", "dense s", "dense cpu", "dense MB", "m-free s", "m-free cpu", "m-free MB",
           "of which clustering s", "dense/m-free", "synthetic (local/gap)", "ARI planted", "dense path"],
          rows, markdown=args.markdown)
    if agree:
        print(f"agreement at N = 1000: same m in every class: {agree['same_m']}; "
              f"max | |V_dense| − |V_matrix-free| | = {agree['max_dV']:.1e}")


if __name__ == "__main__":
    main()
