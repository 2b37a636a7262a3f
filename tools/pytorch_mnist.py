"""`train-mnist`'s defaults in PyTorch, as the tutorial trains its MNIST CNN: Adam 1e-3, batch
64, 16 epochs, MNIST's `Normalize((0.1307,), (0.3081,))`, a new shuffle each epoch, cross-entropy;
the test accuracy after each epoch, to set beside `train-mnist`'s (the README's MNIST table).

    ~/torch-venv/bin/python tools/pytorch_mnist.py ../shared/data/mnist [--epochs 16] [--seed 1]

The network is `pytorch_models.build("cnn-mnist")` (or `--model lenet5`); the data the four
IDX files (gzipped or not) in the folder given, as `train-mnist --data-dir` reads them.
"""

import argparse
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_models import build  # noqa: E402


def read_idx(folder, stem, offset):
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                return np.frombuffer(f.read(), np.uint8, offset=offset)
    raise SystemExit(f"{stem}(.gz) not found in {folder}")


def split(folder, prefix):
    images = read_idx(folder, f"{prefix}-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)
    labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte", 8).astype(np.int64)
    x = (torch.tensor(images).float() / 255 - 0.1307) / 0.3081
    return x, torch.tensor(labels)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--model", default="cnn-mnist")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    x_train, y_train = split(a.data_dir, "train")
    x_test, y_test = split(a.data_dir, "t10k")
    model = build(a.model, 10)
    opt = torch.optim.Adam(model.parameters(), a.lr)
    print(f"{a.model}: {len(x_train)} training, {len(x_test)} test images, "
          f"torch {torch.__version__}")
    best = (0.0, 0)
    for epoch in range(1, a.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train))
        for i in range(0, len(x_train), a.batch_size):
            idx = order[i : i + a.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = 100 * (model(x_test).argmax(1) == y_test).float().mean().item()
        best = max(best, (acc, -epoch))
        print(f"epoch {epoch}/{a.epochs}: test acc {acc:.2f}%", flush=True)
    print(f"best test accuracy {best[0]:.2f}% (epoch {-best[1]})")


if __name__ == "__main__":
    main()
