#!/bin/bash
# One train-cifar epoch against the same epoch written in PyTorch (tools/pytorch_epoch.py), end
# to end: the data loader, the step, the metrics read every step, the test pass. Ours and
# PyTorch's (DataLoader with 0 and 2 worker processes) alternate, ROUNDS times, each precision
# in turn; compare the medians. From the repository root, after `cargo build -p train-cifar`:
#
#   tools/epoch_vs_pytorch.sh [ROUNDS] [MODEL] [TRAIN] [TEST]     # 3 resnet18-seed 10000 2000
#
# PYTHON (default ~/torch-venv/bin/python) has torch and torchvision; CNN_SHARED_DIR (default
# ../shared) holds data/cifar10/cifar10-jpeg.tar.gz and tools/pytorch-anchors.
set -u
cd "$(dirname "$0")/.."
rounds=${1:-3} model=${2:-resnet18-seed} n_train=${3:-10000} n_test=${4:-2000}
shared=${CNN_SHARED_DIR:-../shared}
python=${PYTHON:-$HOME/torch-venv/bin/python}
archive=$shared/data/cifar10/cifar10-jpeg.tar.gz
ours=${CARGO_TARGET_DIR:-target}/debug/train-cifar
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
    for precision in f32 bf16; do
        rm -rf "$out/run"
        "$ours" --data-dir "$archive" --model "$model" --epochs 1 --limit-train "$n_train" \
            --limit-test "$n_test" --precision "$precision" --out "$out/run" 2>&1 |
            grep "^epoch" | sed "s/^/round $r ours $precision: /"
        for workers in 0 2; do
            CNN_SHARED_DIR=$shared "$python" tools/pytorch_epoch.py "$archive" --model "$model" \
                --train "$n_train" --test "$n_test" --workers "$workers" --precision "$precision" |
                sed "s/^/round $r /"
        done
    done
done
