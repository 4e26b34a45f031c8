"""The run-directory convention: one place for every file a run writes.

A run directory holds::

    config.json      the validated config, plus experiment name and preset
    metrics.csv      per-step metrics (one row per logged step and model)
    summary.json     the result; its presence marks the run complete
    figures/*.png    every figure
    report.md        a short human-readable report
    parts/           optional: finished pieces of a long run, for resuming

Every write is atomic (a temporary file in the same directory, then
``os.replace``), so a run killed at any instant leaves either the old file or
the new one, never half of one. A run whose ``summary.json`` exists for the same
config hash is complete and is not recomputed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text", "config_hash", "to_jsonable"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # mkstemp creates 0600; give the file the mode a plain open() would
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Tensors, numpy values, tuples and paths to plain JSON; non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, str):  # torch / numpy
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def config_hash(config: Mapping[str, Any], length: int = 12) -> str:
    """A stable hash of a config mapping (key order does not matter)."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class RunDir:
    """A run directory (created on first write)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---------------------------------------------------------------- writing
    def write_json(self, name: str, obj: Any) -> Path:
        text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
        return atomic_write_text(self.path / name, text + "\n")

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Rows of dicts to CSV; the header is the union of keys in first-seen order."""
        rows = [to_jsonable(dict(r)) for r in rows]
        header: list[str] = []
        for r in rows:
            header.extend(k for k in r if k not in header)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in header})
        return atomic_write_text(self.path / name, buf.getvalue())

    def figure_path(self, name: str) -> Path:
        p = self.path / "figures" / (name if name.endswith(".png") else f"{name}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # ---------------------------------------------------------------- reading
    def read_json(self, name: str) -> Any:
        with open(self.path / name) as fh:
            return json.load(fh)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    # ------------------------------------------------------ completion, resume
    def completed_summary(self, config_record: Mapping[str, Any]) -> dict | None:
        """The summary of a finished run of exactly this config, else None."""
        if not (self.exists("summary.json") and self.exists("config.json")):
            return None
        try:
            old = self.read_json("config.json")
            if old.get("hash") != config_hash(config_record):
                return None
            return self.read_json("summary.json")
        except (OSError, json.JSONDecodeError):
            return None

    def part(self, key: str) -> dict | None:
        """A finished piece of a long run (``parts/<key>.json``), for resuming."""
        p = self.path / "parts" / f"{key}.json"
        if not p.exists():
            return None
        try:
            with open(p) as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError):
            return None

    def save_part(self, key: str, obj: Any) -> Path:
        return self.write_json(f"parts/{key}.json", obj)
