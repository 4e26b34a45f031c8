"""Cost of linear over-parameterisation on a CIFAR-sized ResNet (CPU).

Measured side by side in one run, interleaved (every repeat times each variant
once, in a rotating order) and summarised by medians:

- training step (forward + cross-entropy + backward + SGD-momentum step, batch
  64, 32x32 inputs) of the expanded model at depth 4 in the kernel form (one
  conv per layer with the kernel built from the factors) and in the sequential
  form (the factors one after another, as the authors' code runs them), as
  ratios to the baseline's step; goal: kernel form <= 1.3x;
- inference (eval, no_grad) of the collapsed model against the baseline;
  goal <= 1.03x (the collapsed model *is* the baseline architecture);
- peak memory of a training step of the three training variants.

Peak memory (CPU): torch has no CPU allocator statistics and tracemalloc does
not see its allocations, so each variant runs in a fresh subprocess that builds
model, batch and optimiser, resets the kernel's peak-RSS counter
(``echo 5 > /proc/self/clear_refs``, Linux), runs two training steps (the first
allocates gradients and momentum buffers), and reports VmHWM - VmRSS-before:
the extra resident memory the training step needed at its peak (activations,
gradients, optimiser state, allocator slack), as the OS saw it.

    python bench/bench_overparam.py [--model resnet20|resnet18] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from rankbias.models import CifarResNet, cifar_resnet18
from rankbias.overparam import collapse, expanded_modules, overparameterize

DEPTH = 4
TRAIN_VARIANTS = ("baseline", "kernel", "sequential")


def build(model: str, variant: str, seed: int = 0):
    torch.manual_seed(seed)
    base = cifar_resnet18() if model == "resnet18" else CifarResNet(blocks=(3, 3, 3))
    if variant == "baseline":
        return base
    mode = variant if variant in ("kernel", "sequential") else "auto"
    return overparameterize(base, depth=DEPTH, mode=mode, generator=torch.Generator().manual_seed(seed))


def batch(bs: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, 10, (bs,), generator=g)


def make_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(model: str, variant: str, bs: int) -> dict:
    net = build(model, variant)
    x, y = batch(bs)
    step = make_step(net)
    before = _status_kib("VmRSS")
    method = "VmHWM after clear_refs"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        import resource

        method = "ru_maxrss (peak since process start; upper bound)"
    for _ in range(2):
        step(x, y)
    if method.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_params = sum(p.numel() for p in net.parameters())
    return {"peak_extra_mib": (peak - before) / 1024, "params": n_params, "method": method}


def run_memory(model: str, bs: int, threads: int) -> dict:
    out = {}
    for v in TRAIN_VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", v, "--model", model, "--batch", str(bs),
               "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("resnet18", "resnet20"), default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    # 1 thread by default: on a shared machine 2-thread step times swing 2-3x between repeats
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-child", choices=TRAIN_VARIANTS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.model, args.memory_child, args.batch)))
        return {}

    x, y = batch(args.batch)
    nets = {v: build(args.model, v) for v in TRAIN_VARIANTS}
    steps = {v: make_step(n) for v, n in nets.items()}
    auto = build(args.model, "auto")
    chosen = {}
    with torch.no_grad():  # what "auto" would pick per layer at this input size
        hooks = [m.register_forward_pre_hook(
            lambda m, inp, n=n: chosen.__setitem__(n, "sequential" if (lambda s, k: s < k)(*m.flops(inp[0].shape)) else "kernel"))
            for n, m in expanded_modules(auto)]
        auto(x[:args.batch])
        for h in hooks:
            h.remove()

    train_t = {v: [] for v in TRAIN_VARIANTS}
    for r in range(args.warmup + args.repeats):
        order = TRAIN_VARIANTS[r % 3:] + TRAIN_VARIANTS[: r % 3]
        for v in order:
            t = timed(steps[v], x, y)
            if r >= args.warmup:
                train_t[v].append(t)

    # inference: the baseline vs the collapse of the (trained a few steps) expanded model
    base_eval = nets["baseline"].eval()
    coll = collapse(nets["kernel"]).eval()
    infer_t = {"baseline": [], "collapsed": []}
    inf_reps = 3 * args.repeats
    with torch.no_grad():
        for r in range(args.warmup + inf_reps):
            pair = [("baseline", base_eval), ("collapsed", coll)]
            for name, net in (pair if r % 2 == 0 else pair[::-1]):
                t = timed(net, x)
                if r >= args.warmup:
                    infer_t[name].append(t)

    med = {v: statistics.median(ts) for v, ts in {**train_t, **{f"infer_{k}": v for k, v in infer_t.items()}}.items()}
    res = {
        "model": args.model, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
        "median_s": med,
        "train_ratio_kernel": med["kernel"] / med["baseline"],
        "train_ratio_sequential": med["sequential"] / med["baseline"],
        "infer_ratio_collapsed": med["infer_collapsed"] / med["infer_baseline"],
        "auto_choice": {k: sum(1 for c in chosen.values() if c == k) for k in ("kernel", "sequential")},
        "params": {v: sum(p.numel() for p in n.parameters()) for v, n in nets.items()},
    }
    if not args.no_memory:
        res["memory"] = run_memory(args.model, args.batch, args.threads)

    print(f"overparam bench: {args.model} (CIFAR, batch {args.batch}, 32x32, CPU, {args.threads} threads), "
          f"depth {DEPTH}, medians of {args.repeats} interleaved repeats")
    print(f"  train step   baseline {med['baseline'] * 1e3:8.1f} ms")
    print(f"  train step   kernel   {med['kernel'] * 1e3:8.1f} ms   ratio {res['train_ratio_kernel']:.3f}x  (goal <= 1.3x)")
    print(f"  train step   sequent. {med['sequential'] * 1e3:8.1f} ms   ratio {res['train_ratio_sequential']:.3f}x")
    print(f"  inference    baseline {med['infer_baseline'] * 1e3:8.1f} ms")
    print(f"  inference    collapsed{med['infer_collapsed'] * 1e3:8.1f} ms   ratio {res['infer_ratio_collapsed']:.3f}x  (goal <= 1.03x)")
    print(f"  auto mode at this input picks: {res['auto_choice']}")
    if "memory" in res:
        m = res["memory"]
        print(f"  peak memory of a train step (extra RSS, {m['baseline']['method']}):")
        for v in TRAIN_VARIANTS:
            print(f"    {v:10s} {m[v]['peak_extra_mib']:8.1f} MiB   ratio "
                  f"{m[v]['peak_extra_mib'] / m['baseline']['peak_extra_mib']:.2f}x   params {m[v]['params']:,}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
