"""The plan runner: :func:`reproduce` runs a reproduction preset's steps
(:mod:`rankbias.plans`) into one directory and writes the combined report
(``report.md`` and a self-contained ``report/index.html``, :mod:`rankbias.run_reports`).

Every step becomes one :class:`Entry`, the record of what happened to it; every
config is built and checked before any compute. Without a budget each step runs
in this process. In a budgeted plan each step may use its share of the budget
plus whatever the steps before it left unused; a step that cannot stop half-way
runs as a child process killed at that limit (reported "not run (budget)"), one
that stops itself (:attr:`Step.stops_itself`) is given its time as
``budget_minutes``. ``reproduce.json`` and the report are rewritten after every
step, so an interrupted run still leaves both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.errors import UnsupportedError
from rankbias.framework.config import ConfigError, check_device_available, did_you_mean
from rankbias.framework.runs import RunDir, config_hash
from rankbias.plans import REPRODUCE_PRESETS, Preset, Step, preset_named, resolve_data

__all__ = ["REPORT_RESERVE_S", "Entry", "ReproduceResult", "cut_note", "reproduce"]

REPORT_RESERVE_S = 15.0
"""Seconds a budgeted plan keeps back at the end for the last measurements and the report."""


@dataclasses.dataclass
class Entry:
    """What happened to one step of a reproduction (one row of ``reproduce.json``)."""

    name: str
    """The step's label."""
    description: str
    claim: str
    preset: str | None
    """The experiment preset it ran at."""
    status: str = "pending"
    """"done", "failed" or "not run"."""
    verdict: str = "not run"
    """The outcome (:func:`rankbias.verdicts.status_of`), or "failed" / "not run"."""
    overrides: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    run_dir: Path | None = None
    error: str | None = None
    reason: str | None = None
    """Why it was not run, or which parts the budget cut."""
    wall_time_s: float | None = None
    """The experiment's compute time (the original one when cached)."""
    run_wall_time_s: float | None = None
    """The time this invocation spent on it."""
    cached: bool = False
    share: float | None = None
    """Its share of the budget (None: no budget)."""
    budget_s: float | None = None
    """The seconds it was given."""

    def record(self, summary: bool = True) -> dict[str, Any]:
        """The entry as a dict (what the report reads; ``reproduce.json`` without the summary)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not summary:
            del out["summary"]
        return out


@dataclasses.dataclass
class ReproduceResult:
    """What :func:`reproduce` produced."""

    out_dir: Path
    entries: list[Entry]
    """One per step: every registered experiment in a per-experiment preset."""
    environment: dict[str, Any]

    @property
    def report_html(self) -> Path:
        return self.out_dir / "report" / "index.html"

    @property
    def report_md(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def failed(self) -> list[str]:
        return [e.name for e in self.entries if e.status == "failed"]


def reproduce(
    preset: str = "quick",
    out_dir: str | os.PathLike = "runs/reproduce",
    *,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    budget_minutes: float | None = None,
    data: str | os.PathLike | None = None,
) -> ReproduceResult:
    """Run reproduction preset ``preset`` and write the combined report.

    Parameters
    ----------
    preset
        A key of :data:`rankbias.plans.REPRODUCE_PRESETS` (``quick``, ``paper``, ``gpu``,
        ``gpu-smoke``), or the name of experiment presets, run as they are.
    out_dir
        Each step runs into ``DIR/runs/LABEL/PRESET-HASH`` (a completed one is not
        recomputed, so a rerun resumes). Writes ``DIR/report.md``,
        ``DIR/report/index.html`` (figures embedded) and ``DIR/reproduce.json``.
    only, overrides
        Per-experiment presets only: run just these experiments (the others are
        reported "not run"); config overrides per experiment name.
    progress
        A progress bar (None: when the output is a terminal).
    budget_minutes, data
        Budgeted presets only (``gpu``, ``gpu-smoke``; docs/gpu.md): the whole run's time
        (default the preset's: 9 and 2), and the folder of ``rankbias prepare-data`` or a
        data root (default: the data root).

    Returns
    -------
    ReproduceResult
        The directory, one :class:`Entry` per step, and the environment.

    Raises
    ------
    ConfigError
        An unknown preset or experiment name, or an option the preset does not take.
    UnsupportedError
        A budget <= 0; a plan whose shares are invalid.

    Examples
    --------
    >>> import tempfile
    >>> import rankbias
    >>> tiny = {"network": "linear", "draws": 20, "n": 8, "depths": [1, 2, 4]}
    >>> res = rankbias.reproduce("quick", tempfile.mkdtemp(), only=["depth-rank-init"],
    ...                          overrides={"depth-rank-init": tiny}, progress=False)
    >>> {e.name: e.verdict for e in res.entries}["depth-rank-init"]  # the others: "not run"
    'holds'
    >>> sorted(p.name for p in res.out_dir.iterdir())
    ['report', 'report.md', 'reproduce.json', 'runs']
    """
    plan, budget = _preset(preset, only, overrides, budget_minutes, data)
    env: dict[str, Any] = {"preset": preset}
    if plan.build is not None:
        folder = resolve_data(data)
        steps = plan.build(folder)
        env.update(budget_s=budget, data=folder.packed or folder.root)
    else:
        steps = _selected(preset, plan, only, overrides)
    out = Path(out_dir)
    entries = [_entry(st, out) for st in steps]
    # a read-only or full --out fails here, before any compute
    RunDir(out).write_json("reproduce.json", {"preset": preset, "status": "running"})
    _run_steps(steps, entries, out, env, budget, progress)
    return ReproduceResult(out, entries, env)


def _preset(name: str, only, overrides, budget_minutes, data) -> tuple[Preset, float | None]:
    """The preset ``name`` and its budget in seconds (None: none), the options it takes checked."""
    from rankbias.experiments.registry import list_experiments

    exps = list_experiments()
    known = set(REPRODUCE_PRESETS) | {p for e in exps.values() for p in e.presets}
    if name not in known:
        raise ConfigError(
            f"preset: unknown {name!r}{did_you_mean(name, sorted(known))}; accepted: "
            f"{', '.join(sorted(known))}"
        )
    plan = preset_named(name)
    if plan.budget_minutes is not None:
        if only or overrides:
            raise ConfigError(
                f"--only / --set are not accepted with preset {name!r} (a fixed plan)"
            )
        budget = 60.0 * (budget_minutes if budget_minutes is not None else plan.budget_minutes)
        if budget <= 0:
            raise UnsupportedError(f"budget_minutes must be > 0; got {budget_minutes}")
        if plan.device is not None:
            check_device_available(plan.device)  # the plan is sized for it: refuse before any work
        return plan, budget
    if budget_minutes is not None or data is not None:
        budgeted = ", ".join(
            k for k, p in REPRODUCE_PRESETS.items() if p.budget_minutes is not None
        )
        raise ConfigError(
            f"budget_minutes and data are for the budgeted presets ({budgeted}); "
            f"got preset {name!r}"
        )
    for label, names in (("--only", list(only or [])), ("overrides", list(overrides or {}))):
        bad = [n for n in names if n not in exps]
        if bad:
            hints = "".join(did_you_mean(n, exps) for n in bad)
            raise ConfigError(
                f"{label}: unknown experiment(s) {bad}{hints}; accepted: {', '.join(exps)}"
            )
    return plan, None


def _selected(name: str, plan: Preset, only, overrides) -> list[Step]:
    """A per-experiment preset's steps, with ``only`` and the overrides applied."""
    from rankbias.plans import experiment_steps

    out = []
    for st in experiment_steps(name, plan.plans or {}):
        if only and st.label not in only:
            st = dataclasses.replace(st, skip="not selected (--only)")
        elif st.skip is None and st.label in (overrides or {}):
            st = dataclasses.replace(st, overrides={**st.overrides, **overrides[st.label]})
        out.append(st)
    return out


def _entry(st: Step, out: Path) -> Entry:
    """The step's entry, its config built and checked (an invalid one: "failed")."""
    from rankbias.experiments.registry import build_config, get_experiment

    exp = get_experiment(st.experiment)
    description = (
        exp.description
        if st.label == st.experiment
        else f"{st.experiment} --preset {st.preset}: {exp.description}"
    )
    e = Entry(st.label, description, exp.claim, st.preset, share=st.share)
    if st.skip is not None:
        e.status, e.reason = "not run", st.skip
        return e
    e.overrides = dict(st.overrides)
    try:
        cfg = build_config(st.experiment, e.overrides, st.preset)
        if isinstance(cfg.to_dict().get("device"), str):
            check_device_available(cfg.device)
    except ConfigError as err:
        e.status, e.verdict, e.error = "failed", "failed", f"invalid config: {err}"
        return e
    e.config = cfg.to_dict()
    e.run_dir = _run_dir(out, st, e.config)
    return e


def _run_dir(out: Path, st: Step, config: Mapping[str, Any]) -> Path:
    return (
        out
        / "runs"
        / st.label
        / f"{st.preset}-{config_hash({'experiment': st.experiment, 'config': config})}"
    )


def _run_steps(
    steps: list[Step],
    entries: list[Entry],
    out: Path,
    env: dict[str, Any],
    budget: float | None,
    progress: bool | None,
) -> None:
    """Run every pending step in order, the record and report rewritten after each."""
    from tqdm.auto import tqdm

    from rankbias.runner import environment

    t_start, used_share = time.perf_counter(), 0.0
    base = {
        **environment(),
        "packages": _package_versions(),
        **env,
        "device": _device_description(),
    }
    env.clear()
    env.update(base)
    try:
        bar = tqdm(
            total=sum(e.status == "pending" for e in entries),
            desc=f"reproduce ({env['preset']})",
            unit="step",
            disable=None if progress is None else not progress,
        )
        with bar:
            for st, e in zip(steps, entries):
                # a skipped step's share, like unused time, goes to the next steps
                used_share += st.share or 0.0
                if e.status == "pending":
                    limit = (
                        None
                        if budget is None
                        else used_share * budget - (time.perf_counter() - t_start)
                    )
                    _execute(st, e, out, limit)
                    bar.update()
                _write(out, entries, env, t_start)
    finally:
        for e in entries:
            if e.status == "pending":
                e.status, e.reason = "not run", "interrupted"
        _write(out, entries, env, t_start)


def _write(out: Path, entries: list[Entry], env: dict[str, Any], t_start: float) -> None:
    from rankbias.run_reports import write_reproduce_report

    env["total_wall_time_s"] = round(time.perf_counter() - t_start, 3)
    # the record first: a report that fails to render must not lose it
    RunDir(out).write_json(
        "reproduce.json",
        {
            "preset": env["preset"],
            "environment": env,
            "experiments": [e.record(summary=False) for e in entries],
        },
    )
    write_reproduce_report(out, [e.record() for e in entries], env)


def _execute(st: Step, e: Entry, out: Path, limit: float | None) -> None:
    """Run one step: in this process without a budget or when it stops itself, else as a
    child process killed at ``limit`` seconds."""
    from rankbias.verdicts import status_of

    t0 = time.perf_counter()
    if limit is None:
        _in_process(st, e)
    elif st.stops_itself:
        left = limit - REPORT_RESERVE_S
        e.budget_s = round(left, 1)
        if left < 10:
            e.status, e.reason = "not run", f"budget: {left:.0f} s left"
        else:
            _in_process(
                dataclasses.replace(
                    st, overrides={**st.overrides, "budget_minutes": round(left / 60, 2)}
                ),
                e,
                out,
            )
    else:
        e.budget_s = round(limit, 1)
        if limit < 5:
            e.status, e.reason = "not run", f"budget: {limit:.0f} s left for this step"
        else:
            _child(st, e, limit)
    if e.status == "done":
        e.verdict = status_of((e.summary or {}).get("verdict"))
        if st.stops_itself and limit is not None:
            e.reason = cut_note(e.summary)
    elif e.status == "failed":
        e.verdict = "failed"
    e.run_wall_time_s = round(time.perf_counter() - t0, 3)
    env_file = None if e.run_dir is None else Path(e.run_dir) / "environment.json"
    if e.status == "done" and env_file is not None and env_file.exists():
        e.wall_time_s = json.loads(env_file.read_text()).get("wall_time_s")
    else:
        e.wall_time_s = e.run_wall_time_s


def _in_process(st: Step, e: Entry, out: Path | None = None) -> None:
    """``run_experiment`` here; a failure is recorded with its traceback (the others go on).
    ``out``: the config changed since the entry was made (a budget): its run directory anew."""
    from rankbias.experiments.registry import build_config
    from rankbias.runner import run_experiment

    if out is not None:
        e.overrides = dict(st.overrides)
        e.config = build_config(st.experiment, e.overrides, st.preset).to_dict()
        e.run_dir = _run_dir(out, st, e.config)
    run = RunDir(e.run_dir)
    e.cached = run.completed_summary({"experiment": st.experiment, "config": e.config}) is not None
    try:
        e.summary = run_experiment(st.experiment, e.overrides, out_dir=run.path, preset=st.preset)
        e.status = "done"
        if (run.path / "traceback.txt").exists():
            (run.path / "traceback.txt").unlink()
    except Exception as err:  # recorded; the other steps go on
        e.status, e.error = "failed", f"{type(err).__name__}: {err}"
        run.write_text("traceback.txt", traceback.format_exc())


def _child(st: Step, e: Entry, timeout: float) -> None:
    """``python -m rankbias run`` with a hard time limit."""
    import rankbias.experiments.registry as registry

    out = Path(e.run_dir)
    e.cached = (
        RunDir(out).completed_summary({"experiment": st.experiment, "config": e.config}) is not None
    )
    pkg_parent = str(Path(registry.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "rankbias",
        "run",
        st.experiment,
        "--preset",
        str(st.preset),
        "--out",
        str(out),
    ]
    for k, v in st.overrides.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout.txt", "w") as log:
        # its own process group, so that a step over its budget is stopped with every
        # process it started (data-loader workers would otherwise keep the GPU)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            e.status, e.reason = "not run", f"budget: stopped after its share of {timeout:.0f} s"
            return
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        tail = (out / "stdout.txt").read_text().strip().splitlines()[-3:]
        e.status, e.error = "failed", f"exit {rc}: " + " / ".join(tail)
    else:
        e.status, e.summary = "done", json.loads((out / "summary.json").read_text())


def cut_note(summary: Mapping[str, Any] | None) -> str | None:
    """The parts of a step that the budget cut short or left out, from its summary's
    ``per_depth`` rows (status "stopped": epochs done of planned; "not run"), or None."""
    cut = []
    for r in (summary or {}).get("per_depth", []):
        name = r.get("arm") or f"depth{r.get('depth')}"
        if r.get("status") == "stopped":
            cut.append(f"{name} cut after epoch {r.get('epochs')} of {r.get('epochs_planned')}")
        elif r.get("status") == "not run":
            cut.append(f"{name} not run ({r.get('note') or 'budget'})")
    return "budget: " + "; ".join(cut) if cut else None


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "torchvision", "numpy", "pandas", "matplotlib", "scikit-learn", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (experiments run where their `device` field says)"
    return f"cpu ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"
