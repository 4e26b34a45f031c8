"""A Lightning callback that records a :class:`~rankbias.analysis.tracker.RankTracker`
during ``Trainer.fit`` and logs its values to the trainer's loggers.

Needs the optional ``lightning`` package (``pip install 'rankbias[lightning]'``).
"""

from __future__ import annotations

from rankbias.analysis.tracker import RankTracker
from rankbias.errors import InvalidParameterError, UnsupportedError, optional_import

Callback = optional_import("lightning.pytorch.callbacks", feature="rankbias.analysis.lightning",
                           extra="lightning", package="lightning").Callback

__all__ = ["RankTrackerCallback"]


class RankTrackerCallback(Callback):
    """Records ``tracker`` on the LightningModule after every ``tracker.every``-th
    optimizer step (``trainer.global_step``) and logs each value as
    ``rank/<layer>/<measure>`` at that step on every logger of the trainer.

    ``tracker``: a :class:`RankTracker` (its CSV / TensorBoard outputs work as
    usual), or None for ``RankTracker(**kwargs)``. The tracker is closed at
    the end of fitting.

        tracker = RankTracker(every=50, layers=["encoder.*"])
        trainer = lightning.Trainer(callbacks=[RankTrackerCallback(tracker)])
    """

    def __init__(self, tracker: RankTracker | None = None, **kwargs):
        if tracker is not None and kwargs:
            raise InvalidParameterError("pass a RankTracker or its keyword arguments, not both")
        if tracker is not None and not isinstance(tracker, RankTracker):
            raise InvalidParameterError(f"tracker: expected a RankTracker, got {type(tracker).__name__}")
        self.tracker = tracker if tracker is not None else RankTracker(**kwargs)
        if self.tracker.batched:
            raise UnsupportedError("RankTrackerCallback: a batched RankTracker (a leading model "
                                   "dimension) does not fit one LightningModule; use batched=False")
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == self._last or step % self.tracker.every:
            return  # no optimizer step since the last record (gradient accumulation)
        self._last = step
        metrics = self.tracker.record(pl_module, step)
        values = {f"rank/{k}": float(v) for k, v in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.tracker.close()
