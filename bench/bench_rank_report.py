"""Benchmark of rank_report (issue 6), measured side by side in one run.

1. Weights: ``rank_report(resnet18)`` (weights only, every measure) against
   ``WeightWatcher(model).analyze()`` on the same torchvision resnet18 (random
   weights), interleaved, best of ``--repeats``. Goal: ours <= 1/5 of its time.
2. Embeddings: 10,000 MNIST test images through a small CNN (defined below).
   Images per second of the forward passes alone and of ``rank_report`` with
   the data (weights + every layer's streamed output kernel + the data's own
   rank). Time: forward alone, the report, and the floor of an exact stream
   (forward + the bare float64 Gram products of the same embeddings: no
   centring, no merge, no measures) run in interleaved rounds (5 by default,
   the order rotated each round); the ratio to the forward pass is taken
   within each round and the median printed, in wall time and in CPU time
   (less inflated by other processes on a shared machine), with the load
   average before and after. Goal: report <= 1.5x the forward pass. Values:
   every embedding measure of the report against a plain
   ``KernelSpectrum.update`` fed each layer's rows, relative tolerance 1e-10
   (that of the tests). Peak memory of each, measured in a fresh subprocess:
   after loading the data and building the model, the peak-RSS counter of the
   process is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and the
   current RSS is the baseline; after the work, ``VmHWM`` from
   ``/proc/self/status`` is the peak. The increase (peak - baseline) is what
   the work itself needed; the goal is that of the report < 2x that of the
   forward passes alone. Peaks of identical runs differ by tens of MiB, so
   each is measured in 3 fresh processes (interleaved) and the medians are
   compared. (Where clear_refs cannot be written, the baseline is
   ``ru_maxrss`` before the work, which can only under-state the increase;
   the method used is printed.)

Run: ``PYTHONPATH=src python bench/bench_rank_report.py`` (``--quick`` for a
smoke run: 1 weights repeat, 2,000 images; ``--threads 1`` for single-threaded). The data root is ``--data-root``, else
``$RANKBIAS_DATA``, else ./data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

THREADS = 2
# the report's embedding values against a plain KernelSpectrum (as in the tests)
VALUE_RTOL = 1e-10


def small_cnn() -> nn.Sequential:
    """A small MNIST CNN: 2 conv blocks and 2 linear layers (~420k parameters)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),   # (N, 32, 28, 28)
        nn.ReLU(),
        nn.MaxPool2d(2),                  # (N, 32, 14, 14)
        nn.Conv2d(32, 64, 3, padding=1),  # (N, 64, 14, 14)
        nn.ReLU(),
        nn.MaxPool2d(2),                  # (N, 64, 7, 7)
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def default_root() -> str:
    from rankbias.framework.paths import data_root

    return str(data_root())


def mnist_test(root: str, n: int) -> torch.Tensor:
    from rankbias.data.images import load_image_dataset

    return load_image_dataset("mnist", train=False, root=root).images[:n]


def forward_only(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])


def report(model: nn.Module, x: torch.Tensor, batch_size: int):
    from rankbias.analysis import rank_report

    return rank_report(model, x, batch_size=batch_size, progress=False)


# ------------------------------------------------------------------ weights


def bench_weights(repeats: int) -> dict:
    import torchvision

    from rankbias.analysis import rank_report

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    rank_report(model, progress=False)  # warm-up (imports, first LAPACK calls)
    try:
        import weightwatcher as ww
    except ImportError as e:
        print(f"weights: WeightWatcher not importable ({e}); install it with pip install 'rankbias[bench]'")
        return {"weightwatcher": f"not importable: {e}"}
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    ours, theirs = [], []
    ww_df = None
    for _ in range(repeats):
        t = time.perf_counter()
        df = rank_report(model, progress=False)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ww_df = ww.WeightWatcher(model=model).analyze()
        theirs.append(time.perf_counter() - t)
    res = {
        "model": "torchvision resnet18 (random init, seed 0)",
        "layers_ours": int(len(df)),
        "layers_weightwatcher": int(len(ww_df)),
        "measures_ours": [c for c in df.columns if c not in ("name", "type", "weight_shape", "matrix_shape", "error")],
        "seconds_ours": ours,
        "seconds_weightwatcher": theirs,
        "ratio_best": min(ours) / min(theirs),
        "ratio_median": statistics.median(ours) / statistics.median(theirs),
        "weightwatcher_version": getattr(ww, "__version__", "?"),
    }
    res["goal_met"] = res["ratio_best"] <= 0.125
    print(
        f"weights, resnet18: rank_report {min(ours):.3f} s (best of {repeats}), "
        f"WeightWatcher.analyze() {min(theirs):.3f} s -> ratio {res['ratio_best']:.4f} "
        f"(median {res['ratio_median']:.4f}); goal <= 0.125: {'met' if res['goal_met'] else 'NOT met'}"
    )
    return res


def weights_without_spinning(repeats: int) -> dict:
    """Diagnostic: the same side-by-side weights comparison in a fresh process
    with GOMP_SPINCOUNT=0. torch's LAPACK (MKL) runs its OpenMP threads under
    libgomp, whose idle threads spin; on an oversubscribed machine (several
    jobs on 2 cores) every barrier then waits for a descheduled thread, which
    makes eigvalsh many times slower. Idle machines are unaffected by the
    setting; both libraries run under it here."""
    env = dict(os.environ, GOMP_SPINCOUNT="0")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.json"
        proc = subprocess.run(
            [sys.executable, __file__, "--only", "weights", "--repeats", str(repeats),
             "--no-diagnostic", "--json", str(out)],
            capture_output=True, text=True, env=env,
        )
        if proc.returncode != 0 or not out.exists():
            print(f"weights with GOMP_SPINCOUNT=0: failed ({proc.stderr.strip()[-300:]})")
            return {"failed": proc.stderr[-2000:]}
        res = json.loads(out.read_text())["weights"]
    print(
        f"  same with GOMP_SPINCOUNT=0 (diagnostic): rank_report {min(res['seconds_ours']):.3f} s, "
        f"WeightWatcher {min(res['seconds_weightwatcher']):.3f} s -> ratio {res['ratio_best']:.4f} "
        f"(median {res['ratio_median']:.4f})"
    )
    return res


# --------------------------------------------------------------- embeddings


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _hwm_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def memory_child(mode: str, root: str, n: int, batch_size: int, threads: int) -> None:
    """In a fresh process: the peak RSS increase of one workload."""
    torch.set_num_threads(threads)
    x = mnist_test(root, n)
    model = small_cnn()
    if mode == "report":
        import pandas  # noqa: F401  (imported before the baseline, as forward's torch is)
        import tqdm  # noqa: F401

        import rankbias.analysis  # noqa: F401
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "clear_refs+VmHWM"
        base = _rss_kb()
    except OSError:
        method = "ru_maxrss"
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == "forward":
        forward_only(model, x, batch_size)
    else:
        report(model, x, batch_size)
    secs = time.perf_counter() - t
    peak = _hwm_kb() if method.startswith("clear") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "baseline_kb": base, "peak_kb": peak, "method": method, "seconds": secs}))


def _run_child(mode: str, root: str, n: int, batch_size: int) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, __file__, "--_memory", mode, "--data-root", root, "--images", str(n),
         "--batch-size", str(batch_size), "--threads", str(torch.get_num_threads())],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def forward_with_grams(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """The floor of an exact stream: the forward passes plus the bare float64 Gram
    products of the same embeddings (every weight layer's output per position, and
    the data), without centring, merging, checks or measures."""

    from rankbias.analysis.stream import CHUNK_ELEMENTS

    def gram(t: torch.Tensor) -> None:  # None: a forward hook's result would replace the output
        # in the stream's chunks: a whole batch in float64 would cost page faults the stream avoids
        for c in t.split(max(1, CHUNK_ELEMENTS * len(t) // t.numel())):
            z = c.double().flatten(2) if c.ndim > 2 else c.double()
            torch.matmul(z, z.mT).sum(0) if c.ndim > 2 else z.mT @ z

    hooks = [m.register_forward_hook(lambda m, a, out: gram(out)) for m in _weight_layers(model)]
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                gram(x[i : i + batch_size].flatten(1))
                model(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is less inflated by other processes."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def time_side_by_side(model: nn.Module, x: torch.Tensor, batch_size: int, pairs: int) -> dict:
    """Forward alone, the report and the float64 floor, interleaved ``pairs`` times (the
    order rotated each time); the ratios are taken within each round, then their median."""
    runs = {"forward": lambda: forward_only(model, x, batch_size),
            "report": lambda: report(model, x, batch_size),
            "floor": lambda: forward_with_grams(model, x, batch_size)}
    order = list(runs)
    t: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for r in range(pairs):
        for k in order[r % 3:] + order[: r % 3]:
            t[k].append(_timed(runs[k]))
    res = {}
    for clock, j in (("wall", 0), ("cpu", 1)):
        for k in ("report", "floor"):
            ratios = [a[j] / f[j] for a, f in zip(t[k], t["forward"])]
            res[f"{k}_over_forward_{clock}"] = statistics.median(ratios)
            res[f"{k}_over_forward_{clock}_all"] = [round(v, 3) for v in ratios]
    res["images_per_s"] = {k: len(x) / statistics.median(a[0] for a in v) for k, v in t.items()}
    return res


def value_check(model: nn.Module, x: torch.Tensor, batch_size: int, df) -> float:
    """Largest relative difference between the report's embedding measures and those of
    a plain ``KernelSpectrum.update`` fed each layer's rows (channels-last copy) and the data."""
    from rankbias import KernelSpectrum
    from rankbias.analysis.layers import DATA_ROW_NAME
    from rankbias.measures import MEASURES

    layers = dict(model.named_modules())
    ref = {name: KernelSpectrum() for name, m in layers.items() if m in _weight_layers(model)}
    def feed(ks: KernelSpectrum, out: torch.Tensor) -> None:  # None: the output is kept
        ks.update(out.movedim(1, -1) if out.ndim > 2 else out)

    hooks = [layers[name].register_forward_hook(lambda m, a, out, ks=ks: feed(ks, out))
             for name, ks in ref.items()]
    ref[DATA_ROW_NAME] = KernelSpectrum()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                ref[DATA_ROW_NAME].update(x[i : i + batch_size].flatten(1))
                model(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    rows = df.set_index("name")
    worst = 0.0
    for name, ks in ref.items():
        want = ks.measures()
        for k in MEASURES:
            a, b = float(rows.loc[name, f"emb_{k}"]), float(want[k])
            worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
    return worst


def bench_embeddings(root: str, n: int, batch_size: int, repeats: int, memory_runs: int) -> dict:
    try:
        x = mnist_test(root, n)
    except FileNotFoundError as e:
        print(f"embeddings: MNIST not available ({e}); skipped")
        return {"skipped": str(e)}
    model = small_cnn()
    forward_only(model, x[:batch_size], batch_size)  # warm-up
    report(model, x[:batch_size], batch_size)
    load_before = os.getloadavg()[0]
    timing = time_side_by_side(model, x, batch_size, repeats)
    load_after = os.getloadavg()[0]
    df = report(model, x, batch_size)
    worst = value_check(model, x, batch_size, df)
    # RSS peaks of identical runs differ by tens of MiB (allocator and thread
    # scheduling), so each is measured in `memory_runs` fresh processes,
    # interleaved, and the medians are compared
    runs: dict[str, list[dict]] = {"forward": [], "report": []}
    for _ in range(memory_runs):
        for mode in runs:
            runs[mode].append(_run_child(mode, root, n, batch_size))
    mem = {k: v[0] for k, v in runs.items()}
    inc_all = {k: [(r["peak_kb"] - r["baseline_kb"]) / 1024 for r in v] for k, v in runs.items()}
    inc = {k: statistics.median(v) for k, v in inc_all.items()}
    tot = {k: statistics.median(r["peak_kb"] / 1024 for r in v) for k, v in runs.items()}
    res = {
        "images": len(x),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "load_average": [load_before, load_after],
        "images_per_s_forward": timing["images_per_s"]["forward"],
        "images_per_s_report": timing["images_per_s"]["report"],
        "time_ratio_report_over_forward": timing["report_over_forward_wall"],
        "timing": timing,
        "value_check_max_rel_diff": worst,
        "peak_increase_mib": inc,
        "peak_increase_mib_all_runs": inc_all,
        "peak_total_mib": tot,
        "memory_ratio_increase": inc["report"] / inc["forward"],
        "memory_ratio_total": tot["report"] / tot["forward"],
        "memory_method": mem["report"]["method"],
        "emb_effective_rank": dict(zip(df["name"], df["emb_effective_rank"].round(3))),
    }
    res["goal_met"] = res["memory_ratio_increase"] < 2
    res["time_goal_met"] = res["time_ratio_report_over_forward"] <= 1.5
    res["values_equal"] = worst <= VALUE_RTOL
    print(
        f"embeddings, {len(x)} MNIST test images, small CNN, batch {batch_size}, "
        f"{res['threads']} thread(s), load average {load_before:.1f} -> {load_after:.1f}: forward alone "
        f"{res['images_per_s_forward']:.0f} img/s, rank_report {res['images_per_s_report']:.0f} img/s "
        f"(medians of {repeats} interleaved rounds)\n"
        f"  report / forward, median of the rounds' ratios: {timing['report_over_forward_wall']:.2f}x wall "
        f"{timing['report_over_forward_wall_all']}, {timing['report_over_forward_cpu']:.2f}x CPU time "
        f"{timing['report_over_forward_cpu_all']} (goal <= 1.5x: "
        f"{'met' if res['time_goal_met'] else 'NOT met'})\n"
        f"  floor, forward + bare float64 Gram products of the same embeddings: "
        f"{timing['floor_over_forward_wall']:.2f}x wall, {timing['floor_over_forward_cpu']:.2f}x CPU time\n"
        f"  values: largest relative difference from plain KernelSpectrum.update {worst:.1e} "
        f"(tolerance {VALUE_RTOL:g}: {'equal' if res['values_equal'] else 'DIFFERENT'})"
    )
    print(
        f"peak memory ({res['memory_method']}, median of {memory_runs} processes each): increase over "
        f"the loaded-data baseline forward {inc['forward']:.1f} MiB, report {inc['report']:.1f} MiB -> ratio "
        f"{res['memory_ratio_increase']:.2f} (goal < 2: {'met' if res['goal_met'] else 'NOT met'}); "
        f"whole-process peak {tot['forward']:.0f} vs {tot['report']:.0f} MiB "
        f"(ratio {res['memory_ratio_total']:.2f}); all runs: "
        + ", ".join(f"{k} {[round(v, 1) for v in vs]}" for k, vs in inc_all.items())
    )
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, 2,000 images")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; embeddings: interleaved rounds, default 5)")
    p.add_argument("--images", type=int, default=None, help="MNIST test images (default 10000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--memory-runs", type=int, default=None, help="fresh processes per memory measurement (default 3)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--only", choices=["weights", "embeddings"], default=None)
    p.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    p.add_argument("--no-diagnostic", action="store_true",
                   help="skip the second weights run with GOMP_SPINCOUNT=0")
    p.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    root = a.data_root or default_root()
    n = a.images or (2000 if a.quick else 10_000)
    if a._memory:
        memory_child(a._memory, root, n, a.batch_size, a.threads)
        return 0
    torch.set_num_threads(a.threads)
    repeats = a.repeats or (1 if a.quick else 3)
    print(f"bench_rank_report: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: absolute times are inflated)")
    results = {}
    if a.only in (None, "weights"):
        results["weights"] = bench_weights(repeats)
        if not a.no_diagnostic:
            results["weights_spincount0"] = weights_without_spinning(repeats)
    if a.only in (None, "embeddings"):
        # interleaved rounds: a median of ratios needs a few even in a smoke run
        results["embeddings"] = bench_embeddings(root, n, a.batch_size, a.repeats or 5,
                                                 a.memory_runs or (1 if a.quick else 3))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
