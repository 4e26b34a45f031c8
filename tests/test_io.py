"""rankbias.io: safe loading (no full unpickling unless trusted), clear errors for bad
files, models and inputs; measure_tensors and `rankbias measure` on the same files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from rankbias.analysis import measure_tensors
from rankbias.cli import main
from rankbias.errors import LoadError
from rankbias.io import build_arch, load_inputs, load_model, load_tensors, torch_load
from rankbias.measures import MEASURES, as_matrix, rank_measures


class _Hostile:
    """Unpickling this creates the file ``marker`` (through os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"w": torch.eye(3), "payload": _Hostile(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_hostile_pickle_never_runs_without_trust(hostile, tmp_path, capsys):
    path, marker = hostile
    for load in (load_tensors, torch_load, load_model, lambda p: load_inputs(str(p))):
        with pytest.raises(LoadError, match=r"posix\.system.*--trust-pickle.*trust_pickle=True"):
            load(path)
        assert not marker.exists()
    with pytest.raises(LoadError, match="--trust-pickle"):
        measure_tensors(path)
    assert main(["measure", str(path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["analyze", str(path), "--out", str(tmp_path / "o")]) == 2
    assert main(["analyze", str(path), "--arch", "resnet18", "--out", str(tmp_path / "o")]) == 2
    assert "pickled Python object" in capsys.readouterr().err
    assert not marker.exists()
    # the control: trusting it does run it, so the test above can fail
    torch_load(path, trust_pickle=True)
    assert marker.exists()


def test_whole_module_needs_trust_pickle(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(model, tmp_path / "m.pt")
    with pytest.raises(LoadError, match=r"torch\.nn\.modules\.container\.Sequential.*--trust-pickle"):
        load_model(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", trust_pickle=True)
    assert torch.equal(loaded[0].weight, model[0].weight)
    assert set(load_tensors(tmp_path / "m.pt", trust_pickle=True)) == set(model.state_dict())
    assert main(["measure", str(tmp_path / "m.pt"), "--json", "--trust-pickle"]) == 0
    assert '"0.weight"' in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["empty", "directory", "corrupt", "truncated"])
def test_bad_model_files_are_load_errors(tmp_path, capsys, kind):
    path = tmp_path / "model.pt"
    if kind == "empty":
        path.write_bytes(b"")
        msg = "the file is empty"
    elif kind == "directory":
        path.mkdir()
        msg = "is a directory"
    elif kind == "corrupt":
        path.write_bytes(b"this is not a torch file at all")
        msg = "could not read as a torch file"
    else:
        torch.save(nn.Linear(8, 8).state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
        msg = "could not read as a torch file"
    for trust in (False, True):
        with pytest.raises(LoadError, match=msg):
            load_model(path, arch="resnet18", trust_pickle=trust)
    assert main(["analyze", str(path), "--arch", "resnet18", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankbias: ") and msg in err and len(err.strip().splitlines()) == 1
    assert main(["measure", str(path)]) == 2
    assert msg in capsys.readouterr().err


def test_wrong_arch_and_data_names_say_did_you_mean(tmp_path, capsys):
    with pytest.raises(LoadError, match=r"unknown torchvision model 'resnet81' \(did you mean 'resnet18'"):
        build_arch("resnet81")
    with pytest.raises(LoadError, match="cannot import Nope from torch.nn"):
        build_arch("torch.nn:Nope")
    with pytest.raises(LoadError, match=r"Linear\(\) cannot be built without arguments"):
        build_arch("torch.nn:Linear")
    with pytest.raises(LoadError, match=r"unknown data 'mnits' \(did you mean 'mnist'"):
        load_inputs("mnits")
    # a wrong --arch is found before the state_dict file is read
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "sd.pt")
    assert main(["analyze", str(tmp_path / "sd.pt"), "--arch", "vit_b_61", "--out", str(tmp_path)]) == 2
    assert "did you mean 'vit_b_16'" in capsys.readouterr().err


def test_device_without_gpu_is_refused_before_compute(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from rankbias.analysis import analyze, rank_report
    from rankbias.framework.config import ConfigError

    model = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        rank_report(model, device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        analyze("torchvision:no_such_model", device="cuda", out=tmp_path)  # checked first
    assert main(["analyze", "torchvision:resnet18", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "rank_report.csv").exists()


def test_measure_tensors_matches_rank_measures_and_readings(tmp_path):
    torch.manual_seed(0)
    sd = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(16, 5)).state_dict()
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in sd.items()})
    rows = {r["name"]: r for r in measure_tensors(tmp_path / "w.npz")}
    assert set(rows) == {"0.weight", "2.weight"}
    for name in rows:
        ref = rank_measures(as_matrix(sd[name]))
        for k in MEASURES:
            assert rows[name][k] == pytest.approx(float(ref[k]), rel=1e-12)
    assert rows["0.weight"]["matrix"] == "8x27" and isinstance(rows["0.weight"]["numerical_rank"], int)
    taps = {r["name"]: r for r in measure_tensors(sd, conv_reading="taps")}
    assert taps["0.weight"]["matrix"] == "9 x 8x3"
    pooled = {r["name"]: r for r in measure_tensors(sd, conv_reading="pooled")}
    assert pooled["0.weight"]["matrix"] == "72x27"
    blocks = torch.block_diag(*as_matrix(sd["0.weight"], "taps").unbind(0))
    assert pooled["0.weight"]["stable_rank"] == pytest.approx(float(rank_measures(blocks)["stable_rank"]), rel=1e-10)
    bad = measure_tensors({"w": torch.tensor([[float("nan"), 1.0], [0.0, 1.0]])})
    assert "NaN" in bad[0]["error"]
