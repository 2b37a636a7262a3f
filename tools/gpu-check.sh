#!/bin/bash
# The CUDA checks of issue 7 as one script, for a GPU machine without a Rust toolchain.
#
# Here (any machine):
#   eval "$(../shared/tools/cuda-toolkit.sh)"
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p train --bins -p train-cifar
#   CARGO_TARGET_DIR=target-cuda cargo test --release --features cuda -p layers --test cuda --no-run
#   (optional, cuDNN) tools/gpu-check.sh cudnn-stub "$CUDA_HOME/lib64/stubs"
#                     CARGO_TARGET_DIR=target-cudnn cargo build --release --features cudnn -p train --bins
#   tools/gpu-check.sh pack          # xz-compressed binaries into gpu/xz (about 25-35 MB)
#   cp ../shared/data/cifar10/cifar10-jpeg.tar.gz gpu/data/cifar10/
#   (optional baselines, kept from older packs: gpu/xz/bench-step-session2.xz, built before
#   layers::BatchNorm, and gpu/xz/bench-step-candleconv.xz, with Candle's conv backward)
# On the GPU machine, from the repository root (with gpu/ carried there):
#   tools/gpu-check.sh run           # writes its log and the run's metrics into $OUT (or gpu/out)
#
# `run` prints: every layer on CUDA against the CPU; the training step in f32 and bf16 at
# batch 128 and 512 with the data-pipeline comparison; then CIFAR-10 with the data held on the
# GPU, resnet18-cifar, OneCycle, bf16, batch 512, label smoothing 0.1, for $CIFAR_EPOCHS epochs
# (default 30) or $CIFAR_SECONDS seconds, whichever ends first.
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
cudnn-stub)
    # A link-time stand-in for libcudnn.so.9 with the functions Candle 0.11.1 calls, for a
    # `--features cudnn` build where cuDNN is not installed. At run time the real library (for
    # example PyTorch's nvidia/cudnn/lib) must be on LD_LIBRARY_PATH.
    set -e
    dir=${2:?usage: tools/gpu-check.sh cudnn-stub DIR}
    src=$(mktemp --suffix=.c)
    for f in ConvolutionForward Create CreateConvolutionDescriptor CreateFilterDescriptor \
        CreateTensorDescriptor Destroy DestroyConvolutionDescriptor DestroyFilterDescriptor \
        DestroyTensorDescriptor GetConvolutionForwardAlgorithm_v7 \
        GetConvolutionForwardWorkspaceSize SetConvolution2dDescriptor SetFilter4dDescriptor \
        SetStream SetTensor4dDescriptor SetTensor4dDescriptorEx; do
        echo "int cudnn$f(void) { return 0; }" >>"$src"
    done
    mkdir -p "$dir"
    cc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$dir/libcudnn.so" "$src"
    rm "$src"
    echo "wrote $dir/libcudnn.so (link-time stub, soname libcudnn.so.9)"
    ;;
pack)
    set -e
    mkdir -p gpu/xz gpu/data/cifar10
    test_bin=$(ls -t target-cuda/release/deps/cuda-* | grep -v '\.d$' | head -1)
    pairs=("target-cuda/release/bench-step:bench-step" "target-cuda/release/train-cifar:train-cifar"
        "$test_bin:layers-cuda-test")
    # Optional: the same step built with `--features cudnn` (CARGO_TARGET_DIR=target-cudnn).
    if [ -x target-cudnn/release/bench-step ]; then
        pairs+=("target-cudnn/release/bench-step:bench-step-cudnn")
    fi
    for pair in "${pairs[@]}"; do
        src=${pair%%:*}
        name=${pair##*:}
        strip -o "gpu/$name" "$src"
        xz -T2 -6 -c "gpu/$name" >"gpu/xz/$name.xz"
        rm "gpu/$name"
    done
    ls -la gpu/xz
    ;;
run)
    OUT=${OUT:-gpu/out}
    mkdir -p "$OUT" gpu/bin
    log="$OUT/gpu.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
    NV=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])")
    LD_LIBRARY_PATH="$(find "$NV" -maxdepth 3 -type d -name lib | tr '\n' ':')${LD_LIBRARY_PATH:-}"
    export LD_LIBRARY_PATH
    python3 -c "
import lzma, pathlib
for f in pathlib.Path('gpu/xz').glob('*.xz'):
    pathlib.Path('gpu/bin', f.stem).write_bytes(lzma.decompress(f.read_bytes()))
"
    chmod +x gpu/bin/*
    echo "== layers on CUDA against the CPU" | tee -a "$log"
    timeout 90 gpu/bin/layers-cuda-test --nocapture 2>&1 | tee -a "$log"
    echo "== training step, f32 and bf16, and the data pipeline" | tee -a "$log"
    timeout 180 gpu/bin/bench-step --device cuda --batches 128,512 --precision f32,tf32,bf16 --steps 5 \
        --pipeline 2>&1 | tee -a "$log"
    echo "== where the resnet18-cifar step goes: forward, backward, optimizer, timed apart" | tee -a "$log"
    timeout 90 gpu/bin/bench-step --device cuda --batches 128,512 --precision f32,bf16 --steps 5 \
        --only resnet18-cifar --split 2>&1 | tee -a "$log"
    if [ -x gpu/bin/bench-step-cudnn ]; then
        echo "== the same step built with cuDNN convolutions (--features cudnn)" | tee -a "$log"
        timeout 120 gpu/bin/bench-step-cudnn --device cuda --batches 128,512 --precision f32,bf16 \
            --steps 5 --only resnet18-cifar 2>&1 | tee -a "$log"
    fi
    if [ -x gpu/bin/bench-step-session2 ]; then
        echo "== baseline: the same step with Candle's batch norm (the build before layers::BatchNorm)" | tee -a "$log"
        timeout 90 gpu/bin/bench-step-session2 --device cuda --batches 128,512 --precision f32,bf16 \
            --steps 5 --only resnet18-cifar 2>&1 | tee -a "$log"
    fi
    if [ -x gpu/bin/bench-step-candleconv ]; then
        echo "== baseline: the same step with Candle's own conv backward (an older build)" | tee -a "$log"
        timeout 60 gpu/bin/bench-step-candleconv --device cuda --batches 128,512 --steps 5 \
            --only resnet18-cifar 2>&1 | tee -a "$log"
    fi
    echo "== CIFAR-10, resnet18-cifar, OneCycle, bf16, batch 512, data on the GPU" | tee -a "$log"
    timeout "${CIFAR_SECONDS:-300}" gpu/bin/train-cifar --data-dir gpu/data/cifar10 \
        --model resnet18-cifar --schedule onecycle --lr 0.2 --epochs "${CIFAR_EPOCHS:-30}" \
        --batch-size 512 --test-batch-size 1000 --label-smoothing 0.1 --precision bf16 \
        --data-placement device --device cuda --workers 16 --out /tmp/cifar 2>&1 |
        grep -v '^\s*$' | tee -a "$log"
    cp /tmp/cifar/metrics.csv /tmp/cifar/curves.png "$OUT/" 2>/dev/null
    exit 0
    ;;
*)
    echo "usage: tools/gpu-check.sh cudnn-stub DIR|pack|run" >&2
    exit 2
    ;;
esac
