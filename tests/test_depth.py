"""Depth and rank (docs/paper2-depth.md, C.1 and C.2): deep linear nets, MLP kernels
at init, trained deep linear nets, optimisers."""

import math

import numpy as np
import pytest
import torch

import rankbias
from rankbias.data.matrix_tasks import make_task
from rankbias.errors import InvalidParameterError
from rankbias.experiments.depth_rank_init import (
    ACTIVATIONS,
    LEAKY_SLOPE,
    DepthRankInitConfig,
    entropy_ranks_by_depth,
    kernel_entropy_rank,
    kernel_entropy_ranks_by_depth,
    mlp_embeddings,
    variance_preserving_gain,
)
from rankbias.fit.deep_linear import fit_deep_linear
from rankbias.fit.random_search import fit_random_search
from rankbias.framework.config import ConfigError
from rankbias.measures import entropy_rank
from rankbias.models.deep_linear import DeepLinear, end_to_end, sample_factors


@pytest.fixture(autouse=True)
def _one_thread():
    # The caller owns the thread count (the library sets none). These tests are that
    # caller: small n x n matmuls gain nothing from intra-op threads and, on a loaded
    # machine, lose several-fold to their synchronisation.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- deep linear model


def test_padding_with_identity_is_exact_and_frozen():
    # What is guaranteed: I @ P == P exactly in floating point (one product plus exact
    # zeros per entry), so a padded network's product equals the chain of its own d
    # factors computed by the same batched routine bit for bit. A per-matrix loop may
    # use other BLAS kernels, so it only agrees to round-off: |fl(AB) - AB| <= n u |A||B|
    # entrywise per product bounds each route's error by (d - 1) n u |W_d|...|W_1| (to
    # first order), so their difference by twice that.
    depths, n = [1, 3, 5, 8], 6
    net = DeepLinear(depths, n, generator=_gen())
    We = net.end_to_end()
    u = torch.finfo(torch.float64).eps / 2
    for m, d in enumerate(depths):
        own = end_to_end(net.factors[:, :d], net.mask[:, :d])  # same batch, d slots only
        assert torch.equal(We[m], own[m])
        P, bound = net.factors[m, 0], net.factors[m, 0].abs()
        for i in range(1, d):
            P, bound = net.factors[m, i] @ P, net.factors[m, i].abs() @ bound
        assert torch.all((We[m] - P).abs() <= 2.02 * (d - 1) * n * u * bound)
        assert torch.equal(net.factors[m, d:], torch.eye(n).expand(8 - d, n, n).double())
    # masked slots count as the exact identity whatever they hold; unmasked, they would not
    junk = torch.where(net.mask[..., None, None], net.factors.detach(), torch.full_like(net.factors, 0.3))
    assert torch.equal(end_to_end(junk, net.mask), We.detach())
    assert not torch.allclose(end_to_end(junk)[0], We[0])
    We.square().sum().backward()
    for m, d in enumerate(depths):
        assert torch.count_nonzero(net.factors.grad[m, d:]) == 0  # padded slots never move
        assert torch.count_nonzero(net.factors.grad[m, :d]) > 0


def test_per_network_init_distributions():
    net = DeepLinear([2, 3], 5, init=["orthogonal", "normal"], init_scale=[2.0, 1.0], generator=_gen())
    F = net.factors.detach()
    eye = torch.eye(5, dtype=F.dtype)
    assert torch.allclose(F[0, :2].mT @ F[0, :2], 4 * eye.expand(2, 5, 5), atol=1e-12)
    assert (F[1, 0].mT @ F[1, 0] - eye).abs().max() > 0.1  # i.i.d. normal: not orthogonal
    with pytest.raises(ValueError, match="init: expected a name or 2 names"):
        DeepLinear([1, 2], 4, init=["normal"])


def test_depth_one_and_orthogonal_closed_forms():
    # depth 1: the end-to-end map is the factor; an orthogonal product has all
    # singular values equal, so its entropy rank is exactly log n at every depth
    net = DeepLinear([1, 4, 16], 8, init="orthogonal", init_scale=2.0, generator=_gen())
    assert torch.equal(net.end_to_end()[0], net.factors[0, 0])
    h = entropy_rank(net.collapse())
    assert torch.allclose(h, torch.full((3,), math.log(8), dtype=h.dtype), atol=1e-10)
    sv = torch.linalg.svdvals(net.collapse())
    assert torch.allclose(sv[1], torch.full((8,), 2.0**4, dtype=sv.dtype), rtol=1e-10)
    # forward = x W_e^T
    x = torch.randn(5, 8, generator=_gen(1), dtype=torch.float64)
    assert torch.allclose(net(x)[2], x @ net.collapse()[2].T)


def test_factor_variance_matches_scale():
    W = sample_factors((400, 16, 16), init="uniform", scale=0.5, generator=_gen())
    assert abs(W.var().item() * 16 - 0.25) < 0.01
    with pytest.raises(ValueError, match="init must be one of"):
        sample_factors((2, 2), init="cauchy")


def test_deep_linear_bad_input():
    with pytest.raises(ValueError, match="depths must be a non-empty list of ints >= 1"):
        DeepLinear([0, 2], 4)
    with pytest.raises(ValueError, match="init_scale: expected a float or 2 floats"):
        DeepLinear([1, 2], 4, init_scale=[1.0])


# --------------------------------------------------------------------- training


@pytest.mark.parametrize("optimizer, batch_size", [("gd", None), ("sgd", 4), ("adam", None)])
def test_batched_training_equals_one_at_a_time(optimizer, batch_size):
    g = _gen()
    tasks = [make_task(6, "low_rank", rank=2, n_train=8, n_test=16, noise=0.1, generator=g) for _ in range(2)]
    kw = dict(optimizer=optimizer, lr=0.01, steps=30, batch_size=batch_size)
    p = fit_deep_linear(tasks, [0, 1, 0, 1], [2, 2, 5, 1], generator=_gen(3), group_by_depth=False, **kw)
    a = fit_deep_linear(tasks, [0, 1, 0, 1], [2, 2, 5, 1], generator=_gen(3), group_by_depth=True, **kw)
    b = fit_deep_linear(tasks, [0, 1, 0, 1], [2, 2, 5, 1], generator=_gen(3), batched=False, **kw)
    assert torch.allclose(a.end_to_end, b.end_to_end, rtol=1e-10, atol=1e-12)
    assert torch.allclose(a.train_loss, b.train_loss, rtol=1e-9)
    assert torch.allclose(p.end_to_end, b.end_to_end, rtol=1e-10, atol=1e-12)  # padded batch
    assert a.status == b.status == p.status == ["ok"] * 4


def test_depth_one_gd_converges_to_least_squares():
    # depth 1, full batch, more pairs than dimensions: GD reaches the least-squares solution
    t = make_task(5, "full_rank", n_train=40, n_test=10, noise=0.3, generator=_gen())
    res = fit_deep_linear([t], [0], [1], optimizer="gd", lr=1.0, steps=3000, generator=_gen(1))
    W_ls = torch.linalg.lstsq(t.x_train, t.y_train).solution.T
    assert torch.allclose(res.end_to_end[0], W_ls, atol=1e-8)


def test_make_task_closed_forms():
    t = make_task(8, "low_rank", rank=3, n_train=4, n_test=4, generator=_gen())
    sv = torch.linalg.svdvals(t.target)
    assert torch.allclose(sv[:3], torch.full((3,), (8 / 3) ** 0.5, dtype=sv.dtype))
    assert sv[3:].abs().max() < 1e-12
    assert abs(entropy_rank(t.target).item() - math.log(3)) < 1e-10
    assert torch.allclose(t.y_test, t.x_test @ t.target.T)
    with pytest.raises(ValueError, match="rank must be in"):
        make_task(4, "low_rank", rank=5, n_train=2, n_test=2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit_deep_linear([t], [0], [1], optimizer="newton")


def test_random_search_batched_minimises_and_respects_mask():
    target = torch.randn(3, 5, generator=_gen(), dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, -1] = False
    x0 = torch.zeros(3, 5, dtype=torch.float64)
    reps = 8

    def loss(c):  # c: (3 * reps, 5), model-major
        return (c - target.repeat_interleave(reps, 0)).square().sum(-1)

    res = fit_random_search(loss, x0, steps=300, population=reps, sigma=0.5, generator=_gen(1), mask=mask)
    assert torch.all(res.params[:, -1] == 0)
    assert torch.allclose(res.params[:, :-1], target[:, :-1], atol=1e-3)
    assert torch.allclose(res.loss, target[:, -1].square(), atol=1e-5)
    # the 1/5 rule: step size shrinks as the optimum is approached
    assert torch.all(res.sigma < 0.5)


# --------------------------------------------------------------------- MLP kernels


def test_variance_preserving_gains_closed_forms():
    assert variance_preserving_gain("linear") == pytest.approx(1.0, abs=1e-12)
    assert variance_preserving_gain("relu") == pytest.approx(math.sqrt(2), rel=1e-3)
    assert variance_preserving_gain("leaky_relu") == pytest.approx(
        math.sqrt(2 / (1 + LEAKY_SLOPE**2)), rel=1e-3)
    assert variance_preserving_gain("selu") == pytest.approx(1.0, abs=2e-3)  # self-normalising
    # sine: E[sin^2 z] = (1 - e^{-2}) / 2
    assert variance_preserving_gain("sine") == pytest.approx(math.sqrt(2 / (1 - math.exp(-2))), rel=1e-8)


def test_mlp_linear_kernel_is_the_linear_network_kernel():
    X = torch.randn(4, 10, 6, generator=_gen(), dtype=torch.float64)
    Ws = [torch.randn(4, 6, 6, generator=_gen(i + 1), dtype=torch.float64) for i in range(3)]
    Z = mlp_embeddings(X, iter(Ws), "linear", [1, 3])
    P = Ws[2] @ Ws[1] @ Ws[0]
    assert torch.allclose(Z[3], X @ P.mT)
    assert torch.allclose(Z[1], X @ Ws[0].mT)
    Zr = mlp_embeddings(X, iter(Ws), "relu", [2])
    assert torch.allclose(Zr[2], torch.relu(torch.relu(X @ Ws[0].mT) @ Ws[1].mT))


@pytest.mark.parametrize("over, activation", [
    ({"n": 5, "init": "normal"}, None),  # 25 entries a factor: blocks padded to 16-multiples
    ({"n": 4, "init": "uniform"}, None),
    ({"width": 5, "n_inputs": 3, "init": "normal"}, "relu"),
    ({"width": 4, "n_inputs": 6, "init": "uniform"}, "tanh"),
])
def test_batched_draws_equal_the_per_draw_loop(over, activation):
    """Issue 21: a batched run and a loop over draws give the same draws, hence the same
    values (to rounding: a batched SVD and reduction may differ from a single one by an ulp)."""

    def run(chunk):
        cfg = DepthRankInitConfig.from_dict({"depths": [1, 3, 6], "draws": 7, "chunk": chunk, "seed": 3, **over})
        return entropy_ranks_by_depth(cfg) if activation is None else kernel_entropy_ranks_by_depth(cfg, activation)

    batched = run(7)
    assert len(set(batched[1].tolist())) == 7  # seven distinct draws, not one repeated
    for chunk in (1, 3):
        other = run(chunk)
        assert all(np.allclose(batched[d], other[d], rtol=0, atol=1e-13) for d in (1, 3, 6)), chunk


def test_kernel_entropy_rank_is_the_measure_of_the_kernel_and_refuses_overflow():
    Z = torch.randn(6, 8, 12, generator=_gen(), dtype=torch.float64)
    Z[3:] = Z[3:, :1] + 1e-6 * Z[3:]  # nearly rank-one kernels (entropy rank ~ 0), as deep ReLU nets give
    want = entropy_rank(Z @ Z.mT, method="svd")  # from the kernel's SVD
    got = kernel_entropy_rank(Z)
    assert np.allclose(got, want.numpy(), rtol=0, atol=1e-12)
    assert got[3:].max() < 1e-8 < got[:3].min()
    Z[2, 1, 1] = float("inf")
    with pytest.raises(InvalidParameterError, match="Z: the embeddings hold NaN/Inf"):
        kernel_entropy_rank(Z)


def test_float32_forward_pass_stays_near_the_float64_one():
    """The MLP runs its forward pass in float32: against float64 on the same draws the
    kernel's entropy rank moves by less than 2e-5 nats up to depth 32 (measured: <= 5e-6)."""
    for act in ACTIVATIONS:
        g = _gen(ACTIVATIONS.index(act))
        X = torch.randn(40, 16, 32, generator=g)
        Ws = [torch.randn(40, 32, 32, generator=g) * (variance_preserving_gain(act) / 32**0.5) for _ in range(32)]
        z32 = mlp_embeddings(X, iter(Ws), act, [1, 8, 32])
        z64 = mlp_embeddings(X.double(), (W.double() for W in Ws), act, [1, 8, 32])
        for d in (1, 8, 32):
            assert np.abs(kernel_entropy_rank(z32[d]) - kernel_entropy_rank(z64[d])).max() < 2e-5, (act, d)


def test_depth_rank_init_mlp_verdict_and_determinism(tmp_path):
    over = {"network": "mlp", "n": 16, "depths": [1, 2, 4, 8, 16], "draws": 300, "chunk": 300,
            "width": 32, "n_inputs": 16}
    a = rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path / "a")
    b = rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path / "b")
    assert a == b
    assert [p["activation"] for p in a["per_activation"]] == list(ACTIVATIONS)
    assert a["verdict"]["holds"] is True, a["verdict"]
    assert {"paper", "measured"} <= set(a["verdict"])
    assert all(a["verdict"]["kernel_falls_by_activation"].values())
    assert [r["depth"] for r in a["per_depth"]] == [1, 2, 4, 8, 16]  # the linear part is kept
    for f in ("figures/kernel_entropy_rank_by_depth.png", "figures/entropy_rank_by_depth.png",
              "kernel_metrics.csv"):
        assert (tmp_path / "a" / f).exists()
    # the kernel's entropy rank never exceeds log N
    assert max(r["q95"] for p in a["per_activation"] for r in p["per_depth"]) <= math.log(16) + 1e-9


@pytest.mark.parametrize(
    "name, over, match",
    [
        ("depth-rank-init", {"activations": ["swish"]}, r"activations: .*accepted: a non-empty list of: linear"),
        ("depth-rank-init", {"network": "cnn"}, r"network: .*one of 'linear', 'mlp'"),
        ("depth-rank-init", {"seed": -1}, r"seed: got -1; accepted: an int >= 0"),
        ("depth-rank-trained", {"target_rank": 16}, r"target_rank: got 16; accepted: an int in \[1, n - 1 = 15\]"),
        ("depth-rank-trained", {"optimizer": "lbfgs", "batch_size": 4}, r"batch_size: .*null with optimizer lbfgs"),
        ("depth-rank-trained", {"targets": ["medium"]}, r"targets\[0\]: got 'medium'"),
        ("depth-rank-optimizers", {"optimizers": ["sgd", "cma"]}, r"optimizers\[1\]: got 'cma'"),
        ("depth-rank-optimizers", {"batch_size": 99}, r"batch_size: got 99; accepted: null or an int in \[1, n_train = 32\]"),
        ("depth-rank-trained", {"seeds": [1, 1]}, r"seeds: .*a non-empty list of distinct ints >= 0"),
        ("depth-rank-trained", {"depths": [4]}, r"depths: .*a list of at least 2 ints >= 1"),
        ("depth-rank-init-sensitivity", {"inits": ["normal", "normal"]}, r"inits: .*distinct"),
        ("depth-rank-init-sensitivity", {"init_scales": [0]}, r"init_scales: .*floats > 0"),
        ("depth-rank-init-sensitivity", {"optimizer": "lbfgs"}, r"optimizer: .*one of 'gd'"),
    ],
)
def test_bad_configs(name, over, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        rankbias.run_experiment(name, over, out_dir=tmp_path)
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------ trained experiments


def test_depth_rank_trained_verdict_ci_config(tmp_path):
    """C.2 at CI size, trained to the plateau rule with a per-depth rate: low-rank target ->
    rank falls with depth toward the target's; full-rank target -> the deepest nets fit
    worse than the shallow ones. (The quick preset itself takes minutes: see
    docs/paper2-depth.md for its numbers.)"""
    over = {"depths": [1, 4, 16], "seeds": [0, 1], "steps": 800, "plateau_window": 100,
            "lr_factors": [0.5, 1.0]}
    s = rankbias.run_experiment("depth-rank-trained", over, out_dir=tmp_path)
    low, full = s["per_target"]
    assert (low["target"], full["target"]) == ("low_rank", "full_rank")
    assert low["target_entropy_rank"] == pytest.approx(math.log(4), abs=1e-9)
    v = low["verdict"]
    assert v["rank_strictly_falls_with_depth"] and v["deepest_closer_to_target_than_depth_1"]
    assert full["verdict"]["holds"]
    assert s["verdict"]["status"] in ("holds", "does not hold")
    assert {"paper", "measured", "criterion", "reason", "statement"} <= set(s["verdict"])
    assert len(s["training"]["lr_selection"]) == 6 and len(s["training"]["per_network"]) == 12
    assert s["training"]["stopping"]["cap"] == 800
    for f in ("depth_rank_trained", "rank_against_steps", "singular_values_low_rank",
              "singular_values_full_rank"):
        assert (tmp_path / "figures" / f"{f}.png").exists()
    assert "step" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "steps taken" in (tmp_path / "report.md").read_text()


def test_depth_rank_optimizers_verdict_ci_config(tmp_path):
    over = {"depths": [1, 4, 16], "seeds": [0, 1], "steps": 600, "lbfgs_steps": 15,
            "random_search_steps": 400, "lr_factors": [1.0]}
    s = rankbias.run_experiment("depth-rank-optimizers", over, out_dir=tmp_path)
    assert [p["optimizer"] for p in s["per_optimizer"]] == ["sgd", "nesterov", "adam", "lbfgs", "random_search"]
    for p in s["per_optimizer"]:
        assert p["rank_largest_depth"] < p["rank_depth_1"], p["optimizer"]
    assert s["verdict"]["holds"] is True
    assert {"paper", "measured"} <= set(s["verdict"])
    for f in ("entropy_rank_by_optimizer", "depth_rank_optimizers", "rank_against_steps"):
        assert (tmp_path / "figures" / f"{f}.png").exists()
    # first-order optimisers run under the stopping rule; L-BFGS and random search a fixed count
    rules = {p["optimizer"]: p["training"]["stopping"]["rule"] for p in s["per_optimizer"]}
    assert rules["sgd"].startswith("stop after") and rules["lbfgs"] == "a fixed number of steps"


def test_trained_runs_are_deterministic(tmp_path):
    over = {"batch_size": 8, "optimizer": "sgd"}  # minibatches: the sampler's seeding too
    a = rankbias.run_experiment("depth-rank-trained", over, out_dir=tmp_path / "a", preset="smoke")
    b = rankbias.run_experiment("depth-rank-trained", over, out_dir=tmp_path / "b", preset="smoke")
    assert a == b
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_seed_fixes_its_task_whatever_the_other_seeds():
    from rankbias.experiments._depth import build_tasks
    from rankbias.experiments.depth_rank_trained import DepthRankTrainedConfig

    many = build_tasks(DepthRankTrainedConfig(seeds=[0, 1, 2]), "low_rank")
    one = build_tasks(DepthRankTrainedConfig(seeds=[1]), "low_rank")
    assert torch.equal(many[1].x_train, one[0].x_train) and torch.equal(many[1].target, one[0].target)
    assert not torch.equal(many[0].target, many[1].target)
    assert DepthRankTrainedConfig(seeds=[4, 7]).n_seeds == 2


def test_top_k_singular_values_are_logged_through_the_trainer():
    # orthogonal factors of gain g: every singular value of a depth-L product is g^L
    t = make_task(6, "low_rank", rank=2, n_train=10, n_test=10, noise=0.1, generator=_gen())
    res = fit_deep_linear([t], [0, 0], [1, 3], init="orthogonal", init_scale=1.5, steps=40,
                          log_every=20, lr=0.01, top_k=3, generator=_gen(1))
    first = [r for r in res.history if r["step"] == 0]
    for r, L in zip(first, (1, 3)):
        assert [r["sv1"], r["sv2"], r["sv3"]] == pytest.approx([1.5**L] * 3, rel=1e-12)
    last = [r for r in res.history if r["step"] == 40]
    sv = torch.linalg.svdvals(res.end_to_end)[:, :3]
    logged = torch.tensor([[r[f"sv{i}"] for i in (1, 2, 3)] for r in last], dtype=sv.dtype)
    assert torch.allclose(logged, sv, rtol=1e-12)
    assert sorted({r["step"] for r in res.history}) == [0, 20, 40]
    with pytest.raises(ValueError, match="top_k must be in"):
        fit_deep_linear([t], [0], [1], top_k=7)


@pytest.mark.parametrize(
    "diffs, status",
    [
        # a clear fall for both i.i.d. inits: holds, whatever the orthogonal init does
        ({"a": [1.0, 1.1, 0.9], "b": [1.0, 0.95, 1.05], "o": [0.01, -0.01, 0.0]}, "holds"),
        # the i.i.d. inits differ a lot, but both fall: the paper states no bound on the spread
        ({"a": [1.0, 1.1, 0.9], "b": [0.2, 0.25, 0.15]}, "holds"),
        # one i.i.d. init rises with depth
        ({"a": [1.0, 1.1, 0.9], "b": [-0.3, -0.35, -0.25]}, "does not hold"),
        # one i.i.d. init: a fall of the size that counts (0.1 nats) is excluded
        ({"a": [1.0, 1.1, 0.9], "b": [0.01, -0.01, 0.02]}, "does not hold"),
        # one i.i.d. init: noise around 0 that still holds a fall of 0.1 nats
        ({"a": [1.0, 1.1, 0.9], "b": [0.3, -0.4, 0.1]}, "inconclusive"),
        # one seed only: no interval, no claim
        ({"a": [1.0], "b": [1.0]}, "not testable"),
    ],
)
def test_resilience_verdict_on_synthetic_summaries(diffs, status):
    from rankbias.experiments.depth_rank_init_sensitivity import resilience_verdict

    means = {k: [2.3, 2.3 - sum(v) / len(v)] for k, v in diffs.items()}
    v = resilience_verdict(diffs, means, [1, 16], ["a", "b"], min_fall=0.1)
    assert v["status"] == status, v["reason"]
    assert {"statement", "paper", "measured", "criterion", "per_init", "spread_by_depth"} <= set(v)
    assert "resilient to hyper-parameters" in v["statement"]
    assert set(v["per_init"]) == set(diffs)
    if "o" in diffs:  # orthogonal is its own row and decides nothing
        assert v["per_init"]["o"]["status"] == "does not hold" and "not deciding: o" in v["measured"]


def test_resilience_verdict_without_an_iid_init_is_not_testable():
    from rankbias.experiments.depth_rank_init_sensitivity import resilience_verdict

    v = resilience_verdict({"o": [0.5, 0.6, 0.55]}, {"o": [2.3, 1.7]}, [1, 16], [], min_fall=0.1)
    assert v["status"] == "not testable" and v["per_init"]["o"]["status"] == "holds"


def test_depth_rank_init_sensitivity_ci_config(tmp_path):
    over = {"depths": [1, 8], "seeds": [0, 1], "inits": ["normal", "orthogonal"], "init_scales": [1.0],
            "steps": 300, "log_every": 150, "lr_factors": [1.0]}
    s = rankbias.run_experiment("depth-rank-init-sensitivity", over, out_dir=tmp_path)
    by = {p["init"]: p for p in s["per_init"]}
    assert set(by) == {"normal x1", "orthogonal x1"}
    # an orthogonal product has all singular values equal: entropy rank log n at init, any depth
    for r in by["orthogonal x1"]["initial_entropy_rank"]:
        assert r["entropy_rank"] == pytest.approx(math.log(16), abs=1e-9)
    assert by["normal x1"]["initial_entropy_rank"][1]["entropy_rank"] < math.log(16) - 0.3
    for p in s["per_init"]:
        assert p["per_depth"][-1]["entropy_rank"] < p["per_depth"][0]["entropy_rank"]
    assert {"status", "statement", "paper", "measured", "spread_by_depth", "per_init"} <= set(s["verdict"])
    # orthogonal factors are reported in their own row and do not decide
    assert s["verdict"]["iid_inits"] == ["normal x1"] and "orthogonal x1" in s["verdict"]["per_init"]
    assert (tmp_path / "figures" / "entropy_rank_by_init.png").exists()
    assert "init" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


# ------------------------------------------------ stopping rule and learning-rate grid


def _curve(drop_steps=50, total=200, rate=0.02):
    """2 % lower per step for ``drop_steps`` steps (0.98^50 = 0.36: below half the start), then flat."""
    return [(1 - rate) ** min(t, drop_steps) for t in range(total)]


def test_plateau_rule_stops_at_the_first_flat_window_and_reports_the_cap():
    from rankbias.fit.deep_linear import StopRule, plateau_step

    losses = _curve()
    # l(t-10) - l(t) is 2 % of l(t-10) or more until the window lies in the flat part, t = 60
    assert plateau_step(losses, window=10, tol=1e-3) == 60
    # 10 steps of 2 % = 18.3 % < 20 %, but a plateau counts only below half the start: 0.98^35 < 0.5
    assert plateau_step(losses, window=10, tol=0.2) == 35
    assert plateau_step(_curve(drop_steps=10**6), window=10, tol=1e-3) is None  # never flat
    assert plateau_step(losses, window=10, tol=1e-9, target=0.7) == 18  # 0.98^18 < 0.7 < 0.98^17
    # a saddle: flat from the start, then the loss falls; the flat start is not a plateau
    saddle = [1.0] * 100 + [0.98 ** k for k in range(1, 51)] + [0.98 ** 50] * 50
    assert plateau_step(saddle, window=10, tol=1e-3) == 159  # flat from t = 149 (0.98^50), + 10
    assert plateau_step([1.0] * 200, window=10, tol=1e-3) is None  # never falls: the cap binds
    # the online rule on a batch: network 0 flattens at step 50, network 1 never does
    p = torch.zeros(2, 3)
    rule = StopRule(p, tol=1e-3, window=10)
    for t, (a, b) in enumerate(zip(losses, _curve(drop_steps=10**6))):
        rule.check(torch.tensor([a, b]), t)
    assert rule.stopped_at == [60, None] and rule.active.tolist() == [False, True]
    # through the fit: a cap shorter than the window binds, and is reported as such
    t = make_task(4, "low_rank", rank=1, n_train=8, n_test=8, noise=0.1, generator=_gen())
    res = fit_deep_linear([t], [0, 0], [1, 3], steps=7, plateau_tol=1e-3, plateau_window=50,
                          generator=_gen(1))
    assert res.steps_taken == [7, 7] and res.cap_bound == [True, True]
    free = fit_deep_linear([t], [0, 0], [1, 3], steps=7, generator=_gen(1))
    assert free.cap_bound == [False, False]  # no rule: nothing to bind


@pytest.mark.parametrize("optimizer, batch_size, lr", [("momentum", None, 0.08), ("adam", 4, 0.03)])
def test_a_frozen_member_equals_the_member_trained_alone_for_its_steps(optimizer, batch_size, lr):
    """Each network of a padded batch stops on its own; with momentum or Adam a zero
    gradient would still move it, so the freeze must hold its parameters exactly."""
    tasks = [make_task(6, "low_rank", rank=2, n_train=8, n_test=16, noise=0.2, generator=_gen(s))
             for s in range(2)]
    kw = dict(optimizer=optimizer, lr=lr, batch_size=batch_size)
    idx, depths = [0, 1, 0, 1], [1, 1, 4, 4]
    res = fit_deep_linear(tasks, idx, depths, steps=300, plateau_tol=5e-3, plateau_window=20,
                          generator=_gen(3), **kw)
    assert len(set(res.steps_taken)) == 4 and min(res.steps_taken) < 300  # each stopped on its own
    for m, k in enumerate(res.steps_taken):
        alone = fit_deep_linear(tasks, idx, depths, steps=k, generator=_gen(3), batched=False, **kw)
        assert torch.allclose(res.end_to_end[m], alone.end_to_end[m], rtol=1e-12, atol=1e-13), m
        assert res.cap_bound[m] == (k == 300)
    if not any(res.cap_bound):  # the batch ends once every network has stopped
        assert max(r["step"] for r in res.history) == max(res.steps_taken) + 1


def test_select_lr_picks_the_lowest_mean_train_loss_among_rates_that_never_diverged():
    from rankbias.experiments._depth import select_lr

    nan = float("nan")
    assert select_lr({0.01: [0.3, 0.5], 0.02: [0.2, 0.4], 0.04: [0.05, nan]}) == 0.02
    assert select_lr({0.01: [0.3, 0.1], 0.02: [0.2, 0.2]}) == 0.01  # equal means: the smaller rate
    assert select_lr({0.01: [nan, 0.1]}) is None


def test_the_sweep_keeps_per_depth_the_rate_of_lowest_train_loss(tmp_path):
    over = {"depths": [1, 8], "seeds": [0, 1], "targets": ["low_rank"], "steps": 400,
            "plateau_window": 50, "log_every": 100, "lr": 0.02, "lr_factors": [0.25, 1.0, 3.0], "top_k": 0}
    s = rankbias.run_experiment("depth-rank-trained", over, out_dir=tmp_path)
    sel = s["training"]["lr_selection"]
    assert [(e["label"], e["depth"]) for e in sel] == [("low_rank", 1), ("low_rank", 8)]
    for e, row in zip(sel, s["per_depth"]):
        assert e["grid"] == pytest.approx([0.005, 0.02, 0.06]) and "training loss" in e["criterion"]
        finite = {k: v for k, v in e["mean_train_loss"].items() if math.isfinite(v)}
        assert e["chosen"] == pytest.approx(float(min(finite, key=finite.get)))
        # the reported networks are those of the chosen rate (same loss as the grid entry)
        assert row["lr"] == e["chosen"]
        assert row["train_loss"] == pytest.approx(e["mean_train_loss"][f"{e['chosen']:g}"], rel=1e-12)
    nets = s["training"]["per_network"]
    assert {(n["depth"], n["seed"]) for n in nets} == {(1, 0), (1, 1), (8, 0), (8, 1)}
    assert all(n["steps_taken"] <= 400 and n["cap_bound"] == (n["steps_taken"] == 400) for n in nets)
    assert (tmp_path / "figures" / "rank_against_steps.png").exists()


def test_stopping_rule_refusals(tmp_path):
    t = make_task(4, "low_rank", rank=1, n_train=8, n_test=8, noise=0.1, generator=_gen())
    with pytest.raises(ValueError, match="needs a first-order optimizer .* lbfgs takes a fixed number"):
        fit_deep_linear([t], [0], [2], optimizer="lbfgs", steps=5, plateau_tol=1e-3)
    with pytest.raises(ValueError, match="plateau_tol must be > 0"):
        fit_deep_linear([t], [0], [2], steps=5, plateau_tol=0.0)
    for over, match in [({"plateau_tol": -1.0}, "plateau_tol: .*a float > 0 or null"),
                        ({"lr_factors": []}, "lr_factors: .*non-empty list of distinct floats > 0"),
                        ({"plateau_window": 0}, "plateau_window: .*an int >= 1")]:
        with pytest.raises(ConfigError, match=match):
            rankbias.run_experiment("depth-rank-trained", over, out_dir=tmp_path)


@pytest.mark.parametrize("name", ["depth-rank-trained", "depth-rank-optimizers"])
def test_a_verdict_on_one_seed_is_not_testable(name, tmp_path):
    """Both decide on means over seeds: one seed's ranks can fall with depth by chance."""
    over = {"seeds": [0]}
    if name == "depth-rank-optimizers":
        over["optimizers"] = ["sgd"]
    v = rankbias.run_experiment(name, over, out_dir=tmp_path / "r", preset="smoke")["verdict"]
    assert v["status"] == "not testable" and "untested_verdict" in v and "statement" in v
