"""overparam-cifar's CPU protocol (issue 18, item 3): the learning rate chosen per depth on a
held-out split, the stopping rule's fit check, weight decay on the collapsed weight, and the
verdict's fields, on a smoke-sized run of the same path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankbias.fit.fast_classify import DeviceImages, FastTrainSettings, train_group
from rankbias.framework.config import ConfigError
from rankbias.overparam import overparameterize

WD = 0.05


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)
    return DeviceImages(x, torch.arange(n) % 4, "cpu")


def _model(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2),
                      nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 4))
    # the Linear stays plain: it keeps SGD's own decay in both placements
    return overparameterize(m, depth=3, layers="conv", generator=torch.Generator().manual_seed(seed)).double()


def _explicit_collapsed(layer) -> torch.Tensor:
    """k x k factor then 1x1 factors: W[o, i] = (F_L ... F_2)[o, h] F_1[h, i], by hand."""
    ws = [f.weight for f in layer.factors]
    chain = ws[-1][:, :, 0, 0]
    for w in reversed(ws[1:-1]):
        chain = chain @ w[:, :, 0, 0]
    return torch.einsum("oh,hikl->oikl", chain, ws[0])


def _expected_step(model, data, lr):
    """One full-batch SGD step (no momentum) on CE + WD/2 * sum ||W_collapsed||^2, with the
    plain Linear's weight decayed by SGD and nothing else decayed: autograd of the explicit loss."""
    m = copy.deepcopy(model)
    logits = m(data.normalise(data.images, torch.float64))
    expanded = [mod for mod in m.modules() if hasattr(mod, "factors")]
    penalty = sum(_explicit_collapsed(mod).square().sum() for mod in expanded)
    loss = F.cross_entropy(logits, data.labels) + 0.5 * WD * penalty
    grads = torch.autograd.grad(loss, list(m.parameters()))
    out = {}
    for (name, p), g in zip(m.named_parameters(), grads):
        decay = WD * p if name.endswith("5.weight") else 0.0  # the plain Linear
        out[name] = (p - lr * (g + decay)).detach()
    return out


@pytest.mark.parametrize("batched", [True, False])
def test_weight_decay_on_collapsed_is_the_gradient_of_the_collapsed_penalty(batched):
    data = _data()
    s = FastTrainSettings(epochs=1, batch_size=len(data), lr=0.3, momentum=0.0, weight_decay=WD,
                          schedule="constant", warmup_epochs=0.0, crop_padding=0, hflip=False,
                          weight_decay_on="collapsed")
    seeds = [1, 2]
    start = [_model(sd) for sd in seeds]
    res = train_group([copy.deepcopy(m) for m in start], seeds, data, data, s, batch_seeds=batched,
                      progress=False)
    for m0, m1 in zip(start, res.models):
        want = _expected_step(m0, data, s.lr)
        got = dict(m1.named_parameters())
        for name, w in want.items():
            # agreement to ~1e-9 (float64 through two code paths); the factors placement is ~1e-2 off
            assert torch.allclose(got[name], w, rtol=1e-7, atol=1e-8), name
    # the factors placement is a different step (SGD decays each factor): the test can tell them apart
    other = train_group([copy.deepcopy(start[0])], seeds[:1], data, data,
                        FastTrainSettings(**{**s.__dict__, "weight_decay_on": "factors"}),
                        batch_seeds=batched, progress=False).models[0]
    name = "0.factors.0.weight"
    assert not torch.allclose(dict(other.named_parameters())[name], _expected_step(start[0], data, s.lr)[name],
                              rtol=1e-4, atol=1e-4)


def test_holdout_split_is_a_stratified_partition():
    from rankbias.experiments.overparam_cifar import OverparamCifarConfig, holdout_split

    train = _data(40)
    fit, held = holdout_split(OverparamCifarConfig(lr_holdout=0.25), train)
    assert len(held) == 10 and len(fit) == 30
    rows = lambda d: {tuple(x.flatten().tolist()) for x in d.images}  # noqa: E731
    assert rows(fit) | rows(held) == rows(train) and not rows(fit) & rows(held)
    counts = torch.bincount(held.labels, minlength=4)
    assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(fit.mean, train.mean) and torch.equal(held.std, train.std)


def _records(train_accs: dict[str, list[float]]) -> dict:
    return {label: {"status": "ok", "per_seed": [{"seed": i, "train_acc": a} for i, a in enumerate(accs)]}
            for label, accs in train_accs.items()}


def test_fit_check_makes_an_unfitted_baseline_not_testable():
    from rankbias.experiments.overparam_cifar import OverparamCifarConfig
    from rankbias.experiments.overparam_cifar_summary import require_fit

    cfg = OverparamCifarConfig(fit_threshold=0.99)
    v = {"status": "holds", "holds": True, "criterion": "c", "reason": "r"}
    ok = require_fit(cfg, _records({"depth1": [0.995, 1.0], "depth4": [0.99, 0.97]}), dict(v))
    assert ok["status"] == "holds" and "depth4" in ok["fit_check"] and "1/2" in ok["fit_check"]
    bad = require_fit(cfg, _records({"depth1": [0.995, 0.985], "depth4": [1.0, 1.0]}), dict(v))
    assert bad["status"] == "not testable" and bad["holds"] is None
    assert "seed 1: 98.50%" in bad["reason"] and bad["untested_verdict"]["status"] == "holds"
    assert require_fit(OverparamCifarConfig(), _records({"depth1": [0.1, 0.1]}), dict(v)) == v


def test_config_refuses_bad_protocol_values():
    from rankbias.experiments.overparam_cifar import OverparamCifarConfig

    for bad in ({"lr_grid": [0.1, -1.0]}, {"lr_holdout": 1.0}, {"fit_threshold": 0.0},
                {"downsample": 0}, {"lr_grid_seeds": []}, {"curve_test_limit": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            OverparamCifarConfig(**bad)
    with pytest.raises(ConfigError, match=r"^train\.weight_decay_on: got 'both'"):
        OverparamCifarConfig(train={"weight_decay_on": "both"})


def test_cpu_protocol_smoke_end_to_end(tmp_path):
    """The cpu preset's path, shrunk: lr grid per depth on a held-out split, the wd ablation
    arm paired with the baseline's seeds, the fit check and the verdict's fields."""
    from rankbias.experiments.registry import build_config
    from rankbias.runner import run_experiment

    over = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "curve_test_limit": 30,
            "model": "cnn", "model_width": 4, "train.epochs": 2, "train.batch_size": 32, "num_threads": 1,
            "batch_seeds": "yes", "train.crop_padding": 0, "train.hflip": False, "train_eval_limit": None,
            "depths": [1, 2], "seeds": [0, 1], "lr_grid": [0.01, 0.1], "lr_grid_seeds": [7]}
    cfg = build_config("overparam-cifar", over, "cpu")
    assert cfg.ablate_weight_decay and cfg.fit_threshold == 0.99
    # the dotted keys change those settings only: the preset's others stay
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_epochs) == (2, 32, 0.1, 1.0)
    out = run_experiment("overparam-cifar", over, out_dir=tmp_path / "r", preset="cpu")
    sel = out["lr_selection"]
    arms = ("depth1", "depth2", "depth2-wd-collapsed")
    assert set(sel) == set(arms)  # every arm chooses its own lr, the ablation's included
    rows = {r["arm"]: r for r in out["per_depth"]}
    assert set(rows) == set(arms)
    for arm in arms:
        accs = sel[arm]["heldout_acc"]
        assert sel[arm]["grid"] == [0.01, 0.1] and set(accs) == {"0.01", "0.1"}
        assert sel[arm]["chosen"] == max([0.01, 0.1], key=lambda lr: accs[str(lr)])
        assert (sel[arm]["fit_n"], sel[arm]["heldout_n"]) == (96, 24)
        assert rows[arm]["lr"] == sel[arm]["chosen"]
    assert rows["depth1"]["fit"].endswith("/2")
    v = out["verdict"]
    assert v["status"] in ("holds", "does not hold", "inconclusive", "not testable")
    assert set(v["ablation"]) == {"depth=2, wd on collapsed"} and v["ablation"]["depth=2, wd on collapsed"]["n"] == 2
    assert "fit_check" in v and "statement" in v and "measured" in v
    base = [p["train_acc"] for p in out["runs"] if p["arm"] == "depth1"]
    assert (v["status"] == "not testable") == any(a < 0.99 for a in base)
    assert len({r["test_acc"] for r in out["runs"]}) > 1


def test_an_arm_that_diverges_at_its_lr_retrains_at_the_next_smaller_rate(monkeypatch):
    """The search trains on 800 images, the arm on all of them: a seed that diverges at the
    chosen rate makes every seed retrain at the next smaller rate that did not diverge in the
    search (recorded), and the arm fails only when no smaller rate is left."""
    import dataclasses as dc

    import pytest

    from rankbias.experiments import overparam_cifar as oc
    from rankbias.fit import fast_classify
    from rankbias.fit.fast_classify import FastTrainSettings

    tried = []

    def fake(models, seeds, train, test, settings, **kw):
        tried.append(settings.lr)
        if settings.lr > 0.05:
            raise FloatingPointError("seed 4: training loss is not finite at epoch 3")
        return "result"

    monkeypatch.setattr(fast_classify, "train_group", fake)
    monkeypatch.setattr(oc, "build", lambda *a: None)
    sel = {"grid": [0.02, 0.05, 0.1, 0.2, 0.4],
           "heldout_acc": {"0.02": 0.3, "0.05": None, "0.1": 0.31, "0.2": 0.33, "0.4": None}, "chosen": 0.2}
    s = FastTrainSettings(epochs=1, batch_size=8, lr=0.2)
    live = [{"epoch": 1}]
    res, used = oc._train_arm(None, 4, [0, 1], 3, 10, [None, None], None, None, s, sel, False, None,
                              None, "depth4", live)
    # 0.05 diverged in the search, so it is skipped: 0.2 -> 0.1 -> 0.02
    assert tried == [0.2, 0.1, 0.02] and res == "result" and used == dc.replace(s, lr=0.02)
    assert [f["lr"] for f in sel["fallbacks"]] == [0.2, 0.1] and live == []
    tried.clear()
    with pytest.raises(FloatingPointError):
        oc._train_arm(None, 4, [0], 3, 10, [None], None, None, dc.replace(s, lr=0.1),
                      {"grid": [0.1], "heldout_acc": {"0.1": 0.3}}, False, None, None, "depth4", [])
    assert tried == [0.1]


def test_a_saved_lr_choice_is_reused_only_for_its_schedule(tmp_path, monkeypatch):
    """The search trains with the arm's epochs; a rerun with other epochs (the run's key leaves
    epochs out) must search again, not reuse the old schedule's choice."""
    import dataclasses as dc

    from rankbias.experiments import overparam_cifar as oc
    from rankbias.experiments.registry import build_config
    from rankbias.fit import fast_classify
    from rankbias.fit.fast_classify import FastTrainSettings, GroupResult
    from rankbias.framework.runs import RunDir

    calls = []

    def fake(models, seeds, train, test, settings, **kw):
        calls.append(settings.epochs)
        rows = [{"test_acc": settings.lr} for _ in seeds]
        return GroupResult([], rows, settings.epochs, settings.epochs, False, [])

    monkeypatch.setattr(fast_classify, "train_group", fake)
    monkeypatch.setattr(oc, "build", lambda *a: None)
    monkeypatch.setattr(oc, "holdout_split", lambda cfg, train: ([0] * 8, [0] * 2))
    cfg = build_config("overparam-cifar", {"dataset": "digits", "lr_grid": [0.1, 0.2]}, "smoke")
    run = RunDir(tmp_path / "r", config_hash="abc")
    arm = {"label": "depth1", "depth": 1, "wd_on": "factors"}
    s = FastTrainSettings(epochs=3, batch_size=8, lr=0.1)
    first = oc.select_lr(cfg, arm, None, s, 1, 10, run, "k")
    assert first["chosen"] == 0.2 and calls == [3, 3]
    assert oc.select_lr(cfg, arm, None, s, 1, 10, run, "k") == first and calls == [3, 3]  # reused
    oc.select_lr(cfg, arm, None, dc.replace(s, epochs=5), 1, 10, run, "k")
    assert calls == [3, 3, 5, 5]  # another schedule: searched again
