"""PyTorch's training step for the zoo's torchvision models, as bench-step times ours
(`bench-step --only vgg11-bn --compare-pytorch PYTHON` runs it): median step (forward, loss,
backward, SGD with momentum 0.9 and weight decay 5e-4) of `torchvision.models.<name>(num_classes=10)`
on random (N, 3, S, S) images, in f32 (NCHW), f32 channels_last and bf16 autocast +
channels_last, printed as cpu_step_modes.py prints its models, so that bench-step reads both.

Usage: python pytorch_zoo_step.py MODEL [--batch N] [--image-size S]
       python pytorch_zoo_step.py --list
  MODEL: the zoo's name (vgg11-bn, googlenet, resnet50, alexnet-tv, ...); --list prints them."""
import argparse, statistics, time

# The zoo's names of torchvision's models, and how torchvision builds each as the zoo does.
TORCHVISION = {
    "alexnet-tv": ("alexnet", {}),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}),
    **{f"vgg{d}": (f"vgg{d}", {}) for d in (11, 13, 16, 19)},
    **{f"vgg{d}-bn": (f"vgg{d}_bn", {}) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": (f"resnet{d}", {}) for d in (18, 34, 50, 101, 152)},
}

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", choices=sorted(TORCHVISION))
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--image-size", type=int, default=32)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--list", action="store_true", help="print the models it times, one a line")
args = parser.parse_args()
if args.list:
    print("\n".join(sorted(TORCHVISION)))
    raise SystemExit(0)
if args.model is None:
    parser.error("a MODEL is needed (--list prints them)")

import torch
import torch.nn as nn
import torchvision

torch.manual_seed(0)


def bench(mode):
    name, kwargs = TORCHVISION[args.model]
    m = getattr(torchvision.models, name)(num_classes=10, **kwargs)
    opt = torch.optim.SGD(m.parameters(), 0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))
    lossf = nn.CrossEntropyLoss()
    m.train()
    if mode != "f32":
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    warm, ts = 1, []
    for _ in range(warm + args.steps):
        t = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16-cl")):
            loss = lossf(m(x), y)
        loss.backward()
        opt.step()
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts[warm:])
    label = args.model.replace("-", "_")
    print(f"{label:16s} {mode:8s} batch {args.batch:4d}  step {med*1000:9.1f} ms  "
          f"{args.batch/med:9.1f} img/s", flush=True)


print(f"torch {torch.__version__} threads {torch.get_num_threads()} "
      f"isa {torch.backends.cpu.get_cpu_capability()}")
for mode in ("f32", "f32-cl", "bf16-cl"):
    bench(mode)
