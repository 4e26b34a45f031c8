"""Names a package loads on first use (PEP 562): one ``__getattr__`` for the public
face (``rankbias``) and the papers' namespace (``rankbias.papers``), so that importing
either pulls in no plotting, CLI, Ray or training code until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_getattr(
    package: str,
    namespace: MutableMapping[str, Any],
    where: Mapping[str, str],
    modules: tuple[str, ...] = (),
) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``where[name]`` is the module defining ``name`` (cached in
    ``namespace`` once loaded); ``modules`` are submodules of ``package`` reached as attributes."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
