"""noise-robustness-deep: the smoke preset's run gives every row and figure, every network goes
through the one trainer, the ratio and the noise draws obey their definitions, and the
intrinsic-dimension estimators recover known dimensions."""

import csv

import numpy as np
import pytest
import torch

import rankbias.intrinsic as idmod
import rankbias.training
from rankbias.analysis import weight_layers
from rankbias.errors import UnsupportedError
from rankbias.experiments import noise_robustness_deep as nd
from rankbias.experiments import noise_robustness_deep_summary as nds
from rankbias.experiments.registry import build_config
from rankbias.framework.config import ConfigError
from rankbias.models import build_model
from rankbias.runner import run_experiment
from rankbias.verdicts import STATUSES

SMOKE = nd.SMOKE


def _spy(seen):
    real = rankbias.training.train

    def spy(loss_fn, params, **kw):
        seen.append(type(params).__name__)
        return real(loss_fn, params, **kw)

    return spy


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "ci"
    seen: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rankbias.training, "train", _spy(seen))
        summary = run_experiment("noise-robustness-deep", preset="smoke", out_dir=out)
    return summary, out, seen


def test_ci_run_gives_every_row(ci_run):
    summary, _, _ = ci_run
    cfg = build_config("noise-robustness-deep", preset="smoke")
    S = len(cfg.sigmas)
    assert len(summary["per_sigma"]) == len(cfg.models) * len(cfg.noise_models) * S
    assert all(0 <= r["test_acc_mean"] <= 1 for r in summary["per_sigma"])
    assert len(summary["per_data"]) == len(cfg.noise_models) * S
    side = {"canvas": 16, "background_pixels": 8}
    for t in summary["layer_tables"]:
        fresh = build_model(t["model"], 1, 10, **nd.model_kwargs(cfg, t["model"], side[t["noise"]]))
        # every weight layer of the model, in module order, then the penultimate embeddings
        assert t["layers"] == [n for n, _ in weight_layers(fresh)] + [nds.PENULTIMATE]
        for key, m in t["measures"].items():
            vals = np.asarray(m["mean"], float)
            assert vals.shape == (len(t["layers"]), S)
            if key.startswith("weight"):
                assert np.isfinite(vals[:-1]).all() and np.isnan(vals[-1]).all()
            else:
                assert np.isfinite(vals).all() and (vals >= 1 - 1e-9).all()
            ratio = np.asarray(m["log_ratio_mean"], float)
            assert np.isnan(ratio[:, cfg.sigmas.index(0.0)]).all()
    pairs = {(t["model"], t["noise"]) for t in summary["layer_tables"]}
    assert pairs == {(m, n) for m in cfg.models for n in cfg.noise_models}
    for v in summary["layer_verdicts"]:
        assert v["status"] in STATUSES
        assert {"paper", "measured", "criterion", "reason"} <= set(v["verdict"])
    assert summary["verdict"]["status"] in STATUSES
    assert {"paper", "measured"} <= set(summary["verdict"])
    if idmod.available():
        assert {"id_twonn", "id_mle", "clean_id_twonn"} <= set(summary["per_data"][0])
        assert "penultimate_id_noisy_twonn" in summary["per_sigma"][0]


def test_ci_run_gives_every_figure_and_the_report(ci_run):
    summary, out, _ = ci_run
    cfg = build_config("noise-robustness-deep", preset="smoke")
    want = {f"{kind}_{m}_{n}" for kind in ("heatmap", "ranks_vs_sigma") for m in cfg.models
            for n in cfg.noise_models}
    want |= {f"accuracy_vs_sigma_{n}" for n in cfg.noise_models} | {"data_rank_vs_sigma"}
    assert set(summary["figures"]) == want
    for f in want:
        assert (out / "figures" / f"{f}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert all(f"figures/{f}.png" in report for f in want)
    assert "vit, canvas noise: verdict per layer" in report
    with open(out / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    # RankTracker's per-layer weight ranks over training, for the ViT and the ResNet
    assert {"blocks.0.attn.qkv/stable_rank", "stem.0/effective_rank", "noise", "sigma"} <= set(header)


def test_every_network_is_trained_through_the_one_trainer(ci_run):
    summary, _, seen = ci_run
    cfg = build_config("noise-robustness-deep", preset="smoke")
    assert len(seen) == len(cfg.models) * len(cfg.noise_models) * len(cfg.sigmas) * len(cfg.seeds)
    assert {"ViT", "CifarResNet", "PlainCNN", "MLP"} == set(seen)


def test_vit_and_resnet_train_through_the_one_trainer(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(rankbias.training, "train", _spy(seen))
    cfg = nd.DeepNoiseConfig.from_dict({**SMOKE, "steps": 4, "log_every": 2, "lr": 1e-2})
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 3
    for name in ("vit", "resnet8"):
        model, res = nd.train_network(cfg, name, x, y, 3, seed=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the init train_network starts from
            before = build_model(name, 1, 3, **nd.model_kwargs(cfg, name, 8))
        changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                             before.state_dict().values()))
        assert changed  # the trainer did update the model's weights
        assert [h["step"] for h in res.history] == [0, 2, 4]
        assert all(f"{n}/stable_rank" in res.history[-1] for n, _ in weight_layers(model))
    assert seen == ["ViT", "CifarResNet"]


def test_a_seed_determines_the_network():
    cfg = nd.DeepNoiseConfig.from_dict({**SMOKE, "steps": 5})
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 2
    a, _ = nd.train_network(cfg, "mlp", x, y, 2, seed=3)
    b, _ = nd.train_network(cfg, "mlp", x, y, 2, seed=3)
    c, _ = nd.train_network(cfg, "mlp", x, y, 2, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_log_ratio_is_the_log_log_slope():
    data = np.array([[2.0, 8.0, 32.0], [3.0, 30.0, 300.0]])
    model = np.sqrt(data) * np.array([[1.0], [5.0]])  # grows as data^(1/2), any scale
    r = nds.log_ratio(model, data, clean=0)
    assert np.isnan(r[:, 0]).all()
    np.testing.assert_allclose(r[:, 1:], 0.5, rtol=1e-12)
    np.testing.assert_allclose(nds.log_ratio(np.ones_like(data), data, 0)[:, 1:], 0.0, atol=0)


@pytest.mark.parametrize("noise", ["canvas", "background_pixels"])
def test_every_sigma_scales_the_same_noise_draw(noise):
    cfg = nd.DeepNoiseConfig.from_dict(SMOKE)
    x = torch.rand(6, 1, 8, 8) * (torch.rand(6, 1, 8, 8) > 0.5)  # half the pixels background
    n1, clean = nd.add_noise(cfg, noise, x, 0.5, seed=1)
    n2, clean2 = nd.add_noise(cfg, noise, x, 1.5, seed=1)
    torch.testing.assert_close(clean, clean2)
    torch.testing.assert_close(n2 - clean, 3 * (n1 - clean))
    obj = clean != 0
    torch.testing.assert_close(n1[obj], clean[obj])  # the object's pixels carry no noise
    assert not torch.equal(nd.add_noise(cfg, noise, x, 0.5, seed=2)[0], n1)
    if noise == "canvas":
        assert n1.shape == (6, 1, 16, 16)


@pytest.mark.parametrize("override, field", [
    ({"sigmas": [0.5, 1.0]}, "sigmas"),
    ({"dataset": "cifar10", "noise_models": ["background_pixels"]}, "noise_models"),
    ({"models": ["vgg"]}, "models"),
    ({"vit_dim": 30, "vit_heads": 4}, "vit_dim"),
    ({"classes": [3]}, "classes"),
])
def test_bad_configs_are_refused(override, field):
    with pytest.raises(ConfigError, match=field):
        nd.DeepNoiseConfig.from_dict({**SMOKE, **override})


def test_overall_verdict_counts_the_testable_layers():
    def v(status, measure="weight_stable_rank"):
        return {"measure": measure, "status": status}

    assert nds.overall_verdict([v("holds"), v("not testable")])["status"] == "holds"
    bad = nds.overall_verdict([v("holds"), v("does not hold"), v("holds", "emb_effective_rank_noisy")])
    assert bad["status"] == "does not hold" and bad["weights"]["holds"] == 1
    assert bad["embeddings_noisy"]["holds"] == 1
    assert nds.overall_verdict([v("not testable")])["status"] == "not testable"
    # an inconclusive layer keeps "holds" from being said, but refutes nothing
    assert nds.overall_verdict([v("holds"), v("inconclusive")])["status"] == "inconclusive"
    assert nds.overall_verdict([v("inconclusive"), v("does not hold")])["status"] == "does not hold"


def test_without_scikit_dimension_the_id_columns_are_skipped_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(idmod, "available", lambda: False)
    s = run_experiment("noise-robustness-deep", {"models": ["mlp"], "noise_models": ["background_pixels"],
                                                 "steps": 2}, preset="smoke", out_dir=tmp_path / "r")
    assert len(s["per_sigma"]) == 2 and s["layer_tables"][0]["noise"] == "background_pixels"
    assert sorted(s["figures"]) == ["accuracy_vs_sigma_background_pixels", "data_rank_vs_sigma",
                                    "heatmap_mlp_background_pixels", "ranks_vs_sigma_mlp_background_pixels"]
    assert any("scikit-dimension" in n for n in s["notes"])
    assert not any(k.startswith("id_") for k in s["per_data"][0])
    assert "scikit-dimension" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(UnsupportedError, match="pip install"):
        idmod.intrinsic_dimension(np.random.default_rng(0).normal(size=(30, 3)))


# ------------------------------------------------------------ intrinsic dimension


def _subspace(n, d, D, rng):
    Q, _ = np.linalg.qr(rng.standard_normal((D, d)))
    return rng.standard_normal((n, d)) @ Q.T


def _sphere(n, d, D, rng):
    s = rng.standard_normal((n, d + 1))
    s /= np.linalg.norm(s, axis=1, keepdims=True)  # the unit d-sphere in R^(d+1)
    Q, _ = np.linalg.qr(rng.standard_normal((D, d + 1)))
    return s @ Q.T


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("shape", [_subspace, _sphere])
def test_intrinsic_dimension_recovers_known_manifolds(shape, d):
    pytest.importorskip("skdim")
    X = shape(1500, d, 20, np.random.default_rng(d))
    est = idmod.intrinsic_dimension(X, max_samples=None)
    for name in idmod.ESTIMATORS:
        assert abs(est[name] - d) <= 0.1 * d, (name, est[name])
    # a rank sees the span (d + 1 for the sphere), the dimension sees the manifold
    assert np.linalg.matrix_rank(X) == (d if shape is _subspace else d + 1)


def test_intrinsic_dimension_validates_its_input():
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="accepted"):
        idmod.intrinsic_dimension(X, estimators=["pca"])
    with pytest.raises(ValueError, match=r"matrix \(n, D\)"):
        idmod.intrinsic_dimension(X[0])
    with pytest.raises(ValueError, match="NaN"):
        idmod.intrinsic_dimension(np.full((40, 3), np.nan))
    with pytest.raises(ValueError, match="distinct points"):
        idmod.intrinsic_dimension(np.ones((40, 3)))
