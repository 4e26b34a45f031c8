"""Experiments: one module each (a Config dataclass, presets and a run function).

Use :func:`rankbias.run_experiment` (defined in :mod:`rankbias.runner`) or
``rankbias run NAME``.
"""

from rankbias.experiments.registry import (
    Experiment,
    build_config,
    check_contract,
    check_summary,
    get_experiment,
    list_experiments,
    register,
    registered,
    unregister,
)

__all__ = ["Experiment", "build_config", "check_contract", "check_summary", "get_experiment", "list_experiments", "register",
           "registered", "unregister"]
