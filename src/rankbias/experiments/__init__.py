"""Experiments: one module each (a Config dataclass, presets and a run function).

Use :func:`rankbias.run_experiment` or ``rankbias run NAME``.
"""

from rankbias.experiments.registry import (
    Experiment,
    build_config,
    experiments,
    get_experiment,
    register,
    run_experiment,
)

__all__ = ["Experiment", "build_config", "experiments", "get_experiment", "register", "run_experiment"]
