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
  budget: every step has a share (:func:`check_shares`).

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
from rankbias.framework.paths import data_root

__all__ = [
    "ALL",
    "CIFAR_LR",
    "DEPTH_DEMO",
    "GPU_SHARES",
    "REPRODUCE_PRESETS",
    "SMOKE_SHARES",
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
class DataFolder:
    """Where a budgeted plan reads its data."""

    packed: str | None
    """The folder written by ``rankbias prepare-data``, or None for a plain data root."""
    root: str
    """The data root the loaders read (a packed folder is one too)."""
    has: frozenset[str]
    """The datasets available there."""


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

GPU_SHARES = {
    "paper1-synthetic": 0.07,
    "paper1-mnist": 0.14,
    "paper1-cifar10": 0.12,
    "paper2-overparam-cifar": 0.67,
}
"""The ``gpu`` plan's budget shares (docs/gpu.md: paper 1's steps are sized from their FLOP
counts with room for the rank measures; paper 2 trains to a plateau, so it gets the rest)."""
SMOKE_SHARES = {
    "paper1-synthetic": 0.18,
    "paper1-mnist": 0.18,
    "paper1-cifar10": 0.18,
    "paper2-overparam-cifar": 0.46,
}
CIFAR_LR = 0.3
"""The ``gpu`` plan's learning rate for paper 1 on CIFAR-10. The paper preset's lr 1 (sized
for MNIST) holds CIFAR networks at the constant predictor for up to ~200 steps and makes the
loss oscillate; 0.3 trains monotonically, to the best clean test accuracy of the CPU check in
docs/gpu.md, and moves the filters far from their init (lower lrs leave them near it)."""


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
    """The steps of ``gpu`` (one GPU) or ``gpu-smoke`` (the same path, tiny, on the CPU);
    a step whose dataset ``data`` lacks is skipped (its share goes to the next steps)."""
    if preset not in ("gpu", "gpu-smoke"):
        raise UnsupportedError(f"unknown GPU preset {preset!r}; accepted: gpu, gpu-smoke")
    steps = _gpu_plan(data) if preset == "gpu" else _smoke_plan(data)
    check_shares(steps)
    return steps


def _data_overrides(data: DataFolder) -> tuple[dict, dict, dict]:
    """(paper 1's data root, paper 2's data, the CIFAR-10 step of paper 1)."""
    root = {"data_root": data.root}
    p2_data = {"packed_dir": data.packed} if data.packed is not None else root
    cifar = {"dataset": "cifar10", "classes": [0, 1], "patch_size": 16, "lr": CIFAR_LR}
    return root, p2_data, cifar


def _gpu_plan(data: DataFolder) -> list[Step]:
    """``gpu``: both papers' headline experiments at their own scale on one GPU (docs/gpu.md)."""
    root, p2_data, cifar = _data_overrides(data)
    cuda, sh = {"device": "cuda"}, GPU_SHARES
    return [
        Step("paper1-synthetic", "noise-robustness", "paper", cuda, sh["paper1-synthetic"]),
        Step(
            "paper1-mnist",
            "noise-robustness-images",
            "paper",
            {**cuda, **root},
            sh["paper1-mnist"],
            skip=_lacks(data, "mnist"),
        ),
        Step(
            "paper1-cifar10",
            "noise-robustness-images",
            "paper",
            {**cuda, **root, **cifar, "n_train": 2000, "n_test": 2000},
            sh["paper1-cifar10"],
            skip=_lacks(data, "cifar10"),
        ),
        Step(
            "paper2-overparam-cifar",
            "overparam-cifar",
            "gpu",
            {**cuda, **p2_data},
            sh["paper2-overparam-cifar"],
            stops_itself=True,
            skip=_lacks(data, "cifar10"),
        ),
    ]


def _smoke_plan(data: DataFolder) -> list[Step]:
    """``gpu-smoke``: the same path at a tiny size on the CPU (CI)."""
    root, p2_data, cifar = _data_overrides(data)
    tiny, sh = (
        {"sigmas": [0.0, 0.5], "seeds": [0, 1], "steps": 20, "log_every": 10},
        SMOKE_SHARES,
    )
    mnist = "mnist" if "mnist" in data.has else "digits"
    steps = [
        Step(
            "paper1-synthetic",
            "noise-robustness",
            "quick",
            {**tiny, "n_train": 40, "n_test": 40},
            sh["paper1-synthetic"],
        ),
        Step(
            "paper1-mnist",
            "noise-robustness-images",
            "quick",
            {
                **tiny,
                **root,
                "dataset": mnist,
                "n_train": 60,
                "n_test": 60,
                **({"patch_size": 14} if mnist == "mnist" else {}),
            },
            sh["paper1-mnist"],
        ),
    ]
    if "cifar10" in data.has:
        steps.append(
            Step(
                "paper1-cifar10",
                "noise-robustness-images",
                "quick",
                {**tiny, **root, **cifar, "n_train": 20, "n_test": 20},
                sh["paper1-cifar10"],
            )
        )
    steps.append(
        Step(
            "paper2-overparam-cifar",
            "overparam-cifar",
            "smoke",
            _smoke_overparam(data, p2_data),
            sh["paper2-overparam-cifar"],
            stops_itself=True,
        )
    )
    return steps


def _smoke_overparam(data: DataFolder, p2_data: dict) -> dict[str, Any]:
    """``gpu-smoke``'s overparam-cifar overrides: CIFAR-10 at a tiny size, or without it
    none (the smoke preset's digits)."""
    if "cifar10" not in data.has:
        return {}
    return {
        **p2_data,
        "dataset": "cifar10",
        "train_limit": 200,
        "test_limit": 100,
        "train_eval_limit": 100,
        "train.crop_padding": 4,
        "train.hflip": True,
    }


def _lacks(data: DataFolder, dataset: str) -> str | None:
    return None if dataset in data.has else f"no {dataset} in the data ({data.packed or data.root})"


def resolve_data(data: str | os.PathLike | None) -> DataFolder:
    """The data folder of a budgeted plan: ``data``, else the data root (``$RANKBIAS_DATA``)."""
    from rankbias.data.packed import MANIFEST, is_packed

    folder = data_root(data)
    if not is_packed(folder):
        has = {
            n
            for n, p in (
                ("mnist", "MNIST/raw"),
                ("cifar10", "cifar10-jpeg"),
                ("cifar10", "cifar10-jpeg.tar"),
                ("cifar10", "cifar-10-batches-py"),
            )
            if (folder / p).exists()
        }
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
