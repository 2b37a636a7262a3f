#!/usr/bin/env bash
# The CUDA toolkit of ../shared/tools/cuda-toolkit.sh plus NCCL (PyPI's nvidia-nccl-cu13), for
# building the `nccl` feature on a machine without a system CUDA or NCCL install. cudarc links
# libnccl dynamically: the library is needed to link, and again (libnccl.so.2) to run.
# Usage: eval "$(tools/nccl-toolkit.sh [DIR])"   (DIR default /tmp/cudatk)
# then:  cargo build -p train --features nccl
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
T=${1:-/tmp/cudatk}
shared=${CNN_SHARED_DIR:-$here/../../shared}
env=$("$shared/tools/cuda-toolkit.sh" "$T")
if [ ! -f "$T/lib64/libnccl.so" ]; then
  "$T/venv/bin/pip" install -q "nvidia-nccl-cu13==2.*" >&2
  N=$("$T/venv/bin/python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__ or list(nvidia.nccl.__path__)[0]) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])')
  lib=$(ls "$N"/lib/libnccl.so* | head -n 1)
  ln -sf "$lib" "$T/lib64/libnccl.so"
  ln -sf "$lib" "$T/lib64/libnccl.so.2"
  ln -sfn "$N/include/nccl.h" "$T/include/nccl.h" 2>/dev/null || true
fi
echo "$env"
echo "export LD_LIBRARY_PATH=$T/lib64:\${LD_LIBRARY_PATH:-}"
