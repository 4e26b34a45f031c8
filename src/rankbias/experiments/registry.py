"""The experiment registry: names -> (config class, presets, run function, claim).

An experiment module defines a :class:`~rankbias.framework.config.Config` subclass, a
``run(config, run_dir) -> summary`` function and registers them with
:func:`register` together with its presets (``quick``: minutes on 2 CPU cores;
``smoke``: seconds on one thread, for tests; ``paper``: the papers' scale). Every
module of this package is imported on the first lookup, so adding an experiment needs
no edit elsewhere. Running one is
:func:`rankbias.runner.run_experiment`.

An experiment that takes part in the budgeted GPU plans (``rankbias reproduce --preset
gpu`` / ``gpu-smoke``, docs/gpu.md) declares its steps there too: ``gpu=`` of
:func:`register`, a tuple of :class:`GpuStep`; :func:`rankbias.plans.gpu_steps` assembles
the plans from these declarations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.errors import InvalidParameterError
from rankbias.framework.config import Config, ConfigError, did_you_mean
from rankbias.framework.gpu_declarations import (
    GPU_PLANS,
    PLAN_DATASETS,
    DataFolder,
    GpuRun,
    GpuStep,
)
from rankbias.framework.runs import RunDir

__all__ = [
    "Experiment",
    "build_config",
    "check_contract",
    "check_summary",
    "get_experiment",
    "list_experiments",
    "register",
    "registered",
    "unregister",
]


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    """Registered name, used on the CLI (kebab-case)."""
    description: str
    """One line for ``rankbias list``."""
    config_cls: type[Config]
    """The config dataclass."""
    run: Callable[[Config, RunDir], dict]
    """Runs the experiment into a run directory and returns the summary."""
    presets: Mapping[str, Mapping[str, Any]]
    """Named overrides of the config defaults; ``quick`` and ``paper`` at least."""
    claim: str = ""
    """The paper claim the experiment tests (for reports)."""
    gpu: tuple[GpuStep, ...] = ()
    """Its steps in the budgeted GPU plans (none: it takes no part in them)."""


_REGISTRY: dict[str, Experiment] = {}
_LOADED = False


def register(
    name: str,
    *,
    description: str,
    config_cls: type[Config],
    presets: Mapping[str, Mapping[str, Any]],
    claim: str = "",
    gpu: Sequence[GpuStep] = (),
) -> Callable[[Callable], Callable]:
    """Decorator for an experiment's ``run(config, run_dir)`` function.

    ``gpu``: its steps in the budgeted GPU plans (:class:`GpuStep`), if it takes part.

    Raises
    ------
    InvalidParameterError
        ``name`` is registered already (two experiments under one name would make
        ``rankbias run NAME`` run whichever module was imported last), or it breaks
        the contract (:func:`check_contract`), a preset or a GPU step included.
    """

    def deco(fn: Callable) -> Callable:
        steps = tuple(gpu) if isinstance(gpu, list | tuple) else gpu  # else refused by the contract
        _add(Experiment(name, description, config_cls, fn, dict(presets), claim, steps))
        return fn

    return deco


def _add(exp: Experiment, replace: bool = False) -> Experiment | None:
    """Register ``exp``; return what it replaced (``replace=True``), else refuse a taken name."""
    check_contract(exp)
    old = _REGISTRY.get(exp.name)
    if old is not None and not replace:
        where = f"{getattr(old.run, '__module__', '?')}.{getattr(old.run, '__qualname__', '?')}"
        raise InvalidParameterError(
            f"experiment name {exp.name!r} is registered already (by {where}); "
            "accepted: a name no other experiment has (see `rankbias list`)")
    taken = {st.label: e.name for e in _REGISTRY.values() if e.name != exp.name for st in e.gpu}
    clash = [f"{st.label!r} (of {taken[st.label]!r})" for st in exp.gpu if st.label in taken]
    if clash:
        raise InvalidParameterError(
            f"experiment {exp.name!r}: GPU step label(s) {', '.join(clash)} taken already; "
            "accepted: a label no other step of the GPU plans has (a copy of an experiment "
            "under a new name: dataclasses.replace(exp, name=..., gpu=()))")
    _REGISTRY[exp.name] = exp
    return old


# The rules an experiment follows, each checked when it registers (not found later as a
# missing report section): the names docs/contributing.md walks through.
REQUIRED_PRESETS = ("quick",)
# The experiments of this package also have "smoke" (seconds on one thread: the quick path at
# tiny sizes, run end to end by tests/test_smoke_presets.py) and "paper" (the papers' scale);
# an experiment registered from elsewhere (a test's toy, a notebook's) needs only "quick".
BUILTIN_PRESETS = (*REQUIRED_PRESETS, "smoke", "paper")
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def check_contract(exp: Experiment) -> None:
    """Refuse an experiment that breaks the registry's contract.

    An experiment has a kebab-case name; a :class:`Config` dataclass config whose
    every field has a docstring (``--show-config`` and the reports print it) and
    whose framework fields (:data:`~rankbias.framework.config.RESERVED_FIELDS`:
    ``device``, ``num_threads``, ``seed``/``seeds``) have the type the runner and
    the sweep read; at least the preset ``quick`` (minutes on a CPU; the built-in
    experiments, those whose run function is in this package, all of
    :data:`BUILTIN_PRESETS`: also ``smoke``, seconds on one thread, and ``paper``), each
    preset a valid config; a
    ``run(config, run_dir)`` function of two positional parameters; and GPU steps
    (``gpu``, if any: :class:`~rankbias.framework.gpu_declarations.GpuStep`) that keep
    :meth:`~rankbias.framework.gpu_declarations.GpuRun.problems` and whose overrides make
    valid configs.

    Raises
    ------
    InvalidParameterError
        Naming each rule broken and what is accepted.
    """
    where = f"experiment {exp.name!r}"
    problems = []
    if not _NAME.fullmatch(exp.name):
        problems.append(f"name {exp.name!r} is not kebab-case (accepted: e.g. 'depth-rank-init')")
    cls = exp.config_cls
    if not (isinstance(cls, type) and issubclass(cls, Config) and dataclasses.is_dataclass(cls)):
        raise InvalidParameterError(f"{where}: config_cls {cls!r} is not a Config dataclass; "
                                    "accepted: a @dataclass(frozen=True) subclass of rankbias.framework.config.Config")
    problems += cls.contract_problems()
    builtin = getattr(exp.run, "__module__", "").startswith(__name__.rpartition(".")[0] + ".")
    missing = [p for p in (BUILTIN_PRESETS if builtin else REQUIRED_PRESETS) if p not in exp.presets]
    if missing:
        problems.append(f"presets {sorted(exp.presets)} lack {missing} (accepted: at least "
                        "'quick', minutes on a CPU; an experiment of rankbias.experiments also "
                        "'smoke', seconds on one thread, and 'paper', the papers' scale)")
    if not _takes_config_and_run_dir(exp.run):
        problems.append("its run function must take (config, run_dir) and return the summary dict")
    problems += _gpu_problems(exp)
    if problems:
        raise InvalidParameterError(f"{where} breaks the registry's contract: " + "; ".join(problems))
    for _p, values in exp.presets.items():  # fail at import on a broken preset
        cls.from_dict(dict(values))
    _check_gpu_configs(exp)


def _gpu_problems(exp: Experiment) -> list[str]:
    """What the experiment's GPU steps break of the contract (empty: nothing): each is a
    :class:`GpuStep` with a kebab-case label unique among its steps, a :class:`GpuRun` in each
    plan that keeps :meth:`GpuRun.problems`, a config with a ``device`` field (the ``gpu`` plan
    sets "cuda") and, for a step that stops itself, a ``budget_minutes`` field."""
    if not isinstance(exp.gpu, tuple):
        return [f"gpu={exp.gpu!r} (accepted: a tuple of GpuStep)"]
    fields = {f.name for f in dataclasses.fields(exp.config_cls)}
    problems = [] if not exp.gpu or "device" in fields else [
        "its GPU steps need a 'device' config field (the gpu plan runs them with device='cuda')"]
    labels = [getattr(st, "label", None) for st in exp.gpu]
    for st in exp.gpu:
        if not isinstance(st, GpuStep):
            problems.append(f"GPU step {st!r} is no GpuStep (accepted: GpuStep(label, gpu=GpuRun(...), "
                            "smoke=GpuRun(...)))")
            continue
        where = f"GPU step {st.label!r}"
        if not isinstance(st.label, str) or not _NAME.fullmatch(st.label) or labels.count(st.label) > 1:
            problems.append(f"{where}: label not kebab-case or not unique among its steps "
                            "(accepted: e.g. 'paper1-mnist', once)")
        if not isinstance(st.stops_itself, bool):  # else gpu_steps' sort fails on it later
            problems.append(f"{where}: stops_itself {st.stops_itself!r} (accepted: True, False)")
        elif st.stops_itself and "budget_minutes" not in fields:
            problems.append(f"{where}: stops_itself=True needs a 'budget_minutes' config field (the "
                            "deadline it stops at)")
        for plan in GPU_PLANS:
            run = st.run_in(plan)
            problems += [f"{where} in plan {plan!r}: {p}" for p in (
                run.problems(exp.presets) if isinstance(run, GpuRun) else
                [f"{run!r} is no GpuRun (accepted: GpuRun(preset, share, overrides, needs, if_missing))"])]
    return problems


def _check_gpu_configs(exp: Experiment) -> None:
    """Fail at registration on GPU overrides the config refuses, with all the data or none."""
    folders = (DataFolder(None, "/data", frozenset()),
               DataFolder("/packed", "/packed", frozenset(PLAN_DATASETS)))
    cls = exp.config_cls
    for st in exp.gpu:
        for plan in GPU_PLANS:
            for data in folders:
                where = f"experiment {exp.name!r}, GPU step {st.label!r} in {plan!r}"
                try:
                    overrides = st.overrides_in(plan, data)
                except InvalidParameterError as e:  # it names the step and plan, not the experiment
                    raise InvalidParameterError(f"experiment {exp.name!r}: {e}") from e
                cls.check_keys(overrides, label=where)
                try:
                    cls.from_dict(cls.merged(exp.presets[st.run_in(plan).preset], overrides))
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from e


def _takes_config_and_run_dir(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(object(), object())
    except TypeError:
        return False
    return True


def check_summary(exp: Experiment, summary: Any) -> None:
    """Refuse a run's summary that the reports could not read.

    The summary is a dict; an experiment that tests a claim (``claim`` set) puts
    its decision under ``verdict``: a dict whose ``status`` is one of
    :data:`rankbias.verdicts.STATUSES` (or, for a toy, a bool ``holds``), read by
    :func:`rankbias.verdicts.status_of`. The report's tables are its
    ``per_<key>`` lists of dicts.

    Raises
    ------
    InvalidParameterError
        Naming the key that is missing or malformed.
    """
    from rankbias.verdicts import STATUSES, status_of

    where = f"experiment {exp.name!r}: its run returned"
    if not isinstance(summary, Mapping):
        raise InvalidParameterError(f"{where} {type(summary).__name__}; accepted: the summary dict")
    if not exp.claim:
        return
    v = summary.get("verdict")
    if not isinstance(v, Mapping) or status_of(v) == "no verdict":
        raise InvalidParameterError(
            f"{where} no usable 'verdict' (got {v!r}); accepted: an experiment with a claim returns "
            f"summary['verdict'] = {{'status': one of {list(STATUSES)}, 'reason': str, ...}} "
            "(rankbias.verdicts builds it)")


def unregister(name: str) -> Experiment:
    """Remove the experiment ``name`` from the registry and return it.

    Parameters
    ----------
    name : str
        A registered experiment's name.

    Returns
    -------
    Experiment
        What was registered under ``name``.

    Raises
    ------
    InvalidParameterError
        No experiment has that name.
    """
    if name not in _REGISTRY:
        raise InvalidParameterError(
            f"unregister: no experiment {name!r}{did_you_mean(name, _REGISTRY)}; "
            f"accepted: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY.pop(name)


@contextlib.contextmanager
def registered(experiment: Experiment, *, replace: bool = False) -> Iterator[Experiment]:
    """Register ``experiment`` for the duration of a ``with`` block (tests, notebooks).

    Parameters
    ----------
    experiment : Experiment
        What to register, under ``experiment.name``.
    replace : bool
        Stand in for an experiment of that name (restored on exit); without it a
        taken name is refused as by :func:`register`.

    Yields
    ------
    Experiment
        ``experiment``.

    Raises
    ------
    InvalidParameterError
        The name is taken and ``replace`` is false, a preset is not a valid config, or a
        GPU step's label is another experiment's: a copy of an experiment that has GPU steps
        (``get_experiment("noise-robustness")``) under a new name drops them,
        ``dataclasses.replace(exp, name="my-copy", gpu=())``, as its steps' labels are taken.

    Examples
    --------
    >>> exp = get_experiment("depth-rank-init")
    >>> with registered(dataclasses.replace(exp, name="my-copy")):
    ...     "my-copy" in list_experiments()
    True
    >>> "my-copy" in list_experiments()
    False
    """
    _load_all()  # so that a clash with a built-in experiment is seen now, not at its import
    old = _add(experiment, replace)
    try:
        yield experiment
    finally:
        if old is not None:
            _REGISTRY[old.name] = old
        else:
            _REGISTRY.pop(experiment.name, None)


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    # this module's own package, found without importing it (its __init__ imports us)
    package = __name__.rpartition(".")[0]
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
             if m.name != "registry" and not m.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{package}.{name}")
    _LOADED = True
    _check_modules(package, names, _REGISTRY.values())


def _check_modules(package: str, names: list[str], registered_: Iterable[Experiment]) -> None:
    """Every public module of the package registers an experiment or is a part of one
    (``<its module>_data.py``, ``..._summary.py``); helpers shared by several start with
    ``_`` and are never imported here. A module that silently registers nothing would be
    an experiment missing from `rankbias list` and from every report."""
    owners = {e.run.__module__.rpartition(".")[2] for e in registered_
              if getattr(e.run, "__module__", "").startswith(package + ".")}
    stray = [n for n in names if n not in owners and not any(n.startswith(o + "_") for o in owners)]
    if stray:
        raise InvalidParameterError(
            f"{package}: {', '.join(m + '.py' for m in stray)} register(s) no experiment; accepted: "
            "a module that registers one with @register, a part of one named <its module>_<part>.py, "
            "or a shared helper whose name starts with '_'")


def list_experiments() -> dict[str, Experiment]:
    """Every registered experiment, by name.

    Returns
    -------
    dict of str to Experiment
        Sorted by name.

    Raises
    ------
    InvalidParameterError
        An experiment module breaks the registry's contract (:func:`check_contract`).

    Examples
    --------
    >>> from rankbias import list_experiments
    >>> "depth-rank-init" in list_experiments()
    True
    """
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_experiment(name: str) -> Experiment:
    """The registered experiment ``name`` (ConfigError, with a "did you mean", if there is none)."""
    exps = list_experiments()
    if name not in exps:
        raise ConfigError(
            f"unknown experiment {name!r}{did_you_mean(name, exps)}; accepted: {', '.join(exps)}"
        )
    return exps[name]


def build_config(name: str, overrides: Mapping[str, Any] | None = None, preset: str = "quick") -> Config:
    """The validated config of ``name`` at ``preset`` with ``overrides`` applied."""
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ConfigError(
            f"{name}: unknown preset {preset!r}{did_you_mean(preset, exp.presets)}; "
            f"accepted: {', '.join(exp.presets)}"
        )
    overrides = dict(overrides or {})
    exp.config_cls.check_keys(overrides, label=name)
    # merged, not {**preset, **overrides}: an override of one nested key keeps the preset's others
    return exp.config_cls.from_dict(exp.config_cls.merged(exp.presets[preset], overrides))
