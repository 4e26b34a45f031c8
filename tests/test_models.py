"""rankbias.models: the registry, its errors, and each model's shapes and structure."""

import pytest
import torch
from torch import nn

from rankbias.analysis import rank_report
from rankbias.errors import UnsupportedError
from rankbias.models import MLP, MODELS, CifarResNet, PlainCNN, SmallCNN, ViT, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_maps_images_to_logits_and_has_a_penultimate_fc(name, channels):
    torch.manual_seed(0)
    m = build_model(name, channels, 7, image_size=16)
    out = m(torch.randn(3, channels, 16, 16))
    assert out.shape == (3, 7)
    assert isinstance(m.fc, nn.Linear) and m.fc.out_features == 7
    seen = []
    h = m.fc.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape))
    m(torch.randn(2, channels, 16, 16))
    h.remove()
    assert seen == [torch.Size([2, m.fc.in_features])]


def test_registry_keeps_the_overparam_models():
    assert type(build_model("cnn", 1, 7, width=4, blocks=3)) is SmallCNN
    r = build_model("resnet", 1, 7, width=4, blocks=3)
    assert isinstance(r, CifarResNet) and len(r.stages) == 9
    r18 = build_model("resnet18", 3, 10, width=4, blocks=1)  # fixed widths: the sweep's keys are ignored
    assert r18.fc.in_features == 512


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnsupportedError, match=r"did you mean 'vit'.*accepted: cnn"):
        build_model("vitt", 1, 10)
    with pytest.raises(ValueError, match="accepted"):  # UnsupportedError is a ValueError
        build_model("vgg", 1, 7)


def test_unknown_setting_and_missing_image_size_are_refused():
    with pytest.raises(UnsupportedError, match="no setting wdth; accepted: image_size, patch_size"):
        build_model("vit", 1, 10, image_size=16, wdth=3)
    with pytest.raises(UnsupportedError, match="needs image_size"):
        build_model("mlp", 1, 10)
    with pytest.raises(UnsupportedError, match="in_channels"):
        build_model("cnn", 0, 10)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_model("vit", 1, 10, image_size=18)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_model("vit", 1, 10, image_size=16, dim=30, heads=4)


def test_plain_cnn_depth_and_resolution():
    for depth in (4, 5, 6):
        m = PlainCNN(1, 10, width=4, depth=depth)
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        assert len(convs) == depth
        # widths double after every second conv (the last one excepted)
        assert [c.out_channels for c in convs] == [4 * 2 ** (i // 2) for i in range(depth)]
    m = PlainCNN(1, 10, width=4, depth=4, batch_norm=False)
    assert not any(isinstance(c, nn.BatchNorm2d) for c in m.modules())
    with pytest.raises(ValueError, match="depth"):
        PlainCNN(1, 10, depth=0)


@pytest.mark.parametrize("name, weighted", [("resnet8", 8), ("resnet20", 20)])
def test_resnet_depth_counts_the_main_path(name, weighted):
    m = build_model(name, 3, 10, width=4)
    main = [n for n, mod in m.named_modules()
            if isinstance(mod, nn.Conv2d | nn.Linear) and "shortcut" not in n]
    assert len(main) == weighted
    assert [s.conv2.out_channels for s in m.stages][::len(m.stages) // 3] == [4, 8, 16]


def test_vit_tokens_and_patch_embedding_read_as_a_matrix():
    m = ViT(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=2, heads=4)
    assert m.pos_embed.shape == (1, 17, 32)  # 16 patches + the class token
    df = rank_report(m, measures=["stable_rank"], progress=False)
    row = df[df["name"] == "patch_embed"].iloc[0]
    assert row["matrix_shape"] == (32, 48)  # dim x C p p
    assert {"blocks.0.attn.qkv", "blocks.1.mlp.fc2", "fc"} <= set(df["name"])
    with pytest.raises(ValueError, match="built for 16x16"):
        m(torch.randn(1, 3, 8, 8))


def test_vit_without_positions_is_invariant_to_permuting_patches():
    # attention and the class token see a set of tokens: with zero position
    # embeddings, permuting the patches cannot change the output
    torch.manual_seed(1)
    m = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2, heads=2).double()
    with torch.no_grad():
        m.pos_embed.zero_()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    quads = [x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:]]
    top = torch.cat([quads[3], quads[0]], -1)
    bottom = torch.cat([quads[2], quads[1]], -1)
    perm = torch.cat([top, bottom], -2)
    assert not torch.equal(perm, x)
    torch.testing.assert_close(m(perm), m(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        m.pos_embed.normal_()
    assert not torch.allclose(m(perm), m(x))


def test_mlp_refuses_inputs_of_another_size():
    m = MLP(64, 10, width=8, depth=2)
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert sum(isinstance(c, nn.Linear) for c in m.modules()) == 3
    with pytest.raises(ValueError, match="built for inputs of 64 values"):
        m(torch.randn(4, 1, 16, 16))
