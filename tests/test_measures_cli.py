"""`rankbias measure`: every tensor of a file measured as rank_measures(as_matrix(t)) would."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from rankbias.cli import main as cli_main
from rankbias.measures import MEASURES, as_matrix, effective_rank, rank_measures


def _run_cli(capsys, *args):
    rc = cli_main(["measure", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _json_rows(capsys, path, *extra):
    rc, out, err = _run_cli(capsys, path, "--json", *extra)
    assert rc == 0, err
    return {r["name"]: r for r in json.loads(out)}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))


def _check_rows(rows, tensors):
    assert set(rows) == {k for k, v in tensors.items() if v.ndim >= 2}
    for name, t in tensors.items():
        if t.ndim < 2:
            continue
        ref = rank_measures(as_matrix(t))
        for k in MEASURES:
            assert rows[name][k] == pytest.approx(float(ref[k]), rel=1e-12), (name, k)
        assert rows[name]["numerical_rank"] == int(ref["numerical_rank"])


def test_cli_measure_npy_npz(tmp_path, capsys):
    A = np.random.default_rng(0).standard_normal((6, 4))
    np.save(tmp_path / "w.npy", A)
    _check_rows(_json_rows(capsys, tmp_path / "w.npy"), {"w": torch.from_numpy(A)})
    tensors = {"a": A, "b": np.ones(5), "c": np.arange(24.0).reshape(2, 3, 4)}
    np.savez(tmp_path / "w.npz", **tensors)
    _check_rows(_json_rows(capsys, tmp_path / "w.npz"), {k: torch.from_numpy(v) for k, v in tensors.items()})


def test_cli_measure_torch_files(tmp_path, capsys):
    model = _model()
    sd = model.state_dict()
    torch.save(sd["0.weight"], tmp_path / "t.pt")
    rows = _json_rows(capsys, tmp_path / "t.pt")
    assert list(rows) == ["tensor"] and rows["tensor"]["shape"] == "8x3x3x3" and rows["tensor"]["matrix"] == "8x27"
    torch.save(sd, tmp_path / "sd.pt")
    _check_rows(_json_rows(capsys, tmp_path / "sd.pt"), sd)
    torch.save({"model": sd, "step": 3}, tmp_path / "ckpt.pth")  # a training checkpoint
    assert set(_json_rows(capsys, tmp_path / "ckpt.pth")) == {"model.0.weight", "model.3.weight"}
    torch.save(model, tmp_path / "model.pt")  # the whole module, pickled: refused unless trusted
    rc, _, err = _run_cli(capsys, tmp_path / "model.pt", "--json")
    assert rc == 2 and "--trust-pickle" in err
    _check_rows(_json_rows(capsys, tmp_path / "model.pt", "--trust-pickle"), sd)


def test_cli_measure_safetensors_and_taps(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    safetensors.save_file(sd, str(tmp_path / "m.safetensors"))
    _check_rows(_json_rows(capsys, tmp_path / "m.safetensors"), sd)
    rows = _json_rows(capsys, tmp_path / "m.safetensors", "--conv-reading", "taps")
    ref = rank_measures(as_matrix(sd["0.weight"], "taps"))
    assert rows["0.weight"]["matrix"] == "9 x 8x3"
    for k in MEASURES:
        assert rows["0.weight"][k] == pytest.approx(float(ref[k].double().mean()), rel=1e-12), k
    assert rows["3.weight"]["effective_rank"] == pytest.approx(float(effective_rank(sd["3.weight"])))


def test_cli_measure_table(tmp_path, capsys):
    torch.save(_model().state_dict(), tmp_path / "sd.pt")
    rc, out, _ = _run_cli(capsys, tmp_path / "sd.pt")
    assert rc == 0
    lines = out.strip().splitlines()
    header = lines[0]
    for col in ("name", "shape", "matrix", *MEASURES):
        assert col in header
    assert any(line.startswith("| 0.weight | 8x3x3x3 | 8x27 |") for line in lines)
    assert not any("0.bias" in line for line in lines)


def test_cli_measure_errors(tmp_path, capsys):
    rc, _, err = _run_cli(capsys, tmp_path / "missing.pt")
    assert rc == 2 and "no such file" in err
    (tmp_path / "w.txt").write_text("1 2\n3 4\n")
    rc, _, err = _run_cli(capsys, tmp_path / "w.txt")
    assert rc == 2 and "unsupported file type '.txt'" in err and ".safetensors" in err
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    rc, _, err = _run_cli(capsys, tmp_path / "bad.pt")
    assert rc == 2 and "could not read" in err
    np.save(tmp_path / "v.npy", np.ones(3))
    rc, _, err = _run_cli(capsys, tmp_path / "v.npy")
    assert rc == 1 and "no tensor with 2 or more dimensions" in err
    np.savez(tmp_path / "nan.npz", good=np.eye(3), bad=np.array([[np.nan, 1.0], [0.0, 1.0]]))
    rows = _json_rows(capsys, tmp_path / "nan.npz")
    assert rows["good"]["numerical_rank"] == 3 and "NaN" in rows["bad"]["error"]


def test_cli_measure_takes_a_subset_of_measures_and_the_fast_stable_rank(tmp_path, capsys):
    # --measures reaches the library: only those columns, the same values; with --fast the
    # stable rank alone takes its own route (no tail), its bar holding the exact value
    A = torch.randn(300, 800, generator=torch.Generator().manual_seed(1))
    torch.save({"w": A}, tmp_path / "w.pt")
    ref = rank_measures(A, ["stable_rank", "effective_rank"])
    row = _json_rows(capsys, tmp_path / "w.pt", "--measures", "stable_rank", "effective_rank")["w"]
    assert set(row) & set(MEASURES) == {"stable_rank", "effective_rank"}
    for k in ("stable_rank", "effective_rank"):
        assert row[k] == pytest.approx(float(ref[k]), rel=1e-12)
    fast = _json_rows(capsys, tmp_path / "w.pt", "--fast", "--measures", "stable_rank")["w"]
    assert set(fast) & set(MEASURES) == {"stable_rank"}
    assert 0 < fast["stable_rank_error"] <= 1e-2 * fast["stable_rank"]
    assert abs(fast["stable_rank"] - float(ref["stable_rank"])) <= fast["stable_rank_error"]
    rc, _, err = _run_cli(capsys, tmp_path / "w.pt", "--fast", "--measures", "numerical_rank")
    assert rc == 2 and "does not estimate ['numerical_rank']" in err
    rc, _, err = _run_cli(capsys, tmp_path / "w.pt", "--measures", "bogus")
    assert rc == 2 and "unknown measure(s) ['bogus']" in err and "stable_rank" in err
