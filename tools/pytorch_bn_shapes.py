"""PyTorch's side of `cargo run --release -p layers --example bn_shapes`: training-mode
batch norm + ReLU on ResNet-50's activation shapes at 224x224, batch 16 (forward, and forward
with the gradients), minimum of seven runs, on 2 threads.

python tools/pytorch_bn_shapes.py [FILTER] [f32|bf16]  (f32: NCHW; bf16: the input in bfloat16
and channels_last, as autocast's convolutions hand it over in a channels_last model, weight and
bias in float32)
"""
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
SHAPES = [(64, 112, 1), (64, 56, 6), (256, 56, 4), (128, 56, 1), (128, 28, 7), (512, 28, 5),
          (256, 28, 1), (256, 14, 11), (1024, 14, 7), (512, 14, 1), (512, 7, 5), (2048, 7, 4)]
BATCH, RUNS = 16, 7
filt = sys.argv[1] if len(sys.argv) > 1 else ""
bf16 = (sys.argv[2] if len(sys.argv) > 2 else "f32") == "bf16"
dtype = torch.bfloat16 if bf16 else torch.float32
fmt = torch.channels_last if bf16 else torch.contiguous_format
total = 0.0
for c, size, count in SHAPES:
    line = f"{c:>4} {size:>3}x{size:<3}"
    if filt not in line:
        continue
    x = torch.randn(BATCH, c, size, size).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    w = (1 + 0.1 * torch.randn(c)).requires_grad_()
    b = (0.1 * torch.randn(c)).requires_grad_()
    rm, rv = torch.zeros(c), torch.ones(c)
    g = torch.randn(BATCH, c, size, size).to(dtype).contiguous(memory_format=fmt)
    fwd = both = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        y = F.relu(F.batch_norm(x, rm, rv, w, b, training=True))
        fwd = min(fwd, time.perf_counter() - start)
        y.backward(g)
        both = min(both, time.perf_counter() - start)
        x.grad = w.grad = b.grad = None
    total += count * both * 1e3
    print(f"{line}  forward {fwd*1e3:6.2f} ms  with gradients {both*1e3:6.2f} ms  x{count} = {count*both*1e3:6.1f} ms")
print(f"total {total:.1f} ms")
