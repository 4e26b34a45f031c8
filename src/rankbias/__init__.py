"""rankbias: measure, reproduce and exploit the low-rank bias of neural networks.

The rank measures are imported eagerly (they need only torch and numpy);
everything else is loaded on first use, so ``from rankbias import
effective_rank`` pulls in no plotting, CLI or Ray code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rankbias.measures import (
    MEASURES,
    KernelSpectrum,
    as_matrix,
    effective_rank,
    entropy_rank,
    max_measure,
    measures_from_singular_values,
    numerical_rank,
    participation_ratio,
    rank_measures,
    rankme,
    singular_values,
    stable_rank,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "run_experiment": "rankbias.experiments.registry",
    "experiments": "rankbias.experiments.registry",
    "Config": "rankbias.config",
    "ConfigError": "rankbias.config",
    "RunDir": "rankbias.runs",
    "train": "rankbias.train",
    "overparameterize": "rankbias.overparam",
    "collapse": "rankbias.overparam",
}

if TYPE_CHECKING:  # pragma: no cover
    from rankbias.config import Config, ConfigError
    from rankbias.experiments.registry import experiments, run_experiment
    from rankbias.overparam import collapse, overparameterize
    from rankbias.runs import RunDir
    from rankbias.train import train


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rankbias' has no attribute {name!r}")


__all__ = [
    "MEASURES",
    "KernelSpectrum",
    "__version__",
    "as_matrix",
    "effective_rank",
    "entropy_rank",
    "max_measure",
    "measures_from_singular_values",
    "numerical_rank",
    "participation_ratio",
    "rank_measures",
    "rankme",
    "singular_values",
    "stable_rank",
    "Config",
    "ConfigError",
    "RunDir",
    "experiments",
    "run_experiment",
    "train",
    "overparameterize",
    "collapse",
]
