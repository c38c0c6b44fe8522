#!/usr/bin/env bash
# The GPU run (issue 30): MLX's CUDA backend on the lent NVIDIA machine, in one short script.
# That machine has Python 3.12, torch (CUDA 13) and transformers, but no mlx and no registry, and one
# call there carries at most 64 MiB; the mlx-cuda-13 wheel is 90 MB, so it travels in three parts
# (../shared/reference/gpu.md).
#
#   bash benchmarks/gpu.sh prepare     # here: download the wheels into .gpu/, split the CUDA one in 3
#   bash benchmarks/gpu.sh dry-run     # here: benchmarks/gpu.py --quick on this CPU (the same code)
#   bash benchmarks/gpu.sh part 1      # there: keep part 1 outside the checkout (carry .gpu/1)
#   bash benchmarks/gpu.sh part 2      # there, at once after: part 2 (carry .gpu/2)
#   bash benchmarks/gpu.sh part data   # there, at once after: the mlx-data wheel, 18 MB (carry .gpu/data)
#   bash benchmarks/gpu.sh run         # there, at once after: part 3, join, check, install, measure
#                                      # (carry .gpu/3 and .gpu/small); results under $OUT
# Each call carries the tracked tree (about 21 MB) plus its part (at most 29 MB): under the 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=/root/gpu-parts
WHEEL=mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl

case "${1:-}" in
prepare)
    mkdir -p .gpu/small .gpu/full
    grep -qx ".gpu/" .git/info/exclude 2>/dev/null || echo ".gpu/" >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d .gpu/full "mlx==0.32.4" "mlx-cuda-13==0.32.4" "mlx-data==0.1.0" "mlx-lm==0.32.2" watchdog pytest pluggy iniconfig
    mv .gpu/full/$WHEEL .gpu/
    mkdir -p .gpu/data && mv .gpu/full/mlx_data-*.whl .gpu/data/
    mv .gpu/full/*.whl .gpu/small/
    (cd .gpu && sha256sum $WHEEL > $WHEEL.sha256 && split -n 3 -d -a 1 $WHEEL part- \
        && for i in 0 1 2; do mkdir -p $((i + 1)) && mv part-$i $((i + 1))/; done && cp $WHEEL.sha256 small/)
    du -sh .gpu/1 .gpu/2 .gpu/3 .gpu/data .gpu/small
    ;;
dry-run)
    python benchmarks/gpu.py --quick --out "${OUT:-benchmarks/results/gpu}"
    ;;
part)
    mkdir -p $PARTS
    cp .gpu/"$2"/* $PARTS/
    ls -la $PARTS
    ;;
run)
    mkdir -p $PARTS
    cp .gpu/3/part-* $PARTS/
    for i in 0 1 2; do
        [ -f $PARTS/part-$i ] || { echo "part $((i + 1)) is missing: a fresh machine; start again from 'part 1'"; exit 2; }
    done
    ls $PARTS/mlx_data-*.whl > /dev/null || { echo "the mlx-data wheel is missing: start again from 'part 1'"; exit 2; }
    cat $PARTS/part-0 $PARTS/part-1 $PARTS/part-2 > /tmp/$WHEEL
    (cd /tmp && sha256sum -c "$OLDPWD/.gpu/small/$WHEEL.sha256")
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/$WHEEL .gpu/small/*.whl $PARTS/mlx_data-*.whl
    export PYTHONPATH=/tmp/site:$PWD  # the package runs from this checkout: nothing to build there
    python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
    python3 benchmarks/gpu.py --out "${OUT:-benchmarks/results/gpu}"
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
