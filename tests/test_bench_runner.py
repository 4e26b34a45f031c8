import subprocess
import sys
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"


def test_run_all_runs_every_bench_and_fails_at_the_end(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "bench_a_fails.py").write_text("import sys; print('a ran'); sys.exit(3)\n")
    (d / "bench_b_ok.py").write_text("print('b ran')\n")
    (d / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
    r = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(d)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "a ran" in r.stdout and "b ran" in r.stdout  # the failure did not stop the next one
    assert "FAILED bench_a_fails.py" in r.stdout and "ok     bench_b_ok.py" in r.stdout
    assert "not a benchmark" not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(d), "-k", "b_ok"], capture_output=True, text=True)
    assert r.returncode == 0 and "all 1 benchmark(s) passed" in r.stdout
