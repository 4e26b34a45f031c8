"""``rankbias reproduce --preset gpu``: both papers' headline experiments in one budget.

On one GPU (docs/gpu.md), in order:

1. paper 1, synthetic patch model: ``noise-robustness --preset paper``;
2. paper 1 on MNIST 0 vs 1: ``noise-robustness-images --preset paper``;
3. paper 1 on CIFAR-10, two classes on a noisy canvas, 16x16x3 patches, n = 2,000;
4. paper 2: ``overparam-cifar --preset gpu`` (ResNet-20 on CIFAR-10, depths 1 and 4,
   6 paired seeds, as many epochs as its share of the budget allows).

Every step has an explicit share of the budget (:attr:`Step.share`, summing to at
most 1; paper 2's is the largest: training to a plateau is what its claim needs).
A step may use its share plus whatever the steps before it left unused. Steps 1-3
cannot stop half-way, so each runs in a child process with that hard time limit;
a step that passes it is killed and reported as "not run (budget)". Step 4 stops
cleanly by itself (``budget_minutes``), so it goes last and also absorbs what the
others left; a depth it cuts short is named in its note. Every step writes its own run
directory; the combined report (``report.md``, ``report/index.html``,
``reproduce.json``) is rewritten after each step, so an interrupted run still
leaves one. The data is the folder written by ``rankbias prepare-data`` (or a
plain data root); the paper-1 loaders read a packed folder as a data root.

``gpu-smoke`` is the same path at a tiny size on the CPU (CI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rankbias.errors import UnsupportedError
from rankbias.framework.paths import data_root
from rankbias.framework.runs import RunDir, config_hash

__all__ = ["GPU_SHARES", "PRESETS", "SMOKE_SHARES", "Step", "check_shares", "cut_note", "plan", "reproduce_gpu"]

PRESETS = ("gpu", "gpu-smoke")
REPORT_RESERVE_S = 15.0
"""Seconds kept back at the end of the budget for the last measurements and the report."""
GPU_SHARES = {"paper1-synthetic": 0.07, "paper1-mnist": 0.14, "paper1-cifar10": 0.12,
              "paper2-overparam-cifar": 0.67}
"""The ``gpu`` plan's budget shares (docs/gpu.md: paper 1's steps are sized from their FLOP
counts with room for the rank measures; paper 2 trains to a plateau, so it gets the rest)."""
SMOKE_SHARES = {"paper1-synthetic": 0.18, "paper1-mnist": 0.18, "paper1-cifar10": 0.18,
                "paper2-overparam-cifar": 0.46}
CIFAR_LR = 0.3
"""The ``gpu`` plan's learning rate for paper 1 on CIFAR-10. The paper preset's lr 1 (sized
for MNIST) holds CIFAR networks at the constant predictor for up to ~200 steps and makes the
loss oscillate; 0.3 trains monotonically, to the best clean test accuracy of the CPU check in
docs/gpu.md, and moves the filters far from their init (lower lrs leave them near it)."""


@dataclasses.dataclass(frozen=True)
class Step:
    label: str
    """Name in the report."""
    experiment: str
    """Registered experiment."""
    preset: str
    """Its preset."""
    overrides: dict
    """Config overrides (fields that exist in the experiment's config)."""
    share: float
    """Fraction of the budget this step may take, plus what the steps before it left unused."""
    needs: str | None = None
    """A dataset the step needs ("mnist", "cifar10"); skipped when the data has none."""
    stops_itself: bool = False
    """The step stops cleanly at its ``budget_minutes`` (run in this process, given its time as
    that setting); else it runs as a child process killed at its time limit."""


def check_shares(steps: list[Step]) -> None:
    """Refuse a plan whose shares are not each in (0, 1] or sum to more than 1."""
    bad = [st.label for st in steps if not 0 < st.share <= 1]
    total = sum(st.share for st in steps)
    if bad or total > 1 + 1e-9:
        raise UnsupportedError(f"budget shares must each be in (0, 1] and sum to <= 1; got "
                               f"{ {st.label: st.share for st in steps} } (sum {total:.3g})")


def plan(preset: str, *, data: str | None, mat_root: str | None, has: set[str]) -> list[Step]:
    """The steps of ``preset``. ``data``: the packed folder (or None); ``mat_root``: the data
    root the paper-1 loaders read; ``has``: the datasets available there."""
    if preset not in PRESETS:
        raise UnsupportedError(f"unknown GPU preset {preset!r}; accepted: {', '.join(PRESETS)}")
    root = {"data_root": mat_root}
    p2_data = {"packed_dir": data} if data is not None else {"data_root": mat_root}
    if preset == "gpu":
        cuda, sh = {"device": "cuda"}, GPU_SHARES
        steps = [
            Step("paper1-synthetic", "noise-robustness", "paper", cuda, sh["paper1-synthetic"]),
            Step("paper1-mnist", "noise-robustness-images", "paper", {**cuda, **root}, sh["paper1-mnist"],
                 "mnist"),
            Step("paper1-cifar10", "noise-robustness-images", "paper",
                 {**cuda, **root, "dataset": "cifar10", "classes": [0, 1], "patch_size": 16,
                  "n_train": 2000, "n_test": 2000, "lr": CIFAR_LR}, sh["paper1-cifar10"], "cifar10"),
            Step("paper2-overparam-cifar", "overparam-cifar", "gpu", {**cuda, **p2_data},
                 sh["paper2-overparam-cifar"], "cifar10", stops_itself=True),
        ]
        check_shares(steps)
        return steps
    tiny, sh = {"sigmas": [0.0, 0.5], "seeds": [0, 1], "steps": 20, "log_every": 10}, SMOKE_SHARES
    mnist = "mnist" if "mnist" in has else "digits"
    steps = [
        Step("paper1-synthetic", "noise-robustness", "quick", {**tiny, "n_train": 40, "n_test": 40},
             sh["paper1-synthetic"]),
        Step("paper1-mnist", "noise-robustness-images", "quick",
             {**tiny, **root, "dataset": mnist, "n_train": 60, "n_test": 60,
              **({"patch_size": 14} if mnist == "mnist" else {})}, sh["paper1-mnist"]),
    ]
    p2 = sh["paper2-overparam-cifar"]
    if "cifar10" in has:
        steps.append(Step("paper1-cifar10", "noise-robustness-images", "quick",
                          {**tiny, **root, "dataset": "cifar10", "classes": [0, 1], "patch_size": 16,
                           "n_train": 20, "n_test": 20, "lr": CIFAR_LR}, sh["paper1-cifar10"], "cifar10"))
        steps.append(Step("paper2-overparam-cifar", "overparam-cifar", "smoke",
                          {**p2_data, "dataset": "cifar10", "train_limit": 200, "test_limit": 100,
                           "train_eval_limit": 100, "crop_padding": 4, "hflip": True}, p2, stops_itself=True))
    else:
        steps.append(Step("paper2-overparam-cifar", "overparam-cifar", "smoke", {}, p2, stops_itself=True))
    check_shares(steps)
    return steps


def _resolve_data(data: str | os.PathLike | None) -> tuple[str | None, str | None, set[str]]:
    """(packed folder or None, data root for the loaders, datasets available)."""
    from rankbias.data.packed import is_packed

    folder = data_root(data)
    if not is_packed(folder):
        has = {n for n, p in (("mnist", "MNIST/raw"), ("cifar10", "cifar10-jpeg"),
                              ("cifar10", "cifar10-jpeg.tar"), ("cifar10", "cifar-10-batches-py"))
               if (folder / p).exists()}
        return None, str(folder), has
    from rankbias.data.packed import MANIFEST

    # a packed folder is a data root itself (load_image_dataset reads it): nothing to unpack
    manifest = json.loads((folder / MANIFEST).read_text())
    return str(folder), str(folder), set(manifest["datasets"])


def _verdict_word(summary: dict | None) -> str:
    from rankbias.verdicts import status_of

    return status_of((summary or {}).get("verdict"))


def _child(step: Step, out: Path, timeout: float) -> tuple[str, str | None]:
    """Run one step as ``python -m rankbias run`` with a hard time limit; (status, error)."""
    import rankbias.experiments.registry as registry

    pkg_parent = str(Path(registry.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "rankbias", "run", step.experiment, "--preset", step.preset,
           "--out", str(out)]
    for k, v in step.overrides.items():
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
            return "not run", f"budget: stopped after its share of {timeout:.0f} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        tail = (out / "stdout.txt").read_text().strip().splitlines()[-3:]
        return "failed", f"exit {rc}: " + " / ".join(tail)
    return "done", None


def reproduce_gpu(
    preset: str = "gpu",
    out_dir: str | os.PathLike = "runs/reproduce-gpu",
    *,
    budget_minutes: float | None = None,
    data: str | os.PathLike | None = None,
) -> dict:
    """Run the steps of ``preset`` within ``budget_minutes`` (default 9 for gpu, 2 for
    gpu-smoke) and write the combined report in ``out_dir``. ``data``: the folder of
    ``rankbias prepare-data`` or a data root (default: the data root). Returns
    ``{"entries": [...], "environment": {...}}``, one entry per step (name, status,
    verdict, summary, run_dir, error, reason, wall_time_s, share, budget_s: the seconds it was
    given), as ``reproduce.json`` holds."""
    from rankbias.experiments.registry import build_config, get_experiment
    from rankbias.report import write_reproduce_report
    from rankbias.runner import environment, run_experiment

    if preset not in PRESETS:
        raise UnsupportedError(f"unknown GPU preset {preset!r}; accepted: {', '.join(PRESETS)}")
    budget = 60.0 * (budget_minutes if budget_minutes is not None else (9.0 if preset == "gpu" else 2.0))
    if budget <= 0:
        raise UnsupportedError(f"budget_minutes must be > 0; got {budget_minutes}")
    if preset == "gpu":
        from rankbias.framework.config import check_device_available

        check_device_available("cuda")  # the plan is sized for a GPU: refuse before any work
    t_start = time.perf_counter()
    out = Path(out_dir)
    packed, mat_root, has = _resolve_data(data)
    steps = plan(preset, data=packed, mat_root=mat_root, has=has)
    entries: list[dict[str, Any]] = []
    for st in steps:
        exp = get_experiment(st.experiment)
        cfg = build_config(st.experiment, st.overrides, st.preset)  # every config checked first
        entries.append({"name": st.label, "description": f"{st.experiment} --preset {st.preset}: "
                        + exp.description, "claim": exp.claim, "status": "pending", "verdict": "not run",
                        "summary": None, "config": cfg.to_dict(), "run_dir": None, "error": None,
                        "wall_time_s": None, "reason": None, "share": st.share, "budget_s": None})

    def write() -> dict:
        env: dict[str, Any] = {**environment(), "preset": preset, "budget_s": budget, "device": _device(),
               "total_wall_time_s": round(time.perf_counter() - t_start, 3),
               "data": packed or mat_root}
        record = {"preset": preset, "environment": env, "experiments": [
            {k: v for k, v in e.items() if k != "summary"} for e in entries]}
        RunDir(out).write_json("reproduce.json", record)  # first: a report error must not lose it
        write_reproduce_report(out, entries, env)
        return {"entries": entries, "environment": env}

    used_share = 0.0
    for st, e in zip(steps, entries):
        elapsed = time.perf_counter() - t_start
        used_share += st.share  # a skipped step's share, like unused time, goes to the next steps
        limit = used_share * budget - elapsed
        if st.needs is not None and st.needs not in has:
            e.update(status="not run", reason=f"no {st.needs} in the data ({packed or mat_root})")
            write()
            continue
        t0 = time.perf_counter()
        if not st.stops_itself:
            e["budget_s"] = round(limit, 1)
            run_path = out / "runs" / st.label
            if limit < 5:
                e.update(status="not run", reason=f"budget: {limit:.0f} s left for this step")
            else:
                status, err = _child(st, run_path, limit)
                e.update(run_dir=str(run_path))
                if status == "done":
                    e.update(summary=json.loads((run_path / "summary.json").read_text()))
                e.update(status=status, error=err if status == "failed" else None,
                         reason=err if status == "not run" else None)
        else:
            left = limit - REPORT_RESERVE_S
            e["budget_s"] = round(left, 1)
            if left < 10:
                e.update(status="not run", reason=f"budget: {left:.0f} s left")
            else:
                overrides = {**st.overrides, "budget_minutes": round(left / 60, 2)}
                cfg = build_config(st.experiment, overrides, st.preset)
                run_path = out / "runs" / st.label / config_hash({"config": cfg.to_dict()})
                e.update(run_dir=str(run_path), config=cfg.to_dict())
                try:
                    e["summary"] = run_experiment(st.experiment, overrides, out_dir=run_path, preset=st.preset)
                    e.update(status="done", reason=cut_note(e["summary"]))
                except Exception as err:  # recorded; the report is still written
                    e.update(status="failed", error=f"{type(err).__name__}: {err}")
        if e["status"] == "done":
            e["verdict"] = _verdict_word(e["summary"])
        elif e["status"] == "failed":
            e["verdict"] = "failed"
        e["wall_time_s"] = round(time.perf_counter() - t0, 2)
        write()
    return write()


def cut_note(summary: dict | None) -> str | None:
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


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores visible)"
