"""Sweeps: many runs of one registered experiment, resumable.

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
* one directory holds one sweep (``DIR/sweep.json``): a sweep of another spec
  into it is refused unless ``force=True`` (it then takes the directory over and
  reuses the points both share: a grid extended by one value runs only the new
  ones), and a sweep holds ``DIR/.lock`` while it runs, so a second one into
  the same directory is refused instead of interleaving ``results.csv``;
* a point that raises is recorded (``status.json`` with ``status: failed`` and
  the error, ``traceback.txt``) and the others go on; a failed point is retried
  by the next invocation;
* every point's config is built and validated before any compute: an invalid
  value (or ``device="cuda"`` on a machine without a GPU, for the local
  backends) stops the sweep before anything runs, with one error listing the
  bad points; with ``skip_invalid=True`` the invalid points are recorded
  instead (``DIR/points/invalid-<hash>/status.json``, ``status: invalid``, the
  config error naming the field and what is accepted) and the others run.

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

The package: :mod:`~rankbias.sweep.grid` (parsing, the points and their
configs), :mod:`~rankbias.sweep.backends` (where points run) and
:mod:`~rankbias.sweep.results` (``results.csv`` and the figures).
:func:`rankbias.plan_runner.reproduce` runs every registered experiment instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from rankbias.errors import LoadError
from rankbias.framework.config import ConfigError
from rankbias.framework.paths import runs_root
from rankbias.framework.runs import RunDir, config_hash, dir_lock, to_jsonable
from rankbias.sweep.backends import (
    MissingDependency,
    execute_point,
    import_ray,
    local_points,
    pool_points,
    ray_points,
    status_record,
)
from rankbias.sweep.grid import (
    GridSpec,
    SeedSpec,
    SweepPoint,
    check_points,
    expand_grid,
    parse_grid,
    parse_seeds,
    seed_field,
)
from rankbias.sweep.results import (
    SweepResult,
    aggregate,
    first_line,
    flatten_summary,
    plot_sweep_results,
)

__all__ = [
    "MissingDependency",
    "SweepPoint",
    "SweepResult",
    "check_points",
    "execute_point",
    "expand_grid",
    "flatten_summary",
    "parse_grid",
    "parse_seeds",
    "plot_sweep_results",
    "run_sweep",
    "seed_field",
]

Backend = Literal["local", "ray"]


def _default_sweep_dir(name: str, spec: Mapping[str, Any]) -> Path:
    root = runs_root()
    return root / "sweeps" / f"{name}-{config_hash(spec, 8)}"


def run_sweep(
    name: str, grid: GridSpec | None = None, seeds: SeedSpec | None = None, *,
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
    skip_invalid: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> SweepResult:
    """Run experiment ``name`` at every grid point and seed; resumable (see the module doc).

    Parameters
    ----------
    name : str
        A registered experiment (see :func:`list_experiments`).
    grid : mapping of str to list, or sequence of str, optional
        ``{key: [values]}`` or CLI strings ``["key=v1,v2", ...]``.
    seeds : str, int or sequence of int, optional
        ``"0-4"``, ``"0,2,5"`` or ints, mapped to the experiment's seed field.
    preset : str, default "quick"
        The preset every point starts from.
    overrides : mapping, optional
        Config values every point starts from (on top of ``preset``).
    out_dir : str or os.PathLike, optional
        The sweep directory (default ``$RANKBIAS_RUNS/sweeps/NAME-<hash of the
        spec>``, so the same command resumes the same sweep).
    backend : {"local", "ray"}, default "local"
        ``"local"`` (``workers`` processes; 1 = in this process) or ``"ray"``.
    workers : int, default 1
        Local processes; with Ray on a new local instance, its number of CPUs.
    address : str, optional
        Ray cluster address (``"auto"`` or ``host:port``); default a local instance.
    cpus_per_point, gpus_per_point : float, default 1.0 and 0.0
        Ray resources per point (a point with ``gpus_per_point > 0`` should also
        set ``device=cuda``).
    metrics : sequence of str, optional
        results.csv columns to plot against each swept key (default:
        ``verdict.holds`` and the verdict's numbers that vary).
    batch_seeds : bool, default False
        Give a ``seeds``-list experiment all seeds in one run per grid point (it
        batches them) instead of one run per seed.
    ray_ship_code : bool, default False
        Upload this process's rankbias package to the Ray workers (Ray
        ``runtime_env`` ``py_modules``); otherwise every node needs the same
        rankbias version installed (checked per task).
    skip_invalid : bool, default False
        Run the valid points and record the invalid ones (status ``invalid``)
        instead of refusing the whole sweep before any compute.
    force : bool, default False
        Let this sweep take over a directory that holds another sweep (another
        grid, seeds, preset or overrides): its ``sweep.json`` and ``results.csv``
        are replaced; without it that is refused (one sweep per directory).
    progress : bool, optional
        Show a bar (None: only on a terminal).

    Returns
    -------
    SweepResult
        The sweep directory, the rows of ``results.csv`` (one per point and seed,
        with its status and flattened summary), the figures and the counts of
        rows by status.

    Raises
    ------
    ConfigError
        An unknown experiment, preset, key or value; a bad ``backend``,
        ``workers`` or resources; an invalid point (without ``skip_invalid``); a
        directory that holds another sweep (without ``force``) or is in use.
    LoadError
        The directory's ``sweep.json`` cannot be read (without ``force``).
    MissingDependency
        ``backend="ray"`` without Ray installed (an ``ImportError``).

    Examples
    --------
    >>> import tempfile
    >>> import rankbias
    >>> res = rankbias.run_sweep(
    ...     "depth-rank-init", {"n": [4, 8]},
    ...     overrides={"network": "linear", "draws": 20, "depths": [1, 2, 4]},
    ...     out_dir=tempfile.mkdtemp(), progress=False)
    >>> res.counts, [row["n"] for row in res.rows]
    ({'done': 2}, [4, 8])
    >>> [row["verdict.status"] for row in res.rows]
    ['holds', 'holds']
    """
    _check_backend(backend, workers, cpus_per_point, gpus_per_point)
    points = expand_grid(name, grid, seeds, preset=preset, overrides=overrides, batch_seeds=batch_seeds)
    if not skip_invalid:
        check_points(points, check_device=backend != "ray")
    grid_keys = list(points[0].settings) if points else []
    has_seed = seeds is not None and not batch_seeds
    spec = {"experiment": name, "preset": preset, "overrides": dict(overrides or {}),
            "grid": parse_grid(grid or {}), "seeds": parse_seeds(seeds), "batch_seeds": batch_seeds}
    out = Path(out_dir) if out_dir is not None else _default_sweep_dir(name, spec)
    # held for the whole sweep: two sweeps writing one results.csv would mix or lose rows
    with dir_lock(out, "sweep"):
        sweep_dir = RunDir(out)
        _claim_sweep_dir(sweep_dir, {**spec, "points": len(points)}, force)
        root = out / "points"
        results, todo = _scan_points(name, points, root)
        # a generator: nothing runs until _run_points draws from it
        stream = _point_stream(name, preset, todo, root, backend, workers, address, cpus_per_point,
                               gpus_per_point, ray_ship_code)
        rows = _run_points(name, sweep_dir, points, results, todo, stream, has_seed,
                           seeds is not None and batch_seeds, progress)
        figures = plot_sweep_results(rows, grid_keys, out / "figures", experiment=name, metrics=metrics)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return SweepResult(out, rows, figures, counts)


def _check_backend(backend: str, workers: int, cpus_per_point: float, gpus_per_point: float) -> None:
    """Refuse a bad backend or resources, and a Ray backend without Ray, before any work."""
    if backend not in get_args(Backend):
        raise ConfigError(f"backend: got {backend!r}; accepted: 'local', 'ray'")
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigError(f"workers: got {workers!r}; accepted: an int >= 1")
    if cpus_per_point <= 0 or gpus_per_point < 0:
        raise ConfigError(
            f"cpus_per_point/gpus_per_point: got {cpus_per_point}/{gpus_per_point}; accepted: cpus > 0, gpus >= 0"
        )
    if backend == "ray":
        import_ray()  # fail before any work when Ray is missing


def _point_stream(
    name: str, preset: str, todo: Sequence[SweepPoint], root: Path, backend: str, workers: int,
    address: str | None, cpus_per_point: float, gpus_per_point: float, ray_ship_code: bool,
) -> Iterator[tuple[SweepPoint, dict]]:
    """The (point, result) pairs of ``todo`` as they finish, on the chosen backend."""
    if backend == "ray":
        return ray_points(name, preset, todo, root, address=address,
                          workers=workers if workers > 1 else None, cpus_per_point=cpus_per_point,
                          gpus_per_point=gpus_per_point, ship_code=ray_ship_code)
    if workers > 1 and len(todo) > 1:
        n_proc = min(workers, len(todo))
        # share the cores instead of oversubscribing them (torch would take all of them in each process)
        threads = max(1, (os.cpu_count() or 1) // n_proc)
        return pool_points(name, preset, todo, root, n_proc, threads)
    return local_points(name, preset, todo, root)


def _run_points(
    name: str, sweep_dir: RunDir, points: Sequence[SweepPoint], results: dict[str, dict],
    todo: Sequence[SweepPoint], stream: Iterator[tuple[SweepPoint, dict]], has_seed: bool,
    seeds_batched: bool, progress: bool | None,
) -> list[dict[str, Any]]:
    """Record each point of ``stream`` as it ends; write and return the rows of results.csv."""
    from tqdm.auto import tqdm

    root = sweep_dir.path / "points"
    timing: list[dict[str, Any]] = []
    bar = tqdm(total=len(results) + len(todo), initial=len(results), desc=f"sweep {name}", unit="point",
               disable=None if progress is None else not progress, dynamic_ncols=True)
    try:
        for p, res in stream:
            _record_point(name, root, p, res, bar)
            results[p.key] = res
            timing.append({"point": p.key, "status": res["status"], "wall_time_s": res.get("wall_time_s")})
    finally:
        bar.close()
        # also on Ctrl-C: what finished is aggregated, the rest is marked pending
        rows = aggregate(name, points, root, results, has_seed, seeds_batched=seeds_batched)
        sweep_dir.write_csv("results.csv", rows)
        if timing:
            sweep_dir.write_csv("timing.csv", timing)
    return rows


def _claim_sweep_dir(sweep_dir: RunDir, spec: Mapping[str, Any], force: bool) -> None:
    """Make ``sweep_dir`` this sweep's (write its ``sweep.json``). One directory holds one
    sweep: a directory of another spec is refused unless ``force``, since its
    ``results.csv`` would be replaced by rows of another grid."""
    new = to_jsonable(spec)
    if not force and sweep_dir.exists("sweep.json"):
        try:
            old = sweep_dir.read_json("sweep.json")
        except (OSError, ValueError) as e:
            raise LoadError(f"{sweep_dir.path / 'sweep.json'} cannot be read ({e}); pass --force "
                            "(force=True) to start this sweep there, or choose another --out") from None
        if not isinstance(old, dict) or old != new:
            diff = [k for k in new if not isinstance(old, dict) or old.get(k) != new[k]]
            raise ConfigError(
                f"{sweep_dir.path} holds another sweep (it differs in {', '.join(diff)}: "
                f"{', '.join(f'{k}={_short(old, k)}' for k in diff)}); one directory holds one sweep: "
                "choose another --out, or pass --force (force=True) to replace its sweep.json and "
                "results.csv with this sweep's (points both share are reused)"
            )
    sweep_dir.write_json("sweep.json", new)


def _short(old: Any, key: str) -> str:
    return json.dumps(old.get(key) if isinstance(old, dict) else None)[:80]


def _scan_points(name: str, points: Sequence[SweepPoint], root: Path) -> tuple[dict[str, dict], list[SweepPoint]]:
    """(the complete points' results, the points to run once each); invalid ones recorded."""
    results: dict[str, dict] = {}
    todo: list[SweepPoint] = []
    queued: set[str] = set()
    for p in points:
        run = RunDir(root / p.key)
        if not p.valid:
            run.write_json("status.json", status_record(p, name, {"status": "invalid", "error": p.error}))
            continue
        if p.key in results or p.key in queued:
            continue  # two grid points with the same config: run once
        done = run.completed_summary({"experiment": name, "config": p.config})
        if done is not None:
            results[p.key] = {"status": "done", "summary": done}
        else:
            todo.append(p)
            queued.add(p.key)
    return results, todo


def _record_point(name: str, root: Path, p: SweepPoint, res: Mapping[str, Any], bar: Any) -> None:
    run = RunDir(root / p.key)
    if res.get("traceback"):
        run.write_text("traceback.txt", res["traceback"])
    elif (run.path / "traceback.txt").exists():
        (run.path / "traceback.txt").unlink()  # an earlier failure, now fixed
    run.write_json("status.json", status_record(p, name, res))
    bar.update(1)
    if res["status"] == "failed":
        bar.write(f"sweep {name}: point {p.key} {p.settings} seed={p.seed} failed: "
                  f"{first_line(res['error'])} (see {run.path / 'traceback.txt'})")
