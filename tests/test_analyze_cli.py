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


def test_analyze_timm_model_by_name(tmp_path):
    import timm

    from rankbias.io import load_model

    built = load_model("timm:resnet18")  # random weights, nothing downloaded
    assert type(built) is type(timm.create_model("resnet18", pretrained=False))
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # a rank-1 classifier: its row shows the file's weights were loaded
        model.fc.weight.copy_(torch.outer(torch.randn(1000), torch.randn(512)))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    measures = ["effective_rank", "numerical_rank"]
    assert main(["analyze", "timm:resnet18", "--weights", str(tmp_path / "w.pt"), "--measures", *measures,
                 "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "rank_report.csv")
    ref = rank_report(model, measures=measures, progress=False)
    assert list(df["name"]) == list(ref["name"]) and len(df) == 21 and df.iloc[-1]["name"] == "fc"
    assert list(df["matrix_shape"]) == [str(s) for s in ref["matrix_shape"]]
    for k in measures:
        np.testing.assert_allclose(df[k].astype(float), ref[k].astype(float), rtol=1e-12)
    assert df.iloc[-1]["numerical_rank"] == 1


def _tiny_llama(directory):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def test_analyze_hf_local_directory(tmp_path):
    model = _tiny_llama(tmp_path / "tiny")
    assert main(["analyze", f"hf:{tmp_path / 'tiny'}", "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "rank_report.csv")
    ref = rank_report(model, progress=False)
    names = list(df["name"])
    assert names == list(ref["name"]) and len(names) == 1 + 2 * 7 + 1  # embed, 7 per layer, lm_head
    assert "model.layers.1.self_attn.q_proj" in names and names[-1] == "lm_head"
    for k in ("effective_rank", "stable_rank", "participation_ratio"):
        np.testing.assert_allclose(df[k].astype(float), ref[k].astype(float), rtol=1e-12)


def test_model_prefixes_are_clear_errors(tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["foo:bar"], ["unknown prefix 'foo:'", "timm:NAME", "hf:NAME_OR_DIR", "torchvision:NAME"]),
        (["timm:resnet81"], ["unknown timm model 'resnet81' (did you mean 'resnet18'"]),
        (["timm:resnet18", "--arch", "resnet18"], ["--arch goes with a state_dict file"]),
        ([f"hf:{bare}", "--weights", "w.pt"], ["--weights goes with torchvision:NAME or timm:NAME"]),
        ([f"hf:{bare}"], ["no config.json"]),
        ([f"hf:{pickled}"], ["no *.safetensors weights", "pytorch_model.bin files are not read"]),
        ([f"hf:{tmp_path / 'nope'}"], ["no such directory"]),
    ]
    for args, messages in cases:
        assert main(["analyze", *args, *out]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("rankbias: error:") and all(m in err for m in messages), (args, err)


def test_analyze_writes_the_log_log_esd_of_each_layer_beside_the_rank_bars(tmp_path):
    from rankbias.analysis import analyze
    from rankbias.analysis.outputs import weight_esd_panels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    res = analyze(model, torch.randn(8, 1, 8, 8), out=tmp_path / "a", progress=False)
    esd = tmp_path / "a" / "figures" / "weight_esd.png"
    assert esd in res.files and esd.stat().st_size > 10_000
    md = (tmp_path / "a" / "rank_report.md").read_text()
    assert "![rank_report](figures/rank_report.png)" in md and "![weight_esd](figures/weight_esd.png)" in md
    panels, total = weight_esd_panels(model, res.report)
    assert total == 3 and [p.name for p in panels] == ["0", "3", "5"]
    weights = [model[0].weight.reshape(6, -1), model[3].weight, model[5].weight]
    for p, w in zip(panels, weights, strict=True):
        lam = torch.linalg.svdvals(w.double()) ** 2  # the plotted eigenvalues of W^T W
        np.testing.assert_allclose(p.eigenvalues, lam.detach().numpy(), rtol=1e-9)
        shown = p.eigenvalues.size - p.n_hidden
        # a density per unit lambda: it integrates to 1 over the shown eigenvalues, which all lie in the bins
        assert (p.density * np.diff(p.edges)).sum() == pytest.approx(1.0)
        assert np.histogram(p.eigenvalues[:shown], p.edges)[0].sum() == shown == min(w.shape)
    # WeightWatcher's conv reading: the union of the kernel positions' spectra
    (pooled, *_), _ = weight_esd_panels(model, res.report, conv_reading="pooled")
    taps = model[0].weight.permute(2, 3, 0, 1).reshape(9, 6, 1).double()
    want = np.sort((torch.linalg.svdvals(taps) ** 2).detach().numpy().ravel())[::-1]
    np.testing.assert_allclose(pooled.eigenvalues, want, rtol=1e-9)


def test_esd_figure_of_a_deep_model_shows_sixteen_evenly_spaced_layers(tmp_path):
    from rankbias.analysis.outputs import weight_esd_panels, write_report
    from rankbias.plots.spectra import EsdPanel

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(20)])
    model[6].weight.data[:3] = 0  # rank 5: three eigenvalues exactly 0, counted, not drawn
    df = rank_report(model, progress=False)
    panels, total = weight_esd_panels(model, df)
    assert total == 20 and len(panels) == 16
    # linspace(0, 19, 16) rounded: 0 and 19 included, never two panels of one layer
    assert [int(p.name) for p in panels] == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]
    (p6,) = [p for p in panels if p.name == "6"]
    assert p6.n_hidden == 3 and p6.eigenvalues.size == 8 and int(df.loc[6, "numerical_rank"]) == 5
    files = write_report(df, tmp_path, "deep", esd=(panels, total))
    assert (tmp_path / "figures" / "weight_esd.png") in files
    # one singular value, or all equal: one bin around it, still a density
    one = EsdPanel.from_singular_values("x", [2.0, 2.0], rtol=1e-6)
    assert one.edges[0] < 4.0 < one.edges[-1] and (one.density * np.diff(one.edges)).sum() == pytest.approx(1)
