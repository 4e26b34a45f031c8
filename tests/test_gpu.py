"""The GPU path on the CPU: fast trainer, overparam-cifar, packed data, reproduce --preset gpu-smoke."""

import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rankbias.data import packed
from rankbias.errors import LoadError, UnsupportedError
from rankbias.fit import fast_classify
from rankbias.fit.fast_classify import DeviceImages, FastTrainSettings, augment_uint8, train_group
from rankbias.framework.config import ConfigError
from rankbias.models import build_model
from rankbias.overparam import overparameterize

SRC = str(Path(__file__).resolve().parents[1] / "src")



def _settings(**kw) -> FastTrainSettings:
    """FastTrainSettings at the values these tests were written for: plain momentum, one epoch
    of warm-up, crop 4 and flips, the default layout (the experiment's defaults differ)."""
    return FastTrainSettings(**{"nesterov": False, "warmup_epochs": 1.0, "crop_padding": 4, "hflip": True,
                                "channels_last": False, **kw})


def _write_idx(raw: Path, stem: str, x: np.ndarray, y: np.ndarray) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{stem}-images-idx3-ubyte").write_bytes(
        np.array([2051, len(x), 28, 28], ">i4").tobytes() + x.tobytes())
    (raw / f"{stem}-labels-idx1-ubyte").write_bytes(np.array([2049, len(y)], ">i4").tobytes() + y.tobytes())


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """A data root in the shipped layouts: cifar10-jpeg/{train,test}/<class>/NNNN.jpg (3 classes)
    and MNIST/raw idx files (10 classes, random pixels on a zero background)."""
    from torchvision.io import encode_jpeg

    root = tmp_path_factory.mktemp("root")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("test", 10)):
        for cname in ("bird", "cat", "dog"):
            d = root / "cifar10-jpeg" / split / cname
            d.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
                (d / f"{i:04d}.jpg").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
    rng = np.random.default_rng(0)
    for stem in ("train", "t10k"):
        x = np.zeros((400, 28, 28), np.uint8)
        x[:, 8:20, 8:20] = rng.integers(1, 256, (400, 12, 12))
        _write_idx(root / "MNIST" / "raw", stem, x, (np.arange(400) % 10).astype(np.uint8))
    return root


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    # load_image_dataset caches decoded CIFAR-10 by split only: keep each test's own
    monkeypatch.setenv("RANKBIAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------ packed data


def test_packed_round_trips_exactly(fake_root, tmp_path, cache):
    from rankbias.cli import main
    from rankbias.data.images import load_image_dataset

    out = tmp_path / "packed"
    assert main(["prepare-data", "--out", str(out), "--data-root", str(fake_root)]) == 0
    m = json.loads((out / packed.MANIFEST).read_text())
    assert m["total_bytes"] < packed.TOTAL_LIMIT
    assert all(p["bytes"] < packed.PART_LIMIT for e in m["datasets"].values()
               for s in ("train", "test") for p in e[s]["parts"])
    for train in (True, False):
        src = load_image_dataset("cifar10", train=train, root=fake_root)
        got = packed.load_packed(out, "cifar10", train)
        assert torch.equal(got.images, src.images) and torch.equal(got.labels, src.labels)
        assert got.classes == src.classes
        mn = load_image_dataset("mnist", train=train, root=fake_root)
        keep = mn.labels <= 1  # the default: MNIST classes 0 and 1
        got = packed.load_packed(out, "mnist", train)
        assert torch.equal(got.images, mn.images[keep]) and torch.equal(got.labels, mn.labels[keep])
    # written back out in the data-root layout, the ordinary loaders read the same pixels
    mat = packed.materialize(out, tmp_path / "mat")
    for name in ("cifar10", "mnist"):
        a = load_image_dataset(name, train=False, root=mat)
        b = packed.load_packed(out, name, False)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_packed_from_the_tar_equals_from_the_folder(fake_root, tmp_path):
    root = tmp_path / "tar-root"
    root.mkdir()
    with tarfile.open(root / "cifar10-jpeg.tar", "w") as tf:
        tf.add(fake_root / "cifar10-jpeg", arcname="cifar10-jpeg")
    a = packed.pack(tmp_path / "a", fake_root, datasets=["cifar10"])
    b = packed.pack(tmp_path / "b", root, datasets=["cifar10"])
    assert [p["sha256"] for p in a["datasets"]["cifar10"]["train"]["parts"]] == \
           [p["sha256"] for p in b["datasets"]["cifar10"]["train"]["parts"]]


def test_packed_refuses_and_detects(fake_root, tmp_path, monkeypatch):
    out = tmp_path / "p"
    packed.pack(out, fake_root, datasets=["cifar10"], part_mib=0.05)  # several small parts
    parts = sorted(out.glob("cifar10-train-*.npz"))
    assert len(parts) > 1
    x, y, _ = packed.load_packed_uint8(out, "cifar10")
    assert x.shape == (48, 3, 32, 32) and y.tolist() == sorted(y.tolist())
    with pytest.raises(LoadError, match="not packed there"):
        packed.load_packed(out, "mnist")
    good = parts[0].read_bytes()
    data = bytearray(good)
    data[-100] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    with pytest.raises(LoadError, match="sha256"):
        packed.load_packed(out, "cifar10")
    parts[0].write_bytes(good)
    parts[1].unlink()
    with pytest.raises(LoadError, match="missing part"):
        packed.load_packed(out, "cifar10")
    with pytest.raises(LoadError, match="rankbias-packed.json"):
        packed.load_packed(tmp_path, "cifar10")
    pickles = tmp_path / "pickles"
    (pickles / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(UnsupportedError, match="JPEG copy"):
        packed.pack(tmp_path / "q", pickles, datasets=["cifar10"])
    monkeypatch.setattr(packed, "TOTAL_LIMIT", 1000)
    with pytest.raises(UnsupportedError, match="over the"):
        packed.pack(tmp_path / "r", fake_root, datasets=["cifar10"])


# ------------------------------------------------------------------ the trainer


def test_augment_is_a_padded_window_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (20, 2, 5, 6), generator=g, dtype=torch.uint8)
    out = augment_uint8(x, 2, True, torch.Generator().manual_seed(3))
    again = augment_uint8(x, 2, True, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    kinds = set()
    for i in range(20):
        hits = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                if torch.equal(out[i], (lambda w, f=f: w.flip(-1) if f else w)(xp[i, :, dy:dy + 5, dx:dx + 6]))]
        assert hits, f"image {i} is not a window of its padded image"
        kinds.update(h[2] for h in hits)
    assert kinds == {False, True}
    assert torch.equal(augment_uint8(x, 0, False, g), x)


def _per_step_batches(images, seed, B, steps, pad, epochs):
    """The augmented batches of ``seed`` as the trainer drew them before the draws moved to the
    start of the epoch: per epoch a permutation, then per step B row offsets, B column offsets
    and B flips from the seed's CPU generator, each image cropped and mirrored one by one."""
    g = torch.Generator().manual_seed(seed)
    H, W = images.shape[-2:]
    out = []
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=g)
        for i in range(steps):
            off = torch.randint(0, 2 * pad + 1, (2, B), generator=g)
            flip = torch.rand(B, generator=g) < 0.5
            xp = torch.nn.functional.pad(images[perm[i * B:(i + 1) * B]], (pad,) * 4)
            crops = [xp[k, :, off[0, k]:off[0, k] + H, off[1, k]:off[1, k] + W] for k in range(B)]
            out.append(torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)]))
    return out


def test_epoch_draws_give_the_per_step_batches(monkeypatch):
    """The trainer draws an epoch's augmentation at its start (one copy to the device): every
    batch it trains on is the one the per-step draws gave, for each seed, batched or not,
    and whether the seed trains alone or with others."""
    seen = []
    real = fast_classify.apply_augmentation
    monkeypatch.setattr(fast_classify, "apply_augmentation", lambda *a: seen.append(real(*a)) or seen[-1])
    train, B, steps = _data(48), 16, 3
    s = _settings(epochs=2, batch_size=B, lr=0.05, crop_padding=2, hflip=True)
    want = {sd: _per_step_batches(train.images, sd, B, steps, 2, 2) for sd in (3, 7)}
    train_group(_tiny(1, [3, 7]), [3, 7], train, _data(8, 1), s, batch_seeds=True, progress=False)
    assert len(seen) == 2 * steps and all(x.shape[0] == 2 * B for x in seen)
    for k, sd in enumerate((3, 7)):
        assert all(torch.equal(x[k * B:(k + 1) * B], w) for x, w in zip(seen, want[sd])), sd
    seen.clear()
    train_group(_tiny(1, [3, 7]), [3, 7], train, _data(8, 1), s, batch_seeds=False, progress=False)
    # one after another: per epoch, seed 3's steps, then seed 7's
    got = {3: seen[0:3] + seen[6:9], 7: seen[3:6] + seen[9:12]}
    assert all(torch.equal(a, b) for sd in (3, 7) for a, b in zip(got[sd], want[sd]))
    seen.clear()
    train_group(_tiny(1, [7]), [7], train, _data(8, 1), s, batch_seeds=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(seen, want[7]))


def _count_host_calls(monkeypatch) -> dict:
    """Counts the calls that make the host wait for the device or copy to it: ``.item()``,
    ``.tolist()``, ``.cpu()``, ``.numpy()``, a scalar read (``float(t)``, ``int(t)``,
    ``bool(t)``) and ``.to()`` with a device."""
    counts = {"n": 0}

    def counting(name):
        real = getattr(torch.Tensor, name)

        def f(self, *a, **k):
            if name != "to" or "device" in k or any(isinstance(v, str | torch.device) for v in a):
                counts["n"] += 1
            return real(self, *a, **k)
        return f

    for name in ("item", "tolist", "cpu", "numpy", "to", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return counts


@pytest.mark.parametrize("batched", [True, False])
def test_training_steps_do_not_wait_on_the_host(monkeypatch, batched):
    """Host round trips per run do not grow with the steps of an epoch: the draws travel once
    per epoch, and the losses and accuracies are read once per epoch."""
    s = _settings(epochs=1, batch_size=8, lr=0.05, crop_padding=2, hflip=True)
    per_run = []
    for n in (16, 48):  # 2 and 6 steps
        models = _tiny(2, [0, 1], torch.float32)
        with monkeypatch.context() as m:
            counts = _count_host_calls(m)
            train_group(models, [0, 1], _data(n), _data(8, 1), s, batch_seeds=batched, progress=False)
        per_run.append(counts["n"])
    assert per_run[0] == per_run[1] and per_run[0] > 0, per_run


def test_the_plan_may_shrink_at_any_epoch_within_the_warm_up():
    s = _settings(epochs=5, batch_size=16, lr=0.05, warmup_epochs=2.0)
    res = train_group(_tiny(1, [0], torch.float32), [0], _data(32), _data(8, 1), s, progress=False,
                      on_epoch=lambda info: 3 if info["epoch"] == 2 else None)
    assert res.epochs_done == res.epochs_planned == 3 and not res.stopped
    for bad in ({"epoch": 3, "new": 4}, {"epoch": 2, "new": 1}):  # after the warm-up; below the done
        with pytest.raises(ValueError, match="within the warm-up"):
            train_group(_tiny(1, [0], torch.float32), [0], _data(32), _data(8, 1), s, progress=False,
                        on_epoch=lambda info, b=bad: b["new"] if info["epoch"] == b["epoch"] else None)


def _tiny(depth, seeds, dtype=torch.float64):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        m = build_model("resnet", 3, 4, width=4, blocks=1)
        if depth > 1:
            m = overparameterize(m, depth=depth, generator=torch.Generator().manual_seed(s))
        out.append(m.to(dtype))
    return out


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return DeviceImages(x, torch.arange(n) % 4, "cpu")


def test_batched_seeds_equal_one_after_another():
    train, test = _data(), _data(24, 1)
    s = _settings(epochs=2, batch_size=16, lr=0.1, weight_decay=5e-4, warmup_epochs=1.0,
                          crop_padding=2, hflip=True, label_smoothing=0.1, nesterov=True)
    seeds = [3, 7, 11]
    a = train_group(_tiny(2, seeds), seeds, train, test, s, batch_seeds=True, progress=False)
    b = train_group(_tiny(2, seeds), seeds, train, test, s, batch_seeds=False, progress=False)
    assert a.epochs_done == b.epochs_done == 2 and not a.stopped
    for ma, mb in zip(a.models, b.models):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.allclose(sa[k].double(), sb[k].double(), rtol=1e-9, atol=1e-11), k
    start = _tiny(2, seeds)[0].state_dict()
    assert not torch.allclose(a.models[0].state_dict()["fc.factors.0.weight"], start["fc.factors.0.weight"])
    for ra, rb in zip(a.history, b.history):
        assert ra["seed"] == rb["seed"] and ra["test_acc"] == rb["test_acc"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-9)
    # different seeds see different batches, so they end up different
    assert not torch.allclose(a.models[0].state_dict()["fc.factors.0.weight"],
                              a.models[1].state_dict()["fc.factors.0.weight"])


_CPU_FLOAT32_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_gpu import _data, _tiny
from rankbias.fit import fast_classify
from rankbias.fit.fast_classify import FastTrainSettings, train_group
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "unsafe":  # the old behaviour: channels_last on the CPU too
    fast_classify.channels_last_is_safe = lambda device: True
s = FastTrainSettings(epochs=2, batch_size=16, lr=0.1, crop_padding=2, hflip=True, channels_last=True,
                      nesterov=False, warmup_epochs=1.0)
seeds = [3, 7]
runs = [train_group(_tiny(2, seeds, torch.float32), seeds, _data(), _data(24, 1), s, batch_seeds=b,
                    progress=False) for b in (True, False)]
worst = 0.0
for ma, mb in zip(runs[0].models, runs[1].models):
    for k, a in ma.state_dict().items():
        b = mb.state_dict()[k]
        if a.is_floating_point():
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)))
print("WORST", worst)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_float32_training_is_exact_and_does_not_crash(threads, tmp_path):
    """The CPU float32 path that aborted ``make test`` (oneDNN's strided 1x1 conv backward in
    channels_last, the width-4 ResNet's projection shortcut): run in a subprocess so that a
    heap corruption is a failure, not a dead suite; batched (grouped convs under vmap) and
    one-after-another training must give the same models."""
    import pathlib
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_CPU_FLOAT32_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script), str(threads), "safe"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    worst = float(proc.stdout.split("WORST")[-1])
    assert worst < 1e-4, f"batched and sequential float32 training differ by {worst:.3g} (relative)"


@pytest.mark.parametrize("batched", [True, False])
def test_bf16_autocasts_the_sequential_form_only(batched):
    s = _settings(epochs=1, batch_size=16, lr=0.05, bf16=True, channels_last=True)
    runs = [train_group(_tiny(2, [0, 1], torch.float32), [0, 1], _data(32), _data(8, 1), st,
                        batch_seeds=batched, progress=False)
            for st in (s, dataclasses.replace(s, bf16=False))]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in runs[0].history)
    assert all(p.dtype == torch.float32 for m in runs[0].models for p in m.parameters())
    same = [a["train_loss"] == b["train_loss"] for a, b in zip(runs[0].history, runs[1].history)]
    # vmap keeps float32 (autocast does not reach its convs); one after another runs bf16
    assert all(same) if batched else not any(same)


def test_deadline_stops_after_a_finished_epoch():
    import time

    s = _settings(epochs=3, batch_size=16, lr=0.1)
    res = train_group(_tiny(1, [0, 1], torch.float32), [0, 1], _data(), _data(8, 1), s,
                      deadline=time.perf_counter(), progress=False)
    assert res.stopped and res.epochs_done == 1 and res.epochs_planned == 3
    assert [(r["seed"], r["epoch"]) for r in res.history] == [(0, 1), (1, 1)]


# --------------------------------------------------------------- the experiment


def test_config_is_validated():
    from rankbias.experiments.registry import build_config

    with pytest.raises(ConfigError, match="fit_epochs_to_budget"):
        build_config("overparam-cifar", {"fit_epochs_to_budget": True}, "smoke")
    with pytest.raises(ConfigError, match="depths"):
        build_config("overparam-cifar", {"depths": [2, 4]}, "smoke")
    cfg = build_config("overparam-cifar", {}, "gpu")
    assert list(cfg.depths) == [1, 4] and len(cfg.seeds) >= 6 and cfg.resnet_blocks == 3
    # the budget, not a small cap, sets the epochs; a baseline that did not fit is not tested
    assert cfg.fit_epochs_to_budget and cfg.train.epochs >= 100 and cfg.fit_threshold is not None


def test_fit_epochs_uses_the_measured_epoch_and_the_budget_left():
    import time

    from rankbias.experiments.overparam_cifar import fit_epochs
    from rankbias.experiments.registry import build_config

    cfg = build_config("overparam-cifar", {}, "gpu")
    chosen = {"epochs": cfg.train.epochs}
    equal = {"depth1": 1.0, "depth4": 1.0}
    # epoch 2 of the first of 2 equal arms took 1 s; 100 s are left: (100 / 1.15 + 2) // 2 = 44
    got = fit_epochs(cfg, chosen, {"epoch": 2, "epoch_time_s": 1.0}, equal, time.perf_counter() + 100, False)
    assert got == chosen["epochs"] == 44
    # a budget beyond the paper's schedule stops at cfg.train.epochs; a spent one keeps the epochs done
    assert fit_epochs(cfg, {"epochs": 200}, {"epoch": 2, "epoch_time_s": 1.0}, equal,
                      time.perf_counter() + 1e6, False) == 200
    assert fit_epochs(cfg, {"epochs": 200}, {"epoch": 2, "epoch_time_s": 1.0}, equal,
                      time.perf_counter(), False) == 2


@pytest.mark.parametrize("ablate", [False, True])
def test_the_epochs_fit_the_budget_when_a_deeper_arm_costs_more(ablate):
    """Depth 4 costs 3x the baseline per epoch (a fake clock in place of the device probe):
    the epochs chosen after the baseline's epoch 2 let every arm finish within the budget.
    Sizing from the baseline's epoch x the number of arms (the old rule) would pick 87
    epochs, 173 s of training for a 100 s budget."""
    import time

    from rankbias.experiments._epoch_budget import arm_epoch_costs
    from rankbias.experiments.overparam_cifar import fit_epochs
    from rankbias.experiments.overparam_cifar_summary import arms
    from rankbias.experiments.registry import build_config

    cfg = build_config("overparam-cifar", {"ablate_weight_decay": ablate}, "gpu")
    timed = []

    def fake_probe(arm):  # seconds per probe epoch; the run's epochs are 0.5 s at depth 1
        timed.append(arm["label"])
        return {1: 0.01, 4: 0.03}[arm["depth"]]

    costs = arm_epoch_costs(arms(cfg), fake_probe)
    # each distinct arm timed once; the ablation arm trains other models, so it is timed too
    assert timed == [a["label"] for a in arms(cfg)] == (["depth1", "depth4", "depth4-wd-collapsed"]
                                                        if ablate else ["depth1", "depth4"])
    budget, done, per = 100.0, 2, 0.5
    got = fit_epochs(cfg, {"epochs": 200}, {"epoch": done, "epoch_time_s": per}, costs,
                     time.perf_counter() + budget, False)
    epoch_s = {k: per * c / costs["depth1"] for k, c in costs.items()}
    train_s = (got - done) * epoch_s["depth1"] + got * sum(v for k, v in epoch_s.items() if k != "depth1")
    assert train_s <= budget / 1.15  # every arm, at its own cost, within the budget less the margin
    assert train_s + sum(epoch_s.values()) > budget / 1.15  # and not one epoch fewer than fits
    assert got == (43 if not ablate else 25)  # (100 / 1.15 + 2 x 0.5) // (0.5 + 1.5 [+ 1.5])


def test_one_kind_of_arm_needs_no_probe():
    def never(arm):
        raise AssertionError("no probe needed: every arm costs the same")

    from rankbias.experiments._epoch_budget import arm_epoch_costs

    assert arm_epoch_costs([{"label": "depth1", "depth": 1, "wd_on": "factors"}], never) == {"depth1": 1.0}


def test_budget_stop_keeps_finished_depths(tmp_path):
    from rankbias.experiments.overparam_cifar import run
    from rankbias.experiments.registry import build_config
    from rankbias.framework.runs import RunDir
    from rankbias.runner import run_experiment

    base = {"depths": [1, 2], "seeds": [0, 1], "train.epochs": 2, "train_limit": 128, "test_limit": 64,
            "batch_seeds": "auto"}
    # fitted to a budget that holds the whole ceiling: the device probe (the fake clock above
    # stands in for it) times each arm once before training, and the summary says so
    first = run_experiment("overparam-cifar", {**base, "fit_epochs_to_budget": True, "budget_minutes": 10.0},
                           out_dir=tmp_path / "r", preset="smoke")
    probe = first["run"]["probe_epoch_s"]
    assert list(probe) == ["depth1", "depth2"] and all(v > 0 for v in probe.values()), probe
    assert first["run"]["epochs"] == 2
    assert first["run"]["batched_seeds"] in (True, False)
    assert [r["status"] for r in first["per_depth"]] == ["ok", "ok"]
    assert first["verdict"]["status"] in ("holds", "does not hold", "inconclusive", "not testable")
    assert "measured" in first["verdict"] and "paper" in first["verdict"]
    assert first["verdict"]["max_collapse_rel_diff"] <= 1e-4
    # the same run directory, one more depth and a budget that is already spent:
    # the finished depths come back unchanged, the new one stops after one epoch
    cfg = build_config("overparam-cifar", {**base, "depths": [1, 2, 4], "budget_minutes": 1e-6}, "smoke")
    again = run(cfg, RunDir(tmp_path / "r"))
    rows = {r["depth"]: r for r in again["per_depth"]}
    assert rows[4]["status"] == "stopped" and rows[4]["epochs"] == 1 and rows[4]["epochs_planned"] == 2
    # named as cut in the verdict's measured line and in the GPU plan's note, not left out
    assert "depth4: stopped, not in the test (budget: stopped after epoch 1 of 2)" in again["verdict"]["measured"]
    from rankbias.plan_runner import cut_note

    assert cut_note(again) == "budget: depth4 cut after epoch 1 of 2"
    assert cut_note(first) is None
    for d in (1, 2):
        assert rows[d]["status"] == "ok"
        assert rows[d]["test_acc_mean"] == first["per_depth"][d - 1]["test_acc_mean"]
    lines = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert sum(line.startswith("4,") for line in lines) == 2  # depth 4: epoch 1 of both seeds
    assert "stopped after epoch 1 of 2" in (tmp_path / "r" / "report.md").read_text()


def test_gpu_path_imports_only_the_core_dependencies(fake_root, tmp_path):
    """overparam-cifar on packed CIFAR-10: nothing outside torch, torchvision, numpy, pandas,
    matplotlib, tqdm, scipy (scikit-learn's own dependency; the verdicts' t quantiles) and
    their own dependencies is imported: no sklearn, ray, ..."""
    out = tmp_path / "packed"
    packed.pack(out, fake_root, datasets=["cifar10"])
    code = (
        "import sys; from rankbias.cli import main; "
        f"rc = main(['run', 'overparam-cifar', '--preset', 'smoke', '--set', 'dataset=cifar10', "
        f"'--set', 'packed_dir={out}', '--set', 'depths=1,2', '--set', 'seeds=0,1', "
        f"'--out', '{tmp_path / 'run'}']); "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sklearn', 'ray', 'tensorboard', 'safetensors', 'weightwatcher', 'hypothesis', 'pytest'}); "
        "print('BAD', bad); sys.exit(rc or len(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                              "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BAD []" in res.stdout


@pytest.mark.parametrize("preset", ["gpu", "gpu-smoke"])
def test_plan_shares(preset):
    from rankbias.plans import REPRODUCE_PRESETS, DataFolder

    steps = REPRODUCE_PRESETS[preset].build(DataFolder(None, "/data", frozenset({"mnist", "cifar10"})))
    shares = {st.label: st.share for st in steps}
    assert all(0 < v <= 1 for v in shares.values()) and sum(shares.values()) <= 1 + 1e-9, shares
    assert max(shares, key=shares.get) == "paper2-overparam-cifar", shares
    assert [st.label for st in steps if st.stops_itself] == ["paper2-overparam-cifar"]
    assert not any(st.skip for st in steps)
    # without CIFAR-10 the GPU plan reports its CIFAR steps as not run (their shares go on)
    if preset == "gpu":
        lacking = REPRODUCE_PRESETS[preset].build(DataFolder(None, "/data", frozenset({"mnist"})))
        assert [st.label for st in lacking if st.skip] == ["paper1-cifar10", "paper2-overparam-cifar"]
        assert all("no cifar10 in the data (/data)" == st.skip for st in lacking if st.skip)


# -------------------------------------------------------- the GPU plan, assembled from the experiments
# A frozen copy of the plan as it was written by hand in plans.py before the experiments declared
# their GPU steps (gpu= of @register): the assembled plans must stay these exact steps.
_TINY = {"sigmas": [0.0, 0.5], "seeds": [0, 1], "steps": 20, "log_every": 10}


def _lacks(data, dataset):
    return None if dataset in data.has else f"no {dataset} in the data ({data.packed or data.root})"


def _handwritten_gpu(data):
    from rankbias.plans import Step

    root, cuda = {"data_root": data.root}, {"device": "cuda"}
    p2_data = {"packed_dir": data.packed} if data.packed is not None else root
    cifar = {"dataset": "cifar10", "classes": [0, 1], "patch_size": 16, "lr": 0.3}
    return [
        Step("paper1-synthetic", "noise-robustness", "paper", cuda, 0.07),
        Step("paper1-mnist", "noise-robustness-images", "paper", {**cuda, **root}, 0.14,
             skip=_lacks(data, "mnist")),
        Step("paper1-cifar10", "noise-robustness-images", "paper",
             {**cuda, **root, **cifar, "n_train": 2000, "n_test": 2000}, 0.12, skip=_lacks(data, "cifar10")),
        Step("paper2-overparam-cifar", "overparam-cifar", "gpu", {**cuda, **p2_data}, 0.67,
             stops_itself=True, skip=_lacks(data, "cifar10")),
    ]


def _handwritten_smoke(data):
    from rankbias.plans import Step

    root = {"data_root": data.root}
    p2_data = {"packed_dir": data.packed} if data.packed is not None else root
    cifar = {"dataset": "cifar10", "classes": [0, 1], "patch_size": 16, "lr": 0.3}
    mnist = "mnist" if "mnist" in data.has else "digits"
    steps = [
        Step("paper1-synthetic", "noise-robustness", "quick", {**_TINY, "n_train": 40, "n_test": 40}, 0.18),
        Step("paper1-mnist", "noise-robustness-images", "quick",
             {**_TINY, **root, "dataset": mnist, "n_train": 60, "n_test": 60,
              **({"patch_size": 14} if mnist == "mnist" else {})}, 0.18),
    ]
    if "cifar10" in data.has:
        steps.append(Step("paper1-cifar10", "noise-robustness-images", "quick",
                          {**_TINY, **root, **cifar, "n_train": 20, "n_test": 20}, 0.18))
    p2 = {} if "cifar10" not in data.has else {
        **p2_data, "dataset": "cifar10", "train_limit": 200, "test_limit": 100, "train_eval_limit": 100,
        "train.crop_padding": 4, "train.hflip": True}
    steps.append(Step("paper2-overparam-cifar", "overparam-cifar", "smoke", p2, 0.46, stops_itself=True))
    return steps


_FOLDERS = [(packed_dir, frozenset(has)) for packed_dir in (None, "/packed")
            for has in ((), ("mnist",), ("cifar10",), ("mnist", "cifar10"))]


@pytest.mark.parametrize("packed_dir, has", _FOLDERS)
def test_the_assembled_gpu_plans_are_the_handwritten_ones(packed_dir, has):
    """Every field of every step (label, experiment, preset, overrides, share, skip,
    stops_itself, and the order) of both plans, for every data folder kind: packed or a plain
    root, with and without MNIST and CIFAR-10."""
    from rankbias.plans import DataFolder, gpu_steps

    data = DataFolder(packed_dir, packed_dir or "/data", has)
    assert gpu_steps("gpu", data) == _handwritten_gpu(data)
    assert gpu_steps("gpu-smoke", data) == _handwritten_smoke(data)


def test_the_cifar10_step_does_not_inherit_the_mnist_lr():
    """The plan's CIFAR-10 step uses the paper preset (sized for MNIST, lr 1, which collapsed
    CIFAR to a constant predictor in the CPU check of docs/gpu.md): its lr is set."""
    from rankbias.experiments.noise_robustness_images import CIFAR_LR
    from rankbias.experiments.registry import build_config
    from rankbias.plans import DataFolder, gpu_steps

    step = next(st for st in gpu_steps("gpu", DataFolder(None, "/data", frozenset({"cifar10"})))
                if st.label == "paper1-cifar10")
    assert build_config(step.experiment, {}, step.preset).lr == 1.0
    assert build_config(step.experiment, step.overrides, step.preset).lr == CIFAR_LR < 1.0


def test_a_plan_over_its_budget_is_refused():
    from rankbias.plans import Plan, Preset, Step, check_shares

    with pytest.raises(UnsupportedError, match="sum to <= 1"):
        check_shares([Step("a", "e", "p", {}, 0.6), Step("b", "e", "p", {}, 0.5)])
    with pytest.raises(UnsupportedError, match=r"each be in \(0, 1\]"):
        check_shares([Step("a", "e", "p", {}, 0.0)])
    with pytest.raises(UnsupportedError, match=r"each be in \(0, 1\]"):  # a budgeted step without a share
        check_shares([Step("a", "e", "p", {}, 0.5), Step("b", "e", "p", {})])
    # a preset is either a table or a budgeted list of steps, never both or neither
    with pytest.raises(UnsupportedError, match="exactly one of plans= .* and build="):
        Preset()
    with pytest.raises(UnsupportedError, match="budget_minutes goes with build="):
        Preset(plans={"*": Plan("quick")}, budget_minutes=3.0)


def test_reproduce_gpu_smoke_end_to_end(fake_root, tmp_path, cache):
    from rankbias.plan_runner import REPORT_RESERVE_S, reproduce

    data = tmp_path / "packed"
    packed.pack(data, fake_root)
    res = reproduce("gpu-smoke", tmp_path / "out", data=data, budget_minutes=5, progress=False)
    status = {e.name: e.status for e in res.entries}
    assert status == {"paper1-synthetic": "done", "paper1-mnist": "done", "paper1-cifar10": "done",
                      "paper2-overparam-cifar": "done"}, res.entries
    assert res.report_md.exists() and res.report_html.exists()
    p2 = next(e for e in res.entries if e.name == "paper2-overparam-cifar")
    assert p2.config["dataset"] == "cifar10" and p2.config["packed_dir"] == str(data)
    # every step got at least its share of the 300 s (time the earlier ones left comes on top;
    # paper 2 keeps back the report's reserve), and reproduce.json records both
    recorded = json.loads((tmp_path / "out" / "reproduce.json").read_text())["experiments"]
    for e, r in zip(res.entries, recorded):
        reserve = REPORT_RESERVE_S if e is p2 else 0.0
        assert e.budget_s >= e.share * 300 - reserve - 1, e
        assert (r["share"], r["budget_s"]) == (e.share, e.budget_s)
        assert e.verdict != "not run" and Path(e.run_dir).parent == tmp_path / "out" / "runs" / e.name
    assert p2.config["budget_minutes"] == pytest.approx(p2.budget_s / 60, abs=0.01)
    # a spent budget: the plan still writes its report, every step "not run"
    res = reproduce("gpu-smoke", tmp_path / "out2", budget_minutes=1e-3)
    assert {e.status for e in res.entries} == {"not run"} and res.report_md.exists()
    with pytest.raises(ConfigError, match="budget_minutes and data are for the budgeted presets"):
        reproduce("quick", tmp_path / "x", budget_minutes=3)
    with pytest.raises(ConfigError, match="budget_minutes and data are for the budgeted presets"):
        reproduce("quick", tmp_path / "x", data=data)
    with pytest.raises(ConfigError, match="--only / --set are not accepted with preset 'gpu-smoke'"):
        reproduce("gpu-smoke", tmp_path / "x", only=["noise-robustness"])
