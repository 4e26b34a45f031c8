"""Experiments: one module each (a Config dataclass, presets and a run function).

Use :func:`rankbias.run_experiment` (defined in :mod:`rankbias.runner`) or
``rankbias run NAME``.
"""

from rankbias.experiments.registry import (
    Experiment,
    build_config,
    experiments,
    get_experiment,
    list_experiments,
    register,
)

__all__ = ["Experiment", "build_config", "experiments", "get_experiment", "list_experiments", "register"]


def __getattr__(name: str):
    # kept where it used to live; lazy, since rankbias.runner imports this package
    if name == "run_experiment":
        from rankbias.runner import run_experiment

        return run_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
