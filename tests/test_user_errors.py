"""Every user mistake is one `rankbias: error:` line and exit status 2, never a traceback;
a tensor that cannot be read is a row with an `error`, and the others are still measured."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from rankbias import cli, rank_measures, rank_report
from rankbias.analysis import measure_tensors
from rankbias.errors import InvalidParameterError, RankbiasError, UnsupportedError
from rankbias.framework.config import ConfigError


def one_error_line(capsys, argv: list[str]) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("rankbias: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), path)
    return str(path)


def test_one_error_type_for_a_bad_argument():
    assert issubclass(ConfigError, InvalidParameterError)
    assert issubclass(InvalidParameterError, RankbiasError) and issubclass(InvalidParameterError, ValueError)
    with pytest.raises(InvalidParameterError, match="unknown measure"):
        rank_measures(torch.eye(3), measures=["bogus_rank"])
    with pytest.raises(InvalidParameterError, match="method"):
        rank_measures(torch.eye(3), method="qr")


def test_unknown_measure_is_one_line(tiny_model, tmp_path, capsys):
    line = one_error_line(capsys, ["analyze", tiny_model, "--trust-pickle", "--measures", "bogus_rank",
                                   "--out", str(tmp_path / "o")])
    assert "'bogus_rank'" in line and "accepted:" in line and "stable_rank" in line


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", ""])
def test_unparseable_device_is_one_line(device, tiny_model, tmp_path, capsys):
    line = one_error_line(capsys, ["analyze", tiny_model, "--trust-pickle", "--device", device,
                                   "--out", str(tmp_path / "o")])
    assert f"device: got {device!r}" in line and "'cpu'" in line
    assert not (tmp_path / "o").exists()  # refused before anything is computed or written


def test_corrupt_cifar10_batches_are_one_line(tiny_model, tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle\x00\x01")
    line = one_error_line(capsys, ["analyze", tiny_model, "--trust-pickle", "--data", "cifar10",
                                   "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    assert "cifar-10-batches-py is incomplete or corrupt" in line and "data_batch_1..5" in line


def test_model_on_the_meta_device_is_refused(tmp_path, capsys):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for kwargs in ({}, {"data": torch.randn(8, 4)}, {"device": "cpu"}):
        with pytest.raises(UnsupportedError, match="meta device"):
            rank_report(model, **kwargs)
    torch.save(model, tmp_path / "meta.pt")
    line = one_error_line(capsys, ["analyze", str(tmp_path / "meta.pt"), "--trust-pickle",
                                   "--data", "random:4", "--out", str(tmp_path / "o")])
    assert "4 parameter(s)/buffer(s) on the meta device" in line and "load_state_dict" in line


def _mixed_file(path):
    torch.manual_seed(0)
    dense, other, a = torch.randn(6, 5), torch.randn(4, 3), torch.randn(6, 5)
    with warnings.catch_warnings():  # torch's notes on sparse CSR (beta) and quantization (deprecated)
        warnings.simplefilter("ignore")
        torch.save({"dense": dense, "coo": a.to_sparse(), "csr": a.to_sparse_csr(),
                    "q": torch.quantize_per_tensor(a, 0.1, 0, torch.qint8), "other": other}, path)
    return {"dense": dense, "other": other}


def test_measure_reports_unreadable_tensors_and_measures_the_rest(tmp_path, capsys):
    good = _mixed_file(tmp_path / "mixed.pt")
    rc = cli.main(["measure", str(tmp_path / "mixed.pt"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err
    assert err.strip().splitlines() == ["rankbias: 3 of 5 tensors not measured (see the error column)"]

    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == ["dense", "coo", "csr", "q", "other"]
    for name, t in good.items():  # the dense tensors beside the bad ones, read independently
        ref = rank_measures(t)
        assert "error" not in rows[name]
        assert rows[name]["stable_rank"] == pytest.approx(float(ref["stable_rank"]), rel=1e-12)
        assert rows[name]["numerical_rank"] == int(ref["numerical_rank"])
    assert "sparse_coo tensor is not read" in rows["coo"]["error"] and ".to_dense()" in rows["coo"]["error"]
    assert "sparse_csr tensor is not read" in rows["csr"]["error"]
    assert "quantized tensor (qint8)" in rows["q"]["error"] and ".dequantize()" in rows["q"]["error"]
    assert all(k not in rows["q"] for k in ("stable_rank", "effective_rank"))


def test_measure_exits_1_when_no_tensor_could_be_measured(tmp_path, capsys):
    torch.save({"coo": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    assert cli.main(["measure", str(tmp_path / "sparse.pt")]) == 1
    out, err = capsys.readouterr()
    assert "| coo |" in out and "1 of 1 tensors not measured" in err and "Traceback" not in err


def test_a_numpy_entry_torch_cannot_wrap_does_not_lose_the_file(tmp_path):
    # big-endian arrays (torch cannot wrap them) are converted; text arrays are not tensors
    np.savez(tmp_path / "w.npz", good=np.eye(3), be=np.diag([3.0, 2.0, 1.0]).astype(">f8"),
             text=np.array([["a", "b"], ["c", "d"]]))
    rows = {r["name"]: r for r in measure_tensors(tmp_path / "w.npz")}
    assert sorted(rows) == ["be", "good"]
    assert rows["be"]["stable_rank"] == pytest.approx(14 / 9, rel=1e-12)  # ||A||_F^2 / ||A||_2^2
    assert rows["good"]["numerical_rank"] == 3


def test_rank_report_rows_of_unreadable_weights_do_not_hide_the_others():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight = nn.Parameter(model[1].weight.detach().to_sparse(), requires_grad=False)
    df = rank_report(model).set_index("name")
    assert "sparse_coo tensor is not read" in df.loc["1", "error"]
    assert df.loc["0", "error"] == ""
    assert df.loc["0", "stable_rank"] == pytest.approx(float(rank_measures(model[0].weight)["stable_rank"]))
