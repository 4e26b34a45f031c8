"""Paper 1 (docs/paper1.md): patch data model, Huberised ReLU, two-layer CNN,
batched training (and its training-loss target), the noise-robustness experiments."""

import dataclasses
import math
import struct

import pytest
import torch

import rankbias
from rankbias.data.images import DatasetNotFoundError, extract_patches, noisy_canvas
from rankbias.data.patches import data_rank_measures, make_patch_data
from rankbias.experiments import _noise
from rankbias.experiments.noise_robustness import NoiseRobustnessConfig
from rankbias.experiments.noise_robustness_images import NoiseImagesConfig, build_data
from rankbias.fit.two_layer_cnn import fit_two_layer_cnn
from rankbias.framework.config import ConfigError
from rankbias.models.two_layer_cnn import HuberizedReLU, TwoLayerCNN, huberized_relu, logistic_loss

# ----------------------------------------------------------------- Huberised ReLU


def sigma_ref(z: float, q: float, kappa: float) -> float:
    if z <= 0:
        return 0.0
    if z <= kappa:
        return z**q / (q * kappa ** (q - 1))
    return z - (1 - 1 / q) * kappa


@pytest.mark.parametrize("q, kappa", [(3.0, 1.0), (2.0, 0.5), (4.0, 2.0), (2.5, 1.5)])
def test_huberized_relu_closed_form_and_derivative(q, kappa):
    z = torch.tensor([-2.0, -1e-3, 0.0, 0.3 * kappa, kappa, 1.7 * kappa, 5.0], dtype=torch.float64)
    got = huberized_relu(z, q, kappa)
    want = torch.tensor([sigma_ref(float(v), q, kappa) for v in z], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert torch.equal(HuberizedReLU(q, kappa)(z), got)
    # derivative: 0 below 0, (z/kappa)^(q-1) inside, 1 above kappa
    zz = z.clone().requires_grad_(True)
    huberized_relu(zz, q, kappa).sum().backward()
    want_d = torch.where(z <= 0, 0.0, torch.where(z <= kappa, (z / kappa) ** (q - 1), 1.0))
    torch.testing.assert_close(zz.grad, want_d)
    assert torch.autograd.gradcheck(
        lambda t: huberized_relu(t, q, kappa), torch.linspace(-1, 3, 17, dtype=torch.float64).requires_grad_()
    )


@pytest.mark.parametrize("q, kappa", [(3.0, 1.0), (2.0, 0.5), (1.5, 2.0)])
def test_huberized_relu_value_and_slope_continuous_at_0_and_kappa(q, kappa):
    eps = 1e-7
    for point in (0.0, kappa):
        z = torch.tensor([point - eps, point + eps], dtype=torch.float64, requires_grad=True)
        v = huberized_relu(z, q, kappa)
        (g,) = torch.autograd.grad(v.sum(), z)
        assert abs(float(v[1].detach() - v[0].detach())) < 10 * eps
        assert abs(float(g[1] - g[0])) < 1e-3  # C^1: the slope does not jump (an O(1) jump otherwise)
    assert math.isclose(float(huberized_relu(torch.tensor(kappa, dtype=torch.float64), q, kappa)), kappa / q)


def test_huberized_relu_q1_is_relu_and_bad_parameters():
    z = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(huberized_relu(z, 1.0, 0.7), torch.relu(z))
    with pytest.raises(ValueError, match="q must be >= 1"):
        HuberizedReLU(0.5)
    with pytest.raises(ValueError, match="kappa must be > 0"):
        huberized_relu(z, 3.0, 0.0)


# ----------------------------------------------------------------- data model


def test_patch_data_model_structure_and_clean_rank():
    K, d, P = 3, 20, 5
    D = make_patch_data(n_train=120, n_test=60, patches=P, dim=d, K=K, signal_norm=2.5,
                        sigmas=[0.0, 0.3, 1.0], seed=3)
    assert D.X.shape == (3, 120, P, d) and D.X_test.shape == (3, 60, P, d)
    # dictionary: 2K orthogonal vectors of the given norm
    torch.testing.assert_close(D.signals @ D.signals.T, 2.5**2 * torch.eye(2 * K), atol=1e-4, rtol=0)
    # clean images: exactly one non-zero patch, a dictionary row of the right class
    nz = D.X_clean.norm(dim=-1) > 0
    assert torch.equal(nz.sum(1), torch.ones(120, dtype=torch.long))
    assert torch.equal(D.X_clean[torch.arange(120), D.signal_patch], D.signals[D.signal_index])
    assert torch.equal(D.signal_index < K, D.y > 0)
    # sigma = 0 is the clean data; the noise never touches the signal patch
    assert torch.equal(D.X[0], D.X_clean)
    assert torch.equal(D.X[2][torch.arange(120), D.signal_patch], D.X_clean[torch.arange(120), D.signal_patch])
    # the clean data has rank exactly 2K (patch and image matrices), noise inflates it
    r = data_rank_measures(D.X)
    assert int(data_rank_measures(D.X_clean[None])["patch"]["numerical_rank"][0]) == 2 * K
    assert int(r["patch"]["numerical_rank"][0]) == 2 * K
    assert int(r["patch"]["numerical_rank"][2]) == d
    assert float(r["patch"]["stable_rank"][2]) > 2 * K
    # the test set draws from the same dictionary
    rows = D.X_test_clean.reshape(-1, d)
    rows = rows[rows.norm(dim=1) > 0]
    dist = (rows[:, None] - D.signals[None]).norm(dim=-1)  # exact, unlike cdist's mm trick
    assert dist.min(dim=1).values.max() == 0
    # a seed determines everything
    D2 = make_patch_data(n_train=120, n_test=60, patches=P, dim=d, K=K, signal_norm=2.5,
                         sigmas=[0.0, 0.3, 1.0], seed=3)
    assert torch.equal(D.X, D2.X) and torch.equal(D.X_test, D2.X_test)


def test_patch_data_orthogonal_noise_and_fixed_position():
    D = make_patch_data(n_train=50, n_test=10, patches=4, dim=12, K=2, sigmas=[1.0],
                        signal_position="fixed", orthogonal_noise=True, seed=0)
    assert torch.equal(D.signal_patch, torch.zeros(50, dtype=torch.long))
    noise = D.X[0] - D.X_clean  # (n, P, d)
    assert noise[:, 1:].abs().sum() > 0
    assert (noise @ D.signals.T).abs().max() < 1e-5  # orthogonal to the signal span
    with pytest.raises(ValueError, match="dim must be >= 2K"):
        make_patch_data(dim=3, K=2)
    with pytest.raises(ValueError, match="sigmas must be"):
        make_patch_data(sigmas=[-1.0])


# ----------------------------------------------------------------- network


@pytest.mark.parametrize("q, kappa", [(3.0, 1.0), (2.0, 0.5), (1.0, 1.0), (2.5, 1.5)])
def test_two_layer_cnn_matches_the_formula(q, kappa):
    torch.manual_seed(0)
    M, n, P, d, m = 2, 5, 3, 4, 3
    net = TwoLayerCNN(d, m, M, q=q, kappa=kappa, init_std=0.7, dtype=torch.float64)
    x = torch.randn(M, n, P, d, dtype=torch.float64)
    f = net(x)
    W = net.weight.detach()
    for i in range(M):
        for s in range(n):
            F = [sum(sigma_ref(float(W[i, j, r] @ x[i, s, p]), q, kappa) for r in range(m) for p in range(P)) / m
                 for j in range(2)]
            assert math.isclose(float(f[i, s].detach()), F[0] - F[1], rel_tol=1e-10, abs_tol=1e-12)
    # the fused activation + pooling backward equals autograd of the plain formula
    y = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(logistic_loss(net(x), y).sum(), net.weight)
    Wr = net.weight.detach().clone().requires_grad_(True)
    z = torch.einsum("inpd,ijrd->injrp", x, Wr)
    h = torch.where(z <= 0, 0.0, torch.where(z <= kappa, z.clamp_min(0) ** q / (q * kappa ** (q - 1)),
                                             z - (1 - 1 / q) * kappa))
    F = h.sum((-1, -2)) / m
    logistic_loss(F[..., 0] - F[..., 1], y).sum().backward()
    torch.testing.assert_close(g, Wr.grad)
    with torch.no_grad():  # the forward-only path gives the same scores
        torch.testing.assert_close(net(x), f.detach())


def _data(sigmas, seed=0, n=60):
    D = make_patch_data(n_train=n, n_test=80, patches=4, dim=30, K=2, signal_norm=5.0, sigmas=sigmas, seed=seed)
    S = len(sigmas)
    return D.X, D.y.expand(S, -1), D.X_test, D.y_test.expand(S, -1)


def test_batched_training_equals_one_at_a_time_and_is_deterministic():
    X, y, Xt, yt = _data([0.0, 0.3, 0.8])
    kw = dict(filters=4, steps=40, lr=1.0, init_std=0.05, log_every=10)
    seeds = [5, 6, 7]
    fit = fit_two_layer_cnn(X, y, Xt, yt, init_seeds=seeds, **kw)
    again = fit_two_layer_cnn(X, y, Xt, yt, init_seeds=seeds, **kw)
    assert torch.equal(fit.model.weight, again.model.weight) and fit.history == again.history
    for i in range(3):
        one = fit_two_layer_cnn(X[i:i + 1], y[i:i + 1], Xt[i:i + 1], yt[i:i + 1], init_seeds=[seeds[i]], **kw)
        torch.testing.assert_close(fit.model.weight[i], one.model.weight[0], rtol=1e-4, atol=1e-6)
        for key in ("loss", "test_acc", "filter_stable_rank", "pos_stable_rank"):
            torch.testing.assert_close(fit.final[key][i], one.final[key][0], rtol=1e-4, atol=1e-6)
    assert fit.status == ["ok"] * 3
    # rank measures recorded at every log step, and training learned the task
    assert sorted({r["step"] for r in fit.history}) == [0, 10, 20, 30, 40]
    assert float(fit.final["train_acc"].mean()) > 0.75


def test_sgd_option_runs_and_is_deterministic():
    X, y, Xt, yt = _data([0.2])
    kw = dict(filters=3, steps=30, lr=1.0, init_std=0.05, log_every=10, optimizer="sgd", batch_size=16)
    a = fit_two_layer_cnn(X, y, Xt, yt, **kw)
    b = fit_two_layer_cnn(X, y, Xt, yt, **kw)
    assert torch.equal(a.model.weight, b.model.weight)
    full = fit_two_layer_cnn(X, y, Xt, yt, **{**kw, "optimizer": "gd"})
    assert not torch.equal(a.model.weight, full.model.weight)
    with pytest.raises(ValueError, match="sgd needs 1 <= batch_size"):
        fit_two_layer_cnn(X, y, optimizer="sgd", batch_size=0)


def test_divergence_marks_one_model_and_spares_the_others():
    X, y, Xt, yt = _data([0.3, 1e20])
    kw = dict(filters=3, steps=30, lr=1.0, init_std=0.05, log_every=10, init_seeds=[0, 0])
    fit = fit_two_layer_cnn(X, y, Xt, yt, **kw)
    assert fit.status == ["ok", "diverged"]
    assert fit.diverged_at[1] is not None and fit.diverged_at[0] is None
    assert math.isnan(float(fit.final["test_acc"][1])) and math.isnan(float(fit.final["filter_stable_rank"][1]))
    one = fit_two_layer_cnn(X[:1], y[:1], Xt[:1], yt[:1], **{**kw, "init_seeds": [0]})
    torch.testing.assert_close(fit.model.weight[0], one.model.weight[0], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------- experiments

# 16 patches put the data's rank growth at sigma_p = 0.5 past 10x (10.4x) while the test
# accuracy stays within 1 pp of the clean one (0.998 vs 1.0); three seeds, because with two
# the non-inferiority band's t-interval (1 dof) cannot show 1 pp on 500 test images
CI_CONFIG = {"sigmas": [0.0, 0.5], "seeds": [0, 1, 2], "patches": 16, "n_test": 500, "steps": 300,
             "log_every": 50}


def test_noise_robustness_relative_verdict_on_ci_config(tmp_path):
    s = rankbias.run_experiment("noise-robustness", CI_CONFIG, out_dir=tmp_path)
    keys = {"sigma", "filter_stable_rank_mean", "filter_stable_rank_std", "filter_effective_rank_mean",
            "data_patch_stable_rank", "data_image_stable_rank", "clean_rank", "train_acc_mean", "test_acc_mean"}
    assert [r["sigma"] for r in s["per_sigma"]] == [0.0, 0.5]
    assert all(keys <= set(r) for r in s["per_sigma"])
    v = s["verdict"]
    assert v["status"] == "holds" and v["holds"] is True, v
    assert v["paper"] and "log ratio" in v["measured"]
    # the numbers behind it, re-derived from the table and the per-seed ratios
    clean, noisy = s["per_sigma"]
    assert noisy["test_acc_mean"] >= clean["test_acc_mean"] - 0.01
    assert v["sigma"] == 0.5 and v["max_data_growth"] >= 10
    assert v["n_learned"] == 3 and v["accuracy_band"]["0.5"]["lower"] > -0.01 and v["ratio_hi"] <= 0.25
    # the filters against the clean rank 2K, in the table and in the verdict
    assert noisy["filter_stable_rank_over_clean_rank"] == pytest.approx(noisy["filter_stable_rank_mean"] / 4)
    assert v["filter_stable_rank_over_clean_rank"] == pytest.approx(noisy["filter_stable_rank_over_clean_rank"])
    assert noisy["data_patch_stable_rank"] / clean["data_patch_stable_rank"] > 9.5
    assert v["ratio_mean"] == pytest.approx(sum(v["ratio_per_seed"]) / 3) and v["ratio_mean"] <= 0.25
    growth = noisy["filter_stable_rank_mean"] / clean["filter_stable_rank_mean"]
    assert v["model_growth"] == pytest.approx(growth, rel=0.1)
    # the former absolute test decided nothing, so neither the summary nor the report carries it
    assert "absolute_test" not in s
    assert "absolute test" not in (tmp_path / "report.md").read_text()
    assert s["clean_patch_numerical_rank"] == 4
    for f in ("stable_rank_vs_sigma", "filter_stable_rank_over_steps", "accuracy_vs_sigma"):
        assert (tmp_path / "figures" / f"{f}.png").stat().st_size > 10_000
    assert "HOLDS" in (tmp_path / "report.md").read_text()


def test_noise_robustness_diverged_config_does_not_lose_the_sweep(tmp_path):
    s = rankbias.run_experiment("noise-robustness", {"sigmas": [0.0, 1e20], "seeds": [0]}, out_dir=tmp_path,
                                preset="smoke")
    assert [r["status"] for r in s["status"]] == ["ok", "diverged"]
    assert s["per_sigma"][0]["n_ok"] == 1 and s["per_sigma"][1]["n_diverged"] == 1
    assert s["per_sigma"][1]["test_acc_mean"] is None  # NaN -> null in JSON


def test_noise_robustness_bad_config():
    with pytest.raises(ConfigError, match="sigmas: .*finite floats >= 0"):
        rankbias.run_experiment("noise-robustness", {"sigmas": [-0.1]})
    with pytest.raises(ConfigError, match="sigmas: .*includes 0"):
        rankbias.run_experiment("noise-robustness", {"sigmas": [0.5, 1.0]})
    with pytest.raises(ConfigError, match="dim: .*>= 2K"):
        rankbias.run_experiment("noise-robustness", {"dim": 3, "K": 2})
    with pytest.raises(ConfigError, match="target_train_loss: .*> 0 or null"):
        NoiseRobustnessConfig(target_train_loss=0.0)
    with pytest.raises(ConfigError, match="canvas: .*null with noise_model='background_pixels'"):
        NoiseImagesConfig(noise_model="background_pixels", canvas=20)
    with pytest.raises(ConfigError, match="dataset: .*no plain background"):
        NoiseImagesConfig(dataset="cifar10", noise_model="background_pixels")


def test_both_experiments_share_one_config_base():
    shared = {f.name for f in dataclasses.fields(_noise.NoiseSweepConfig)}
    assert {"sigmas", "seeds", "filters", "steps", "target_train_loss", "lr", "init_std", "q", "kappa",
            "optimizer", "batch_size", "log_every", "device"} <= shared
    for cls in (NoiseRobustnessConfig, NoiseImagesConfig):
        assert issubclass(cls, _noise.NoiseSweepConfig)
        assert shared <= {f.name for f in dataclasses.fields(cls)}
        assert "Seeds (a list of distinct ints)" in cls.accepted()  # the base's field docs are inherited
    with pytest.raises(ConfigError, match="seeds: .*distinct ints"):
        NoiseImagesConfig(seeds=[1, 1])


def test_noisy_canvas_and_patches():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 2, 5, 5) + 0.1
    noisy, clean = noisy_canvas(imgs, 11, [0.0, 0.5, 2.0], position="random", generator=g)
    assert noisy.shape == (3, 4, 2, 11, 11) and clean.shape == (4, 2, 11, 11)
    assert torch.equal(noisy[0], clean)
    inside = clean.abs().sum(1) > 0  # where each image sits
    assert torch.equal(inside.sum((1, 2)), torch.full((4,), 25))
    torch.testing.assert_close(clean.sum((1, 2, 3)), imgs.sum((1, 2, 3)))
    # noise only on the background, scaled by sigma
    assert torch.equal(noisy[2][inside[:, None].expand_as(clean)], clean[inside[:, None].expand_as(clean)])
    torch.testing.assert_close(noisy[2] - clean, 4 * (noisy[1] - clean))
    # patches are what a stride-k conv sees
    p = extract_patches(clean, 3, 2)
    w = torch.randn(6, 2, 3, 3)
    out = torch.nn.functional.conv2d(clean, w, stride=2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(p @ w.reshape(6, -1).T, out, rtol=1e-5, atol=1e-5)
    assert extract_patches(clean, 3).shape == (4, 9, 18)


def test_noise_robustness_images_auto_falls_back_to_digits_not_testable(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKBIAS_DATA", str(tmp_path / "no-data"))
    s = rankbias.run_experiment("noise-robustness-images", {
        "sigmas": [0.0, 0.5], "seeds": [0, 1], "steps": 60, "log_every": 30}, out_dir=tmp_path / "run")
    r0, r1 = s["per_sigma"]
    assert s["data"]["dataset"] == "digits" and "MNIST not under" in s["data"]["dataset_reason"]
    assert r0["data_patch_stable_rank"] == pytest.approx(r0["data_patch_stable_rank_clean"])
    assert r1["data_patch_stable_rank"] > 2 * r1["data_patch_stable_rank_clean"]
    assert s["data"]["patch_dim"] == 16 and s["data"]["patches_per_image"] == 16
    assert r0["test_acc_mean"] > 0.9
    # 16-dimensional patches cannot grow the data's rank 10x: the claim is not testable here
    growth = r1["data_patch_stable_rank"] / r0["data_patch_stable_rank"]
    assert growth < 10 and s["verdict"]["status"] == "not testable" and s["verdict"]["holds"] is None
    assert s["verdict"]["measured"].startswith("not testable on this data")
    assert (tmp_path / "run" / "figures" / "stable_rank_vs_sigma.png").exists()


def _write_idx(path, array_u8, magic_dims):
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, magic_dims))
        f.write(struct.pack(f">{array_u8.dim()}I", *array_u8.shape))
        f.write(array_u8.numpy().tobytes())


def test_auto_dataset_uses_mnist_when_it_is_at_the_data_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("t10k", 20)):
        imgs = torch.zeros(n, 28, 28, dtype=torch.uint8)
        imgs[:, 8:20, 8:20] = torch.randint(1, 256, (n, 12, 12), generator=g, dtype=torch.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs, 3)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (torch.arange(n) % 3).to(torch.uint8), 1)
    cfg = NoiseImagesConfig(data_root=str(tmp_path), sigmas=[0.0, 1.0], seeds=[0])
    X, y, Xt, yt, ranks, info = build_data(cfg)
    assert info["dataset"] == "mnist" and "MNIST found under" in info["dataset_reason"]
    # null sizes: every image of classes 0 and 1; 14 x 14 patches of a 56 x 56 canvas
    assert info["n_train"] == 27 and info["n_test"] == 14 and info["canvas"] == 56
    assert X.shape == (2, 27, 16, 196) and info["patch_size"] == 14
    assert sorted(y[0].tolist()) == [-1.0] * 13 + [1.0] * 14  # stratified: both classes


def test_background_pixel_noise_model_on_digits():
    cfg = NoiseImagesConfig(dataset="digits", noise_model="background_pixels", sigmas=[0.0, 0.5],
                            seeds=[3], n_train=50, n_test=20)
    X, y, Xt, yt, ranks, info = build_data(cfg)
    assert info["canvas"] is None and info["patch_size"] == 4 and info["noise_model"] == "background_pixels"
    assert X.shape == (2, 50, 4, 16)  # no canvas: the 8 x 8 image's four 4 x 4 patches
    clean, noisy = X[0], X[1]
    # noise exactly where the clean image is 0; the digit's pixels are untouched
    assert torch.equal(noisy[clean > 0], clean[clean > 0])
    assert bool((noisy[clean == 0] != 0).all())
    assert ranks["data_patch_stable_rank"][0, 1] > ranks["data_patch_stable_rank"][0, 0]


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=rf"(?s)'mnist' not found: looked for .* under data root {tmp_path}.*download"):
        rankbias.run_experiment("noise-robustness-images", {"dataset": "mnist", "data_root": str(tmp_path)},
                                out_dir=tmp_path / "run")


@torch.no_grad()
def _loss(model, X, y):
    return logistic_loss(model(X), y)


def test_target_train_loss_stops_each_model_where_plain_training_would_pass_it():
    X, y, Xt, yt = _data([0.0, 0.0])
    # model 1 sees the same clean images with random labels: images holding the same signal
    # get both labels, so its loss cannot fall to the target
    y = y.clone()
    y[1] = torch.where(torch.rand(y.shape[1], generator=torch.Generator().manual_seed(1)) < 0.5, 1.0, -1.0)
    kw = dict(filters=3, lr=1.0, init_std=0.05, log_every=10, init_seeds=[0, 0])
    target = 0.2
    fit = fit_two_layer_cnn(X, y, Xt, yt, steps=120, target_train_loss=target, **kw)
    free = fit_two_layer_cnn(X, y, Xt, yt, steps=120, **kw)
    at = fit.reached_target_at
    assert at[0] is not None and at[1] is None, at  # the true labels get there, the random ones not
    # frozen at that step: the same weights as plain GD run for exactly `at` steps ...
    stopped = fit_two_layer_cnn(X[:1], y[:1], Xt[:1], yt[:1], steps=at[0], **{**kw, "init_seeds": [0]})
    torch.testing.assert_close(fit.model.weight[0], stopped.model.weight[0], rtol=1e-5, atol=1e-7)
    # ... the first step count at which the training loss is <= the target
    assert float(_loss(stopped.model, X[:1], y[:1])[0]) <= target
    before = fit_two_layer_cnn(X[:1], y[:1], steps=at[0] - 1, **{**kw, "init_seeds": [0]})
    assert float(_loss(before.model, X[:1], y[:1])[0]) > target
    # the model that never reached it trained as without a target
    torch.testing.assert_close(fit.model.weight[1], free.model.weight[1], rtol=1e-5, atol=1e-7)
    # with SGD the rule reads the full-batch loss
    sgd = fit_two_layer_cnn(X, y, steps=120, target_train_loss=target, optimizer="sgd", batch_size=20,
                              **kw)
    assert sgd.reached_target_at[0] is not None
    assert float(_loss(sgd.model, X, y)[0]) <= target
    with pytest.raises(ValueError, match="target_train_loss must be > 0"):
        fit_two_layer_cnn(X, y, steps=5, target_train_loss=-1.0)


def test_target_train_loss_in_the_experiment_summary(tmp_path):
    s = rankbias.run_experiment("noise-robustness", {
        "sigmas": [0.0, 0.5], "seeds": [0], "n_train": 60, "n_test": 60, "dim": 30, "steps": 200,
        "log_every": 50, "target_train_loss": 0.3}, out_dir=tmp_path)
    reached = [r["reached_target_at"] for r in s["status"]]
    assert all(r is not None and 0 < r < 200 for r in reached), reached
    assert [r["n_reached_target"] for r in s["per_sigma"]] == [1, 1]
    assert all(r["train_acc_mean"] == 1.0 for r in s["per_sigma"])


def test_cache_blocking_does_not_change_results(monkeypatch):
    import rankbias.models.two_layer_cnn as mod

    X, y, Xt, yt = _data([0.0, 0.5, 1.0])
    kw = dict(filters=3, steps=15, lr=1.0, init_std=0.05, log_every=5)
    whole = fit_two_layer_cnn(X, y, Xt, yt, **kw)
    monkeypatch.setattr(mod, "_BLOCK_BYTES", 1)  # one model per block
    blocked = fit_two_layer_cnn(X, y, Xt, yt, **kw)
    torch.testing.assert_close(blocked.model.weight, whole.model.weight, rtol=1e-5, atol=1e-7)


def test_trainer_lives_in_fit_only():
    import rankbias.fit.two_layer_cnn as fit
    import rankbias.models.two_layer_cnn as models

    assert rankbias.papers.fit_two_layer_cnn is fit.fit_two_layer_cnn
    # models/ holds modules only: no back-import of the trainer that imports it
    assert not hasattr(models, "fit_two_layer_cnn")
    assert not hasattr(TwoLayerCNN, "flops_per_step")
