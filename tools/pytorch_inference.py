"""PyTorch's side of `bench-inference`: the median evaluation-mode forward pass under
torch.no_grad(), images/s, with as many threads as given (default 2, this project's CI kind of
machine), in float32 NCHW and channels_last, or with --precision bf16 in float32 channels_last
and bf16 autocast + channels_last.

The tutorial's networks come from ../shared/tools/pytorch-anchors/models.py (or
$CNN_SHARED_DIR/tools/pytorch-anchors), torchvision's ResNets from torchvision:

    ~/torch-venv/bin/python tools/pytorch_inference.py --models resnet18-cifar,resnet18-seed --batch 256
    ~/torch-venv/bin/python tools/pytorch_inference.py --models resnet50 --batch 96 --image-size 224 --precision bf16
"""

import argparse
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
shared = os.environ.get("CNN_SHARED_DIR", os.path.join(here, "..", "..", "shared"))
sys.path.insert(0, os.path.join(shared, "tools", "pytorch-anchors"))


def build(name):
    """The model and its native input (C, H, W)."""
    if name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        import torchvision

        return getattr(torchvision.models, name)(), (3, 224, 224)
    import models

    table = {
        "lenet5": (models.LeNet, (1, 28, 28)),
        "cnn-mnist": (models.CNN_MNIST, (1, 28, 28)),
        "resnet18-seed": (models.seed_resnet18, (3, 32, 32)),
        "resnet18-cifar": (models.cifar_resnet18, (3, 32, 32)),
    }
    if name not in table:
        sys.exit(f"--models {name}: not here ({', '.join(list(table) + ['resnet18 ... resnet152'])})")
    make, shape = table[name]
    return make(), shape


def median_ms(model, x, passes, bf16):
    times = []
    with torch.no_grad():
        for i in range(passes + 1):
            start = time.perf_counter()
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(x).float().sum().item()
            else:
                model(x).sum().item()
            if i > 0:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn-mnist,resnet18-seed,resnet18-cifar")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, {a.precision}")
    for name in a.models.split(","):
        model, (c, h, w) = build(name)
        model.eval()
        if a.image_size:
            h = w = a.image_size
        x = torch.randn(a.batch, c, h, w)
        modes = [("f32", False, False), ("f32-cl", True, False)]
        if a.precision == "bf16":
            modes = [("f32-cl", True, False), ("bf16-cl", True, True)]
        for mode, cl, bf16 in modes:
            m, xx = model, x
            if cl and c > 1:
                m = model.to(memory_format=torch.channels_last)
                xx = x.to(memory_format=torch.channels_last)
            ms = median_ms(m, xx, a.passes, bf16)
            print(f"pytorch {name} {h}px {mode}: {ms:.1f} ms ({a.batch * 1e3 / ms:.0f} img/s)", flush=True)


if __name__ == "__main__":
    main()
