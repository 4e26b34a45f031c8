"""Which layers a report or a tracker reads, and how their outputs become embedding rows.

Weights. Which rows a module has and how each reads as an out x in matrix is
the table of :mod:`rankbias.analysis.readings` (Linear, ConvNd and
ConvTransposeNd, Bilinear, Embedding, recurrent layers, attention, GPT-2's
Conv1D, ...; parametrised modules through their computed ``weight``). In
particular:

- an expanded layer of :mod:`rankbias.overparam` (``OverparamLinear``,
  ``OverparamConv2d``) is ONE entry, read through its collapsed ``weight``; its
  factors are not entries of their own (they are how the layer is stored, not
  layers of the network);
- ``nn.MultiheadAttention`` keeps Q, K and V in one ``in_proj_weight`` (3E x E)
  (or ``q/k/v_proj_weight`` when kdim/vdim differ): it is three entries
  ``<name>.q``, ``<name>.k``, ``<name>.v`` (with ``attention_heads=True`` one
  per head, ``<name>.q.h0``, ..., of head_dim x E each); its ``out_proj`` is
  an ordinary Linear entry;
- a recurrent layer is one entry per matrix, ``<name>.weight_ih_l0``, ...;
- a module of a type without a reading whose ``weight`` has 2+ dimensions is
  an entry whose weight is refused with a note (its layout is not known).

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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.data import DataLoader, Dataset

from rankbias.analysis.layouts import CHANNELS_FIRST, LAYOUTS
from rankbias.analysis.readings import WeightReading, reading_of
from rankbias.analysis.readings import qkv_projection as qkv_projection  # stream.py's import
from rankbias.errors import InvalidParameterError
from rankbias.framework.config import ConfigError
from rankbias.overparam import expanded_modules

ConvReading = Literal["flatten", "taps", "pooled"]
CONV_READINGS: tuple[ConvReading, ...] = get_args(ConvReading)
EmbeddingReading = Literal["position", "sample"]
LayerSelector = str | type | Sequence[str | type] | Callable[[str, nn.Module], bool] | None
#: Inputs fed to a model to read its embeddings (see ``stream.iter_batches``): a tensor
#: (N, ...), a dict of tensors (a tokenizer's output), a Dataset or a DataLoader.
ModelData = torch.Tensor | Mapping[str, torch.Tensor] | Dataset | DataLoader

#: ``name`` of the row that holds the rank of the (flattened) input data.
DATA_ROW_NAME = "<input>"
ROOT_NAME = "<root>"



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
        raise InvalidParameterError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


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
    """One weight row: ``name``, the module that holds it, and which part of it
    (``"q"``/``"k"``/``"v"`` of an attention module, ``"weight_ih_l0"`` of a
    recurrent one; None: the module's ``weight``)."""

    name: str
    module_name: str
    module: nn.Module
    part: str | None = None
    head: int | None = None

    @property
    def type(self) -> str:
        kind = type(self.module).__name__
        if self.part is None:
            return kind
        return f"{kind}[{self.part}]" if self.head is None else f"{kind}[{self.part}, head {self.head}]"

    @property
    def reading(self) -> WeightReading | None:
        return reading_of(self.module)

    def stored(self) -> torch.Tensor | None:
        """The row's tensor as its module stores it."""
        r = self.reading
        return _weight_of(self.module) if r is None else r.stored_of(self.module, self.part, self.head)

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        w = self.stored()
        return None if w is None or is_lazy(w) else tuple(w.shape)

    def weight(self) -> torch.Tensor | str:
        """The row's matrix, out x in (a conv kernel: (out, in/groups, *k)), or why it is not read."""
        w, r = self.stored(), self.reading
        if w is None:
            return "the module holds no weight now"
        if is_lazy(w):
            return "uninitialised lazy weight: run one forward pass before measuring it"
        if r is None:
            return (f"layout of {type(self.module).__name__}.weight {tuple(w.shape)} is not known "
                    "(which dimension is out, which is in); state it with "
                    "rankbias.analysis.register_weight_reading(type, 'out_in' | 'in_out' | 'conv')")
        return r.orient(self.module, w)


def _row_name(module_name: str, part: str | None, head: int | None) -> str:
    if part is None:
        return module_name
    return f"{module_name}.{part}" if head is None else f"{module_name}.{part}.h{head}"


def _all_entries(model: nn.Module, attention_heads: bool) -> list[WeightEntry]:
    out: list[WeightEntry] = []
    for n, m in _named_modules(model):
        r = reading_of(m)
        if r is None:
            if _weight_of(m) is not None:
                out.append(WeightEntry(n, n, m))  # refused with a note by weight()
            continue
        out += [WeightEntry(_row_name(n, p, h), n, m, p, h) for p, h in r.parts(m, attention_heads)]
    return out


def _warn_if_empty(model: nn.Module, found: Sequence[WeightEntry]) -> None:
    """A model that holds 2-D+ parameters but has no weight row is never read silently."""
    if found:
        return
    held = [f"{pn if n == ROOT_NAME else f'{n}.{pn}'} {tuple(p.shape)}"
            for n, m in _named_modules(model) for pn, p in m.named_parameters(recurse=False)
            if not is_lazy(p) and p.ndim >= 2]
    if held:
        shown = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "")
        warnings.warn(
            f"the model has no weight rows, but {len(held)} parameter(s) with 2+ dimensions "
            f"({shown}): their layer types have no reading as a matrix, or state that they are "
            "none; a custom type's layout is stated with rankbias.analysis.register_weight_reading "
            "(see docs/analysis.md, Weight readings)",
            UserWarning, stacklevel=3,
        )


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
        _warn_if_empty(model, found)
        return found
    if callable(layers) and not isinstance(layers, type):
        return [e for e in found if layers(e.name, e.module)]
    sel = [layers] if isinstance(layers, str | type) else list(layers)
    bad_sel = [s for s in sel if not isinstance(s, str | type)]
    if bad_sel:
        raise InvalidParameterError(f"layers: expected names, glob patterns or module classes, got {bad_sel!r}")
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
    forward call is observed, ``reader`` the weight layer whose output the row
    is; ``layout``: the layout the user stated (``"name@channels_first"``),
    else it is found during the forward pass (:mod:`rankbias.analysis.layouts`).
    """

    row: str
    module: nn.Module
    kind: Literal["output", "input", "qkv"] = "output"
    part: str | None = None
    head: int | None = None
    reader: nn.Module | None = None
    layout: str | None = None
    note: str | None = None  # why this row has no embedding (nothing is hooked)


def weight_targets(model: nn.Module, entries: Sequence[WeightEntry]) -> list[Target]:
    """The embedding source of each weight row (an MHA's ``out_proj``: the MHA output)."""
    parents = {}
    for _, m in _named_modules(model):
        if isinstance(m, nn.MultiheadAttention):
            parents[id(m.out_proj)] = m
    out = []
    for e in entries:
        note = e.reading.output_note if e.reading is not None else None
        if note is not None:
            out.append(Target(e.name, e.module, "output", e.part, e.head, note=note))
        elif e.part is not None:
            out.append(Target(e.name, e.module, "qkv", e.part, e.head, e.module))
        elif id(e.module) in parents:
            out.append(Target(e.name, parents[id(e.module)], "output", reader=e.module))
        else:
            out.append(Target(e.name, e.module, "output", reader=e.module))
    return out


def embedding_targets(model: nn.Module, specs: str | Sequence[str] | None) -> list[Target]:
    """Targets of ``embeddings=["NAME_OR_GLOB[:input|:output][@LAYOUT]", ...]``
    (default ``:output``; ``<root>`` is the model itself; LAYOUT one of
    :data:`~rankbias.analysis.layouts.LAYOUTS`, for a tensor whose layout the
    forward pass cannot tell); row names ``"<module>:<where>"``."""
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
            raise ConfigError(f"embeddings: expected 'NAME[:input|:output][@LAYOUT]' strings, got {spec!r}")
        spec, layout = _spec_layout(spec)
        pattern, sep, where = spec.rpartition(":")
        if not sep or where not in ("input", "output"):
            pattern, where = spec, "output"
        hits = [(n, m) for n, m in mods if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        for n, m in hits:
            row = f"{n}:{where}"
            same = [t for t in out if t.row == row]
            if same and same[0].layout != layout:
                raise ConfigError(f"embeddings: {row!r} is asked with two layouts, "
                                  f"{same[0].layout!r} and {layout!r}")
            if not same:
                out.append(Target(row, m, where, reader=m if where == "output" else None, layout=layout))
    if unmatched:
        raise _unmatched_error("modules", "module", unmatched, names)
    return out


def _spec_layout(spec: str) -> tuple[str, str | None]:
    name, sep, layout = spec.rpartition("@")
    if not sep:
        return spec, None
    if layout not in LAYOUTS or not name:
        raise ConfigError(f"embeddings: {spec!r}: the layout after '@' must be one of {list(LAYOUTS)} "
                          "(channels_first: (N, C, ...); channels_last: (N, ..., C); sequence_first: (T, N, C))")
    return name, layout


def embedding_rows(out: torch.Tensor, layout: str | None, reading: EmbeddingReading) -> torch.Tensor:
    """A batch-first output as an embedding matrix: a channels-first output
    (N, C, *spatial) per position ((N * prod(spatial)) x C) or per sample
    (N x (C * prod(spatial))); any other (..., d) as prod(...) x d."""
    if layout == CHANNELS_FIRST and out.ndim >= 3:
        if reading == "position":
            return out.movedim(1, -1).reshape(-1, out.shape[1])  # (N * prod(spatial), C)
        return out.reshape(out.shape[0], -1)  # (N, C * prod(spatial))
    if out.ndim == 1:
        return out.reshape(-1, 1)
    return out.reshape(-1, out.shape[-1])  # (..., d) -> (prod(...), d)
