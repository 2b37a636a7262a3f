#!/bin/bash
# The CUDA checks of issues 7 and 17 as one script, for a GPU machine without a Rust toolchain.
#
# Build here (any machine; 2 cores: about 25 minutes the first time, mostly candle-kernels):
#   eval "$(../shared/tools/cuda-toolkit.sh)"        # CUDA 13.0 from PyPI, libcuda stub
#   tools/gpu-check.sh cudnn-stub "$CUDA_HOME/lib64/stubs"   # libcudnn stub, found by cudarc
#   export CARGO_TARGET_DIR=target-cudnn
#   cargo build --release --features cudnn -p train --bins -p train-cifar
#   cargo test --release --features cudnn -p layers --test cuda --no-run
#   cargo test --release --features cudnn -p train -p optim --lib --no-run
#   (optional, the same step without cuDNN, as a baseline:
#    CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p train --bins)
#   tools/gpu-check.sh pack          # xz-compressed binaries into gpu/xz (about 30-45 MB)
#   cp ../shared/data/cifar10/cifar10-jpeg.tar.gz gpu/data/cifar10/
# $CUDNN_TARGET and $CUDA_TARGET name other target directories (defaults target-cudnn and
# target-cuda). (Optional baselines kept from older packs: gpu/xz/bench-step-session2.xz, built
# before layers::BatchNorm, and gpu/xz/bench-step-candleconv.xz, with Candle's conv backward.)
#
# On the GPU machine, from the repository root (with gpu/ carried there):
#   tools/gpu-check.sh run           # writes its log and the run's metrics into $OUT (or gpu/out)
#
# `run` takes at most $RUN_SECONDS (default 420) in all, each command cut to what is left and
# skipped (said in the log) when under 15 seconds are left, and runs the parts named in $PARTS
# (default tests,table,split,cifar; e.g. PARTS=cifar in a second call). It first checks that
# every packed binary finds its shared libraries (cuBLAS, cuRAND, NVRTC of CUDA 13, cuDNN 9,
# from the PyTorch install's nvidia/* and torch/lib folders) and stops at once, naming the
# missing ones, when one does not; a driver older than 580 is named too (it refuses nvcc 13.0's
# PTX). Each command's exit status is logged when it is not 0. It prints: every layer on CUDA against the CPU and an f64 reference (cuDNN convolutions forward
# and both gradients, cuDNN batch norm, each with contiguous and channels-last inputs, and a
# residual block channels-last against contiguous; the fused activation kernels); train's
# tally kernel against the host's counts; optim's multi-tensor step against the per-tensor one; the training step of every model, f32 and
# TF32 at batch 128 and bf16 at batch 512 (the issue's table), each with the activations
# contiguous and channels-last (`-cl`, cuDNN's NHWC kernels), with the data-pipeline
# comparison, then PyTorch's training images/s on the same GPU in the same call (the shared
# gpu_anchor.py, which `pack` copies into gpu/anchor when ../shared is beside this checkout);
# resnet18-cifar's step split into forward, backward and optimizer; bf16
# channels-last batch norm in cuDNN's persistent mode (LAYERS_CUDNN_BN_PERSISTENT), and with
# the memory pool handing freed memory back at each synchronisation (LAYERS_CUDA_KEEP_FREED=0,
# Candle's default, against the kept pool of every other row); the
# baselines that were packed; then CIFAR-10 with the data held on the GPU, resnet18-cifar,
# OneCycle, bf16, batch 512, label smoothing 0.1, the activations $CIFAR_FORMAT (default
# channels_last), for $CIFAR_EPOCHS epochs (default 30) or until the time is up (at most
# $CIFAR_SECONDS, default 300). The layer tests log each cuDNN algorithm choice with its time
# (LAYERS_CUDNN_LOG=1 does the same for any program).
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
cudnn-stub)
    # A link-time stand-in for libcudnn.so.9, for a `--features cudnn` build where cuDNN is not
    # installed: every function cudarc's cuDNN bindings declare (Candle's forward convolution,
    # layers' cuDNN convolution with its two gradients and algorithm search, and batch norm's
    # training forward and backward are among them), each an empty function. At run time the
    # real library (PyTorch's nvidia/cudnn/lib) must be on LD_LIBRARY_PATH; `run` puts it there.
    set -e
    dir=${2:?usage: tools/gpu-check.sh cudnn-stub DIR}
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/cudnn/sys/mod.rs 2>/dev/null |
        sort -V | tail -n 1)
    [ -n "$sys" ] || { echo "cudarc 0.19 sources not found: run 'cargo fetch' first" >&2; exit 1; }
    src=$(mktemp --suffix=.c)
    grep -oE "^pub unsafe fn cudnn[A-Za-z0-9_]+\(" "$sys" | grep -oE "cudnn[A-Za-z0-9_]+" | sort -u |
        awk '{print "int " $1 "(void) { return 0; }"}' >"$src"
    mkdir -p "$dir"
    cc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$dir/libcudnn.so" "$src"
    echo "wrote $dir/libcudnn.so ($(wc -l <"$src") functions; link-time stub, soname libcudnn.so.9)"
    rm "$src"
    ;;
pack)
    set -e
    cudnn=${CUDNN_TARGET:-target-cudnn}
    cuda=${CUDA_TARGET:-target-cuda}
    mkdir -p gpu/xz gpu/data/cifar10
    test_bin=$(ls -t "$cudnn"/release/deps/cuda-* | grep -v '\.d$' | head -1)
    # train's and optim's unit tests (the tally's CUDA kernel against the host's counts, the
    # optimizers' multi-tensor step against the per-tensor update).
    unit_test() {
        find "$cudnn/release/deps" -maxdepth 1 -type f -executable -name "$1-*" \
            -printf '%T@ %p\n' | sort -rn | head -1 | cut -d' ' -f2
    }
    train_tests=$(unit_test train)
    optim_tests=$(unit_test optim)
    [ -n "$train_tests" ] && [ -n "$optim_tests" ] ||
        { echo "no train or optim unit-test binary: cargo test --release --features cudnn -p train -p optim --lib --no-run" >&2; exit 1; }
    pairs=("$cudnn/release/bench-step:bench-step" "$cudnn/release/train-cifar:train-cifar"
        "$test_bin:layers-cuda-test" "$train_tests:train-unit-test" "$optim_tests:optim-unit-test")
    # optim's tests check the multi-tensor step on CUDA only when built with its PTX.
    grep -aq '\.entry sgd_f32' "$optim_tests" ||
        { echo "$optim_tests has no CUDA kernels: cargo test --release --features cudnn -p train -p optim --lib --no-run" >&2; exit 1; }
    for bin in bench-step train-cifar; do
        nm -D --undefined-only "$cudnn/release/$bin" | grep -q ' cudnn' ||
            { echo "$cudnn/release/$bin does not link cuDNN: build it with --features cudnn" >&2; exit 1; }
    done
    # Optional: the step without cuDNN (`--features cuda`), as a same-session baseline.
    if [ -x "$cuda/release/bench-step" ]; then
        pairs+=("$cuda/release/bench-step:bench-step-nocudnn")
    fi
    rm -f gpu/xz/bench-step-cudnn.xz
    for pair in "${pairs[@]}"; do
        src=${pair%%:*}
        name=${pair##*:}
        strip -o "gpu/$name" "$src"
        xz -T2 -6 -c "gpu/$name" >"gpu/xz/$name.xz"
        rm "gpu/$name"
    done
    # PyTorch's same-call reference (the GPU machine's own PyTorch runs it), when this checkout
    # sits beside ../shared.
    anchors=../shared/tools/pytorch-anchors
    if [ -f "$anchors/gpu_anchor.py" ]; then
        mkdir -p gpu/anchor
        cp "$anchors/gpu_anchor.py" "$anchors/models.py" gpu/anchor/
        cat >gpu/anchor/table.py <<'PY'
# The issue's table from PyTorch on this GPU: gpu_anchor's throughput() per model and column.
import sys, os, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_anchor as A
from models import LeNet, CNN_MNIST, seed_resnet18, cifar_resnet18
A.log("gpu", torch.cuda.get_device_name()); A.log("torch", torch.__version__)
for name, mk, shape in [("resnet18-cifar", cifar_resnet18, (3, 32, 32)), ("resnet18-seed", seed_resnet18, (3, 32, 32)), ("cnn_mnist", CNN_MNIST, (1, 28, 28)), ("lenet5", LeNet, (1, 28, 28))]:
    for mode, b in [("fp32", 128), ("tf32", 128), ("bf16", 512)]:
        A.throughput(name, mk, shape, mode, b)
PY
    fi
    ls -la gpu/xz
    ;;
run)
    OUT=${OUT:-gpu/out}
    mkdir -p "$OUT" gpu/bin
    log="$OUT/gpu.txt"
    deadline=$((SECONDS + ${RUN_SECONDS:-420}))
    # gpu/ is ignored by git: it reaches the GPU machine only when the call carries it.
    if ! compgen -G "gpu/xz/*.xz" >/dev/null; then
        echo "no packed binaries in gpu/xz: run 'tools/gpu-check.sh pack' here, and carry gpu/ to the GPU machine (the device tool's carry [\"gpu\"])" | tee -a "$log" >&2
        exit 2
    fi
    # Which parts run: $PARTS, a comma-separated subset of tests,table,split,cifar (default all),
    # so that a second call can run what the first had no time for.
    want() { [[ ",${PARTS:-tests,table,split,cifar}," == *",$1,"* ]]; }
    parts=${PARTS:-tests,table,split,cifar}
    for part in ${parts//,/ }; do
        case "$part" in
        tests | table | split | cifar) ;;
        *)
            echo "PARTS: unknown part '$part' (tests, table, split, cifar)" >&2
            exit 2
            ;;
        esac
    done
    # The seconds part of the run may take: at most $1, and what is left before the deadline.
    budget() {
        local left=$((deadline - SECONDS))
        [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"
    }
    # `step SECONDS COMMAND...`: COMMAND under `timeout` with at most SECONDS (and what is left),
    # its output logged; skipped, and said so, when under 15 seconds are left; a status other
    # than 0 logged (124: the time ran out). Returns COMMAND's status.
    step() {
        local most=$1
        shift
        if [ $((deadline - SECONDS)) -lt 15 ]; then
            echo "(skipped, no time left: $*)" | tee -a "$log"
            return 124
        fi
        timeout -k 10 "$(budget "$most")" "$@" 2>&1 | tee -a "$log"
        local status=${PIPESTATUS[0]}
        [ "$status" = 0 ] || echo "(exit status $status: $*)" | tee -a "$log"
        return "$status"
    }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    if [ -n "$driver" ] && [ "${driver%%.*}" -lt 580 ] 2>/dev/null; then
        echo "(driver $driver is older than 580: it may refuse the PTX of nvcc 13.0, Candle's and our kernels)" | tee -a "$log"
    fi
    # The CUDA 13 libraries and cuDNN 9 of the machine's PyTorch: every nvidia/* package folder
    # and torch/lib.
    libs=$(python3 - <<'PY' 2>/dev/null
import glob, os
dirs = []
try:
    import nvidia
    for root in nvidia.__path__:
        dirs += glob.glob(os.path.join(root, "*", "lib"))
except ImportError:
    pass
try:
    import importlib.util
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        dirs.append(os.path.join(os.path.dirname(spec.origin), "lib"))
except Exception:
    pass
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
    )
    LD_LIBRARY_PATH="${libs:+$libs:}${LD_LIBRARY_PATH:-}"
    export LD_LIBRARY_PATH
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$log"
    python3 -c "
import lzma, pathlib
for f in pathlib.Path('gpu/xz').glob('*.xz'):
    pathlib.Path('gpu/bin', f.stem).write_bytes(lzma.decompress(f.read_bytes()))
"
    chmod +x gpu/bin/*
    # Every shared library the binaries need, found? (They are linked with -z now, so one
    # missing cuDNN symbol stops them too.) Stop here if not: nothing else could run.
    missing=$(for bin in gpu/bin/*; do ldd -r "$bin" 2>&1 | grep -E 'not found|undefined symbol' |
        sed "s|^|$(basename "$bin"): |"; done | sort -u)
    if [ -n "$missing" ]; then
        echo "== shared libraries the binaries cannot find (with LD_LIBRARY_PATH above):" | tee -a "$log"
        echo "$missing" | head -20 | tee -a "$log"
        echo "run took ${SECONDS}s" | tee -a "$log"
        exit 3
    fi
    if want tests; then
        echo "== layers on CUDA against the CPU and an f64 reference (cuDNN)" | tee -a "$log"
        LAYERS_CUDNN_LOG=1 step 200 gpu/bin/layers-cuda-test --nocapture --test-threads 1
        echo "== train's tally (one kernel a batch on CUDA) and optim's optimizers against the host" | tee -a "$log"
        step 30 gpu/bin/train-unit-test tally --test-threads 1
        step 30 gpu/bin/optim-unit-test --test-threads 1
    fi
    if want table; then
        echo "== training step: bf16 at b512, f32 and TF32 at b128 (-cl: channels_last), the data pipeline" | tee -a "$log"
        # Each format in its own call, so that a failure of one leaves the other's rows.
        for format in contiguous_format channels_last; do
            step 60 gpu/bin/bench-step --device cuda --batches 512 --precision bf16 \
                --memory-format "$format" --steps 5
        done
        step 90 gpu/bin/bench-step --device cuda --batches 128 --precision f32,tf32 \
            --steps 5 --pipeline
        step 70 gpu/bin/bench-step --device cuda --batches 128 --precision f32,tf32 \
            --memory-format channels_last --steps 5
        if [ -f gpu/anchor/table.py ]; then
            echo "== PyTorch on this GPU, same call: training images/s (gpu_anchor.py's step)" | tee -a "$log"
            PYTHONUNBUFFERED=1 step 60 python3 gpu/anchor/table.py
        fi
    fi
    if want split; then
        echo "== where the resnet18-cifar step goes: forward, backward, optimizer, timed apart" | tee -a "$log"
        step 60 gpu/bin/bench-step --device cuda --batches 512 --precision bf16 --steps 5 \
            --memory-format contiguous_format,channels_last --only resnet18-cifar --split
        echo "== bf16 channels_last with cuDNN's persistent batch norm (LAYERS_CUDNN_BN_PERSISTENT=1)" | tee -a "$log"
        LAYERS_CUDNN_BN_PERSISTENT=1 step 45 gpu/bin/bench-step --device cuda \
            --batches 512 --precision bf16 --steps 5 --memory-format channels_last \
            --only resnet18-cifar
        echo "== the same, freed memory handed back to the driver at each sync (LAYERS_CUDA_KEEP_FREED=0, Candle's default)" | tee -a "$log"
        LAYERS_CUDA_KEEP_FREED=0 step 45 gpu/bin/bench-step --device cuda \
            --batches 512 --precision bf16 --steps 5 --memory-format channels_last \
            --only resnet18-cifar
        for base in nocudnn session2 candleconv; do
            [ -x "gpu/bin/bench-step-$base" ] || continue
            echo "== baseline bench-step-$base (nocudnn: --features cuda; session2: before layers::BatchNorm; candleconv: Candle's conv backward)" | tee -a "$log"
            step 45 "gpu/bin/bench-step-$base" --device cuda --batches 128 --steps 5 \
                --only resnet18-cifar
        done
    fi
    if want cifar; then
        # In $CIFAR_FORMAT; if a channels_last run fails (not a timeout), again in
        # contiguous_format with the time left.
        cifar() {
            echo "== CIFAR-10, resnet18-cifar, OneCycle, bf16, batch 512, data on the GPU, $1" | tee -a "$log"
            timeout "$(budget "${CIFAR_SECONDS:-300}")" gpu/bin/train-cifar --data-dir gpu/data/cifar10 \
                --model resnet18-cifar --schedule onecycle --lr 0.2 --epochs "${CIFAR_EPOCHS:-30}" \
                --batch-size 512 --test-batch-size 1000 --label-smoothing 0.1 --precision bf16 \
                --memory-format "$1" --overwrite \
                --data-placement device --device cuda --workers 16 --out /tmp/cifar 2>&1 |
                grep -v '^\s*$' | tee -a "$log"
            return "${PIPESTATUS[0]}"
        }
        format=${CIFAR_FORMAT:-channels_last}
        if [ $((deadline - SECONDS)) -lt 60 ]; then
            echo "(under a minute left for the CIFAR-10 run: run again with PARTS=cifar)" | tee -a "$log"
            status=0
        else
            cifar "$format"
            status=$?
        fi
        if [ "$status" != 0 ] && [ "$status" != 124 ] && [ "$format" = channels_last ]; then
            echo "(the channels_last run failed with status $status: again in contiguous_format)" | tee -a "$log"
            cifar contiguous_format || true
        fi
        cp /tmp/cifar/metrics.csv /tmp/cifar/curves.png "$OUT/" 2>/dev/null
    fi
    echo "run took ${SECONDS}s" | tee -a "$log"
    exit 0
    ;;
*)
    echo "usage: tools/gpu-check.sh cudnn-stub DIR|pack|run" >&2
    exit 2
    ;;
esac
