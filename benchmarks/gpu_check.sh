#!/usr/bin/env bash
# GPU check for the whole DNTK pipeline on ResNet-18 at 32x32 (issue 7). Needs no dataset: it writes a
# small synthetic image folder (class-dependent colour patterns + noise) and runs `dntk.pipeline.run` on
# it end to end, then prints
#   1. `dntk info` (versions, device, threads),
#   2. the SPEC §7 cost ledger for params/imagenette-resnet18.yaml (counts; the paper-scale sizes),
#   3. projected featurisation throughput (inputs/s, peak GPU memory) for srht, kronecker and gaussian,
#      next to the floor (one forward + C backward passes, no per-sample work),
#   4. the pipeline's result table and its ledger with measured stage times and unit costs.
# Budget: under 10 minutes on one H100/H200 at the defaults.
#
#   bash benchmarks/gpu_check.sh                         # defaults below, device auto (cuda if present)
#   N_TRAIN=600 N_TEST=100 N_FEAT=8 WIDTH=8 K=256 bash benchmarks/gpu_check.sh   # CPU smoke test (minutes)
#
# Environment knobs: N_TRAIN (synthetic training images, default 3000), N_TEST (500), N_FEAT (inputs per
# throughput measurement, 512), K (projection dimension, 2048), IPC (WMDD images per class, 10),
# WMDD_ITERS (100), WIDTH (ResNet-18 base width, default 64 = the standard network), DEVICE (auto),
# OUT (where the synthetic data, cache and results go; default a temporary folder), LOG (also write
# everything printed to this file, e.g. LOG=benchmarks/results/gpu_check.txt, which chapter 12 shows).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${LOG:-}" ]; then
  mkdir -p "$(dirname "$LOG")"
  exec > >(tee "$LOG") 2>&1
fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
start=$(date +%s)
echo "== dntk info"
"$PY" -m dntk info
echo
echo "== cost ledger, params/imagenette-resnet18.yaml (operation counts; nothing is run)"
"$PY" -m dntk ledger params/imagenette-resnet18.yaml
echo
"$PY" - <<'PYEOF'
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dntk import ledger, models, pipeline, projection, tangent

warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
env = os.environ
N_TRAIN, N_TEST = int(env.get("N_TRAIN", 3000)), int(env.get("N_TEST", 500))
N_FEAT, K, IPC = int(env.get("N_FEAT", 512)), int(env.get("K", 2048)), int(env.get("IPC", 10))
WMDD_ITERS, WIDTH = int(env.get("WMDD_ITERS", 100)), int(env.get("WIDTH", 64))
DEVICE = env.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
OUT = Path(env.get("OUT") or tempfile.mkdtemp(prefix="dntk-gpu-check-"))
C, SIDE = 10, 32
cuda = DEVICE.startswith("cuda")
if not cuda:
    print(f"note: no CUDA device, running on {DEVICE} (numbers are not GPU numbers)")


def sync():
    if cuda:
        torch.cuda.synchronize()


# ------------------------------------------------------------------ featurisation throughput
print(f"== featurisation throughput: resnet18 (width {WIDTH}) at {SIDE}x{SIDE}, C={C}, k={K}, "
      f"{N_FEAT} inputs, device {DEVICE}")
model = models.build("resnet18", C, in_channels=3, width=WIDTH, seed=0).to(DEVICE).eval()
P = tangent.num_params(model)
g = torch.Generator().manual_seed(0)
X = torch.rand(N_FEAT, 3, SIDE, SIDE, generator=g)
params = [p for p in model.parameters() if p.requires_grad]


def floor():
    out = model(X.to(DEVICE))
    for c in range(C):
        torch.autograd.grad(out[:, c].sum(), params, retain_graph=c < C - 1)


def measure(fn):
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return dt, mem


rows = []
floor()  # warm-up
dt, mem = measure(floor)
rows.append(("floor: forward + C backward", dt, mem))
rows[0] = rows[0] + (N_FEAT,)
for kind in ("srht", "kronecker", "gaussian"):
    n = N_FEAT if kind != "gaussian" else min(N_FEAT, 128)  # dense P x k: regenerated tiles, keep it short
    proj = projection.make(kind, K, seed=0)
    tangent.class_gradients(model, X[:8], projector=proj, device=DEVICE)  # warm-up (tile generation, kernels)
    dt, mem = measure(lambda: tangent.class_gradients(model, X[:n], projector=proj, device=DEVICE))
    rows.append((f"dntk class_gradients, {kind}", dt, mem, n))
print(f"P = {P:,} trainable parameters")
print(f"{'method':<36}{'inputs':>8}{'seconds':>10}{'inputs/s':>12}{'vs floor':>10}{'peak GiB':>10}")
per_floor = rows[0][1] / rows[0][3]
for name, dt, mem, n in rows:
    print(f"{name:<36}{n:>8}{dt:>10.3f}{n / dt:>12.1f}{dt / n / per_floor:>9.1f}x{mem:>10.2f}")
del model

# ------------------------------------------------------------------ synthetic image folder
from PIL import Image

data_dir = OUT / "data"
if not (data_dir / "train").is_dir():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.15, 0.85, size=(C, 4, 4, 3))            # a coarse colour pattern per class
    for split, n in (("train", N_TRAIN), ("val", N_TEST)):
        for i in range(n):
            c = i % C
            pat = np.kron(base[c], np.ones((SIDE // 4, SIDE // 4, 1)))
            img = np.clip(pat + rng.normal(0, 0.25, size=pat.shape), 0, 1)
            d = data_dir / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i}.png")
print(f"\n== pipeline on a synthetic folder: {N_TRAIN} train / {N_TEST} test images, WMDD ipc {IPC}, "
      f"srht k={K}, Algorithm 1 with 5 synthetic gradients per class (data in {data_dir})")

cfg = pipeline.Config.from_dict({
    "name": "gpu-check", "device": DEVICE, "progress": False, "overwrite": True,
    "run_dir": str(OUT / "run"), "cache_dir": str(OUT / "cache"),
    "data": {"name": f"folder:{data_dir}", "resize": SIDE},
    "teacher": {"arch": "resnet18", "width": WIDTH, "epochs": 5, "lr": 0.025, "optimizer": "sgd",
                "batch_size": 128, "weight_decay": 1e-4},
    "distill": {"method": "wmdd", "ipc": IPC, "iterations": WMDD_ITERS, "lr": 0.25, "r_bn": 3.0},
    "student": {"epochs": 30, "lr": 1e-3, "temperature": 20.0},
    "projection": {"kind": "srht", "k": K},
    "gradient_distillation": {"method": "local_global", "budget": 5, "n_clusters": 10, "tau": 0.95, "gamma": 0.5},
    "krr": {"lam_rel": 1e-3, "full_reference": True},
    "ledger": {"measure": True, "measure_inputs": 64},
})
t0 = time.perf_counter()
res = pipeline.run(cfg)
wall = time.perf_counter() - t0
print(res.table())
print(f"\nstage seconds: " + ", ".join(f"{r['stage']}[{r['role']}] {r['seconds']:.1f}" for r in res.stages))
print(f"pipeline wall time {wall:.1f} s\n")
print(res.ledger.table())
PYEOF
echo
echo "gpu_check finished in $(( $(date +%s) - start )) s"
