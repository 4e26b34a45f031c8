"""The experiment registry and the one entry point, :func:`run_experiment`.

An experiment module defines a :class:`~rankbias.framework.config.Config` subclass, a
``run(config, run_dir) -> summary`` function and registers them with
:func:`register` together with its presets (``quick``: minutes on 2 CPU cores;
``paper``: the papers' scale). Every module of this package is imported on the
first lookup, so adding an experiment needs no edit elsewhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rankbias.framework.config import Config, ConfigError, check_device_available
from rankbias.framework.paths import runs_root
from rankbias.framework.runs import RunDir, config_hash

__all__ = [
    "Experiment",
    "build_config",
    "experiments",
    "get_experiment",
    "list_experiments",
    "register",
    "run_experiment",
]


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    """Registered name, used on the CLI (kebab-case)."""
    description: str
    """One line for ``rankbias list``."""
    config_cls: type[Config]
    """The config dataclass."""
    run: Callable[[Config, RunDir], dict]
    """Runs the experiment into a run directory and returns the summary."""
    presets: Mapping[str, Mapping[str, Any]]
    """Named overrides of the config defaults; ``quick`` and ``paper`` at least."""
    claim: str = ""
    """The paper claim the experiment tests (for reports)."""


_REGISTRY: dict[str, Experiment] = {}
_LOADED = False


def register(
    name: str,
    *,
    description: str,
    config_cls: type[Config],
    presets: Mapping[str, Mapping[str, Any]],
    claim: str = "",
) -> Callable[[Callable], Callable]:
    """Decorator for an experiment's ``run(config, run_dir)`` function."""

    def deco(fn: Callable) -> Callable:
        for _p, values in presets.items():  # fail at import on a broken preset
            config_cls.from_dict(dict(values))
        _REGISTRY[name] = Experiment(name, description, config_cls, fn, dict(presets), claim)
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import rankbias.experiments as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "registry" and not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _LOADED = True


def experiments() -> dict[str, Experiment]:
    """Every registered experiment, by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


# ``rankbias.experiments`` is this package, so the top level exports the function
# under a name the subpackage cannot shadow.
list_experiments = experiments


def get_experiment(name: str) -> Experiment:
    exps = experiments()
    if name not in exps:
        raise ConfigError(f"unknown experiment {name!r}; accepted: {', '.join(exps)}")
    return exps[name]


def build_config(name: str, overrides: Mapping[str, Any] | None = None, preset: str = "quick") -> Config:
    """The validated config of ``name`` at ``preset`` with ``overrides`` applied."""
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ConfigError(
            f"{name}: unknown preset {preset!r}; accepted: {', '.join(exp.presets)}"
        )
    return exp.config_cls.from_dict({**exp.presets[preset], **dict(overrides or {})})


def default_out_dir(name: str, preset: str, chash: str) -> Path:
    root = runs_root()
    return root / name / f"{preset}-{chash}"


def run_experiment(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    preset: str = "quick",
    *,
    force: bool = False,
) -> dict:
    """Run experiment ``name`` and return its summary.

    The config is the preset's values updated by ``overrides`` and validated
    before any compute. Results go to ``out_dir`` (default
    ``$RANKBIAS_RUNS/NAME/PRESET-HASH``, ``RANKBIAS_RUNS`` defaulting to
    ``runs``). A directory that already holds a completed run of the same
    config returns its summary without recomputing (``force=True`` reruns);
    one that holds a different config is an error.
    """
    config = build_config(name, overrides, preset)
    if isinstance(getattr(config, "device", None), str):
        check_device_available(config.device)
    record = {"experiment": name, "config": config.to_dict()}
    chash = config_hash(record)
    run = RunDir(out_dir if out_dir is not None else default_out_dir(name, preset, chash))
    if not force:
        done = run.completed_summary(record)
        if done is not None:
            return done
        if run.exists("config.json"):
            old = run.read_json("config.json")
            if old.get("hash") != chash:
                raise ConfigError(
                    f"{run.path} holds a run of a different config (hash {old.get('hash')} != "
                    f"{chash}); choose another output directory or pass force=True / --force"
                )
    run.write_json(
        "config.json", {"experiment": name, "preset": preset, "hash": chash, "config": config.to_dict()}
    )
    t0 = time.perf_counter()
    summary = get_experiment(name).run(config, run)
    summary = {"experiment": name, **summary}
    run.write_json("environment.json", environment(time.perf_counter() - t0))
    run.write_json("summary.json", summary)  # last: marks the run complete
    return run.read_json("summary.json")


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
