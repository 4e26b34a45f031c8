"""Which layers a report or a tracker reads, and how their outputs become embedding rows.

Weights. Every module with a 2-D+ ``weight`` is one entry, read through that
attribute: Linear, ConvNd, ConvTransposeNd, Embedding, Bilinear, custom and
parametrised modules. Two kinds of module are read differently:

- an expanded layer of :mod:`rankbias.overparam` (``OverparamLinear``,
  ``OverparamConv2d``) is ONE entry, read through its collapsed ``weight``; its
  factors are not entries of their own (they are how the layer is stored, not
  layers of the network);
- ``nn.MultiheadAttention`` keeps Q, K and V in one ``in_proj_weight`` (3E x E)
  (or ``q/k/v_proj_weight`` when kdim/vdim differ): it is three entries
  ``<name>.q``, ``<name>.k``, ``<name>.v`` (with ``attention_heads=True`` one
  per head, ``<name>.q.h0``, ..., of head_dim x E each); its ``out_proj`` is
  an ordinary Linear entry.

Embeddings. :class:`Target` says where a row's embeddings come from: the
output of its module (a weight layer's own output), the input or output of any
module (``embeddings=["fc:input", "layer4"]``), the Q/K/V projections of an
attention module (computed from its inputs), or, for ``out_proj`` of an
``nn.MultiheadAttention``, the attention module's output (MHA applies
``out_proj``'s weight functionally, so ``out_proj``'s own forward never runs,
and the attention output IS its output).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rankbias.framework.config import ConfigError
from rankbias.overparam import OverparamConv2d, expanded_modules

ConvReading = Literal["flatten", "taps", "pooled"]
CONV_READINGS = ("flatten", "taps", "pooled")
EmbeddingReading = Literal["position", "sample"]
LayerSelector = str | type | Sequence[str | type] | Callable[[str, nn.Module], bool] | None

#: ``name`` of the row that holds the rank of the (flattened) input data.
DATA_ROW_NAME = "<input>"
ROOT_NAME = "<root>"

_CONV_TYPES = (nn.modules.conv._ConvNd, OverparamConv2d)
_QKV = ("q", "k", "v")


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    try:
        w = getattr(module, "weight", None)
    except Exception:  # a parametrization that cannot be evaluated
        return None
    if isinstance(w, torch.Tensor) and w.ndim >= 2:
        return w
    return None


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """named_modules without the factors inside expanded layers (``<root>`` for the model)."""
    inner = [n + "." for n, _ in expanded_modules(model) if n]
    whole = any(m is model for _, m in expanded_modules(model))
    out = []
    for n, m in model.named_modules():
        if n and (whole or any(n.startswith(p) for p in inner)):
            continue
        out.append((n or ROOT_NAME, m))
    return out


@dataclass(frozen=True)
class WeightEntry:
    """One weight row: ``name``, the module that holds it, and which part of it."""

    name: str
    module_name: str
    module: nn.Module
    part: str | None = None  # "q", "k", "v" of an attention module
    head: int | None = None

    @property
    def type(self) -> str:
        kind = type(self.module).__name__
        if self.part is None:
            return kind
        return f"{kind}[{self.part}]" if self.head is None else f"{kind}[{self.part}, head {self.head}]"

    def weight(self) -> torch.Tensor | None:
        if self.part is None:
            return _weight_of(self.module)
        w, _ = qkv_projection(self.module, self.part, self.head)
        return w


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


def _all_entries(model: nn.Module, attention_heads: bool) -> list[WeightEntry]:
    out: list[WeightEntry] = []
    for n, m in _named_modules(model):
        if isinstance(m, nn.MultiheadAttention):
            heads = range(m.num_heads) if attention_heads else [None]
            for part in _QKV:
                for h in heads:
                    suffix = part if h is None else f"{part}.h{h}"
                    out.append(WeightEntry(f"{n}.{suffix}", n, m, part, h))
        elif _weight_of(m) is not None:
            out.append(WeightEntry(n, n, m))
    return out


def _unmatched_error(what: str, noun: str, unmatched: Sequence[str], names: Sequence[str]) -> ConfigError:
    hints = []
    for p in unmatched:
        close = difflib.get_close_matches(p, names, n=3, cutoff=0.6)
        if close:
            hints.append(f"{p!r}: did you mean {' or '.join(map(repr, close))}?")
    avail = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return ConfigError(f"{what}: {list(unmatched)} match no {noun}{hint}; {what} are: {avail}")


def weight_entries(
    model: nn.Module, layers: LayerSelector = None, *, attention_heads: bool = False
) -> list[WeightEntry]:
    """The weight rows of ``model`` in module order (see the module docstring).

    ``layers``: None (all); names or glob patterns (``"layer1.*"``), matched
    against the row name or its module's name; module classes (``nn.Conv2d``);
    a mix; or a predicate ``f(name, module) -> bool``. A name or pattern that
    matches nothing is a ConfigError listing the names there are.
    """
    _check_model(model)
    found = _all_entries(model, attention_heads)
    if layers is None:
        return found
    if callable(layers) and not isinstance(layers, type):
        return [e for e in found if layers(e.name, e.module)]
    sel = [layers] if isinstance(layers, str | type) else list(layers)
    bad_sel = [s for s in sel if not isinstance(s, str | type)]
    if bad_sel:
        raise TypeError(f"layers: expected names, glob patterns or module classes, got {bad_sel!r}")
    names = [s for s in sel if isinstance(s, str)]
    types = tuple(s for s in sel if isinstance(s, type))

    def hit(e: WeightEntry, p: str) -> bool:
        return fnmatch.fnmatchcase(e.name, p) or fnmatch.fnmatchcase(e.module_name, p)

    unmatched = [p for p in names if not any(hit(e, p) for e in found)]
    if unmatched:
        raise _unmatched_error("layers", "layer with a 2-D+ weight", unmatched, [e.name for e in found])
    return [e for e in found if any(hit(e, p) for p in names) or (types and isinstance(e.module, types))]


def weight_layers(model: nn.Module, layers: LayerSelector = None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``model`` with a 2-D+ ``weight``, in module
    order (an expanded layer once, without its factors); ``layers`` as in
    :func:`weight_entries`."""
    pairs = [(e.name, e.module) for e in weight_entries(model, layers) if e.part is None]
    return pairs


# ------------------------------------------------------------------ embeddings


@dataclass(frozen=True)
class Target:
    """Where a row's embeddings come from.

    ``kind``: "output" / "input" of ``module``, "qkv" (``part``/``head`` of an
    attention module, computed from its inputs); ``module`` is the module whose
    forward call is observed, ``reader`` the module whose kind decides how an
    output is read (a conv's per position or per sample).
    """

    row: str
    module: nn.Module
    kind: Literal["output", "input", "qkv"] = "output"
    part: str | None = None
    head: int | None = None
    reader: nn.Module | None = None


def weight_targets(model: nn.Module, entries: Sequence[WeightEntry]) -> list[Target]:
    """The embedding source of each weight row (an MHA's ``out_proj``: the MHA output)."""
    parents = {}
    for _, m in _named_modules(model):
        if isinstance(m, nn.MultiheadAttention):
            parents[id(m.out_proj)] = m
    out = []
    for e in entries:
        if e.part is not None:
            out.append(Target(e.name, e.module, "qkv", e.part, e.head, e.module))
        elif id(e.module) in parents:
            out.append(Target(e.name, parents[id(e.module)], "output", reader=e.module))
        else:
            out.append(Target(e.name, e.module, "output", reader=e.module))
    return out


def embedding_targets(model: nn.Module, specs: str | Sequence[str] | None) -> list[Target]:
    """Targets of ``embeddings=["NAME_OR_GLOB[:input|:output]", ...]`` (default
    ``:output``; ``<root>`` is the model itself); row names ``"<module>:<where>"``."""
    _check_model(model)
    if specs is None:
        return []
    specs = [specs] if isinstance(specs, str) else list(specs)
    mods = _named_modules(model)
    names = [n for n, _ in mods]
    out: list[Target] = []
    unmatched = []
    for spec in specs:
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"embeddings: expected 'NAME[:input|:output]' strings, got {spec!r}")
        pattern, sep, where = spec.rpartition(":")
        if not sep or where not in ("input", "output"):
            pattern, where = spec, "output"
        hits = [(n, m) for n, m in mods if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        for n, m in hits:
            row = f"{n}:{where}"
            if all(t.row != row for t in out):
                out.append(Target(row, m, where, reader=m if where == "output" else None))
    if unmatched:
        raise _unmatched_error("modules", "module", unmatched, names)
    return out


def embedding_rows(out: torch.Tensor, reader: nn.Module | None, reading: EmbeddingReading) -> torch.Tensor:
    """An output as an embedding matrix, one row per sample: a conv output
    (N, C, *spatial) per position ((N * prod(spatial)) x C) or per sample
    (N x (C * prod(spatial))); any other (..., d) as prod(...) x d."""
    is_conv = isinstance(reader, _CONV_TYPES) and out.ndim >= 3
    if is_conv and reading == "position":
        return out.movedim(1, -1).reshape(-1, out.shape[1])  # (N * prod(spatial), C)
    if is_conv and reading == "sample":
        return out.reshape(out.shape[0], -1)  # (N, C * prod(spatial))
    if out.ndim == 1:
        return out.reshape(-1, 1)
    return out.reshape(-1, out.shape[-1])  # (..., d) -> (prod(...), d)


def is_conv(module: nn.Module | None) -> bool:
    return isinstance(module, _CONV_TYPES)
