#!/usr/bin/env bash
# Data-parallel scaling on this machine: images/s of one process with 2 threads against 2 MPI
# ranks with 1 thread each (the same global batch), and the bytes each rank all-reduces per
# training step (the flattened f32 gradients of the trained parameters, plus the loss).
# Needs the programs built with the `mpi` feature and Open MPI:
#   cargo build -p train-mnist -p train-cifar --features mpi
#   tools/bench-distributed.sh [shared dir, default ../shared]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-${CNN_SHARED_DIR:-$(cd .. && pwd)/shared}}
bin=${CARGO_TARGET_DIR:-target}/debug
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# rate PROGRAM LABEL ARGS...: the epoch line's images/s (training), one process then two ranks.
bench() {
  local program=$1 model=$2 batch=$3; shift 3
  local one two params
  one=$(RAYON_NUM_THREADS=2 "$bin/$program" --model "$model" --batch-size $((2 * batch)) --workers 2 \
        --out "$out/$model-1" "$@" | tee "$out/log1")
  two=$(RAYON_NUM_THREADS=1 mpirun -n 2 --oversubscribe --allow-run-as-root "$bin/$program" --model "$model" \
        --batch-size "$batch" --workers 1 --out "$out/$model-2" "$@")
  params=$(grep -oE '[0-9]+ trained' "$out/log1" | grep -oE '[0-9]+')
  r1=$(grep -oE '[0-9.]+ img/s' <<<"$one" | tail -n 1 | cut -d' ' -f1)
  r2=$(grep -oE '[0-9.]+ img/s' <<<"$two" | tail -n 1 | cut -d' ' -f1)
  printf '%-14s global batch %4d | 1 process x 2 threads %6s img/s | 2 ranks x 1 thread %6s img/s | %.2fx | %s bytes all-reduced per step\n' \
    "$model" $((2 * batch)) "$r1" "$r2" "$(echo "$r2 / $r1" | bc -l)" "$((4 * params + 4))"
}

bench train-mnist lenet5 32 --data-dir "$shared/data/mnist" --epochs 1
bench train-mnist cnn-mnist 32 --data-dir "$shared/data/mnist" --epochs 1
bench train-cifar resnet18-seed 32 --data-dir "$shared/data/cifar10" --epochs 1 --limit-train 1024 --limit-test 256
