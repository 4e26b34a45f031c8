"""The experiment registry: a taken name is refused, and tests register through its public API."""

from __future__ import annotations

import dataclasses
import re

import pytest

from rankbias.errors import InvalidParameterError
from rankbias.experiments import registry
from rankbias.framework.config import Config


@dataclasses.dataclass(frozen=True)
class TinyConfig(Config):
    x: int = 1
    """A number."""


def _run(cfg, run):
    return {"x": cfg.x}


def test_a_second_experiment_under_a_taken_name_is_refused():
    builtin = registry.get_experiment("depth-rank-init")
    with pytest.raises(
        InvalidParameterError,
        match=r"'depth-rank-init' is registered already \(by "
        r"rankbias\.experiments\.depth_rank_init\.run\)",
    ):
        registry.register(
            "depth-rank-init", description="a clash", config_cls=TinyConfig, presets={"quick": {}}
        )(_run)
    # the refusal changed nothing: the built-in one still runs under its name
    assert registry.get_experiment("depth-rank-init") is builtin


def test_registered_adds_for_a_with_block_and_refuses_a_taken_name():
    exp = registry.Experiment("zz-tiny", "tiny", TinyConfig, _run, {"quick": {"x": 3}})
    with registry.registered(exp) as got:
        assert got is exp and registry.get_experiment("zz-tiny") is exp
        assert registry.build_config("zz-tiny").x == 3
        with pytest.raises(InvalidParameterError, match="'zz-tiny' is registered already"):
            with registry.registered(dataclasses.replace(exp, description="again")):
                pass
        assert registry.get_experiment("zz-tiny") is exp  # the refused one did not replace it
    assert "zz-tiny" not in registry.list_experiments()


def test_registered_with_replace_restores_the_original():
    builtin = registry.get_experiment("depth-rank-init")
    stand_in = dataclasses.replace(builtin, run=_run)
    with registry.registered(stand_in, replace=True):
        assert registry.get_experiment("depth-rank-init").run is _run
    assert registry.get_experiment("depth-rank-init") is builtin


def test_registered_restores_even_when_the_block_raises():
    exp = registry.Experiment("zz-tiny-raises", "tiny", TinyConfig, _run, {"quick": {}})
    with pytest.raises(RuntimeError), registry.registered(exp):
        raise RuntimeError("inside")
    assert "zz-tiny-raises" not in registry.list_experiments()


def test_unregister_returns_the_entry_and_refuses_an_unknown_name():
    registry.register(
        "zz-tiny-gone", description="tiny", config_cls=TinyConfig, presets={"quick": {}}
    )(_run)
    exp = registry.unregister("zz-tiny-gone")
    assert exp.name == "zz-tiny-gone" and exp.run is _run
    assert "zz-tiny-gone" not in registry.list_experiments()
    with pytest.raises(InvalidParameterError, match="unregister: no experiment 'zz-tiny-gone'"):
        registry.unregister("zz-tiny-gone")


def test_a_broken_preset_is_refused_at_registration():
    exp = registry.Experiment("zz-tiny-bad", "tiny", TinyConfig, _run, {"quick": {"y": 1}})
    with pytest.raises(InvalidParameterError):
        with registry.registered(exp):
            pass
    assert "zz-tiny-bad" not in registry.list_experiments()


# ---------------------------------------------------------------- the contract
@dataclasses.dataclass(frozen=True)
class UndocumentedConfig(Config):
    x: int = 1


@dataclasses.dataclass(frozen=True)
class MistypedConfig(Config):
    device: int = 0
    """Not a device string."""
    num_threads: float = 1.0
    """Not an int."""


@dataclasses.dataclass(frozen=True)
class BothSeedsConfig(Config):
    seed: int = 0
    """One seed."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """And a list."""


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="zz-undoc", config_cls=UndocumentedConfig), r"field 'x' has no docstring"),
    (dict(name="zz-typed", config_cls=MistypedConfig),
     r"field 'device' is int; the framework reads it as the torch device.*field 'num_threads' is float"),
    (dict(name="zz-seeds", config_cls=BothSeedsConfig), r"fields 'seed' and 'seeds' both exist"),
    (dict(name="zz-nopreset", presets={"paper": {}}), r"lack \['quick'\]"),
    (dict(name="Not_Kebab"), r"not kebab-case"),
    (dict(name="zz-notconfig", config_cls=dict), r"is not a Config dataclass"),
    (dict(name="zz-onearg", run=lambda cfg: {}), r"must take \(config, run_dir\)"),
])
def test_registration_refuses_an_experiment_that_breaks_the_contract(kwargs, match):
    """Each unwritten rule of the old registry is now an error at registration, naming the
    rule; before, such an experiment registered and failed later (a missing report section,
    a device never checked, a thread count ignored)."""
    args = dict(name="zz-ok", config_cls=TinyConfig, presets={"quick": {}}, run=_run)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        registry.register(args["name"], description="d", config_cls=args["config_cls"],
                          presets=args["presets"])(args["run"])
    assert args["name"] not in registry.list_experiments()


def test_every_builtin_experiment_keeps_the_contract_and_has_a_paper_preset():
    for name, exp in registry.list_experiments().items():
        registry.check_contract(exp)
        assert {"quick", "smoke", "paper"} <= set(exp.presets), name


def test_a_builtin_experiment_without_a_smoke_preset_is_refused():
    """The one convention for test-sized configs (tests/test_smoke_presets.py runs every
    experiment's "smoke"): an experiment of rankbias.experiments without one fails at
    registration; one registered from elsewhere (a test's toy) needs only "quick"."""
    def run(cfg, run_dir):
        return {}

    run.__module__ = "rankbias.experiments.zz_new"  # as if defined in a new experiment module
    for presets, missing in [({"quick": {}, "paper": {}}, "['smoke']"),
                             ({"quick": {}}, "['smoke', 'paper']")]:
        with pytest.raises(InvalidParameterError, match=r"lack " + re.escape(missing) + r" .*'smoke', seconds"):
            registry.register("zz-no-smoke", description="d", config_cls=TinyConfig, presets=presets)(run)
    assert "zz-no-smoke" not in registry.list_experiments()
    exp = registry.Experiment("zz-no-smoke", "d", TinyConfig, run, {"quick": {}, "smoke": {}, "paper": {}})
    with registry.registered(exp):
        assert registry.get_experiment("zz-no-smoke") is exp


def test_a_claim_without_a_readable_verdict_fails_the_run(tmp_path):
    """An experiment with a claim whose summary has no verdict would show as "no verdict"
    in every report; the runner refuses it when the run returns."""
    from rankbias.runner import run_experiment

    exp = registry.Experiment("zz-noverdict", "tiny", TinyConfig, _run, {"quick": {}}, claim="x is 1")
    with registry.registered(exp):
        with pytest.raises(InvalidParameterError, match=r"no usable 'verdict'.*'status': one of"):
            run_experiment("zz-noverdict", out_dir=tmp_path / "r")
        ok = dataclasses.replace(exp, run=lambda cfg, run: {"verdict": {"status": "holds", "reason": "x == 1"}})
    with registry.registered(ok):
        assert run_experiment("zz-noverdict", out_dir=tmp_path / "r2")["verdict"]["status"] == "holds"


def test_a_public_module_that_registers_nothing_is_refused():
    """Only a registering module, a part of one (<module>_<part>.py) or a '_' helper may sit
    in experiments/: a module that registers nothing is an experiment missing from every list."""
    run = type("F", (), {"__module__": "pkg.depth_thing", "__call__": _run})()
    exps = [registry.Experiment("a", "d", TinyConfig, run, {"quick": {}})]
    registry._check_modules("pkg", ["depth_thing", "depth_thing_summary"], exps)  # a part of it: fine
    with pytest.raises(InvalidParameterError, match=r"stray\.py register\(s\) no experiment"):
        registry._check_modules("pkg", ["depth_thing", "stray"], exps)
