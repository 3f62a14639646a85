"""Scale benchmark for Algorithm 1 (dntk.gradient_distillation, appendix §4.3): matrix-free against dense, and out of core.

The matrix-free path never forms an N×N matrix: clustering on the stacked (N, C·k) features, eigenpairs from the
k×k Gram of each (N, k) class block and of each cluster's rows, Gram–Schmidt on (N, 64) blocks of candidates. The
dense path forms the N×N class kernels (and the N×N affinity for scikit-learn) and eigendecomposes them. Each case
runs in a fresh subprocess, so its peak memory (RSS sampled every 5 ms) is its own. With ``--streamed`` the
out-of-core path (``local_global_streamed``) runs instead: features written class-major to a file, each class read
in blocks of rows and reduced to its per-cluster Gram matrices, then KRR on the synthetic set.

    python benchmarks/algorithm1_scale.py                       # N = 100 000, C = 10, k = 512; dense up to N = 4000
    python benchmarks/algorithm1_scale.py --n 20000 --quick     # smaller
    python benchmarks/algorithm1_scale.py --markdown            # also print the tables as Markdown
    python benchmarks/algorithm1_scale.py --streamed 100000 1000000 --threads 1   # out of core (features on disk)

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
from _report import table  # noqa: E402


def feature_blocks(n, C, k, M, seed=0, r_shared=8, r_local=8, noise=0.05, step=8192):
    """Planted local–global structure, rows of length C·k, generated ``step`` rows at a time:
    ``F_i = a_i B_0 + b_i B_{y_i} + noise`` with a shared basis ``B_0`` (global directions) and one basis ``B_j``
    per cluster (local directions); ``a`` and ``b`` have a positive first coefficient (a mean gradient), so all
    cosines are positive. Yields ``(start, features (b, C, k) float32, targets (b, C), labels (b,))``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    W = C * k
    B0 = torch.randn(r_shared, W, generator=gen) / W**0.5
    Bj = torch.randn(M, r_local, W, generator=gen) / W**0.5
    y = torch.randperm(n, generator=gen) % M
    for s in range(0, n, step):
        e = min(n, s + step)
        a = 0.3 * torch.randn(e - s, r_shared, generator=gen) * (0.7 ** torch.arange(r_shared))
        a[:, 0] = 1.0 + a[:, 0].abs()
        F = a @ B0 + noise * torch.randn(e - s, W, generator=gen) / W**0.5
        b = 0.5 * torch.randn(e - s, r_local, generator=gen) * (0.75 ** torch.arange(r_local))
        b[:, 0] = 1.5 + b[:, 0].abs()
        for j in range(M):
            rows = (y[s:e] == j).nonzero().flatten()
            F[rows] += b[rows] @ Bj[j]
        F = F.reshape(e - s, C, k)
        yield s, F, F.sum(2) * 0.1 + torch.randn(e - s, C, generator=gen), y[s:e]


def make_features(n, C, k, M, seed=0):
    """:func:`feature_blocks` in memory: features (n, C, k) float32, targets (n, C), labels (n,)."""
    import torch

    F, T, y = zip(*[(f, t, lab) for _, f, t, lab in feature_blocks(n, C, k, M, seed)])
    return torch.cat(F), torch.cat(T), torch.cat(y)


def write_class_major(path, n, C, k, M, seed=0, n_test=2000):
    """:func:`feature_blocks` of ``n + n_test`` points: the first ``n`` written to ``path`` class-major ``(C, n, k)``
    float32, block by block (never the whole array in memory), the last ``n_test`` kept as a test set of the same
    law. Returns targets (n, C), planted labels (n,), test features (n_test, C, k) and test targets (n_test, C)."""
    import torch

    T, y = torch.empty(n, C), torch.empty(n, dtype=torch.int64)
    test_F, test_T = [], []
    with open(path, "wb") as f:
        f.truncate(n * C * k * 4)
        for s, F, t, lab in feature_blocks(n + n_test, C, k, M, seed, step=8192):
            b = max(0, min(len(lab), n - s))                   # rows of this block that belong to the training set
            if b < len(lab):                                    # (a copy: a view would keep the whole block alive)
                test_F.append(F[b:].clone())
                test_T.append(t[b:].clone())
            if b == 0:
                continue
            T[s:s + b], y[s:s + b] = t[:b], lab[:b]
            for c in range(C):
                f.seek((c * n + s) * k * 4)
                f.write(F[:b, c].contiguous().numpy().tobytes())
    return T, y, torch.cat(test_F), torch.cat(test_T)


def run_case(args) -> dict:
    import torch

    from dntk.gradient_distillation import local_global
    from dntk.spectral import spectral_clusters

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"case": args.case, "n": args.n, "threads": torch.get_num_threads()}
    if args.case not in ("streamed", "write"):       # these never hold all the features in memory
        F, T, y = make_features(args.n, args.classes, args.k, args.clusters, seed=args.seed)
        out["data_mb"] = F.numel() * F.element_size() / 2**20
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
    elif args.case == "streamed":   # out of core: class-major float32 file, one class at a time
        from dntk.gradient_distillation import class_major_reader, local_global_streamed
        from dntk.krr import ClassKRR

        path = os.path.join(args.workdir, f"alg1_features_{args.n}.f32")
        t = time.perf_counter()
        # written by a separate process, so that the generator's temporaries are not in this one's memory
        subprocess.run([sys.executable, __file__, "--case", "write", *_case_args(args, args.n)], check=True)
        with np.load(path + ".npz") as z:
            T, y, F_te = (torch.from_numpy(z[key]) for key in ("T", "y", "F_te"))
        os.remove(path + ".npz")
        out["write_s"] = time.perf_counter() - t
        out["data_mb"] = os.path.getsize(path) / 2**20
        try:
            with PeakRSS() as mem:
                t, c = time.perf_counter(), time.process_time()
                res = local_global_streamed(class_major_reader(path, args.n, args.classes, args.k), args.n,
                                            args.classes, T, y, args.tau, args.gamma, budget=budget)
                lam = [args.lam_rel * tr / args.n for tr in res.traces]     # λ_c of the uncompressed set
                pred = ClassKRR().fit_synthetic(res.G_syn, res.t_syn, lam=lam).predict(F_te)
                out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
        finally:
            os.remove(path)
        out["peak_mb"], out["extra_mb"] = mem.peak, mem.peak - mem.base
        from dntk.metrics import logit_r2
        out["r2_signal"] = logit_r2(pred, 0.1 * F_te.double().sum(2))    # the targets' noise-free linear part
        cnt = res.counts()
        out.update(m=cnt["m"], local=cnt["local"], gap=cnt["gap"], r=float(np.mean([cs.r for cs in res.classes])))
    elif args.case == "write":   # the streamed case's feature file, and its targets, labels and test set
        path = os.path.join(args.workdir, f"alg1_features_{args.n}.f32")
        T, y, F_te, _ = write_class_major(path, args.n, args.classes, args.k, args.clusters, seed=args.seed)
        np.savez(path + ".npz", T=T.numpy(), y=y.numpy(), F_te=F_te.numpy())
    elif args.case == "agree_streamed":   # streamed against matrix-free in memory, same partition
        from dntk.gradient_distillation import local_global_streamed
        Fc = F.permute(1, 0, 2).contiguous()
        s_ = local_global_streamed(lambda c, a, b: Fc[c, a:b], args.n, args.classes, T, y, args.tau, args.gamma,
                                   budget=budget)
        f = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method="matrix_free", labels=y)
        out["same_m"] = all(a.m == b.m for a, b in zip(s_.classes, f.classes))
        out["max_dG"] = max(float((a.G_syn.abs() - b.G_syn.abs()).abs().max() / b.G_syn.abs().max())
                            for a, b in zip(s_.classes, f.classes))
    elif args.case == "agree":   # dense and matrix-free on the same partition: same synthetic set up to signs
        labels = y
        d = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method="dense", labels=labels)
        f = local_global(F, T, args.clusters, args.tau, args.gamma, budget=budget, method="matrix_free", labels=labels)
        out["same_m"] = all(a.m == b.m for a, b in zip(d.classes, f.classes))
        out["max_dV"] = max(float((a.V.abs() - b.V.abs()).abs().max()) for a, b in zip(d.classes, f.classes))
    return out


# ----------------------------------------------------------------------------- driver
def _case_args(args, n) -> list:
    return ["--n", str(n), "--classes", str(args.classes), "--k", str(args.k), "--clusters", str(args.clusters),
            "--tau", str(args.tau), "--gamma", str(args.gamma), "--budget", str(args.budget), "--seed", str(args.seed),
            "--threads", str(args.threads), "--workdir", args.workdir, "--lam-rel", str(args.lam_rel)]


def spawn(case, n, args) -> dict | None:
    cmd = [sys.executable, __file__, "--case", case, *_case_args(args, n)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        print(f"  [{case} N={n}] failed: {last}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--streamed", type=int, nargs="*", default=None,
                    help="instead of the dense/matrix-free ladder: the out-of-core path at these N (features written "
                         "to --workdir class-major, read one class at a time)")
    ap.add_argument("--workdir", default="/tmp", help="where the streamed case writes its feature file")
    ap.add_argument("--lam-rel", type=float, default=1e-3, help="relative ridge of the KRR fit (streamed case)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    import torch

    if args.streamed:
        streamed(args)
        return
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


def streamed(args):
    import torch

    print(f"Algorithm 1 + KRR out of core (local_global_streamed): C = {args.classes}, k = {args.k}, "
          f"M = {args.clusters} planted clusters (step 1 not run: the planted partition is given), τ = {args.tau}, "
          f"γ = {args.gamma}, budget = {args.budget or 'none'}; torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("features: synthetic float32 with a planted cluster structure, written class-major to disk and read "
          "back one class at a time; s = wall-clock seconds of steps 2–6 for all classes plus the KRR fit and "
          "prediction of 2000 test points; MB = peak RSS of the process during that; test R² (signal) = R² of the "
          "KRR predictions against the targets' noise-free part t = 0.1·Σ_k g (targets = that + unit noise)\n")
    agree = spawn("agree_streamed", 2000, args)
    rows = []
    for n in sorted(set(args.streamed)):
        r = spawn("streamed", n, args)
        print(f"  N = {n} done", file=sys.stderr, flush=True)
        if r:
            rows.append([f"{n:,}", f"{r['data_mb'] / 1024:.2f}", f"{r['write_s']:.0f}", f"{r['seconds']:.1f}",
                         f"{r['cpu']:.1f}", f"{r['peak_mb']:.0f}", f"{r['extra_mb']:.0f}",
                         f"{r['m']:,} ({r['local']:,}/{r['gap']:,})", f"{r['r2_signal']:.3f}"])
    table(f"Algorithm 1 + KRR, all {args.classes} classes, features on disk",
          ["N", "features GiB", "write s", "s", "cpu", "peak RSS MB", "RSS increase MB", "synthetic (local/gap)",
           "test R² (signal)"], rows, markdown=args.markdown)
    if agree:
        print(f"agreement with the in-memory matrix-free path at N = 2000 (same partition): same m in every class: "
              f"{agree['same_m']}; max relative | |G_syn streamed| − |G_syn matrix-free| | = {agree['max_dG']:.1e}")


if __name__ == "__main__":
    main()
