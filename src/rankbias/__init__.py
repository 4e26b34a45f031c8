"""rankbias: measure, reproduce and exploit the low-rank bias of neural networks.

The public face is what a user calls:

- the rank measures (:func:`effective_rank`, :func:`rank_measures`, ...,
  :class:`KernelSpectrum`, :func:`register_measure`), imported eagerly: they need
  only torch and numpy, so ``from rankbias import effective_rank`` pulls in no
  plotting, CLI or Ray code;
- a model's ranks: :func:`rank_report`, :func:`analyze`, :func:`measure_tensors`
  and :class:`RankTracker` (during training);
- linear over-parameterisation: :func:`overparameterize` and :func:`collapse`;
- the experiments: :func:`run_experiment`, :func:`list_experiments`,
  :func:`run_sweep` and :func:`reproduce`;
- :mod:`rankbias.papers`: the two papers' own models, data and trainers.

Everything but the measures is loaded on first use. The engine
(``rankbias.measures``: ``Spectrum``, ``MeasureSpec``, ...), the framework
(``rankbias.framework``: ``Config``, ``RunDir``), the errors (``rankbias.errors``)
and the trainer (``rankbias.training``) are imported from their modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rankbias._lazy import lazy_getattr
from rankbias._version import __version__
from rankbias.measures import (
    MEASURES,
    KernelSpectrum,
    effective_rank,
    entropy_rank,
    numerical_rank,
    participation_ratio,
    rank_measures,
    rank_measures_many,
    rankme,
    register_measure,
    singular_values,
    stable_rank,
)

# public name -> module that defines it (imported lazily)
_LAZY = {
    "rank_report": "rankbias.analysis",
    "analyze": "rankbias.analysis",
    "measure_tensors": "rankbias.analysis",
    "RankTracker": "rankbias.analysis",
    "overparameterize": "rankbias.overparam",
    "collapse": "rankbias.overparam",
    "run_experiment": "rankbias.runner",
    "list_experiments": "rankbias.experiments.registry",
    "run_sweep": "rankbias.sweep",
    "reproduce": "rankbias.plan_runner",
}

# submodules reachable as attributes without an explicit import
_LAZY_MODULES = ("papers", "training")

if TYPE_CHECKING:  # pragma: no cover
    import rankbias.papers as papers
    import rankbias.training as training  # noqa: F401  (an attribute, not in __all__)
    from rankbias.analysis import RankTracker, analyze, measure_tensors, rank_report
    from rankbias.experiments.registry import list_experiments
    from rankbias.overparam import collapse, overparameterize
    from rankbias.plan_runner import reproduce
    from rankbias.runner import run_experiment
    from rankbias.sweep import run_sweep


__getattr__ = lazy_getattr(__name__, globals(), _LAZY, _LAZY_MODULES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))


__all__ = [
    "__version__",
    # rank measures
    "MEASURES",
    "KernelSpectrum",
    "effective_rank",
    "entropy_rank",
    "numerical_rank",
    "participation_ratio",
    "rank_measures",
    "rank_measures_many",
    "rankme",
    "register_measure",
    "singular_values",
    "stable_rank",
    # a model's ranks
    "RankTracker",
    "analyze",
    "measure_tensors",
    "rank_report",
    # linear over-parameterisation
    "collapse",
    "overparameterize",
    # experiments
    "list_experiments",
    "reproduce",
    "run_experiment",
    "run_sweep",
    # the papers' own models, data and trainers
    "papers",
]
