"""A process-wide setting changed for one block and restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["temporarily"]

T = TypeVar("T")


@contextlib.contextmanager
def temporarily(get: Callable[[], T], set_: Callable[[T], object], value: T) -> Iterator[None]:
    """``set_(value)`` inside the block; the value ``get()`` read before it is set back
    after, however the block ends.

    Parameters
    ----------
    get, set_ : callable
        The setting's getter and setter (e.g. ``torch.get_num_threads`` and
        ``torch.set_num_threads``).
    value
        The setting inside the block.

    Examples
    --------
    >>> import socket
    >>> from rankbias.framework.process import temporarily
    >>> with temporarily(socket.getdefaulttimeout, socket.setdefaulttimeout, 5.0):
    ...     socket.getdefaulttimeout()
    5.0
    >>> socket.getdefaulttimeout() is None
    True
    """
    old = get()
    set_(value)
    try:
        yield
    finally:
        set_(old)
