"""Sweep grids: parsing ``--grid`` / ``--seeds``, and every point's validated config.

:func:`expand_grid` builds the config of every point of a sweep before any
compute; :func:`check_points` turns the invalid ones into one error (or, with
``skip_invalid``, leaves them to be recorded as ``invalid`` while the others run).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rankbias.experiments.registry import build_config, get_experiment
from rankbias.framework.config import ConfigError, check_device_available, parse_value
from rankbias.framework.runs import config_hash, to_jsonable

__all__ = ["GridSpec", "SeedSpec", "SweepPoint", "check_points", "expand_grid", "parse_grid",
           "parse_seeds", "seed_field"]

GridSpec = Mapping[str, Sequence[Any]] | Iterable[str]
"""A grid: {key: values} or ``"key=v1,v2,..."`` strings (:func:`parse_grid`)."""
SeedSpec = str | int | Iterable[int]
"""Seeds: ``"0-4"``, ``"0,2,5"``, an int or a list of ints (:func:`parse_seeds`)."""


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


def parse_seeds(seeds: SeedSpec | None) -> list[int] | None:
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
    name: str, grid: GridSpec | None = None, seeds: SeedSpec | None = None, *,
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
    build_config(name, {}, preset)  # an unknown preset fails here, with its "did you mean"
    grid = parse_grid(grid or {})
    seeds = parse_seeds(seeds)
    overrides = dict(overrides or {})
    exp.config_cls.check_keys([*grid, *overrides], label=name)
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


def check_points(points: Sequence[SweepPoint], *, check_device: bool = True) -> None:
    """ConfigError listing the invalid points (each distinct error once), before any compute.

    With ``check_device`` a valid point whose ``device`` cannot run on this
    machine (``cuda`` without a GPU) is an error too: the local backends run every
    point here. (Ray workers may have GPUs the driver lacks, so the Ray backend
    does not check.)
    """
    bad: dict[str, list[SweepPoint]] = {}
    for p in points:
        error = p.error
        if error is None and check_device and isinstance((p.config or {}).get("device"), str):
            try:
                check_device_available(p.config["device"])
            except ConfigError as e:
                error = str(e)
        if error is not None:
            bad.setdefault(" ".join(error.split()), []).append(p)
    if not bad:
        return
    n_bad = sum(len(ps) for ps in bad.values())

    def where(p: SweepPoint) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in p.settings.items()) or "every point"

    shown = "; ".join(f"{err} (at {where(ps[0])}" + (f" and {len(ps) - 1} more)" if len(ps) > 1 else ")")
                      for err, ps in list(bad.items())[:5])
    more = f"; and {len(bad) - 5} more distinct errors" if len(bad) > 5 else ""
    raise ConfigError(
        f"{n_bad} of {len(points)} sweep points are invalid, nothing was run: {shown}{more}; fix the "
        "values, or pass skip_invalid=True (--skip-invalid) to run the valid points and record the others"
    )
