"""depth-rank-init: depth lowers the effective rank at initialisation.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 3:
the end-to-end map W_e = W_L ... W_1 of a deep linear network with i.i.d.
n x n factors has an entropy rank whose distribution over draws shifts down
(and widens) as the depth L grows.

Draws are batched: one chain of ``max(depths)`` factors per draw, multiplied as
a (draws, n, n) batched matmul, with the entropy rank read off at every depth
of the list. Each depth's distribution is exact; the depths of one draw share
their first factors (prefix products), which correlates depths, not draws.
Each factor is scaled by 1/sqrt(n) (Gaussian) or sqrt(3/n) (uniform) so the
product neither overflows nor underflows; the entropy rank is scale-invariant.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from rankbias.config import Config
from rankbias.experiments.registry import register
from rankbias.measures import rank_measures
from rankbias.runs import RunDir

CLAIM = (
    "The entropy rank of the end-to-end map W_L...W_1 of a deep linear network at "
    "initialisation decreases with depth L: its distribution over draws shifts down "
    "(and widens) as L grows (Huh et al. 2023, sec. 3)."
)


@dataclasses.dataclass(frozen=True)
class DepthRankInitConfig(Config):
    n: int = 32
    """Size of each square factor W_i (n x n)."""
    depths: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Depths L to measure, each >= 1, strictly increasing."""
    draws: int = 2000
    """Independent draws of the network per depth."""
    init: Literal["normal", "uniform"] = "normal"
    """Distribution of the factors' entries: N(0, 1) or uniform(-1, 1) (rescaled, see above)."""
    seed: int = 0
    """Seed of the draws; fixes the run completely."""
    chunk: int = 1024
    """Draws processed per batched matmul (memory: chunk * n * n * 8 bytes per buffer)."""
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""

    def validate(self) -> None:
        self._require(self.n >= 2, "n", "an int >= 2")
        self._require(len(self.depths) >= 1 and all(d >= 1 for d in self.depths), "depths",
                      "a non-empty list of ints >= 1")
        self._require(all(a < b for a, b in zip(self.depths, self.depths[1:])), "depths",
                      "strictly increasing depths")
        self._require(self.draws >= 2, "draws", "an int >= 2")
        self._require(self.chunk >= 1, "chunk", "an int >= 1")


def sample_factor(shape, init: str, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """i.i.d. factors scaled to unit variance per output (the scale does not change ranks)."""
    if init == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float64, device=device) / n**0.5
    return (torch.rand(shape, generator=gen, dtype=torch.float64, device=device) * 2 - 1) * (3 / n) ** 0.5


def entropy_ranks_by_depth(cfg: DepthRankInitConfig) -> dict[int, np.ndarray]:
    """Entropy rank of W_L...W_1 for every depth in ``cfg.depths``, shape (draws,) each."""
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    wanted = set(cfg.depths)
    out: dict[int, list[np.ndarray]] = {d: [] for d in cfg.depths}
    for start in range(0, cfg.draws, cfg.chunk):
        b = min(cfg.chunk, cfg.draws - start)
        prod = None
        for depth in range(1, max(cfg.depths) + 1):
            W = sample_factor((b, cfg.n, cfg.n), cfg.init, cfg.n, gen, cfg.device)
            prod = W if prod is None else W @ prod  # (b, n, n)
            if depth in wanted:
                h = rank_measures(prod, ["entropy_rank"])["entropy_rank"]
                out[depth].append(h.cpu().numpy())
    return {d: np.concatenate(v) for d, v in out.items()}


def describe(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std(ddof=1)),
        "q05": float(np.quantile(values, 0.05)),
        "q95": float(np.quantile(values, 0.95)),
    }


def strictly_decreasing(xs) -> bool:
    return all(b < a for a, b in zip(xs, xs[1:]))


@register(
    "depth-rank-init",
    description="Entropy rank of deep linear networks at initialisation, against depth (Huh et al. sec. 3)",
    config_cls=DepthRankInitConfig,
    presets={
        "quick": {},
        "paper": {"n": 256, "depths": [1, 2, 4, 8, 16, 32, 64], "draws": 10000, "chunk": 256},
    },
    claim=CLAIM,
)
def run(cfg: DepthRankInitConfig, run: RunDir) -> dict:
    from rankbias import plots
    from rankbias.report import markdown_table, write_run_report

    ranks = entropy_ranks_by_depth(cfg)
    per_depth = [{"depth": d, **describe(v)} for d, v in ranks.items()]
    run.write_csv(
        "metrics.csv",
        ({"depth": d, "draw": i, "entropy_rank": float(x)} for d, v in ranks.items() for i, x in enumerate(v)),
    )
    medians = [r["median"] for r in per_depth]
    verdict = {
        "holds": strictly_decreasing(medians),
        "criterion": "median entropy rank strictly decreasing in depth",
        "median_by_depth": {str(r["depth"]): r["median"] for r in per_depth},
    }
    plots.distributions_by_group(
        {f"L={d}": v for d, v in ranks.items()},
        run.figure_path("entropy_rank_by_depth"),
        xlabel="entropy rank of $W_L\\cdots W_1$ (nats)",
        title=f"Deep linear nets at init, n={cfg.n}, {cfg.init} entries, {cfg.draws} draws",
        legend_title="depth",
    )
    summary = {"per_depth": per_depth, "verdict": verdict, "max_entropy_rank": float(np.log(cfg.n))}
    write_run_report(
        run,
        title="depth-rank-init: effective rank at initialisation against depth",
        claim=CLAIM,
        verdict=verdict,
        sections=[("Entropy rank by depth (nats; the maximum is log n = "
                   f"{np.log(cfg.n):.3f})", markdown_table(per_depth))],
        figures=["entropy_rank_by_depth"],
        config=cfg.to_dict(),
    )
    return summary
