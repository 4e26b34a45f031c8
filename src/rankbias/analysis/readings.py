"""How each layer type's weights read as matrices: the one table of readings.

Every weight row is the matrix of a linear map, **out x in** (a conv kernel
as (out, in/groups, *k), which ``conv_reading`` flattens to out x (in/groups ·
prod k) or splits into taps). Libraries do not all store weights that way:
``nn.ConvTranspose*`` keeps (in, out/groups, *k), Hugging Face's ``Conv1D``
(GPT-2) keeps (in, out), a recurrent layer keeps several matrices under its own
names. :data:`READINGS` maps a layer type to its :class:`WeightReading`: the
rows it has, each row's stored tensor, and how that tensor becomes out x in. A
module takes the reading of the nearest class in its MRO that has one, so a
subclass of ``nn.Linear`` (``LazyLinear``, a parametrised Linear) reads as a
Linear. A module of any other type whose ``weight`` has 2+ dimensions has no
known layout: it is a row whose weight is refused with a note, never guessed
(:func:`register_weight_reading` states a custom type's layout).

Types of other libraries are found by their defining module and name
(:data:`FOREIGN`), resolved to the class object only once that module is
loaded: a model holding a ``transformers`` Conv1D has loaded it, and rankbias
never imports ``transformers`` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrize import ParametrizationList

from rankbias.framework.config import ConfigError
from rankbias.overparam import OverparamConv1D, OverparamConv2d, OverparamLinear

_QKV = ("q", "k", "v")
Part = tuple[str | None, int | None]  # (part, head); part None: the module's ``weight``


@dataclass(frozen=True)
class WeightReading:
    """How one layer type's parameters are read (a row of the table in docs/analysis.md).

    ``stored`` and ``read`` describe the layouts in words; ``parts(module,
    attention_heads)`` lists the rows' (part, head); ``stored_of(module, part,
    head)`` is a row's tensor as stored; ``orient(module, tensor)`` turns it
    into out x in (a conv kernel: (out, in/groups, *k)), leading dimensions
    (a batch of models) kept. ``output_note``: why the module's output is not
    a row's output (no embedding for that row), None when it is.
    """

    stored: str
    read: str
    parts: Callable[[nn.Module, bool], list[Part]]
    stored_of: Callable[[nn.Module, str | None, int | None], torch.Tensor]
    orient: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    output_note: str | None = None


def _own_weight(m: nn.Module, heads: bool = False) -> list[Part]:
    try:
        w = getattr(m, "weight", None)
    except Exception:  # a parametrization that cannot be evaluated
        return []
    return [(None, None)] if isinstance(w, torch.Tensor) else []


def _weight(m: nn.Module, part: str | None = None, head: int | None = None) -> torch.Tensor:
    return m.weight if part is None else getattr(m, part)


def _as_stored(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    return w


def _transposed(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    return w.mT  # (..., in, out) -> (..., out, in)


def _conv_transpose(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """(..., in, out/g, *k) -> (..., out, in/g, *k): group j's block W_j (in/g, out/g, *k)
    becomes (out/g, in/g, *k), stacked as a grouped conv's weight is."""
    nk = len(m.kernel_size)
    lead, (cin, og), k = w.shape[: -2 - nk], w.shape[-2 - nk: -nk], w.shape[-nk:]
    g, b = m.groups, len(w.shape[: -2 - nk])
    blocks = w.reshape(*lead, g, cin // g, og, *k).transpose(b + 1, b + 2)  # (..., g, out/g, in/g, *k)
    return blocks.reshape(*lead, g * og, cin // g, *k)


def _bilinear(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    return w.flatten(-2)  # (..., out, in1, in2) -> (..., out, in1 * in2)


def _recurrent_parts(m: nn.Module, heads: bool = False) -> list[Part]:
    names = getattr(m, "_flat_weights_names", None)  # RNNBase: per layer and direction
    if names is None:
        names = [n for n, _ in m.named_parameters(recurse=False)]
    return [(n, None) for n in names if n.startswith("weight") and getattr(m, n, None) is not None]


def qkv_projection(mha: nn.MultiheadAttention, part: str, head: int | None = None):
    """(weight (d, E_in), bias (d,) or None) of the Q, K or V projection of ``mha``
    (of one head: d = head_dim, else d = embed_dim)."""
    i = _QKV.index(part)
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight[i * E:(i + 1) * E]  # (E, E)
    else:
        w = getattr(mha, f"{part}_proj_weight")  # (E, kdim or vdim)
    b = mha.in_proj_bias[i * E:(i + 1) * E] if mha.in_proj_bias is not None else None
    if head is not None:
        hd = mha.head_dim
        w = w[head * hd:(head + 1) * hd]
        b = b[head * hd:(head + 1) * hd] if b is not None else None
    return w, b


def _qkv_parts(m: nn.Module, heads: bool) -> list[Part]:
    return [(p, h) for p in _QKV for h in (range(m.num_heads) if heads else [None])]


def _no_parts(m: nn.Module, heads: bool = False) -> list[Part]:
    return []


def _plain(stored: str, read: str, orient=_as_stored) -> WeightReading:
    return WeightReading(stored, read, _own_weight, _weight, orient)


OUT_IN = _plain("(out, in)", "as stored")
IN_OUT = _plain("(in, out)", "transposed: out x in", _transposed)
CONV = _plain("(out, in/groups, *k)", "as stored (see Conv readings)")
CONV_TRANSPOSE = _plain("(in, out/groups, *k)", "(out, in/groups, *k), group by group",
                        _conv_transpose)
_RECURRENT = WeightReading(
    "weight_ih_l{k}: (gates·hidden, in), weight_hh_l{k}: (gates·hidden, hidden or proj), "
    "weight_hr_l{k}: (proj, hidden); _reverse for the backward direction",
    "one row per matrix, as stored (all gates of a matrix together)",
    _recurrent_parts, _weight, _as_stored,
    output_note="the module's output is not this matrix's output (its output is internal to "
                "the recurrent layer); embeddings=['<module>'] reads the module's output",
)
_ELEMENTWISE = WeightReading("(*normalized_shape)", "not a matrix (an elementwise scale): no row",
                             _no_parts, _weight, _as_stored)

#: layer type -> its reading; looked up along a module's MRO.
READINGS: dict[type, WeightReading] = {
    nn.Linear: OUT_IN,
    OverparamLinear: OUT_IN,
    OverparamConv1D: IN_OUT,
    nn.Conv1d: CONV, nn.Conv2d: CONV, nn.Conv3d: CONV,
    OverparamConv2d: CONV,
    nn.ConvTranspose1d: CONV_TRANSPOSE, nn.ConvTranspose2d: CONV_TRANSPOSE,
    nn.ConvTranspose3d: CONV_TRANSPOSE,
    nn.Bilinear: _plain("(out, in1, in2)", "out x (in1·in2): the map from x1 ⊗ x2", _bilinear),
    nn.Embedding: _plain("(num_embeddings, dim)", "as stored: one row per token vector"),
    nn.EmbeddingBag: _plain("(num_embeddings, dim)", "as stored: one row per token vector"),
    nn.RNNBase: _RECURRENT,
    nn.RNNCellBase: _RECURRENT,
    nn.MultiheadAttention: WeightReading(
        "in_proj_weight (3E, E) or q/k/v_proj_weight (E, kdim/vdim)",
        "three rows q, k, v (E x E_in; per head head_dim x E_in)",
        _qkv_parts, lambda m, p, h: qkv_projection(m, p, h)[0], _as_stored),
    nn.LayerNorm: _ELEMENTWISE,
    nn.RMSNorm: _ELEMENTWISE,
    # the parametrised module's own row reads the computed weight
    ParametrizationList: WeightReading("original (as the parametrised weight)",
                                       "no row: read through the parametrised module's weight",
                                       _no_parts, _weight, _as_stored),
}

#: types of other libraries: (module, class name) -> reading, resolved once that module is loaded
FOREIGN: dict[tuple[str, str], WeightReading] = {
    ("transformers.pytorch_utils", "Conv1D"): IN_OUT,  # GPT-2: y = x W + b, W (in, out)
}

_NAMED = {"out_in": OUT_IN, "in_out": IN_OUT, "conv": CONV, "conv_transpose": CONV_TRANSPOSE}


def _foreign() -> dict[type, WeightReading]:
    found = {}
    for (mod, name), reading in FOREIGN.items():
        cls = getattr(sys.modules.get(mod), name, None)
        if isinstance(cls, type):
            found[cls] = reading
    return found


def reading_of(module: nn.Module) -> WeightReading | None:
    """The reading of ``module``'s type (of the nearest class in its MRO), or None."""
    foreign = _foreign()
    for cls in type(module).__mro__:
        if cls in READINGS:
            return READINGS[cls]
        if cls in foreign:
            return foreign[cls]
    return None


def register_weight_reading(cls: type, reading: str | WeightReading) -> None:
    """State how a custom layer type's ``weight`` reads as out x in.

    ``reading``: ``"out_in"`` (stored (out, in), as ``nn.Linear``), ``"in_out"``
    (stored (in, out), as GPT-2's ``Conv1D``), ``"conv"`` ((out, in/groups,
    *k)), ``"conv_transpose"`` ((in, out/groups, *k), needs ``kernel_size`` and
    ``groups`` attributes), or a :class:`WeightReading`. A type that already
    has a different reading is a ConfigError.
    """
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ConfigError(f"register_weight_reading: expected an nn.Module subclass, got {cls!r}")
    if isinstance(reading, str):
        if reading not in _NAMED:
            raise ConfigError(f"register_weight_reading: reading must be one of "
                              f"{', '.join(map(repr, _NAMED))} or a WeightReading, got {reading!r}")
        reading = _NAMED[reading]
    if not isinstance(reading, WeightReading):
        raise ConfigError(f"register_weight_reading: expected a reading name or a WeightReading, "
                          f"got {type(reading).__name__}")
    if READINGS.get(cls, reading) is not reading:
        raise ConfigError(f"register_weight_reading: {cls.__name__} already has a reading "
                          f"({READINGS[cls].read}); readings are not replaced")
    READINGS[cls] = reading
