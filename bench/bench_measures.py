"""Speed and accuracy of `rank_measures` against per-layer SVDs on resnet18's weights.

Every weight of torchvision's resnet18 (random init; a conv weight read as
out x in*kh*kw, the fc weight as is: 21 matrices from 64 x 147 to 1000 x 512) is
measured

- by ``rankbias.rank_measures`` (all six measures, float64), one call per layer;
- by ``rankbias.rank_measures_many`` (same-shaped layers batched in one call);
- by the baseline: ``torch.linalg.svdvals`` of each layer in float64 followed by
  the same formulas (``measures_from_singular_values``) for the five spectral
  measures. The baseline does *not* compute the participation ratio (it would
  need a second SVD, of the centred matrix), so the ratio understates our lead.

Timings are interleaved (ours, baseline, ours, ...) and summarised by medians,
so that a loaded machine slows both sides alike. Accuracy: the largest relative
difference of every measure from its SVD-based value (the participation ratio's
from the SVD of the row-centred matrix) over all layers, which must be <= 1e-6.

Embeddings with fewer samples than dimensions (issue 12): the outputs of
``Linear(64, 4096)`` on 8 inputs, streamed into ``KernelSpectrum`` in 3 batches
and measured (kernel and embedding measures), by the N x N side (the default
while N <= d) and by the d x d side (``max_rows=0``), interleaved in the same
run; the ratio of their medians, and the largest relative difference between
the two routes' measures (must be <= 1e-6 too).

``--large N`` adds one N x N float32 matrix (e.g. 8000; minutes on a laptop):
``rank_measures`` against float32 and float64 ``svdvals`` plus the same
formulas, once each, and the accuracy against the float64 SVD.

Goal (issue 2): ratio >= 5x. Exit status 1 if the goal or the accuracy fails.
    python bench/bench_measures.py [--repeats 5] [--embed-repeats 3] [--threads N] [--large N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torchvision
from tqdm import tqdm

from rankbias.measures import (
    MEASURES,
    KernelSpectrum,
    as_matrix,
    measures_from_singular_values,
    rank_measures,
    rank_measures_many,
)

SPECTRAL = [k for k in MEASURES if k != "participation_ratio"]
GOAL_RATIO = 5.0
GOAL_RELDIFF = 1e-6


def resnet18_matrices(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    return {n: as_matrix(p.detach()) for n, p in model.named_parameters() if p.ndim >= 2}


def ours(mats):
    return {n: rank_measures(W) for n, W in mats.items()}


def ours_many(mats):
    return rank_measures_many(mats)


def baseline(mats):
    out = {}
    for n, W in mats.items():
        s = torch.linalg.svdvals(W.double())
        out[n] = measures_from_singular_values(s, shape=tuple(W.shape), measures=SPECTRAL, eps=torch.finfo(W.dtype).eps)
    return out


def reference(mats):
    """SVD-based values of all six measures (the participation ratio from the centred SVD)."""
    out = baseline(mats)
    for n, W in mats.items():
        X = W.double()
        sc = torch.linalg.svdvals(X - X.mean(0, keepdim=True))
        out[n]["participation_ratio"] = measures_from_singular_values(
            sc, measures=["participation_ratio"], centered_sq=sc.square())["participation_ratio"]
    return out


def max_rel_diff(a, b) -> dict[str, float]:
    worst = {}
    for k in MEASURES:
        d = 0.0
        for n in b:
            x, y = float(a[n][k]), float(b[n][k])
            d = max(d, abs(x - y) / max(abs(y), 1e-300))
        worst[k] = d
    return worst


def interleaved(fns: dict, repeats: int, desc: str) -> dict[str, float]:
    """Median seconds of each function, timed in turn (so a loaded machine slows all alike)."""
    times = {k: [] for k in fns}
    for _ in tqdm(range(repeats), desc=desc, disable=None):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def rel_diff(a: dict, b: dict) -> float:
    return max(abs(float(a[k]) - float(b[k])) / max(abs(float(b[k])), 1e-300) for k in b)


def embedding_case(repeats: int, n_samples: int = 8, dim: int = 4096) -> tuple[float, float]:
    """N x N side vs d x d side on Linear(64, dim) outputs: (speed-up, max rel. difference)."""
    torch.manual_seed(0)
    Z = torch.nn.Linear(64, dim)(torch.randn(n_samples, 64)).detach()

    def stream(max_rows):
        ks = KernelSpectrum(dim, max_rows=max_rows)
        for b in Z.tensor_split(3):
            ks.update(b)
        return ks

    # timed: what rank_report does per layer (the kernel's measures)
    fns = {"N x N side": lambda: stream(None).measures(), "d x d side": lambda: stream(0).measures()}
    med = interleaved(fns, repeats, f"embeddings {n_samples} x {dim}")
    new, old = stream(None), stream(0)
    (k1, e1), (k0, e0) = (new.measures(), new.embedding_measures()), (old.measures(), old.embedding_measures())
    diff = max(rel_diff(k1, k0), rel_diff(e1, e0))
    for k, v in med.items():
        print(f"  KernelSpectrum {k:<11} median {v * 1e3:10.1f} ms over {repeats} interleaved repeats")
    ratio = med["d x d side"] / med["N x N side"]
    print(f"speed-up N x N side vs d x d side ({n_samples} samples of Linear(64, {dim})): "
          f"{ratio:.0f}x; max relative difference between the routes {diff:.1e}")
    return ratio, diff


def large_case(n: int) -> float:
    """One n x n float32 matrix: rank_measures vs svdvals (float32, float64), once each."""
    A = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, f in {
        "rank_measures": lambda: rank_measures(A),
        "svdvals float32": lambda: torch.linalg.svdvals(A),
        "svdvals float64": lambda: torch.linalg.svdvals(A.double()),
    }.items():
        t0 = time.perf_counter()
        out[name] = f()
        print(f"  {n} x {n} float32, {name:<16} {time.perf_counter() - t0:8.1f} s")
    ref = measures_from_singular_values(out["svdvals float64"], shape=(n, n), measures=SPECTRAL,
                                        eps=torch.finfo(A.dtype).eps)
    diff = rel_diff(out["rank_measures"], ref)
    print(f"  max relative difference from the float64 SVD: {diff:.1e}")
    return diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--embed-repeats", type=int, default=3,
                    help="repeats of the embedding case (its d x d side takes seconds)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--large", type=int, default=0, help="also one N x N float32 matrix (0: skip)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mats = resnet18_matrices()
    print(f"resnet18: {len(mats)} weight matrices, shapes "
          f"{sorted({tuple(W.shape) for W in mats.values()})}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    fns = {"rank_measures": ours, "rank_measures_many": ours_many, "svdvals baseline": baseline}
    for f in fns.values():  # warm-up (allocations, LAPACK workspace queries)
        f(mats)
    med = interleaved({k: (lambda f=f: f(mats)) for k, f in fns.items()}, args.repeats,
                      "interleaved repeats")
    for k, v in med.items():
        print(f"  {k:<20} median {v * 1e3:8.1f} ms over {args.repeats} interleaved repeats")
    ratio = med["svdvals baseline"] / med["rank_measures"]
    ratio_many = med["svdvals baseline"] / med["rank_measures_many"]
    print(f"speed-up rank_measures      vs per-layer svdvals (float64): {ratio:.2f}x (goal >= {GOAL_RATIO:g}x)")
    print(f"speed-up rank_measures_many vs per-layer svdvals (float64): {ratio_many:.2f}x")

    ref = reference(mats)
    worst = max_rel_diff(ours(mats), ref)
    worst_many = max_rel_diff(ours_many(mats), ref)
    print("max relative difference from the SVD-based value over all layers:")
    for k in MEASURES:
        print(f"  {k:<20} rank_measures {worst[k]:.2e}   rank_measures_many {worst_many[k]:.2e}")
    _, route_diff = embedding_case(args.embed_repeats)
    large_diff = large_case(args.large) if args.large else 0.0
    acc_ok = max(*worst.values(), *worst_many.values(), route_diff, large_diff) <= GOAL_RELDIFF
    speed_ok = ratio >= GOAL_RATIO
    print(f"accuracy <= {GOAL_RELDIFF:g}: {'PASS' if acc_ok else 'FAIL'}; "
          f"speed >= {GOAL_RATIO:g}x: {'PASS' if speed_ok else 'FAIL'}")
    return 0 if (acc_ok and speed_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
