"""The `rankbias` command: a thin layer over the library and the experiments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parse_sets(items: Sequence[str]) -> dict:
    from rankbias.config import parse_value

    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def cmd_list(args) -> int:
    from rankbias.experiments import experiments

    exps = experiments()
    width = max(len(n) for n in exps)
    for name, exp in exps.items():
        print(f"{name:<{width}}  {exp.description}  [presets: {', '.join(exp.presets)}]")
    return 0


def cmd_run(args) -> int:
    from rankbias.experiments import get_experiment, run_experiment

    if args.show_config:
        exp = get_experiment(args.name)
        print(f"{args.name}: {exp.description}\nconfig fields:\n{exp.config_cls.accepted()}")
        print("presets:\n" + "\n".join(f"  {k}: {json.dumps(v)}" for k, v in exp.presets.items()))
        return 0
    summary = run_experiment(
        args.name, _parse_sets(args.set), out_dir=args.out, preset=args.preset, force=args.force
    )
    verdict = summary.get("verdict", {})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        holds = verdict.get("holds")
        print(f"{args.name}: verdict holds={holds}" if verdict else f"{args.name}: done")
    return 0


def cmd_measure(args) -> int:
    from rankbias.measures import MEASURES, as_matrix, rank_measures
    from rankbias.report import markdown_table
    from rankbias.tensors_io import load_tensors

    tensors = load_tensors(args.path)
    rows = []
    for name, t in tensors.items():
        if t.ndim < 2 or t.numel() == 0 or t.is_complex():
            continue
        M = as_matrix(t, args.conv_reading)
        mat = "x".join(map(str, M.shape[-2:]))
        if M.ndim > 2:  # taps: one matrix per kernel position, averaged below
            mat = f"{M.shape[0]} x {mat}"
        row = {"name": name, "shape": "x".join(map(str, t.shape)), "matrix": mat}
        try:
            ms = rank_measures(M)
        except ValueError as e:  # one bad tensor (NaN, Inf) does not hide the others
            row["error"] = str(e)
        else:
            for k in MEASURES:
                v = ms[k]
                if v.ndim:
                    row[k] = float(v.double().mean())
                else:
                    row[k] = int(v) if k == "numerical_rank" else float(v)
        rows.append(row)
    if not rows:
        print(f"{args.path}: no tensor with 2 or more dimensions", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["name", "shape", "matrix", *MEASURES] + (["error"] if any("error" in r for r in rows) else [])
    print(markdown_table(rows, columns), end="")
    if args.conv_reading == "taps" and any(" x " in r["matrix"] for r in rows):
        print("\n(taps: measures of a conv weight are means over its kernel positions)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rankbias import __version__

    p = argparse.ArgumentParser(
        prog="rankbias",
        description="Measure, reproduce and exploit the low-rank bias of neural networks.",
    )
    p.add_argument("--version", action="version", version=f"rankbias {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("list", help="list the experiments")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("run", help="run one experiment into a run directory")
    sp.add_argument("name", help="experiment name (see `rankbias list`)")
    sp.add_argument("--preset", default="quick", help="preset: quick (minutes on a CPU) or paper")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable); lists as 0,0.5,1 or JSON")
    sp.add_argument("--out", default=None, help="run directory (default runs/NAME/PRESET-HASH)")
    sp.add_argument("--force", action="store_true", help="rerun even if the run is complete")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.add_argument("--show-config", action="store_true", help="list the config fields and presets, run nothing")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("measure", help="rank measures of every 2-D+ tensor in a file")
    sp.add_argument("path", help=".npy, .npz, .pt/.pth (tensor, state_dict or model) or .safetensors")
    sp.add_argument("--conv-reading", choices=["flatten", "taps"], default="flatten",
                    help="read a conv weight (out, in, kh, kw) as out x in*kh*kw (flatten) or per tap")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=cmd_measure)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from rankbias.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"rankbias: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
