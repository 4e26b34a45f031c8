"""The `rankbias` command: a thin layer over the library and the experiments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parse_sets(items: Sequence[str]) -> dict:
    from rankbias.framework.config import ConfigError, parse_value

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set seed=1); got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def cmd_list(args) -> int:
    from rankbias.experiments import list_experiments

    exps = list_experiments()
    width = max(len(n) for n in exps)
    for name, exp in exps.items():
        print(f"{name:<{width}}  {exp.description}  [presets: {', '.join(exp.presets)}]")
    return 0


def cmd_run(args) -> int:
    from rankbias.experiments.registry import get_experiment
    from rankbias.runner import run_experiment

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
        from rankbias.verdicts import status_of  # holds=None is both inconclusive and not testable

        print(f"{args.name}: verdict {status_of(verdict)}" if verdict else f"{args.name}: done")
        for n in summary.get("notices") or ():
            print(f"NOTICE: {n}")
    return 0


def cmd_measure(args) -> int:
    from rankbias.analysis import measure_tensors
    from rankbias.framework.tables import markdown_table
    from rankbias.measures import SPECS

    # Exit status: 0 when at least one tensor was measured (those it could not read are
    # rows with an `error`, and counted on stderr); 1 when none was (docs/analysis.md).
    rows = measure_tensors(args.path, conv_reading=args.conv_reading, trust_pickle=args.trust_pickle,
                           measures=args.measures or None,
                           device=args.device, method="fast" if args.fast else "auto",
                           progress=False if args.json else None)
    if not rows:
        print(f"{args.path}: no tensor with 2 or more dimensions", file=sys.stderr)
        return 1
    n_bad = sum("error" in r for r in rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        keys = [c for k in SPECS for c in (k, f"{k}_error")]  # --fast: a subset, with error bars
        columns = ["name", "shape", "matrix", *(c for c in keys if any(c in r for r in rows))]
        columns += ["error"] if n_bad else []
        print(markdown_table(rows, columns), end="")
        if args.conv_reading == "taps" and any(" x " in r["matrix"] for r in rows):
            print("\n(taps: measures of a conv weight are means over its kernel positions)")
    if n_bad:
        print(f"rankbias: {n_bad} of {len(rows)} tensors not measured (see the error column)",
              file=sys.stderr)
    return 1 if n_bad == len(rows) else 0


def cmd_sweep(args) -> int:
    from rankbias.sweep import run_sweep

    res = run_sweep(
        args.name, args.grid, args.seeds, preset=args.preset, overrides=_parse_sets(args.set),
        out_dir=args.out, backend=args.backend, workers=args.workers, address=args.address,
        cpus_per_point=args.cpus_per_point, gpus_per_point=args.gpus_per_point, metrics=args.metric,
        batch_seeds=args.batch_seeds, ray_ship_code=args.ray_ship_code, skip_invalid=args.skip_invalid,
        force=args.force,
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items()))
    print(f"{args.name}: {len(res.rows)} runs ({counts}); results: {res.results_csv}")
    for fig in res.figures:
        print(f"  figure: {fig}")
    bad = [r for r in res.rows if r["status"] in ("failed", "invalid")]
    for r in bad[:10]:
        print(f"  {r['status']}: {r['run_dir']}: {r['error']}", file=sys.stderr)
    if len(bad) > 10:
        print(f"  ... and {len(bad) - 10} more (see the status column of results.csv)", file=sys.stderr)
    return 0 if res.ok else 1


def cmd_reproduce(args) -> int:
    from rankbias.framework.config import ConfigError
    from rankbias.plan_runner import reproduce

    overrides: dict = {}
    for item in args.set or ():
        name, sep, rest = item.partition(":")
        key = rest.partition("=")[0].strip()
        if not (sep and name.strip() and "=" in rest and key):
            raise ConfigError(f"--set expects NAME:KEY=VALUE (e.g. --set depth-rank-init:n=8); got {item!r}")
        overrides.setdefault(name.strip(), {}).update(_parse_sets([rest]))
    res = reproduce(args.preset, args.out, only=args.only, overrides=overrides,
                    budget_minutes=args.budget_minutes)
    for e in res.entries:
        print(f"{e.name:<28} {e.verdict}" + (f"  ({e.error.splitlines()[0]})" if e.error else ""))
    print(f"report: {res.report_html}  (and {res.report_md})")
    for e in res.entries:  # last, so that no progress output hides them
        for n in (e.summary or {}).get("notices") or ():
            print(f"\nNOTICE ({e.name}): {n}")
    return 1 if res.failed else 0


def cmd_prepare_data(args) -> int:
    from rankbias.data.packed import pack

    classes = None if args.mnist_classes == "all" else [int(c) for c in args.mnist_classes.split(",") if c]
    m = pack(args.out, args.data_root, mnist_classes=classes)
    for name, e in m["datasets"].items():
        print(f"{name}: {e['train']['n']} train + {e['test']['n']} test images ({e['encoding']})")
    print(f"wrote {args.out}: {m['total_bytes'] / 2**20:.1f} MiB in "
          f"{sum(len(e[s]['parts']) for e in m['datasets'].values() for s in ('train', 'test'))} parts")
    return 0


def cmd_analyze(args) -> int:
    from rankbias.analysis import analyze
    from rankbias.analysis.options import report_arguments

    res = analyze(
        args.model, args.data, out=args.out, arch=args.arch, weights=args.weights,
        data_root=args.data_root, limit=args.limit, train=args.split == "train",
        trust_pickle=args.trust_pickle, device=args.device, progress=None, **report_arguments(args),
    )
    print(res.headline)
    print(res.summary)
    print(f"wrote {', '.join(map(str, res.files))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rankbias._version import __version__

    p = argparse.ArgumentParser(
        prog="rankbias",
        description="Measure, reproduce and exploit the low-rank bias of neural networks.",
    )
    p.add_argument("--version", action="version", version=f"rankbias {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    # one function per subcommand; this order is the order of `rankbias --help`
    for add in (_add_list_parser, _add_run_parser, _add_measure_parser, _add_sweep_parser,
                _add_reproduce_parser, _add_prepare_data_parser, _add_analyze_parser):
        add(sub)
    return p


def _add_list_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("list", help="list the experiments")
    sp.set_defaults(func=cmd_list)


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("run", help="run one experiment into a run directory")
    sp.add_argument("name", help="experiment name (see `rankbias list`)")
    sp.add_argument("--preset", default="quick", help="preset: quick (minutes on a CPU) or paper")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable); lists as 0,0.5,1 or JSON")
    sp.add_argument("--out", default=None, help="run directory (default runs/NAME/PRESET-HASH)")
    sp.add_argument("--force", action="store_true",
                    help="rerun even if the run is complete, or into an --out of another config "
                         "(parts saved under another config are never reused)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.add_argument("--show-config", action="store_true", help="list the config fields and presets, run nothing")
    sp.set_defaults(func=cmd_run)


def _add_measure_parser(sub: argparse._SubParsersAction) -> None:
    from rankbias.analysis.options import WeightOptions
    from rankbias.framework.arguments import add_arguments

    sp = sub.add_parser("measure", help="rank measures of every 2-D+ tensor in a file")
    sp.add_argument("path", help=".npy, .npz, .pt/.pth (tensor, state_dict or model), .safetensors, "
                    "or a sharded checkpoint (a *.safetensors.index.json or its directory), "
                    "streamed tensor by tensor")
    add_arguments(sp, WeightOptions, only=["conv_reading", "measures"])
    sp.add_argument("--device", default=None, help="torch device of the spectra (default: cpu)")
    sp.add_argument("--fast", action="store_true",
                    help="the fast route of the rank measures: estimates with error bars")
    sp.add_argument("--trust-pickle", action="store_true",
                    help="unpickle files in full (a torch.save(model) file); runs code stored in "
                    "the file: only for files you trust")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=cmd_measure)


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("sweep", help="run one experiment over a grid of settings x seeds (resumable)")
    sp.add_argument("name", help="experiment name (see `rankbias list`)")
    sp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a swept config field and its values (repeatable); list values as [1,2],[1,4]")
    sp.add_argument("--seeds", default=None, metavar="0-4",
                    help="seeds (0-4, 0,2,5): one run each, into the experiment's seed or seeds field")
    sp.add_argument("--batch-seeds", action="store_true",
                    help="experiments with a seeds list: all seeds in one run per grid point")
    sp.add_argument("--preset", default="quick", help="preset every point starts from")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field at every point (repeatable)")
    sp.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local processes, or Ray tasks (pip install 'rankbias[ray]')")
    sp.add_argument("--workers", type=int, default=1,
                    help="local: parallel processes (1 = in this process); ray: CPUs of a new local instance")
    sp.add_argument("--address", default=None, help="ray: address of an existing cluster (e.g. auto, host:6379)")
    sp.add_argument("--ray-ship-code", action="store_true",
                    help="ray: upload this rankbias to the workers (else each node needs it installed)")
    sp.add_argument("--cpus-per-point", type=float, default=1.0, help="ray: CPUs reserved per point")
    sp.add_argument("--gpus-per-point", type=float, default=0.0,
                    help="ray: GPUs reserved per point (also --set device=cuda)")
    sp.add_argument("--metric", action="append", default=None, metavar="COLUMN",
                    help="results.csv column to plot per swept key (repeatable; default: the verdict)")
    sp.add_argument("--skip-invalid", action="store_true",
                    help="run the valid points and record invalid ones (default: refuse the sweep before any compute)")
    sp.add_argument("--out", default=None, help="sweep directory (default runs/sweeps/NAME-HASH)")
    sp.add_argument("--force", action="store_true",
                    help="take over an --out that holds another sweep (its sweep.json and results.csv "
                         "are replaced; shared points are reused)")
    sp.set_defaults(func=cmd_sweep)


def _add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("reproduce", help="run every experiment and write the combined report")
    sp.add_argument("--preset", default="quick",
                    help="quick (minutes on a laptop), paper, or another entry of rankbias.plans.REPRODUCE_PRESETS")
    sp.add_argument("--out", default="runs/reproduce", help="output directory (rerun to resume)")
    sp.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these experiments")
    sp.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="override a config field of one experiment (repeatable)")
    sp.add_argument("--budget-minutes", type=float, default=None,
                    help="presets gpu / gpu-smoke: the whole run's time budget (default 9 / 2)")
    sp.set_defaults(func=cmd_reproduce)


def _add_prepare_data_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("prepare-data", help="pack CIFAR-10 (+ MNIST 0/1) into one folder < 60 MiB for a GPU run")
    sp.add_argument("--out", required=True, help="folder to write (parts + rankbias-packed.json)")
    sp.add_argument("--data-root", default=None, help="dataset root (default $RANKBIAS_DATA or ./data)")
    sp.add_argument("--mnist-classes", default="0,1",
                    help="MNIST classes to include ('all': all ten, which does not fit beside CIFAR-10)")
    sp.set_defaults(func=cmd_prepare_data)


def _add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    from rankbias.analysis.options import add_report_arguments

    sp = sub.add_parser("analyze", help="rank report of a model: weights, embeddings on data, the data")
    sp.add_argument("model", help="torchvision:NAME, a state_dict file with --arch, or a file "
                    "saved with torch.save(model) (with --trust-pickle)")
    sp.add_argument("--arch", default=None, help="architecture of a state_dict: a torchvision "
                    "name (resnet18) or package.module:Class")
    sp.add_argument("--weights", default=None, help="state_dict file for a torchvision:NAME model "
                    "(default: random weights)")
    sp.add_argument("--data", default=None, help="inputs: digits, mnist, fashion-mnist, cifar10, "
                    "random:CxHxW, or a .pt/.npy tensor file")
    sp.add_argument("--data-root", default=None, help="dataset root (default $RANKBIAS_DATA or ./data)")
    sp.add_argument("--split", choices=["test", "train"], default="test", help="dataset split")
    sp.add_argument("--limit", type=int, default=None, help="use the first N inputs")
    add_report_arguments(sp)  # --batch-size, --layers, --measures, --conv-reading, ... (one declaration)
    sp.add_argument("--trust-pickle", action="store_true",
                    help="unpickle model/input files in full (a torch.save(model) file); runs code "
                    "stored in the file: only for files you trust")
    sp.add_argument("--device", default=None, help="torch device (default: cpu)")
    sp.add_argument("--out", default=None, help="output directory (default runs/analyze/MODEL)")
    sp.set_defaults(func=cmd_analyze)

def _error_message(e: BaseException) -> str:
    """One line: an OS error as ``PATH: reason``, the project's errors by their message."""
    if isinstance(e, OSError) and e.strerror:
        paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
        text = f"{' -> '.join(paths)}: {e.strerror}" if paths else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    # Exactly the errors a user can cause and fix become one line and exit 2: the
    # project's own (ConfigError, LoadError, ... are RankbiasError) and the OS's (a
    # read-only or full --out, a missing file). Anything else is a bug and keeps
    # its traceback.
    from rankbias.errors import RankbiasError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RankbiasError, OSError) as e:
        print(f"rankbias: error: {_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rankbias: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
