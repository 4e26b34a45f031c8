"""Runs and sweeps never mix or lose results: saved parts, summaries and configs are
reused only under the hash of the config that produced them, one sweep owns its
directory, and an unwritable --out stops a command before any compute."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankbias.errors import LoadError
from rankbias.experiments import registry
from rankbias.framework.config import Config, ConfigError
from rankbias.framework.runs import RunDir, config_hash, dir_lock
from rankbias.runner import run_experiment
from rankbias.sweep import run_sweep

CALLS: list[float] = []  # one entry per part actually computed


@dataclasses.dataclass(frozen=True)
class PartsConfig(Config):
    x: float = 1.0
    """The value the part holds; x == 13 raises after the part is saved."""
    seed: int = 0
    """Seed."""


def parts_run(cfg: PartsConfig, run: RunDir) -> dict:
    part = run.part("value")
    if part is None:
        CALLS.append(cfg.x)
        part = {"x": cfg.x}
        run.save_part("value", part)
    if cfg.x == 13:
        raise RuntimeError("unlucky x=13")
    return {"verdict": {"holds": True, "value": part["x"] + cfg.seed}}


@pytest.fixture
def parts_experiment():
    registry._load_all()
    registry.register("zz-parts", description="saves one part", config_cls=PartsConfig,
                      presets={"quick": {}})(parts_run)
    CALLS.clear()
    yield "zz-parts"
    registry.unregister("zz-parts")


def value(summary: dict) -> float:
    return summary["verdict"]["value"]


# ------------------------------------------------------------------- parts
def test_forced_rerun_with_another_config_does_not_reuse_its_parts(tmp_path, parts_experiment):
    out = tmp_path / "r"
    assert value(run_experiment("zz-parts", {"x": 1}, out_dir=out)) == 1
    # the bug: a forced run of x=6 into the same directory returned x=1's part
    assert value(run_experiment("zz-parts", {"x": 6}, out_dir=out, force=True)) == 6
    assert CALLS == [1, 6]
    # a part of the same config is still reused (resume): x=6 again, summary removed
    (out / "summary.json").unlink()
    assert value(run_experiment("zz-parts", {"x": 6}, out_dir=out)) == 6
    assert CALLS == [1, 6]


def test_a_part_is_read_only_under_the_identity_it_was_saved_with(tmp_path):
    a, b = RunDir(tmp_path, config_hash="aaaa"), RunDir(tmp_path, config_hash="bbbb")
    a.save_part("k", {"v": 1})
    assert a.part("k") == {"v": 1} and b.part("k") is None
    # an explicit, narrower identity (a hash of the settings the part depends on)
    b.save_part("k", {"v": 2}, identity="train-1")
    assert a.part("k", identity="train-1") == {"v": 2} and b.part("k") is None
    # a part without an identity (written by an older rankbias) is never trusted
    (tmp_path / "parts" / "old.json").write_text(json.dumps({"v": 3}))
    assert a.part("old") is None
    with pytest.raises(ConfigError, match="identity"):
        RunDir(tmp_path).part("k")  # nothing says which config this is


# ------------------------------------------------------ summary and config
def test_a_summary_without_the_keys_of_a_complete_run_is_not_trusted(tmp_path, parts_experiment):
    out = tmp_path / "r"
    first = run_experiment("zz-parts", {"x": 2}, out_dir=out)
    (out / "summary.json").write_text("{}")
    record = {"experiment": "zz-parts", "config": PartsConfig(x=2).to_dict()}
    assert RunDir(out).completed_summary(record) is None
    assert first["config_hash"] == json.loads((out / "config.json").read_text())["hash"]
    assert run_experiment("zz-parts", {"x": 2}, out_dir=out) == first  # rerun, from its part
    # a summary of another config (copied in) is not this run's either
    other = run_experiment("zz-parts", {"x": 3}, out_dir=tmp_path / "o")
    (out / "summary.json").write_bytes((tmp_path / "o" / "summary.json").read_bytes())
    assert RunDir(out).completed_summary(record) is None
    assert run_experiment("zz-parts", {"x": 2}, out_dir=out) == first != other


def test_a_config_json_that_does_not_match_its_hash_is_refused(tmp_path, parts_experiment, capsys):
    from rankbias.cli import main

    out = tmp_path / "r"
    run_experiment("zz-parts", {"x": 2}, out_dir=out)
    stored = json.loads((out / "config.json").read_text())
    stored["config"]["x"] = 7.0  # edited by hand, hash left as it was
    (out / "config.json").write_text(json.dumps(stored))
    record = {"experiment": "zz-parts", "config": PartsConfig(x=2).to_dict()}
    assert RunDir(out).completed_summary(record) is None
    with pytest.raises(LoadError, match=r"config.json.*does not match its hash"):
        run_experiment("zz-parts", {"x": 2}, out_dir=out)
    assert main(["run", "zz-parts", "--set", "x=2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert value(run_experiment("zz-parts", {"x": 2}, out_dir=out, force=True)) == 2
    assert json.loads((out / "config.json").read_text())["config"]["x"] == 2


def test_an_interrupted_forced_rerun_leaves_no_stale_summary(tmp_path, parts_experiment):
    out = tmp_path / "r"
    run_experiment("zz-parts", {"x": 1}, out_dir=out)
    with pytest.raises(RuntimeError, match="unlucky"):
        run_experiment("zz-parts", {"x": 13}, out_dir=out, force=True)
    # config.json now names x=13: x=1's summary must not pass for x=13's
    record = {"experiment": "zz-parts", "config": PartsConfig(x=13).to_dict()}
    assert RunDir(out).completed_summary(record) is None
    with pytest.raises(RuntimeError, match="unlucky"):
        run_experiment("zz-parts", {"x": 13}, out_dir=out)


def test_a_run_directory_in_use_is_refused(tmp_path, parts_experiment):
    out = tmp_path / "r"
    with dir_lock(out, "test"), pytest.raises(ConfigError, match="in use"):
        run_experiment("zz-parts", {"x": 1}, out_dir=out)
    assert value(run_experiment("zz-parts", {"x": 1}, out_dir=out)) == 1  # released


# ------------------------------------------------------------------ sweeps
def rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_a_second_sweep_with_another_grid_is_refused_unless_forced(tmp_path, parts_experiment):
    out = tmp_path / "sw"
    run_sweep("zz-parts", {"x": [1, 2]}, "0", out_dir=out, progress=False)
    before = (out / "results.csv").read_bytes()
    with pytest.raises(ConfigError, match=r"another sweep.*grid.*--force"):
        run_sweep("zz-parts", {"x": [3]}, "0", out_dir=out, progress=False)
    assert (out / "results.csv").read_bytes() == before
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"x": [1, 2]}
    # the same sweep again resumes (nothing recomputed)
    n = len(CALLS)
    assert run_sweep("zz-parts", ["x=1,2"], [0], out_dir=out, progress=False).ok and len(CALLS) == n
    # forced: the directory is the new sweep's, and its results.csv says so
    res = run_sweep("zz-parts", {"x": [3, 1]}, "0", out_dir=out, progress=False, force=True)
    assert [(r["x"], r["verdict.value"]) for r in rows(out)] == [("3", "3.0"), ("1", "1.0")]
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"x": [3, 1]} and res.ok
    assert len(CALLS) == n + 1  # x=1 was shared with the first sweep


GATED = '''
import dataclasses, sys, time
from pathlib import Path
from rankbias.experiments import registry
from rankbias.framework.config import Config

@dataclasses.dataclass(frozen=True)
class GateConfig(Config):
    x: float = 1.0
    """A value."""
    seed: int = 0
    """Seed."""
    gate: str = ""
    """A folder: the run waits for GATE/open (empty: no wait)."""

def run(cfg, run_dir):
    if cfg.gate:
        (Path(cfg.gate) / "started").touch()
        t0 = time.monotonic()
        while not (Path(cfg.gate) / "open").exists():
            if time.monotonic() - t0 > 300:
                raise TimeoutError("the gate was never opened")
            time.sleep(0.01)
    return {"verdict": {"holds": True, "value": cfg.x}}

registry._load_all()
registry.register("zz-gate", description="waits at a gate", config_cls=GateConfig,
                  presets={"quick": {}})(run)
'''
MAIN = """
from rankbias.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def gate_experiment(tmp_path):
    # this process knows it too, for the second sweep; imported from a file, as a user's
    # module would be, so that the registry can read its fields' docstrings
    path = tmp_path / "zz_gate.py"
    path.write_text(GATED)
    spec = importlib.util.spec_from_file_location("zz_gate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zz_gate"] = module  # dataclasses look the class's module up there
    spec.loader.exec_module(module)
    yield
    registry.unregister("zz-gate")
    sys.modules.pop("zz_gate", None)


def test_two_sweeps_at_once_into_one_directory(tmp_path, gate_experiment):
    script, gate, out = tmp_path / "gated.py", tmp_path / "gate", tmp_path / "sw"
    script.write_text(GATED + MAIN)
    gate.mkdir()
    cmd = [sys.executable, str(script), "sweep", "zz-gate", "--grid", "x=1,2", "--set", f"gate={gate}",
           "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (gate / "started").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() - t0 < 120, "the first sweep never started a point"
            time.sleep(0.02)
        # while the first process holds the directory, a second sweep (this process) is
        # refused at once, whatever its grid; on the old code it ran and rewrote both files
        for grid, over in (({"x": [3]}, {}), ({"x": [1, 2]}, {"gate": str(gate)})):  # another, the same
            with pytest.raises(ConfigError, match="in use by another sweep"):
                run_sweep("zz-gate", grid, overrides=over, out_dir=out, progress=False)
        (gate / "open").touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert [(r["x"], r["status"]) for r in rows(out)] == [("1", "done"), ("2", "done")]
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"x": [1, 2]}


# ----------------------------------------------------------- analyze --out
def test_analyze_checks_out_before_loading_or_computing(tmp_path, monkeypatch, capsys):
    import rankbias.analysis.rank_table as report_mod
    import rankbias.io as io_mod
    from rankbias.cli import main

    called = []

    def spy(name):
        def f(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} ran before --out was checked")
        return f

    monkeypatch.setattr(io_mod, "load_model", spy("load_model"))
    monkeypatch.setattr(report_mod, "rank_report", spy("rank_report"))
    (tmp_path / "file").write_text("a regular file")
    bad = tmp_path / "file" / "sub"
    assert main(["analyze", "torchvision:resnet18", "--data", "digits", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankbias: error: ") and str(tmp_path / "file") in err and err.count("\n") == 1
    assert called == [] and not bad.exists()


def test_config_hash_is_the_record_hash(tmp_path, parts_experiment):
    """config.json's hash is config_hash of its experiment and config, which the check recomputes."""
    run_experiment("zz-parts", {"x": 5}, out_dir=tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["hash"] == config_hash({"experiment": stored["experiment"], "config": stored["config"]})
