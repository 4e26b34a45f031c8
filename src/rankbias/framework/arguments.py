"""Command-line options generated from dataclass fields (CleanRL's pattern).

A field becomes ``--field-name`` when its metadata holds ``cli`` (made by
:func:`cli_field`); its help is the docstring under the field, its kind comes
from the annotation: ``bool`` a switch, ``Literal[...]`` a choice, ``int`` (or
``int | None``) an integer, anything else a string (``nargs`` given in ``cli``).
So a library function's options and the command that exposes them are declared
once, and the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from rankbias.framework.config import field_docs

__all__ = ["add_arguments", "arguments_of", "cli_field"]


def cli_field(
    default: Any = None,
    *,
    nargs: str | None = None,
    metavar: str | None = None,
    empty_is_none: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    Parameters
    ----------
    default : Any
        The field's default, and the option's.
    nargs, metavar : str, optional
        As ``argparse``'s (``nargs="*"``: a list of strings).
    empty_is_none : bool
        The option given with no values means the default (None), not an empty list.

    Returns
    -------
    dataclasses.Field
        A field whose metadata marks it for :func:`add_arguments`.
    """
    cli = {"nargs": nargs, "metavar": metavar, "empty_is_none": empty_is_none}
    return dataclasses.field(default=default, metadata={"cli": cli})


def _cli_fields(cls: type, only: Iterable[str] | None) -> list[dataclasses.Field]:
    keep = None if only is None else set(only)
    return [
        f
        for f in dataclasses.fields(cls)
        if "cli" in f.metadata and (keep is None or f.name in keep)
    ]


def _kind(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments from an annotation."""
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is not Literal else []
    if get_origin(tp) is not Literal and len(args) == 1:  # X | None: the kind of X
        tp = args[0]
    if tp is bool:
        return {"action": "store_true"}
    if get_origin(tp) is Literal:
        return {"choices": list(get_args(tp))}
    if tp is int:
        return {"type": int}
    return {}


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, only: Iterable[str] | None = None
) -> None:
    """Add one ``--option`` per :func:`cli_field` of the dataclass ``cls``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add them.
    cls : type
        A dataclass whose command-line fields are made with :func:`cli_field`.
    only : iterable of str, optional
        Add only these fields.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in _cli_fields(cls, only):
        cli = f.metadata["cli"]
        kw = _kind(hints[f.name])
        kw.update({k: cli[k] for k in ("nargs", "metavar") if cli[k] is not None})
        if kw.get("action") != "store_true":
            kw["default"] = f.default
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, help=docs.get(f.name), **kw
        )


def arguments_of(
    args: argparse.Namespace, cls: type, *, only: Iterable[str] | None = None
) -> dict[str, Any]:
    """{field: value} of the options :func:`add_arguments` added for ``cls``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.
    cls : type
        The dataclass given to :func:`add_arguments`.
    only : iterable of str, optional
        As given to :func:`add_arguments`.

    Returns
    -------
    dict
        Keyword arguments for ``cls`` (or the function it describes).
    """
    out = {}
    for f in _cli_fields(cls, only):
        value = getattr(args, f.name)
        out[f.name] = None if f.metadata["cli"]["empty_is_none"] and not value else value
    return out
