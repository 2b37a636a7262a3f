#!/bin/bash
# The training pass of one train-cifar epoch (loader, step, per-step metrics; the test pass
# timed apart) against the same epoch written in PyTorch (tools/pytorch_epoch.py). Ours, then
# PyTorch with DataLoader workers 0, 1 and 2 (and in f32 both memory formats; bf16 autocast
# runs channels_last, PyTorch's faster layout there), ROUNDS times, each precision in turn;
# every side on THREADS compute threads (default: the CPUs), ours with as many loader threads.
# From the repository root, after `cargo build -p train-cifar`:
#
#   tools/epoch_vs_pytorch.sh [ROUNDS] [MODEL] [TRAIN] [TEST]     # 3 resnet18-seed 10000 2000
#
# PYTHON (default ~/torch-venv/bin/python) has torch and torchvision; CNN_SHARED_DIR (default
# ../shared) holds data/cifar10/cifar10-jpeg.tar.gz and tools/pytorch-anchors.
set -u
cd "$(dirname "$0")/.."
rounds=${1:-3} model=${2:-resnet18-seed} n_train=${3:-10000} n_test=${4:-2000}
threads=${THREADS:-$(nproc)}
shared=${CNN_SHARED_DIR:-../shared}
python=${PYTHON:-$HOME/torch-venv/bin/python}
archive=$shared/data/cifar10/cifar10-jpeg.tar.gz
ours=${CARGO_TARGET_DIR:-target}/debug/train-cifar
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)," \
    "$(nproc) CPUs, $threads threads a side, $model, $n_train training / $n_test test images"
for r in $(seq 1 "$rounds"); do
    for precision in f32 bf16; do
        rm -rf "$out/run"
        RAYON_NUM_THREADS=$threads "$ours" --data-dir "$archive" --model "$model" --epochs 1 \
            --limit-train "$n_train" --limit-test "$n_test" --precision "$precision" \
            --workers "$threads" --out "$out/run" 2>&1 |
            grep "^epoch" | sed "s/^/round $r ours $precision: /"
        formats="channels_last"
        [ "$precision" = f32 ] && formats="contiguous_format channels_last"
        for format in $formats; do
            for workers in 0 1 2; do
                CNN_SHARED_DIR=$shared "$python" tools/pytorch_epoch.py "$archive" --model "$model" \
                    --train "$n_train" --test "$n_test" --workers "$workers" \
                    --precision "$precision" --memory-format "$format" --threads "$threads" |
                    sed "s/^/round $r /"
            done
        done
    done
done
