#!/usr/bin/env bash
# Prepare the two git-ignored folders that benchmarks/gpu_check.sh needs on a GPU machine without network:
#   .data/fashion-mnist/  the four Fashion-MNIST IDX .gz files (from FASHION_MNIST_DIR, default the Debian
#                         package's /usr/share/datasets/fashion-mnist; `make data` installs it)
#   .data/pylib/ot        POT for CPython 3.12 on x86-64 Linux, unpacked from its PyPI wheel with the
#                         debug symbols of its compiled modules stripped (175 MB -> 4 MB), so that the
#                         whole .data folder stays far below the 64 MiB that travels with the tree
# Run here (network to PyPI needed for the wheel):  bash benchmarks/fashion_gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
POT_VERSION=${POT_VERSION:-0.9.7.post1}
PY=${PYTHON:-$PWD/.venv/bin/python}
mkdir -p .data/fashion-mnist
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$SRC/$f.gz" ] || { echo "missing $SRC/$f.gz: run 'make data' first (or set FASHION_MNIST_DIR)"; exit 1; }
  cp "$SRC/$f.gz" .data/fashion-mnist/
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet "pot==$POT_VERSION" --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d "$tmp"
rm -rf .data/pylib && mkdir -p .data/pylib
(cd .data/pylib && "$PY" -m zipfile -e "$tmp"/pot-*.whl .)
find .data/pylib -name "*.so" -exec strip --strip-unneeded {} +
du -sh .data/fashion-mnist .data/pylib
