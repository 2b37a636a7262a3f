"""PyTorch's optimizer steps on the CPU, for `optim`'s test `steps_equal_pytorchs_bit_for_bit`.

Writes `crates/optim/tests/data/pytorch_optimizer_steps.safetensors`: a parameter of N float32
values (`p0`, with exact zeros, subnormals and large values among them; N is not a multiple of
16, so PyTorch's vector kernels run a scalar tail), the gradients of STEPS steps (`grads`), and
for each case below the parameter after every step (`CASE.once`: PyTorch's default kernels on
a CPU with AVX2 and FMA, which round `add(alpha=)`, `lerp_` and `addcmul_` once;
`CASE.twice`: under `ATEN_CPU_CAPABILITY=default`, its portable kernels, which round twice).
Keep CASES in step with the test (`crates/optim/src/tests.rs`).

PyTorch's `sqrt` is not correctly rounded for about 0.6% of float32 values (MKL's), which is
not what the test is about: the seed is the first whose Adam steps never meet one.

    python3 tools/pytorch_optimizer_steps.py   # torch, numpy, safetensors; on an x86-64 with AVX2 and FMA
"""
import json
import os
import subprocess
import sys

import numpy as np

N, STEPS = 37, 6
CASES = {
    "sgd": dict(opt="sgd", lr=0.1),
    "sgd_momentum_wd": dict(opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_dampening": dict(opt="sgd", lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    "sgd_nesterov": dict(opt="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": dict(opt="adam", lr=1e-2),
    "adam_beta1_04_wd": dict(opt="adam", lr=1e-2, betas=(0.4, 0.999), weight_decay=0.1),
    "adamw": dict(opt="adamw", lr=1e-2, weight_decay=0.05),
    "sgd_maximize": dict(opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, maximize=True),
    "adam_amsgrad_wd": dict(opt="adam", lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamw_amsgrad_maximize": dict(opt="adamw", lr=1e-2, weight_decay=0.05, amsgrad=True,
                                   maximize=True),
}
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "optim", "tests", "data",
                   "pytorch_optimizer_steps.safetensors")


def inputs(seed):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(N).astype(np.float32)
    p0[[3, 20]] = 0.0
    p0[7] = np.float32(1e-39)  # subnormal
    p0[11] = np.float32(3e4)
    grads = (rng.standard_normal((STEPS, N)) * 0.1).astype(np.float32)
    grads[:, 5] = 0.0
    grads[2, 9] = np.float32(2e-40)
    return p0, grads


def child(seed):
    """The trajectories with this process's kernels, and whether a sqrt was not exact."""
    import torch
    torch.set_num_threads(1)
    p0, grads = inputs(seed)
    out, inexact = {}, False
    for name, c in CASES.items():
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        if c["opt"] == "sgd":
            opt = torch.optim.SGD([p], lr=c["lr"], momentum=c.get("momentum", 0.0),
                                  dampening=c.get("dampening", 0.0), nesterov=c.get("nesterov", False),
                                  weight_decay=c.get("weight_decay", 0.0),
                                  maximize=c.get("maximize", False), foreach=False)
        else:
            cls = torch.optim.AdamW if c["opt"] == "adamw" else torch.optim.Adam
            opt = cls([p], lr=c["lr"], betas=c.get("betas", (0.9, 0.999)),
                      weight_decay=c.get("weight_decay", 0.0), amsgrad=c.get("amsgrad", False),
                      maximize=c.get("maximize", False), foreach=False)
        steps = []
        for k in range(STEPS):
            p.grad = torch.from_numpy(grads[k].copy())
            opt.step()
            steps.append(p.detach().numpy().copy())
            if c["opt"] != "sgd":
                v = opt.state[p]["exp_avg_sq"].numpy()
                exact = np.sqrt(v.astype(np.float64)).astype(np.float32)
                inexact |= bool(np.any(torch.from_numpy(v).sqrt().numpy() != exact))
        out[name] = np.stack(steps).tolist()
    print(json.dumps({"inexact": inexact, "cases": out, "capability":
                      torch.backends.cpu.get_cpu_capability()}))


def run(seed, capability):
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    got = subprocess.run([sys.executable, __file__, "--child", str(seed)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(got.stdout)


def main():
    import torch
    from safetensors.numpy import save_file
    for seed in range(100):
        once, twice = run(seed, None), run(seed, "default")
        if not once["inexact"] and not twice["inexact"]:
            break
    else:
        sys.exit("no seed without an inexact sqrt in 100")
    assert once["capability"] in ("AVX2", "AVX512"), once["capability"]
    assert twice["capability"] == "DEFAULT", twice["capability"]
    p0, grads = inputs(seed)
    tensors = {"p0": p0, "grads": grads}
    for name in CASES:
        tensors[f"{name}.once"] = np.array(once["cases"][name], np.float32)
        tensors[f"{name}.twice"] = np.array(twice["cases"][name], np.float32)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={
        "torch": torch.__version__, "seed": str(seed), "cases": json.dumps(CASES),
        "once": once["capability"], "twice": twice["capability"]})
    print(f"wrote {os.path.normpath(OUT)} (seed {seed}, torch {torch.__version__}, "
          f"{once['capability']} and {twice['capability']} kernels)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
    else:
        main()
