"""rank_report / RankTracker on the modules people use: embeddings of any module,
attention (Q/K/V, heads, out_proj, weights used functionally), expanded models,
and the pooled (WeightWatcher) conv reading, each against an exact reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankbias.analysis import RankTracker, rank_report, weight_entries
from rankbias.framework.config import ConfigError
from rankbias.measures import MEASURES, KernelSpectrum, as_matrix, rank_measures
from rankbias.overparam import collapse, overparameterize


def kernel(Z: torch.Tensor, names=MEASURES) -> dict[str, float]:
    ks = KernelSpectrum().update(Z.double())
    return {k: float(v) for k, v in ks.measures(names).items()}


def assert_emb(row, Z: torch.Tensor, rel=1e-9):
    assert row["emb_matrix_shape"] == tuple(Z.shape)
    for k, v in kernel(Z).items():
        assert float(row[f"emb_{k}"]) == pytest.approx(v, rel=rel, abs=1e-12), k


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 5),
    )


# ---------------------------------------------------------------- embeddings


def test_embeddings_of_any_module_input_or_output():
    model = cnn().eval()
    x = torch.randn(20, 3, 8, 8)
    with torch.no_grad():
        feats = model[:4](x)  # (20, 24): the input of the first Linear
        act = model[:6](x)  # (20, 12): the ReLU's output, the input of the last Linear
    df = rank_report(model, x, layers=[], embeddings=["4:input", "5", "6:input"], progress=False)
    rows = df.set_index("name")
    assert list(df["name"]) == ["<input>", "4:input", "5:output", "6:input"]
    assert_emb(rows.loc["4:input"], feats)
    assert_emb(rows.loc["5:output"], act)
    assert_emb(rows.loc["6:input"], act)
    assert rows.loc["5:output", "type"] == "ReLU" and (df["error"] == "").all()
    # globs, and the same module asked twice is one row
    df = rank_report(model, x, layers=[], embeddings=["[45]", "5:output"], progress=False)
    assert list(df["name"]) == ["<input>", "4:output", "5:output"]


def test_embedding_errors_are_clear():
    model = cnn()
    with pytest.raises(ConfigError, match=r"\['fcc'\] match no module.*modules are: <root>, 0"):
        rank_report(model, torch.randn(2, 3, 8, 8), embeddings=["fcc"])
    with pytest.raises(ConfigError, match="needs data"):
        rank_report(model, embeddings=["4:input"])
    with pytest.raises(ConfigError, match=r"'layer_1': did you mean 'layer1'"):
        weight_entries(_named(layer1=nn.Linear(2, 2)), ["layer_1"])


def _named(**mods) -> nn.Module:
    m = nn.Module()
    for k, v in mods.items():
        setattr(m, k, v)
    return m


def test_token_index_keeps_one_token_of_sequence_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).eval()
    x = torch.randn(5, 7, 6)  # (B, T, D)
    with torch.no_grad():
        h = model[:2](x)
    cls = rank_report(model, x, token_index=0, embeddings=["1"], include_data=False, progress=False)
    assert_emb(cls.set_index("name").loc["1:output"], h[:, 0])
    every = rank_report(model, x, embeddings=["1"], include_data=False, progress=False)
    assert_emb(every.set_index("name").loc["1:output"], h.reshape(-1, 8))
    bad = rank_report(model, x, token_index=9, layers=["0"], include_data=False, progress=False)
    assert "token_index=9 is out of range" in bad.loc[0, "error"]


# ----------------------------------------------------------------- attention


class Attn(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(12, 3, batch_first=batch_first)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.mha(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_reports_q_k_v_and_out_proj_embeddings(batch_first):
    torch.manual_seed(0)
    model = Attn(batch_first).eval()
    x = torch.randn(4, 5, 12) if batch_first else torch.randn(5, 4, 12)
    df = rank_report(model, x, include_data=False, progress=False)
    rows = df.set_index("name")
    assert list(df["name"]) == ["mha.q", "mha.k", "mha.v", "mha.out_proj", "head"]
    assert (df["error"] == "").all()  # out_proj is no longer "not called"
    W, b = model.mha.in_proj_weight.detach(), model.mha.in_proj_bias.detach()
    xb = x if batch_first else x.transpose(0, 1)  # (B, T, E)
    for i, part in enumerate("qkv"):
        Wi = W[12 * i:12 * (i + 1)]
        assert rows.loc[f"mha.{part}", "type"] == f"MultiheadAttention[{part}]"
        assert rows.loc[f"mha.{part}", "stable_rank"] == pytest.approx(float(rank_measures(Wi)["stable_rank"]))
        assert_emb(rows.loc[f"mha.{part}"], F.linear(xb, Wi, b[12 * i:12 * (i + 1)]).reshape(-1, 12), rel=1e-6)
    with torch.no_grad():
        attn_out = model.mha(x, x, x, need_weights=False)[0]
    assert_emb(rows.loc["mha.out_proj"], attn_out.reshape(-1, 12), rel=1e-6)

    heads = rank_report(model, x, attention_heads=True, layers=["mha*"], include_data=False, progress=False)
    names = list(heads["name"])
    assert names[:3] == ["mha.q.h0", "mha.q.h1", "mha.q.h2"] and len(names) == 10
    h = heads.set_index("name").loc["mha.k.h2"]
    Wk2 = W[12 + 8:12 + 12]  # head_dim 4: the third head of K
    assert h["weight_shape"] == (4, 12)
    assert h["effective_rank"] == pytest.approx(float(rank_measures(Wk2)["effective_rank"]))
    assert_emb(h, F.linear(xb, Wk2, b[20:24]).reshape(-1, 4), rel=1e-6)
    # the tracker reads the same rows
    rec = RankTracker(measures=["stable_rank"]).measure(model)
    assert set(rec) == {f"{n}/stable_rank" for n in df["name"]}


class FunctionalQKV(nn.Module):
    """As torchvision's swin attention: the weights of qkv and proj are applied with F.linear."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
        a = torch.softmax(q @ k.mT, -1) @ v
        return self.mlp(F.linear(a, self.proj.weight, self.proj.bias))


def test_weights_used_functionally_are_measured_once():
    torch.manual_seed(0)
    model = FunctionalQKV().eval()
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        qkv = F.linear(x, model.qkv.weight, model.qkv.bias)
        q, k, v = qkv.chunk(3, -1)
        proj = F.linear(torch.softmax(q @ k.mT, -1) @ v, model.proj.weight, model.proj.bias)
    rows = rank_report(model, x, include_data=False, progress=False).set_index("name")
    assert (rows["error"] == "").all()
    assert_emb(rows.loc["qkv"], qkv.reshape(-1, 24), rel=1e-6)
    assert_emb(rows.loc["proj"], proj.reshape(-1, 8), rel=1e-6)
    # mlp runs its own forward (which calls F.linear too): counted once, 18 tokens
    assert rows.loc["mlp", "emb_matrix_shape"] == (18, 8)


@pytest.mark.slow
def test_swin_t_attention_rows_are_complete():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.swin_t()
    df = rank_report(model, torch.randn(1, 3, 32, 32), layers=["features.1.0.*"],
                     measures=["stable_rank"], include_data=False, progress=False)
    assert list(df["name"])[:2] == ["features.1.0.attn.qkv", "features.1.0.attn.proj"]
    assert (df["error"] == "").all(), df["error"].tolist()


# ------------------------------------------------------------ expanded models


def test_expanded_layers_are_one_row_read_through_the_collapsed_weight():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    expanded = overparameterize(model, depth=3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(16, 3, 8, 8)
    df = rank_report(expanded, x, progress=False)
    ref = rank_report(collapse(expanded), x, progress=False)
    assert list(df["name"]) == list(ref["name"]) == ["<input>", "0", "3"]  # no factors
    assert list(df["type"])[1:] == ["OverparamConv2d", "OverparamLinear"]
    conv = df.set_index("name").loc["0"]
    assert conv["weight_shape"] == (8, 3, 3, 3) and conv["matrix_shape"] == (8, 27)
    assert conv["emb_matrix_shape"] == (16 * 6 * 6, 8)  # per position: (576, 8), not (768, 6)
    for col in [*MEASURES, *(f"emb_{k}" for k in MEASURES)]:
        np.testing.assert_allclose(df[col].astype(float), ref[col].astype(float), rtol=1e-5, err_msg=col)
    tracked = RankTracker(measures=["effective_rank"]).measure(expanded)
    assert list(tracked) == ["0/effective_rank", "3/effective_rank"]


# -------------------------------------------------------------- pooled taps


def test_pooled_reading_is_the_block_diagonal_of_the_taps():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, (2, 3)).double()
    W = conv.weight.detach()
    taps = as_matrix(W, "taps")  # (6, 7, 5)
    blocks = torch.block_diag(*taps.unbind(0))  # (42, 30)
    row = rank_report(conv, conv_reading="pooled", progress=False).iloc[0]
    assert row["matrix_shape"] == (42, 30)
    ref = rank_measures(blocks)
    for k in MEASURES:
        assert float(row[k]) == pytest.approx(float(ref[k]), rel=1e-10), k
    # the closed form of the pooled stable rank: ||W||_F^2 / max_t ||W_t||_2^2
    top = torch.linalg.matrix_norm(taps, ord=2).max()
    assert float(row["stable_rank"]) == pytest.approx(float(W.square().sum() / top**2), rel=1e-12)
    # per tap is the mean of the taps' own values: a different number
    per_tap = rank_report(conv, conv_reading="taps", progress=False).iloc[0]
    assert float(per_tap["stable_rank"]) == pytest.approx(float(rank_measures(taps)["stable_rank"].mean()))
    assert float(row["stable_rank"]) > 3 * float(per_tap["stable_rank"])
    # batched (a leading model dimension), as the tracker reads sweeps
    Ws = torch.stack([W, 2 * W.flip(0)])
    got = RankTracker(measures=list(MEASURES), conv_reading="pooled", batched=True).measure([Ws])
    for k in MEASURES:
        assert float(got[f"param0/{k}"][0]) == pytest.approx(float(ref[k]), rel=1e-10), k
    with pytest.raises(ConfigError, match="conv_reading must be one of 'flatten', 'taps', 'pooled'"):
        rank_report(conv, conv_reading="weightwatcher")
