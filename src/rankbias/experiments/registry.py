"""The experiment registry: names -> (config class, presets, run function, claim).

An experiment module defines a :class:`~rankbias.framework.config.Config` subclass, a
``run(config, run_dir) -> summary`` function and registers them with
:func:`register` together with its presets (``quick``: minutes on 2 CPU cores;
``paper``: the papers' scale). Every module of this package is imported on the
first lookup, so adding an experiment needs no edit elsewhere. Running one is
:func:`rankbias.runner.run_experiment`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from rankbias.framework.config import Config, ConfigError, did_you_mean
from rankbias.framework.runs import RunDir

__all__ = [
    "Experiment",
    "build_config",
    "experiments",
    "get_experiment",
    "list_experiments",
    "register",
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
    """The registered experiment ``name`` (ConfigError, with a "did you mean", if there is none)."""
    exps = experiments()
    if name not in exps:
        raise ConfigError(
            f"unknown experiment {name!r}{did_you_mean(name, exps)}; accepted: {', '.join(exps)}"
        )
    return exps[name]


def build_config(name: str, overrides: Mapping[str, Any] | None = None, preset: str = "quick") -> Config:
    """The validated config of ``name`` at ``preset`` with ``overrides`` applied."""
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ConfigError(
            f"{name}: unknown preset {preset!r}{did_you_mean(preset, exp.presets)}; "
            f"accepted: {', '.join(exp.presets)}"
        )
    overrides = dict(overrides or {})
    exp.config_cls.check_keys(overrides, label=name)
    return exp.config_cls.from_dict({**exp.presets[preset], **overrides})
