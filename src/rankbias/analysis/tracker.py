"""``RankTracker``: rank measures of chosen layers' weights, recorded during training.

It reads the same weight rows as :func:`rankbias.analysis.rank_report`
(see :mod:`rankbias.analysis.layers`) and measures them the same way
(:mod:`rankbias.analysis.weights`). For Lightning, see
:class:`rankbias.analysis.lightning.RankTrackerCallback`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankbias.analysis.layers import ConvReading, LayerSelector, weight_entries
from rankbias.analysis.weights import check_conv_reading, measure_weights
from rankbias.framework.config import ConfigError
from rankbias.measures import _check_measure_names

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from rankbias.framework.runs import RunDir
    from rankbias.train import TrainState

__all__ = ["RankTracker"]


class RankTracker:
    """Records rank measures of chosen layers' weights every ``every`` steps.

    Two ways to use it::

        # 1. as a callback of rankbias.train.train: values join its history
        train(loss_fn, model, steps=1000, log_every=10, callbacks=[RankTracker(every=100)])

        # 2. in your own loop: two lines
        tracker = RankTracker(every=100, run="runs/mine")      # before the loop
        tracker.step(model)                                     # after optimizer.step()

    Metric keys are ``"<layer>/<measure>"`` (e.g. ``"fc1/effective_rank"``).
    ``batched=True`` reads the weights of a batch of models trained at once
    (leading model dimension, as rankbias's trainer trains sweeps): values are
    then per model.

    Args:
        layers: which layers (see :func:`weight_layers`); for a plain list of
            parameters (a callback without a module) the names ``param<i>``.
        measures: which measures; default effective and stable rank.
        every: record every ``every`` steps (step % every == 0).
        conv_reading: "flatten", "taps" (the mean over taps) or "pooled"
            (WeightWatcher's reading; see :mod:`rankbias.analysis.weights`).
        attention_heads: one Q, K, V record per head of an attention module.
        batched: the weights carry a leading model dimension.
        run: a :class:`rankbias.framework.runs.RunDir` (or a path): the records are
            written to ``run/filename`` (CSV, atomically) as they come.
        filename: the CSV's name in the run directory.
        tensorboard: a log directory (or a ``SummaryWriter``): the records are
            also written as TensorBoard scalars (needs ``rankbias[tensorboard]``).
        write_every: write the CSV every this many records (and on ``close``).

    Fitted attributes: ``history_`` (one dict per record and model: ``step``,
    ``model`` when batched, and the metrics), ``step_`` (steps seen by
    :meth:`step`).
    """

    def __init__(
        self,
        layers: LayerSelector = None,
        measures: Sequence[str] | None = ("effective_rank", "stable_rank"),
        every: int = 1,
        *,
        conv_reading: ConvReading = "flatten",
        attention_heads: bool = False,
        batched: bool = False,
        run: RunDir | str | os.PathLike | None = None,
        filename: str = "rank_metrics.csv",
        tensorboard=None,
        write_every: int = 1,
    ):
        self.measures = _check_measure_names(measures)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive int, got {every!r}")
        check_conv_reading(conv_reading)
        if not isinstance(write_every, int) or write_every < 1:
            raise ConfigError(f"write_every must be a positive int, got {write_every!r}")
        self.layers = layers
        self.every = every
        self.conv_reading = conv_reading
        self.attention_heads = bool(attention_heads)
        self.batched = bool(batched)
        self.filename = filename
        self.write_every = write_every
        if run is not None and not hasattr(run, "write_csv"):
            from rankbias.framework.runs import RunDir

            run = RunDir(run)
        self.run = run
        self._writer = self._make_writer(tensorboard) if tensorboard is not None else None
        self._owns_writer = tensorboard is not None and not hasattr(tensorboard, "add_scalar")
        self.history_: list[dict[str, Any]] = []
        self.step_ = 0
        self._unwritten = 0

    @staticmethod
    def _make_writer(tensorboard):
        if hasattr(tensorboard, "add_scalar"):
            return tensorboard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "RankTracker(tensorboard=...) needs the tensorboard package, an optional "
                "dependency: pip install 'rankbias[tensorboard]' (or pip install tensorboard); "
                "leave tensorboard=None to write only the CSV"
            ) from e
        return SummaryWriter(log_dir=str(tensorboard))

    # -------------------------------------------------------------- measuring
    def _items(self, source) -> list[tuple[str, torch.Tensor]]:
        if isinstance(source, nn.Module):
            return [(e.name, e.weight()) for e in
                    weight_entries(source, self.layers, attention_heads=self.attention_heads)]
        params = list(source)
        min_dim = 3 if self.batched else 2
        items = [(f"param{i}", p) for i, p in enumerate(params) if p.ndim >= min_dim]
        if self.layers is not None:
            sel = [self.layers] if isinstance(self.layers, str) else list(self.layers)
            items = [(n, p) for n, p in items if any(fnmatch.fnmatchcase(n, s) for s in sel)]
        return items

    @torch.no_grad()
    def measure(self, source) -> dict[str, torch.Tensor]:
        """The metrics now: ``{"<layer>/<measure>": value}`` (shape (M,) when batched)."""
        res = measure_weights(self._items(source), self.measures, self.conv_reading, batched=self.batched)
        out: dict[str, torch.Tensor] = {}
        for name, r in res.items():
            for key in self.measures:
                val = torch.tensor(float("nan"), dtype=torch.float64) if isinstance(r, str) else r[0][key]
                out[f"{name}/{key}"] = val.cpu()
        return out

    def record(self, source, step: int) -> dict[str, torch.Tensor]:
        """Measure ``source`` (a module or a list of parameters) now, as step ``step``."""
        metrics = self.measure(source)
        n_models = 1
        for v in metrics.values():
            n_models = max(n_models, v.numel())
        for i in range(n_models):
            row: dict[str, Any] = {"step": int(step)}
            if self.batched:
                row["model"] = i
            for k, v in metrics.items():
                row[k] = float(v.reshape(-1)[i] if v.numel() == n_models else v.reshape(-1)[0])
            self.history_.append(row)
            if self._writer is not None:
                for k, val in row.items():
                    if k in ("step", "model"):
                        continue
                    tag = f"rank/{k}" if not self.batched else f"rank/{k}/model{i}"
                    self._writer.add_scalar(tag, val, global_step=int(step))
        self._unwritten += 1
        if self.run is not None and self._unwritten >= self.write_every:
            self.flush()
        return metrics

    def step(self, model, step: int | None = None) -> dict[str, torch.Tensor] | None:
        """Call once per training step (after ``optimizer.step()``); records every
        ``every`` steps and returns the metrics then, else None. ``step``
        defaults to the number of calls so far (1, 2, ...)."""
        self.step_ = self.step_ + 1 if step is None else int(step)
        if self.step_ % self.every:
            return None
        return self.record(model, self.step_)

    def on_log(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Callback of :func:`rankbias.train.train`: measures ``state.model`` (or
        ``state.params``) at the logged steps that are multiples of ``every``."""
        if state.step % self.every:
            return {}
        self.step_ = state.step
        source = state.model if state.model is not None else state.params
        return self.record(source, state.step)

    # ----------------------------------------------------------------- output
    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.history_)

    def flush(self) -> Path | None:
        """Write the records so far to ``run/filename``; flush TensorBoard."""
        if self._writer is not None:
            self._writer.flush()
        self._unwritten = 0
        if self.run is None:
            return None
        return self.run.write_csv(self.filename, self.history_)

    def close(self) -> None:
        self.flush()
        if self._writer is not None and self._owns_writer:
            self._writer.close()

    def __enter__(self) -> RankTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
