"""Sweeps and reproduction: many runs of registered experiments, resumable.

A **sweep** runs one experiment over a grid of settings times seeds::

    run_sweep("depth-rank-init", grid={"n": [16, 32], "init": ["normal", "uniform"]},
              seeds=range(5), out_dir="runs/my-sweep")

Every grid point is an ordinary run directory, ``DIR/points/<hash>``, named by
the hash of its validated config (the same record :func:`run_experiment`
hashes), so

* a point whose ``summary.json`` exists for that config is complete and skipped:
  rerunning the same command after Ctrl-C or SIGKILL redoes only the points that
  had not finished, and the aggregate is the same as an uninterrupted sweep's
  (a seed fully determines a run);
* sweeps that share points (a grid extended by one value) share their work;
* a point that raises is recorded (``status.json`` with ``status: failed`` and
  the error, ``traceback.txt``) and the others go on; a failed point is retried
  by the next invocation;
* every point's config is validated before any compute: an invalid value fails
  that point alone (``DIR/points/invalid-<hash>/status.json``, ``status:
  invalid``, the config error naming the field and what is accepted).

**Seeds.** ``seeds`` go to the experiment's seed field, and each seed is its own
run (so runs parallelise over seeds and results have a row per seed):

* a config with ``seed: int`` gets ``seed=s``;
* a config with ``seeds: list[int]`` (experiments that batch over seeds) gets
  ``seeds=[s]``; its within-run spread over seeds is then over one seed, and the
  sweep's figures show the spread over the sweep's seeds instead;
* a config with neither cannot take ``seeds`` (an error); without ``seeds`` each
  point runs with the seed of its preset / overrides.

With ``batch_seeds=True`` (``--batch-seeds``) a ``seeds`` experiment instead gets
all the seeds in one run per grid point (faster where the experiment trains its
seeds as one batch); rows are then one per grid point with a ``seeds`` column.

The results aggregate into ``DIR/results.csv``: a row per grid point and seed,
in grid order (independent of the order in which points finished), with the
swept settings, ``seed``, ``status``, ``error``, ``run_dir`` and every scalar of
the summary flattened (``verdict.holds``, ``per_depth[depth=4].median``, ...).
Timing stays out of it (``DIR/timing.csv``), so that the file is a function of
the configs alone. One figure per swept key goes to ``DIR/figures/``.

Backends: ``local`` (in-process with ``workers=1``, else a process pool) and
``ray`` (one Ray task per point with ``cpus_per_point`` / ``gpus_per_point``
resources, on an existing cluster at ``address`` or on a local instance).

:func:`reproduce` runs every registered experiment at a preset into one
directory and writes the combined report (``report.md`` and a self-contained
``report/index.html``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import tempfile
import time
import traceback
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rankbias.experiments.registry import build_config, get_experiment, run_experiment
from rankbias.framework.config import ConfigError, parse_value
from rankbias.framework.paths import runs_root
from rankbias.framework.runs import RunDir, config_hash, to_jsonable

__all__ = [
    "MissingDependency",
    "ReproduceResult",
    "SweepPoint",
    "SweepResult",
    "expand_grid",
    "flatten_summary",
    "parse_grid",
    "parse_seeds",
    "reproduce",
    "run_sweep",
    "seed_field",
]

Backend = Literal["local", "ray"]
RAY_INSTALL_HINT = (
    "the ray backend needs Ray, an optional extra: pip install 'rankbias[ray]' "
    "(or pip install 'ray[default]')"
)


class MissingDependency(ImportError):
    """An optional dependency a chosen feature needs is not installed."""


# ----------------------------------------------------------------- parsing
def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes: ``[1,2],[3]`` -> 2 pieces."""
    pieces, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    pieces.append("".join(cur))
    return [p.strip() for p in pieces]


def parse_grid(items: Iterable[str] | Mapping[str, Any]) -> dict[str, list[Any]]:
    """``["n=16,32", "depths=[1,2],[1,2,4]"]`` -> ``{"n": [16, 32], "depths": [[1, 2], [1, 2, 4]]}``.

    Values are comma-separated, each read by :func:`rankbias.framework.config.parse_value`
    (JSON, ``true``/``false``/``none``, else a string); a bracketed value is one
    list-valued setting. A mapping is taken as already parsed (a scalar value is
    a one-value axis).
    """
    grid: dict[str, list[Any]] = {}
    if isinstance(items, Mapping):
        raw = [(str(k), list(v) if isinstance(v, list | tuple | range) else [v]) for k, v in items.items()]
    else:
        raw = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--grid expects key=v1,v2,...; got {item!r}")
            key, text = (s.strip() for s in item.split("=", 1))
            pieces = _split_top_level(text)
            if not key or not text or any(p == "" for p in pieces):
                raise ConfigError(f"--grid expects key=v1,v2,... with non-empty values; got {item!r}")
            raw.append((key, [parse_value(p) for p in pieces]))
    for key, values in raw:
        if key in grid:
            raise ConfigError(f"grid key {key!r} given twice; give all its values in one --grid")
        if not values:
            raise ConfigError(f"grid key {key!r} has no values")
        canon = [json.dumps(to_jsonable(v), sort_keys=True) for v in values]
        if len(set(canon)) != len(canon):
            raise ConfigError(f"grid key {key!r} repeats a value: {values!r}")
        grid[key] = values
    return grid


def parse_seeds(seeds: str | int | Iterable[int] | None) -> list[int] | None:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"``; ``"0-2,7"``; an int or a list of ints."""
    if seeds is None:
        return None
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds: got {seeds!r}; accepted: 0-4, 0,2,5 or a list of ints >= 0")
    if isinstance(seeds, int):
        out = [seeds]
    elif isinstance(seeds, str):
        out = []
        for piece in seeds.split(","):
            piece = piece.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", piece)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ConfigError(f"seeds: range {piece!r} is empty; write low-high, e.g. 0-4")
                out.extend(range(lo, hi + 1))
            elif re.fullmatch(r"\d+", piece):
                out.append(int(piece))
            else:
                raise ConfigError(
                    f"seeds: cannot read {piece!r} in {seeds!r}; accepted: a range 0-4, a list 0,2,5 "
                    "or both (0-2,7), of ints >= 0"
                )
    else:
        out = list(seeds)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
            raise ConfigError(f"seeds: got {out!r}; accepted: ints >= 0")
    if not out:
        raise ConfigError("seeds: no seed given; accepted: 0-4, 0,2,5 or a list of ints >= 0")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds: {out!r} repeats a seed")
    return out


def seed_field(config_cls: type) -> str | None:
    """``"seed"`` (an int field), ``"seeds"`` (a list field) or None: where sweep seeds go."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    if "seed" in names and hints["seed"] is int:
        return "seed"
    if "seeds" in names and typing.get_origin(hints["seeds"]) in (list, tuple):
        return "seeds"
    return None


# ------------------------------------------------------------------- grid
@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a grid point at one seed."""

    index: int
    """Position in grid order (grid keys in the given order, seeds innermost)."""
    settings: dict[str, Any]
    """The swept keys' values at this point."""
    seed: int | None
    """The sweep seed of this run (None when the sweep has no seeds)."""
    overrides: dict[str, Any]
    """Everything passed to the experiment on top of the preset."""
    key: str
    """Its run directory's name under ``points/``: the config hash, or ``invalid-<hash>``."""
    error: str | None = None
    """Why the config is invalid (None for a valid point)."""
    config: dict[str, Any] | None = None
    """The validated config (None for an invalid point)."""

    @property
    def valid(self) -> bool:
        return self.error is None


def expand_grid(
    name: str,
    grid: Mapping[str, Sequence[Any]] | Iterable[str] | None = None,
    seeds: str | int | Iterable[int] | None = None,
    *,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    batch_seeds: bool = False,
) -> list[SweepPoint]:
    """Every point of the sweep, each validated (an invalid one carries its error).

    ``batch_seeds=True`` (only for a ``seeds: list`` experiment) gives each grid
    point all the seeds in one run, which the experiment batches; its rows are
    then one per grid point, with the experiment's own spread over seeds.

    Mistakes that would fail every point (unknown experiment, preset or grid key;
    seeds for an experiment without a seed field) raise ConfigError at once.
    """
    exp = get_experiment(name)
    if preset not in exp.presets:
        raise ConfigError(f"{name}: unknown preset {preset!r}; accepted: {', '.join(exp.presets)}")
    grid = parse_grid(grid or {})
    seeds = parse_seeds(seeds)
    overrides = dict(overrides or {})
    fields = [f.name for f in dataclasses.fields(exp.config_cls)]
    unknown = [k for k in [*grid, *overrides] if k not in fields]
    if unknown:
        raise ConfigError(
            f"{name}: unknown config key(s) {unknown}; accepted keys:\n{exp.config_cls.accepted()}"
        )
    sfield = seed_field(exp.config_cls)
    if seeds is not None:
        if sfield is None:
            raise ConfigError(f"{name} has no seed field (seed or seeds); drop --seeds")
        for where, keys in (("--grid", grid), ("--set", overrides)):
            if sfield in keys:
                raise ConfigError(f"give the seeds either with --seeds or with {where} {sfield}=..., not both")
    if batch_seeds and sfield != "seeds":
        raise ConfigError(f"batched seeds need a `seeds` list field; {name} has {sfield or 'no seed field'}")
    points = []
    seed_axis: list[int | None] = list(seeds) if seeds is not None and not batch_seeds else [None]
    for combo in itertools.product(*grid.values()):
        settings = dict(zip(grid, combo))
        for seed in seed_axis:
            ov = {**overrides, **settings}
            if seed is not None:
                ov[sfield] = seed if sfield == "seed" else [seed]
            elif batch_seeds and seeds is not None:
                ov[sfield] = list(seeds)
            try:
                cfg = build_config(name, ov, preset).to_dict()
                key, error = config_hash({"experiment": name, "config": cfg}), None
            except ConfigError as e:
                key = "invalid-" + config_hash({"experiment": name, "preset": preset, "overrides": ov})
                cfg, error = None, str(e)
            points.append(SweepPoint(len(points), settings, seed, ov, key, error, cfg))
    return points


# -------------------------------------------------------------- execution
def execute_point(
    name: str, preset: str, overrides: Mapping[str, Any], out_dir: str | os.PathLike, threads: int | None = None
) -> dict[str, Any]:
    """Run one point into ``out_dir``; an exception of the experiment becomes a ``failed`` result."""
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    try:
        summary = run_experiment(name, overrides, out_dir=out_dir, preset=preset)
        return {"status": "done", "summary": summary, "wall_time_s": time.perf_counter() - t0}
    except Exception as e:  # recorded; the sweep goes on
        return {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "wall_time_s": time.perf_counter() - t0,
        }


def _ray_execute_point(name: str, preset: str, overrides: dict, threads: int | None, version: str) -> dict:
    """A Ray task: run into the worker's scratch space and ship the files back (no shared FS needed)."""
    from rankbias._version import __version__

    if __version__ != version:
        return {"status": "failed", "files": {}, "wall_time_s": None,
                "error": f"the Ray worker has rankbias {__version__}, the sweep {version}: "
                         "install the same version on every node (or use --ray-ship-code)"}
    with tempfile.TemporaryDirectory(prefix="rankbias-point-") as tmp:
        res = execute_point(name, preset, overrides, tmp, threads)
        root = Path(tmp)
        res["files"] = {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }
    return res


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _ray_error_message(e: BaseException) -> str:
    """The informative last line of a Ray error, with a hint when the worker lacks rankbias."""
    lines = [ln.strip() for ln in _strip_ansi(str(e)).splitlines() if ln.strip()]
    msg = f"ray task failed: {lines[-1] if lines else type(e).__name__}"
    if "No module named 'rankbias" in msg:
        msg += " (install rankbias on every Ray node, or pass --ray-ship-code to upload it)"
    return msg


def _write_shipped_files(run: RunDir, files: Mapping[str, bytes]) -> None:
    from rankbias.framework.runs import atomic_write_bytes

    # summary.json last: its presence marks the point complete
    for rel in sorted(files, key=lambda r: r == "summary.json"):
        atomic_write_bytes(run.path / rel, files[rel])


def _die_with_parent() -> None:
    """Pool workers: exit when the sweep process dies (even by SIGKILL), instead of running on."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the worker ends when its queue closes
        pass


def _pool_init(threads: int | None) -> None:
    _die_with_parent()
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _mark_running(root: Path, name: str, p: SweepPoint) -> Path:
    """status.json says ``running`` while a point is out; a killed sweep leaves it so (and reruns it)."""
    RunDir(root / p.key).write_json("status.json", _status_record(p, name, {"status": "running"}))
    return root / p.key


def _run_local_pool(
    name: str, preset: str, todo: Sequence[SweepPoint], root: Path, workers: int, threads: int | None
) -> Iterator[tuple[SweepPoint, dict]]:
    import concurrent.futures as cf
    import multiprocessing as mp

    # spawn, not fork: a forked torch (threads, OpenMP state) can deadlock
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                  initializer=_pool_init, initargs=(threads,))
    try:
        futures = {
            pool.submit(execute_point, name, preset, p.overrides, str(_mark_running(root, name, p))): p
            for p in todo
        }
        for fut in cf.as_completed(futures):
            p = futures[fut]
            try:
                res = fut.result()
            except Exception as e:  # the worker process died (e.g. killed by the OOM killer)
                res = {"status": "failed", "error": f"worker died: {type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(), "wall_time_s": None}
            yield p, res
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise MissingDependency(RAY_INSTALL_HINT) from e
    return ray


def _run_ray(
    name: str,
    preset: str,
    todo: Sequence[SweepPoint],
    root: Path,
    *,
    address: str | None,
    workers: int | None,
    cpus_per_point: float,
    gpus_per_point: float,
    ship_code: bool = False,
) -> Iterator[tuple[SweepPoint, dict]]:
    import rankbias  # the package itself is what Ray ships to the workers
    from rankbias._version import __version__

    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        # ship_code uploads this rankbias to the workers instead of relying on the nodes' install
        runtime_env = {"py_modules": [rankbias]} if ship_code else None
        if address:
            try:
                ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
            except ConnectionError as e:
                raise ConfigError(
                    f"address: cannot connect to a Ray cluster at {address!r} ({e}); start one with "
                    "`ray start --head` and pass the address it prints (or 'auto' on a cluster node), "
                    "or omit --address for a local instance"
                ) from None
            have = ray.cluster_resources()
            for res, need in (("CPU", cpus_per_point), ("GPU", gpus_per_point)):
                if need > have.get(res, 0):
                    import warnings

                    warnings.warn(
                        f"the Ray cluster at {address!r} has {have.get(res, 0):g} {res}(s) but each point asks "
                        f"for {need}: the points wait until nodes with them join (autoscaling)",
                        RuntimeWarning, stacklevel=2,
                    )
        else:
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env=runtime_env)
            # a local instance does not autoscale: a point that can never fit would wait forever
            have = ray.cluster_resources()
            for res, need in (("CPU", cpus_per_point), ("GPU", gpus_per_point)):
                if need > have.get(res, 0):
                    ray.shutdown()
                    raise ConfigError(
                        f"{res.lower()}s_per_point={need} but the local Ray instance has "
                        f"{have.get(res, 0):g} {res}(s); lower it or pass --address of a cluster that has them"
                    )
        started = True
    task = ray.remote(_ray_execute_point).options(
        num_cpus=cpus_per_point, num_gpus=gpus_per_point, name=f"rankbias:{name}"
    )
    threads = max(1, int(math.ceil(cpus_per_point)))
    pending = {}
    try:
        pending = {}
        for p in todo:
            _mark_running(root, name, p)
            pending[task.remote(name, preset, p.overrides, threads, __version__)] = p
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                p = pending.pop(ref)
                try:
                    res = ray.get(ref)
                    _write_shipped_files(RunDir(root / p.key), res.pop("files"))
                except ray.exceptions.RayError as e:  # the worker died, or could not import rankbias
                    res = {"status": "failed", "error": _ray_error_message(e),
                           "traceback": _strip_ansi(traceback.format_exc()), "wall_time_s": None}
                yield p, res
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


# ------------------------------------------------------------ aggregation
def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def flatten_summary(summary: Mapping[str, Any], prefix: str = "", max_list: int = 32) -> dict[str, Any]:
    """Every scalar of a summary as one flat mapping.

    Nested mappings join with ``.`` (``verdict.holds``); a ``per_<key>`` list of
    records is labelled by that key (``per_depth[depth=4].median``), other lists
    of records by index; lists of scalars up to ``max_list`` long by index
    (longer ones, e.g. whole curves, stay in the run directory).
    """
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if not prefix and k == "experiment":
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_summary(v, name + ".", max_list))
        elif isinstance(v, list | tuple):
            if v and all(isinstance(x, Mapping) for x in v):
                label = k[4:] if k.startswith("per_") else None
                labelled = label is not None and all(label in x and _is_scalar(x[label]) for x in v)
                if labelled and len({json.dumps(x[label]) for x in v}) < len(v):
                    labelled = False  # repeated labels would collide
                for i, x in enumerate(v):
                    tag = f"{label}={x[label]}" if labelled else str(i)
                    rest = {kk: vv for kk, vv in x.items() if not (labelled and kk == label)}
                    out.update(flatten_summary(rest, f"{name}[{tag}].", max_list))
            elif all(_is_scalar(x) for x in v) and len(v) <= max_list:
                out.update({f"{name}[{i}]": x for i, x in enumerate(v)})
        elif _is_scalar(v):
            out[name] = v
    return out


def _cell(v: Any) -> Any:
    return json.dumps(to_jsonable(v)) if isinstance(v, list | tuple | Mapping) else v


def _first_line(text: str | None) -> str | None:
    return None if text is None else text.strip().splitlines()[0] if text.strip() else text


@dataclasses.dataclass
class SweepResult:
    """What a sweep produced (everything is also on disk under ``out_dir``)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    """The rows of ``results.csv``."""
    figures: list[Path]
    counts: dict[str, int]
    """Rows by status: done, failed, invalid, pending (not run: interrupted)."""

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def ok(self) -> bool:
        return self.counts.get("done", 0) == len(self.rows)

    def frame(self):
        """The results as a pandas DataFrame."""
        import pandas as pd

        return pd.read_csv(self.results_csv)


def _default_sweep_dir(name: str, spec: Mapping[str, Any]) -> Path:
    root = runs_root()
    return root / "sweeps" / f"{name}-{config_hash(spec, 8)}"


def _aggregate(
    name: str, points: Sequence[SweepPoint], root: Path, results: dict[str, dict], has_seed: bool,
    seeds_batched: bool = False,
) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        if p.valid and p.key not in results:  # finished just before an interrupt reached us
            done = RunDir(root / p.key).completed_summary({"experiment": name, "config": p.config})
            if done is not None:
                results[p.key] = {"status": "done", "summary": done}
        row: dict[str, Any] = {"point": p.key}
        row.update({k: _cell(v) for k, v in p.settings.items()})
        if has_seed:
            row["seed"] = p.seed
        elif "seeds" in p.overrides and p.seed is None and seeds_batched:
            row["seeds"] = _cell(p.overrides["seeds"])
        res = results.get(p.key)
        if not p.valid:
            row.update(status="invalid", error=p.error.replace("\n", " "))
        elif res is None:
            row.update(status="pending", error=None)
        else:
            row.update(status=res["status"], error=_first_line(res.get("error")))
        row["run_dir"] = f"points/{p.key}"
        if res is not None and res["status"] == "done":
            row.update({k: _cell(v) for k, v in flatten_summary(res["summary"]).items()})
        rows.append(row)
    return rows


def _status_record(p: SweepPoint, name: str, res: Mapping[str, Any]) -> dict[str, Any]:
    rec = {"experiment": name, "point": p.key, "settings": p.settings, "seed": p.seed,
           "overrides": p.overrides, "status": res["status"], "error": res.get("error")}
    if res.get("traceback"):
        rec["traceback_file"] = "traceback.txt"
    if res.get("wall_time_s") is not None:
        rec["wall_time_s"] = round(res["wall_time_s"], 3)
    return rec


def run_sweep(
    name: str,
    grid: Mapping[str, Sequence[Any]] | Iterable[str] | None = None,
    seeds: str | int | Iterable[int] | None = None,
    *,
    preset: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    backend: Backend = "local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_point: float = 1.0,
    gpus_per_point: float = 0.0,
    metrics: Sequence[str] | None = None,
    batch_seeds: bool = False,
    ray_ship_code: bool = False,
    progress: bool | None = None,
) -> SweepResult:
    """Run experiment ``name`` at every grid point and seed; resumable (see the module doc).

    Args:
        grid: ``{key: [values]}`` or CLI strings ``["key=v1,v2", ...]``.
        seeds: ``"0-4"``, ``"0,2,5"`` or ints, mapped to the experiment's seed field.
        preset, overrides: the base config every point starts from.
        out_dir: the sweep directory (default ``$RANKBIAS_RUNS/sweeps/NAME-<hash of the spec>``,
            so the same command resumes the same sweep).
        backend: ``"local"`` (``workers`` processes; 1 = in this process) or ``"ray"``.
        workers: local processes; with Ray on a new local instance, its number of CPUs.
        address: Ray cluster address (``"auto"`` or ``host:port``); default a local instance.
        cpus_per_point, gpus_per_point: Ray resources per point (a point with
            ``gpus_per_point > 0`` should also set ``device=cuda``).
        metrics: results.csv columns to plot against each swept key (default:
            ``verdict.holds`` and the verdict's numbers that vary).
        ray_ship_code: upload this process's rankbias package to the Ray workers
            (Ray ``runtime_env`` ``py_modules``); otherwise every node needs the
            same rankbias version installed (checked per task).
        batch_seeds: give a ``seeds``-list experiment all seeds in one run per grid
            point (it batches them) instead of one run per seed.
        progress: show a bar (None: only on a terminal).
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend: got {backend!r}; accepted: 'local', 'ray'")
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"workers: got {workers!r}; accepted: an int >= 1")
    if cpus_per_point <= 0 or gpus_per_point < 0:
        raise ConfigError(
            f"cpus_per_point/gpus_per_point: got {cpus_per_point}/{gpus_per_point}; accepted: cpus > 0, gpus >= 0"
        )
    if backend == "ray":
        _import_ray()  # fail before any work when Ray is missing
    points = expand_grid(name, grid, seeds, preset=preset, overrides=overrides, batch_seeds=batch_seeds)
    grid_keys = list(points[0].settings) if points else []
    has_seed = seeds is not None and not batch_seeds
    spec = {"experiment": name, "preset": preset, "overrides": dict(overrides or {}),
            "grid": parse_grid(grid or {}), "seeds": parse_seeds(seeds), "batch_seeds": batch_seeds}
    out = Path(out_dir) if out_dir is not None else _default_sweep_dir(name, spec)
    sweep_dir = RunDir(out)
    sweep_dir.write_json("sweep.json", {**spec, "points": len(points)})
    root = out / "points"

    results: dict[str, dict] = {}
    todo: list[SweepPoint] = []
    queued: set[str] = set()
    for p in points:
        run = RunDir(root / p.key)
        if not p.valid:
            run.write_json("status.json", _status_record(p, name, {"status": "invalid", "error": p.error}))
            continue
        if p.key in results or p.key in queued:
            continue  # two grid points with the same config: run once
        done = run.completed_summary({"experiment": name, "config": p.config})
        if done is not None:
            results[p.key] = {"status": "done", "summary": done}
        else:
            todo.append(p)
            queued.add(p.key)

    from tqdm.auto import tqdm

    n_unique = len(results) + len(todo)
    timing: list[dict[str, Any]] = []
    bar = tqdm(total=n_unique, initial=len(results), desc=f"sweep {name}", unit="point",
               disable=None if progress is None else not progress, dynamic_ncols=True)
    try:
        if backend == "ray":
            stream = _run_ray(name, preset, todo, root, address=address, workers=workers if workers > 1 else None,
                              cpus_per_point=cpus_per_point, gpus_per_point=gpus_per_point,
                              ship_code=ray_ship_code)
        elif workers > 1 and len(todo) > 1:
            n_proc = min(workers, len(todo))
            # share the cores instead of oversubscribing them (torch would take all of them in each process)
            threads = max(1, (os.cpu_count() or 1) // n_proc)
            stream = _run_local_pool(name, preset, todo, root, n_proc, threads)
        else:
            stream = ((p, execute_point(name, preset, p.overrides, _mark_running(root, name, p))) for p in todo)
        for p, res in stream:
            run = RunDir(root / p.key)
            if res.get("traceback"):
                run.write_text("traceback.txt", res["traceback"])
            elif (run.path / "traceback.txt").exists():
                (run.path / "traceback.txt").unlink()  # an earlier failure, now fixed
            run.write_json("status.json", _status_record(p, name, res))
            results[p.key] = res
            timing.append({"point": p.key, "status": res["status"], "wall_time_s": res.get("wall_time_s")})
            bar.update(1)
            if res["status"] == "failed":
                bar.write(f"sweep {name}: point {p.key} {p.settings} seed={p.seed} failed: "
                          f"{_first_line(res['error'])} (see {run.path / 'traceback.txt'})")
    finally:
        bar.close()
        # also on Ctrl-C: what finished is aggregated, the rest is marked pending
        rows = _aggregate(name, points, root, results, has_seed, seeds_batched=seeds is not None and batch_seeds)
        sweep_dir.write_csv("results.csv", rows)
        if timing:
            sweep_dir.write_csv("timing.csv", timing)

    figures = plot_sweep(rows, grid_keys, out / "figures", experiment=name, metrics=metrics)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return SweepResult(out, rows, figures, counts)


# ---------------------------------------------------------------- figures
def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v) if math.isfinite(v) else None
    return None


def default_metrics(rows: Sequence[Mapping[str, Any]], limit: int = 4) -> list[str]:
    """``verdict.holds`` and up to ``limit - 1`` numeric verdict columns that vary over the points
    (spread over them when there are more), else any numeric columns that vary."""
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return []
    cols: list[str] = []
    for r in done:
        cols.extend(c for c in r if c not in cols)

    def numeric_and_varying(c: str) -> bool:
        vals = [_as_number(r.get(c)) for r in done]
        return all(v is not None for v in vals) and len(set(vals)) > 1

    chosen = ["verdict.holds"] if "verdict.holds" in cols else []
    pool = [c for c in cols if c.startswith("verdict.") and c != "verdict.holds"]
    if not pool:
        pool = [c for c in cols if c not in chosen]
    varying = [c for c in pool if numeric_and_varying(c)]
    room = limit - len(chosen)
    if len(varying) > room:  # spread the picks over the list (e.g. the first and the last depth)
        varying = [varying[round(i * (len(varying) - 1) / max(room - 1, 1))] for i in range(room)]
    return chosen + varying


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    grid_keys: Sequence[str],
    fig_dir: str | os.PathLike,
    *,
    experiment: str,
    metrics: Sequence[str] | None = None,
) -> list[Path]:
    """One figure per swept key: each metric against that key, a line per setting of the other keys,
    mean and std over seeds."""
    metrics = list(metrics) if metrics else default_metrics(rows)
    done = [r for r in rows if r.get("status") == "done"]
    if not (grid_keys and metrics and done):
        return []
    missing = [m for m in metrics if all(m not in r for r in done)]
    if missing:
        raise ConfigError(f"metric(s) {missing} are not columns of results.csv; accepted: "
                          + ", ".join(c for c in done[0] if c not in ("point", "run_dir")))
    import rankbias.plots as plots

    paths = []
    for key in grid_keys:
        others = [k for k in grid_keys if k != key]
        series: dict[str, dict[Any, list[Mapping]]] = {}
        for r in done:
            label = ", ".join(f"{k}={r[k]}" for k in others)
            series.setdefault(label, {}).setdefault(r[key], []).append(r)
        paths.append(plots.sweep_figure(
            series, metrics, Path(fig_dir) / f"sweep_{_slug(key)}.png",
            xlabel=key, title=f"{experiment}: sweep over {key}",
            legend_title=", ".join(others) if others else None,
        ))
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


# -------------------------------------------------------------- reproduce
VERDICT_WORDS = {True: "holds", False: "does not hold", None: "no verdict"}


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
    """Run every registered experiment at ``preset`` and write the combined report.

    Each experiment runs into ``DIR/runs/NAME/PRESET-HASH`` (a completed one is
    not recomputed, so a rerun resumes); one that fails is recorded with its
    traceback and the others go on. ``only`` restricts the run to some
    experiments (the others appear in the report as "not run"); ``overrides``
    maps an experiment name to config overrides. Writes ``DIR/report.md``,
    ``DIR/report/index.html`` (figures embedded) and ``DIR/reproduce.json``.

    Presets ``gpu`` / ``gpu-smoke`` run the budgeted plan of :mod:`rankbias.gpu_reproduce`
    (both papers' headline experiments, ``budget_minutes`` in all; docs/gpu.md).
    """
    from rankbias.experiments.registry import environment, experiments

    if preset in ("gpu", "gpu-smoke"):
        if only or overrides:
            raise ConfigError(f"--only / --set are not accepted with preset {preset!r} (a fixed plan)")
        from rankbias.gpu_reproduce import reproduce_gpu

        rec = reproduce_gpu(preset, out_dir, budget_minutes=budget_minutes)
        return ReproduceResult(Path(out_dir), rec["entries"], rec["environment"])
    if budget_minutes is not None:
        raise ConfigError(f"budget_minutes is for the presets gpu and gpu-smoke; got preset {preset!r}")

    exps = experiments()
    only = list(only) if only else None
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    for label, names in (("--only", only or []), ("overrides", list(overrides))):
        bad = [n for n in names if n not in exps]
        if bad:
            raise ConfigError(f"{label}: unknown experiment(s) {bad}; accepted: {', '.join(exps)}")
    out = Path(out_dir)
    entries: list[dict[str, Any]] = []
    # validate every config before computing anything
    for name, exp in exps.items():
        e: dict[str, Any] = {"name": name, "description": exp.description, "claim": exp.claim,
                             "status": "pending", "verdict": "not run", "summary": None, "config": None,
                             "run_dir": None, "error": None, "wall_time_s": None, "cached": False}
        if only is not None and name not in only:
            e.update(status="not run", reason="not selected (--only)")
        elif preset not in exp.presets:
            e.update(status="not run", reason=f"no {preset!r} preset (has: {', '.join(exp.presets)})")
        else:
            try:
                cfg = build_config(name, overrides.get(name), preset)
                chash = config_hash({"experiment": name, "config": cfg.to_dict()})
                e.update(config=cfg.to_dict(), run_dir=out / "runs" / name / f"{preset}-{chash}")
            except ConfigError as err:
                e.update(status="failed", verdict="failed", error=f"invalid config: {err}")
        entries.append(e)

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
                e["summary"] = run_experiment(e["name"], overrides.get(e["name"]), out_dir=run.path, preset=preset)
                holds = (e["summary"].get("verdict") or {}).get("holds")
                e.update(status="done", verdict=VERDICT_WORDS.get(holds, "no verdict"))
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

        write_reproduce_report(out, entries, env)
        RunDir(out).write_json("reproduce.json", {"preset": preset, "environment": env, "experiments": [
            {k: v for k, v in e.items() if k not in ("summary",)} for e in entries]})
    return ReproduceResult(out, entries, env)


def _device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (experiments run where their `device` field says)"
    return f"cpu ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"
