"""PyTorch's side of `cargo run --release -p layers --example resnet50_convs`: each
convolution shape of torchvision's ResNet-50 at 224x224 (batch 16), the forward alone and the
forward with both gradients (minimum of seven runs), and each shape's total over the network.

bf16 (the default) runs as a PyTorch user trains in bf16 on the CPU: `torch.autocast("cpu",
torch.bfloat16)`, channels_last, and the input already bf16 (a previous layer's output under
autocast). `f32` runs channels_last float32. Two threads, as the 2-core machines we compare on.

    python tools/pytorch_resnet50_convs.py [FILTER] [f32|bf16]
"""

import sys
import time

import torch

SHAPES = [
    (1, 3, 64, 224, 7, 2, 3), (1, 64, 64, 56, 1, 1, 0), (3, 64, 64, 56, 3, 1, 1),
    (4, 64, 256, 56, 1, 1, 0), (2, 256, 64, 56, 1, 1, 0), (1, 256, 128, 56, 1, 1, 0),
    (1, 128, 128, 56, 3, 2, 1), (4, 128, 512, 28, 1, 1, 0), (1, 256, 512, 56, 1, 2, 0),
    (3, 512, 128, 28, 1, 1, 0), (3, 128, 128, 28, 3, 1, 1), (1, 512, 256, 28, 1, 1, 0),
    (1, 256, 256, 28, 3, 2, 1), (6, 256, 1024, 14, 1, 1, 0), (1, 512, 1024, 28, 1, 2, 0),
    (5, 1024, 256, 14, 1, 1, 0), (5, 256, 256, 14, 3, 1, 1), (1, 1024, 512, 14, 1, 1, 0),
    (1, 512, 512, 14, 3, 2, 1), (3, 512, 2048, 7, 1, 1, 0), (1, 1024, 2048, 14, 1, 2, 0),
    (2, 2048, 512, 7, 1, 1, 0), (2, 512, 512, 7, 3, 1, 1),
]
BATCH, RUNS = 16, 7


def main():
    torch.set_num_threads(2)
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    precision = sys.argv[2] if len(sys.argv) > 2 else "bf16"
    if precision not in ("f32", "bf16"):
        sys.exit(f"precision {precision!r}: f32 or bf16")
    bf16 = precision == "bf16"
    lines = [f"{c} {i:>4}->{o:<4} {z:>3}x{z:<3} k{k} s{s}" for c, i, o, z, k, s, _ in SHAPES]
    if not any(filt in line for line in lines):
        sys.exit(f"no shape's line contains {filt!r}; the lines:\n" + "\n".join(lines))
    dtype = torch.bfloat16 if bf16 else torch.float32
    cl = torch.channels_last
    total = 0.0
    for count, cin, cout, size, k, s, p in SHAPES:
        line = f"{count} {cin:>4}->{cout:<4} {size:>3}x{size:<3} k{k} s{s}"
        if filt not in line:
            continue
        conv = torch.nn.Conv2d(cin, cout, k, s, p, bias=False).to(memory_format=cl)
        x = torch.randn(BATCH, cin, size, size).to(memory_format=cl, dtype=dtype)
        x.requires_grad_(cin > 3)
        out = (size + 2 * p - k) // s + 1
        g = torch.randn(BATCH, cout, out, out).to(memory_format=cl, dtype=dtype)
        fwd = both = float("inf")
        for _ in range(RUNS):
            # Fresh gradients each run, as `optimizer.zero_grad()` leaves them (none to add to).
            x.grad = conv.weight.grad = None
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                t0 = time.perf_counter()
                y = conv(x)
                t1 = time.perf_counter()
            y.backward(g)
            t2 = time.perf_counter()
            fwd, both = min(fwd, (t1 - t0) * 1e3), min(both, (t2 - t0) * 1e3)
        total += count * both
        print(f"{line}  forward {fwd:6.2f} ms  with both gradients {both:6.2f} ms"
              f"  x{count} = {count * both:6.1f} ms")
    print(f"total {total:.1f} ms")


if __name__ == "__main__":
    main()
