"""Fitting a run's epochs to its time budget from what every arm costs (overparam-cifar).

An arm is a set of models trained together (a depth, or a depth with the other
weight-decay placement). A deeper arm costs more per epoch, so the baseline's
epoch time times the number of arms underestimates the run: each distinct arm is
timed (a short probe on the device), and the epochs are the most that let every
arm finish within the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["arm_epoch_costs", "epochs_for_budget"]


def arm_epoch_costs(
    arms: Sequence[Mapping[str, Any]], time_arm: Callable[[Mapping[str, Any]], float]
) -> dict[str, float]:
    """Seconds per (probe) epoch of every arm, by label.

    Parameters
    ----------
    arms
        The arms to train, each with ``label``, ``depth`` and ``wd_on``.
    time_arm
        Times one epoch of an arm (the experiment's device probe; a test passes a fake
        clock). Called once per distinct (depth, weight-decay placement): arms that
        train the same models cost the same. With one distinct arm it is not called
        and every arm costs 1.0 (only the ratios matter).

    Returns
    -------
    dict
        label -> seconds, in the order of ``arms``.
    """
    keys = {a["label"]: (a["depth"], a["wd_on"]) for a in arms}
    if len(set(keys.values())) <= 1:
        return dict.fromkeys(keys, 1.0)
    timed: dict[tuple, float] = {}
    for a in arms:
        if keys[a["label"]] not in timed:
            timed[keys[a["label"]]] = float(time_arm(a))
    return {label: timed[k] for label, k in keys.items()}


def epochs_for_budget(
    left_s: float, epoch_s: Mapping[str, float], first: str, done: int, margin: float = 1.15
) -> int:
    """The most epochs E for which every arm fits ``left_s`` seconds with ``margin``.

    ``first`` is the arm being trained, ``done`` of its epochs behind it; every other
    arm of ``epoch_s`` (seconds per epoch) is still to train:
    ``(E - done) t_first + E sum_others t <= left_s / margin``.

    Examples
    --------
    >>> epochs_for_budget(115.0, {"depth1": 1.0, "depth4": 3.0}, "depth1", done=2)
    25
    """
    return int((left_s / margin + done * epoch_s[first]) // sum(epoch_s.values()))
