"""PyTorch's side of `tools/epoch_vs_pytorch.sh`: one `train-cifar` epoch as a PyTorch user
writes it, timed end to end. CIFAR-10's images held decoded in memory (as torchvision's CIFAR10
holds them) from the JPEG ImageFolder archive, a seeded subset; RandomCrop(32, 4) + flip +
ToTensor + Normalize through a DataLoader (batch 128, shuffled, --workers processes); SGD 0.1 /
momentum 0.9 / weight decay 5e-4, cross-entropy, the running loss and accuracy read every step
(`loss.item()`), then the test pass (eval mode, torch.no_grad(), batch 256). bf16 is autocast;
--memory-format picks NCHW or channels_last. Prints the training pass's images/s and the test
pass's seconds: the clock starts once the DataLoader's iterator exists (its worker processes
started, as our loader's pool is built before our epoch) and the data decoded, neither counted.

The tutorial's networks come from ../shared/tools/pytorch-anchors/models.py (or
$CNN_SHARED_DIR/tools/pytorch-anchors):

    ~/torch-venv/bin/python tools/pytorch_epoch.py ARCHIVE --model resnet18-seed --train 10000 --test 2000 --workers 0
"""

import argparse
import io
import os
import sys
import tarfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
shared = os.environ.get("CNN_SHARED_DIR", os.path.join(here, "..", "..", "shared"))
sys.path.insert(0, os.path.join(shared, "tools", "pytorch-anchors"))
import models  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("archive", help="cifar10-jpeg.tar.gz: train/<class>/*.jpg, test/<class>/*.jpg")
p.add_argument("--model", default="resnet18-seed", choices=["resnet18-seed", "resnet18-cifar"])
p.add_argument("--train", type=int, default=10000)
p.add_argument("--test", type=int, default=2000)
p.add_argument("--workers", type=int, default=0)
p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--memory-format", default="channels_last", choices=["contiguous_format", "channels_last"])
a = p.parse_args()
torch.set_num_threads(a.threads)
bf16 = a.precision == "bf16"

NORM = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TRAIN = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                            transforms.ToTensor(), NORM])
TEST = transforms.Compose([transforms.ToTensor(), NORM])

splits = {"train": [], "test": []}
with tarfile.open(a.archive) as tf:
    for m in tf:
        parts = m.name.split("/")
        if m.isfile() and len(parts) >= 3 and parts[-3] in splits:
            splits[parts[-3]].append((tf.extractfile(m).read(), parts[-2]))
names = sorted({c for _, c in splits["train"]})
rs = np.random.RandomState(0)


def decoded(items, n):
    chosen = [items[i] for i in rs.permutation(len(items))[:n]]
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in chosen])
    return x, np.array([names.index(c) for _, c in chosen])


class Memory(Dataset):
    def __init__(s, x, y, t):
        s.x, s.y, s.t = x, y, t

    def __len__(s):
        return len(s.x)

    def __getitem__(s, i):
        return s.t(Image.fromarray(s.x[i])), int(s.y[i])


xtr, ytr = decoded(splits["train"], a.train)
xte, yte = decoded(splits["test"], a.test)
torch.manual_seed(0)
net = models.seed_resnet18() if a.model == "resnet18-seed" else models.cifar_resnet18()
fmt = getattr(torch, a.memory_format)
net = net.to(memory_format=fmt)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
criterion = torch.nn.CrossEntropyLoss()
train = DataLoader(Memory(xtr, ytr, TRAIN), batch_size=128, shuffle=True, num_workers=a.workers)
test = DataLoader(Memory(xte, yte, TEST), batch_size=256, num_workers=a.workers)

net.train()
batches = iter(train)  # the worker processes start here, before the clock
start, seen, correct, loss_sum = time.time(), 0, 0, 0.0
for x, y in batches:
    x = x.to(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
        loss = criterion(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    seen += len(x)
    loss_sum += loss.item() * len(x)
    correct += (out.argmax(1) == y).sum().item()
train_s = time.time() - start
net.eval()
batches = iter(test)
start, right = time.time(), 0
with torch.no_grad():
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            right += (net(x.to(memory_format=fmt)).argmax(1) == y).sum().item()
test_s = time.time() - start
print(f"pytorch {torch.__version__} {a.model} {a.precision} {a.memory_format} workers {a.workers}, "
      f"{a.threads} threads: training {seen} "
      f"images {train_s:.2f} s, {seen / train_s:.0f} img/s (loss {loss_sum / seen:.4f}, "
      f"acc {100 * correct / seen:.2f}%); test {len(xte)} images {test_s:.2f} s "
      f"(acc {100 * right / len(xte):.2f}%)")
