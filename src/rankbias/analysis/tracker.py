"""``RankTracker``: rank measures of chosen layers (and, with data, of chosen
embeddings) recorded during training.

Without data it reads the same weight rows as :func:`rankbias.analysis.rank_report`
(see :mod:`rankbias.analysis.layers`) and measures them the same way
(:mod:`rankbias.analysis.weights`), with no forward pass and no hook. With
``data`` every record is :func:`rank_report` itself on that data. Its scalars go
to loggers of :mod:`rankbias.analysis.loggers` (TensorBoard, MLflow, W&B). For
Lightning see :class:`rankbias.analysis.lightning.RankTrackerCallback`, for the
Hugging Face ``Trainer`` :class:`rankbias.analysis.hf_trainer.HFRankTrackerCallback`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankbias.analysis.layers import (
    ConvReading,
    LayerSelector,
    ModelData,
    embedding_targets,
    weight_entries,
)
from rankbias.analysis.loggers import RankLogger, TensorBoardLogger
from rankbias.analysis.weights import check_conv_reading, measure_weights
from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.framework.config import ConfigError
from rankbias.measures import _check_measure_names

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from torch.utils.tensorboard import SummaryWriter

    from rankbias.framework.runs import RunDir
    from rankbias.training import TrainState

__all__ = ["RankTracker"]


class RankTracker:
    """Records rank measures of chosen layers every ``every`` steps.

    Two ways to use it::

        # 1. as a callback of rankbias.training.train: values join its history
        train(loss_fn, model, steps=1000, log_every=10, callbacks=[RankTracker(every=100)])

        # 2. in your own loop: two lines
        tracker = RankTracker(every=100, run="runs/mine")      # before the loop
        tracker.step(model)                                     # after optimizer.step()

    Metric keys are ``"<layer>/<measure>"`` (e.g. ``"fc1/effective_rank"``); with
    ``data``, also ``"<row>/emb_<measure>"``, the measures of the kernel of that
    row's embeddings, as the ``emb_`` columns of :func:`rank_report`.
    ``batched=True`` reads the weights of a batch of models trained at once
    (leading model dimension, as rankbias's trainer trains sweeps): values are
    then per model.

    Parameters
    ----------
    layers : str, type, sequence of them, or callable, optional
        Which layers (see :func:`weight_layers`); for a plain list of parameters
        (a callback without a module) the names ``param<i>``.
    measures : sequence of str, default ("effective_rank", "stable_rank")
        Which measures (names of :data:`rankbias.measures.MEASURES`).
    every : int, default 1
        Record every ``every`` steps (step % every == 0).
    conv_reading : {"flatten", "taps", "pooled"}, default "flatten"
        "taps" is the mean over taps, "pooled" WeightWatcher's reading (see
        :mod:`rankbias.analysis.weights`).
    attention_heads : bool, default False
        One Q, K, V record per head of an attention module.
    batched : bool, default False
        The weights carry a leading model dimension.
    run : RunDir, str or os.PathLike, optional
        A :class:`rankbias.framework.runs.RunDir` (or a path): the records are
        written to ``run/filename`` (CSV, atomically) as they come, and on
        :meth:`close` the figure ``run/figures/<filename stem>.png`` (ranks
        against steps, :func:`rankbias.plots.tracked_ranks`).
    filename : str, default "rank_metrics.csv"
        The CSV's name in the run directory.
    tensorboard : str, os.PathLike or SummaryWriter, optional
        A log directory (or a ``SummaryWriter``): the records are also written as
        TensorBoard scalars (needs ``rankbias[tensorboard]``); short for
        ``loggers=[TensorBoardLogger(tensorboard)]``.
    loggers : RankLogger or sequence of RankLogger, optional
        ``MlflowLogger``, ``WandbLogger``, ``TensorBoardLogger`` (see
        :mod:`rankbias.analysis.loggers`) or your own: each record is sent as
        ``rank/<key>`` (``rank/<key>/model<i>`` when batched); they are closed by
        :meth:`close`.
    write_every : int, default 1
        Write the CSV (and flush the loggers) every this many records (and on
        ``close``).
    data : tensor, dict of tensors, Dataset or DataLoader, optional
        Inputs (as :func:`rank_report` takes them): every record is then
        :func:`rank_report` on them, the ``emb_`` measures of each chosen layer's
        output and of ``embeddings``. A forward pass per record; without data,
        none and no hook.
    embeddings : str or sequence of str, optional
        More rows, named as in :func:`rank_report` (``["fc:input",
        "encoder.layer.*"]``); needs ``data``.
    embedding_options : mapping, optional
        More arguments of :func:`rank_report` for the embeddings:
        ``token_index``, ``embedding_reading``, ``embedding_measures``,
        ``centered``, ``batch_size``, ``max_samples``, ``max_embedding_dim``.

    Attributes
    ----------
    history_ : list of dict
        One dict per record and model: ``step``, ``model`` when batched, and the
        metrics.
    step_ : int
        Steps seen by :meth:`step`.

    Raises
    ------
    ConfigError
        An unknown measure or conv reading; ``every`` or ``write_every`` not a
        positive int; an unknown key of ``embedding_options``; ``embeddings`` or
        ``embedding_options`` without ``data``.
    InvalidParameterError
        A logger that lacks ``log_metrics``, ``flush`` and ``close``.
    UnsupportedError
        ``data`` with ``batched=True`` (the forward pass of a batch of models is
        not known).
    ImportError
        ``tensorboard`` without the ``rankbias[tensorboard]`` extra.

    Examples
    --------
    >>> from torch import nn
    >>> from rankbias import RankTracker
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # any init: full rank
    >>> tracker = RankTracker(measures=["numerical_rank"], every=2)
    >>> tracker.step(model) is None  # step 1 is not a multiple of 2
    True
    >>> {k: float(v) for k, v in tracker.step(model).items()}
    {'0/numerical_rank': 6.0, '2/numerical_rank': 3.0}
    >>> tracker.history_
    [{'step': 2, '0/numerical_rank': 6.0, '2/numerical_rank': 3.0}]
    """

    EMBEDDING_OPTIONS = ("token_index", "embedding_reading", "embedding_measures", "centered",
                         "batch_size", "max_samples", "max_embedding_dim")

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
        tensorboard: str | os.PathLike | SummaryWriter | None = None,
        loggers: RankLogger | Sequence[RankLogger] | None = None,
        write_every: int = 1,
        data: ModelData | None = None,
        embeddings: str | Sequence[str] | None = None,
        embedding_options: Mapping[str, Any] | None = None,
    ) -> None:
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
        self.data, self.embeddings = data, embeddings
        self.embedding_options = self._check_embedding_options(embedding_options)
        if run is not None and not hasattr(run, "write_csv"):
            from rankbias.framework.runs import RunDir

            run = RunDir(run)
        self.run = run
        self.loggers = self._check_loggers(loggers)
        if tensorboard is not None:
            self.loggers.append(TensorBoardLogger(tensorboard))
        self.history_: list[dict[str, Any]] = []
        self.step_ = 0
        self._unwritten = 0
        self._closed = False

    def _check_embedding_options(self, options) -> dict[str, Any]:
        options = dict(options or {})
        bad = sorted(set(options) - set(self.EMBEDDING_OPTIONS))
        if bad:
            raise ConfigError(f"embedding_options: unknown {bad}; accepted: {list(self.EMBEDDING_OPTIONS)}")
        if "embedding_measures" in options:
            options["embedding_measures"] = _check_measure_names(options["embedding_measures"])
        if self.embeddings is not None and self.data is None:
            raise ConfigError("embeddings: measuring embeddings needs data (pass data=...)")
        if options and self.data is None:
            raise ConfigError("embedding_options: they apply to embeddings, which need data (pass data=...)")
        if self.data is not None and self.batched:
            raise UnsupportedError("RankTracker: data (embeddings) with batched=True: the forward pass "
                                   "of a batch of models is not known; accepted: data with batched=False")
        return options

    @staticmethod
    def _check_loggers(loggers) -> list[RankLogger]:
        if loggers is None:
            return []
        found = list(loggers) if isinstance(loggers, list | tuple) else [loggers]
        bad = [type(x).__name__ for x in found if not isinstance(x, RankLogger)]
        if bad:
            raise InvalidParameterError(f"loggers: {bad} lack log_metrics(metrics, step), flush() and close(); "
                            "accepted: TensorBoardLogger, MlflowLogger, WandbLogger "
                            "(rankbias.analysis.loggers) or any object with those three methods")
        return found

    def check(self, model: nn.Module) -> None:
        """Raise now (ConfigError) if ``layers`` or ``embeddings`` name nothing in ``model``."""
        weight_entries(model, self.layers, attention_heads=self.attention_heads)
        embedding_targets(model, self.embeddings)

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
        if self.data is not None:
            return self._measure_report(source)
        res = measure_weights(self._items(source), self.measures, self.conv_reading, batched=self.batched)
        out: dict[str, torch.Tensor] = {}
        for name, r in res.items():
            for key in self.measures:
                val = torch.tensor(float("nan"), dtype=torch.float64) if isinstance(r, str) else r[0][key]
                out[f"{name}/{key}"] = val.cpu()
        return out

    def _measure_report(self, model) -> dict[str, torch.Tensor]:
        """:func:`rank_report` on ``self.data``, its measure columns as metrics."""
        import pandas as pd

        from rankbias.analysis.rank_table import rank_report

        if not isinstance(model, nn.Module):
            raise UnsupportedError(f"RankTracker(data=...): embeddings need a module to run, got "
                                   f"{type(model).__name__}; accepted: an nn.Module")
        df = rank_report(model, self.data, self.layers, self.measures, self.conv_reading,
                         embeddings=self.embeddings, attention_heads=self.attention_heads,
                         include_data=False, progress=False, **self.embedding_options)
        weights = {e.name for e in weight_entries(model, self.layers, attention_heads=self.attention_heads)}
        emb = self.embedding_options.get("embedding_measures", self.measures)
        out: dict[str, torch.Tensor] = {}
        for row in df.to_dict("records"):
            keys = [(k, k) for k in self.measures] if row["name"] in weights else []
            keys += [(f"emb_{k}", f"emb_{k}") for k in emb]
            for key, col in keys:
                v = row.get(col)
                v = float("nan") if v is None or pd.isna(v) else float(v)
                out[f"{row['name']}/{key}"] = torch.tensor(v, dtype=torch.float64)
        return out

    def record(self, source, step: int) -> dict[str, torch.Tensor]:
        """Measure ``source`` (a module or a list of parameters) now, as step ``step``."""
        metrics = self.measure(source)
        n_models = 1
        for v in metrics.values():
            n_models = max(n_models, v.numel())
        logged: dict[str, float] = {}
        for i in range(n_models):
            row: dict[str, Any] = {"step": int(step)}
            if self.batched:
                row["model"] = i
            for k, v in metrics.items():
                row[k] = float(v.reshape(-1)[i] if v.numel() == n_models else v.reshape(-1)[0])
                logged[f"rank/{k}" if not self.batched else f"rank/{k}/model{i}"] = row[k]
            self.history_.append(row)
        for logger in self.loggers:
            logger.log_metrics(logged, int(step))
        self._unwritten += 1
        if self._unwritten >= self.write_every:
            self.flush()
        return metrics

    def step(self, model: nn.Module | Iterable[torch.Tensor],
             step: int | None = None) -> dict[str, torch.Tensor] | None:
        """Call once per training step (after ``optimizer.step()``); records every
        ``every`` steps.

        Parameters
        ----------
        model : nn.Module or iterable of tensors
            The model, or a plain list of its parameters (named ``param<i>``).
        step : int, optional
            This step's number; default the number of calls so far (1, 2, ...).

        Returns
        -------
        dict of str to torch.Tensor, or None
            The metrics ``{"<layer>/<measure>": value}`` (shape (M,) when batched)
            at a recorded step, else None.

        Raises
        ------
        ConfigError
            ``layers`` or ``embeddings`` name nothing in ``model``.
        UnsupportedError
            With ``data``, ``model`` is not an ``nn.Module``.

        Examples
        --------
        >>> import torch
        >>> from rankbias import RankTracker
        >>> tracker = RankTracker(measures=["numerical_rank"])
        >>> {k: float(v) for k, v in tracker.step([torch.eye(3)], step=10).items()}
        {'param0/numerical_rank': 3.0}
        >>> tracker.step_
        10
        """
        self.step_ = self.step_ + 1 if step is None else int(step)
        if self.step_ % self.every:
            return None
        return self.record(model, self.step_)

    def on_log(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Callback of :func:`rankbias.training.train`: measures ``state.model`` (or
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
        """Write the records so far to ``run/filename``; flush the loggers."""
        for logger in self.loggers:
            logger.flush()
        self._unwritten = 0
        if self.run is None:
            return None
        return self.run.write_csv(self.filename, self.history_)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """The records as a figure (PNG): one panel per measure, a line per layer
        against the step (:func:`rankbias.plots.tracked_ranks`).

        Parameters
        ----------
        path : str or os.PathLike
            Where the PNG is written.
        title : str, optional
            The figure's title (default "rank during training").

        Returns
        -------
        pathlib.Path
            The written file.

        Raises
        ------
        ConfigError
            Nothing was recorded yet.

        Examples
        --------
        >>> import os, tempfile
        >>> import torch
        >>> from rankbias import RankTracker
        >>> tracker = RankTracker(measures=["stable_rank"])
        >>> for _ in range(3):
        ...     _ = tracker.step([torch.eye(3)])
        >>> tracker.plot(os.path.join(tempfile.mkdtemp(), "ranks.png")).name
        'ranks.png'
        """
        from rankbias.plots import tracked_ranks

        if not self.history_:
            raise ConfigError("RankTracker.plot: nothing recorded yet (call step/record first)")
        return tracked_ranks(self.history_, path, title=title or "rank during training")

    def close(self) -> None:
        """Write the CSV and, with ``run``, the figure; close the loggers.

        Calling it again only writes the CSV again. The tracker is also a context
        manager that calls it on exit.

        Returns
        -------
        None

        Raises
        ------
        OSError
            The CSV or the figure cannot be written.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from rankbias import RankTracker
        >>> run = Path(tempfile.mkdtemp())
        >>> with RankTracker(measures=["numerical_rank"], run=run) as tracker:
        ...     _ = tracker.step([torch.eye(2)])
        >>> (run / "rank_metrics.csv").read_text().splitlines()
        ['step,param0/numerical_rank', '1,2.0']
        >>> sorted(p.name for p in (run / "figures").iterdir())
        ['rank_metrics.png']
        """
        self.flush()
        if self._closed:
            return
        self._closed = True
        if self.run is not None and self.history_:
            self.plot(self.run.figure_path(Path(self.filename).stem))
        for logger in self.loggers:
            logger.close()

    def __enter__(self) -> RankTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
