"""Embedding readings follow the tensor's layout, not the module's type: blocks
after convs, sequence-first layers, padding masks that belong to one sequence,
and the refusals where a layout cannot be told. Every reading is checked
against the tensor taken by a plain forward hook and reshaped by hand, measured
through numpy's SVD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rankbias.analysis import rank_report
from rankbias.framework.config import ConfigError


def hooked(model: nn.Module, name: str, data):
    """The output of ``model``'s module ``name`` on ``data`` (the first of a tuple or
    a Hugging Face output), by a plain forward hook."""
    got = []

    def keep(module, args, output):
        output = next(iter(output.values())) if isinstance(output, dict) else output
        got.append(output[0] if isinstance(output, tuple) else output)

    h = dict(model.named_modules())[name].register_forward_hook(keep)
    with torch.no_grad():
        model.eval()(**data) if isinstance(data, dict) else model.eval()(data)
    h.remove()
    return got[0]


def reference(Z: torch.Tensor) -> dict[str, float]:
    """Kernel measures of K = Z Z^T from numpy's singular values of Z (eigenvalues s^2)."""
    lam = np.linalg.svd(Z.double().numpy(), compute_uv=False) ** 2
    p = lam / lam.sum()
    p = p[p > 0]
    return {"effective_rank": math.exp(float(-(p * np.log(p)).sum())),
            "stable_rank": float((lam**2).sum() / lam.max() ** 2)}


def assert_reads(row, Z: torch.Tensor, rel: float = 1e-6) -> None:
    assert row["error"] == ""
    assert row["emb_matrix_shape"] == tuple(Z.shape)
    for k, v in reference(Z).items():
        assert float(row[f"emb_{k}"]) == pytest.approx(v, rel=rel), k


def report(model, data, embeddings, **kwargs):
    df = rank_report(model, data, layers=[], embeddings=embeddings, include_data=False,
                     progress=False, **kwargs)
    return df.set_index("name")


# ------------------------------------------------------------ channels-first


def test_resnet_block_outputs_are_read_like_conv_outputs():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18().eval()
    x = torch.randn(8, 3, 64, 64)
    out = hooked(model, "layer4", x)  # (8, 512, 2, 2)
    rows = report(model, x, ["fc:input", "layer4"])
    # per position, as a conv's output: (N*H*W) x C
    assert_reads(rows.loc["layer4:output"], out.permute(0, 2, 3, 1).reshape(-1, 512))
    assert rows.loc["layer4:output", "emb_matrix_shape"] == (32, 512)  # was (8192, 2)
    assert_reads(rows.loc["fc:input"], out.mean((2, 3)))
    per_sample = report(model, x, ["layer4"], embedding_reading="sample").loc["layer4:output"]
    assert_reads(per_sample, out.reshape(8, -1))


class Residual(nn.Module):
    """A block whose output no inner module made: ``x + conv(x)``."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_activations_blocks_and_pools_after_a_conv_are_channels_first(dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    torch.manual_seed(0)
    model = nn.Sequential(conv(3, 5, 3, padding=1), nn.ReLU(), Residual(conv(5, 5, 1)),
                          nn.Sequential(nn.GELU(), pool(2)), nn.Flatten()).eval()
    x = torch.randn(6, 3, *([4] * dims))
    rows = report(model, x, ["1", "2", "3", "3.0"])
    for name in ("1", "2", "3", "3.0"):
        out = hooked(model, name, x)
        assert_reads(rows.loc[f"{name}:output"], out.movedim(1, -1).reshape(-1, 5))


def test_channels_last_outputs_keep_their_features_last():
    # torchvision's swin/convnext layout: a Permute to (N, H, W, C), then LayerNorm and Linear
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), tv.ops.misc.Permute([0, 2, 3, 1]), nn.LayerNorm(4),
                          nn.Linear(4, 7), nn.GELU(), tv.ops.misc.Permute([0, 3, 1, 2]), nn.ReLU()).eval()
    x = torch.randn(3, 3, 5, 6)
    rows = report(model, x, ["1", "2", "4", "5", "6"])
    for name, d in (("1", 4), ("2", 4), ("4", 7)):
        assert_reads(rows.loc[f"{name}:output"], hooked(model, name, x).reshape(-1, d))
    for name in ("5", "6"):  # permuted back: channels-first again
        assert_reads(rows.loc[f"{name}:output"], hooked(model, name, x).movedim(1, -1).reshape(-1, 7))


class Reshaper(nn.Module):
    """A 3-D output of a layout no evidence tells: a view made in the module's own code."""

    def forward(self, x):
        return torch.tanh(x).reshape(x.shape[0], 4, -1)


def test_an_unknown_layout_is_refused_and_can_be_stated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), Reshaper()).eval()
    x = torch.randn(5, 6)
    rows = report(model, x, ["1"])
    err = rows.loc["1:output", "error"]
    assert "cannot be told" in err and "'1@channels_first'" in err and "@sequence_first" in err
    assert np.isnan(float(rows.loc["1:output", "emb_effective_rank"]))
    out = hooked(model, "1", x)  # (5, 4, 3)
    stated = report(model, x, ["1@channels_first", "0"])
    assert_reads(stated.loc["1:output"], out.movedim(1, -1).reshape(-1, 4))
    assert_reads(stated.loc["0:output"], hooked(model, "0", x))
    assert_reads(report(model, x, ["1:output@channels_last"]).loc["1:output"], out.reshape(-1, 3))
    seq = report(model, x, ["1@sequence_first"], token_index=0).loc["1:output"]
    assert_reads(seq, out[0])  # (T=5, N=4, d=3): token 0 of each of the 4 sequences
    with pytest.raises(ConfigError, match=r"must be one of \['channels_first', 'channels_last'"):
        report(model, x, ["1@nchw"])
    with pytest.raises(ConfigError, match="two layouts"):
        report(model, x, ["1@channels_first", "1@channels_last"])
    bad = report(nn.Sequential(nn.Linear(6, 4)), x, ["0@sequence_first"]).loc["0:output", "error"]
    assert "sequence_first needs a 3-D (T, N, C) tensor" in bad


# ------------------------------------------------------------ sequence-first


def encoder(batch_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def test_token_index_on_a_sequence_first_encoder_takes_the_batch_axis():
    model = encoder(batch_first=False)
    x = torch.randn(4, 6, 16)  # (T, N, d): the model's own input convention
    out = hooked(model, "", x)
    rows = report(model, x, ["<root>", "layers.0"], token_index=0)
    assert_reads(rows.loc["<root>:output"], out[0])  # (6, 16); was (4, 16)
    assert_reads(rows.loc["layers.0:output"], hooked(model, "layers.0", x)[0])
    # batches of 2 sequences (not of 2 tokens) give the same numbers, and the data row is (N, T*d)
    small = rank_report(model, x, layers=[], embeddings=["<root>"], token_index=0, batch_size=2,
                        progress=False).set_index("name")
    assert_reads(small.loc["<root>:output"], out[0])
    assert_reads(small.loc["<input>"], x.transpose(0, 1).reshape(6, -1))
    # every token, and the batch-first twin fed (N, T, d): the same kernel
    assert_reads(report(model, x, ["<root>"]).loc["<root>:output"], out.reshape(-1, 16))
    twin = encoder(batch_first=True)
    xb = x.transpose(0, 1)
    assert_reads(report(twin, xb, ["<root>"], token_index=0).loc["<root>:output"], hooked(twin, "", xb)[:, 0])


class Tagger(nn.Module):
    """Batch-first data, a sequence-first LSTM and GRU inside, a Linear on their output."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 8)
        self.gru = nn.GRU(8, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x (N, T, 5)
        h, _ = self.lstm(x.transpose(0, 1))  # (T, N, 8)
        h, _ = self.gru(h)
        return self.head(self.act(h)).transpose(0, 1)


def test_rnn_outputs_follow_batch_first():
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(7, 4, 5)  # (N, T, d)
    rows = report(model, x, ["lstm", "gru", "act", "head"], token_index=-1)
    assert_reads(rows.loc["lstm:output"], hooked(model, "lstm", x)[-1])  # (7, 8), not h_n
    assert_reads(rows.loc["gru:output"], hooked(model, "gru", x)[-1])
    assert_reads(rows.loc["act:output"], hooked(model, "act", x)[-1])
    assert_reads(rows.loc["head:output"], hooked(model, "head", x)[-1])  # (7, 3)


class Projected(nn.Module):
    """A Linear fed a transposed copy of the data, then a sequence-first encoder."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 16)
        self.enc = encoder(batch_first=False)

    def forward(self, x):  # (N, T, 5)
        return self.enc(self.proj(x.transpose(0, 1)))


def test_an_unknown_batch_axis_is_refused_for_token_index_and_can_be_stated():
    model = Projected().eval()
    x = torch.randn(6, 4, 5)
    rows = report(model, x, ["proj", "enc"], token_index=0)
    err = rows.loc["proj:output", "error"]
    assert "token_index needs the batch axis" in err and "'proj@sequence_first'" in err
    assert_reads(rows.loc["enc:output"], hooked(model, "enc", x)[0])
    stated = report(model, x, ["proj@sequence_first"], token_index=0).loc["proj:output"]
    assert_reads(stated, hooked(model, "proj", x)[0])
    # without token_index the axis does not matter: every token is read
    assert_reads(report(model, x, ["proj"]).loc["proj:output"], hooked(model, "proj", x).reshape(-1, 16))


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)

    def forward(self, x):  # (N, T, 3); sequence n has T - n tokens
        lengths = torch.arange(x.shape[1], x.shape[1] - x.shape[0], -1)
        return self.lstm(pack_padded_sequence(x, lengths, batch_first=True))


def test_a_packed_sequence_output_is_its_tokens_and_refuses_token_index():
    torch.manual_seed(0)
    model = Packed().eval()
    x = torch.randn(3, 6, 3)
    rows = report(model, x, ["lstm"])
    data = hooked(model, "lstm", x).data  # (6 + 5 + 4, 5): every token, no padding
    assert_reads(rows.loc["lstm:output"], data)  # was "output of type tuple has no tensor"
    err = report(model, x, ["lstm"], token_index=0).loc["lstm:output", "error"]
    assert "PackedSequence" in err and "token_index" in err


# ------------------------------------------------------------ padding masks


def tiny_bart():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    return transformers.BartModel(cfg).eval()


def test_padding_masks_apply_only_to_their_own_sequence():
    model = tiny_bart()
    ids = torch.tensor([[0, 7, 9, 11, 2], [0, 5, 2, 1, 1], [0, 21, 22, 2, 1]])
    mask = (ids != 1).long()
    batch = {"input_ids": ids, "attention_mask": mask}
    enc, dec = "encoder.layers.0", "decoder.layers.0"
    # no decoder_input_ids: BART makes them from input_ids, same length, no padding of its own
    rows = report(model, batch, [enc, dec, "encoder"])
    assert_reads(rows.loc[f"{enc}:output"], hooked(model, enc, batch)[mask.bool()])
    assert_reads(rows.loc["encoder:output"], hooked(model, "encoder", batch)[mask.bool()])
    err = rows.loc[f"{dec}:output", "error"]  # was read with the encoder's mask
    assert "cannot tell whether the batch's padding mask belongs to this output" in err
    assert "decoder_attention_mask" in err
    # decoder_input_ids without a decoder mask: no stated padding, every decoder token
    dec_ids = torch.tensor([[2, 0, 8, 9, 10], [2, 0, 6, 1, 1], [2, 0, 30, 31, 1]])
    both = dict(batch, decoder_input_ids=dec_ids)
    rows = report(model, both, [enc, dec, "<root>"])
    assert_reads(rows.loc[f"{dec}:output"], hooked(model, dec, both).reshape(-1, 16))
    assert_reads(rows.loc["<root>:output"], hooked(model, dec, both).reshape(-1, 16), rel=1e-4)
    assert_reads(rows.loc[f"{enc}:output"], hooked(model, enc, both)[mask.bool()])
    # with decoder_attention_mask: the decoder's own padding is left out
    dec_mask = (dec_ids != 1).long()
    full = dict(both, decoder_attention_mask=dec_mask)
    rows = report(model, full, [enc, dec])
    assert_reads(rows.loc[f"{dec}:output"], hooked(model, dec, full)[dec_mask.bool()])
    assert_reads(rows.loc[f"{enc}:output"], hooked(model, enc, full)[mask.bool()])
