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
    import torch

    from rankbias.measures import MEASURES, as_matrix, rank_measures
    from rankbias.report import markdown_table
    from rankbias.tensors_io import load_tensors

    tensors = load_tensors(args.path)
    rows = []
    for name, t in tensors.items():
        if t.ndim < 2 or t.numel() == 0 or t.is_complex():
            continue
        M = as_matrix(t, args.conv_reading)
        row = {"name": name, "shape": "x".join(map(str, t.shape)), "matrix": "x".join(map(str, M.shape[-2:]))}
        try:
            ms = rank_measures(M)
            for k in MEASURES:
                v = ms[k]
                v = v.double().mean() if v.ndim else v  # taps: mean over kernel positions
                row[k] = int(v) if k == "numerical_rank" and v.ndim == 0 and not v.is_floating_point() else float(v)
        except ValueError as e:
            row["error"] = str(e)
        rows.append(row)
    if not rows:
        print(f"{args.path}: no tensor with 2 or more dimensions", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown_table(rows), end="")
    del torch
    return 0


def cmd_analyze(args) -> int:
    import os
    import re
    from pathlib import Path

    from rankbias.analysis import (
        load_inputs,
        load_model,
        plot_rank_report,
        rank_report,
        summarize_report,
    )
    from rankbias.report import markdown_table
    from rankbias.runs import RunDir

    model = load_model(args.model, arch=args.arch, weights=args.weights)
    data = None
    if args.data is not None:
        data = load_inputs(args.data, root=args.data_root, limit=args.limit, train=args.split == "train")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(args.model).stem if ":" not in args.model else args.model)
    out = RunDir(args.out or Path(os.environ.get("RANKBIAS_RUNS", "runs")) / "analyze" / slug.strip("-"))
    df = rank_report(
        model, data, layers=args.layers or None, measures=args.measures or None,
        conv_reading=args.conv_reading, device=args.device, embedding_reading=args.embedding_reading,
        batch_size=args.batch_size, centered=args.centered, progress=None,
    )
    out.write_text("rank_report.csv", df.to_csv(index=False))
    rows = [{k: (str(v) if isinstance(v, tuple) else v) for k, v in r.items()}
            for r in df.astype(object).where(df.notna(), None).to_dict("records")]
    title = f"{args.model}" + (f" on {args.data} ({len(data)} inputs)" if data is not None else "")
    out.write_text("rank_report.md", f"# Rank report: {title}\n\n" + markdown_table(rows))
    fig = plot_rank_report(df, out.figure_path("rank_report"), title=title)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{title}: {int((df['name'] != '<input>').sum())} weight layers, {n_params:,} parameters")
    print(summarize_report(df))
    print(f"wrote {out / 'rank_report.csv'}, {out / 'rank_report.md'}, {fig}")
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

    sp = sub.add_parser("analyze", help="rank report of a model: weights, embeddings on data, the data")
    sp.add_argument("model", help="torchvision:NAME, a file saved with torch.save(model), "
                    "or a state_dict file with --arch")
    sp.add_argument("--arch", default=None, help="architecture of a state_dict: a torchvision "
                    "name (resnet18) or package.module:Class")
    sp.add_argument("--weights", default=None, help="state_dict file for a torchvision:NAME model "
                    "(default: random weights)")
    sp.add_argument("--data", default=None, help="inputs: digits, mnist, fashion-mnist, cifar10, "
                    "random:CxHxW, or a .pt/.npy tensor file")
    sp.add_argument("--data-root", default=None, help="dataset root (default $RANKBIAS_DATA or ./data)")
    sp.add_argument("--split", choices=["test", "train"], default="test", help="dataset split")
    sp.add_argument("--limit", type=int, default=None, help="use the first N inputs")
    sp.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass")
    sp.add_argument("--layers", nargs="*", default=None, help="layer names or glob patterns (default all)")
    sp.add_argument("--measures", nargs="*", default=None, help="measures (default all)")
    sp.add_argument("--conv-reading", choices=["flatten", "taps"], default="flatten",
                    help="a conv weight as out x in*kh*kw (flatten) or per tap (mean over taps)")
    sp.add_argument("--embedding-reading", choices=["position", "sample"], default="position",
                    help="conv outputs per position ((N*H*W) x C) or per sample (N x C*H*W)")
    sp.add_argument("--centered", action="store_true",
                    help="remove the mean embedding before the kernel (default: raw K = Z Z^T)")
    sp.add_argument("--device", default=None, help="torch device (default: cpu)")
    sp.add_argument("--out", default=None, help="output directory (default runs/analyze/MODEL)")
    sp.set_defaults(func=cmd_analyze)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from rankbias.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"rankbias: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
