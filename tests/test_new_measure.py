"""A new measure is one ``MeasureSpec`` entry: every consumer finds it, with no other edit.

The three measures below are registered through the public ``register_measure``
(and removed after each test), then looked for in ``rank_measures``,
``rank_report`` (weights under the three conv readings, embeddings, the data
row), ``KernelSpectrum``, ``RankTracker`` and ``rankbias measure --json``. Each
expected value is computed here with numpy, from its definition.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from rankbias import KernelSpectrum, RankTracker, rank_measures, rank_report
from rankbias.cli import main as cli_main
from rankbias.errors import InvalidParameterError
from rankbias.measures import SPECS, MeasureSpec, register_measure, unregister_measure


def _top_share(sp):
    return sp.s1 / sp.total[..., 0]


def _half_count(sp):
    return (sp.s > sp.s1.unsqueeze(-1) / 2).sum(-1)


def _sqrt_pr(sp):
    tr, tr2 = sp.centered_power_sums
    return torch.where(
        tr2 > 0, tr / tr2.clamp_min(torch.finfo(tr2.dtype).tiny).sqrt(), torch.zeros_like(tr)
    )


NEW = (
    # a float of the singular values
    MeasureSpec("top_share", _top_share, None, lambda m, n, e: 1.0, definition="s_1 / sum s"),
    # a count: an integer column, an int in JSON
    MeasureSpec(
        "half_count",
        _half_count,
        None,
        lambda m, n, e: float(min(m, n)),
        integer=True,
        definition="#{s_i > s_1 / 2}",
    ),
    # a function of the centred rows' covariance, not of s
    MeasureSpec(
        "sqrt_pr",
        _sqrt_pr,
        None,
        lambda m, n, e: float(max(min(m - 1, n), 1)) ** 0.5,
        centered=True,
        definition="sqrt of the participation ratio",
    ),
)
NAMES = [s.name for s in NEW]


def _reference(M: np.ndarray) -> dict[str, float]:
    """The three measures of one matrix, from numpy's SVD and covariance."""
    s = np.linalg.svd(M, compute_uv=False)
    C = M - M.mean(0, keepdims=True)
    lam = np.linalg.eigvalsh(C.T @ C)
    pr = lam.sum() ** 2 / np.square(lam).sum()
    return {
        "top_share": s[0] / s.sum(),
        "half_count": int((s > s[0] / 2).sum()),
        "sqrt_pr": math.sqrt(pr),
    }


@pytest.fixture
def new_measures():
    for spec in NEW:
        register_measure(spec)
    try:
        yield NAMES
    finally:
        for name in NAMES:
            if name in SPECS:
                unregister_measure(name)


def _close(got, want):
    assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-12)


def test_rank_measures_computes_a_registered_measure(new_measures):
    A = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = _reference(A.numpy())
    for method in ("svd", "gram", "auto"):
        got = rank_measures(A, method=method)
        assert list(got)[-3:] == NAMES
        for k in NAMES:
            _close(got[k], ref[k])
    assert got["half_count"].dtype == torch.int64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6)
    ).double()


def test_rank_report_weight_rows_under_every_conv_reading(new_measures):
    model = _model()
    W = model[0].weight.detach().numpy()  # (4, 3, 3, 3)
    taps = [W[:, :, i, j] for i in range(3) for j in range(3)]
    block = np.zeros((9 * 4, 9 * 3))
    for t, Wt in enumerate(taps):
        block[4 * t : 4 * t + 4, 3 * t : 3 * t + 3] = Wt
    want = {
        "flatten": _reference(W.reshape(4, -1)),
        "taps": {k: np.mean([_reference(Wt)[k] for Wt in taps]) for k in NAMES},
        "pooled": _reference(block),
    }
    for reading, ref in want.items():
        df = rank_report(model, conv_reading=reading).set_index("name")
        for k in NAMES:
            _close(df.loc["0", k], ref[k])
            _close(df.loc["3", k], _reference(model[3].weight.detach().numpy())[k])
            assert df.loc["0", f"{k}_normalized"] == pytest.approx(
                df.loc["0", k] / SPECS[k].max_value(*df.loc["0", "matrix_shape"][-2:], 0.0)
            )
    assert str(rank_report(model, measures=NAMES)["half_count"].dtype) == "Int64"


def test_rank_report_embedding_and_data_rows(new_measures):
    model = _model()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    df = rank_report(model, x, measures=NAMES).set_index("name")
    Z = (
        model[3](model[2](model[1](model[0](x)))).detach().numpy()
    )  # (5, 6): the last layer's output
    K = Z @ Z.T
    for k in NAMES:
        _close(df.loc["3", f"emb_{k}"], _reference(K)[k])
        _close(
            df.loc["<input>", f"emb_{k}"],
            _reference(x.reshape(5, -1).numpy() @ x.reshape(5, -1).numpy().T)[k],
        )
    assert str(df["emb_half_count"].dtype) == "Int64"


def test_kernel_spectrum_streams_a_registered_measure(new_measures):
    Z = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ks = KernelSpectrum(4)
    for chunk in Z.split(4):
        ks.update(chunk)
    kernel, own = ks.measures(NAMES), ks.embedding_measures(NAMES)
    for k in NAMES:
        _close(kernel[k], _reference((Z @ Z.T).numpy())[k])
        _close(own[k], _reference(Z.numpy())[k])


def test_rank_tracker_records_a_registered_measure(new_measures):
    model = _model()
    tracker = RankTracker(measures=NAMES, layers=["3"])
    tracker.step(model)
    rec = tracker.history_[-1]
    ref = _reference(model[3].weight.detach().numpy())
    for k in NAMES:
        _close(rec[f"3/{k}"], ref[k])


def test_cli_measure_json_lists_a_registered_measure(new_measures, tmp_path, capsys):
    W = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "w.pt"
    torch.save({"w": W}, path)
    assert cli_main(["measure", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    ref = _reference(W.numpy())
    for k in NAMES:
        _close(row[k], ref[k])
    assert isinstance(row["half_count"], int)
    assert cli_main(["measure", str(path)]) == 0  # the table has a column per measure
    header = capsys.readouterr().out.splitlines()[0]
    assert all(k in header for k in NAMES)


def test_registration_refuses_a_taken_name_and_removes_only_added_ones(new_measures):
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_measure(NEW[0])
    with pytest.raises(InvalidParameterError, match="not a registered added measure"):
        unregister_measure("stable_rank")
    with pytest.raises(InvalidParameterError, match="expected a MeasureSpec"):
        register_measure("top_share")
    assert unregister_measure("top_share") is NEW[0]
    assert "top_share" not in SPECS
