"""The run-directory convention: one place for every file a run writes.

A run directory holds::

    config.json      the validated config, plus experiment name and preset
    metrics.csv      per-step metrics (one row per logged step and model)
    summary.json     the result; its presence marks the run complete
    figures/*.png    every figure
    report.md        a short human-readable report
    parts/           optional: finished pieces of a long run, for resuming
    .lock            held (flock) by the process writing the directory

Every write is atomic (a temporary file in the same directory, then
``os.replace``), so a run killed at any instant leaves either the old file or
the new one, never half of one.

Everything reused carries the identity of the config that produced it:

* ``config.json`` holds the config and its hash; a file whose content no longer
  hashes to it (edited, corrupt) is a :class:`~rankbias.errors.LoadError`;
* a run is complete when ``summary.json`` is a JSON object with the keys of
  :data:`SUMMARY_KEYS` (``experiment`` and ``config_hash`` equal to the run's),
  beside a ``config.json`` of that hash;
* a part is saved with an identity (by default the run's config hash; an
  experiment may pass the hash of the settings the part depends on) and is
  returned only to a reader asking for that identity.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rankbias.errors import LoadError
from rankbias.framework.config import ConfigError

__all__ = [
    "PROVISIONAL_KEY",
    "SUMMARY_KEYS",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "config_hash",
    "dir_lock",
    "to_jsonable",
]

_WAY_OUT = "rerun with --force (force=True), remove the directory, or choose another output directory"

SUMMARY_KEYS = ("experiment", "config_hash")
"""The keys the runner writes into every summary; a summary without them is not a complete run."""

PROVISIONAL_KEY = "provisional"
"""A summary whose value here is non-empty (why) is complete but never reused: the next run
of the same config computes again (its outcome depends on more than the config, e.g. data
that was missing)."""


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


def check_writable(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` and a probe file in it (removed at once), so that an
    output that cannot be written fails before any compute (an OSError naming it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def dir_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``path/.lock`` (``flock``, exclusive) for the block: a second command writing the
    same directory is refused at once (ConfigError), never interleaved with this one.

    The kernel releases the lock when the holder dies (even by SIGKILL), so a
    killed run never leaves its directory locked.
    """
    import fcntl

    path = check_writable(path)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"{path} is in use by another {holder.partition(' ')[2] or 'command'} "
                f"(pid {holder.partition(' ')[0]}); wait for it to finish or choose another output "
                "directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


class RunDir:
    """A run directory (created on first write).

    ``config_hash``: the hash of the config being run here (set by the runner),
    the default identity of the parts saved and read (:meth:`part`).
    """

    def __init__(self, path: str | os.PathLike, config_hash: str | None = None):
        self.path = Path(path)
        self.config_hash = config_hash

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
    def stored_config(self) -> dict | None:
        """``config.json`` checked against its own hash (None when there is none).

        Raises LoadError when it cannot be read or its content no longer hashes to
        the hash it stores: the directory's results then belong to no known config.
        """
        if not self.exists("config.json"):
            return None
        where = self.path / "config.json"
        try:
            stored = self.read_json("config.json")
            record = {"experiment": stored["experiment"], "config": stored["config"]}
            ok = stored["hash"] == config_hash(record)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise LoadError(f"{where} cannot be read as a run's config ({type(e).__name__}: {e}); "
                            f"{_WAY_OUT}") from None
        if not ok:
            raise LoadError(
                f"{where} does not match its hash {stored['hash']} (edited or corrupt): the results "
                f"beside it belong to no known config; {_WAY_OUT}"
            )
        return stored

    def completed_summary(self, config_record: Mapping[str, Any]) -> dict | None:
        """The summary of a finished run of exactly this config, else None.

        Finished means: ``config.json`` matches its hash and that hash is this
        config's, and ``summary.json`` is an object whose :data:`SUMMARY_KEYS` name
        the same experiment and hash.
        """
        chash = config_hash(config_record)
        try:
            stored = self.stored_config()
            if stored is None or stored["hash"] != chash or not self.exists("summary.json"):
                return None
            summary = self.read_json("summary.json")
        except (OSError, ValueError):  # LoadError is a ValueError: not complete
            return None
        expected = {"experiment": config_record.get("experiment"), "config_hash": chash}
        if not isinstance(summary, dict) or any(summary.get(k) != expected[k] for k in SUMMARY_KEYS):
            return None
        if summary.get(PROVISIONAL_KEY):  # e.g. digits stood in for missing MNIST: decide again
            return None
        return summary

    def clear_result(self) -> None:
        """Remove ``summary.json`` and ``environment.json`` (a run is starting: an old
        summary must never stand for the new config if this run dies)."""
        for name in ("summary.json", "environment.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def _identity(self, identity: str | None) -> str:
        identity = identity if identity is not None else self.config_hash
        if not identity:
            raise ConfigError(
                f"{self}: a part needs the identity of the config it belongs to; accepted: "
                "RunDir(path, config_hash=...) (the runner sets it) or part(..., identity=...)"
            )
        return identity

    def part(self, key: str, identity: str | None = None) -> Any | None:
        """A finished piece of a long run (``parts/<key>.json``), for resuming; None unless
        it was saved under ``identity`` (default: this run's config hash)."""
        identity = self._identity(identity)
        try:
            with open(self.path / "parts" / f"{key}.json") as fh:
                saved = json.load(fh)
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(saved, dict) or saved.get("identity") != identity or "part" not in saved:
            return None
        return saved["part"]

    def save_part(self, key: str, obj: Any, identity: str | None = None) -> Path:
        """Save a part under ``identity`` (default: this run's config hash): the hash of
        every setting the part depends on, so that no other config ever reads it."""
        return self.write_json(f"parts/{key}.json", {"identity": self._identity(identity), "part": obj})
