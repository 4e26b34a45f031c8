"""A Hugging Face ``TrainerCallback`` that records a
:class:`~rankbias.analysis.tracker.RankTracker` during ``Trainer.train`` and
writes its values through the trainer's own ``log``, so they reach
``trainer.state.log_history`` and every integration of ``report_to``
(TensorBoard, MLflow, W&B, ...).

Needs the optional ``transformers`` package (``pip install 'rankbias[hf]'``).
"""

from __future__ import annotations

from rankbias.analysis.tracker import RankTracker
from rankbias.errors import InvalidParameterError, UnsupportedError, optional_import

_transformers = optional_import("transformers", feature="rankbias.analysis.hf_trainer", extra="hf")
Trainer, TrainerCallback = _transformers.Trainer, _transformers.TrainerCallback

__all__ = ["HFRankTrackerCallback"]


class HFRankTrackerCallback(TrainerCallback):
    """Records ``tracker`` on the trainer's model after every ``tracker.every``-th
    optimizer step (``state.global_step``) and logs each value as
    ``rank/<layer>/<measure>`` (``rank/<row>/emb_<measure>`` with data) through
    ``trainer.log`` at that step.

    A callback cannot reach the trainer's ``log`` by itself, so it is built
    with the trainer and then added to it::

        trainer = Trainer(model=model, args=args, train_dataset=ds)
        trainer.add_callback(HFRankTrackerCallback(trainer, every=50, layers=["*.attention.*"]))
        trainer.train()

    Parameters
    ----------
    trainer : transformers.Trainer
        The trainer this callback is added to.
    tracker : RankTracker, optional
        Its CSV, figure and loggers work as usual; closed at the end of
        training. None: ``RankTracker(**kwargs)``.
    **kwargs
        Arguments of :class:`RankTracker` (``layers``, ``measures``, ``every``,
        ``data``, ``embeddings``, ...), instead of ``tracker``.

    Raises
    ------
    ConfigError
        ``layers`` or ``embeddings`` name nothing in ``trainer.model``.
    UnsupportedError
        A batched tracker, or weights sharded across processes (FSDP,
        DeepSpeed), where one process does not hold whole weights.
    """

    def __init__(self, trainer: Trainer, tracker: RankTracker | None = None, **kwargs):
        if not isinstance(trainer, Trainer):
            raise InvalidParameterError(
                f"trainer: expected a transformers.Trainer, got {type(trainer).__name__}"
            )
        if tracker is not None and kwargs:
            raise InvalidParameterError("pass a RankTracker or its keyword arguments, not both")
        if tracker is not None and not isinstance(tracker, RankTracker):
            raise InvalidParameterError(
                f"tracker: expected a RankTracker, got {type(tracker).__name__}"
            )
        self.tracker = tracker if tracker is not None else RankTracker(**kwargs)
        if self.tracker.batched:
            raise UnsupportedError(
                "HFRankTrackerCallback: a batched RankTracker (a leading model "
                "dimension) does not fit one Trainer model; use batched=False"
            )
        sharded = [
            n for n in ("is_fsdp_enabled", "is_deepspeed_enabled") if getattr(trainer, n, False)
        ]
        if sharded:
            raise UnsupportedError(
                f"HFRankTrackerCallback: {sharded[0].removeprefix('is_').removesuffix('_enabled')} "
                "may shard each weight across processes, and the rank of a shard is not the rank "
                "of the weight; accepted: single-process or DDP training"
            )
        self.tracker.check(trainer.model)
        self.trainer = trainer
        self._last: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = int(state.global_step)
        if step == self._last or step % self.tracker.every:
            return
        if state is not self.trainer.state:
            raise RuntimeError(
                "HFRankTrackerCallback was added to a Trainer other than the one "
                "it was built with; build it with that trainer"
            )
        self._last = step
        metrics = self.tracker.record(model if model is not None else self.trainer.model, step)
        self.trainer.log({f"rank/{k}": float(v) for k, v in metrics.items()})

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.close()
