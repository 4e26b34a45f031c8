"""depth-rank-init: depth lowers the effective rank at initialisation.

Huh et al. (2023), "The Low-Rank Simplicity Bias in Deep Networks", sec. 3
(``docs/paper2-depth.md``, C.1):
the end-to-end map W_e = W_L ... W_1 of a deep linear network with i.i.d.
n x n factors has an entropy rank whose distribution over draws shifts down
(and widens) as the depth L grows.

Draws are batched: one chain of ``max(depths)`` factors per draw, multiplied as
a (draws, n, n) batched matmul, with the entropy rank read off at every depth
of the list. Each depth's distribution is exact; the depths of one draw share
their first factors (prefix products), which correlates depths, not draws.
Each factor is scaled by 1/sqrt(n) (Gaussian) or sqrt(3/n) (uniform) so the
product neither overflows nor underflows; the entropy rank is scale-invariant.
Every layer has its own random stream (:func:`layer_stream`), of which draw i
takes the i-th block, so the values do not depend on ``chunk``: a batched run
and a per-draw loop give the same draws. Factors are drawn in float32 and the
linear maps' products computed in float64 (:func:`sample_factor`); the MLPs'
forward passes run in float32, each kernel summed in float64.

With ``network="mlp"`` the run also measures the same effect for nonlinear
networks (Huh et al. sec. 3, fig. 3): N random inputs x_j ~ N(0, I_w) pass
through an MLP h_l = phi(W_l h_{l-1}) with w x w factors and no biases; the
kernel of the depth-L embeddings, K = Z_L Z_L^T (N x N, uncentred), has its
entropy rank (p_i = lambda_i(K) / sum_j lambda_j(K), the "kernel effective
rank" in nats) measured at every depth of the list, for every activation.

Initialisation per activation: W_l has i.i.d. entries of variance g^2 / w
(normal, or uniform with that variance), with the gain g chosen so that unit
pre-activation variance is a fixed point of the variance map,
g^2 E[phi(z)^2] = 1 for z ~ N(0, 1) (computed by Gauss-Hermite quadrature).
This is He's sqrt(2) for ReLU, sqrt(2 / (1 + a^2)) for leaky ReLU, 1 for the
identity and for SELU (LeCun init, SELU's self-normalising fixed point), and
~1.59 for tanh, ~1.53 for GELU, ~1.52 for sine. The signal's scale thus neither
explodes nor vanishes with depth, so any fall of the kernel's rank is a change of
its shape, not of its size (the entropy rank is scale-invariant anyway).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from rankbias.errors import InvalidParameterError
from rankbias.experiments._depth import DepthConfig
from rankbias.experiments._statements import PAPER2_INIT
from rankbias.experiments.registry import register
from rankbias.framework.runs import RunDir
from rankbias.measures import measures_from_singular_values, rank_measures
from rankbias.verdicts import verdict

CLAIM_MLP = (
    "The same holds for nonlinear networks: the entropy rank of the kernel of N random "
    "inputs' embeddings through a deep MLP at initialisation decreases with depth, for "
    "linear, tanh, ReLU, leaky ReLU, SELU, GELU and sine activations (Huh et al. 2023, fig. 3)."
)
CLAIM = (
    "The entropy rank of the end-to-end map W_L...W_1 of a deep linear network at "
    "initialisation decreases with depth L: its distribution over draws shifts down "
    "(and widens) as L grows (Huh et al. 2023, sec. 3)."
)
PAPER_LINEAR = ("the entropy rank of W_L...W_1 at init shifts down and widens with depth "
                "(depths 1 to 32 and more, Gaussian and uniform factors)")
PAPER_MLP = "the kernel's effective rank at init falls with depth for every activation tried"

LEAKY_SLOPE = 0.01
ACTIVATION_FNS = {
    "linear": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, LEAKY_SLOPE),
    "selu": F.selu,
    "gelu": F.gelu,
    "sine": torch.sin,
}
ACTIVATIONS = tuple(ACTIVATION_FNS)


def variance_preserving_gain(activation: str, order: int = 101) -> float:
    """g with g^2 E[phi(z)^2] = 1, z ~ N(0, 1): unit pre-activation variance is
    then a fixed point of layer-to-layer propagation (Gauss-Hermite quadrature)."""
    if activation not in ACTIVATION_FNS:
        raise InvalidParameterError(f"unknown activation {activation!r}; accepted: {', '.join(ACTIVATIONS)}")
    z, w = np.polynomial.hermite_e.hermegauss(order)
    phi = ACTIVATION_FNS[activation](torch.as_tensor(z, dtype=torch.float64)).numpy()
    return float(1.0 / np.sqrt((w * phi**2).sum() / w.sum()))


@dataclasses.dataclass(frozen=True)
class DepthRankInitConfig(DepthConfig):
    n: int = 32
    """Size of each square factor W_i (n x n)."""
    draws: int = 2000
    """Independent draws of the network per depth."""
    init: Literal["normal", "uniform"] = "normal"
    """Distribution of the factors' entries: N(0, 1) or uniform(-1, 1) (rescaled, see above)."""
    seed: int = 0
    """Seed of the draws; fixes the run completely."""
    chunk: int = 1024
    """Draws processed per batched matmul (memory: chunk * n * n * 8 bytes per buffer);
    a speed and memory setting only: the values do not depend on it."""
    network: Literal["linear", "mlp"] = "linear"
    """"linear": the end-to-end maps W_L...W_1 only; "mlp": those and, for every
    activation, the kernel of N random inputs' embeddings through deep MLPs."""
    activations: list[str] = dataclasses.field(default_factory=lambda: list(ACTIVATIONS))
    """MLP activations (network="mlp"): any of linear, tanh, relu, leaky_relu, selu, gelu, sine."""
    width: int = 64
    """MLP width w (input dimension and every hidden layer; network="mlp")."""
    n_inputs: int = 32
    """Number N of random inputs whose N x N kernel is measured (network="mlp")."""

    def validate(self) -> None:
        super().validate()
        self._require(self.n >= 2, "n", "an int >= 2")
        self._require(self.seed >= 0, "seed", "an int >= 0")  # it seeds a SeedSequence
        self._require(self.draws >= 2, "draws", "an int >= 2")
        self._require(self.chunk >= 1, "chunk", "an int >= 1")
        self._require(len(self.activations) >= 1 and all(a in ACTIVATIONS for a in self.activations),
                      "activations", f"a non-empty list of: {', '.join(ACTIVATIONS)}")
        self._require(len(set(self.activations)) == len(self.activations), "activations",
                      "each activation at most once")
        self._require(self.width >= 2, "width", "an int >= 2")
        self._require(self.n_inputs >= 2, "n_inputs", "an int >= 2")


# torch's CPU normal sampler turns its uniforms into normals 16 at a time and redraws a
# tail under 16, so a stream cut into calls whose sizes are multiples of 16 yields the
# same numbers as the uncut stream (tests/test_depth.py checks it on every torch)
_NORMAL_BLOCK = 16


def layer_stream(seed: int, stream: int, layer: int) -> torch.Generator:
    """The CPU generator of layer ``layer`` of ``stream`` (0: the linear maps, 1 + the
    activation's index: an MLP, whose layer 0 is its inputs) for ``seed``.

    Draw i's factor of that layer is the i-th block of this stream, so a run gives the
    same values whatever its ``chunk`` (one draw at a time included) and its device.
    """
    state = np.random.SeedSequence([seed, stream, layer]).generate_state(1)[0]  # uint32
    return torch.Generator().manual_seed(int(state))


def sample_factor(b: int, shape: tuple[int, ...], init: str, fan_in: int, gen: torch.Generator,
                  device, gain: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``b`` i.i.d. blocks of ``shape`` (``dtype`` on ``device``), the next ``b`` of ``gen``'s
    stream: entries N(0, 1) or uniform(-1, 1), scaled to variance gain^2 / fan_in.

    Drawn in float32 (torch's float32 sampler is ~6x faster than its float64 one, and
    drawing was over half of a batched run), then cast: a float32 normal differs from a
    float64 one only by its rounding (relative 6e-8) and beyond 5.8 sigma (probability
    1e-8), both far below what a run's statistics resolve.
    """
    k = math.prod(shape)
    if init == "normal":
        x = torch.randn((b, k + -k % _NORMAL_BLOCK), generator=gen)[:, :k]
        c = gain / fan_in**0.5
    else:
        x = torch.rand((b, k), generator=gen).mul_(2).sub_(1)  # exact in float32
        c = gain * (3 / fan_in) ** 0.5
    return x.to(device=device, dtype=dtype).mul_(c).reshape(b, *shape)


def _entropy_rank(A: torch.Tensor) -> np.ndarray:
    # the SVD at once: deep products and kernels are too ill-conditioned for the Gram
    # route, which "auto" would compute first and then redo with the SVD anyway
    return rank_measures(A, ["entropy_rank"], method="svd")["entropy_rank"].cpu().numpy()


def entropy_ranks_by_depth(cfg: DepthRankInitConfig) -> dict[int, np.ndarray]:
    """Entropy rank of W_L...W_1 for every depth in ``cfg.depths``, shape (draws,) each."""
    n, wanted = cfg.n, set(cfg.depths)
    gens = [layer_stream(cfg.seed, 0, layer) for layer in range(1, max(cfg.depths) + 1)]
    out: dict[int, list[np.ndarray]] = {d: [] for d in cfg.depths}
    for start in range(0, cfg.draws, cfg.chunk):
        b = min(cfg.chunk, cfg.draws - start)
        prod = None
        for depth, gen in enumerate(gens, 1):
            W = sample_factor(b, (n, n), cfg.init, n, gen, cfg.device)
            prod = W if prod is None else W @ prod  # (b, n, n)
            if depth in wanted:
                out[depth].append(_entropy_rank(prod))
    return {d: np.concatenate(v) for d, v in out.items()}


def mlp_embeddings(X: torch.Tensor, weights, activation: str, depths) -> dict[int, torch.Tensor]:
    """Embeddings phi(W_L ... phi(W_1 x)) of inputs X (b, N, w) at every depth in
    ``depths``; ``weights`` yields the factors (b, w, w) in order."""
    phi = ACTIVATION_FNS[activation]
    wanted, out, h = set(depths), {}, X
    for depth, W in zip(range(1, max(depths) + 1), weights):
        h = phi(h @ W.mT)  # (b, N, w)
        if depth in wanted:
            out[depth] = h
    return out


def kernel_entropy_rank(Z: torch.Tensor) -> np.ndarray:
    """Entropy rank of the kernels K = Z Z^T of embeddings Z (b, N, w), shape (b,).

    K is summed in float64. It is symmetric positive semi-definite, so its singular
    values are its eigenvalues, which ``eigvalsh`` gives to the SVD's accuracy
    (absolute ~eps ||K||) in about half the SVD's time.

    Raises
    ------
    InvalidParameterError
        Z holds NaN or Inf (an MLP's signal overflowed).
    """
    if not bool(torch.isfinite(Z).all()):
        raise InvalidParameterError("Z: the embeddings hold NaN/Inf (the MLP's signal overflowed); "
                                    "accepted: finite embeddings")
    Z = Z.double()
    # rounding can leave a zero eigenvalue at -eps ||K||: it is 0
    s = torch.linalg.eigvalsh(Z @ Z.mT).clamp_min_(0).flip(-1)
    return measures_from_singular_values(s, shape=(s.shape[-1], s.shape[-1]),
                                         measures=["entropy_rank"])["entropy_rank"].cpu().numpy()


def kernel_entropy_ranks_by_depth(cfg: DepthRankInitConfig, activation: str) -> dict[int, np.ndarray]:
    """Entropy rank of the kernel Z_L Z_L^T of ``cfg.n_inputs`` random inputs through
    an MLP with ``activation`` at every depth in ``cfg.depths``, shape (draws,) each.
    Every draw has its own inputs and weights; draws run in batches of ``cfg.chunk``.
    The forward pass runs in float32 (its matmuls are ~3x faster than float64's) and
    each kernel is summed in float64: against a float64 forward pass of the same draws
    that moves an entropy rank by at most ~5e-6 nats at depth 32 (tests/test_depth.py)."""
    # streams per activation, so adding or reordering activations changes no other result
    stream = 1 + ACTIVATIONS.index(activation)
    gens = [layer_stream(cfg.seed, stream, layer) for layer in range(max(cfg.depths) + 1)]
    gain = variance_preserving_gain(activation)
    w, N = cfg.width, cfg.n_inputs
    out: dict[int, list[np.ndarray]] = {d: [] for d in cfg.depths}
    for start in range(0, cfg.draws, cfg.chunk):
        b = min(cfg.chunk, cfg.draws - start)
        X = sample_factor(b, (N, w), "normal", 1, gens[0], cfg.device, dtype=torch.float32)
        weights = (sample_factor(b, (w, w), cfg.init, w, g, cfg.device, gain, torch.float32)
                   for g in gens[1:])
        for depth, Z in mlp_embeddings(X, weights, activation, cfg.depths).items():
            out[depth].append(kernel_entropy_rank(Z))
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
    description="Entropy rank at init against depth: deep linear maps and MLP kernels (Huh et al. sec. 3)",
    config_cls=DepthRankInitConfig,
    presets={
        "quick": {"network": "mlp", "draws": 1000, "chunk": 500},
        "smoke": {"network": "mlp", "n": 8, "depths": [1, 2, 4], "draws": 40, "chunk": 40, "width": 16,
                  "n_inputs": 8},
        "paper": {"n": 256, "depths": [1, 2, 4, 8, 16, 32, 64], "draws": 10000, "chunk": 256,
                  "network": "mlp", "width": 256, "n_inputs": 128},
    },
    claim=CLAIM,
)
def run(cfg: DepthRankInitConfig, run: RunDir) -> dict:
    import rankbias.plots as plots
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    ranks = entropy_ranks_by_depth(cfg)
    per_depth = [{"depth": d, **describe(v)} for d, v in ranks.items()]
    run.write_csv(
        "metrics.csv",
        ({"depth": d, "draw": i, "entropy_rank": float(x)} for d, v in ranks.items() for i, x in enumerate(v)),
    )
    verdict_, linear_falls, linear_measured = _linear_verdict(cfg, per_depth)
    plots.distributions_by_group(
        {f"L={d}": v for d, v in ranks.items()},
        run.figure_path("entropy_rank_by_depth"),
        xlabel="entropy rank of $W_L\\cdots W_1$ (nats)",
        title=f"Deep linear nets at init\nn={cfg.n}, {cfg.init} entries, {cfg.draws} draws",
        legend_title="depth",
    )
    summary = {"per_depth": per_depth, "verdict": verdict_, "max_entropy_rank": float(np.log(cfg.n))}
    sections = [("Entropy rank by depth (nats; the maximum is log n = "
                 f"{np.log(cfg.n):.3f})", markdown_table(per_depth))]
    figures = ["entropy_rank_by_depth"]
    if cfg.network == "mlp":
        sections.append(_mlp_kernels(cfg, run, summary, linear_falls, linear_measured))
        figures.append("kernel_entropy_rank_by_depth")
    write_run_report(
        run,
        title="depth-rank-init: effective rank at initialisation against depth",
        claim=CLAIM if cfg.network == "linear" else CLAIM + " " + CLAIM_MLP,
        verdict=summary["verdict"],
        sections=sections,
        figures=figures,
        config=cfg.to_dict(),
    )
    return summary


def _linear_verdict(cfg: DepthRankInitConfig, per_depth: list[dict]) -> tuple[dict, bool, str]:
    """(the verdict on the linear end-to-end map, whether its median falls strictly, what was measured)."""
    medians = [r["median"] for r in per_depth]
    linear_falls = strictly_decreasing(medians)
    linear_measured = (f"median entropy rank {medians[0]:.3f} (L={cfg.depths[0]}) -> {medians[-1]:.3f} "
                       f"(L={cfg.depths[-1]}), " + ("strictly falling" if linear_falls else "not strictly falling"))
    verdict_ = verdict(
        "holds" if linear_falls else "does not hold",
        "median entropy rank strictly decreasing in depth", linear_measured,
        median_by_depth={str(r["depth"]): r["median"] for r in per_depth},
        statement=PAPER2_INIT, paper=PAPER_LINEAR, measured=linear_measured)
    return verdict_, linear_falls, linear_measured


def _mlp_kernels(cfg: DepthRankInitConfig, run: RunDir, summary: dict, linear_falls: bool,
                 linear_measured: str) -> tuple[str, str]:
    """The MLP kernels' part: measured, joined to ``summary`` and its verdict; returns the report section."""
    from rankbias.framework.tables import markdown_table

    per_activation = _run_mlp(cfg, run)
    falls = {a["activation"]: a["strictly_decreasing"] for a in per_activation}
    flat = [a for a, f in falls.items() if not f]
    kernel_measured = ("the median kernel entropy rank falls strictly for every activation"
                       if not flat else "not strictly falling for " + ", ".join(flat))
    verdict_ = verdict(
        "holds" if linear_falls and not flat else "does not hold",
        "median entropy rank strictly decreasing in depth, for the linear end-to-end map and "
        "for every activation's kernel", f"{linear_measured}; {kernel_measured}",
        median_by_depth=summary["verdict"]["median_by_depth"], linear_end_to_end_falls=linear_falls,
        kernel_falls_by_activation=falls, statement=PAPER2_INIT, paper=f"{PAPER_LINEAR}; {PAPER_MLP}",
        measured=f"linear: {linear_measured}; MLP kernels: {kernel_measured}")
    summary.update(verdict=verdict_, per_activation=per_activation,
                   max_kernel_entropy_rank=float(np.log(min(cfg.n_inputs, cfg.width))))
    rows = [{"activation": a["activation"], "gain": a["gain"],
             **{f"L={r['depth']}": r["median"] for r in a["per_depth"]},
             "falls": a["strictly_decreasing"]} for a in per_activation]
    return (f"Kernel entropy rank of deep MLPs (median over {cfg.draws} draws, nats; N = "
            f"{cfg.n_inputs} inputs, width {cfg.width}, max log {min(cfg.n_inputs, cfg.width)} = "
            f"{np.log(min(cfg.n_inputs, cfg.width)):.3f})", markdown_table(rows))


def _run_mlp(cfg: DepthRankInitConfig, run: RunDir) -> list[dict]:
    from tqdm.auto import tqdm

    import rankbias.plots as plots

    per_activation, ranks_by_act = [], {}
    for act in tqdm(cfg.activations, desc="kernels", disable=None, leave=False):
        ranks = kernel_entropy_ranks_by_depth(cfg, act)
        ranks_by_act[act] = ranks
        rows = [{"depth": d, **describe(v)} for d, v in ranks.items()]
        per_activation.append({
            "activation": act,
            "gain": variance_preserving_gain(act),
            "per_depth": rows,
            "strictly_decreasing": strictly_decreasing([r["median"] for r in rows]),
        })
    run.write_csv(
        "kernel_metrics.csv",
        ({"activation": a, "depth": d, "draw": i, "kernel_entropy_rank": float(x)}
         for a, ranks in ranks_by_act.items() for d, v in ranks.items() for i, x in enumerate(v)),
    )
    plots.quantile_lines(
        {a["activation"]: a["per_depth"] for a in per_activation},
        run.figure_path("kernel_entropy_rank_by_depth"),
        x="depth", center="median", lo="q05", hi="q95",
        xlabel="depth L (number of layers)",
        ylabel="kernel entropy rank (nats)",
        title=(f"Deep MLPs at init: kernel of N={cfg.n_inputs} random inputs, width {cfg.width}\n"
               f"median and 5-95% band over {cfg.draws} draws"),
        logx=True,
        hline=(float(np.log(min(cfg.n_inputs, cfg.width))), "maximum log N"),
    )
    return per_activation
