"""The zoo's tutorial networks in PyTorch, under the names our checkpoints use, so that a run's
`best.safetensors` / `last.safetensors` loads with `load_state_dict(..., strict=True)`.

torchvision builds the others itself (`resnet18`..`resnet152`, `alexnet-tv`, `vgg*`,
`googlenet` with `aux_logits=False, init_weights=True`); `resnet18-cifar` is torchvision's
`resnet18` with a 3x3 stem and no max-pool. The tutorial's three are here:

    from pytorch_models import build
    model = build("resnet18-seed", num_classes=10)
    model.load_state_dict(safetensors.torch.load_file("runs/cifar/best.safetensors"), strict=True)

The programs' test transforms, to feed the model the same tensors as `evaluate` and `predict`:
`normalize:cifar10` is `Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))` after
`ToTensor()`, MNIST's `Normalize((0.1307,), (0.3081,))`, and `imagenet-eval:SIZE` is
`Resize(SIZE * 256 // 224)`, `CenterCrop(SIZE)`, `ToTensor()`, `Normalize((0.485, 0.456, 0.406),
(0.229, 0.224, 0.225))`.

To go on training a run in PyTorch, `optimizer_from_run(run_dir, model)` builds the run's
optimizer (`torch.optim.SGD`, `Adam` or `AdamW` with the run's settings and the learning rate of
its last epoch) over a model holding the run's `last.safetensors`, with the momentum buffers (or
Adam's moments and step counts) of its `state.safetensors`, on the model's device and dtype; a
fine-tuning run's optimizer holds the parameters its `--unfreeze` trained. The learning-rate
schedule is not carried over (the rate is the one the last epoch trained with, before its
scheduler step; nor OneCycle's cycled momentum: the optimizer gets the configured one): make the
scheduler of your choice from there (each group's `initial_lr` is the run's `--lr`).

`python tools/pytorch_models.py RUN_DIR [best|last]` loads a run's checkpoint into its network
(the model named in the run's `config.json`) with `strict=True` and prints the parameter count;
with `last`, it also loads the run's optimizer state as `optimizer_from_run` does.
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet


class LeNet5(nn.Module):
    """The tutorial's LeNet-5 (zoo `lenet5`): Tanh and average pooling, 1x28x28 input."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class MnistCnn(nn.Module):
    """The tutorial's MNIST CNN (zoo `cnn-mnist`): two 3x3 convolutions, dropout 0.25."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class SeedResNet18(ResNet):
    """The tutorial's ResNet-18 (zoo `resnet18-seed`): torchvision's ResNet-18, 7x7 stem and
    max-pool, with stage widths 64-128-192-256 (4,192,202 parameters at 10 classes)."""

    def __init__(self, num_classes=10):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.inplanes = 64
        self.layer1 = self._make_layer(BasicBlock, 64, 2)
        self.layer2 = self._make_layer(BasicBlock, 128, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 192, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 256, 2, stride=2)
        self.fc = nn.Linear(256, num_classes)
        # torchvision's initialisation for the stages made again (for training from scratch).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet18_cifar(num_classes=10):
    """Zoo `resnet18-cifar`: torchvision's ResNet-18 with a 3x3 stride-1 stem, no max-pool."""
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    # The new stem initialised as torchvision initialises its convolutions (and as the zoo
    # does), not with nn.Conv2d's default.
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    m.maxpool = nn.Identity()
    return m


def build(name, num_classes=10):
    """The PyTorch network of the zoo model `name`, untrained."""
    tutorial = {"lenet5": LeNet5, "cnn-mnist": MnistCnn, "resnet18-seed": SeedResNet18,
                "resnet18-cifar": resnet18_cifar}
    if name in tutorial:
        return tutorial[name](num_classes)
    if name == "alexnet":
        raise ValueError("alexnet (the paper's widths 96-256-384-384-256) has no torchvision "
                         "network; alexnet-tv is torchvision's alexnet")
    torchvision_names = {"alexnet-tv": "alexnet"}
    tv = torchvision_names.get(name, name.replace("-bn", "_bn"))
    if tv == "googlenet":
        # torchvision's own initialisation (truncated normal, std 0.01), as the zoo's.
        return torchvision.models.googlenet(num_classes=num_classes, aux_logits=False,
                                            init_weights=True)
    if not hasattr(torchvision.models, tv):
        raise ValueError(f"{name}: no PyTorch network for this zoo name here")
    return getattr(torchvision.models, tv)(num_classes=num_classes)


def _state(run):
    """The run's `state.safetensors`: its tensors and its resume state (the header's JSON)."""
    import struct
    from safetensors.torch import load_file

    path = Path(run) / "state.safetensors"
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    resume = json.loads(header["__metadata__"]["resume_state"])
    return load_file(str(path)), resume


def _trained(run, params):
    """The parameters the run's optimizer held: all of them, or for a fine-tuning run (its
    `finetune.json`) the new `fc` and the stages `--unfreeze` named."""
    finetune = Path(run) / "finetune.json"
    if not finetune.exists():
        return params
    unfreeze = json.loads(finetune.read_text())["unfreeze"]
    stages = {"none": (), "layer4": ("layer4.",), "layer3": ("layer3.", "layer4."),
              "all": None}[unfreeze]
    return {name: p for name, p in params.items()
            if stages is None or name.startswith("fc.") or name.startswith(stages)}


def optimizer_from_run(run, model):
    """The run's optimizer over `model` (which should hold the run's `last.safetensors`), with
    the buffers its `state.safetensors` saved after its last epoch, keyed by parameter name,
    loaded through `optimizer.load_state_dict` (so on the parameters' device and dtype, Adam's
    `step` a float32 tensor as PyTorch keeps it). A fine-tuning run's optimizer holds the
    parameters it trained (its `--unfreeze`), no others. Each group's `initial_lr` is the run's
    configured rate, so that a scheduler can be made with `last_epoch` set."""
    tensors, resume = _state(run)
    config = resume["config"]
    kind, lr, wd = config["optimizer"], resume["lr"], config["weight_decay"]
    params = _trained(run, dict(model.named_parameters()))
    if kind == "sgd":
        optimizer = torch.optim.SGD(params.values(), lr=lr, momentum=config["momentum"],
                                    weight_decay=wd, nesterov=config["nesterov"])
        buffers = ("momentum_buffer",)
    elif kind in ("adam", "adamw"):
        # Runs saved before --betas kept none: the programs took (momentum, 0.999) then.
        betas = tuple(config.get("betas") or (config["momentum"], 0.999))
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        optimizer = cls(params.values(), lr=lr, betas=betas, weight_decay=wd)
        buffers = ("exp_avg", "exp_avg_sq", "step")
    else:
        raise SystemExit(f"{run}: optimizer {kind!r} is not one of sgd, adam, adamw")
    found, state = 0, {}
    for index, (name, param) in enumerate(params.items()):
        entry = {}
        for buffer in buffers:
            key = f"optimizer.{name}.{buffer}"
            if key in tensors:
                value = tensors[key]
                if buffer == "step":
                    value = torch.tensor(float(value), dtype=torch.float32)
                elif value.shape != param.shape:
                    raise SystemExit(f"{key}: shape {tuple(value.shape)}, the parameter's "
                                     f"{tuple(param.shape)}")
                entry[buffer] = value
        if entry:
            state[index] = entry
            found += len(entry)
    known = sum(1 for k in tensors if k.startswith("optimizer."))
    if found != known:
        raise SystemExit(f"{run}: {known - found} optimizer buffers name no parameter the run "
                         "trained in the model")
    groups = optimizer.state_dict()["param_groups"]
    for group in groups:
        group["initial_lr"] = config["lr"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return optimizer


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: pytorch_models.py RUN_DIR [best|last]")
    from safetensors.torch import load_file

    run = Path(sys.argv[1])
    which = sys.argv[2] if len(sys.argv) == 3 else "best"
    config = json.loads((run / "config.json").read_text())
    model_name = config["model"]
    classes = json.loads((run / "classes.json").read_text())
    model = build(model_name, num_classes=len(classes))
    path = run / f"{which}.safetensors"
    print(model.load_state_dict(load_file(str(path)), strict=True))
    params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {model_name}, {len(classes)} classes, {params:,} parameters")
    if which == "last" and (run / "state.safetensors").exists():
        optimizer = optimizer_from_run(run, model)
        buffers = sum(len(s) for s in optimizer.state.values())
        print(f"{type(optimizer).__name__} at lr {optimizer.param_groups[0]['lr']:g}, "
              f"{buffers} buffers for {len(optimizer.state)} parameters")


if __name__ == "__main__":
    main()
