"""Model-level expansion and collapse: which layers are expanded, and the cases that
would silently change what a model computes (aliases, tied weights, layers with their
own forward, parametrised or hooked weights, frozen layers).

Rules (each tested in tests/test_overparam_models.py):

- One module under several names (``self.dec = self.enc``): one expanded module,
  set under every name; collapse likewise, so the alias survives.
- A weight shared with another module (GPT-2's ``lm_head`` tied to ``wte``): refused
  (:class:`~rankbias.errors.UnsupportedError`) naming both ends; expanding one end
  would untie them. Pass the layer in ``ignore``.
- A ``Linear``/``Conv2d`` subclass with its own ``forward`` (timm's ``StdConv2d``,
  ``ScaledStdConv2d``, ``Conv2dSame``): left as it is, one warning lists them (their
  forward transforms the weight or the input; a plain conv would compute something else).
- A parametrised weight (``torch.nn.utils.parametrizations.spectral_norm`` /
  ``weight_norm``) or a layer with hooks (old-style ``weight_norm`` /
  ``spectral_norm`` are hooks): refused, naming the layers; the parametrisation or
  the hook would be lost.
- A frozen layer (weight ``requires_grad=False``): left as it is (one warning), since
  expanding changes only how a layer trains; a frozen bias alone stays frozen.
- Hugging Face ``Conv1D`` (GPT-2): expanded as a linear map (weight (in, out)).
- State beyond weight and bias (a subclass's extra parameters and buffers): carried
  under the same names through expansion and collapse; submodules, a
  ``get_extra_state`` override, a bias held as a buffer, or a name the expanded module
  uses itself: refused (:func:`~rankbias.overparam.layers.unsupported_state`).
- A selected layer also referenced outside the module tree (a plain list/tuple/set/dict
  attribute, an unregistered attribute, a bound method of it): refused by
  :func:`overparameterize` and :func:`collapse`, naming the attribute; that reference
  would keep running the old layer. Closures, globals and attributes of non-module
  objects cannot be searched (docs/overparam.md).
- Nothing expanded: a warning.

Writes to an expanded layer's computed ``weight`` (or folded ``bias``) are errors, see
:mod:`rankbias.overparam._computed`.
"""

from __future__ import annotations

import collections
import copy
import difflib
import sys
import types
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.overparam.layers import (
    INITS,
    LAYERS,
    ExpandLayers,
    FactorInit,
    Mode,
    OverparamConv1D,
    OverparamConv2d,
    OverparamLinear,
    _check_depth_width,
    _check_mode,
    _Expanded,
    unsupported_state,
)

__all__ = ["collapse", "expanded_modules", "overparameterize", "set_forward_mode"]


def _hf_conv1d() -> type | None:
    """Hugging Face's ``Conv1D`` class if transformers is already imported (a model that
    holds one has imported it; importing transformers ourselves would cost seconds)."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def _own_forward(m: nn.Module) -> bool:
    """A Linear/Conv2d subclass whose forward differs from its base's."""
    if isinstance(m, nn.Conv2d):
        cls = type(m)
        return cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward
    return type(m).forward is not nn.Linear.forward


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or getattr(m, "_state_dict_hooks", None)
                or getattr(m, "_load_state_dict_pre_hooks", None))


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every qualified name it is reachable under."""
    names: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(n)
    return names


def _set_child(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return model


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _list(items: list[str], k: int = 8) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    width: float = 1.0,
    layers: ExpandLayers = "all",
    ignore: Iterable[str] = (),
    init: FactorInit = "fresh",
    inplace: bool = False,
    *,
    mode: Mode = "auto",
    factor_bias: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` (and Hugging Face ``Conv1D``) of
    ``model`` by its expanded form.

    Layers with their own forward and frozen layers are left as they are, with a
    warning; so is the whole model when nothing was expanded.

    Parameters
    ----------
    model : nn.Module
        Any module (a bare Linear/Conv2d is expanded and returned itself).
    depth : int, default 2
        Factors per layer (>= 1; 1 keeps the layer's shape but still
        re-initialises it with ``init="fresh"``).
    width : float, default 1.0
        Hidden width multiplier, hidden = round(width * out) (a multiple of
        ``groups`` for convs).
    layers : {"all", "conv", "linear"}, default "all"
        Which layer types to expand (Conv1D is linear).
    ignore : iterable of str, default ()
        Qualified module names (as in ``model.named_modules()``) to leave alone;
        a name also covers everything below it (``"layer4"``). An unknown name is
        an error.
    init : {"fresh", "preserve"}, default "fresh"
        "fresh" re-initialises the factors as Huh et al.'s code does
        (kaiming-normal, fan_in for linear and fan_out for conv factors, gain 1
        inside, ReLU gain on the last factor); "preserve" factorises the current
        weights (balanced split) so the expanded model computes the same function
        at step 0 (fine-tuning).
    inplace : bool, default False
        Modify ``model`` itself instead of a deep copy.
    mode : {"auto", "kernel", "sequential"}, default "auto"
        Forward form of the expanded layers (see :mod:`rankbias.overparam.layers`;
        change later with :func:`set_forward_mode`).
    factor_bias : bool, default False
        A bias on every factor (the authors' layout; same function class,
        different training dynamics) instead of on the last one only.
    generator : torch.Generator, optional
        Random source for "fresh" init (and the extra units of "preserve").

    Returns
    -------
    nn.Module
        The expanded model; :func:`collapse` turns it back into the original
        architecture.

    Raises
    ------
    InvalidParameterError
        ``model`` is not an ``nn.Module``; ``depth`` not an int >= 1, ``width`` not
        a finite number > 0; an unknown ``layers``, ``init`` or ``mode``; a name of
        ``ignore`` that is not a module of ``model``.
    UnsupportedError
        A selected layer shares a parameter with another module (tied weights), is
        parametrised, has hooks, holds state that cannot be carried (submodules,
        ``get_extra_state``), or is also referenced outside the module tree (a
        list/dict attribute); put it in ``ignore``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from rankbias import collapse, overparameterize
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> deep = overparameterize(model, depth=3, init="preserve")
    >>> type(deep[0]).__name__
    'OverparamLinear'
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(deep(x), model(x), atol=1e-5)  # "preserve": the same function
    True
    >>> type(collapse(deep)[0]).__name__
    'Linear'
    """
    depth, width = _check_depth_width(depth, width)
    if layers not in LAYERS:
        raise InvalidParameterError(f"layers must be one of {', '.join(map(repr, LAYERS))}; got {layers!r}")
    if init not in INITS:
        raise InvalidParameterError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    _check_mode(mode)
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    ignore = _checked_ignore(model, ignore)
    # checked on the model as given: a refused case is refused before any copy (an
    # old-style weight_norm layer cannot even be deep-copied)
    targets, own_forward, frozen = _select(model, layers, ignore)
    _refuse_unsafe(model, targets, _aliases(model))
    _warn_left_alone(own_forward, frozen, bool(targets), layers, type(model).__name__)
    if not inplace:
        model = copy.deepcopy(model)
        targets, _, _ = _select(model, layers, ignore)
    kw = {"depth": depth, "width": width, "init": init, "mode": mode,
          "factor_bias": factor_bias, "generator": generator}
    for m, all_names in targets:
        if isinstance(m, nn.Conv2d):
            new = OverparamConv2d.from_conv(m, **kw)
        elif isinstance(m, nn.Linear):
            new = OverparamLinear.from_linear(m, **kw)
        else:
            new = OverparamConv1D.from_conv1d(m, **kw)
        new.train(m.training)
        for name in all_names:
            model = _set_child(model, name, new)
    return model


def _checked_ignore(model: nn.Module, ignore: Iterable[str] | str) -> tuple[str, ...]:
    """``ignore`` as a tuple of module names, each one of ``model``'s (else an error with near misses)."""
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    unknown = [n for n in ignore if n not in names or n == ""]
    if unknown:
        hints = {n: difflib.get_close_matches(n, names, n=3) for n in unknown}
        raise InvalidParameterError(
            f"ignore: unknown module name(s) {unknown}; accepted: qualified names from "
            f"model.named_modules(), e.g. {sorted(x for x in names if x)[:8]}"
            + "".join(f"; did you mean {v} for {k!r}?" for k, v in hints.items() if v)
        )
    return ignore


def _warn_left_alone(own_forward: list[str], frozen: list[str], any_target: bool, layers: str,
                     model_type: str) -> None:
    # stacklevel 3: the warning points at the caller of overparameterize
    if own_forward:
        warnings.warn(
            f"overparameterize: left {len(own_forward)} layer(s) with their own forward as they "
            f"are (a product of plain layers would compute something else): {_list(own_forward)}",
            stacklevel=3)
    if frozen:
        warnings.warn(
            f"overparameterize: left {len(frozen)} frozen layer(s) (weight requires_grad=False) "
            f"as they are: {_list(frozen)}", stacklevel=3)
    if not any_target:
        warnings.warn(f"overparameterize: nothing was expanded (no trainable, plain {layers!r} "
                      f"layer outside `ignore` in this {model_type})", stacklevel=3)


def _select(model: nn.Module, layers: str, ignore: tuple[str, ...]):
    """(targets [(module, all its names)], layers with their own forward, frozen layers)."""
    conv1d = _hf_conv1d()
    types: tuple[type, ...] = {"all": (nn.Linear, nn.Conv2d), "conv": (nn.Conv2d,),
                               "linear": (nn.Linear,)}[layers]
    if conv1d is not None and layers != "conv":
        types = (*types, conv1d)
    aliases = _aliases(model)
    inside = {id(sub) for m in model.modules() if isinstance(m, _Expanded) for sub in m.modules()}
    targets, own_forward, frozen = [], [], []
    for m in model.modules():  # each module once, however many names it has
        if not isinstance(m, types) or id(m) in inside:
            continue
        all_names = aliases[id(m)]
        if any(_matches(n, ignore) for n in all_names):
            continue
        label = all_names[0] or type(m).__name__
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise UnsupportedError(f"layer {label!r} is lazy and not initialised yet: run one forward first")
        if (conv1d is None or not isinstance(m, conv1d)) and _own_forward(m):
            own_forward.append(f"{label} ({type(m).__name__})")
        elif "weight" in m._parameters and not m.weight.requires_grad:
            frozen.append(label)
        else:
            targets.append((m, all_names))
    return targets, own_forward, frozen


def _expanded_class(m: nn.Module) -> type[_Expanded]:
    if isinstance(m, nn.Conv2d):
        return OverparamConv2d
    return OverparamLinear if isinstance(m, nn.Linear) else OverparamConv1D


def _refuse_unsafe(model: nn.Module, targets, aliases) -> None:
    """Refuse, before anything is copied or replaced, every selected layer whose
    expansion would change what the model computes."""
    _refuse_shared(model, targets, aliases)
    state = [f"{names[0] or '<model>'} ({'; '.join(why)})" for m, names in targets
             if (why := unsupported_state(m, _expanded_class(m)))]
    if state:
        raise UnsupportedError(
            f"overparameterize: layer(s) {_list(state)} hold state an expanded layer cannot "
            "carry exactly. An expandable layer holds a weight parameter, a bias parameter (or "
            "none), and any other parameters and buffers (carried under their own names); put "
            "the layer(s) in `ignore`")
    _refuse_outside_refs(model, {id(m): names[0] or "<model>" for m, names in targets},
                         "overparameterize", "expanded")


def _refuse_shared(model: nn.Module, targets, aliases) -> None:
    owners: dict[int, list[str]] = {}
    for m in model.modules():
        for pname, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{aliases[id(m)][0] or '<model>'}.{pname}")
    tied, param, hooked = [], [], []
    for m, all_names in targets:
        name = all_names[0] or "<model>"
        if torch.nn.utils.parametrize.is_parametrized(m):
            param.append(name)
        elif _hooked(m):
            hooked.append(name)
        for p in m._parameters.values():
            if p is not None and len(owners[id(p)]) > 1:
                tied.append(" = ".join(owners[id(p)]))
    if tied:
        raise UnsupportedError(
            f"overparameterize: tied weights {_list(tied)}: expanding one of them would untie "
            "them and change what the model computes; put the layer in `ignore` (e.g. "
            "ignore=('lm_head',) for GPT-2) or untie the weights first")
    if param:
        raise UnsupportedError(
            f"overparameterize: parametrised weight(s) in {_list(param)} (spectral_norm, "
            "weight_norm, ...): the product of plain factors would drop the parametrisation; "
            "put the layer(s) in `ignore`, or remove the parametrisation first "
            "(torch.nn.utils.parametrize.remove_parametrizations)")
    if hooked:
        raise UnsupportedError(
            f"overparameterize: layer(s) {_list(hooked)} carry hooks (old-style weight_norm / "
            "spectral_norm, forward or state-dict hooks) that the expanded layer would lose; "
            "put them in `ignore`, or remove the hooks first")


_REF_DEPTH = 3  # containers inside containers searched for a layer (self.x = [[fc], {"k": fc}])
_TREE = ("_parameters", "_buffers", "_modules")  # the module tree itself: replaced everywhere


def _outside_refs(model: nn.Module, wanted: dict[int, str]) -> list[str]:
    """``"<module>.<attr>[key]... (-> layer)"`` for each reference to a module of ``wanted``
    (id -> name) that a module of ``model`` holds outside the module tree: a plain attribute
    set without registration, a list/tuple/set/dict (to depth ``_REF_DEPTH``), or a bound
    method of the layer. Closures, globals and other objects' attributes are not searched."""
    found: list[str] = []
    for owner_name, owner in model.named_modules():
        if id(owner) in wanted:  # the layer's own attributes leave the model with it
            continue
        for attr, v in vars(owner).items():
            if attr not in _TREE:
                _scan(v, f"{owner_name or '<model>'}.{attr}", wanted, found, _REF_DEPTH)
    return found


def _scan(v, path: str, wanted: dict[int, str], found: list[str], depth: int) -> None:
    target = v.__self__ if isinstance(v, types.MethodType) else v
    if id(target) in wanted:
        found.append(f"{path} (-> {wanted[id(target)]})")
        return
    if depth == 0 or isinstance(v, str | bytes | torch.Tensor):
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _scan(k, f"{path} key {k!r}", wanted, found, depth - 1)
            _scan(x, f"{path}[{k!r}]", wanted, found, depth - 1)
    elif isinstance(v, list | tuple | set | frozenset | collections.deque):
        for i, x in enumerate(v):
            _scan(x, f"{path}[{i}]" if not isinstance(v, set | frozenset) else f"{path} (a set)",
                  wanted, found, depth - 1)


def _refuse_outside_refs(model: nn.Module, wanted: dict[int, str], fn: str, what: str) -> None:
    refs = _outside_refs(model, wanted)
    if refs:
        other = "put the layer(s) in `ignore`" if fn == "overparameterize" else "drop the reference first"
        raise UnsupportedError(
            f"{fn}: {_list(refs)} refer(s) to a layer outside the module tree; it would still "
            f"run the layer as it was, not the {what} one. Hold such layers in nn.ModuleList / "
            f"nn.ModuleDict (registered submodules are replaced under every name), or {other}")


def expanded_modules(model: nn.Module) -> list[tuple[str, _Expanded]]:
    """The (name, module) pairs of every expanded layer in ``model`` (each module once)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Expanded)]


def set_forward_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Set the forward form ("kernel", "sequential", "auto") of every expanded layer."""
    _check_mode(mode)
    for _, m in expanded_modules(model):
        m.mode = mode
    return model


def collapse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model with every expanded layer replaced by the plain layer it collapses to
    (its original class: ``nn.Linear``, ``nn.Conv2d``, Hugging Face ``Conv1D``), under
    every name it had.

    The result has the original architecture: its state_dict loads with
    ``strict=True`` into a fresh instance of it (carried parameters and buffers
    included). ``timm.utils.reparameterize_model`` gives the same result through
    :meth:`~rankbias.overparam.layers._Expanded.fuse`.

    Parameters
    ----------
    model : nn.Module
        A model with expanded layers (of :func:`overparameterize`); a model
        without any is returned as it is (copied unless ``inplace``).
    inplace : bool, default False
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The collapsed model, computing the same function.

    Raises
    ------
    UnsupportedError
        An expanded layer is also referenced outside the module tree (it would
        keep running the expanded layer).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from rankbias import collapse, overparameterize
    >>> def mlp():
    ...     return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> deep = overparameterize(mlp(), depth=3)
    >>> flat = collapse(deep)
    >>> mlp().load_state_dict(flat.state_dict())  # strict: the original architecture
    <All keys matched successfully>
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(flat(x), deep(x), atol=1e-5)  # the same function
    True
    """
    aliases = _aliases(model)
    expanded = {id(m): aliases[id(m)][0] or "<model>" for _, m in expanded_modules(model)}
    _refuse_outside_refs(model, expanded, "collapse", "collapsed")
    if not inplace:
        model = copy.deepcopy(model)
        aliases = _aliases(model)
    for m in [m for m in model.modules() if isinstance(m, _Expanded)]:
        new = m.fuse()
        for name in aliases[id(m)]:
            model = _set_child(model, name, new)
    return model
