"""Benchmark: training the noise-robustness sweep as one batched computation.

Prints, measured side by side in one run:

* configs per second, batched (all M configurations of a sweep as one model
  with a leading model dimension) vs one at a time (M separate trainings), at
  several sizes up to the ``paper`` preset of ``noise-robustness``;
* the achieved GFLOP/s of batched training as a fraction of a float32 matmul's
  GFLOP/s on the same machine (a square 2048 x 2048 matmul, measured in the same run).

FLOPs are counted honestly: per step, the forward matmul (2 M n P d 2m) and the
weight-gradient matmul (the same), plus one forward for the initial and the
final loss that ``rankbias.training.train`` evaluates; the elementwise work
(activation, pooling, loss) is not counted, so it only lowers the achieved rate.

Goals (issue 3): batched not slower than one at a time at any size; >= 40% of
the matmul rate at the paper preset size.

Run: ``python bench/bench_noise_cnn.py [--steps 3] [--threads N] [--sizes small,quick,paper]``
"""

from __future__ import annotations

import argparse
import time

import torch

from rankbias.models.two_layer_cnn import TwoLayerCNN, logistic_loss
from rankbias.training import train

SIZES = {
    # name: (M configs, n, P, d, m); quick and paper are the presets of noise-robustness
    "small": (12, 100, 8, 50, 5),
    "quick": (27, 300, 8, 100, 10),
    "paper": (50, 1000, 16, 400, 20),
}


def _train_seconds(X: torch.Tensor, y: torch.Tensor, m: int, steps: int) -> float:
    M, n, P, d = X.shape
    model = TwoLayerCNN(d, m, M, init_std=0.01)
    t0 = time.perf_counter()
    train(lambda step: logistic_loss(model(X), y), model, steps=steps, lr=0.1, log_every=10**9)
    return time.perf_counter() - t0


def matmul_gflops(size: int = 2048, reps: int = 3) -> float:
    """Best of ``reps`` timings of one float32 size x size matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def bench_size(name: str, steps: int, repeats: int) -> dict:
    """Batched and one-at-a-time trainings and a matmul, interleaved ``repeats``
    times; the best time of each (load from other processes only slows a run down)."""
    M, n, P, d, m = SIZES[name]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(M, n, P, d, generator=g) * 0.5
    y = torch.where(torch.rand(M, n, generator=g) < 0.5, 1.0, -1.0)
    _train_seconds(X[:1], y[:1], m, 1)  # warm-up
    batched = looped = float("inf")
    mm = 0.0
    for _ in range(repeats):
        mm = max(mm, matmul_gflops())
        batched = min(batched, _train_seconds(X, y, m, steps))
        looped = min(looped, sum(_train_seconds(X[i:i + 1], y[i:i + 1], m, steps) for i in range(M)))
    flops = (steps * 2 + 2) * 2 * M * n * P * d * 2 * m  # see module docstring
    gflops = flops / batched / 1e9
    return {"size": name, "M": M, "n": n, "P": P, "d": d, "m": m,
            "configs_per_s_batched": M / batched, "configs_per_s_looped": M / looped,
            "speedup": looped / batched, "gflops": gflops, "matmul_gflops": mm,
            "fraction_of_matmul": gflops / mm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best time counts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown sizes {bad}; accepted: {', '.join(SIZES)}")
    print(f"bench_noise_cnn: float32, {torch.get_num_threads()} threads, {args.steps} GD steps per "
          f"measurement, best of {args.repeats} interleaved repeats")
    rows = []
    for s in sizes:
        r = bench_size(s, args.steps, args.repeats)
        rows.append(r)
        print(f"  {s:>6} M={r['M']:>3} n={r['n']:>5} P={r['P']:>3} d={r['d']:>4} m={r['m']:>3}: "
              f"configs/s batched {r['configs_per_s_batched']:8.3f}  one-at-a-time "
              f"{r['configs_per_s_looped']:8.3f}  speedup {r['speedup']:5.2f}x  | training "
              f"{r['gflops']:6.1f} GFLOP/s = {100 * r['fraction_of_matmul']:5.1f}% of matmul "
              f"({r['matmul_gflops']:.1f} GFLOP/s)")
    ok_speed = all(r["speedup"] >= 1.0 for r in rows)
    print(f"goal batched >= one-at-a-time at every size: {'MET' if ok_speed else 'NOT MET'} "
          f"(min speedup {min(r['speedup'] for r in rows):.2f}x)")
    paper = [r for r in rows if r["size"] == "paper"]
    if paper:
        f = paper[0]["fraction_of_matmul"]
        print(f"goal >= 40% of matmul rate at the paper size: {'MET' if f >= 0.4 else 'NOT MET'} ({100 * f:.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
