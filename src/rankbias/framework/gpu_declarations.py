"""What an experiment declares to take part in the budgeted GPU plans (docs/gpu.md).

``rankbias reproduce --preset gpu`` (and ``gpu-smoke``, the same path at a tiny size on
the CPU) runs a list of steps, each with a share of the time budget. The steps are not
written down in one place: each experiment that takes part declares its own next to its
presets, ``gpu=`` of :func:`rankbias.experiments.registry.register`, a tuple of
:class:`GpuStep`, and :func:`rankbias.plans.gpu_steps` assembles the plans from the
registry. The registry checks each declaration when the experiment registers
(:func:`rankbias.experiments.registry.check_contract`). This module holds only the types
and imports nothing but the standard library and :mod:`rankbias.errors`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from rankbias.errors import InvalidParameterError

__all__ = ["GPU_PLANS", "PLAN_DATASETS", "DataFolder", "GpuRun", "GpuStep", "no_overrides"]

GPU_PLANS = ("gpu", "gpu-smoke")
"""The budgeted plans a :class:`GpuStep` takes part in: ``gpu`` (its own scale on one GPU,
every step on ``device="cuda"``) and ``gpu-smoke`` (the same path, tiny, on the CPU)."""
PLAN_DATASETS = ("cifar10", "mnist")
"""The datasets a :class:`DataFolder` can hold (what ``rankbias prepare-data`` packs and
:func:`rankbias.plans.resolve_data` finds in a data root)."""


@dataclasses.dataclass(frozen=True)
class DataFolder:
    """Where a budgeted plan reads its data."""

    packed: str | None
    """The folder written by ``rankbias prepare-data``, or None for a plain data root."""
    root: str
    """The data root the loaders read (a packed folder is one too)."""
    has: frozenset[str]
    """The datasets available there (of :data:`PLAN_DATASETS`)."""


def no_overrides(data: DataFolder) -> dict[str, Any]:
    """The overrides of a :class:`GpuRun` that runs its preset as it is, whatever the data."""
    return {}


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """How a :class:`GpuStep` runs in one of the two plans."""

    preset: str
    """The experiment's preset it starts from (one of its ``presets``)."""
    share: float
    """Its fraction of the plan's time budget, in (0, 1] (the plan refuses shares summing above 1)."""
    overrides: Callable[[DataFolder], Mapping[str, Any]] = no_overrides
    """Config overrides on top of the preset, from where the data is."""
    needs: str | None = None
    """A dataset of :data:`PLAN_DATASETS` the step cannot run without, or None."""
    if_missing: Literal["skip", "omit"] = "skip"
    """Where the data lacks ``needs``: the step is reported "not run" (its share goes on to
    the next steps), or left out of the plan."""

    def problems(self, presets: Mapping[str, Any]) -> list[str]:
        """What this run breaks of the registry's contract, for an experiment with ``presets``
        (empty: nothing): its preset is one of them, its share a number in (0, 1], its
        overrides a function, ``needs`` None or one of :data:`PLAN_DATASETS`, ``if_missing``
        "skip" or "omit"."""
        problems = []
        if self.preset not in presets:
            problems.append(
                f"preset {self.preset!r} is not one of the experiment's (accepted: "
                f"{', '.join(presets)})"
            )
        share = self.share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            problems.append(
                f"share {share!r} is not in (0, 1] (accepted: a fraction of the budget, e.g. 0.1)"
            )
        if not callable(self.overrides):
            problems.append(
                f"overrides {self.overrides!r} is not callable (accepted: a function of the "
                "DataFolder returning a dict)"
            )
        if self.needs is not None and self.needs not in PLAN_DATASETS:
            problems.append(
                f"needs {self.needs!r} is no dataset a data folder holds (accepted: None, "
                f"{', '.join(PLAN_DATASETS)})"
            )
        if self.if_missing not in ("skip", "omit"):
            problems.append(f"if_missing {self.if_missing!r} (accepted: 'skip', 'omit')")
        return problems


@dataclasses.dataclass(frozen=True)
class GpuStep:
    """One step an experiment adds to the GPU plans (``gpu=`` of
    :func:`rankbias.experiments.registry.register`)."""

    label: str
    """Its name in the plans' reports and run folders (kebab-case, unique over all experiments)."""
    gpu: GpuRun
    """How it runs in the ``gpu`` plan."""
    smoke: GpuRun
    """How it runs in ``gpu-smoke``."""
    stops_itself: bool = False
    """It stops cleanly at its config's ``budget_minutes`` (run in the plan's process, last);
    else it runs as a child process killed at its time limit."""

    def run_in(self, plan: str) -> GpuRun:
        """Its :class:`GpuRun` in ``plan`` (one of :data:`GPU_PLANS`)."""
        if plan not in GPU_PLANS:
            raise InvalidParameterError(
                f"unknown GPU plan {plan!r}; accepted: {', '.join(GPU_PLANS)}"
            )
        return self.gpu if plan == "gpu" else self.smoke

    def overrides_in(self, plan: str, data: DataFolder) -> dict[str, Any]:
        """Its config overrides in ``plan`` with ``data`` (a fresh copy): its run's, with
        ``device="cuda"`` under them in the ``gpu`` plan.

        Raises
        ------
        InvalidParameterError
            ``plan`` is unknown, or the run's overrides function raised or returned no
            mapping (naming this step, the plan and the data).
        """
        cuda = {"device": "cuda"} if plan == "gpu" else {}
        run = self.run_in(plan)
        try:
            own = run.overrides(data)
        except Exception as e:  # a bug in the declaring module: say whose function it is
            raise InvalidParameterError(
                f"GPU step {self.label!r}: its overrides in {plan!r} raised {type(e).__name__}: "
                f"{e} (data: {data}); accepted: a function of the DataFolder returning a dict"
            ) from e
        if not isinstance(own, Mapping):
            raise InvalidParameterError(
                f"GPU step {self.label!r}: its overrides in {plan!r} returned {own!r}; "
                "accepted: a dict of config overrides"
            )
        return copy.deepcopy({**cuda, **own})
