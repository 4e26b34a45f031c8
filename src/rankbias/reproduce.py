"""Reproduce both papers: every registered experiment at a preset, into one
directory, with the combined report (``report.md`` and a self-contained
``report/index.html``, written by :mod:`rankbias.report`).

What a reproduction preset runs is one entry of :data:`REPRODUCE_PRESETS`: per
experiment (or ``"*"`` for every experiment not named) the experiment preset and
the overrides to run it with. Adding a preset is adding an entry::

    REPRODUCE_PRESETS["gpu"] = {"*": Plan("quick"),
                                "overparam-classification": Plan("paper", {"epochs": 30})}

This module imports only the standard library at import time (the package
imports it eagerly, so that ``rankbias.reproduce`` stays the function).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.framework.config import ConfigError, check_device_available, did_you_mean
from rankbias.framework.runs import RunDir, config_hash

__all__ = ["ALL", "DEPTH_DEMO", "REPRODUCE_PRESETS", "Plan", "ReproduceResult", "plan_for", "reproduce"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one experiment runs in a reproduction."""

    preset: str
    """The experiment's preset."""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Config overrides on top of it (``--set NAME:key=value`` comes on top of these)."""


ALL = "*"
"""Key of a preset's plan for every experiment it does not name."""

DEPTH_DEMO = {"steps": 2000, "lr_factors": [1.0]}
"""The depth experiments in ``make demo``: at most 2,000 steps at one rate, so the demo takes
minutes (trained to the plateau with a rate grid, their quick presets take 10-60 min on two
cores). The plateau rule still applies and every network whose cap bound is reported."""

REPRODUCE_PRESETS: dict[str, dict[str, Plan]] = {
    "quick": {ALL: Plan("quick"),
              **{name: Plan("quick", DEPTH_DEMO)
                 for name in ("depth-rank-trained", "depth-rank-optimizers", "depth-rank-init-sensitivity")}},
    "paper": {ALL: Plan("paper")},
}
"""Reproduction preset -> {experiment name or ALL: Plan}. An experiment with no plan
(not named, and no ALL entry) or without the plan's preset is reported "not run"."""

def plan_for(preset: str, name: str, presets: Mapping[str, Mapping[str, Plan]] | None = None) -> Plan | None:
    """The plan of experiment ``name`` under reproduction preset ``preset`` (None: not run).

    A name that is not in the table means each experiment's own preset of that
    name (so an experiment's extra presets can be reproduced without an entry).
    """
    table = REPRODUCE_PRESETS if presets is None else presets
    plans = table.get(preset, {ALL: Plan(preset)})
    return plans.get(name, plans.get(ALL))


def _verdict_word(summary: Mapping[str, Any]) -> str:
    from rankbias.verdicts import status_of  # numpy: not at import time (module docstring)

    return status_of(summary.get("verdict"))


@dataclasses.dataclass
class ReproduceResult:
    """What :func:`reproduce` produced."""

    out_dir: Path
    entries: list[dict[str, Any]]
    """One per registered experiment: name, claim, status, verdict word, summary, config, run_dir, ..."""
    environment: dict[str, Any]

    @property
    def report_html(self) -> Path:
        return self.out_dir / "report" / "index.html"

    @property
    def report_md(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def failed(self) -> list[str]:
        return [e["name"] for e in self.entries if e["status"] == "failed"]


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "torchvision", "numpy", "pandas", "matplotlib", "scikit-learn", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def reproduce(
    preset: str = "quick",
    out_dir: str | os.PathLike = "runs/reproduce",
    *,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    budget_minutes: float | None = None,
) -> ReproduceResult:
    """Run every registered experiment as reproduction preset ``preset`` says and write
    the combined report.

    ``preset`` is a key of :data:`REPRODUCE_PRESETS` (or the name of experiment
    presets, run as they are). Each experiment runs into
    ``DIR/runs/NAME/EXPERIMENT_PRESET-HASH`` (a completed one is not recomputed,
    so a rerun resumes); one that fails is recorded with its traceback and the
    others go on. ``only`` restricts the run to some experiments (the others
    appear in the report as "not run"); ``overrides`` maps an experiment name to
    config overrides. Every config is validated before any compute. Writes
    ``DIR/report.md``, ``DIR/report/index.html`` (figures embedded) and
    ``DIR/reproduce.json``.

    Presets ``gpu`` / ``gpu-smoke`` run the budgeted plan of :mod:`rankbias.gpu_reproduce`
    (both papers' headline experiments, ``budget_minutes`` in all; docs/gpu.md).
    """
    from rankbias.experiments.registry import build_config, experiments
    from rankbias.runner import environment, run_experiment

    if preset in ("gpu", "gpu-smoke"):
        if only or overrides:
            raise ConfigError(f"--only / --set are not accepted with preset {preset!r} (a fixed plan)")
        from rankbias.gpu_reproduce import reproduce_gpu

        rec = reproduce_gpu(preset, out_dir, budget_minutes=budget_minutes)
        return ReproduceResult(Path(out_dir), rec["entries"], rec["environment"])
    if budget_minutes is not None:
        raise ConfigError(f"budget_minutes is for the presets gpu and gpu-smoke; got preset {preset!r}")

    exps = experiments()
    known = set(REPRODUCE_PRESETS) | {p for e in exps.values() for p in e.presets}
    if preset not in known:
        raise ConfigError(f"preset: unknown {preset!r}{did_you_mean(preset, sorted(known))}; accepted: "
                          f"{', '.join(sorted(known))}")
    only = list(only) if only else None
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    for label, names in (("--only", only or []), ("overrides", list(overrides))):
        bad = [n for n in names if n not in exps]
        if bad:
            hints = "".join(did_you_mean(n, exps) for n in bad)
            raise ConfigError(f"{label}: unknown experiment(s) {bad}{hints}; accepted: {', '.join(exps)}")
    out = Path(out_dir)
    entries: list[dict[str, Any]] = []
    # validate every config before computing anything
    for name, exp in exps.items():
        plan = plan_for(preset, name)
        e: dict[str, Any] = {"name": name, "description": exp.description, "claim": exp.claim,
                             "preset": plan.preset if plan else None, "overrides": None,
                             "status": "pending", "verdict": "not run", "summary": None, "config": None,
                             "run_dir": None, "error": None, "wall_time_s": None, "cached": False}
        if only is not None and name not in only:
            e.update(status="not run", reason="not selected (--only)")
        elif plan is None:
            e.update(status="not run", reason=f"not part of the {preset!r} reproduction")
        elif plan.preset not in exp.presets:
            e.update(status="not run", reason=f"no {plan.preset!r} preset (has: {', '.join(exp.presets)})")
        else:
            e["overrides"] = {**plan.overrides, **overrides.get(name, {})}
            try:
                cfg = build_config(name, e["overrides"], plan.preset)
                if isinstance(cfg.to_dict().get("device"), str):
                    check_device_available(cfg.device)
                chash = config_hash({"experiment": name, "config": cfg.to_dict()})
                e.update(config=cfg.to_dict(), run_dir=out / "runs" / name / f"{plan.preset}-{chash}")
            except ConfigError as err:
                e.update(status="failed", verdict="failed", error=f"invalid config: {err}")
        entries.append(e)

    # a read-only or full --out fails here, before any compute
    RunDir(out).write_json("reproduce.json", {"preset": preset, "status": "running"})

    from tqdm.auto import tqdm

    todo = [e for e in entries if e["status"] == "pending"]
    t_total = time.perf_counter()
    try:
        for e in tqdm(todo, desc=f"reproduce ({preset})", unit="experiment",
                      disable=None if progress is None else not progress):
            run = RunDir(e["run_dir"])
            e["cached"] = run.completed_summary({"experiment": e["name"], "config": e["config"]}) is not None
            t0 = time.perf_counter()
            try:
                e["summary"] = run_experiment(e["name"], e["overrides"], out_dir=run.path, preset=e["preset"])
                e.update(status="done", verdict=_verdict_word(e["summary"]))
                if (run.path / "traceback.txt").exists():
                    (run.path / "traceback.txt").unlink()
            except Exception as err:  # recorded; the other experiments go on
                e.update(status="failed", verdict="failed", error=f"{type(err).__name__}: {err}")
                run.write_text("traceback.txt", traceback.format_exc())
            e["run_wall_time_s"] = time.perf_counter() - t0
            env_file = run.path / "environment.json"
            if e["status"] == "done" and env_file.exists():
                e["wall_time_s"] = json.loads(env_file.read_text()).get("wall_time_s")
            else:
                e["wall_time_s"] = e["run_wall_time_s"]
    finally:
        for e in entries:
            if e["status"] == "pending":
                e.update(status="not run", reason="interrupted")
        env = {**environment(), "packages": _package_versions(), "preset": preset,
               "total_wall_time_s": round(time.perf_counter() - t_total, 3),
               "device": _device_description()}
        from rankbias.report import write_reproduce_report

        # the record first: a report that fails to render must not lose it
        RunDir(out).write_json("reproduce.json", {"preset": preset, "environment": env, "experiments": [
            {k: v for k, v in e.items() if k not in ("summary",)} for e in entries]})
        write_reproduce_report(out, entries, env)
    return ReproduceResult(out, entries, env)


def _device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (experiments run where their `device` field says)"
    return f"cpu ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"
