"""`rankbias analyze`: models from files and torchvision, outputs, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rankbias.analysis import rank_report
from rankbias.cli import main
from rankbias.io import load_inputs
from rankbias.measures import KernelSpectrum


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_analyze_saved_model_on_digits(tmp_path, capsys):
    model = tiny_model()
    path = tmp_path / "tiny.pt"
    torch.save(model, path)
    out = tmp_path / "out"
    assert main(["analyze", str(path), "--data", "digits", "--limit", "50", "--out", str(out),
                 "--trust-pickle"]) == 0
    printed = capsys.readouterr().out
    assert "2 weight layers" in printed and "weights: effective rank" in printed
    assert "input data (50, 64)" in printed
    df = pd.read_csv(out / "rank_report.csv")
    assert list(df["name"]) == ["<input>", "1", "3"]
    assert df.loc[1, "emb_matrix_shape"] == "(50, 16)"
    # the same numbers as the library on the same inputs
    ref = rank_report(model, load_inputs("digits", limit=50), progress=False)
    np.testing.assert_allclose(df["effective_rank"].astype(float), ref["effective_rank"].astype(float), rtol=1e-9)
    np.testing.assert_allclose(df["emb_stable_rank"].astype(float), ref["emb_stable_rank"].astype(float), rtol=1e-9)
    md = (out / "rank_report.md").read_text()
    assert md.startswith("# Rank report") and "| name | type |" in md
    assert (out / "figures" / "rank_report.png").stat().st_size > 10_000


def test_state_dict_needs_arch_and_loads_with_it(tmp_path, capsys):
    model = tiny_model()
    path = tmp_path / "sd.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert main(["analyze", str(path), "--out", str(tmp_path / "a")]) == 2
    assert "--arch" in capsys.readouterr().err
    # the wrong architecture: which keys do not fit
    assert main(["analyze", str(path), "--arch", "resnet18", "--out", str(tmp_path / "b")]) == 2
    assert "does not fit the architecture ResNet" in capsys.readouterr().err


def test_input_size_mismatch_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(100, 4)), path)
    assert main(["analyze", str(path), "--data", "digits", "--limit", "8", "--out", str(tmp_path / "o"),
                 "--trust-pickle"]) == 2
    err = capsys.readouterr().err
    assert "inputs of shape (8, 1, 8, 8) in layer '1'" in err and "Linear(in_features=100" in err


def test_unknown_model_and_data_are_clear_errors(tmp_path, capsys):
    assert main(["analyze", "torchvision:resnet17", "--out", str(tmp_path)]) == 2
    assert "unknown torchvision model 'resnet17'" in capsys.readouterr().err
    assert main(["analyze", "torchvision:resnet18", "--data", "imagenet", "--out", str(tmp_path)]) == 2
    assert "unknown data 'imagenet'" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_analyze_torchvision_resnet18(tmp_path, capsys):
    out = tmp_path / "r18"
    rc = main(["analyze", "torchvision:resnet18", "--data", "random:3x32x32", "--limit", "2",
               "--measures", "effective_rank", "stable_rank", "numerical_rank", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out / "rank_report.csv")
    assert len(df) == 1 + 21 and df.loc[1, "name"] == "conv1" and df.iloc[-1]["name"] == "fc"
    assert df.loc[1, "matrix_shape"] == "(64, 147)"
    assert df["error"].isna().all()
    # fc's output on 2 inputs: a 2 x 1000 embedding matrix, kernel rank 2
    assert df.iloc[-1]["emb_matrix_shape"] == "(2, 1000)" and df.iloc[-1]["emb_numerical_rank"] == 2
    assert "21 weight layers, 11,689,512 parameters" in capsys.readouterr().out

    # saved weights: as --weights of the torchvision name, and as a state_dict with --arch
    import torchvision

    torch.manual_seed(5)
    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pt")
    assert main(["analyze", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pt"),
                 "--layers", "fc", "layer4.1.*", "--out", str(tmp_path / "w")]) == 0
    assert main(["analyze", str(tmp_path / "r18.pt"), "--arch", "resnet18",
                 "--layers", "fc", "layer4.1.*", "--out", str(tmp_path / "a")]) == 0
    a = pd.read_csv(tmp_path / "w" / "rank_report.csv")
    b = pd.read_csv(tmp_path / "a" / "rank_report.csv")
    assert list(a["name"]) == ["layer4.1.conv1", "layer4.1.conv2", "fc"]
    pd.testing.assert_frame_equal(a, b)
    fc = sd["fc.weight"].double().numpy()
    s = np.linalg.svd(fc, compute_uv=False)
    assert a.iloc[-1]["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-8)


def test_analyze_embeddings_of_any_module_from_the_cli(tmp_path, capsys):
    from rankbias.analysis import analyze

    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    x = load_inputs("digits", limit=30)
    res = analyze(model, x, out=tmp_path / "api", layers=[], embeddings=["2", "3:input"])
    assert list(res.report["name"]) == ["<input>", "2:output", "3:input"]
    assert res.headline.endswith("0 weight layers, 1,210 parameters")
    with torch.no_grad():
        feats = model[:3](x.float())  # the ReLU's output is the input of the last Linear
    assert res.report.loc[1, "emb_matrix_shape"] == (30, 16)
    ref = float(KernelSpectrum().update(feats.double()).measures(["stable_rank"])["stable_rank"])
    np.testing.assert_allclose(res.report["emb_stable_rank"][1:].astype(float), [ref, ref], rtol=1e-9)
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "cli"
    assert main(["analyze", str(tmp_path / "m.pt"), "--trust-pickle", "--data", "digits",
                 "--limit", "30", "--layers", "3", "--embeddings", "3:input", "--out", str(out)]) == 0
    df = pd.read_csv(out / "rank_report.csv")
    assert list(df["name"]) == ["<input>", "3", "3:input"]
    assert df.loc[2, "emb_stable_rank"] == pytest.approx(res.report.loc[2, "emb_stable_rank"], rel=1e-12)
    assert main(["analyze", str(tmp_path / "m.pt"), "--trust-pickle", "--data", "digits",
                 "--embeddings", "fcc", "--out", str(out)]) == 2
    assert "match no module" in capsys.readouterr().err
