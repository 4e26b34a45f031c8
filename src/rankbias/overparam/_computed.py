"""The collapsed ``weight`` (and a folded ``bias``) of an expanded layer as a tensor
that refuses to be written to.

An expanded layer has no weight of its own: ``weight`` is the product of its factors,
computed afresh at every read. A write to it (``zero_()``, ``.data.mul_()``,
``nn.init.*``, ``w[...] = v``, ``out=w``) would change that temporary and leave the
layer as it was, silently. :class:`CollapsedTensor` makes every such write an error
that says how to change the weights instead; reading (any op that does not write) is
untouched and returns plain tensors. Views and detached aliases of it (``w.data``,
``w.detach()``, ``w.T``, ``w[0]``) are guarded too, since writing to them is the same
no-op. Not guarded: tensors inside ``torch.func`` transforms (vmap, grad) and under
``torch.compile``, where the weight is only read.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map

from rankbias.errors import UnsupportedError

__all__ = ["CollapsedTensor", "guard"]

# Python's in-place operators; torch's in-place methods and functions end in one "_"
_INPLACE_DUNDERS = frozenset(
    f"__i{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod",
                            "pow", "and", "or", "xor", "lshift", "rshift")
)
_WRITES = frozenset({"__setitem__", "__set__", "__delete__"})  # w[i] = v; w.data = v; w.grad = g
_AS_PLAIN = frozenset({"__reduce_ex__", "__deepcopy__"})  # torch.save, copy.deepcopy: a plain copy


def _name(func) -> str:
    return getattr(func, "__name__", "")


def _writes(func, args, kwargs) -> str | None:
    """The name of the write ``func(*args, **kwargs)`` makes to a guarded tensor, or None."""
    name = _name(func)
    # the written tensor: self, or (nn.init.*_ dispatches by keyword) tensor=/input=
    target = args[0] if args else next((kwargs[k] for k in ("tensor", "input", "self") if k in kwargs), None)
    if isinstance(target, list | tuple):  # torch._foreach_mul_([w, ...], ...)
        target = next((t for t in target if isinstance(t, CollapsedTensor)), None)
    in_place = (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS
    if isinstance(target, CollapsedTensor) and (in_place or name in _WRITES):
        return name
    if isinstance(target, CollapsedTensor) and kwargs.get("inplace") is True:
        return f"{name}(inplace=True)"
    outs, _ = tree_flatten(kwargs.get("out"))
    if any(isinstance(o, CollapsedTensor) for o in outs):
        return f"{name}(out=...)"
    return None


def _storage(t: torch.Tensor) -> int | None:
    """Data pointer of ``t``'s storage, or None where it has none to compare (meta,
    empty, or a wrapper such as a functorch tensor)."""
    if t.is_meta:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return ptr or None


class CollapsedTensor(torch.Tensor):
    """A tensor computed from an expanded layer's factors: reads behave as on a plain
    tensor (and stay differentiable), writes raise :class:`~rankbias.errors.UnsupportedError`."""

    _owner: str

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _writes(func, args, kwargs)
        if op is not None:
            owner = next((a._owner for a in tree_flatten((args, kwargs))[0]
                          if isinstance(a, CollapsedTensor)), "the expanded layer's weight")
            raise UnsupportedError(_message(owner, op))
        with torch._C.DisableTorchFunctionSubclass():
            if _name(func) in _AS_PLAIN:  # a saved or deep-copied tensor is a plain one
                return func(args[0].as_subclass(torch.Tensor), *args[1:], **kwargs)
            out = func(*args, **kwargs)
            sources = {(_storage(a), getattr(a, "_owner", "")) for a in tree_flatten((args, kwargs))[0]
                       if isinstance(a, CollapsedTensor)}
            owners = {ptr: owner for ptr, owner in sources if ptr is not None}

            def wrap(o):
                # an alias of the computed tensor (a view, .data, .detach()) is guarded
                # too; anything newly computed from it is a plain tensor
                ptr = _storage(o) if type(o) is torch.Tensor else None
                return _wrap(o, owners[ptr]) if ptr in owners else o

            return tree_map(wrap, out)


def _wrap(t: torch.Tensor, owner: str) -> CollapsedTensor:
    g = t.as_subclass(CollapsedTensor)
    g._owner = owner
    return g


def _message(owner: str, op: str) -> str:
    return (
        f"{owner} is computed from the layer's factors at every read, so {op} on it (or on a "
        "view, .data or .detach() of it) would change a temporary copy and leave the layer as "
        "it was. To change the weights, write to the factors (layer.factors[i].weight, "
        "layer.factors[-1].bias), or collapse the model (rankbias.collapse), change the plain "
        "layer, and expand it again with init='preserve'"
    )


def _transformed(t: torch.Tensor) -> bool:
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return torch.compiler.is_compiling() or (is_wrapped is not None and is_wrapped(t))


def guard(t: torch.Tensor | None, owner: str, writable: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """``t`` as a :class:`CollapsedTensor` named ``owner`` (e.g. "OverparamLinear.weight"),
    unless writing to it already changes the layer: ``t`` shares storage with one of
    ``writable`` (the layer's own parameters; depth 1, or a bias held by the last factor
    alone), or it lives inside a function transform or a compiled graph."""
    if t is None or _transformed(t):
        return t
    ptr = _storage(t)
    if ptr is not None and any(_storage(p) == ptr for p in writable):
        return t
    return _wrap(t, owner)
