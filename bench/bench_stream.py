"""Benchmark of ``rankbias measure`` streaming a sharded LLaMA checkpoint (issue 21, part 3).

Writes a 2-layer checkpoint with LLaMA-7B's shapes (hidden 4096, intermediate
11008, vocab 32000; bf16, ~1.3 GB, sharded in 2 files with a
``model.safetensors.index.json``) to a temporary directory (``--dir``, default
under /tmp), then times ``rankbias.analysis.measure_tensors`` on the index, as
``rankbias measure`` runs it, for the exact route (``method="auto"``) and the
fast route (``method="fast"``, ``--fast``). Each tensor's time
is taken between the rows the streaming generator yields, so the time of a
32-layer model is extrapolated from them: the non-layer tensors (embedding,
lm_head) once, plus 32 times the mean time of a layer. Peak RSS growth of the
run is printed next to the largest tensor's size.

The weights are Gaussian with columns scaled by a power law ((1 + j)^-0.5), so
their spectra decay like a trained layer's rather than the flat spectrum of an
i.i.d. matrix.

Run: ``PYTHONPATH=src python bench/bench_stream.py`` (``--quick``: the same
file at 1/8 of the width, a smoke run; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

LLAMA_7B = {"hidden": 4096, "intermediate": 11008, "vocab": 32000}


def llama_shapes(
    hidden: int, intermediate: int, vocab: int, layers: int
) -> dict[str, tuple[int, ...]]:
    """name -> shape of a LLaMA checkpoint (Hugging Face names), in file order."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _tensor(
    shape: tuple[int, ...], g: torch.Generator, dtype: torch.dtype, decay: float
) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)  # RMSNorm weights
    w = torch.randn(shape, generator=g).mul_(0.02)
    if decay:
        w.mul_(torch.arange(1, shape[1] + 1, dtype=w.dtype).pow_(-decay))  # power-law spectrum
    return w.to(dtype)


def write_checkpoint(
    directory: str | Path,
    shapes: dict[str, tuple[int, ...]],
    *,
    shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    decay: float = 0.0,
) -> Path:
    """A sharded safetensors checkpoint with random weights, as Hugging Face writes
    one: ``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json``.
    Returns the index's path. One shard is in memory at a time."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = list(shapes)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: _tensor(shapes[n], g, dtype, decay) for n in names[k * per : (k + 1) * per]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in part.values())
        weight_map.update(dict.fromkeys(part, file))
        del part
    index = directory / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return index


def _rss_mib(field: str) -> float:
    return (
        int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    )


def time_stream(
    index: Path, method: str, device: str | None
) -> tuple[dict[str, float], float, list]:
    """Seconds per tensor (between the rows the stream yields), total seconds, rows."""
    from rankbias.analysis.tensors import iter_measure_tensors

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    per, rows = {}, []
    t0 = last = time.perf_counter()
    for row in iter_measure_tensors(index, device=device, method=method, progress=None):
        if device and device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        per[row["name"]], last = now - last, now
        rows.append(row)
    return per, time.perf_counter() - t0, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dir", default=None, help="where to write the checkpoint (default: a new /tmp dir)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the checkpoint (and reuse it if present)"
    )
    ap.add_argument("--quick", action="store_true", help="1/8 of the width: a smoke run")
    ap.add_argument("--device", default=None, help="torch device of the spectra (default cpu)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dims = {k: v // 8 for k, v in LLAMA_7B.items()} if args.quick else LLAMA_7B
    directory = Path(args.dir or tempfile.mkdtemp(prefix="rankbias-llama-", dir="/tmp"))
    shapes = llama_shapes(**dims, layers=2)
    index = directory / "model.safetensors.index.json"
    t = time.perf_counter()
    if not (args.keep and index.exists()):
        write_checkpoint(directory, shapes, dtype=torch.bfloat16, decay=0.5)
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    largest = max(math.prod(s) for s in shapes.values()) * 2
    print(
        f"checkpoint: 2 LLaMA layers, hidden {dims['hidden']}, intermediate {dims['intermediate']}, "
        f"vocab {dims['vocab']}, bf16, {size / 2**30:.2f} GiB in 2 shards (written in "
        f"{time.perf_counter() - t:.0f} s); largest tensor {largest / 2**20:.0f} MiB"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device or 'cpu'}"
    )
    methods = ["auto", "fast"]
    results = {}
    try:
        for method in methods:
            before = _rss_mib("VmRSS")
            per, total, rows = time_stream(index, method, args.device)
            peak = _rss_mib("VmHWM") - before
            layer = [
                sum(v for k, v in per.items() if k.startswith(f"model.layers.{i}."))
                for i in range(2)
            ]
            other = total - sum(layer)
            est32 = other + 32 * sum(layer) / 2
            results[method] = rows
            print(
                f"{method:>5}: {len(rows)} tensors in {total:.1f} s (layers {layer[0]:.1f} s, "
                f"{layer[1]:.1f} s; embedding + lm_head {other:.1f} s); 32 layers: ~{est32 / 60:.1f} min; "
                f"peak RSS growth {peak:.0f} MiB ({peak / (largest / 2**20):.1f}x the largest tensor)"
            )
        if "fast" in results:
            exact = {r["name"]: r for r in results["auto"]}
            for key in ("stable_rank", "effective_rank"):
                err = max(
                    abs(r[key] - exact[r["name"]][key]) / exact[r["name"]][key]
                    for r in results["fast"]
                )
                print(f"fast vs exact, {key}: largest relative difference {err:.2e}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
