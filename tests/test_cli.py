"""The command line's error contract: a mistake the user can fix is one `rankbias: error:`
line and exit status 2, before any compute; a bug keeps its traceback."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys

import pytest
import torch

from rankbias import cli
from rankbias.errors import LoadError, UnsupportedError
from rankbias.experiments import registry
from rankbias.framework.config import Config, ConfigError, did_you_mean

FAST = ["--set", "n=6", "--set", "depths=1,3", "--set", "draws=10"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rankbias: error: "), err
    assert "Traceback" not in err
    return lines[0]


@dataclasses.dataclass(frozen=True)
class BugConfig(Config):
    kind: str = "value"
    """Which exception the run raises."""


def buggy_run(cfg, run):
    raise {"value": ValueError, "key": KeyError, "import": ImportError}[cfg.kind]("an internal bug")


def raises_own_error(cfg, run):
    raise {"load": LoadError, "unsupported": UnsupportedError}[cfg.kind]("what was wrong; accepted: this")


@pytest.fixture
def bug_experiments():
    registry._load_all()
    registry.register("zz-bug", description="raises", config_cls=BugConfig, presets={"quick": {}})(buggy_run)
    registry.register("zz-own-error", description="raises a rankbias error", config_cls=BugConfig,
                      presets={"quick": {}})(raises_own_error)
    yield
    registry.unregister("zz-bug")
    registry.unregister("zz-own-error")


# ------------------------------------------------------------ bugs keep their traceback
@pytest.mark.parametrize("kind, exc", [("value", ValueError), ("key", KeyError), ("import", ImportError)])
def test_a_genuine_internal_error_keeps_its_traceback(kind, exc, bug_experiments, tmp_path):
    with pytest.raises(exc, match="an internal bug"):
        cli.main(["run", "zz-bug", "--set", f"kind={kind}", "--out", str(tmp_path)])


@pytest.mark.parametrize("kind", ["load", "unsupported"])
def test_the_projects_own_errors_are_one_line(kind, bug_experiments, tmp_path, capsys):
    rc, err = run_cli(capsys, "run", "zz-own-error", "--set", f"kind={kind}", "--out", str(tmp_path))
    assert rc == 2
    assert one_error_line(err) == "rankbias: error: what was wrong; accepted: this"


# ------------------------------------------------------------------------ --set
@pytest.mark.parametrize("argv, shown", [
    (["run", "depth-rank-init", "--set", "n"], "--set expects KEY=VALUE (e.g. --set seed=1); got 'n'"),
    (["run", "depth-rank-init", "--set", "=3"], "--set expects KEY=VALUE (e.g. --set seed=1); got '=3'"),
    (["sweep", "depth-rank-init", "--grid", "n=6", "--set", "draws"], "--set expects KEY=VALUE"),
    (["sweep", "depth-rank-init", "--grid", "n"], "--grid expects key=v1,v2,...; got 'n'"),
    (["reproduce", "--set", "depth-rank-init:n"], "--set expects NAME:KEY=VALUE"),
    (["reproduce", "--set", "n=3"], "--set expects NAME:KEY=VALUE"),
])
def test_malformed_set_and_grid(argv, shown, tmp_path, capsys):
    rc, err = run_cli(capsys, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2 and shown in one_error_line(err)
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------- did you mean
def test_did_you_mean():
    assert did_you_mean("dpeths", ["n", "depths", "draws"]) == " (did you mean 'depths'?)"
    assert did_you_mean("zzz", ["n", "depths"]) == ""


@pytest.mark.parametrize("argv, shown", [
    (["run", "depth-rank-int"], "unknown experiment 'depth-rank-int' (did you mean 'depth-rank-init'?)"),
    (["run", "depth-rank-init", "--set", "dpeths=1,2"], "unknown key(s) 'dpeths' (did you mean 'depths'?)"),
    (["run", "depth-rank-init", "--preset", "quik"], "unknown preset 'quik' (did you mean 'quick'?)"),
    (["sweep", "depth-rank-init", "--grid", "dpeths=[1,2]"], "unknown key(s) 'dpeths' (did you mean 'depths'?)"),
    (["sweep", "depth-rnk-init", "--grid", "n=6"], "(did you mean 'depth-rank-init'?)"),
    (["reproduce", "--only", "depth-rank-int"], "(did you mean 'depth-rank-init'?)"),
    (["reproduce", "--preset", "papr"], "(did you mean 'paper'?)"),
])
def test_near_misses_get_a_suggestion(argv, shown, tmp_path, capsys):
    rc, err = run_cli(capsys, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2 and shown in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_unknown_key_from_python_names_the_accepted_keys():
    cls = registry.get_experiment("depth-rank-init").config_cls
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'nn' \(did you mean 'n'\?\); accepted keys: (\w+, )*n, "):
        cls.from_dict({"nn": 3})


# -------------------------------------------------------- every sweep point first
def test_sweep_with_an_invalid_point_runs_nothing(tmp_path, capsys):
    out = tmp_path / "sw"
    rc, err = run_cli(capsys, "sweep", "depth-rank-init", "--grid", "n=6,1", "--grid", "draws=10,20",
                      "--out", str(out))
    line = one_error_line(err)
    assert rc == 2 and "2 of 4 sweep points are invalid, nothing was run: n: got 1;" in line
    assert "(at n=1, draws=10 and 1 more)" in line
    assert not out.exists()


# ----------------------------------------------------------------------- devices
@pytest.mark.parametrize("argv", [
    ["run", "depth-rank-init", *FAST, "--set", "device=cuda"],
    ["sweep", "depth-rank-init", "--grid", "device=cpu,cuda", *FAST],
    ["sweep", "depth-rank-init", "--grid", "n=6,8", "--set", "device=cuda:0"],
])
def test_cuda_without_a_gpu_is_refused_before_compute(argv, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    rc, err = run_cli(capsys, *argv, "--out", str(out))
    assert rc == 2 and "CUDA is not available on this machine; accepted here: 'cpu'" in one_error_line(err)
    assert not list(out.rglob("summary.json"))


def test_reproduce_with_cuda_without_a_gpu_fails_that_experiment_only(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = cli.main(["reproduce", "--only", "depth-rank-init", "--set", "depth-rank-init:device=cuda",
                   "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 1 and "invalid config: device: got 'cuda', but CUDA is not available" in captured.out
    assert not list(tmp_path.rglob("summary.json")) and (tmp_path / "report" / "index.html").exists()


# ------------------------------------------------------- read-only or full --out
def test_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = subprocess.run([sys.executable, "-m", "rankbias.cli", "run", "depth-rank-init", *FAST,
                        "--out", str(tmp_path / "afile" / "run")], capture_output=True, text=True)
    assert r.returncode == 2
    assert one_error_line(r.stderr) == f"rankbias: error: {tmp_path / 'afile' / 'run'}: Not a directory"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only dirs")
def test_read_only_out_directory_for_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = run_cli(capsys, "run", "depth-rank-init", *FAST, "--out", str(ro / "run"))
    finally:
        ro.chmod(0o755)
    assert rc == 2 and "Permission denied" in one_error_line(err)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("argv", [
    ["run", "depth-rank-init", *FAST],
    ["sweep", "depth-rank-init", "--grid", "n=6,8", "--set", "draws=10"],
    ["reproduce", "--only", "depth-rank-init"],
])
def test_read_only_or_full_out_is_one_line_before_compute(code, argv, monkeypatch, tmp_path, capsys):
    import rankbias.framework.runs as runs

    def refuse(path, data):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(runs, "atomic_write_bytes", refuse)
    started = []
    exp = registry.get_experiment("depth-rank-init")
    stand_in = dataclasses.replace(exp, run=lambda *a: started.append(a))
    with registry.registered(stand_in, replace=True):
        rc, err = run_cli(capsys, *argv, "--out", str(tmp_path / "o"))
    assert registry.get_experiment(exp.name) is exp  # the real one is back
    line = one_error_line(err)
    assert rc == 2 and line.endswith(f": {os.strerror(code)}") and str(tmp_path / "o") in line
    assert started == []  # refused before any compute
