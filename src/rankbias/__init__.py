"""rankbias: measure, reproduce and exploit the low-rank bias of neural networks.

The rank measures (every public name of :mod:`rankbias.measures`) are imported
eagerly (they need only torch and numpy); everything else is loaded on first
use, so ``from rankbias import effective_rank`` pulls in no plotting, CLI or Ray
code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rankbias._version import __version__
from rankbias.measures import *  # noqa: F403  (the public face: every name of rankbias.measures)
from rankbias.measures import __all__ as _measures_all

# Eager, and light (standard library only): the submodule rankbias.reproduce would
# otherwise replace the function of the same name on this package when first imported.
from rankbias.reproduce import reproduce

# public name -> module that defines it (imported lazily)
_LAZY = {
    "run_experiment": "rankbias.runner",
    "list_experiments": "rankbias.experiments.registry",
    "Config": "rankbias.framework.config",
    "ConfigError": "rankbias.framework.config",
    "RunDir": "rankbias.framework.runs",
    "run_sweep": "rankbias.sweep",
    # paper 1 (noise robustness)
    "PatchData": "rankbias.data.patches",
    "make_patch_data": "rankbias.data.patches",
    "HuberizedReLU": "rankbias.models.two_layer_cnn",
    "huberized_relu": "rankbias.models.two_layer_cnn",
    "TwoLayerCNN": "rankbias.models.two_layer_cnn",
    "train_two_layer_cnn": "rankbias.fit.two_layer_cnn",
    "background_pixel_noise": "rankbias.data.images",
    "load_image_dataset": "rankbias.data.images",
    "noisy_canvas": "rankbias.data.images",
    "extract_patches": "rankbias.data.images",
    "DeepLinear": "rankbias.models.deep_linear",
    "fit_deep_linear": "rankbias.fit.deep_linear",
    "random_search": "rankbias.fit.random_search",
    "rank_report": "rankbias.analysis",
    "RankTracker": "rankbias.analysis",
    "analyze": "rankbias.analysis",
    "measure_tensors": "rankbias.analysis",
    "overparameterize": "rankbias.overparam",
    "collapse": "rankbias.overparam",
}

if TYPE_CHECKING:  # pragma: no cover
    import rankbias.train as train
    from rankbias.analysis import RankTracker, analyze, measure_tensors, rank_report
    from rankbias.data.images import (
        background_pixel_noise,
        extract_patches,
        load_image_dataset,
        noisy_canvas,
    )
    from rankbias.data.patches import PatchData, make_patch_data
    from rankbias.experiments.registry import list_experiments
    from rankbias.fit.deep_linear import fit_deep_linear
    from rankbias.fit.random_search import random_search
    from rankbias.fit.two_layer_cnn import train_two_layer_cnn
    from rankbias.framework.config import Config, ConfigError
    from rankbias.framework.runs import RunDir
    from rankbias.models.deep_linear import DeepLinear
    from rankbias.models.two_layer_cnn import HuberizedReLU, TwoLayerCNN, huberized_relu
    from rankbias.overparam import collapse, overparameterize
    from rankbias.runner import run_experiment
    from rankbias.sweep import run_sweep


# submodules reachable as attributes without an explicit import; ``train`` is the
# trainer's module (``rankbias.train.train``): a function of that name would be
# shadowed by the submodule as soon as anything imported it
_LAZY_MODULES = ("train",)


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"rankbias.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rankbias' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "RunDir",
    "list_experiments",
    "run_experiment",
    "train",
    "run_sweep",
    "reproduce",
    "PatchData",
    "make_patch_data",
    "HuberizedReLU",
    "huberized_relu",
    "TwoLayerCNN",
    "train_two_layer_cnn",
    "noisy_canvas",
    "extract_patches",
    "DeepLinear",
    "fit_deep_linear",
    "random_search",
    "rank_report",
    "analyze",
    "measure_tensors",
    "background_pixel_noise",
    "load_image_dataset",
    "RankTracker",
    "overparameterize",
    "collapse",
]
__all__ += _measures_all
