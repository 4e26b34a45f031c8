"""Run every bench/bench_*.py in turn (``make bench``).

Each benchmark runs in its own subprocess with this interpreter; a failing one
does not stop the others. Exit status 1 at the end if any failed, with a summary.
    python bench/run_all.py [-k SUBSTRING] [extra args passed to every benchmark]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="run only benchmarks whose file name contains this")
    ap.add_argument("--dir", type=Path, default=HERE, help="where the bench_*.py files are")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed to every benchmark")
    args = ap.parse_args(argv)
    scripts = sorted(p for p in args.dir.glob("bench_*.py") if args.k in p.name)
    if not scripts:
        print(f"no bench_*.py matching {args.k!r} in {args.dir}", file=sys.stderr)
        return 1
    results = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run([sys.executable, str(script), *args.extra], cwd=script.parent.parent).returncode
        except KeyboardInterrupt:
            raise
        except Exception as e:  # e.g. the interpreter could not start
            print(f"{script.name}: could not run: {e}", file=sys.stderr)
            rc = -1
        results.append((script.name, rc, time.perf_counter() - t0))
    print("\n=== summary ===")
    for name, rc, dt in results:
        print(f"{'ok    ' if rc == 0 else 'FAILED'} {name} ({dt:.0f} s, exit {rc})")
    failed = [n for n, rc, _ in results if rc != 0]
    if failed:
        print(f"{len(failed)} of {len(results)} benchmark(s) failed: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} benchmark(s) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
