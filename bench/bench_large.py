"""Rank measures of LLM-shaped matrices: the exact and the fast route against svdvals (issue 21).

Each shape gets one float32 matrix with a power-law spectrum like a trained
layer's (s_i ~ i^-1/2 shaped by Gaussian factors: ``power_law_matrix``), and,
side by side in one run, once each:

- route 1: ``rank_measures(W)`` (all six measures, ``method="auto"``, the default);
- route 2: ``rank_measures(W, method="fast")`` (stable, effective and entropy rank,
  RankMe, each with an error bar);
- ``torch.linalg.svdvals(W)`` in float32 and ``torch.linalg.svdvals(W.double())``.

The reference is the float64 SVD (and, for the participation ratio, the float64
SVD of the row-centred matrix, timed apart). Printed: times, the ratios
route 1 / svdvals float32 (goal <= 1) and route 1 / route 2 (goal >= 20 on
4096 x 11008, ``--big``), route 1's largest relative error (goal <= 1e-6, the
numerical rank equal), route 2's largest relative error and error bar (goal:
the truth inside the bar, bar <= 1 %) and its work: products M v (M = A A^T on the
smaller side, 4 m n flops each; the exact route's Gram product is 2 m n min(m, n)
flops in float64, then ~4/3 min(m, n)^3 for eigvalsh). Exit status 1 if a goal fails
(the speed goals are judged only at full size, not with ``--quick``).

    python bench/bench_large.py [--big] [--quick] [--threads N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from rankbias.measures import MEASURES, measures_from_singular_values, rank_measures

SHAPES = [(2048, 2048), (2048, 5504), (4096, 4096)]
BIG = (4096, 11008)
QUICK = [(128, 128), (128, 344), (256, 256)]
GOAL_SPEED_F32 = 1.0
GOAL_FAST = 20.0
GOAL_EXACT_REL = 1e-6
GOAL_BAR_REL = 1e-2


def power_law_matrix(m: int, n: int, alpha: float = 0.5, seed: int = 0) -> torch.Tensor:
    """float32 (G1 diag(i^-alpha) G2^T) / sqrt(m n) with Gaussian G1 (m x k), G2 (n x k):
    a power-law spectrum bent by the Gaussian factors, as trained layers' are."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -alpha
    G1 = torch.randn(m, k, generator=g)
    G2 = torch.randn(n, k, generator=g)
    return (G1 * s) @ G2.mT / (m * n) ** 0.5


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def rel(a, b) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)


def one_shape(m: int, n: int, seed: int) -> dict:
    W = power_law_matrix(m, n, seed=seed)
    exact, t_exact = timed(lambda: rank_measures(W))
    fast, t_fast = timed(lambda: rank_measures(W, method="fast", seed=seed))
    sr, t_sr = timed(lambda: rank_measures(W, ["stable_rank"], method="fast", seed=seed))
    sr_exact, t_sr_exact = timed(lambda: rank_measures(W, ["stable_rank"]))
    s32, t32 = timed(lambda: torch.linalg.svdvals(W))
    s64, t64 = timed(lambda: torch.linalg.svdvals(W.double()))
    ref = measures_from_singular_values(s64, shape=(m, n), eps=torch.finfo(W.dtype).eps)
    X = W.double()
    sc = torch.linalg.svdvals(X - X.mean(0, keepdim=True))
    ref["participation_ratio"] = measures_from_singular_values(
        sc, measures=["participation_ratio"], centered_sq=sc.square()
    )["participation_ratio"]
    f32 = measures_from_singular_values(s32.double(), shape=(m, n), eps=torch.finfo(W.dtype).eps)
    exact_err = {k: rel(exact[k], ref[k]) for k in MEASURES}
    fast_err = {k: rel(fast[k], ref[k]) for k in fast}
    fast_bar = {k: float(fast.errors[k]) / abs(float(fast[k])) for k in fast}
    inside = all(abs(float(fast[k]) - float(ref[k])) <= float(fast.errors[k]) for k in fast)
    sr_err = abs(float(sr["stable_rank"]) - float(ref["stable_rank"]))
    return dict(
        shape=(m, n),
        t_exact=t_exact,
        t_fast=t_fast,
        t32=t32,
        t64=t64,
        exact_err=exact_err,
        fast_err=fast_err,
        fast_bar=fast_bar,
        inside=inside,
        columns=fast.columns,
        t_sr=t_sr,
        t_sr_exact=t_sr_exact,
        sr_err=sr_err / float(ref["stable_rank"]),
        sr_bar=float(sr.errors["stable_rank"]) / float(sr["stable_rank"]),
        sr_inside=sr_err <= float(sr.errors["stable_rank"]),
        sr_columns=sr.columns,
        f32_err=max(rel(f32[k], ref[k]) for k in f32 if k != "numerical_rank"),
    )


def _stable_rank_table(rows: list[dict]) -> None:
    """Route 2 for the stable rank alone (lambda_1 by subspace iteration, no tail), against
    route 1 with all measures and route 1 asked for the stable rank only."""
    print(
        "\n| shape | route 2, stable rank only | route 1 (all) | route 1, stable rank only | "
        "route 1 (all) / route 2 | rel. err | rel. bar | truth in bar | M v columns |"
    )
    print("|---" * 9 + "|")
    for r in rows:
        m, n = r["shape"]
        print(
            f"| {m} x {n} | {r['t_sr']:.3f} s | {r['t_exact']:.2f} s | {r['t_sr_exact']:.2f} s | "
            f"{r['t_exact'] / r['t_sr']:.1f}x | {r['sr_err']:.1e} | {r['sr_bar']:.1e} | "
            f"{'yes' if r['sr_inside'] else 'NO'} | {r['sr_columns']} |",
            flush=True,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help=f"add {BIG[0]} x {BIG[1]}")
    ap.add_argument(
        "--quick", action="store_true", help="tiny shapes (a smoke run; no speed goals)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else SHAPES + ([BIG] if args.big else [])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 power-law matrices"
    )
    print(
        "| shape | route 1 (exact) | route 2 (fast) | svdvals f32 | svdvals f64 | route 1 / f32 | "
        "route 1 / route 2 | route 1 max rel. err | f32 SVD max rel. err | route 2 max rel. err | "
        "route 2 max rel. bar | truth in bar | route 2 M v columns |"
    )
    print("|---" * 13 + "|")
    ok, ok_sr, rows = True, True, []
    for m, n in shapes:
        r = one_shape(m, n, args.seed)
        rows.append(r)
        e1 = max(v for k, v in r["exact_err"].items() if k != "numerical_rank")
        e2, bar = max(r["fast_err"].values()), max(r["fast_bar"].values())
        speed, fast_x = r["t_exact"] / r["t32"], r["t_exact"] / r["t_fast"]
        print(
            f"| {m} x {n} | {r['t_exact']:.2f} s | {r['t_fast']:.2f} s | {r['t32']:.2f} s | {r['t64']:.2f} s | "
            f"{speed:.2f}x | {fast_x:.1f}x | {e1:.1e} | {r['f32_err']:.1e} | {e2:.1e} | {bar:.1e} | "
            f"{'yes' if r['inside'] else 'NO'} | {r['columns']} |",
            flush=True,
        )
        ok &= e1 <= GOAL_EXACT_REL and r["exact_err"]["numerical_rank"] == 0 and r["inside"]
        ok &= bar <= GOAL_BAR_REL
        ok_sr &= r["sr_inside"] and r["sr_bar"] <= GOAL_BAR_REL
        if not args.quick:
            ok &= speed <= GOAL_SPEED_F32 and ((m, n) != BIG or fast_x >= GOAL_FAST)
            ok_sr &= (m, n) != BIG or r["t_exact"] / r["t_sr"] >= GOAL_FAST
    _stable_rank_table(rows)
    big = f", >= {GOAL_FAST:g}x on {BIG[0]} x {BIG[1]}" if args.big else ""
    print(
        f"goals (route 1 <= svdvals f32 and within {GOAL_EXACT_REL:g}; route 2 truth in a bar <= "
        f"{GOAL_BAR_REL:g}{big}): {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"goal of route 2 for the stable rank alone (truth in a bar <= {GOAL_BAR_REL:g}{big} "
        f"against route 1): {'PASS' if ok_sr else 'FAIL'}"
    )
    ok &= ok_sr
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
