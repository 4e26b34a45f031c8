"""Where sweep points run: in this process, in a local process pool, or as Ray tasks.

Each backend yields ``(point, result)`` as points finish; a result is the dict
:func:`execute_point` returns (``status`` done / failed, the summary or the error
and traceback, the wall time). The torch thread count of a point is passed to
the runner (:func:`rankbias.runner.run_experiment`), the one place that sets it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.errors import MissingDependency, optional_import
from rankbias.framework.config import ConfigError
from rankbias.framework.runs import RunDir
from rankbias.runner import run_experiment
from rankbias.sweep.grid import SweepPoint

__all__ = ["MissingDependency", "execute_point", "import_ray", "local_points", "pool_points", "ray_points", "status_record"]

def execute_point(
    name: str, preset: str, overrides: Mapping[str, Any], out_dir: str | os.PathLike, threads: int | None = None
) -> dict[str, Any]:
    """Run one point into ``out_dir``; an exception of the experiment becomes a ``failed`` result."""
    t0 = time.perf_counter()
    try:
        summary = run_experiment(name, overrides, out_dir=out_dir, preset=preset, threads=threads)
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
        res["files"] = {  # the scratch directory's lock file is no result
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"
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


def _mark_running(root: Path, name: str, p: SweepPoint) -> Path:
    """status.json says ``running`` while a point is out; a killed sweep leaves it so (and reruns it)."""
    RunDir(root / p.key).write_json("status.json", status_record(p, name, {"status": "running"}))
    return root / p.key


def local_points(
    name: str, preset: str, todo: Sequence[SweepPoint], root: Path
) -> Iterator[tuple[SweepPoint, dict]]:
    """In this process, one point after the other (in grid order)."""
    for p in todo:
        yield p, execute_point(name, preset, p.overrides, _mark_running(root, name, p))


def pool_points(
    name: str, preset: str, todo: Sequence[SweepPoint], root: Path, workers: int, threads: int | None
) -> Iterator[tuple[SweepPoint, dict]]:
    import concurrent.futures as cf
    import multiprocessing as mp

    # spawn, not fork: a forked torch (threads, OpenMP state) can deadlock
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_die_with_parent)
    try:
        futures = {
            pool.submit(execute_point, name, preset, p.overrides, str(_mark_running(root, name, p)), threads): p
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


def import_ray():
    return optional_import("ray", feature="the ray backend", extra="ray", package="ray[default]")


def ray_points(
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
    from rankbias._version import __version__

    ray = import_ray()
    started = not ray.is_initialized()  # a Ray the caller started is left running
    if started:
        _start_ray(ray, address, workers, cpus_per_point, gpus_per_point, ship_code)
    task = ray.remote(_ray_execute_point).options(
        num_cpus=cpus_per_point, num_gpus=gpus_per_point, name=f"rankbias:{name}"
    )
    threads = max(1, int(math.ceil(cpus_per_point)))
    pending = {}
    try:
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


def _start_ray(ray, address: str | None, workers: int | None, cpus_per_point: float, gpus_per_point: float,
               ship_code: bool) -> None:
    """Join the cluster at ``address`` (warn about resources no node has yet), or start a local
    instance (refuse resources it can never offer)."""
    # ship_code uploads this rankbias to the workers instead of relying on the nodes' install
    package_dir = str(Path(__file__).resolve().parents[1])  # src/rankbias, what Ray uploads
    runtime_env = {"py_modules": [package_dir]} if ship_code else None
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

                warnings.warn(  # stacklevel 3: the caller of ray_points
                    f"the Ray cluster at {address!r} has {have.get(res, 0):g} {res}(s) but each point asks "
                    f"for {need}: the points wait until nodes with them join (autoscaling)",
                    RuntimeWarning, stacklevel=3,
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


def status_record(p: SweepPoint, name: str, res: Mapping[str, Any]) -> dict[str, Any]:
    rec = {"experiment": name, "point": p.key, "settings": p.settings, "seed": p.seed,
           "overrides": p.overrides, "status": res["status"], "error": res.get("error")}
    if res.get("traceback"):
        rec["traceback_file"] = "traceback.txt"
    if res.get("wall_time_s") is not None:
        rec["wall_time_s"] = round(res["wall_time_s"], 3)
    return rec
