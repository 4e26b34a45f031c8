"""rank_report and RankTracker against independent numpy computations."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import rankbias
from rankbias.analysis import DATA_ROW_NAME, RankTracker, rank_report, weight_layers

RTOL = 1e-7


# ------------------------------------------------------------ references (numpy)


def _spectrum_measures(s: np.ndarray, shape: tuple[int, int], n_rank: int) -> dict[str, float]:
    """The definitions of docs/measures.md, written out in numpy, from values s (descending)."""
    s = np.clip(np.sort(s)[::-1], 0, None)
    p = s / s.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    q = s / s.sum() + 1e-7
    return {
        "stable_rank": float((s**2).sum() / s[0] ** 2),
        "effective_rank": math.exp(h),
        "entropy_rank": h,
        "numerical_rank": n_rank,
        "rankme": math.exp(float(-(q * np.log(q)).sum())),
    }


def _pr(Z: np.ndarray) -> float:
    lam = np.clip(np.linalg.eigvalsh(np.cov(Z, rowvar=False)), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def np_weight_measures(W: np.ndarray) -> dict[str, float]:
    s = np.linalg.svd(W, compute_uv=False)
    out = _spectrum_measures(s, W.shape, int(np.linalg.matrix_rank(W)))
    out["participation_ratio"] = _pr(W)
    return out


def np_kernel_measures(Z: np.ndarray, full_kernel: bool = False) -> dict[str, float]:
    """Measures of K = Z Z^T (N x N): its eigenvalues are s_i(Z)^2 (numpy SVD of
    the full embedding matrix), or, with ``full_kernel``, numpy's eigvalsh of K
    itself; the top min(N, d) of them (the rest are zero up to rounding).

    The kernel's participation ratio and RankMe depend on conventions for K's
    N - d zero eigenvalues and its centring (the definitions are silent), so for
    those two the reference is KernelSpectrum fed the full matrix at once:
    streaming must not change them."""
    N, d = Z.shape
    if full_kernel:
        lam = np.linalg.eigvalsh(Z @ Z.T)[::-1][: min(N, d)]
    else:
        lam = np.linalg.svd(Z, compute_uv=False) ** 2
    out = _spectrum_measures(lam, (N, N), int(np.linalg.matrix_rank(Z)))
    ks = rankbias.KernelSpectrum().update(torch.from_numpy(Z)).measures(["participation_ratio", "rankme"])
    out["participation_ratio"] = float(ks["participation_ratio"])
    out["rankme"] = float(ks["rankme"])
    return out


def max_possible(name: str, m: int, n: int) -> float:
    k = min(m, n)
    if name == "rankme":  # its maximum depends on eps; the library's own value
        return rankbias.measures.max_measure("rankme", (m, n))
    return {"entropy_rank": math.log(k), "participation_ratio": min(m - 1, n)}.get(name, k)


def assert_row(row, ref: dict[str, float], shape, prefix: str = "") -> None:
    for k, v in ref.items():
        got = row[prefix + k]
        if k == "numerical_rank":
            assert int(got) == v, (row["name"], k, got, v)
        else:
            assert got == pytest.approx(v, rel=RTOL, abs=1e-10), (row["name"], k, got, v)
        norm = row[f"{prefix}{k}_normalized"]
        assert norm == pytest.approx(v / max_possible(k, *shape), rel=RTOL), (row["name"], k)


# ------------------------------------------------------------------- models


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),   # (N, 6, 8, 8)
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2),    # (N, 4, 3, 3)
        nn.ReLU(),
        nn.Flatten(),                    # (N, 36)
        nn.Linear(36, 5),
    ).double()


def layer_outputs(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output by calling the layers one after another."""
    outs, h = {}, x
    with torch.no_grad():
        for i, layer in enumerate(model):
            h = layer(h)
            outs[str(i)] = h
    return outs


@pytest.fixture(scope="module")
def cnn_data():
    g = torch.Generator().manual_seed(1)
    return small_cnn(), torch.randn(40, 2, 8, 8, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------- weights


def test_weight_rows_match_numpy_svd(cnn_data):
    model, _ = cnn_data
    df = rank_report(model, progress=False)
    assert list(df["name"]) == ["0", "2", "5"]
    assert list(df["type"]) == ["Conv2d", "Conv2d", "Linear"]
    assert df.loc[0, "weight_shape"] == (6, 2, 3, 3) and df.loc[0, "matrix_shape"] == (6, 18)
    assert (df["error"] == "").all()
    for _, row in df.iterrows():
        W = dict(model.named_modules())[row["name"]].weight.detach().numpy()
        W = W.reshape(W.shape[0], -1)
        assert_row(row, np_weight_measures(W), W.shape)


def test_columns_follow_the_issue(cnn_data):
    model, x = cnn_data
    df = rank_report(model, x, measures=["stable_rank", "effective_rank"], progress=False)
    assert list(df.columns) == [
        "name", "type", "weight_shape", "matrix_shape",
        "stable_rank", "effective_rank", "stable_rank_normalized", "effective_rank_normalized",
        "emb_matrix_shape", "emb_stable_rank", "emb_effective_rank",
        "emb_stable_rank_normalized", "emb_effective_rank_normalized", "error",
    ]
    assert df.loc[0, "name"] == DATA_ROW_NAME and df.loc[0, "type"] == "data"


def test_taps_reading_is_the_mean_over_kernel_positions(cnn_data):
    model, _ = cnn_data
    df = rank_report(model, conv_reading="taps", measures=["effective_rank", "stable_rank"], progress=False)
    W = model[2].weight.detach().numpy()  # (4, 6, 3, 3)
    taps = [np_weight_measures(W[:, :, i, j]) for i in range(3) for j in range(3)]
    row = df[df["name"] == "2"].iloc[0]
    assert row["matrix_shape"] == (9, 4, 6)
    for k in ("effective_rank", "stable_rank"):
        mean = np.mean([t[k] for t in taps])
        assert row[k] == pytest.approx(mean, rel=RTOL)
        assert row[f"{k}_normalized"] == pytest.approx(mean / 4, rel=RTOL)


def test_grouped_measurement_equals_one_layer_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(12, 12) for _ in range(5)], nn.Linear(12, 3), nn.Embedding(7, 12))
    df = rank_report(model, progress=False)
    for _, row in df.iterrows():
        W = dict(model.named_modules())[row["name"]].weight.detach()
        ref = rankbias.rank_measures(W)
        for k, v in ref.items():
            assert row[k] == pytest.approx(float(v), rel=1e-12)
    assert set(df["type"]) == {"Linear", "Embedding"}


def test_layer_selection():
    model = small_cnn()
    assert [n for n, _ in weight_layers(model, "0")] == ["0"]
    assert [n for n, _ in weight_layers(model, nn.Conv2d)] == ["0", "2"]
    assert [n for n, _ in weight_layers(model, ["5", nn.Conv2d])] == ["0", "2", "5"]
    assert [n for n, _ in weight_layers(model, lambda n, m: m.out_features == 5 if hasattr(m, "out_features") else False)] == ["5"]
    with pytest.raises(ValueError, match="match no layer.*0, 2, 5"):
        rank_report(model, layers=["conv9"])


def test_bad_arguments_are_clear_errors(cnn_data):
    model, x = cnn_data
    with pytest.raises(ValueError, match="conv_reading"):
        rank_report(model, conv_reading="rows")
    with pytest.raises(ValueError, match="unknown measure"):
        rank_report(model, measures=["rank"])
    with pytest.raises(TypeError, match="Dataset or a DataLoader"):
        rank_report(model, data=[1, 2, 3])
    with pytest.raises(TypeError, match="nn.Module"):
        rank_report(np.zeros((3, 3)))
    # the data does not fit the model: which layer, which shape
    with pytest.raises(ValueError, match=r"shape \(40, 3, 8, 8\) in layer '0'"):
        rank_report(model, torch.randn(40, 3, 8, 8, dtype=torch.float64), progress=False)


# ----------------------------------------------------------------- embeddings


@pytest.mark.parametrize("reading", ["position", "sample"])
def test_embedding_rows_match_full_embedding_matrix(cnn_data, reading):
    model, x = cnn_data
    df = rank_report(model, x, embedding_reading=reading, batch_size=7, progress=False)
    outs = layer_outputs(model, x)
    for _, row in df.iterrows():
        if row["name"] == DATA_ROW_NAME:
            Z = x.reshape(len(x), -1)
        else:
            out = outs[row["name"]]
            if out.ndim == 4 and reading == "position":
                Z = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
            else:
                Z = out.reshape(len(x), -1)
        Z = Z.numpy()
        assert row["emb_matrix_shape"] == Z.shape
        # the N x N kernel itself where it is small (per sample: N = 40)
        assert_row(row, np_kernel_measures(Z, full_kernel=len(Z) <= 100), Z.shape, prefix="emb_")


def test_streamed_equals_one_batch_and_every_data_form(cnn_data):
    model, x = cnn_data
    from torch.utils.data import DataLoader, TensorDataset

    y = torch.arange(len(x))
    ref = rank_report(model, x, batch_size=len(x), progress=False)
    for data, bs in [(x, 3), (TensorDataset(x, y), 11), (DataLoader(TensorDataset(x, y), batch_size=6), 1)]:
        df = rank_report(model, data, batch_size=bs, progress=False)
        emb = [c for c in df.columns if c.startswith("emb_") and c != "emb_matrix_shape"]
        np.testing.assert_allclose(df[emb].astype(float), ref[emb].astype(float), rtol=1e-9)


def test_rank_deficient_embedding_is_seen():
    # a 1x1 conv from 3 to 8 channels: its per-position outputs span 3 dimensions
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Flatten(), nn.Linear(8 * 16, 4))
    df = rank_report(model, torch.randn(10, 3, 4, 4), progress=False)
    row = df[df["name"] == "0"].iloc[0]
    assert row["emb_matrix_shape"] == (160, 8)
    assert row["emb_numerical_rank"] == 3
    assert row["emb_numerical_rank_normalized"] == pytest.approx(3 / 8)


def test_sequence_outputs_use_tokens_as_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 4))
    ids = torch.randint(0, 11, (5, 7))
    df = rank_report(model, ids, measures=["effective_rank"], progress=False, include_data=False)
    with torch.no_grad():
        Z = model(ids).reshape(-1, 4).double().numpy()
    row = df[df["name"] == "1"].iloc[0]
    assert row["emb_matrix_shape"] == (35, 4)
    assert row["emb_effective_rank"] == pytest.approx(np_kernel_measures(Z)["effective_rank"], rel=1e-6)


def test_too_wide_embeddings_get_an_error_note(cnn_data):
    model, x = cnn_data
    df = rank_report(model, x, embedding_reading="sample", max_embedding_dim=100, progress=False)
    row = df[df["name"] == "0"].iloc[0]  # (N, 6*8*8) = 384 wide
    assert "embedding dimension 384 > max_embedding_dim=100" in row["error"]
    assert math.isnan(row["emb_effective_rank"])
    assert df[df["name"] == "5"].iloc[0]["error"] == ""


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_layer_gets_an_error_row_and_the_report_carries_on(bad):
    model = small_cnn()
    with torch.no_grad():
        model[2].weight[1, 0, 0, 0] = bad
    x = torch.randn(12, 2, 8, 8, dtype=torch.float64)
    df = rank_report(model, x, progress=False)
    by = df.set_index("name")
    assert "weight contains 1 NaN/Inf" in by.loc["2", "error"]
    assert math.isnan(by.loc["2", "effective_rank"])
    # the layers before are complete; the ones after still have their weight measures
    assert by.loc["0", "error"] == "" and np.isfinite(by.loc["0", "emb_effective_rank"])
    assert np.isfinite(by.loc["5", "effective_rank"])
    assert "embedding: output contains NaN/Inf" in by.loc["5", "error"]
    W = model[5].weight.detach().numpy()
    assert by.loc["5", "stable_rank"] == pytest.approx(np_weight_measures(W)["stable_rank"], rel=RTOL)


def test_model_mode_and_hooks_are_restored(cnn_data):
    model, x = cnn_data
    model.train()
    rank_report(model, x, progress=False)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_import_rankbias_does_not_import_pandas():
    code = (
        "import sys, rankbias; rankbias.RankTracker; "
        "assert 'pandas' not in sys.modules, 'pandas imported'; "
        "assert callable(rankbias.rank_report)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------- tracker


def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_tracker_as_train_callback(tmp_path):
    from rankbias.training import train

    model = _mlp()
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
    snapshots = {}

    class Snap:
        def on_log(self, state):
            snapshots[state.step] = [p.detach().clone() for p in model.parameters()]

    tracker = RankTracker(every=10, run=tmp_path, measures=["effective_rank", "numerical_rank"])
    res = train(lambda step: ((model(X) - Y) ** 2).mean(), model, steps=30, log_every=5, lr=0.2,
                callbacks=[tracker, Snap()])
    rows = [r for r in res.history if "0/effective_rank" in r]
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    for r in rows:
        W0, W2 = snapshots[r["step"]][0], snapshots[r["step"]][2]
        assert r["0/effective_rank"] == pytest.approx(np_weight_measures(W0.double().numpy())["effective_rank"], rel=1e-6)
        assert r["2/effective_rank"] == pytest.approx(np_weight_measures(W2.double().numpy())["effective_rank"], rel=1e-6)
        assert r["2/numerical_rank"] == 3
    # weights changed, so did the measure
    assert rows[0]["0/effective_rank"] != rows[-1]["0/effective_rank"]
    csv = pd.read_csv(tmp_path / "rank_metrics.csv")
    assert list(csv["step"]) == [0, 10, 20, 30]
    np.testing.assert_allclose(csv["0/effective_rank"], [r["0/effective_rank"] for r in rows])


def test_tracker_in_a_plain_loop(tmp_path):
    from rankbias.framework.runs import RunDir

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.randn(16, 6)
    tracker = RankTracker(layers=["2"], measures=["stable_rank"], every=3, run=RunDir(tmp_path / "r"))
    expected = {}
    for _ in range(10):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
        tracker.step(model)  # the one line in the loop
        expected[tracker.step_] = np_weight_measures(model[2].weight.detach().double().numpy())["stable_rank"]
    hist = tracker.to_frame()
    assert list(hist["step"]) == [3, 6, 9] and list(hist.columns) == ["step", "2/stable_rank"]
    for _, r in hist.iterrows():
        assert r["2/stable_rank"] == pytest.approx(expected[int(r["step"])], rel=1e-6)
    assert len(pd.read_csv(tmp_path / "r" / "rank_metrics.csv")) == 3


def test_tracker_batched_models_gives_per_model_values():
    from rankbias.training import train

    g = torch.Generator().manual_seed(0)
    W = (torch.randn(3, 5, 4, generator=g) * torch.tensor([1.0, 0.1, 3.0]).view(3, 1, 1)).requires_grad_()
    T = torch.randn(3, 5, 4, generator=g)
    tracker = RankTracker(measures=["effective_rank"], batched=True)
    res = train(lambda s: ((W - T) ** 2).sum((1, 2)), [W], steps=4, log_every=2, lr=0.05, callbacks=[tracker])
    last = [r for r in res.history if r["step"] == 4]
    assert [r["model"] for r in last] == [0, 1, 2]
    for r in last:
        ref = np_weight_measures(W[r["model"]].detach().double().numpy())["effective_rank"]
        assert r["param0/effective_rank"] == pytest.approx(ref, rel=1e-6)
    assert tracker.to_frame()["model"].tolist()[-3:] == [0, 1, 2]


def test_tracker_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _mlp()
    with RankTracker(measures=["effective_rank"], every=2, tensorboard=tmp_path / "tb") as tracker:
        for _ in range(4):
            tracker.step(model)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("rank/0/effective_rank")
    assert [e.step for e in events] == [2, 4]
    assert events[0].value == pytest.approx(tracker.history_[0]["0/effective_rank"], rel=1e-6)


def test_tracker_tensorboard_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"rankbias\[tensorboard\]"):
        RankTracker(tensorboard=tmp_path / "tb")


def test_tracker_validates():
    with pytest.raises(ValueError, match="every"):
        RankTracker(every=0)
    with pytest.raises(ValueError, match="unknown measure"):
        RankTracker(measures=["rnk"])


def test_centered_kernel_removes_the_mean_embedding(cnn_data):
    model, x = cnn_data
    df = rank_report(model, x, centered=True, embedding_measures=["stable_rank", "effective_rank"],
                     include_data=False, progress=False)
    Z = layer_outputs(model, x)["5"].numpy()
    s2 = np.linalg.svd(Z - Z.mean(0), compute_uv=False) ** 2
    p = s2 / s2.sum()
    row = df[df["name"] == "5"].iloc[0]
    assert row["emb_stable_rank"] == pytest.approx((s2**2).sum() / s2[0] ** 2, rel=1e-7)
    assert row["emb_effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-7)


def test_taps_numerical_rank_keeps_the_fractional_mean():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        model[0].weight[:, :, 0, 0] = 0  # one of the 9 taps is the zero matrix (rank 0)
    df = rank_report(model, conv_reading="taps", measures=["numerical_rank"], progress=False)
    assert df.loc[0, "numerical_rank"] == pytest.approx(8 * 3 / 9)
    flat = rank_report(model, measures=["numerical_rank"], progress=False)
    assert str(flat["numerical_rank"].dtype) == "Int64" and flat.loc[0, "numerical_rank"] == 4
