"""The experiment registry: a taken name is refused, and tests register through its public API;
the GPU plans are assembled from what the experiments declare (``gpu=``), each declaration checked."""

from __future__ import annotations

import dataclasses
import re

import pytest

from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.experiments import registry
from rankbias.framework.config import Config, ConfigError
from rankbias.framework.gpu_declarations import DataFolder, GpuRun, GpuStep
from rankbias.plans import Step, gpu_steps


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


# ---------------------------------------------------------------- the GPU plans' steps
EVERYTHING = DataFolder(None, "/data", frozenset({"mnist", "cifar10"}))


@dataclasses.dataclass(frozen=True)
class GpuToyConfig(Config):
    x: int = 1
    """A number."""
    device: str = "cpu"
    """The torch device."""
    budget_minutes: float | None = None
    """Where it stops."""


def _toy(name="aa-gpu-toy", steps=(), presets=None, config_cls=GpuToyConfig):
    return registry.Experiment(name, "toy", config_cls, _run, presets or {"quick": {}, "big": {"x": 5}},
                               gpu=tuple(steps))


def _without_noise_robustness_steps():
    """noise-robustness standing in without its GPU step: 0.07 (gpu) and 0.18 (gpu-smoke) of
    the budget, which the built-in steps fill to exactly 1, left for a toy."""
    return registry.registered(dataclasses.replace(registry.get_experiment("noise-robustness"), gpu=()),
                               replace=True)


def test_a_registered_experiment_takes_part_in_the_gpu_plans_with_no_other_edit():
    first = GpuStep("aa-toy-first", gpu=GpuRun("big", 0.03, lambda data: {"x": 7}),
                    smoke=GpuRun("quick", 0.08, needs="mnist", if_missing="omit"))
    last = GpuStep("aa-toy-last", gpu=GpuRun("quick", 0.04, needs="cifar10"),
                   smoke=GpuRun("quick", 0.1, lambda data: {"x": len(data.has)}), stops_itself=True)
    builtin = [st.label for st in gpu_steps("gpu", EVERYTHING)]
    with _without_noise_robustness_steps(), registry.registered(_toy(steps=[first, last])):
        steps = gpu_steps("gpu", EVERYTHING)
        # the documented order: child-process steps, then those that stop themselves (each by
        # experiment name, then as declared)
        assert [st.label for st in steps] == ["aa-toy-first", "paper1-mnist", "paper1-cifar10",
                                              "aa-toy-last", "paper2-overparam-cifar"]
        assert steps[0] == Step("aa-toy-first", "aa-gpu-toy", "big", {"device": "cuda", "x": 7}, 0.03)
        assert steps[3] == Step("aa-toy-last", "aa-gpu-toy", "quick", {"device": "cuda"}, 0.04,
                                stops_itself=True)
        no_cifar = gpu_steps("gpu", DataFolder("/p", "/p", frozenset({"mnist"})))
        assert no_cifar[3].skip == "no cifar10 in the data (/p)"  # skipped: reported "not run"
        smoke = {st.label: st for st in gpu_steps("gpu-smoke", EVERYTHING)}
        assert smoke["aa-toy-first"] == Step("aa-toy-first", "aa-gpu-toy", "quick", {}, 0.08)
        assert smoke["aa-toy-last"].overrides == {"x": 2}
        omitted = gpu_steps("gpu-smoke", DataFolder(None, "/data", frozenset()))
        assert "aa-toy-first" not in [st.label for st in omitted]  # if_missing="omit": left out
    assert [st.label for st in gpu_steps("gpu", EVERYTHING)] == builtin


def test_a_plan_whose_declared_shares_sum_above_one_is_refused():
    """The built-in steps fill each budget: one more step is refused when the plan is built,
    even where the data leaves it out of the plan (its share is declared all the same)."""
    extra = GpuStep("aa-toy-extra", gpu=GpuRun("quick", 0.05),
                    smoke=GpuRun("quick", 0.05, needs="cifar10", if_missing="omit"))
    with registry.registered(_toy(steps=[extra])):
        for plan in ("gpu", "gpu-smoke"):
            with pytest.raises(UnsupportedError, match=r"sum to <= 1; got .*'aa-toy-extra': 0\.05.*\(sum 1\.05\)"):
                gpu_steps(plan, DataFolder(None, "/data", frozenset()))
    with pytest.raises(UnsupportedError, match="unknown GPU preset 'gpu-big'; accepted: gpu, gpu-smoke"):
        gpu_steps("gpu-big", EVERYTHING)
    with pytest.raises(InvalidParameterError, match="unknown GPU plan 'gpu-big'; accepted: gpu, gpu-smoke"):
        extra.run_in("gpu-big")


def _step(**kw):
    run = {"gpu": GpuRun("quick", 0.01), "smoke": GpuRun("quick", 0.01)}
    return GpuStep(**{"label": "aa-step", **run, **kw})


@pytest.mark.parametrize("steps, config_cls, match", [
    ([_step(gpu=GpuRun("paper", 0.01))], GpuToyConfig,
     r"GPU step 'aa-step' in plan 'gpu': preset 'paper' is not one of the experiment's \(accepted: quick, big\)"),
    ([_step(smoke=GpuRun("quick", 0.0))], GpuToyConfig, r"in plan 'gpu-smoke': share 0\.0 is not in \(0, 1\]"),
    ([_step(gpu=GpuRun("quick", 1.5))], GpuToyConfig, r"share 1\.5 is not in \(0, 1\]"),
    ([_step(gpu=GpuRun("quick", True))], GpuToyConfig, r"share True is not in \(0, 1\]"),
    ([_step(gpu=GpuRun("quick", "0.1"))], GpuToyConfig, r"share '0\.1' is not in \(0, 1\]"),
    ([_step(gpu=GpuRun("quick", float("nan")))], GpuToyConfig, r"share nan is not in \(0, 1\]"),
    ([_step(gpu=GpuRun("quick", 0.1, needs="imagenet"))], GpuToyConfig,
     r"needs 'imagenet' is no dataset a data folder holds \(accepted: None, cifar10, mnist\)"),
    ([_step(gpu=GpuRun("quick", 0.1, needs="mnist", if_missing="drop"))], GpuToyConfig,
     r"if_missing 'drop' \(accepted: 'skip', 'omit'\)"),
    ([_step(gpu=GpuRun("quick", 0.1, overrides={"x": 2}))], GpuToyConfig, r"overrides \{'x': 2\} is not callable"),
    ([_step(label="Paper_1")], GpuToyConfig, r"GPU step 'Paper_1': label not kebab-case"),
    ([_step(), _step()], GpuToyConfig, r"GPU step 'aa-step': label not kebab-case or not unique"),
    ([_step(stops_itself=True)], TinyConfig,
     r"its GPU steps need a 'device' config field.*stops_itself=True needs a 'budget_minutes' config field"),
    ([_step(stops_itself="yes")], GpuToyConfig,
     r"GPU step 'aa-step': stops_itself 'yes' \(accepted: True, False\)"),
    ([_step(stops_itself=1)], GpuToyConfig, r"stops_itself 1 \(accepted: True, False\)"),
    ([{"label": "aa-step"}], GpuToyConfig, r"GPU step \{'label': 'aa-step'\} is no GpuStep"),
    ([_step(smoke="quick")], GpuToyConfig, r"in plan 'gpu-smoke': 'quick' is no GpuRun"),
    ([_step(gpu=GpuRun("quick", 0.1, lambda data: None))], GpuToyConfig,
     r"GPU step 'aa-step': its overrides in 'gpu' returned None; accepted: a dict"),
])
def test_a_bad_gpu_declaration_is_refused_at_registration(steps, config_cls, match):
    with pytest.raises(InvalidParameterError, match=match):
        registry.register("aa-gpu-bad", description="d", config_cls=config_cls, presets={"quick": {}, "big": {}},
                          gpu=steps)(_run)
    assert "aa-gpu-bad" not in registry.list_experiments()


def test_gpu_overrides_the_config_refuses_and_a_taken_label_are_refused_at_registration():
    typo = _step(smoke=GpuRun("quick", 0.1, lambda data: {"xx": 1}))
    with pytest.raises(InvalidParameterError, match=r"GPU step 'aa-step' in 'gpu-smoke': unknown key\(s\) 'xx'"):
        with registry.registered(_toy(steps=[typo])):
            pass
    clash = _step(label="paper1-mnist")
    with pytest.raises(InvalidParameterError,
                       match=r"GPU step label\(s\) 'paper1-mnist' \(of 'noise-robustness-images'\) taken already"):
        with registry.registered(_toy(steps=[clash])):
            pass
    with pytest.raises(InvalidParameterError, match=r"gpu=GpuStep\(.*\(accepted: a tuple of GpuStep\)"):
        registry.register("aa-gpu-bad", description="d", config_cls=GpuToyConfig, presets={"quick": {}},
                          gpu=_step())(_run)
    assert "aa-gpu-toy" not in registry.list_experiments() and "aa-gpu-bad" not in registry.list_experiments()


def test_a_copy_of_an_experiment_with_gpu_steps_is_told_to_drop_them():
    builtin = registry.get_experiment("noise-robustness")
    with pytest.raises(InvalidParameterError, match=re.escape(
            "taken already; accepted: a label no other step of the GPU plans has (a copy of an "
            "experiment under a new name: dataclasses.replace(exp, name=..., gpu=()))")):
        with registry.registered(dataclasses.replace(builtin, name="aa-my-copy")):
            pass
    with registry.registered(dataclasses.replace(builtin, name="aa-my-copy", gpu=())) as copy:
        assert registry.get_experiment("aa-my-copy") is copy  # the fix the message gives works
    assert "aa-my-copy" not in registry.list_experiments()


def test_a_bad_gpu_override_value_is_refused_naming_the_experiment_step_and_plan():
    bad = _step(smoke=GpuRun("quick", 0.1, lambda data: {"x": [1, 2]}))
    with pytest.raises(ConfigError, match=r"^experiment 'aa-gpu-toy', GPU step 'aa-step' in 'gpu-smoke': x"):
        with registry.registered(_toy(steps=[bad])):
            pass
    assert "aa-gpu-toy" not in registry.list_experiments()


def test_an_overrides_function_that_raises_is_refused_naming_the_experiment_step_and_data():
    def broken(data):
        return {"x": {"cifar10": 1}[next(iter(data.has))]}  # StopIteration without data

    def refusing(data):
        raise InvalidParameterError("no such thing")

    for fn, error in ((broken, "StopIteration"), (refusing, "InvalidParameterError: no such thing")):
        with pytest.raises(InvalidParameterError, match=re.escape(
                f"experiment 'aa-gpu-toy': GPU step 'aa-step': its overrides in 'gpu' raised {error}")) as e:
            with registry.registered(_toy(steps=[_step(gpu=GpuRun("quick", 0.1, fn))])):
                pass
        assert "data: DataFolder(packed=None, root='/data'" in str(e.value)
    assert "aa-gpu-toy" not in registry.list_experiments()


def test_the_plan_datasets_are_what_a_data_root_is_searched_for():
    from rankbias.framework.gpu_declarations import PLAN_DATASETS
    from rankbias.plans import DATA_ROOT_LAYOUTS

    assert {name for name, _ in DATA_ROOT_LAYOUTS} == set(PLAN_DATASETS)
