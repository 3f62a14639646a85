"""Projected per-class gradients, side by side: floor, torch.func recipe, TRAK, and dntk's projectors.

Usage:  .venv/bin/python benchmarks/featurize.py [--threads 2] [--only convnet|resnet18] [--quick] [--json out.json]
                [--methods floor,dntk-sparse,dntk-sparse-old] [--frontier book/benchmarks_featurize_frontier.png]

One table per model: same model, same inputs, same ``k``, same thread count. Each method runs in its own
subprocess (so its peak RSS is its own); timed runs follow one warm-up run
(a fresh projector every run, so generating ``R`` is always counted). On a shared machine the
*minimum* over repetitions is reported (the least-disturbed run), with the CPU seconds of that run. Columns: samples/s, time ratio to
dntk ``gaussian``, peak RSS (whole process) and its increase over the process after loading model and
inputs, and the relative Frobenius error of the class kernels ``K̃_c = G̃_c G̃_cᵀ`` against the exact ones.

Methods
  floor         one forward + C batched backward passes (summed gradients, no per-sample work)
  recipe        torch.func vmap(jacrev) in chunks, then a dense Gaussian R (cached when P·k fits in RAM;
                otherwise regenerated block by block for every chunk — it cannot be held)
  trak-default  TRAK (PyPI traker) FunctionalGradientComputer + BasicProjector, one pass per class logit,
                its defaults on CPU: float16, block_size=100
  trak-fp32     the same, fair-tuned: float32 and the largest block_size whose block fits 512 MiB
  dntk-<kind>   dntk.tangent.class_gradients(model, X, projector=dntk.projection.make(kind, k))
  dntk-sparse-old  the previous ``sparse`` kind (very sparse projection, density 1/√P), kept here only as the
                reference row for the sparse JL transform that replaced it (same accumulation code path)

``--frontier PNG`` (convnet) times every kind at several k in one worker per kind (minimum of 3 runs each)
and plots kernel error against CPU seconds: the error–time frontier.

ResNet-18 (P ≈ 11 M, k = 2048): the dense P×k matrix has 23 G entries, so every method that applies a
dense Gaussian to all of P (recipe, TRAK, dntk gaussian/rademacher) costs minutes per batch on two cores.
The recipe and TRAK are therefore *extrapolated*: their gradient stage runs in full, their projection stage
runs on a 1/``--slice`` prefix of the parameter vector (one chunk / one class) and is scaled by the exact
linear factor (P / slice · chunks, or · C). Rows marked ``~`` are extrapolated; everything else is measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------------
def _rss_mb():
    """Peak RSS of this process (VmHWM; ru_maxrss would include the parent's peak, kept across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load(cfg):
    import torch

    from dntk import models

    torch.set_num_threads(cfg["threads"])
    if cfg["model"] == "convnet":
        from dntk import data

        model = models.trained("convnet", dataset="digits", seed=0)
        X, _ = data.as_tensors(data.load("digits", "train"), limit=cfg["n"])
    else:
        model = models.build("resnet18", 10, in_channels=3, seed=0)
        X = torch.rand(cfg["n"], 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model.eval(), X.contiguous()


def _floor(model, X, C):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    out = model(X)
    for c in range(C):
        torch.autograd.grad(out[:, c].sum(), params, retain_graph=c < C - 1)
    return None


def _jac_chunks(model, X, chunk):
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    bufs = dict(model.named_buffers())

    def f(p, x):
        return functional_call(model, {**p, **bufs}, (x.unsqueeze(0),)).squeeze(0)

    jf = vmap(jacrev(f), in_dims=(None, 0))
    for s in range(0, X.shape[0], chunk):
        J = jf(params, X[s : s + chunk])
        n = X[s : s + chunk].shape[0]
        yield s, torch.cat([J[k].reshape(n, J[k].shape[1], -1) for k in params], dim=2)


def _recipe(model, X, C, k, R, chunk, P, slice_frac=1, timing=None):
    """vmap(jacrev) + dense Gaussian. R given → cached; R None → regenerated in row blocks per chunk."""
    import torch

    N = X.shape[0]
    out = torch.zeros(N, C, k)
    rows_blk = max(1, (256 << 20) // (4 * k))
    for s, J in _jac_chunks(model, X, chunk):
        n = J.shape[0]
        Jf = J.reshape(n * C, -1)
        t0 = time.perf_counter()
        if R is not None:
            out[s : s + n] = (Jf @ R).reshape(n, C, k)
        else:
            g = torch.Generator()
            acc = torch.zeros(n * C, k)
            stop = P // slice_frac
            for b0 in range(0, stop, rows_blk):
                b1 = min(stop, b0 + rows_blk)
                g.manual_seed(b0)
                acc += Jf[:, b0:b1] @ (torch.randn(b1 - b0, k, generator=g) / math.sqrt(k))
            out[s : s + n] = acc.reshape(n, C, k)
        if timing is not None:
            timing["proj"] += time.perf_counter() - t0
        del J, Jf
    return out


class _ClassLogit:
    """TRAK model-output function: the logit of class ``label`` (one pass per class)."""

    def __init__(self):
        pass

    @staticmethod
    def get_output(model, weights, buffers, image, label):
        import torch

        out = torch.func.functional_call(model, (weights, buffers), image.unsqueeze(0))
        return out[0].gather(0, label.reshape(1))[0]


def _trak(model, X, C, k, dtype, block_size, chunk, P, slice_frac=1, timing=None, classes=None):
    import torch
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.projectors import BasicProjector, ProjectionType
    from trak.utils import vectorize

    gc = FunctionalGradientComputer(model, _ClassLogit(), grad_dim=P, dtype=dtype, device="cpu")
    Ps = P // slice_frac
    proj = BasicProjector(grad_dim=Ps, proj_dim=k, seed=0, proj_type=ProjectionType.normal, device="cpu",
                          block_size=block_size, dtype=dtype)
    N = X.shape[0]
    out = torch.zeros(N, C, k)
    for c in (range(C) if classes is None else classes):
        for s in range(0, N, chunk):
            x = X[s : s + chunk]
            lab = torch.full((x.shape[0],), c, dtype=torch.long)
            grads = gc.compute_per_sample_grad((x, lab))
            g = vectorize(grads, device="cpu")[:, :Ps]
            del grads
            t0 = time.perf_counter()
            out[s : s + x.shape[0], c] = proj.project(g, model_id=0).float() / math.sqrt(k)
            if timing is not None:
                timing["proj"] += time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------------------------------
# the previous sparse projector (reference row only)
# --------------------------------------------------------------------------------------------------
def _old_sparse(k, seed=0):
    """The ``sparse`` kind as it was before the sparse JL transform: entries ``±1/√(k q)`` with probability
    ``q/2`` each (``q = 1/√P``), else 0, drawn per tile (Binomial count, uniform positions), applied as a
    CSR product. Plugged into the same accumulator as the new kind, so only ``R`` differs."""
    import warnings

    import torch

    from dntk import projection

    class VerySparseReference(projection.SparseProjector):
        def _check_layout(self, blocks, P):
            self.density = min(1.0, 1.0 / math.sqrt(P))
            self.tile_rows = max(1, int((1 << 18) / (k * self.density)))

        def _tile(self, b, t):
            def build():
                rows = min(self.tile_rows, self.blocks[b].size - t * self.tile_rows)
                g = projection._generator(self.seed, projection._KIND_ID["sparse"], b, t, 0)
                q, n = self.density, rows * k
                rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,), generator=g))))
                cnt = int(rng.binomial(n, q))
                flat = np.sort(rng.choice(n, size=cnt, replace=False)) if cnt else np.zeros(0, np.int64)
                r, c = flat // k, flat % k
                vals = (rng.integers(0, 2, cnt).astype(np.float32) * 2 - 1) / math.sqrt(k * q)
                order = np.lexsort((r, c))
                c, r, vals = c[order], r[order], vals[order]
                crow = np.zeros(k + 1, np.int64)
                np.cumsum(np.bincount(c, minlength=k), out=crow[1:])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(r.astype(np.int64)),
                                                   torch.from_numpy(vals), (k, rows), check_invariants=False)
            return self._cached((b, t), build)

        def rows_matmul(self, b, start, G, owned=False):
            stop, tr = start + G.shape[1], self.tile_rows
            out = None
            for t in range(start // tr, (stop - 1) // tr + 1):
                ST = self._tile(b, t)
                lo, hi = max(start - t * tr, 0), min(stop - t * tr, ST.shape[1])
                g0 = t * tr + lo - start
                if lo != 0 or hi != ST.shape[1]:
                    ST = _csr_columns(ST, lo, hi)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    part = torch.sparse.mm(ST, G[:, g0 : g0 + hi - lo].T.contiguous()).T
                out = part if out is None else out + part
            return out

        def accumulator(self, n, C, device, max_bytes):
            self._require_bound()
            return TileAlignedAccumulator(self, n, C, device, max_bytes)

    class TileAlignedAccumulator(projection._SparseAccumulator):
        def _step(self, nC):  # whole tiles per product, as the previous implementation did
            tr = self.proj.tile_rows
            step = max(1, self.max_bytes // (8 * max(1, nC)))
            return (step // tr) * tr if step >= tr else step

    return VerySparseReference(k, seed, s=1)


def _csr_columns(S, lo, hi):
    import warnings

    import torch

    crow, col, val = S.crow_indices(), S.col_indices(), S.values()
    row = torch.repeat_interleave(torch.arange(S.shape[0]), crow[1:] - crow[:-1])
    keep = (col >= lo) & (col < hi)
    counts = torch.bincount(row[keep], minlength=S.shape[0])
    new_crow = torch.zeros(S.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=new_crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(new_crow, col[keep] - lo, val[keep], (S.shape[0], hi - lo), check_invariants=False)


def _frontier_worker(model, X, cfg):
    """Every (k) of one kind, minimum of ``repeats`` CPU/wall times each; features saved for the error."""
    from dntk import projection, tangent

    rows = []
    for kk in cfg["dims"]:
        times, cpus = [], []
        feats = None
        for _ in range(cfg["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            feats = tangent.class_gradients(model, X, projector=projection.make(cfg["kind"], kk, seed=0))
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        path = os.path.join(cfg["tmp"], f"frontier-{cfg['kind']}-{kk}.npy")
        np.save(path, feats.numpy())
        rows.append({"k": kk, "time": min(times), "cpu": min(cpus), "feats": path})
    return rows


def worker(cfg):
    import torch

    from dntk import projection, tangent

    model, X = _load(cfg)
    C = tangent.logits(model, X[:1]).shape[1]
    P = tangent.num_params(model)
    k, method, reps = cfg["k"], cfg["method"], cfg["repeats"]
    base = _current_rss_mb()
    extra = {}

    if method == "floor":
        run = lambda: _floor(model, X, C)  # noqa: E731
    elif method == "exact":
        mm = np.lib.format.open_memmap(cfg["out"], mode="w+", dtype=np.float32, shape=(X.shape[0], C, P))
        tangent.class_gradients(model, X, out=mm, batch_size=cfg.get("batch", 8))
        mm.flush()
        print(json.dumps({"P": P, "C": C}))
        return
    elif method == "recipe":
        chunk = max(1, min(X.shape[0], (1 << 30) // (4 * C * P * 3)))
        if P * k * 4 <= (2 << 30):
            R = torch.randn(P, k, generator=torch.Generator().manual_seed(0)) / math.sqrt(k)  # cached, not timed
            run = lambda: _recipe(model, X, C, k, R, chunk, P)  # noqa: E731
        else:
            sl = cfg["slice"]
            timing = {"proj": 0.0}

            def run():
                timing["proj"] = 0.0
                t0 = time.perf_counter()
                o = _recipe(model, X, C, k, None, chunk, P, slice_frac=sl, timing=timing)
                total = time.perf_counter() - t0
                extra["extrapolated"] = total - timing["proj"] + timing["proj"] * sl
                return o

        extra["chunk"] = chunk
    elif method.startswith("trak"):
        dtype = torch.float16 if method == "trak-default" else torch.float32
        chunk = max(1, min(X.shape[0], (1 << 30) // (4 * P * 3)))
        sl = cfg["slice"] if P * k > (1 << 28) else 1
        if method == "trak-default":
            bsz = 100
        else:
            bsz = int(max(1, min(k, (512 << 20) // (4 * (P // sl)))))
        timing = {"proj": 0.0}
        classes = None if sl == 1 else [0]

        def run():
            timing["proj"] = 0.0
            t0 = time.perf_counter()
            o = _trak(model, X, C, k, dtype, bsz, chunk, P, slice_frac=sl, timing=timing, classes=classes)
            total = time.perf_counter() - t0
            if sl > 1:  # gradients were computed for one class: both stages scale by C, projection by sl too
                extra["extrapolated"] = C * ((total - timing["proj"]) + timing["proj"] * sl)
            return o

        extra["block_size"], extra["chunk"] = bsz, chunk
    elif method == "frontier":
        print(json.dumps({"rows": _frontier_worker(model, X, cfg)}))
        return
    elif method == "dntk-sparse-old":
        def run():
            return tangent.class_gradients(model, X, projector=_old_sparse(k), batch_size=cfg.get("batch"))
    elif method.startswith("dntk-"):
        kind = method[5:]
        opts = dict(cfg.get("opts", {}))
        kk = opts.pop("k", k)

        def run():
            return tangent.class_gradients(model, X, projector=projection.make(kind, kk, seed=0, **opts),
                                           batch_size=cfg.get("batch"))
    else:
        raise SystemExit(f"unknown method {method}")

    if cfg.get("warmup", True):  # one untimed run: lazy initialisation, allocator warm-up
        run()
    times, cpus, exts = [], [], []
    feats = None
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        feats = run()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if "extrapolated" in extra:
            exts.append(extra["extrapolated"])
    res = {"times": times, "cpu": cpus, "rss_peak": _rss_mb(), "rss_base": base, "P": P, "C": C, "N": X.shape[0],
           "load": os.getloadavg()[0]}
    if exts:
        res["extrapolated"] = exts
    res.update({k_: v for k_, v in extra.items() if k_ != "extrapolated"})
    if feats is not None and cfg.get("feats"):
        np.save(cfg["feats"], feats.detach().float().numpy())
    print(json.dumps(res))


# --------------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------------
def _spawn(cfg, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{cfg['method']} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _exact_kernels(cfg, tmp):
    """Exact class kernels (C, N, N) float64 from unprojected features streamed to a memmap on disk."""
    import torch

    from dntk import kernel

    path = os.path.join(tmp, f"exact-{cfg['model']}-{cfg['n']}.npy")
    _spawn(dict(cfg, method="exact", out=path, batch=4))
    F = np.load(path, mmap_mode="r")
    N, C, P = F.shape
    K = torch.zeros(C, N, N, dtype=torch.float64)
    step = max(1, (256 << 20) // (8 * N * C))
    for s in range(0, P, step):
        blk = torch.from_numpy(np.ascontiguousarray(F[:, :, s : s + step]))
        K += kernel.class_kernels(blk)
    del F
    os.remove(path)
    return K


def _kernel_error(feats_path, K):
    import torch

    from dntk import kernel

    G = torch.from_numpy(np.load(feats_path))
    return kernel.relative_error(kernel.class_kernels(G), K)


def _summarise(r):
    """Least-disturbed repetition on a shared machine: minimum wall time and minimum CPU time (all threads).
    Extrapolated rows scale both by the same factor as their timed run."""
    scale = [e / t for e, t in zip(r["extrapolated"], r["times"])] if "extrapolated" in r else [1.0] * len(r["times"])
    r["time"] = min(t * f for t, f in zip(r["times"], scale))
    r["cpu_med"] = min(c * f for c, f in zip(r["cpu"], scale))
    r["extrap"] = "extrapolated" in r


def run_model(name, args, tmp):
    quick = args.quick
    if name == "convnet":
        cfg = dict(model="convnet", n=args.n or (64 if quick else 256), k=512, threads=args.threads,
                   repeats=1 if quick else 7)
        methods = ["floor", "recipe", "trak-default", "trak-fp32", "dntk-gaussian", "dntk-rademacher",
                   "dntk-sparse", "dntk-sparse-old", "dntk-srht", "dntk-kronecker", "dntk-orthonormal"]
        slow = {"trak-default": dict(repeats=1, warmup=False, n=64)}  # float16 on CPU: ~40x slower; fewer samples
    else:
        cfg = dict(model="resnet18", n=4 if quick else args.resnet_n, k=2048, threads=args.threads,
                   repeats=args.resnet_repeats, slice=args.slice)
        methods = ["floor", "recipe", "trak-fp32", "dntk-gaussian", "dntk-srht", "dntk-sparse", "dntk-sparse-old",
                   "dntk-kronecker"]
        if not quick:
            methods.insert(2, "trak-default")
        if args.all:
            methods.insert(5, "dntk-rademacher")
        slow = {m: dict(warmup=False) for m in methods if m != "floor"}  # minutes each: no warm-up run
    if args.methods:
        methods = [m for m in methods if m in args.methods.split(",")]
    print(f"\n== {name}: N = {cfg['n']}, k = {cfg['k']}, threads = {cfg['threads']}", flush=True)
    t0 = time.perf_counter()
    K = _exact_kernels(cfg, tmp)
    print(f"   exact class kernels in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for m in methods:
        c = dict(cfg, method=m, feats=os.path.join(tmp, f"{name}-{m}.npy"))
        if m in slow:
            c.update(slow[m])
        if name == "resnet18" and m.startswith("trak"):
            c["slice"] = args.slice * (4 if m == "trak-default" else 1)
        t0 = time.perf_counter()
        try:
            r = _spawn(c)
        except Exception as e:  # report and continue
            print(f"   {m}: FAILED ({str(e).splitlines()[0]})", flush=True)
            continue
        r["method"] = m
        _summarise(r)
        sliced = r["extrap"]  # features cover a prefix of P / one class only: no kernel error
        r["err"] = None if m == "floor" or sliced or c["n"] != cfg["n"] else _kernel_error(c["feats"], K)
        rows.append(r)
        print(f"   {m:18s} {r['time']:9.3f} s{'~' if r['extrap'] else ' '}  (wall {time.perf_counter() - t0:.0f} s)", flush=True)
    extra_rows = []
    if name == "convnet" and args.frontier:
        cfg["frontier"] = _frontier(cfg, K, tmp, args)
    if name == "convnet" and not quick and not args.methods:
        # peak memory flat in N: dntk gaussian at 4N
        c = dict(cfg, method="dntk-gaussian", n=4 * cfg["n"], repeats=3, feats=None)
        r = _spawn(c)
        _summarise(r)
        r.update(method=f"dntk-gaussian (N={4 * cfg['n']})", err=None)
        extra_rows.append(r)
        # kronecker: error against k and against time
        for kk in (2048, 8192, 32768):
            c = dict(cfg, method="dntk-kronecker", repeats=3, opts={"k": kk}, feats=os.path.join(tmp, f"kron{kk}.npy"))
            r = _spawn(c)
            _summarise(r)
            r.update(method=f"dntk-kronecker k={kk}", err=_kernel_error(c["feats"], K))
            os.remove(c["feats"])
            extra_rows.append(r)
    return cfg, rows, extra_rows


def _frontier(cfg, K, tmp, args):
    """Error against CPU time for every kind at several k (one worker per kind); writes the figure."""
    dims = [int(d) for d in args.frontier_dims.split(",")]
    kinds = ["gaussian", "rademacher", "sparse", "srht", "kronecker", "orthonormal"]
    points = []
    for kind in kinds:
        kd = [d for d in dims if kind != "orthonormal" or d * 28842 <= (1 << 25)]
        c = dict(cfg, method="frontier", kind=kind, dims=kd, repeats=1 if args.quick else args.frontier_repeats, tmp=tmp)
        try:
            res = _spawn(c)
        except Exception as e:
            print(f"   frontier {kind}: FAILED ({str(e).splitlines()[0]})", flush=True)
            continue
        for r in res["rows"]:
            r.update(kind=kind, err=_kernel_error(r.pop("feats"), K))
            points.append(r)
            print(f"   frontier {kind:12s} k={r['k']:6d}  {r['cpu']:7.3f} CPU-s  {r['time']:7.3f} s  error {r['err']:.4f}",
                  flush=True)
    _plot_frontier(points, cfg, args.frontier)
    print("\n| kind | k | wall (s) | CPU (s) | kernel rel. error |\n|---|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['kind']} | {p['k']} | {p['time']:.3f} | {p['cpu']:.2f} | {p['err']:.4f} |")
    return points


def _plot_frontier(points, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = dict(gaussian="o", rademacher="s", sparse="D", srht="^", kronecker="v", orthonormal="P")
    for kind in markers:
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["k"])
        if not pts:
            continue
        ax.plot([p["cpu"] for p in pts], [p["err"] for p in pts], marker=markers[kind], label=kind)
        for p in pts:
            ax.annotate(f"{p['k']}", (p["cpu"], p["err"]), textcoords="offset points", xytext=(4, 3), fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"CPU seconds for N = {cfg['n']} images ({cfg['threads']} threads)", fontsize=11)
    ax.set_ylabel("class-kernel relative error", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    print(f"   frontier figure: {path}", flush=True)


def print_table(name, cfg, rows, extra_rows):
    """Ratios use CPU seconds (robust to other processes on the machine); samples/s uses wall time."""
    ref = next((r["cpu_med"] for r in rows if r["method"] == "dntk-gaussian"), None)
    floor = next((r["cpu_med"] for r in rows if r["method"] == "floor"), None)
    P, C = rows[0]["P"], rows[0]["C"]
    print(f"\n### {name}: N = {cfg['n']}, C = {C}, P = {P:,}, k = {cfg['k']}, threads = {cfg['threads']}, "
          f"min of {cfg['repeats']} run(s)\n")
    print("| method | wall (s) | CPU (s) | samples/s | CPU × dntk-gaussian | CPU × floor | peak RSS (MiB) | Δ RSS (MiB) | kernel rel. error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows + extra_rows:
        n = r.get("N", cfg["n"])
        t, cpu = r["time"], r["cpu_med"]
        mark = "~" if r["extrap"] else ""
        ratio = f"{cpu / ref:.2f}" if ref and "N=" not in r["method"] and "k=" not in r["method"] else "—"
        fl = f"{cpu / floor:.1f}" if floor else "—"
        err = "—" if r["err"] is None else f"{r['err']:.4f}"
        print(f"| {r['method']} | {mark}{t:.3f} | {mark}{r['cpu_med']:.2f} | {mark}{n / t:.3g} | {mark}{ratio} | {mark}{fl} | {r['rss_peak']:.0f} | "
              f"{r['rss_peak'] - r['rss_base']:.0f} | {err} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["convnet", "resnet18"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (a smoke test)")
    ap.add_argument("--resnet-n", type=int, default=8, help="ResNet-18 samples (default 8)")
    ap.add_argument("--slice", type=int, default=32, help="ResNet-18 recipe/TRAK: project a 1/slice prefix of P and scale")
    ap.add_argument("--json", help="write all rows to this JSON file")
    ap.add_argument("--all", action="store_true", help="also ResNet-18 rademacher (as slow as gaussian)")
    ap.add_argument("--methods", help="comma-separated subset of the rows to run (e.g. floor,dntk-sparse,dntk-sparse-old)")
    ap.add_argument("--frontier", help="convnet: write the error-versus-time frontier of every kind to this PNG")
    ap.add_argument("--frontier-dims", default="128,512,2048", help="k values of the frontier (default 128,512,2048)")
    ap.add_argument("--resnet-repeats", type=int, default=1, help="ResNet-18 timed runs per method (minimum kept)")
    ap.add_argument("--frontier-repeats", type=int, default=3, help="timed runs per frontier point (minimum kept)")
    ap.add_argument("--n", type=int, help="convnet samples (default 256; 64 with --quick)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    out = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dntk-bench-") as tmp:
        for name in (["convnet", "resnet18"] if args.only is None else [args.only]):
            cfg, rows, extra = run_model(name, args, tmp)
            print_table(name, cfg, rows, extra)
            out[name] = {"config": cfg, "rows": rows, "extra": extra}
    print(f"\nTotal benchmark wall time: {time.perf_counter() - t0:.0f} s (machine load average {os.getloadavg()[0]:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
