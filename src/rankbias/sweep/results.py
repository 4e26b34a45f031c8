"""Sweep results: ``results.csv`` (a row per point and seed, summaries flattened) and
one figure per swept key (drawn by :func:`rankbias.plots.sweep_figure`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.framework.config import ConfigError
from rankbias.framework.runs import SUMMARY_KEYS, RunDir, to_jsonable
from rankbias.sweep.grid import SweepPoint

__all__ = ["SweepResult", "aggregate", "default_metrics", "flatten_summary", "plot_sweep_results"]


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
        if not prefix and k in SUMMARY_KEYS:  # the run's identity, not a result (``point`` is the hash)
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


def first_line(text: str | None) -> str | None:
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


def aggregate(
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
            row.update(status=res["status"], error=first_line(res.get("error")))
        row["run_dir"] = f"points/{p.key}"
        if res is not None and res["status"] == "done":
            row.update({k: _cell(v) for k, v in flatten_summary(res["summary"]).items()})
        rows.append(row)
    return rows


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


def plot_sweep_results(
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
