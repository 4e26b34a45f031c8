"""Every environment variable rankbias reads, read in one place.

``RANKBIAS_DATA``   the data root (datasets in torchvision's layout); default ``./data``.
``RANKBIAS_CACHE``  derived files (decoded JPEG folders, extracted tars); default
                    ``~/.cache/rankbias``.
``RANKBIAS_RUNS``   where run directories go when no ``--out`` is given; default ``./runs``.

They are read when called, not at import, so a test (or a user) can set them at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_root", "runs_root"]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$RANKBIAS_DATA``, else ``./data``."""
    return Path(root if root is not None else os.environ.get("RANKBIAS_DATA", "data"))


def cache_dir() -> Path:
    """``$RANKBIAS_CACHE``, else ``~/.cache/rankbias``."""
    env = os.environ.get("RANKBIAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rankbias"


def runs_root() -> Path:
    """``$RANKBIAS_RUNS``, else ``./runs``."""
    return Path(os.environ.get("RANKBIAS_RUNS", "runs"))
