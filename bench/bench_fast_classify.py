"""Batched seeds (vmap over stacked parameters) against one seed after another.

One epoch of :func:`rankbias.fit.fast_classify.train_group` on random uint8
CIFAR-shaped images, for the same models and seeds in both forms, timed
interleaved (each repeat runs both, in alternating order) after one warm-up
epoch each; the ratio of medians is reported (< 1: batching is faster). On a GPU
(``--device cuda``) this is the choice ``batch_seeds="auto"`` makes at run time.

    PYTHONPATH=src python bench/bench_fast_classify.py [--device cpu] [--seeds 3] [--depth 2]
        [--images 1024] [--batch 128] [--width 16] [--blocks 3] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from rankbias.fit.fast_classify import DeviceImages, FastTrainSettings, train_group
from rankbias.models import build_model
from rankbias.overparam import overparameterize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.images, 3, 32, 32), generator=g, dtype=torch.uint8)
    data = DeviceImages(x, torch.arange(a.images) % 10, a.device)
    test = DeviceImages(x[:256], torch.arange(256) % 10, a.device, data.mean, data.std)
    cuda = torch.device(a.device).type == "cuda"
    s = FastTrainSettings(epochs=2, batch_size=a.batch, lr=0.1, bf16=cuda, channels_last=True, nesterov=False,
                          warmup_epochs=1.0, crop_padding=4, hflip=True)
    seeds = list(range(a.seeds))

    def models():
        out = []
        for sd in seeds:
            torch.manual_seed(sd)
            m = build_model("resnet", 3, 10, width=a.width, blocks=a.blocks)
            out.append((overparameterize(m, depth=a.depth) if a.depth > 1 else m).to(a.device))
        return out

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(a.repeats):
        for batched in ((True, False) if r % 2 == 0 else (False, True)):
            res = train_group(models(), seeds, data, test, s, batch_seeds=batched, progress=False)
            times[batched].append(res.epoch_times[-1])  # the second epoch: warm caches
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.seeds} seeds, depth {a.depth}, ResNet width {a.width} x {a.blocks} blocks, "
          f"{a.images} images, batch {a.batch}, {a.device}, {a.threads} thread(s)")
    print(f"epoch: batched {med[True]:.3f} s, one after another {med[False]:.3f} s, "
          f"ratio batched / sequential = {med[True] / med[False]:.3f}")


if __name__ == "__main__":
    main()
