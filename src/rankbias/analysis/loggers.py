"""Where :class:`~rankbias.analysis.tracker.RankTracker` sends its scalars: a small
protocol and adapters for TensorBoard, MLflow and Weights & Biases.

Each adapter imports its library only when it is built, so importing rankbias
imports none of them; each is an optional extra (``rankbias[tensorboard]``,
``rankbias[mlflow]``, ``rankbias[wandb]``), and a missing one is an
``ImportError`` that names the extra.

Names arrive as ``rank/<layer>/<measure>`` (``.../model<i>`` for a batched
tracker). An adapter that did not open its run (a ``SummaryWriter``, an MLflow
run id or a W&B run passed in) leaves it open on :meth:`RankLogger.close`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from rankbias.errors import InvalidParameterError, optional_import

__all__ = ["MlflowLogger", "RankLogger", "TensorBoardLogger", "WandbLogger", "mlflow_key"]


@runtime_checkable
class RankLogger(Protocol):
    """What a tracker needs of a logger: one call per record, a flush, a close."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` (name -> value) at training step ``step``."""

    def flush(self) -> None:
        """Make what was logged so far readable (called every ``write_every`` records)."""

    def close(self) -> None:
        """End of the run: flush, and close what this logger opened."""


class TensorBoardLogger:
    """Scalars of a TensorBoard ``SummaryWriter``.

    Parameters
    ----------
    log_dir : str, os.PathLike or SummaryWriter
        A directory (a writer is opened there, and closed by :meth:`close`) or a
        writer of yours (left open).

    Raises
    ------
    ImportError
        Without the tensorboard package (``rankbias[tensorboard]``).
    """

    def __init__(self, log_dir):
        if hasattr(log_dir, "add_scalar"):
            self.writer, self._owns = log_dir, False
            return
        tb = optional_import("torch.utils.tensorboard", package="tensorboard", extra="tensorboard",
                             feature="RankTracker(tensorboard=...) / TensorBoardLogger")
        self.writer, self._owns = tb.SummaryWriter(log_dir=str(log_dir)), True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=int(step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        if self._owns:
            self.writer.close()


_MLFLOW_BAD = re.compile(r"[^0-9A-Za-z_\-. :/]")


def mlflow_key(name: str) -> str:
    """``name`` as MLflow accepts it: every character other than letters, digits,
    ``_-. :/`` becomes ``_`` (``rank/<root>/stable_rank`` -> ``rank/_root_/stable_rank``),
    the rule of transformers' ``MLflowCallback``, so a metric has one name whichever
    way it reaches MLflow."""
    return _MLFLOW_BAD.sub("_", name)


class MlflowLogger:
    """Metrics of an MLflow run, one ``log_batch`` per record.

    Parameters
    ----------
    run_id : str, optional
        The run to log to (left open). Default: the active run of
        ``mlflow.start_run()`` if there is one (left open), else a new run in
        ``experiment_name``, ended by :meth:`close`.
    tracking_uri : str, optional
        Default: MLflow's (``MLFLOW_TRACKING_URI``).
    experiment_name : str, optional
        The experiment of a new run (created if missing); default MLflow's default.

    Names are made MLflow-safe by :func:`mlflow_key`.

    Raises
    ------
    ImportError
        Without mlflow (``rankbias[mlflow]``: ``mlflow-skinny`` is enough).
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
    ):
        mlflow = optional_import("mlflow", feature="MlflowLogger", extra="mlflow", package="mlflow-skinny")
        self._metric = optional_import("mlflow.entities", feature="MlflowLogger", extra="mlflow",
                                       package="mlflow-skinny").Metric
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        active = mlflow.active_run() if run_id is None and tracking_uri is None else None
        self._owns = run_id is None and active is None
        if run_id is None:
            run_id = active.info.run_id if active is not None else self._new_run(experiment_name)
        self.run_id = run_id

    def _new_run(self, experiment_name: str | None) -> str:
        exp_id = "0"
        if experiment_name is not None:
            exp = self.client.get_experiment_by_name(experiment_name)
            exp_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(experiment_name)
            )
        return self.client.create_run(exp_id).info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        rows = [self._metric(mlflow_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(rows), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def flush(self) -> None:
        pass  # log_batch is synchronous

    def close(self) -> None:
        if self._owns:
            self.client.set_terminated(self.run_id)
            self._owns = False


class WandbLogger:
    """Rows of a Weights & Biases run, against their own x-axis ``rank/step``.

    Each record is one ``run.log`` row holding ``rank/step`` (W&B's
    ``define_metric``: ``rank/*`` is plotted against it), so it never clashes
    with the steps your own ``wandb.log`` calls use.

    Parameters
    ----------
    run : wandb Run, optional
        A run of yours (left open). Default: ``wandb.run`` if one is active
        (left open), else ``wandb.init(**init_kwargs)``, finished by :meth:`close`.
    **init_kwargs
        Passed to ``wandb.init`` (``project=``, ``dir=``, ``mode="offline"``, ...).

    Raises
    ------
    ImportError
        Without wandb (``rankbias[wandb]``).
    """

    STEP = "rank/step"

    def __init__(self, run=None, **init_kwargs: Any):
        wandb = optional_import("wandb", feature="WandbLogger", extra="wandb")
        if run is not None and init_kwargs:
            raise InvalidParameterError(
                "WandbLogger: pass a run or wandb.init's arguments, not both"
            )
        if run is None and not init_kwargs:
            run = wandb.run
        self._owns = run is None
        self.run = run if run is not None else wandb.init(**init_kwargs)
        self.run.define_metric(self.STEP)
        self.run.define_metric("rank/*", step_metric=self.STEP)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**{k: float(v) for k, v in metrics.items()}, self.STEP: int(step)})

    def flush(self) -> None:
        pass  # W&B writes in its own process

    def close(self) -> None:
        if self._owns:
            self.run.finish()
            self._owns = False
