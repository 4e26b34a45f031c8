"""What a reproduction runs: the presets of ``rankbias reproduce``, each a list of steps.

A :class:`Step` is one registered experiment at one of its presets, with config
overrides, under a label of its own; in a budgeted plan it also has a share of
the time budget. A :class:`Preset` says how its steps are made:

* ``plans``: per experiment (or :data:`ALL` for every experiment not named) the
  experiment preset and overrides to run it with (:class:`Plan`). Every registered
  experiment becomes a step labelled by its name; one without a plan, or without
  the plan's preset, is a step that is reported "not run". ``quick`` and ``paper``
  are written this way, and adding a preset is adding an entry::

      REPRODUCE_PRESETS["long"] = Preset(plans={ALL: Plan("quick"),
                                                "overparam-classification": Plan("paper", {"epochs": 30})})

* ``build``: a function of the data folder that returns the steps, for a plan
  that runs some experiments more than once or only where the data has their
  dataset. ``gpu`` and ``gpu-smoke`` (docs/gpu.md) are written this way, with a
  budget: every step has a share (:func:`check_shares`). Their steps are declared by
  the experiments that take part (``gpu=`` of
  :func:`~rankbias.experiments.registry.register`, a tuple of
  :class:`~rankbias.framework.gpu_declarations.GpuStep`); :func:`gpu_steps` assembles
  them from the registry, so taking part needs no edit here.

:func:`rankbias.plan_runner.reproduce` runs a preset's steps. This module imports
only the standard library at import time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rankbias.errors import UnsupportedError
from rankbias.framework.gpu_declarations import GPU_PLANS, DataFolder, GpuStep
from rankbias.framework.paths import data_root

__all__ = [
    "ALL",
    "DEPTH_DEMO",
    "REPRODUCE_PRESETS",
    "DataFolder",
    "Plan",
    "Preset",
    "Step",
    "check_shares",
    "experiment_steps",
    "gpu_steps",
    "preset_named",
    "resolve_data",
]

ALL = "*"
"""Key of a preset's plan for every experiment it does not name."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one experiment runs in a per-experiment preset."""

    preset: str
    """The experiment's preset."""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Config overrides on top of it (``--set NAME:key=value`` comes on top of these)."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a reproduction: an experiment at a preset, with overrides."""

    label: str
    """Name in the report (the experiment's name in a per-experiment preset)."""
    experiment: str
    """Registered experiment."""
    preset: str | None
    """Its preset (None only for a skipped step)."""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Config overrides (fields that exist in the experiment's config)."""
    share: float | None = None
    """Fraction of the budget this step may take, plus what the steps before it left unused
    (None: the plan has no budget)."""
    stops_itself: bool = False
    """In a budgeted plan: the step stops cleanly at its ``budget_minutes`` (run in this process,
    given its time as that setting); else it runs as a child process killed at its time limit."""
    skip: str | None = None
    """Why the step is not run (reported as "not run"), or None."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a reproduction preset runs: ``plans`` or ``build`` (module docstring)."""

    plans: Mapping[str, Plan] | None = None
    """Per experiment name (or ALL): its Plan; every registered experiment is a step."""
    build: Callable[[DataFolder], list[Step]] | None = None
    """Or: the steps, from the data folder (every step then has a budget share)."""
    budget_minutes: float | None = None
    """The default budget of a ``build`` plan (None: no budget)."""
    device: str | None = None
    """A device the whole plan needs, checked before any work (None: each config's own)."""

    def __post_init__(self) -> None:
        if (self.plans is None) == (self.build is None):
            raise UnsupportedError(
                "a Preset takes exactly one of plans= (per experiment) and build= (steps)"
            )
        if (self.build is None) != (self.budget_minutes is None):
            raise UnsupportedError(
                "budget_minutes goes with build= (a budgeted list of steps), and only there"
            )


DEPTH_DEMO = {"steps": 2000, "lr_factors": [1.0]}
"""The depth experiments in ``make demo``: at most 2,000 steps at one rate, so the demo takes
minutes (trained to the plateau with a rate grid, their quick presets take 10-60 min on two
cores). The plateau rule still applies and every network whose cap bound is reported."""


def check_shares(steps: list[Step]) -> None:
    """Refuse a plan whose shares are not each in (0, 1] or sum to more than 1."""
    bad = [st.label for st in steps if st.share is None or not 0 < st.share <= 1]
    total = sum(st.share or 0.0 for st in steps)
    if bad or total > 1 + 1e-9:
        raise UnsupportedError(
            f"budget shares must each be in (0, 1] and sum to <= 1; got "
            f"{ {st.label: st.share for st in steps} } (sum {total:.3g})"
        )


def experiment_steps(name: str, plans: Mapping[str, Plan]) -> list[Step]:
    """One step per registered experiment, as preset ``name``'s ``plans`` say."""
    from rankbias.experiments.registry import list_experiments

    steps = []
    for exp_name, exp in list_experiments().items():
        plan = plans.get(exp_name, plans.get(ALL))
        if plan is None:
            steps.append(
                Step(exp_name, exp_name, None, skip=f"not part of the {name!r} reproduction")
            )
        elif plan.preset not in exp.presets:
            steps.append(
                Step(
                    exp_name,
                    exp_name,
                    plan.preset,
                    skip=f"no {plan.preset!r} preset (has: {', '.join(exp.presets)})",
                )
            )
        else:
            steps.append(Step(exp_name, exp_name, plan.preset, dict(plan.overrides)))
    return steps


def gpu_steps(preset: str, data: DataFolder) -> list[Step]:
    """The steps of ``gpu`` (one GPU) or ``gpu-smoke`` (the same path, tiny, on the CPU),
    as the registered experiments declare them (``gpu=`` of ``register``).

    The order: first the steps that run as child processes killed at their limit, then those
    that stop themselves (they take up whatever time the others left); within each, by
    experiment name, then in the order the experiment declares them. A step whose dataset
    ``data`` lacks is skipped (its share goes on to the next steps), or left out where it
    declares ``if_missing="omit"``.

    Raises
    ------
    UnsupportedError
        ``preset`` is not a GPU plan, or the declared shares sum to more than 1.
    """
    from rankbias.experiments.registry import list_experiments

    if preset not in GPU_PLANS:
        raise UnsupportedError(f"unknown GPU preset {preset!r}; accepted: {', '.join(GPU_PLANS)}")
    declared = sorted(
        ((st.stops_itself, name, i), name, st)
        for name, exp in list_experiments().items()
        for i, st in enumerate(exp.gpu)
    )
    steps = [_gpu_step(preset, name, st, data) for _, name, st in declared]
    check_shares(steps)  # every declared share counts, whether or not this data keeps its step
    return [
        step
        for step, (_, _, st) in zip(steps, declared, strict=True)
        if not (step.skip and st.run_in(preset).if_missing == "omit")
    ]


def _gpu_step(plan: str, experiment: str, st: GpuStep, data: DataFolder) -> Step:
    run = st.run_in(plan)
    lacks = run.needs is not None and run.needs not in data.has
    return Step(
        st.label,
        experiment,
        run.preset,
        st.overrides_in(plan, data),
        run.share,
        stops_itself=st.stops_itself,
        skip=f"no {run.needs} in the data ({data.packed or data.root})" if lacks else None,
    )


DATA_ROOT_LAYOUTS = (
    ("mnist", "MNIST/raw"),
    ("cifar10", "cifar10-jpeg"),
    ("cifar10", "cifar10-jpeg.tar"),
    ("cifar10", "cifar-10-batches-py"),
)
"""Where a plain data root holds each dataset of
:data:`~rankbias.framework.gpu_declarations.PLAN_DATASETS` (any of its paths will do)."""


def resolve_data(data: str | os.PathLike | None) -> DataFolder:
    """The data folder of a budgeted plan: ``data``, else the data root (``$RANKBIAS_DATA``)."""
    from rankbias.data.packed import MANIFEST, is_packed

    folder = data_root(data)
    if not is_packed(folder):
        has = {n for n, p in DATA_ROOT_LAYOUTS if (folder / p).exists()}
        return DataFolder(None, str(folder), frozenset(has))
    # a packed folder is a data root itself (load_image_dataset reads it): nothing to unpack
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    return DataFolder(str(folder), str(folder), frozenset(manifest["datasets"]))


REPRODUCE_PRESETS: dict[str, Preset] = {
    "quick": Preset(
        plans={
            ALL: Plan("quick"),
            # the first run shows paper 1 on MNIST: downloaded where it is missing
            # (fails in seconds without internet; then digits, and the report says so)
            "noise-robustness-images": Plan("quick", {"download": True}),
            **{
                name: Plan("quick", DEPTH_DEMO)
                for name in (
                    "depth-rank-trained",
                    "depth-rank-optimizers",
                    "depth-rank-init-sensitivity",
                )
            },
        }
    ),
    "paper": Preset(plans={ALL: Plan("paper")}),
    "gpu": Preset(build=lambda data: gpu_steps("gpu", data), budget_minutes=9.0, device="cuda"),
    "gpu-smoke": Preset(build=lambda data: gpu_steps("gpu-smoke", data), budget_minutes=2.0),
}
"""Reproduction preset -> what it runs (:class:`Preset`)."""


def preset_named(name: str, presets: Mapping[str, Preset] | None = None) -> Preset:
    """The preset ``name``: its entry of :data:`REPRODUCE_PRESETS`, else each experiment's own
    preset of that name (so an experiment's extra presets can be reproduced without an entry)."""
    table = REPRODUCE_PRESETS if presets is None else presets
    return table.get(name) or Preset(plans={ALL: Plan(name)})
