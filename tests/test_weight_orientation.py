"""Every weight is read as the matrix of its linear map, out x in, and none is missed.

Each reading is checked against an independent one: the Jacobian of the layer's
own forward pass (or of the torch function it calls), or, where a layer's
forward is not linear in one matrix (recurrent gates), torch's documented
storage layout.
"""

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from rankbias.analysis import RankTracker, rank_report, register_weight_reading, weight_entries
from rankbias.analysis.readings import FOREIGN, READINGS, reading_of
from rankbias.framework.config import ConfigError
from rankbias.measures import as_matrix, rank_measures
from rankbias.overparam import OverparamConv1D, OverparamConv2d, OverparamLinear

DOCS = Path(__file__).resolve().parents[1] / "docs" / "analysis.md"


def _conv_t(dim: int, **kw) -> nn.Module:
    k = (2, 3, 2)[:dim]
    return getattr(nn, f"ConvTranspose{dim}d")(4, 6, k, groups=2, **kw)


def _materialized(lazy: nn.Module, x: torch.Tensor) -> nn.Module:
    lazy(x)
    return lazy


def _rnn_base():
    return nn.RNNBase("GRU", 4, 6)


# The torch.nn classes that need constructor arguments, each built where its
# weights are most telling (groups, non-square kernels, kdim != embed_dim, ...).
SPECIAL = {
    "Conv1d": lambda: nn.Conv1d(4, 6, 3, groups=2),
    "Conv2d": lambda: nn.Conv2d(4, 6, (2, 3), groups=2),
    "Conv3d": lambda: nn.Conv3d(4, 6, (2, 3, 2), groups=2),
    "ConvTranspose1d": lambda: _conv_t(1),
    "ConvTranspose2d": lambda: _conv_t(2),
    "ConvTranspose3d": lambda: _conv_t(3),
    "LazyLinear": lambda: _materialized(nn.LazyLinear(6), torch.zeros(1, 4)),
    "LazyConv1d": lambda: _materialized(nn.LazyConv1d(6, 3, groups=2), torch.zeros(1, 4, 5)),
    "LazyConv2d": lambda: _materialized(nn.LazyConv2d(6, 3), torch.zeros(1, 4, 5, 5)),
    "LazyConv3d": lambda: _materialized(nn.LazyConv3d(6, 2), torch.zeros(1, 4, 3, 3, 3)),
    "LazyConvTranspose1d": lambda: _materialized(nn.LazyConvTranspose1d(6, 3, groups=2),
                                                 torch.zeros(1, 4, 5)),
    "LazyConvTranspose2d": lambda: _materialized(nn.LazyConvTranspose2d(6, (2, 3)),
                                                 torch.zeros(1, 4, 3, 3)),
    "LazyConvTranspose3d": lambda: _materialized(nn.LazyConvTranspose3d(6, 2),
                                                 torch.zeros(1, 4, 2, 2, 2)),
    "Bilinear": lambda: nn.Bilinear(3, 4, 5),
    "Embedding": lambda: nn.Embedding(7, 4),
    "EmbeddingBag": lambda: nn.EmbeddingBag(7, 4, mode="sum"),
    "RNN": lambda: nn.RNN(4, 6, num_layers=2, bidirectional=True),
    "LSTM": lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3),
    "GRU": lambda: nn.GRU(4, 6, num_layers=2),
    "RNNBase": _rnn_base,
    "RNNCell": lambda: nn.RNNCell(4, 6),
    "LSTMCell": lambda: nn.LSTMCell(4, 6),
    "GRUCell": lambda: nn.GRUCell(4, 6),
    "RNNCellBase": lambda: nn.RNNCellBase(4, 6, True, 2),
    "MultiheadAttention": lambda: nn.MultiheadAttention(6, 2, kdim=4, vdim=5),
    "LayerNorm": lambda: nn.LayerNorm((3, 4)),
    "RMSNorm": lambda: nn.RMSNorm((3, 4)),
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "TransformerEncoderLayer": lambda: nn.TransformerEncoderLayer(8, 2, 16),
    "TransformerDecoderLayer": lambda: nn.TransformerDecoderLayer(8, 2, 16),
    "TransformerEncoder": lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16), 1, enable_nested_tensor=False),
    "TransformerDecoder": lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 1),
    "Transformer": lambda: nn.Transformer(8, 2, 1, 1, 16),
    "AdaptiveLogSoftmaxWithLoss": lambda: nn.AdaptiveLogSoftmaxWithLoss(8, 10, [4]),
    "ParameterList": lambda: nn.ParameterList([nn.Parameter(torch.randn(3, 4))]),
    "ParameterDict": lambda: nn.ParameterDict({"a": nn.Parameter(torch.randn(3, 4))}),
    "DataParallel": lambda: nn.DataParallel(nn.Linear(4, 6)),
    "Unflatten": lambda: nn.Unflatten(1, (2, 2)),
}
GENERIC_ARGS = [(), (2,), (4, 6), (4, 6, 3)]


def _build(name: str, cls: type) -> nn.Module | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations, nested-tensor advice
        if name in SPECIAL:
            return SPECIAL[name]()
        for args in GENERIC_ARGS:
            try:
                return cls(*args)
            except Exception:
                continue
    return None


def _torch_nn_modules() -> dict[str, nn.Module]:
    classes = {n: c for n, c in vars(nn).items() if inspect.isclass(c) and issubclass(c, nn.Module)}
    built = {n: _build(n, c) for n, c in sorted(classes.items())}
    missing = [n for n, m in built.items() if m is None]
    assert not missing, f"torch.nn classes this test cannot build: {missing}; add them to SPECIAL"
    return built


def _hf_conv1d() -> nn.Module:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    return pytorch_utils.Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs: weight (4, 6)


def _extra_modules() -> dict[str, nn.Module]:
    g = torch.Generator().manual_seed(0)
    return {
        "HF Conv1D": _hf_conv1d(),
        "OverparamLinear": OverparamLinear.from_linear(nn.Linear(4, 6), generator=g),
        "OverparamConv1D": OverparamConv1D.from_conv1d(_hf_conv1d(), generator=g),
        "OverparamConv2d": OverparamConv2d.from_conv(nn.Conv2d(4, 6, (2, 3), groups=2), generator=g),
        "parametrised Linear": nn.utils.parametrizations.weight_norm(nn.Linear(4, 6)),
    }


# ------------------------------------------------------------ independent readings


def _grouped(J: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in, *k) Jacobian of a grouped conv -> each output channel's own group: (out, in/g, *k)."""
    out, cin = J.shape[:2]
    o = torch.arange(out)
    cols = (o // (out // groups))[:, None] * (cin // groups) + torch.arange(cin // groups)
    return J[o[:, None], cols]


def _conv_matrix(m: nn.Module) -> torch.Tensor:
    k = tuple(m.kernel_size)
    if getattr(m, "transposed", False):  # one input pixel spreads over a k-sized output patch: J (out, *k, in)
        x = torch.zeros(m.in_channels, *[1] * len(k))
        J = jacobian(lambda x: m(x[None])[0], x).reshape(m.out_channels, *k, m.in_channels)
        J = J.movedim(-1, 1)
    else:  # a k-sized input patch gives one output pixel: J (out, in, *k)
        x = torch.zeros(m.in_channels, *k)
        J = jacobian(lambda x: m(x[None]).reshape(-1), x)
    return _grouped(J, m.groups)


def _linear_matrix(m: nn.Module, n_in: int) -> torch.Tensor:
    return jacobian(lambda x: m(x[None])[0], torch.zeros(n_in))


def _bilinear_matrix(m: nn.Bilinear) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(m.in1_features), torch.arange(m.in2_features), indexing="ij")
    e1 = torch.eye(m.in1_features)[i.reshape(-1)]
    e2 = torch.eye(m.in2_features)[j.reshape(-1)]
    with torch.no_grad():
        y = m(e1, e2) - (m.bias if m.bias is not None else 0)  # (in1 * in2, out)
    return y.T  # out x (in1 * in2), column (i, j) = y(e_i, e_j)


def _mha_matrix(m: nn.MultiheadAttention, part: str) -> torch.Tensor:
    i = "qkv".index(part)
    dims = (m.embed_dim, m.kdim, m.vdim)
    xs = [torch.zeros(d) for d in dims]

    def proj(x):
        args = [x if j == i else xs[j] for j in range(3)]
        if m._qkv_same_embed_dim:
            return F._in_projection_packed(*args, m.in_proj_weight)[i]
        return F._in_projection(*args, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)[i]

    return jacobian(proj, xs[i])


def _recurrent_matrix(m: nn.Module, part: str) -> torch.Tensor:
    """A recurrent matrix, from the layout torch documents: (gates·hidden, in) with the
    gates stacked in row blocks (weight_hr: (proj, hidden)); the shape is checked
    here and the row blocks by the Jacobians of ``test_recurrent_rows_...``."""
    w = getattr(m, part)
    gates = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}.get(getattr(m, "mode", None))
    if isinstance(m, nn.RNNCellBase):  # RNNCellBase itself: built with num_chunks=2 in SPECIAL
        gates = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}.get(type(m), 2)
    H = m.hidden_size
    out_h = getattr(m, "proj_size", 0) or H
    if part.startswith("weight_hr"):
        assert tuple(w.shape) == (m.proj_size, H)
    elif part.startswith("weight_hh"):
        assert tuple(w.shape) == (gates * H, out_h)
    else:
        layer = int(re.search(r"_l(\d+)", part).group(1)) if "_l" in part else 0
        n_in = m.input_size if layer == 0 else out_h * (2 if m.bidirectional else 1)
        assert tuple(w.shape) == (gates * H, n_in)
    return w


def independent(m: nn.Module, part: str | None, head: int | None) -> torch.Tensor:
    """The row's out x in matrix, not from the reading table (conv: out x (in/g, *k))."""
    if isinstance(m, nn.MultiheadAttention):
        M = _mha_matrix(m, part)
        return M if head is None else M[head * m.head_dim:(head + 1) * m.head_dim]
    if isinstance(m, nn.RNNBase | nn.RNNCellBase):
        return _recurrent_matrix(m, part)
    if isinstance(m, nn.modules.conv._ConvNd | OverparamConv2d):
        return _conv_matrix(m)
    if isinstance(m, nn.Bilinear):
        return _bilinear_matrix(m)
    if isinstance(m, nn.Embedding):
        return m(torch.arange(m.num_embeddings)).detach()  # one row per token vector
    if isinstance(m, nn.EmbeddingBag):
        return m(torch.arange(m.num_embeddings)[:, None]).detach()
    n_in = getattr(m, "in_features", None) or getattr(m, "nx", None)
    if n_in is None:
        raise AssertionError(f"no independent reading of {type(m).__name__}: add one to this test")
    return _linear_matrix(m, n_in)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _check_module(label: str, model: nn.Module) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = weight_entries(model)
    warned = " ".join(str(w.message) for w in caught)
    for e in entries:
        got = e.weight()
        assert isinstance(got, torch.Tensor), f"{label}: row {e.name}: {got}"
        want = independent(e.module, e.part, e.head)
        assert got.shape == want.shape, f"{label}: row {e.name} read {tuple(got.shape)}, map {tuple(want.shape)}"
        torch.testing.assert_close(got.detach(), want.detach(), msg=f"{label}: row {e.name}")
    read = {_storage(s) for e in entries if (s := e.stored()) is not None}
    # a computed weight (an expanded layer's product of factors) reads all its module holds
    read |= {_storage(p) for e in entries if e.part is None and "weight" not in e.module._parameters
             for p in e.module.parameters()}
    for owner_name, owner in model.named_modules():
        reading = reading_of(owner)
        for pn, p in owner.named_parameters(recurse=False):
            if p.ndim < 2 or _storage(p) in read:
                continue
            stated = reading is not None and not reading.parts(owner, False)
            name = f"{owner_name}.{pn}" if owner_name else pn
            assert stated or name in warned, (
                f"{label}: parameter {name} {tuple(p.shape)} has no row and no stated reason")


def test_every_weight_of_every_torch_nn_layer_type_is_read_out_by_in():
    torch.manual_seed(0)
    modules = {**_torch_nn_modules(), **_extra_modules()}
    holding = []
    for label, m in modules.items():
        if any(p.ndim >= 2 for p in m.parameters()):
            holding.append(label)
            _check_module(label, m)
    # the table and this test know the same types
    seen = {type(s) for m in modules.values() for s in m.modules()}
    untested = [c.__name__ for c in READINGS if not any(issubclass(t, c) for t in seen)]
    assert not untested, f"readings with no module in this test: {untested}"
    assert {"ConvTranspose1d", "LSTM", "Bilinear", "HF Conv1D", "LayerNorm"} <= set(holding)


# ------------------------------------------------------------- the measured bugs


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_transpose_is_read_as_the_grouped_conv_of_its_map(dim):
    torch.manual_seed(0)
    m = _conv_t(dim)
    row = rank_report(m, progress=False).iloc[0]
    M = _conv_matrix(m).reshape(6, -1)  # out x (in/groups · prod k)
    assert row["weight_shape"] == tuple(m.weight.shape)  # as stored: (in, out/groups, *k)
    assert row["matrix_shape"] == tuple(M.shape)
    ref = rank_measures(M.double())
    for key in ("stable_rank", "participation_ratio", "effective_rank"):
        assert row[key] == pytest.approx(float(ref[key]), rel=1e-9), key
    taps = rank_report(m, conv_reading="taps", progress=False).iloc[0]
    assert taps["matrix_shape"] == (M.shape[1] // 2, 6, 2)  # (prod k, out, in/groups)


def test_gpt2_conv1d_is_read_out_by_in():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2Model(cfg)
    df = rank_report(model, progress=False).set_index("name")
    fc = model.h[0].mlp.c_fc  # y = x W + b, W stored (32, 128)
    M = _linear_matrix(fc, 32)  # the map's matrix: (128, 32)
    row = df.loc["h.0.mlp.c_fc"]
    assert row["weight_shape"] == (32, 128) and row["matrix_shape"] == (128, 32)
    pr = float(rank_measures(M.double())["participation_ratio"])
    assert row["participation_ratio"] == pytest.approx(pr, rel=1e-9)
    assert pr != pytest.approx(float(rank_measures(M.T.double())["participation_ratio"]), rel=1e-3)
    tracked = RankTracker(layers=["h.0.mlp.c_fc"], measures=["participation_ratio"]).measure(model)
    assert float(tracked["h.0.mlp.c_fc/participation_ratio"]) == pytest.approx(pr, rel=1e-9)


def test_recurrent_rows_are_the_matrices_of_each_layer_and_direction():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    df = rank_report(lstm, progress=False, measures=["stable_rank"])
    names = [f"{w}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse") for w in ("weight_ih", "weight_hh", "weight_hr")]
    assert sorted(df["name"]) == sorted(f"<root>.{n}" for n in names)
    row = df.set_index("name").loc["<root>.weight_ih_l1_reverse"]
    assert row["matrix_shape"] == (24, 6) and row["type"] == "LSTM[weight_ih_l1_reverse]"

    # the row blocks of layer 0 are the maps torch applies: at x = h = c = 0 with no bias,
    # d h / d x = 1/4 W_g (LSTM, g gate) = 1/2 W_n (GRU, n gate) = W (RNN, tanh)
    for cls, block, scale in ((nn.LSTM, 2, 4.0), (nn.GRU, 2, 2.0), (nn.RNN, 0, 1.0)):
        m = cls(4, 6, bias=False)
        W = weight_entries(m, ["*weight_ih_l0"])[0].weight()
        J = jacobian(lambda x, m=m: m(x[None, None])[0][0, 0], torch.zeros(4))
        torch.testing.assert_close(W[6 * block:6 * (block + 1)], scale * J)

    # a recurrent row's embedding is not the module's output, and says so
    x = torch.randn(5, 2, 4)
    emb = rank_report(lstm, x, layers=["*weight_ih_l0"], include_data=False, progress=False)
    assert "not this matrix's output" in emb.loc[0, "error"]


def test_lazy_and_unknown_layouts_are_refused_with_a_note_and_a_subclass_inherits():
    class Scaled(nn.Linear):  # a Linear subclass reads as a Linear
        pass

    class Mystery(nn.Module):  # a 2-D weight whose orientation nothing states
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return x @ self.weight

    model = nn.Sequential(Scaled(4, 3), Mystery(), nn.LazyLinear(2))
    df = rank_report(model, progress=False, measures=["stable_rank"]).set_index("name")
    assert df.loc["0", "error"] == "" and df.loc["0", "matrix_shape"] == (3, 4)
    assert "layout of Mystery.weight (3, 5) is not known" in df.loc["1", "error"]
    assert df.loc["1", "matrix_shape"] is None and df.loc["1", "weight_shape"] == (3, 5)
    assert "uninitialised lazy weight" in df.loc["2", "error"]

    register_weight_reading(Mystery, "in_out")
    try:
        df = rank_report(model[1], progress=False, measures=["stable_rank"])
        assert df.loc[0, "matrix_shape"] == (5, 3) and df.loc[0, "error"] == ""
        register_weight_reading(Mystery, "in_out")  # the same again: no change
        with pytest.raises(ConfigError, match="already has a reading"):
            register_weight_reading(Mystery, "out_in")
    finally:
        READINGS.pop(Mystery)
    with pytest.raises(ConfigError, match="reading must be one of"):
        register_weight_reading(Mystery, "transposed")


def test_a_model_with_weights_but_no_row_is_not_read_silently():
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return x @ self.table

    with pytest.warns(UserWarning, match=r"no weight rows, but 1 parameter.*table \(4, 6\)"):
        df = rank_report(Table(), progress=False)
    assert df.empty
    with pytest.warns(UserWarning, match=r"no weight rows.*\(3, 4\)"):  # stated, but all there is
        rank_report(nn.LayerNorm((3, 4)), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_report(nn.Sequential(nn.LayerNorm((3, 4)), nn.Linear(4, 2)), progress=False)
        rank_report(Table(), layers=[], embeddings=["<root>"], data=torch.randn(3, 4),
                    progress=False)  # no weight row asked for


def test_docs_name_the_reading_of_every_layer_type():
    text = DOCS.read_text()
    table = text[text.index("### Weight readings"):]
    names = [c.__name__ for c in READINGS] + [n for _, n in FOREIGN]
    missing = [n for n in names if f"`{n}`" not in table]
    assert not missing, f"docs/analysis.md 'Weight readings' does not list {missing}"


def test_conv_reading_applies_to_conv_kernels_only():
    m = nn.Bilinear(3, 4, 5)
    for reading in ("flatten", "taps", "pooled"):
        row = rank_report(m, conv_reading=reading, progress=False).iloc[0]
        assert row["matrix_shape"] == (5, 12), reading
    torch.testing.assert_close(as_matrix(weight_entries(m)[0].weight()), _bilinear_matrix(m))
