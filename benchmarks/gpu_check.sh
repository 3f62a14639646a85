#!/usr/bin/env bash
# GPU check: the Fashion-MNIST protocol of chapter 13 on CUDA, at the full 60,000 training / 10,000 test
# images, plus projected-featurisation throughput. Prints everything and writes
#   $OUT/gpu_check.json   the protocol (teacher accuracy, WMDD IPC 50 student accuracy, Algorithm 1 vs every
#                         baseline at m = 1, 2, 5, 10, 20 for teacher and student, ceilings, stage seconds),
#                         written after every stage, so a timeout keeps what finished
#   $OUT/throughput.json  projected class gradients per second: convnet 28x28 and ResNet-18 32x32, per projector
#   $OUT/gpu_check.log    the whole output
# What it runs (benchmarks/fashion_protocol.py --size gpu): convnet teacher (P = 28,842, BatchNorm) trained
# 20 epochs on all 60,000 images; WMDD at IPC 50 (1000 steps, init from real images); students on the WMDD
# set and on the random real images it started from (300 epochs); Kronecker-projected class gradients
# (k = 2048) of the 500 distilled and 10,000 test images for teacher and student; Algorithm 1 against
# random / leverage / FPS / k-means (5 seeds) and rank-m PCA; KRR on all 500 distilled gradients and
# JL-only KRR on all 60,000 training gradients. Budget: about 5 minutes on one H100/H200.
#
# Needs, at the repository root (both git-ignored; see benchmarks/fashion_gpu_prepare.sh, which makes them):
#   .data/fashion-mnist/   the four IDX .gz files (found through DNTK_DATA=$PWD/.data)
#   .data/pylib/ot         POT for Python 3.12 (dntk.wmdd's barycenter imports `ot`), added to PYTHONPATH
#                          when the interpreter has no POT of its own
# dntk itself is used from the source tree (PYTHONPATH=$PWD); nothing is installed or downloaded.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh                       # on the GPU machine
#   OUT=/tmp/out SIZE=tiny DEVICE=cpu bash benchmarks/gpu_check.sh  # CPU rehearsal (a minute or two)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to an existing output folder}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
SIZE=${SIZE:-gpu}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export DNTK_DATA=${DNTK_DATA:-$PWD/.data}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# POT from .data/pylib only where the interpreter has none of its own (that copy is built for CPython 3.12)
"$PY" -c "import ot" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/.data/pylib"
export PYTHONUNBUFFERED=1
start=$(date +%s)

echo "== environment"
"$PY" - <<'PYEOF'
import torch, numpy, scipy, sklearn
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
      f"scikit-learn {sklearn.__version__}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CUDA not available)")
try:
    import ot
    print(f"POT {ot.__version__} from {ot.__file__}")
except ImportError as e:
    print(f"POT missing ({e}): WMDD cannot run; run benchmarks/fashion_gpu_prepare.sh on a networked machine")
    raise SystemExit(1)
from dntk import data
print("Fashion-MNIST files in", data.resolve_root("fashion-mnist"))
PYEOF

echo
echo "== the Fashion-MNIST protocol (size $SIZE, device $DEVICE)"
rc=0
timeout 420 "$PY" benchmarks/fashion_protocol.py --size "$SIZE" --device "$DEVICE" --skip-throughput \
  --json "$OUT/gpu_check.json" || rc=$?
[ $rc -eq 0 ] || echo "protocol stopped with exit code $rc (124: the 420 s timeout); $OUT/gpu_check.json holds the finished stages"

echo
echo "== featurisation throughput"
rc2=0
timeout 150 "$PY" benchmarks/fashion_protocol.py --size "$SIZE" --device "$DEVICE" --skip-protocol \
  --json "$OUT/throughput.json" || rc2=$?
[ $rc2 -eq 0 ] || echo "throughput stopped with exit code $rc2 (124: the 150 s timeout)"

echo
echo "gpu_check finished in $(( $(date +%s) - start )) s (protocol exit $rc, throughput exit $rc2)"
exit $(( rc != 0 ? rc : rc2 ))
