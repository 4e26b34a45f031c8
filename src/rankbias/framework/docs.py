"""Docstring sections that several functions share, written once."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import TypeVar

from rankbias.errors import InvalidParameterError

__all__ = ["shared_doc"]

F = TypeVar("F", bound=Callable)


def shared_doc(**sections: str) -> Callable[[F], F]:
    """A decorator that replaces each ``{name}`` line of a function's or class's
    docstring by ``sections[name]``, indented as the placeholder is.

    Parameters
    ----------
    **sections : str
        Name -> the text (numpy-doc entries, a whole section) without indentation.

    Returns
    -------
    callable
        The decorator; it returns the object it was given, with its docstring filled
        (unchanged when it has none: under ``python -OO`` docstrings are stripped).

    Raises
    ------
    InvalidParameterError
        A name whose placeholder the docstring lacks (a section meant to be shared
        would silently be missing).

    Examples
    --------
    >>> from rankbias.framework.docs import shared_doc
    >>> @shared_doc(path="path : str\\n    Where the file goes.")
    ... def f(path):
    ...     '''Write a file.
    ...
    ...     Parameters
    ...     ----------
    ...     {path}
    ...     '''
    >>> print(f.__doc__.splitlines()[4])
        path : str
    """

    def fill(obj: F) -> F:
        doc = obj.__doc__
        if doc is None:  # python -OO strips docstrings: nothing to fill, nothing to check
            return obj
        for name, text in sections.items():
            token = "{" + name + "}"
            at = doc.find(token)
            if at < 0:
                raise InvalidParameterError(
                    f"{obj.__qualname__}'s docstring has no {token} placeholder; "
                    f"accepted: a line holding just {token}"
                )
            indent = doc[doc.rfind("\n", 0, at) + 1 : at]
            doc = doc.replace(token, textwrap.indent(text.strip("\n"), indent)[len(indent) :])
        obj.__doc__ = doc
        return obj

    return fill
