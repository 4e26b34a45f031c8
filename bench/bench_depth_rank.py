"""Batched vs one-at-a-time, side by side in one run (ratios, not absolute timings):

1. depth-rank-init: draws per second of the batched kernel/end-to-end computation
   (``chunk`` draws per batched matmul) against a per-draw loop (``chunk=1``),
   for the linear end-to-end maps and for an MLP kernel (goal: >= 10x).
2. depth-rank-trained: networks trained per second when a sweep (depths x seeds)
   trains batched -- one batch per depth, or one batch with shallower networks
   padded by identity factors -- against one network at a time (same networks,
   same steps, same initial factors).

Run: ``OMP_NUM_THREADS=1 python bench/bench_depth_rank.py`` (``--quick`` for a smaller
run; ``--only init`` or ``--only trained`` for one part). Everything runs with one torch
thread, as the experiments are run (``--threads 2`` for the init cases: on a shared
machine the per-draw loop then pays OpenMP's spin-waiting on every small call, and the
ratio swung from 5x to 66x between two runs of issue 21).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rankbias.experiments._depth import SweepGroup, fit_sweep
from rankbias.experiments.depth_rank_init import (
    DepthRankInitConfig,
    entropy_ranks_by_depth,
    kernel_entropy_ranks_by_depth,
)
from rankbias.experiments.depth_rank_trained import DepthRankTrainedConfig


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_init(draws: int, loop_draws: int) -> list[dict]:
    out = []
    base = dict(depths=[1, 2, 4, 8, 16, 32], n=32, width=64, n_inputs=32)
    cases = [
        ("linear end-to-end, n=32", lambda c: entropy_ranks_by_depth(c)),
        ("MLP kernel (relu), N=32, width 64", lambda c: kernel_entropy_ranks_by_depth(c, "relu")),
    ]
    for name, fn in cases:
        batched = DepthRankInitConfig.from_dict({**base, "draws": draws, "chunk": draws})
        looped = DepthRankInitConfig.from_dict({**base, "draws": loop_draws, "chunk": 1})
        t_b = _time(lambda fn=fn, c=batched: fn(c))
        t_l = _time(lambda fn=fn, c=looped: fn(c))
        rb, rl = draws / t_b, loop_draws / t_l
        out.append({"case": f"depth-rank-init: {name}", "batched_per_s": rb, "loop_per_s": rl,
                    "speedup": rb / rl, "goal": 10.0})
    return out


def bench_trained(steps: int, seeds: int) -> list[dict]:
    # a fixed step count at one rate: the bench times steps, not the stopping rule or the grid
    cfg = DepthRankTrainedConfig.from_dict({"steps": steps, "seeds": list(range(seeds)),
                                            "targets": ["low_rank"], "log_every": steps,
                                            "plateau_tol": None, "lr_factors": [1.0]})
    n_nets = len(cfg.depths) * seeds
    groups = [SweepGroup("low_rank", cfg.init, cfg.init_scale)]
    kw = dict(optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size)
    t_l = _time(lambda: fit_sweep(cfg, groups, batched=False, **kw))
    rows = []
    for how, group in (("one batch per depth", True), ("one padded batch", False)):
        t_b = _time(lambda group=group: fit_sweep(cfg, groups, batched=True, group_by_depth=group, **kw))
        rb, rl = n_nets / t_b, n_nets / t_l
        rows.append({"case": f"depth-rank-trained ({how}): {n_nets} nets (depths {list(cfg.depths)} "
                             f"x {seeds} seeds), {steps} GD steps",
                     "batched_per_s": rb, "loop_per_s": rl, "speedup": rb / rl, "goal": None})
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", choices=("init", "trained"), help="run one part only")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the init cases (default 1)")
    args = p.parse_args(argv)
    rows = []
    if args.only != "trained":
        torch.set_num_threads(args.threads)
        rows += bench_init(draws=200 if args.quick else 1000, loop_draws=20 if args.quick else 100)
    # training runs single-threaded, as the experiments are meant to (the library sets no
    # thread count): its n x n matmuls lose several-fold to intra-op threads under load
    torch.set_num_threads(1)
    if args.only != "init":
        rows += bench_trained(steps=50 if args.quick else 300, seeds=2 if args.quick else 3)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'case':<100} {'batched/s':>10} {'loop/s':>9} {'speedup':>8}")
        for r in rows:
            goal = f"  (goal >= {r['goal']:g}x: {'met' if r['speedup'] >= r['goal'] else 'NOT met'})" \
                if r["goal"] else ""
            print(f"{r['case']:<100} {r['batched_per_s']:>10.1f} {r['loop_per_s']:>9.2f} "
                  f"{r['speedup']:>7.1f}x{goal}")
    return rows


if __name__ == "__main__":
    main()
