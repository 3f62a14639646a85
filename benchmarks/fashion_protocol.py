"""The Fashion-MNIST protocol of chapter 13 end to end, timed stage by stage, plus featurisation throughput.

Stages: data -> teacher (convnet with BatchNorm, 28x28) -> WMDD at one IPC -> students trained on the WMDD
set and on the random real images it started from -> projected class gradients of the distilled and test
images -> Algorithm 1 against random / leverage / FPS / k-means / rank-m PCA at each budget, for the
teacher's and the student's kernel -> ceilings (KRR on all distilled gradients; JL-only KRR on all training
gradients). Then projected class gradients per second for the convnet at 28x28 and ResNet-18 at 32x32, per
projector kind. Prints a table per stage and writes ``<out>/fashion_protocol.json``.

    python benchmarks/fashion_protocol.py --size tiny                  # CPU smoke test, about a minute
    python benchmarks/fashion_protocol.py --size gpu --json $OUT/gpu_check.json   # the GPU check (< 6 min)
    python benchmarks/fashion_protocol.py --size gpu --skip-protocol --json $OUT/throughput.json

Sizes: ``tiny`` (20 images per class, CPU smoke test), ``ci`` (chapter 13's defaults), ``gpu`` (the full
60,000 training and 10,000 test images, 1000 WMDD steps, k = 2048).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dntk import data, metrics, models, projection, spectral, tangent, wmdd  # noqa: E402
from dntk.gradient_distillation import leverage_scores, local_global, select  # noqa: E402
from dntk.krr import ClassKRR, default_lam  # noqa: E402

warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")

SIZES = {
    "tiny": dict(train_per_class=20, test_limit=200, teacher_epochs=3, teacher_batch=64, wmdd_iterations=2,
                 student_epochs=3, ipc=10, budgets=[1, 2, 5], seeds=[0, 1], k=128, feat_n=16, resnet_width=8),
    "ci": dict(train_per_class=200, test_limit=1000, teacher_epochs=15, teacher_batch=64, wmdd_iterations=50,
               student_epochs=60, ipc=50, budgets=[1, 2, 5, 10, 20], seeds=[0, 1, 2], k=512, feat_n=64,
               resnet_width=16),
    "gpu": dict(train_per_class=None, test_limit=None, teacher_epochs=20, teacher_batch=256, wmdd_iterations=1000,
                student_epochs=300, ipc=50, budgets=[1, 2, 5, 10, 20], seeds=[0, 1, 2, 3, 4], k=2048,
                feat_n=1024, resnet_width=64),
}
BASELINES = {"random": "random", "leverage": "leverage", "FPS": "fps", "k-means": "kmeans"}
SEEDED = {"random", "FPS", "k-means"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    ap.add_argument("--json", default=None, help="write the results here, updated after every stage")
    ap.add_argument("--root", default=None, help="Fashion-MNIST folder (default: $DNTK_DATA, then the Debian package)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-protocol", action="store_true", help="only the featurisation throughput")
    args = ap.parse_args(argv)
    S = SIZES[args.size]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    res = {"size": args.size, "settings": S, "device": device, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "threads": torch.get_num_threads(),
           "stage_seconds": {}}
    sec = res["stage_seconds"]
    print(f"== Fashion-MNIST protocol, size {args.size!r}, device {device}"
          + (f" ({res['gpu']})" if cuda else f", {torch.get_num_threads()} CPU threads"), flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def save():
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=1, default=float))

    class stage:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            sync()
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            sync()
            sec[self.name] = sec.get(self.name, 0.0) + time.perf_counter() - self.t0
            if exc[0] is None:
                print(f"   {self.name}: {sec[self.name]:.1f} s", flush=True)
            save()

    if not args.skip_protocol:
        protocol(args, S, device, res, stage)
    if not args.skip_throughput:
        res["throughput"] = []
        throughput(device, S, sync, res["throughput"], save)
    res["total_seconds"] = sum(sec.values())
    if sec:
        print("\nstage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
    save()
    if args.json:
        print(f"wrote {args.json}")
    return res


def protocol(args, S, device, res, stage) -> None:
    """The chapter-13 protocol; fills ``res`` (accuracies, Algorithm 1 vs baselines, ceilings)."""
    seed = 0
    with stage("data"):
        tr = data.load("fashion-mnist", "train", root=args.root, train_per_class=S["train_per_class"], seed=seed)
        X_tr, y_tr = data.as_tensors(tr)
        X_te, y_te = data.as_tensors(data.load("fashion-mnist", "test", root=args.root), limit=S["test_limit"])
    N, C = len(y_tr), tr.num_classes
    res.update(N=N, N_test=len(y_te))

    with stage("teacher training"):
        teacher = models.build("convnet", C, in_channels=1, seed=seed)
        models.train(teacher, (X_tr, y_tr), epochs=S["teacher_epochs"], lr=3e-3, optimizer="adam",
                     batch_size=S["teacher_batch"], seed=seed, device=device)
    teacher.to(device).eval()
    res["P"] = tangent.num_params(teacher)
    res["teacher_acc"] = models.evaluate(teacher, (X_te, y_te), device=device)
    print(f"   teacher: P = {res['P']:,}, N = {N}, test accuracy {res['teacher_acc']:.4f}", flush=True)

    ipc = S["ipc"]
    with stage(f"WMDD IPC {ipc}"):
        stats = wmdd.class_statistics(teacher, (X_tr, y_tr), device=device)
        dset = wmdd.distill(teacher, (X_tr, y_tr), ipc, iterations=S["wmdd_iterations"], lr=0.05, init="real",
                            seed=seed, statistics=stats, device=device)
    start = np.concatenate(dset.settings["init_indices"])
    rand = wmdd.real_subset(teacher, (X_tr, y_tr), start, method="random", device=device)
    students = {}
    with stage("students (WMDD + random)"):
        for name, s in (("WMDD", dset), ("random", rand)):
            st = models.build("convnet", C, in_channels=1, seed=seed)
            wmdd.train_student(st, s, epochs=S["student_epochs"], lr=3e-3, temperature=4.0, teacher=teacher,
                               seed=seed, device=device)
            st.to(device).eval()
            students[name] = st
            res[f"student_acc_{name}"] = models.evaluate(st, (X_te, y_te), device=device)
    print(f"   students at IPC {ipc}: WMDD {res['student_acc_WMDD']:.4f}, random real {res['student_acc_random']:.4f}")

    proj = projection.make("kronecker", S["k"], seed=seed)
    nets = {"teacher": teacher, "student": students["WMDD"]}
    feats = {}
    with stage("featurise distilled + test"):
        for role, net in nets.items():
            G_d = tangent.class_gradients(net, dset.images, projector=proj, device=device)
            G_t = tangent.class_gradients(net, X_te, projector=proj, device=device)
            feats[role] = (G_d.cpu(), G_t.cpu(), tangent.logits(net, dset.images).cpu(), tangent.logits(net, X_te).cpu())
    budgets = [m for m in S["budgets"] if m <= ipc]
    with stage("Algorithm 1 + baselines"):
        labels = torch.as_tensor(spectral.spectral_clusters(feats["teacher"][0], C, seed=seed))
        for role in nets:
            res[role] = compare(*feats[role], y_te, labels, budgets, S["seeds"], C)
    with stage("JL-only ceiling (featurise N)"):
        G_tr = tangent.class_gradients(teacher, X_tr, projector=proj, device=device).cpu()
        jl = ClassKRR(lam_rel=1e-3).fit(G_tr, tangent.logits(teacher, X_tr).cpu()).predict(feats["teacher"][1])
        res["jl_only"] = {"acc": metrics.accuracy(jl, y_te), "fid": metrics.fidelity(jl, feats["teacher"][3])}
        del G_tr
    print_protocol(res, budgets)


def compare(G, G_test, T, logits_test, y_test, labels, budgets, seeds, C, lam_rel=1e-3):
    """Accuracy / fidelity / coverage of Algorithm 1, PCA and the baselines (mean, min, max over seeds)."""
    lam = default_lam(G, lam_rel)

    def score(sets):
        Gs, ts = [s[0] for s in sets], [s[1] for s in sets]
        pred = ClassKRR().fit_synthetic(Gs, ts, lam=lam).predict(G_test)
        return (metrics.accuracy(pred, y_test), metrics.fidelity(pred, logits_test),
                float(metrics.coverage(G, Gs).mean()))

    lg = local_global(G, T, C, tau=0.95, gamma=0.9, budget=max(budgets), labels=labels)
    pca = [select("pca", G[:, c], max(budgets)) for c in range(C)]
    lev = [leverage_scores(G[:, c], lam_rel=lam_rel) for c in range(C)]
    out = {}
    for m in budgets:
        rows = {"Algorithm 1": [score([(cs.G_syn[:m], cs.t_syn[:m]) for cs in lg.classes])],
                "PCA (rank m)": [score([(p.V[:, :m].T @ G[:, c].double(), p.V[:, :m].T @ T[:, c].double())
                                        for c, p in enumerate(pca)])]}
        for name, method in BASELINES.items():
            rows[name] = [score([select(method, G[:, c], m, seed=s, lam_rel=lam_rel,
                                        scores=lev[c] if method == "leverage" else None).apply(G[:, c], T[:, c])
                                 for c in range(C)]) for s in (seeds if name in SEEDED else seeds[:1])]
        out[m] = {name: {key: {"mean": float(np.mean([r[i] for r in v])), "min": float(np.min([r[i] for r in v])),
                               "max": float(np.max([r[i] for r in v]))}
                         for i, key in enumerate(("acc", "fid", "cov"))} for name, v in rows.items()}
    full = ClassKRR(lam_rel=lam_rel).fit(G, T).predict(G_test)
    best = {}
    for m in budgets:
        b = max(BASELINES, key=lambda n: (out[m][n]["acc"]["mean"], out[m][n]["fid"]["mean"]))
        best[m] = {"method": b, "acc": out[m][b]["acc"]["mean"], "fid": out[m][b]["fid"]["mean"]}
    return {"budgets": out, "best_baseline": best,
            "ceiling_distilled": {"acc": metrics.accuracy(full, y_test), "fid": metrics.fidelity(full, logits_test)},
            "net_acc": metrics.accuracy(logits_test, y_test)}


def print_protocol(res, budgets):
    for role in ("teacher", "student"):
        r = res[role]
        print(f"\n{role}: network test accuracy {r['net_acc']:.4f}; KRR on all distilled gradients "
              f"{r['ceiling_distilled']['acc']:.4f} / {r['ceiling_distilled']['fid']:.4f} (accuracy / fidelity)")
        print(f"{'method':<16}" + "".join(f"{'m=' + str(m):>16}" for m in budgets) + "   (accuracy / fidelity)")
        for name in r["budgets"][budgets[0]]:
            print(f"{name:<16}" + "".join(f"{r['budgets'][m][name]['acc']['mean']:>8.3f}/{r['budgets'][m][name]['fid']['mean']:<7.3f}"
                                          for m in budgets))
        if 5 in r["best_baseline"]:
            b, a = r["best_baseline"][5], r["budgets"][5]["Algorithm 1"]
            print(f"m = 5: Algorithm 1 {a['acc']['mean']:.4f} / {a['fid']['mean']:.4f}; best baseline ({b['method']}) "
                  f"{b['acc']:.4f} / {b['fid']:.4f}")
    print(f"\nJL-only KRR on all N = {res['N']} training gradients (teacher): "
          f"{res['jl_only']['acc']:.4f} / {res['jl_only']['fid']:.4f}")


def throughput(device, S, sync, rows: list, save) -> None:
    """Projected class gradients per second (inputs/s) per projector kind, convnet 28x28 and ResNet-18 32x32.

    Appends one dict per (network, projector) to ``rows`` and calls ``save()`` after each (the dense Gaussian,
    slowest at ResNet-18 size, comes last so that a timeout loses as little as possible).
    """
    kinds = [k for k in ("kronecker", "sparse", "srht", "gaussian") if k in projection.KINDS]
    print(f"\n== featurisation throughput ({device}), k = {S['k']}")
    print(f"{'network':<28}{'projector':<11}{'inputs':>8}{'seconds':>9}{'inputs/s':>10}{'peak GiB':>10}")
    g = torch.Generator().manual_seed(0)
    for arch, side, ch, width in (("convnet", 28, 1, None), ("resnet18", 32, 3, S["resnet_width"])):
        model = models.build(arch, 10, in_channels=ch, width=width, seed=0).to(device).eval()
        X = torch.rand(S["feat_n"], ch, side, side, generator=g)
        label = f"{arch} {side}x{side} (P={tangent.num_params(model):,})"
        for kind in kinds:
            # a dense Gaussian at ResNet-18 size regenerates P x k tiles per batch: measure it on fewer inputs
            n = S["feat_n"] if not (kind == "gaussian" and arch == "resnet18") else max(8, S["feat_n"] // 8)
            try:
                proj = projection.make(kind, S["k"], seed=0)
                tangent.class_gradients(model, X[:8], projector=proj, device=device)  # warm-up
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                sync()
                t0 = time.perf_counter()
                tangent.class_gradients(model, X[:n], projector=proj, device=device)
                sync()
                dt = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
                rows.append({"network": label, "projector": kind, "inputs": n, "seconds": dt, "per_second": n / dt,
                             "peak_gib": peak})
                print(f"{label:<28}{kind:<11}{n:>8}{dt:>9.2f}{n / dt:>10.1f}{peak if peak is not None else float('nan'):>10.2f}",
                      flush=True)
            except Exception as e:  # report and go on: one projector failing must not hide the others
                rows.append({"network": label, "projector": kind, "error": f"{type(e).__name__}: {e}"})
                print(f"{label:<28}{kind:<11}  failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
            save()
        del model


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
