"""Sweeps (grid x seeds, resume, failures, backends) and `reproduce` with its report."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankbias.experiments import registry
from rankbias.framework.config import Config, ConfigError
from rankbias.plan_runner import reproduce
from rankbias.sweep import (
    MissingDependency,
    expand_grid,
    flatten_summary,
    parse_grid,
    parse_seeds,
    run_sweep,
    seed_field,
)

TINY = {"draws": 40, "depths": [1, 2, 4], "network": "linear"}  # the linear maps only: 4x faster


# --------------------------------------------------------- test experiments
@dataclasses.dataclass(frozen=True)
class ToyConfig(Config):
    x: float = 1.0
    """A value; x == 13 raises inside the run (a runtime failure, not a config error)."""
    scale: int = 1
    """Must be >= 1 (validated)."""
    seed: int = 0
    """Seed."""

    def validate(self) -> None:
        self._require(self.scale >= 1, "scale", "an int >= 1")


@dataclasses.dataclass(frozen=True)
class NoSeedConfig(Config):
    x: float = 1.0
    """A value."""


@dataclasses.dataclass(frozen=True)
class BatchedConfig(Config):
    x: float = 1.0
    """A value."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    """Seeds, trained as one batch."""


def batched_run(cfg: BatchedConfig, run) -> dict:
    return {"verdict": {"holds": True, "n_seeds": len(cfg.seeds), "seed_sum": sum(cfg.seeds) * cfg.x}}


def toy_run(cfg: ToyConfig, run) -> dict:
    if cfg.x == 13:
        raise RuntimeError("unlucky x=13")
    value = cfg.x * cfg.scale + cfg.seed
    run.write_csv("metrics.csv", [{"step": 0, "value": value}])
    return {"per_x": [{"x": cfg.x, "value": value}], "verdict": {"holds": value < 10, "value": value}}


@pytest.fixture
def toy_experiments():
    registry._load_all()
    registry.register("zz-toy", description="toy", config_cls=ToyConfig,
                      presets={"quick": {}, "paper": {"scale": 2}}, claim="value < 10")(toy_run)
    registry.register("zz-toy-fails", description="always fails", config_cls=NoSeedConfig,
                      presets={"quick": {}}, claim="never checked")(
        lambda cfg, run: (_ for _ in ()).throw(ValueError("this experiment is broken")))
    registry.register("zz-toy-batched", description="seeds list", config_cls=BatchedConfig,
                      presets={"quick": {}}, claim="")(batched_run)
    yield
    registry.unregister("zz-toy-batched")
    registry.unregister("zz-toy")
    registry.unregister("zz-toy-fails")


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def file_stamp(path: Path) -> tuple[int, int]:
    """Inode and mtime: an atomic rewrite makes a new inode even within one mtime tick."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------- parsing
def test_parse_grid_values_and_errors():
    g = parse_grid(["n=8,16", "init=normal,uniform", "depths=[1,2],[1,2,4]", "lr=1e-3,0.5", "flag=true"])
    assert g == {"n": [8, 16], "init": ["normal", "uniform"], "depths": [[1, 2], [1, 2, 4]],
                 "lr": [0.001, 0.5], "flag": [True]}
    assert parse_grid({"n": 8, "m": (1, 2)}) == {"n": [8], "m": [1, 2]}
    for bad, match in [(["n"], "key=v1,v2"), (["n="], "non-empty"), (["n=1,,2"], "non-empty"),
                       (["n=1", "n=2"], "given twice"), (["n=1,1"], "repeats a value")]:
        with pytest.raises(ConfigError, match=match):
            parse_grid(bad)


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds(3) == [3] and parse_seeds(range(2)) == [0, 1] and parse_seeds(None) is None
    for bad, match in [("4-1", "empty"), ("a", "cannot read 'a'"), ("1,1", "repeats"), ([-1], "ints >= 0"),
                       ("", "cannot read")]:
        with pytest.raises(ConfigError, match=match):
            parse_seeds(bad)


def test_seed_field_rule(toy_experiments):
    from rankbias.experiments.depth_rank_init import DepthRankInitConfig

    @dataclasses.dataclass(frozen=True)
    class Batched(Config):
        seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
        """Seeds."""

    assert seed_field(DepthRankInitConfig) == "seed"
    assert seed_field(Batched) == "seeds"
    assert seed_field(NoSeedConfig) is None
    pts = expand_grid("zz-toy", {"x": [1, 2]}, "0-2")
    assert [(p.settings["x"], p.seed) for p in pts] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(p.overrides["seed"] == p.seed for p in pts)
    assert len({p.key for p in pts}) == 6  # one run directory per config
    with pytest.raises(ConfigError, match="zz-toy-fails has no seed field"):
        expand_grid("zz-toy-fails", {"x": [1]}, "0-1")
    with pytest.raises(ConfigError, match="either with --seeds or with --grid seed"):
        expand_grid("zz-toy", {"seed": [1, 2]}, "0-1")
    with pytest.raises(ConfigError, match=r"zz-toy: unknown key\(s\) 'nope'; accepted keys: x, scale, seed"):
        expand_grid("zz-toy", {"nope": [1]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'sclae' \(did you mean 'scale'\?\)"):
        expand_grid("zz-toy", {"x": [1]}, overrides={"sclae": 2})
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'; accepted: quick, paper"):
        expand_grid("zz-toy", {"x": [1]}, preset="huge")
    with pytest.raises(ConfigError, match=r"unknown preset 'quik' \(did you mean 'quick'\?\)"):
        expand_grid("zz-toy", {"x": [1]}, preset="quik")


def test_flatten_summary():
    s = {"experiment": "e", "per_depth": [{"depth": 1, "median": 2.0}, {"depth": 4, "median": 1.5}],
         "verdict": {"holds": True, "by": {"a": 1}}, "curve": list(range(40)), "short": [1, 2],
         "per_other": [{"k": 1}, {"k": 2}], "name": "x"}
    assert flatten_summary(s) == {
        "per_depth[depth=1].median": 2.0, "per_depth[depth=4].median": 1.5,
        "verdict.holds": True, "verdict.by.a": 1, "short[0]": 1, "short[1]": 2,
        "per_other[0].k": 1, "per_other[1].k": 2, "name": "x",
    }


def test_seeds_list_experiment_split_or_batched(tmp_path, toy_experiments):
    split = run_sweep("zz-toy-batched", {"x": [1, 2]}, "0-2", out_dir=tmp_path / "s", progress=False)
    assert [(r["x"], r["seed"], r["verdict.n_seeds"], r["verdict.seed_sum"]) for r in split.rows] == [
        (1, 0, 1, 0), (1, 1, 1, 1), (1, 2, 1, 2), (2, 0, 1, 0), (2, 1, 1, 2), (2, 2, 1, 4)]
    batched = run_sweep("zz-toy-batched", {"x": [1, 2]}, "0-2", out_dir=tmp_path / "b", batch_seeds=True,
                        progress=False)
    assert [(r["x"], r["seeds"], r["verdict.n_seeds"], r["verdict.seed_sum"]) for r in batched.rows] == [
        (1, "[0, 1, 2]", 3, 3), (2, "[0, 1, 2]", 3, 6)]
    with pytest.raises(ConfigError, match="batched seeds need a `seeds` list field; zz-toy has seed"):
        run_sweep("zz-toy", {"x": [1]}, "0-1", batch_seeds=True, out_dir=tmp_path / "x")


# ------------------------------------------------------------------ sweeps
def test_sweep_rows_resume_and_failures(tmp_path, toy_experiments):
    out = tmp_path / "sw"
    res = run_sweep("zz-toy", ["x=1,13,4", "scale=1,0"], "0-1", out_dir=out, progress=False, skip_invalid=True)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 3 * 2 * 2 == len(res.rows)
    assert [(r["x"], r["scale"], r["seed"]) for r in rows[:4]] == [
        ("1", "1", "0"), ("1", "1", "1"), ("1", "0", "0"), ("1", "0", "1")]
    by = {(float(r["x"]), int(r["scale"]), int(r["seed"])): r for r in rows}
    assert res.counts == {"done": 4, "failed": 2, "invalid": 6}
    # summaries flattened into the row
    assert by[(4, 1, 1)]["status"] == "done" and float(by[(4, 1, 1)]["verdict.value"]) == 5.0
    assert by[(4, 1, 1)]["verdict.holds"] == "True" and float(by[(4, 1, 1)]["per_x[x=4.0].value"]) == 5.0
    # a runtime failure: recorded with its error and traceback; the others ran
    failed = by[(13, 1, 0)]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: unlucky x=13"
    pdir = out / failed["run_dir"]
    status = json.loads((pdir / "status.json").read_text())
    assert status["status"] == "failed" and status["settings"] == {"x": 13, "scale": 1}
    assert "unlucky x=13" in (pdir / status["traceback_file"]).read_text()
    # an invalid value: fails alone, before compute, with the config error
    bad = by[(1, 0, 0)]
    assert bad["status"] == "invalid" and bad["error"] == "scale: got 0; accepted: an int >= 1"
    assert bad["run_dir"].startswith("points/invalid-")
    assert json.loads((out / bad["run_dir"] / "status.json").read_text())["status"] == "invalid"
    assert not (out / bad["run_dir"] / "config.json").exists()
    assert not res.ok

    # rerun: done points are skipped, failed ones retried, the CSV is identical
    stamps = {r["point"]: file_stamp(out / r["run_dir"] / "summary.json") for r in rows if r["status"] == "done"}
    before = (out / "results.csv").read_bytes()
    run_sweep("zz-toy", ["x=1,13,4", "scale=1,0"], "0-1", out_dir=out, progress=False, skip_invalid=True)
    assert (out / "results.csv").read_bytes() == before
    for point, stamp in stamps.items():
        assert file_stamp(out / "points" / point / "summary.json") == stamp
    timing = read_csv(out / "timing.csv")
    assert sorted(r["status"] for r in timing) == ["failed", "failed"]  # only these were rerun
    assert "wall_time" not in before.decode()


def test_sweep_refuses_invalid_points_before_any_compute(tmp_path, toy_experiments):
    out = tmp_path / "sw"
    with pytest.raises(ConfigError) as info:
        run_sweep("zz-toy", ["x=1,4,7", "scale=1,0,-1"], out_dir=out, progress=False)
    msg = str(info.value)
    assert msg.startswith("6 of 9 sweep points are invalid, nothing was run: ")
    # each distinct error once, with the first point that has it
    assert "scale: got 0; accepted: an int >= 1 (at x=1, scale=0 and 2 more)" in msg
    assert "scale: got -1; accepted: an int >= 1 (at x=1, scale=-1 and 2 more)" in msg
    assert "--skip-invalid" in msg and "\n" not in msg
    assert not out.exists()  # nothing was written, nothing ran


def test_sweep_checks_the_device_of_every_point_before_any_compute(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"1 of 2 sweep points .*CUDA is not available .*at device='cuda'"):
        run_sweep("depth-rank-init", {"device": ["cpu", "cuda"]}, overrides=TINY, out_dir=tmp_path / "d",
                  progress=False)
    assert not (tmp_path / "d").exists()


def test_sweep_figure_per_swept_key(tmp_path):
    res = run_sweep("depth-rank-init", {"n": [6, 9], "init": ["normal", "uniform"]}, "0-1",
                    overrides=TINY, out_dir=tmp_path, progress=False)
    assert res.ok and len(res.rows) == 8
    assert [p.name for p in res.figures] == ["sweep_n.png", "sweep_init.png"]
    for p in res.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a process pool gives the same aggregate as the in-process run
    pool = run_sweep("depth-rank-init", {"n": [6, 9], "init": ["normal", "uniform"]}, "0-1",
                     overrides=TINY, out_dir=tmp_path / "pool", workers=2, progress=False)
    assert pool.ok and (tmp_path / "pool" / "results.csv").read_bytes() == res.results_csv.read_bytes()
    with pytest.raises(ConfigError, match="not columns of results.csv; accepted: .*verdict.holds"):
        run_sweep("depth-rank-init", {"n": [6, 9], "init": ["normal", "uniform"]}, "0-1", overrides=TINY,
                  out_dir=tmp_path, progress=False, metrics=["nope"])  # the same sweep: resumed, no compute


def test_ray_backend_missing_says_how_to_install(monkeypatch, tmp_path, capsys):
    from rankbias import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'rankbias\[ray\]'"):
        run_sweep("depth-rank-init", {"n": [6]}, backend="ray", overrides=TINY, out_dir=tmp_path)
    assert not (tmp_path / "points").exists()
    assert cli.main(["sweep", "depth-rank-init", "--grid", "n=6", "--backend", "ray", "--out", str(tmp_path)]) == 2
    assert "pip install 'rankbias[ray]'" in capsys.readouterr().err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rankbias.cli", *args]


# A sweep in a subprocess whose third point waits at a gate the test controls: the
# test interrupts it only once the first two points are complete and the third has
# started, so where the signal lands does not depend on how loaded the machine is.
GATED_SCRIPT = '''
import dataclasses, sys, time
from pathlib import Path

from rankbias.experiments import registry
from rankbias.framework.config import Config


@dataclasses.dataclass(frozen=True)
class GatedConfig(Config):
    x: int = 0
    """The point's value."""
    block: int = -1
    """The x that waits until the file GATE/open exists."""
    gate: str = ""
    """The directory the test controls."""
    seed: int = 0
    """Seed."""


def run(cfg, run_dir):
    if cfg.x == cfg.block:
        gate = Path(cfg.gate)
        (gate / f"started-{cfg.x}-{cfg.seed}").touch()
        guard = time.monotonic() + 900  # only so that a broken test cannot hang CI
        while not (gate / "open").exists():
            if time.monotonic() > guard:
                raise TimeoutError("the gate was never opened")
            time.sleep(0.01)
    value = 10 * cfg.x + cfg.seed
    run_dir.write_csv("metrics.csv", [{"step": 0, "value": value}])
    return {"verdict": {"holds": True, "value": value}}


registry._load_all()
registry.register("zz-gated", description="waits at a gate", config_cls=GatedConfig,
                  presets={"quick": {}}, claim="")(run)

if __name__ == "__main__":
    from rankbias.cli import main

    sys.exit(main(sys.argv[1:]))
'''

HANG_GUARD_S = 900  # generous: these only stop a broken test from hanging CI


@pytest.fixture
def gated(tmp_path):
    """(command for a gated sweep into DIR, the gate directory)."""
    script = tmp_path / "gated_sweep.py"
    script.write_text(GATED_SCRIPT)
    gate = tmp_path / "gate"
    gate.mkdir()

    def cmd(out: Path) -> list[str]:
        return [sys.executable, str(script), "sweep", "zz-gated", "--grid", "x=1,2,3,4", "--seeds", "0",
                "--set", "block=3", "--set", f"gate={gate}", "--out", str(out)]

    return cmd, gate


def start_and_wait_at_gate(cmd: list[str], out: Path, gate: Path) -> subprocess.Popen:
    # SIGINT back to its default in the child: a shell starts background jobs with it
    # ignored, and Python then never raises KeyboardInterrupt (the Ctrl-C test would hang)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    guard = time.monotonic() + HANG_GUARD_S
    while not (gate / "started-3-0").exists():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before its third point started: {proc.stderr.read()}")
        assert time.monotonic() < guard, "the third point never started"
        time.sleep(0.02)
    # points run in grid order in one process: the first two are complete, the rest not
    assert len(list(out.glob("points/*/summary.json"))) == 2
    return proc


def test_sweep_killed_with_sigkill_resumes_identically(tmp_path, gated):
    cmd, gate = gated
    out = tmp_path / "killed"
    proc = start_and_wait_at_gate(cmd(out), out, gate)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)
    done_before = {p.parent.name: file_stamp(p) for p in out.glob("points/*/summary.json")}
    assert len(done_before) == 2
    statuses = sorted(json.loads(p.read_text())["status"] for p in out.glob("points/*/status.json"))
    assert statuses == ["done", "done", "running"]  # the killed point is left marked running

    (gate / "open").touch()
    r = subprocess.run(cmd(out), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref"
    r = subprocess.run(cmd(ref), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    assert [row["status"] for row in read_csv(out / "results.csv")] == ["done"] * 4
    for point, stamp in done_before.items():  # finished points were not recomputed
        assert file_stamp(out / "points" / point / "summary.json") == stamp


def test_sweep_interrupted_by_ctrl_c_keeps_finished_results(tmp_path, gated):
    cmd, gate = gated
    out = tmp_path / "int"
    proc = start_and_wait_at_gate(cmd(out), out, gate)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err
    assert "rankbias: interrupted" in err and "Traceback" not in err
    rows = read_csv(out / "results.csv")
    assert [(r["x"], r["status"]) for r in rows] == [("1", "done"), ("2", "done"), ("3", "pending"),
                                                     ("4", "pending")]
    assert [r["verdict.value"] for r in rows[:2]] == ["10", "20"]


# --------------------------------------------------------------------- ray
@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_local_and_ray_backends_give_identical_results(tmp_path, ray_instance):
    grid = {"n": [6, 9], "init": ["normal", "uniform"]}
    spec = dict(overrides={**TINY, "n": 6}, progress=False)
    local = run_sweep("depth-rank-init", grid, "0-1", out_dir=tmp_path / "local", **spec)
    viaray = run_sweep("depth-rank-init", {**grid, "draws": [40, 1]}, "0-1", out_dir=tmp_path / "ray",
                       backend="ray", skip_invalid=True, **spec)
    assert local.ok and viaray.counts == {"done": 8, "invalid": 8}
    # the ray sweep has an extra axis (draws=1 is invalid): its valid rows must equal the local ones
    ray_rows = [r for r in read_csv(tmp_path / "ray" / "results.csv") if r["status"] == "done"]
    local_rows = read_csv(tmp_path / "local" / "results.csv")
    for r in ray_rows:
        assert r.pop("draws") == "40"
    assert ray_rows == local_rows
    # the files a ray task wrote on the worker arrived in the point's run directory
    for r in ray_rows:
        d = tmp_path / "ray" / r["run_dir"]
        for f in ("config.json", "summary.json", "metrics.csv", "report.md", "figures/entropy_rank_by_depth.png"):
            assert (d / f).exists(), f
        assert (d / "summary.json").read_bytes() == (tmp_path / "local" / r["run_dir"] / "summary.json").read_bytes()


# --------------------------------------------------------------- reproduce
def test_reproduce_report_with_verdicts_figures_and_failures(tmp_path, toy_experiments):
    out = tmp_path / "rep"
    res = reproduce("quick", out, only=["depth-rank-init", "zz-toy", "zz-toy-fails"],
                    overrides={"depth-rank-init": {"n": 8, **TINY}, "zz-toy": {"x": 20}}, progress=False)
    by = {e.name: e for e in res.entries}
    assert set(by) == set(registry.list_experiments())  # every registered claim is in the report
    assert by["depth-rank-init"].verdict == "holds"
    assert by["zz-toy"].verdict == "does not hold"
    assert by["zz-toy-fails"].verdict == "failed"
    assert "this experiment is broken" in by["zz-toy-fails"].error
    assert res.failed == ["zz-toy-fails"]
    others = [e for n, e in by.items() if n not in ("depth-rank-init", "zz-toy", "zz-toy-fails")]
    assert all(e.verdict == "not run" for e in others)

    html = res.report_html.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    from rankbias.experiments.depth_rank_init import CLAIM

    assert CLAIM.split(":")[0] in html and ">holds<" in html and ">does not hold<" in html
    assert "this experiment is broken" in html and "Traceback" in html
    fig = next((Path(by["depth-rank-init"].run_dir) / "figures").glob("*.png"))
    assert f"data:image/png;base64,{base64.b64encode(fig.read_bytes()).decode()}" in html
    assert "src='figures" not in html and "<img alt='entropy_rank_by_depth'" in html  # nothing external
    md = res.report_md.read_text()
    assert "## depth-rank-init: holds" in md and "median_by_depth.4" in md and "wall time" in md
    assert "Environment" in md and "torch" in md
    assert (out / os.path.relpath(fig, out)).exists() and os.path.relpath(fig, out) in md

    # rerun: the completed experiments are cached, not recomputed
    summ = Path(by["depth-rank-init"].run_dir) / "summary.json"
    stamp = file_stamp(summ)
    res2 = reproduce("quick", out, only=["depth-rank-init"], overrides={"depth-rank-init": {"n": 8, **TINY}},
                     progress=False)
    assert file_stamp(summ) == stamp and res2.entries[0].cached is True
    with pytest.raises(ConfigError, match="--only: unknown experiment"):
        reproduce("quick", out, only=["nope"])


def test_reproduce_cli(tmp_path):
    r = subprocess.run(_cli("reproduce", "--only", "depth-rank-init", "--out", str(tmp_path),
                            "--set", "depth-rank-init:n=6", "--set", "depth-rank-init:draws=20",
                            "--set", "depth-rank-init:depths=1,3"),
                       capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    assert "depth-rank-init" in r.stdout and "holds" in r.stdout
    assert "data:image/png;base64," in (tmp_path / "report" / "index.html").read_text()


def test_reproduce_preset_table_says_what_runs(tmp_path, toy_experiments, monkeypatch):
    from rankbias.plans import ALL, REPRODUCE_PRESETS, Plan, Preset, preset_named

    monkeypatch.setitem(REPRODUCE_PRESETS, "zz", Preset(plans={"zz-toy": Plan("paper", {"x": 3.0}),
                                                               "zz-toy-fails": Plan("nope")}))
    res = reproduce("zz", tmp_path, progress=False, overrides={"zz-toy": {"seed": 1}})
    by = {e.name: e for e in res.entries}
    toy = by["zz-toy"]
    # the plan's preset (scale=2) and overrides, with --set-style overrides on top
    assert toy.preset == "paper" and toy.config == {"x": 3.0, "scale": 2, "seed": 1}
    assert toy.summary["verdict"]["value"] == 3.0 * 2 + 1 and toy.verdict == "holds"
    assert Path(toy.run_dir).parent == tmp_path / "runs" / "zz-toy"
    assert Path(toy.run_dir).name.startswith("paper-")
    assert by["zz-toy-fails"].status == "not run" and "no 'nope' preset" in by["zz-toy-fails"].reason
    assert by["depth-rank-init"].reason == "not part of the 'zz' reproduction"
    assert preset_named("paper").plans == {ALL: Plan("paper")}
    # a name that is no entry means each experiment's own preset of that name
    assert preset_named("mnist") == Preset(plans={ALL: Plan("mnist")})
    # the record on disk is the entries, field for field (less the summaries)
    recorded = json.loads((tmp_path / "reproduce.json").read_text())["experiments"]
    assert [r["name"] for r in recorded] == [e.name for e in res.entries]
    assert recorded[0].keys() == res.entries[0].record(summary=False).keys()
    # no preset name is special: the table's entry is what runs, "gpu-smoke" included
    monkeypatch.setitem(REPRODUCE_PRESETS, "gpu-smoke", Preset(plans={"zz-toy": Plan("paper")}))
    res = reproduce("gpu-smoke", tmp_path / "g", progress=False)
    assert [e.name for e in res.entries if e.status == "done"] == ["zz-toy"]


def test_every_reproduction_plan_builds_a_valid_config():
    """A plan whose overrides an experiment's config refuses would only show as a failed
    step of `make demo`: every named plan of every preset must validate, and the demo's
    depth experiments stay capped (they train to a plateau only when run on their own)."""
    from rankbias.experiments.registry import build_config, list_experiments
    from rankbias.plans import ALL, DEPTH_DEMO, REPRODUCE_PRESETS, DataFolder

    names = set(list_experiments())
    everything = DataFolder("/packed", "/packed", frozenset({"mnist", "cifar10"}))
    for preset, p in REPRODUCE_PRESETS.items():  # the budgeted plans' steps too (gpu on the CPU)
        for st in p.build(everything) if p.build is not None else []:
            build_config(st.experiment, dict(st.overrides), st.preset)
        for name, plan in (p.plans or {}).items():
            if name == ALL:
                continue
            assert name in names, f"{preset}: no experiment {name!r}"
            cfg = build_config(name, dict(plan.overrides), plan.preset)
            for k, v in plan.overrides.items():
                got = getattr(cfg, k)
                assert (list(got) if isinstance(got, tuple) else got) == v, (preset, name, k)
    for name in ("depth-rank-trained", "depth-rank-optimizers", "depth-rank-init-sensitivity"):
        cfg = build_config(name, dict(REPRODUCE_PRESETS["quick"].plans[name].overrides), "quick")
        assert cfg.steps == DEPTH_DEMO["steps"] <= 2000 and list(cfg.lr_factors) == [1.0]
