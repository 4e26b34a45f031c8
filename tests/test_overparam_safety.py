"""Over-parameterisation never changes what a model computes without saying so:
a layer's state other than weight/bias is carried through expansion and collapse (or
refused), writes to a computed weight are errors, and layers also referenced outside
the module tree are refused. Each case fails on the code before issue 17."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from _helpers import _gen, f64, rel
from rankbias.errors import UnsupportedError
from rankbias.overparam import OverparamConv2d, OverparamLinear, collapse, overparameterize


def _meta_state(model: nn.Module) -> list[str]:
    return [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]


# ------------------------------------------------------ state beyond weight/bias


class ScaledLinear(nn.Linear):
    """No forward of its own; its extra state is read by the model that holds it."""

    def __init__(self, i, o):
        super().__init__(i, o)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, o))
        self.register_buffer("mask", (torch.arange(o) % 3 != 0).to(torch.get_default_dtype()))
        self.register_buffer("temp", torch.full((o,), 0.7), persistent=False)


class MaskedConv(nn.Conv2d):
    def __init__(self):
        super().__init__(2, 4, 3, padding=1)
        self.register_buffer("gate", torch.tensor([1.0, 0.0, 1.0, 0.5]))


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MaskedConv()
        self.fc = ScaledLinear(4 * 5 * 5, 6)

    def forward(self, x):
        h = torch.tanh(self.conv(x) * self.conv.gate[:, None, None])
        return self.fc(h.flatten(1)) * self.fc.scale * self.fc.mask + self.fc.temp


def test_extra_parameters_and_buffers_are_carried_through_expand_and_collapse():
    torch.manual_seed(0)
    m = Holder().to(f64).eval()
    x = torch.randn(3, 2, 5, 5, dtype=f64, generator=_gen(1))
    e = overparameterize(m, depth=3, init="preserve").eval()
    with torch.no_grad():
        assert rel(e(x), m(x)) <= 1e-9  # forward used to raise AttributeError: no fc.scale
    assert {"fc.scale", "fc.mask", "conv.gate"} <= set(e.state_dict())
    assert "fc.temp" not in e.state_dict()  # non-persistent stays non-persistent
    assert any(p is e.fc.scale for p in e.parameters())  # trained with the factors
    with torch.no_grad():  # as if trained: move the factors and the carried state
        e.fc.scale.mul_(1.5)
        e.conv.gate.sub_(0.25)
        e.fc.factors[0].weight.mul_(1.1)
    c = collapse(e).eval()
    assert _meta_state(c) == []  # fc.scale used to stay on the meta device
    assert type(c.fc) is ScaledLinear and type(c.conv) is MaskedConv
    assert torch.equal(c.fc.scale, e.fc.scale) and c.fc.scale is not e.fc.scale
    assert torch.equal(c.conv.gate, e.conv.gate) and torch.equal(c.fc.temp, e.fc.temp)
    fresh = Holder().to(f64).eval()
    fresh.load_state_dict(c.state_dict(), strict=True)
    with torch.no_grad():
        y_e, y_c, y_f = e(x), c(x), fresh(x)
    assert rel(y_c, y_e) <= 1e-9 and rel(y_f, y_c) <= 1e-9
    assert rel(y_c, m(x)) > 1e-3  # the changes reached the collapsed model


def test_collapse_after_a_dtype_change_leaves_nothing_on_meta_and_one_dtype():
    e = overparameterize(Holder(), depth=2, generator=_gen(0)).to(f64)
    c = collapse(e)
    assert _meta_state(c) == []
    assert {t.dtype for t in (*c.parameters(), *c.buffers())} == {f64}


class WithChild(nn.Linear):
    def __init__(self):
        super().__init__(3, 3)
        self.act = nn.Tanh()


class NamedLikeFactors(nn.Linear):
    def __init__(self):
        super().__init__(3, 3)
        self.register_buffer("hidden", torch.zeros(3))  # OverparamLinear.hidden is an int


class WithExtraState(nn.Linear):
    def __init__(self):
        super().__init__(3, 3)

    def get_extra_state(self):
        return {"calibrated": True}

    def set_extra_state(self, state):
        pass


class BiasBuffer(nn.Linear):
    def __init__(self):
        super().__init__(3, 3, bias=False)
        del self._parameters["bias"]
        self.register_buffer("bias", torch.ones(3))


@pytest.mark.parametrize("make, why", [
    (WithChild, r"submodule\(s\) \['act'\]"),
    (NamedLikeFactors, r"name\(s\) \['hidden'\] clash with OverparamLinear"),
    (WithExtraState, r"extra state \(get_extra_state\)"),
    (BiasBuffer, r"bias is a buffer"),
])
def test_state_an_expanded_layer_cannot_carry_is_refused_before_any_change(make, why):
    m = nn.Sequential(nn.Linear(3, 3), make())
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(UnsupportedError, match=rf"layer\(s\) 1 \(.*{why}.*ignore"):
        overparameterize(m, depth=2, inplace=True)
    assert type(m[0]) is nn.Linear and type(m[1]) is make  # nothing replaced
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    e = overparameterize(m, depth=2, ignore=("1",))
    assert isinstance(e[0], OverparamLinear) and e[1] is not m[1] and type(e[1]) is make
    with pytest.raises(UnsupportedError, match=why):  # the layer-level entry point too
        OverparamLinear.from_linear(make(), depth=2)


# ------------------------------------------------------------ writes to weight


def _lin():
    return overparameterize(nn.Linear(5, 4).to(f64), depth=3, generator=_gen(0))


def _conv():
    return overparameterize(nn.Conv2d(2, 4, 3).to(f64), depth=3, generator=_gen(0))


WRITES = {
    "zero_": lambda w: w.zero_(),
    "data.mul_": lambda w: w.data.mul_(2),
    "detach().mul_": lambda w: w.detach().mul_(2),
    "nn.init.normal_": lambda w: nn.init.normal_(w),
    "nn.init.kaiming_uniform_": lambda w: nn.init.kaiming_uniform_(w),
    "nn.init.orthogonal_": lambda w: nn.init.orthogonal_(w),
    "copy_": lambda w: w.copy_(torch.ones_like(w)),
    "+=": lambda w: w.__iadd__(1.0),
    "w[0] = v": lambda w: w.__setitem__(0, 1.0),
    "w[0].fill_": lambda w: w[0].fill_(1.0),
    "w.T.zero_": lambda w: w.mT.zero_(),
    "out=": lambda w: torch.mul(torch.ones_like(w), 2, out=w),
    "w.data = v": lambda w: setattr(w, "data", torch.ones_like(w)),
}


@pytest.mark.parametrize("make", [_lin, _conv], ids=["linear", "conv"])
@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_writes_to_a_computed_weight_are_refused(make, write):
    e = make()
    before = [f.weight.detach().clone() for f in e.factors]
    w0 = e.weight.detach().clone()
    with torch.no_grad(), pytest.raises(UnsupportedError, match=r"\.weight is computed from the "
                                        r"layer's factors.*factors\[i\]\.weight.*collapse"):
        WRITES[write](e.weight)  # used to change a temporary copy and nothing else
    assert all(torch.equal(b, f.weight) for b, f in zip(before, e.factors))
    assert torch.equal(e.weight, w0)


def test_assigning_a_weight_or_a_computed_bias_is_refused():
    e = overparameterize(nn.Linear(5, 4), depth=2, factor_bias=True, generator=_gen(0))
    with pytest.raises(UnsupportedError, match=r"OverparamLinear\.weight .*cannot be assigned"):
        e.weight = nn.Parameter(torch.zeros(4, 5))
    with torch.no_grad(), pytest.raises(UnsupportedError, match=r"OverparamLinear\.bias is computed"):
        e.bias.zero_()  # the folded bias of every factor's bias: computed too


def test_writes_that_reach_the_layer_still_work():
    """Where ``weight``/``bias`` is the layer's own parameter (depth 1; the bias when only
    the last factor has one), a write changes the layer, so it is allowed."""
    one = overparameterize(nn.Linear(5, 4), depth=1, generator=_gen(0))
    two = overparameterize(nn.Linear(5, 4), depth=2, generator=_gen(0))
    with torch.no_grad():
        nn.init.zeros_(one.weight)
        two.bias.fill_(3.0)
    assert torch.equal(one.factors[0].weight, torch.zeros(4, 5))
    assert torch.equal(two.factors[-1].bias, torch.full((4,), 3.0))
    assert torch.equal(collapse(two).bias, torch.full((4,), 3.0))


@pytest.mark.parametrize("make", [_lin, _conv], ids=["linear", "conv"])
def test_reading_a_computed_weight_is_exact_plain_and_differentiable(make):
    e = make()
    W = [f.weight.detach().reshape(1, f.weight.shape[0], -1) for f in e.factors]  # (groups, out, in)
    product = (W[2] @ W[1]) @ W[0]  # independent reading of the chain, same order and kernels
    assert torch.equal(e.weight.reshape(product.shape), product)
    assert torch.equal(e.weight, collapse(e).weight)
    assert type(e.weight * 2) is torch.Tensor and type(e.weight.detach().clone()) is torch.Tensor
    loss = e.weight.square().sum()  # e.g. a regulariser
    loss.backward()
    assert all(f.weight.grad is not None and f.weight.grad.abs().sum() > 0 for f in e.factors)
    kept = e.weight.detach().clone()
    kept.zero_()  # a copy is the caller's own: writable
    assert not torch.equal(e.weight, kept)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap fallback for SDPA
def test_computed_weight_read_under_vmap_matches_one_model_at_a_time():
    """nn.MultiheadAttention reads out_proj.weight, not out_proj(...): under
    functional_call + vmap (the batched trainer) the read must still work."""
    torch.manual_seed(0)
    ms = [overparameterize(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                           depth=2, factor_bias=True, generator=_gen(s)).to(f64) for s in range(3)]
    params, buffers = stack_module_state(ms)
    base = overparameterize(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                            depth=2, factor_bias=True).to("meta")
    x = torch.randn(4, 5, 8, dtype=f64, generator=_gen(1))
    y = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    assert rel(y, torch.stack([m(x) for m in ms])) <= 1e-12


# ---------------------------------------------------- references outside the tree


class Listed(nn.Module):
    def __init__(self, hold):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        hold(self)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)))


HOLDS = {
    "list": (lambda s: setattr(s, "layers_list", [s.fc, s.out]), r"<model>\.layers_list\[0\] \(-> fc\)"),
    "dict": (lambda s: setattr(s, "by_name", {"first": s.fc}), r"<model>\.by_name\['first'\] \(-> fc\)"),
    "nested": (lambda s: setattr(s, "groups", {"g": ([s.fc],)}), r"<model>\.groups\['g'\]\[0\]\[0\]"),
    "set": (lambda s: setattr(s, "seen", {s.fc}), r"<model>\.seen \(a set\)"),
    "bound method": (lambda s: setattr(s, "step", s.fc.forward), r"<model>\.step \(-> fc\)"),
    "unregistered": (lambda s: object.__setattr__(s, "_fc_ref", s.fc), r"<model>\._fc_ref \(-> fc\)"),
}


@pytest.mark.parametrize("hold", list(HOLDS), ids=list(HOLDS))
def test_layer_referenced_outside_the_module_tree_is_refused(hold):
    make, where = HOLDS[hold]
    m = Listed(make)
    with pytest.raises(UnsupportedError, match=rf"overparameterize: {where}.*outside the module "
                                               r"tree.*nn\.ModuleList.*ignore"):
        overparameterize(m, depth=2, inplace=True)  # used to expand fc and keep the stale one there
    assert type(m.fc) is nn.Linear and type(m.out) is nn.Linear  # nothing replaced
    with pytest.warns(UserWarning, match="nothing was expanded"):
        e = overparameterize(m, depth=2, ignore=("fc", "out"))  # ignored: fine
    assert type(e.fc) is nn.Linear


def test_references_one_container_deeper_than_searched_are_not_reported():
    """The search depth is a documented limit: three levels of containers."""
    m = Listed(lambda s: setattr(s, "deep", [[[[s.fc]]]]))
    assert isinstance(overparameterize(m, depth=2).fc, OverparamLinear)  # docs/overparam.md


def test_collapse_refuses_a_layer_referenced_outside_the_module_tree():
    e = overparameterize(Listed(lambda s: None), depth=2, generator=_gen(0))
    e.cache = [e.fc]
    with pytest.raises(UnsupportedError, match=r"collapse: <model>\.cache\[0\] \(-> fc\).*collapsed one.*drop the reference"):
        collapse(e)
    del e.cache
    assert isinstance(collapse(e).fc, nn.Linear)


def test_expanded_conv_subclass_state_round_trip_through_fuse():
    conv = MaskedConv().to(f64)
    e = OverparamConv2d.from_conv(conv, depth=2, init="preserve")
    assert e.gate is conv.gate  # carried, not copied: a buffer the model may share
    want = conv.gate * 0.5
    e.gate.mul_(0.5)
    plain = e.fuse()  # timm's reparameterize_model path
    assert type(plain) is MaskedConv and _meta_state(plain) == []
    assert torch.equal(plain.gate, want) and plain.gate is not e.gate
    x = torch.randn(1, 2, 5, 5, dtype=f64, generator=_gen(2))
    assert rel(plain(x), conv(x)) <= 1e-9
