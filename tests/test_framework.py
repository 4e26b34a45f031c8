import json
import subprocess
import sys

import pytest

import rankbias
from rankbias.framework.config import ConfigError


def test_run_experiment_writes_run_directory_and_is_deterministic(tmp_path):
    over = {"n": 8, "depths": [1, 2, 4], "draws": 50}
    a = rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path / "a")
    b = rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path / "b")
    assert a == b
    for f in ("config.json", "metrics.csv", "summary.json", "report.md", "figures/entropy_rank_by_depth.png"):
        assert (tmp_path / "a" / f).exists(), f
    assert [r["depth"] for r in a["per_depth"]] == [1, 2, 4]
    assert set(a["per_depth"][0]) >= {"depth", "mean", "median", "q05", "q95"}
    assert a["verdict"]["holds"] is True


def test_completed_run_is_not_recomputed(tmp_path):
    over = {"n": 8, "depths": [1, 2], "draws": 20}
    rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path)
    def stamp():  # an atomic rewrite makes a new inode, even within one mtime tick
        st = (tmp_path / "summary.json").stat()
        return st.st_ino, st.st_mtime_ns

    before = stamp()
    rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path)
    assert stamp() == before
    with pytest.raises(ConfigError, match="different config"):
        rankbias.run_experiment("depth-rank-init", {**over, "n": 9}, out_dir=tmp_path)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"nope": 1}, r"unknown key\(s\) 'nope'; accepted keys: .*depths"),
        ({"n": "big"}, r"n: got 'big'.*expected int"),
        ({"init": "laplace"}, r"init: .*one of 'normal', 'uniform'"),
        ({"depths": [4, 2]}, r"depths: .*strictly increasing"),
        ({"draws": 1}, r"draws: got 1; accepted: an int >= 2"),
    ],
)
def test_bad_config_is_a_clear_error_before_compute(over, match, tmp_path):
    with pytest.raises(ConfigError, match=f"(?s){match}"):
        rankbias.run_experiment("depth-rank-init", over, out_dir=tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_unknown_experiment_and_preset():
    with pytest.raises(ConfigError, match="accepted: .*depth-rank-init"):
        rankbias.run_experiment("nope")
    with pytest.raises(ConfigError, match="unknown preset 'huge'; accepted: quick, smoke, paper"):
        rankbias.run_experiment("depth-rank-init", preset="huge")


def test_cli_version_list_run(tmp_path):
    exe = [sys.executable, "-m", "rankbias.cli"]
    out = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert rankbias.__version__ in out
    out = subprocess.run([*exe, "list"], capture_output=True, text=True, check=True).stdout
    assert "depth-rank-init" in out
    r = subprocess.run(
        [*exe, "run", "depth-rank-init", "--set", "n=6", "--set", "depths=1,3", "--set", "draws=10",
         "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(r.stdout)["per_depth"][1]["depth"] == 3
    r = subprocess.run([*exe, "run", "depth-rank-init", "--set", "n=x"], capture_output=True, text=True)
    assert r.returncode == 2 and "n: got 'x'" in r.stderr


def test_importing_measures_pulls_no_plotting_or_cli():
    code = (
        "import sys, rankbias; rankbias.effective_rank([[1.0, 0], [0, 1]]);"
        "bad = [m for m in ('matplotlib', 'rankbias.cli', 'ray', 'pandas', 'transformers',"
        " 'rankbias.experiments') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_device_is_checked_before_compute(tmp_path, monkeypatch):
    import torch

    with pytest.raises(ConfigError, match="device: got 'tpu'; accepted: a torch device string"):
        rankbias.run_experiment("depth-rank-init", {"device": "tpu"}, out_dir=tmp_path)
    # availability is checked where the run executes, not when a config is built
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rankbias.list_experiments()["depth-rank-init"].config_cls.from_dict({"device": "cuda"})
    with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
        rankbias.run_experiment("depth-rank-init", {"device": "cuda"}, out_dir=tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_public_names_have_one_home():
    import rankbias.analysis as analysis
    import rankbias.experiments as experiments
    import rankbias.fit.deep_linear as fit_deep_linear
    import rankbias.models.two_layer_cnn as two_layer_cnn
    import rankbias.sweep as sweep
    from rankbias.runner import run_experiment
    from rankbias.sweep import run_sweep

    assert rankbias.run_experiment is run_experiment and rankbias.run_sweep is run_sweep
    # the shims that kept 0.1.0's old import paths alive are gone (no doc used them)
    assert not hasattr(experiments, "run_experiment")
    assert not hasattr(sweep, "reproduce") and not hasattr(sweep, "ReproduceResult")
    assert not hasattr(two_layer_cnn, "fit_two_layer_cnn") and not hasattr(two_layer_cnn, "CNNFit")
    assert not {"build_arch", "load_model", "load_inputs"} & set(analysis.__all__)
    assert not {"MatrixFitTask", "make_task"} & set(fit_deep_linear.__all__)


def test_the_runner_sets_the_thread_count_and_restores_it(tmp_path):
    import dataclasses

    import torch

    from rankbias.experiments import registry
    from rankbias.framework.config import Config
    from rankbias.runner import run_experiment

    @dataclasses.dataclass(frozen=True)
    class ThreadsConfig(Config):
        num_threads: int | None = None
        """torch threads for the run (None: leave them)."""

    registry._load_all()
    registry.register("zz-threads", description="records its threads", config_cls=ThreadsConfig,
                      presets={"quick": {}})(lambda cfg, run: {"threads": torch.get_num_threads()})
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        assert run_experiment("zz-threads", out_dir=tmp_path / "a")["threads"] == before
        assert run_experiment("zz-threads", {"num_threads": other}, out_dir=tmp_path / "b")["threads"] == other
        assert torch.get_num_threads() == before
        # the explicit argument (a sweep's share of the cores) wins over the field
        s = run_experiment("zz-threads", {"num_threads": 3}, out_dir=tmp_path / "c", threads=other)
        assert s["threads"] == other and torch.get_num_threads() == before
        with pytest.raises(ConfigError, match="threads: got 0; accepted: an int >= 1 or None"):
            run_experiment("zz-threads", out_dir=tmp_path / "d", threads=0)
    finally:
        registry.unregister("zz-threads")
