"""Rank report of any PyTorch model: its weights, what chosen modules compute on
data, and the data itself; and a tracker that records ranks during training.

- :mod:`~rankbias.analysis.layers`: which layers are rows, how outputs are read;
- :mod:`~rankbias.analysis.readings`: how each layer type's weights read as out x in;
- :mod:`~rankbias.analysis.weights`: weights as matrices (conv readings);
- :mod:`~rankbias.analysis.stream`: streaming embeddings through forward hooks;
- :mod:`~rankbias.analysis.rank_table`: :func:`rank_report`;
- :mod:`~rankbias.analysis.tracker`: :class:`RankTracker`
  (:mod:`~rankbias.analysis.lightning`: its Lightning callback;
  :mod:`~rankbias.analysis.hf_trainer`: its Hugging Face ``Trainer`` callback;
  :mod:`~rankbias.analysis.loggers`: TensorBoard, MLflow and W&B loggers);
- :mod:`~rankbias.analysis.outputs`: the figure, summary and files, :func:`analyze`;
- :mod:`~rankbias.analysis.tensors`: :func:`measure_tensors` (``rankbias measure``).

Loading models and inputs by name lives in :mod:`rankbias.io` (``build_arch``,
``load_model``, ``load_inputs``).
"""

from __future__ import annotations

from rankbias.analysis.layers import DATA_ROW_NAME, WeightEntry, weight_entries, weight_layers
from rankbias.analysis.loggers import MlflowLogger, RankLogger, TensorBoardLogger, WandbLogger
from rankbias.analysis.outputs import (
    Analysis,
    analyze,
    plot_rank_report,
    summarize_report,
    write_report,
)
from rankbias.analysis.rank_table import rank_report
from rankbias.analysis.readings import WeightReading, register_weight_reading
from rankbias.analysis.tensors import measure_tensors
from rankbias.analysis.tracker import RankTracker

__all__ = [
    "DATA_ROW_NAME",
    "Analysis",
    "HFRankTrackerCallback",
    "MlflowLogger",
    "RankLogger",
    "RankTracker",
    "RankTrackerCallback",
    "TensorBoardLogger",
    "WandbLogger",
    "WeightEntry",
    "WeightReading",
    "analyze",
    "measure_tensors",
    "plot_rank_report",
    "rank_report",
    "register_weight_reading",
    "summarize_report",
    "weight_entries",
    "weight_layers",
    "write_report",
]


def __getattr__(name: str):
    if name == "RankTrackerCallback":  # needs the optional lightning package
        from rankbias.analysis.lightning import RankTrackerCallback

        return RankTrackerCallback
    if name == "HFRankTrackerCallback":  # needs the optional transformers package
        from rankbias.analysis.hf_trainer import HFRankTrackerCallback

        return HFRankTrackerCallback
    raise AttributeError(f"module 'rankbias.analysis' has no attribute {name!r}")
