"""Running one experiment: :func:`run_experiment` (the one entry point every
command and sweep goes through) and the :func:`environment` record of a run.

The runner is also the one place that sets torch's thread count: from its
``threads`` argument (a sweep's share of the cores), else from the config's
``num_threads`` field where the experiment has one; library functions leave it
alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rankbias.experiments.registry import build_config, check_summary, get_experiment
from rankbias.framework.config import ConfigError, check_device_available
from rankbias.framework.paths import runs_root
from rankbias.framework.process import temporarily
from rankbias.framework.runs import RunDir, config_hash, dir_lock

__all__ = ["default_out_dir", "environment", "run_experiment", "torch_threads"]


def default_out_dir(name: str, preset: str, chash: str) -> Path:
    """``$RANKBIAS_RUNS/NAME/PRESET-HASH``."""
    return runs_root() / name / f"{preset}-{chash}"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block, restored after
    (``None``: unchanged)."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads: got {threads!r}; accepted: an int >= 1 or None")
    import torch

    with temporarily(torch.get_num_threads, torch.set_num_threads, threads):
        yield




def run_experiment(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    preset: str = "quick",
    *,
    force: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run experiment ``name`` and return its summary.

    The config is the preset's values updated by ``overrides`` and validated
    before any compute (and its ``device`` checked to exist here). Results go to
    ``out_dir`` (default ``$RANKBIAS_RUNS/NAME/PRESET-HASH``, ``RANKBIAS_RUNS``
    defaulting to ``runs``). A directory that already holds a completed run of
    the same config returns its summary without recomputing (``force=True``
    reruns); one that holds a different config, or a ``config.json`` that no
    longer matches its hash, is an error (``force=True`` reruns into it). Parts
    saved by an earlier run are reused only under their config's hash
    (:meth:`RunDir.part`), so a forced run of another config recomputes them. A
    directory being written by another process is refused.

    Parameters
    ----------
    name : str
        A registered experiment (see :func:`list_experiments`).
    overrides : mapping, optional
        Config values that replace the preset's (field name -> value).
    out_dir : str or os.PathLike, optional
        The run directory (default ``$RANKBIAS_RUNS/NAME/PRESET-HASH``).
    preset : str, default "quick"
        A preset of the experiment (``quick``, ``paper``, ...).
    force : bool, default False
        Rerun even when ``out_dir`` holds a completed run of the same config, or
        into a directory that holds another config.
    threads : int, optional
        Torch's thread count for the run (default: the config's ``num_threads`` if
        it has one, else unchanged); not part of the config, since it does not
        change the result.

    Returns
    -------
    dict
        The summary (also in ``out_dir/summary.json``): ``experiment``,
        ``config_hash``, the experiment's ``verdict`` and its own keys.

    Raises
    ------
    ConfigError
        An unknown experiment or preset, an override that is not a field or out
        of range, a device that is not available, a bad ``threads``; an
        ``out_dir`` that holds another config (without ``force``) or is in use by
        another process.
    LoadError
        ``out_dir`` holds a ``config.json`` that no longer matches its hash.

    Examples
    --------
    >>> import tempfile
    >>> import rankbias
    >>> summary = rankbias.run_experiment(
    ...     "depth-rank-init", {"network": "linear", "draws": 20, "n": 8, "depths": [1, 2, 4]},
    ...     out_dir=tempfile.mkdtemp())
    >>> summary["verdict"]["status"]
    'holds'
    >>> rankbias.run_experiment("depth-rank-int")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    rankbias.framework.config.ConfigError: unknown experiment 'depth-rank-int'...
    """
    config = build_config(name, overrides, preset)
    if isinstance(config.framework_value("device"), str):
        check_device_available(config.device)
    record = {"experiment": name, "config": config.to_dict()}
    chash = config_hash(record)
    run = RunDir(out_dir if out_dir is not None else default_out_dir(name, preset, chash), config_hash=chash)
    with dir_lock(run.path, "run"):
        if not force:
            done = _reusable(run, record, chash)
            if done is not None:
                return done
        run.clear_result()
        run.write_json("config.json", {"experiment": name, "preset": preset, "hash": chash,
                                       "config": config.to_dict()})
        with torch_threads(threads if threads is not None else config.framework_value("num_threads")):
            t0 = time.perf_counter()
            exp = get_experiment(name)
            summary = exp.run(config, run)
            check_summary(exp, summary)
            env = environment(time.perf_counter() - t0)
        # the keys that make it a complete run of this config (SUMMARY_KEYS)
        summary = {"experiment": name, "config_hash": chash, **summary}
        run.write_json("environment.json", env)
        run.write_json("summary.json", summary)  # last: marks the run complete
        return run.read_json("summary.json")


def _reusable(run: RunDir, record: Mapping[str, Any], chash: str) -> dict | None:
    """The summary of a completed run of ``record`` in ``run``; None when there is none yet.
    A directory holding another config, or a config.json that no longer matches its
    hash (LoadError), is refused: its files are not this run's to overwrite silently."""
    stored = run.stored_config()
    if stored is not None and stored["hash"] != chash:
        raise ConfigError(
            f"{run.path} holds a run of a different config (hash {stored['hash']} != "
            f"{chash}); choose another output directory or pass force=True / --force"
        )
    return run.completed_summary(record)


def environment(wall_time_s: float | None = None) -> dict[str, Any]:
    """Versions, device and wall time (kept out of summary.json, which a seed determines)."""
    import numpy
    import torch

    from rankbias._version import __version__

    env = {
        "rankbias": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if wall_time_s is not None:
        env["wall_time_s"] = round(wall_time_s, 3)
    return env
