"""Linear over-parameterisation: exact collapse, exact preserve-init, both
forward forms, real torchvision architectures, invalid arguments."""

import math

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from _helpers import _gen, f64, rel
from rankbias.overparam import (
    OverparamConv2d,
    OverparamLinear,
    collapse,
    expanded_modules,
    overparameterize,
    set_forward_mode,
)

# ----------------------------------------------------------------- torchvision


TV_CASES = {
    # VGG's 25088 x 4096 classifier alone costs ~10^11 multiply-adds to collapse in
    # float64; the default run expands every conv and the last linear, the slow run all.
    "resnet18": {},
    "vgg11_bn": {"ignore": ("classifier.0", "classifier.3")},
    "mobilenet_v2": {},
}


def _tv(name):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(num_classes=10).to(f64).eval()
    # non-trivial BN statistics, so that eval mode is not the identity
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("name", list(TV_CASES))
def test_torchvision_collapse_and_preserve_exact(name):
    kw = TV_CASES[name]
    m = _tv(name)
    x = torch.randn(1, 3, 32, 32, dtype=f64, generator=_gen(1))
    e = overparameterize(m, depth=3, generator=_gen(2), **kw).eval()
    n_expanded = len(expanded_modules(e))
    n_plain = sum(isinstance(mod, nn.Conv2d | nn.Linear) for mod in m.modules())
    assert n_expanded == n_plain - len(kw.get("ignore", ()))
    c = collapse(e)
    assert not expanded_modules(c)
    with torch.no_grad():
        y_e, y_c, y_m = e(x), c(x), m(x)
    assert rel(y_c, y_e) <= 1e-6
    assert rel(y_e, y_m) > 1e-3  # fresh init really changed the function
    fresh = getattr(torchvision.models, name)(num_classes=10)
    fresh.load_state_dict(c.state_dict(), strict=True)
    assert type(c) is type(fresh)

    p = overparameterize(m, depth=3, init="preserve", generator=_gen(3), **kw).eval()
    with torch.no_grad():
        assert rel(p(x), y_m) <= 1e-6


@pytest.mark.slow
def test_vgg11_bn_every_layer_exact():
    m = _tv("vgg11_bn")
    x = torch.randn(1, 3, 32, 32, dtype=f64, generator=_gen(1))
    e = overparameterize(m, depth=2, generator=_gen(2)).eval()
    c = collapse(e)
    with torch.no_grad():
        assert rel(c(x), e(x)) <= 1e-6
    p = overparameterize(m, depth=2, init="preserve").eval()
    with torch.no_grad():
        assert rel(p(x), m(x)) <= 1e-6
    torchvision.models.vgg11_bn(num_classes=10).load_state_dict(c.state_dict(), strict=True)


# ----------------------------------------------------------- random configurations


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):  # depthwise
        groups, cin = cin, cin
        cout = cin * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1, 1) if pad_kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if pad_kind == "int":
        padding = draw(st.integers(0, 2))
    elif pad_kind == "tuple":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        padding = pad_kind
    H = draw(st.integers(5, 9))
    # the input must be larger than the padding for reflect, and than the dilated kernel
    H = max(H, dilation[0] * (kh - 1) + 3, dilation[1] * (kw - 1) + 3)
    return {
        "conv": dict(in_channels=cin, out_channels=cout, kernel_size=(kh, kw), stride=stride,
                     padding=padding, dilation=dilation, groups=groups,
                     bias=draw(st.booleans()), padding_mode=mode),
        "depth": draw(st.integers(1, 4)),
        "width": draw(st.sampled_from([0.5, 1.0, 1.5, 2.0])),
        "H": H,
        "batch": draw(st.integers(1, 3)),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_random_conv_configs_exact(cfg, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**cfg["conv"]).to(f64)
    x = torch.randn(cfg["batch"], conv.in_channels, cfg["H"], cfg["H"] + 1, dtype=f64)
    e = overparameterize(conv, depth=cfg["depth"], width=cfg["width"], generator=_gen(seed))
    assert isinstance(e, OverparamConv2d) and e.hidden % conv.groups == 0
    c = collapse(e)
    assert type(c) is nn.Conv2d
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(c, attr) == getattr(conv, attr)
    assert c.weight.shape == conv.weight.shape and (c.bias is None) == (conv.bias is None)
    with torch.no_grad():
        y_seq = set_forward_mode(e, "sequential")(x)
        y_ker = set_forward_mode(e, "kernel")(x)
        y_c = c(x)
    assert y_c.shape == conv(x).shape
    assert rel(y_c, y_seq) <= 1e-6 and rel(y_ker, y_seq) <= 1e-6
    # preserve: exact whenever the hidden width can hold the weight's rank
    r = min(conv.out_channels // conv.groups, conv.weight[0].numel())
    if cfg["depth"] == 1 or e.hidden // conv.groups >= r:
        p = overparameterize(conv, depth=cfg["depth"], width=cfg["width"], init="preserve")
        with torch.no_grad():
            assert rel(p(x), conv(x)) <= 1e-6
    else:
        with pytest.raises(ValueError, match="preserve"):
            overparameterize(conv, depth=cfg["depth"], width=cfg["width"], init="preserve")


@settings(max_examples=40, deadline=None)
@given(i=st.integers(1, 12), o=st.integers(1, 12), depth=st.integers(1, 5),
       width=st.sampled_from([1.0, 1.5, 3.0]), bias=st.booleans(), lead=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_random_linear_configs_exact(i, o, depth, width, bias, lead, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(i, o, bias=bias).to(f64)
    x = torch.randn(*([2] * lead), i, dtype=f64)
    e = overparameterize(lin, depth=depth, width=width, mode="sequential")
    assert isinstance(e, OverparamLinear) and len(e.factors) == depth
    c = collapse(e)
    with torch.no_grad():
        assert rel(c(x), e(x)) <= 1e-6
        p = overparameterize(lin, depth=depth, width=width, init="preserve")
        assert rel(p(x), lin(x)) <= 1e-6


def test_hidden_width_and_shapes():
    e = overparameterize(nn.Linear(5, 10), depth=4, width=1.5)
    assert [tuple(f.weight.shape) for f in e.factors] == [(15, 5), (15, 15), (15, 15), (10, 15)]
    assert e.factors[-1].bias is not None and all(f.bias is None for f in e.factors[:-1])
    c = overparameterize(nn.Conv2d(6, 9, 3, groups=3), depth=3, width=1.2)
    # round(1.2 * 9 / 3) = 4 channels per group
    assert c.hidden == 12
    assert [tuple(f.weight.shape) for f in c.factors] == [(12, 2, 3, 3), (12, 4, 1, 1), (9, 4, 1, 1)]
    assert all(f.groups == 3 for f in c.factors)


# -------------------------------------------------------- forms, gradients, training


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=8, padding="valid"), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).to(f64)


def test_kernel_and_sequential_same_outputs_and_gradients():
    torch.manual_seed(0)
    e = overparameterize(_small_net(), depth=3, width=1.5, generator=_gen(0))
    x = torch.randn(4, 3, 9, 9, dtype=f64)
    grads = {}
    for mode in ("kernel", "sequential", "auto"):
        set_forward_mode(e, mode)
        e.zero_grad()
        y = e(x)
        (y.square().sum()).backward()
        grads[mode] = (y.detach(), [p.grad.clone() for p in e.parameters()])
    y0, g0 = grads["sequential"]
    for mode in ("kernel", "auto"):
        y, g = grads[mode]
        assert rel(y, y0) <= 1e-10
        # scale by the largest gradient: the bias of a conv followed by BN has a
        # true gradient of exactly 0, so its own relative error is meaningless
        scale = max(float(b.abs().max()) for b in g0)
        assert max(float((a - b).abs().max()) for a, b in zip(g, g0)) <= 1e-9 * scale


def test_collapsed_weight_is_differentiable():
    e = overparameterize(nn.Conv2d(4, 6, 3, groups=2), depth=3, generator=_gen(0))
    e.weight.square().sum().backward()  # e.g. a regulariser on the end-to-end kernel
    assert all(f.weight.grad is not None and f.weight.grad.abs().sum() > 0 for f in e.factors)


def test_auto_mode_picks_the_cheaper_form():
    lin = OverparamLinear(512, 512, depth=3)
    seq1, ker1 = lin.flops((1, 512))
    assert seq1 < ker1  # one sample: the chain product dominates
    seqb, kerb = lin.flops((4096, 512))
    assert kerb < seqb
    assert seq1 == 3 * 512 * 512 and ker1 == 2 * 512**3 + 512 * 512
    conv = OverparamConv2d(64, 64, 3, padding=1, depth=4)
    seq, ker = conv.flops((64, 64, 32, 32))
    P = 64 * 32 * 32
    assert seq == P * 64 * 64 * 9 + 3 * P * 64 * 64
    assert ker == 2 * 64**3 + 64 * 64 * 576 + P * 64 * 576
    assert ker < seq


def test_training_then_collapse_stays_exact():
    torch.manual_seed(0)
    net = overparameterize(_small_net(), depth=4, generator=_gen(0))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 9, 9, dtype=f64), torch.randint(0, 5, (16,))
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert any(rel(a, b) > 1e-3 for a, b in zip(net.parameters(), before))
    net.eval()
    c = collapse(net)
    with torch.no_grad():
        assert rel(c(x), net(x)) <= 1e-6
    c.train()  # the plain model trains on, in the original architecture
    assert isinstance(c[0], nn.Conv2d) and c[0].padding_mode == "reflect"


def test_preserve_factors_are_balanced_and_trainable():
    torch.manual_seed(0)
    lin = nn.Linear(4, 8).to(f64)  # out > in: rank 4 < hidden 8, extra units exist
    p = overparameterize(lin, depth=3, init="preserve", generator=_gen(0))
    s = torch.linalg.svdvals(lin.weight.detach())
    for f in p.factors:  # every factor carries about s^(1/L)
        top = torch.linalg.svdvals(f.weight.detach())[0]
        assert math.isclose(top, s[0] ** (1 / 3), rel_tol=0.35)
    x = torch.randn(5, 4, dtype=f64)
    p(x).sum().backward()
    # the last factor's columns for the extra units get gradient (no dead saddle)
    assert p.factors[-1].weight.grad[:, 4:].abs().sum() > 0


def test_inplace_and_copy():
    net = _small_net()
    e = overparameterize(net, depth=2)
    assert isinstance(net[0], nn.Conv2d) and isinstance(e[0], OverparamConv2d)
    e2 = overparameterize(net, depth=2, inplace=True)
    assert e2 is net and isinstance(net[0], OverparamConv2d)
    # expanding twice does not nest, collapse(inplace) returns the plain model
    assert len(expanded_modules(overparameterize(e2))) == len(expanded_modules(e2))
    collapse(e2, inplace=True)
    assert not expanded_modules(net)


def test_layers_and_ignore_selection():
    net = _small_net()
    assert len(expanded_modules(overparameterize(net, layers="conv"))) == 3
    assert len(expanded_modules(overparameterize(net, layers="linear"))) == 1
    e = overparameterize(net, ignore=("0", "9"))
    assert isinstance(e[0], nn.Conv2d) and isinstance(e[9], nn.Linear)
    assert isinstance(e[3], OverparamConv2d)
    tv = overparameterize(torchvision.models.resnet18(), ignore=("layer4", "fc"), layers="all")
    assert all(not n.startswith(("layer4", "fc")) for n, _ in expanded_modules(tv))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 0}, "depth must be an int >= 1"),
        ({"depth": 2.5}, "depth must be an int >= 1"),
        ({"width": 0}, "width must be a finite number > 0"),
        ({"width": -1.0}, "width must be a finite number > 0"),
        ({"width": float("nan")}, "width must be a finite number > 0"),
        ({"layers": "attention"}, "layers must be one of 'all', 'conv', 'linear'"),
        ({"init": "zeros"}, "init must be one of 'fresh', 'preserve'"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"ignore": ("layer9",)}, r"ignore: unknown module name\(s\) \['layer9'\]"),
        ({"ignore": ("layer1.0.conv3",)}, "did you mean"),
        ({"width": 0.5, "init": "preserve"}, "needs hidden width >= min"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        overparameterize(torchvision.models.resnet18(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        overparameterize(torch.zeros(3))
