"""PyTorch's side of the `conv_shapes` example (crates/layers/examples/conv_shapes.rs) for
`resnet18-cifar`'s convolutions at batch 128: one `nn.Conv2d` (no bias) on a channels_last
input under bf16 autocast, the forward alone or the forward with both gradients
(`y.float().sum().backward()`), the median of five runs after a warm-up, in ms, printed as
conv_shapes prints its lines.

Usage: python tools/pytorch_conv_shapes.py [FILTER] [forward]
  FILTER keeps the shapes whose line contains it ("k3 s2", "32x32"); "" for all.
  Runs on 2 threads, as the CI machine's pool (set RAYON_NUM_THREADS=2 for ours elsewhere)."""
import statistics, sys, time

import torch

torch.set_num_threads(2)
# (batch, in, out, size, kernel, stride, padding), as in conv_shapes.
SHAPES = [
    (128, 3, 64, 32, 3, 1, 1),
    (128, 64, 64, 32, 3, 1, 1),
    (128, 64, 128, 32, 3, 2, 1),
    (128, 64, 128, 32, 1, 2, 0),
    (128, 128, 128, 16, 3, 1, 1),
    (128, 128, 256, 16, 3, 2, 1),
    (128, 128, 256, 16, 1, 2, 0),
    (128, 256, 256, 8, 3, 1, 1),
    (128, 256, 512, 8, 3, 2, 1),
    (128, 256, 512, 8, 1, 2, 0),
    (128, 512, 512, 4, 3, 1, 1),
]
filt = sys.argv[1] if len(sys.argv) > 1 else ""
forward_only = len(sys.argv) > 2 and sys.argv[2] == "forward"
for (n, cin, cout, size, k, s, p) in SHAPES:
    name = f"n{n} {cin:>3}->{cout:<3} {size:>2}x{size:<2} k{k} s{s}"
    if filt not in name:
        continue
    conv = torch.nn.Conv2d(cin, cout, k, s, p, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(n, cin, size, size).to(memory_format=torch.channels_last)
    x.requires_grad_(cin != 3)
    ts = []
    for _ in range(6):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        if not forward_only:
            y.float().sum().backward()
        ts.append((time.perf_counter() - t) * 1e3)
    print(f"{name}  torch-bf16-cl {statistics.median(ts[1:]):7.2f}", flush=True)
