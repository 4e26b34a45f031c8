"""A config that holds another config whole (issue 19, spot 3): overparam-cifar's ``train``
(:class:`rankbias.fit.fast_classify.FastTrainSettings`), reached from ``--set train.lr=0.1``,
from JSON and from a run's config.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rankbias.framework.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class _Inner(Config):
    lr: float = 0.1
    """Learning rate."""
    epochs: int = 3
    """Epochs."""

    def validate(self) -> None:
        self._require(self.lr > 0, "lr", "a number > 0")


@dataclasses.dataclass(frozen=True)
class _Outer(Config):
    name: str = "a"
    """A name."""
    train: _Inner = dataclasses.field(default_factory=_Inner)
    """The inner settings."""


def test_nested_values_merge_key_by_key_and_round_trip_through_json():
    assert _Outer().train == _Inner(0.1, 3)
    assert _Outer.from_dict({"train.lr": 0.5}).train == _Inner(0.5, 3)
    assert _Outer.from_dict({"train": {"epochs": 7}}).train == _Inner(0.1, 7)
    assert _Outer(train='{"lr": 0.25}').train == _Inner(0.25, 3)  # JSON text, as --set train={...}
    # a later layer that sets one nested key keeps the others of the layers below
    assert _Outer.merged({"train": {"lr": 0.5, "epochs": 9}}, {"train.lr": 0.7}) == {
        "train": {"lr": 0.7, "epochs": 9}
    }
    assert _Outer.merged({"train": {"lr": 0.5, "epochs": 9}}, {"train": {"lr": 0.7}}) == {
        "train": {"lr": 0.7, "epochs": 9}
    }
    cfg = _Outer.from_dict({"name": "b", "train": {"lr": 0.5, "epochs": 9}})
    assert cfg.to_dict() == {"name": "b", "train": {"lr": 0.5, "epochs": 9}}
    assert _Outer.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(**{"train.epochs": 2}).train == _Inner(0.5, 2)
    assert "train.lr (float, default 0.1): Learning rate." in _Outer.accepted()


def test_nested_errors_name_the_dotted_key():
    with pytest.raises(ConfigError, match=r"'train\.lrr' \(did you mean 'train\.lr'\?\)"):
        _Outer.from_dict({"train.lrr": 1.0})
    with pytest.raises(ConfigError, match=r"'train\.lrr'"):
        _Outer.from_dict({"train": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"^train\.lr: got -1\.0; accepted: a number > 0"):
        _Outer.from_dict({"train.lr": -1.0})
    with pytest.raises(ConfigError, match=r"^train\.epochs: got 'x'"):
        _Outer(train={"epochs": "x"})
    with pytest.raises(
        ConfigError, match=r"^train: got 5 \(int\); expected a mapping of _Inner's keys"
    ):
        _Outer(train=5)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'name\.x'"):  # not a nested field
        _Outer.from_dict({"name.x": 1})


# the training identity of each preset under the flat config, before the settings were grouped
# (computed with the code of commit 51b92a2): a run's saved depths keep being reused
OLD_TRAINING_KEYS = {"cpu": "948d1e3e71cb", "gpu": "f8489ddeb6bb", "smoke": "ac1d60e0e08b"}


@pytest.mark.parametrize("preset", sorted(OLD_TRAINING_KEYS))
def test_overparam_cifar_presets_train_as_before(preset):
    from rankbias.experiments.overparam_cifar import training_key
    from rankbias.experiments.registry import build_config
    from rankbias.fit.fast_classify import FastTrainSettings

    cfg = build_config("overparam-cifar", {}, preset)
    assert isinstance(cfg.train, FastTrainSettings)
    assert training_key(cfg) == OLD_TRAINING_KEYS[preset]


def test_overparam_cifar_holds_the_settings_whole():
    from rankbias.cli import _parse_sets
    from rankbias.experiments.overparam_cifar import OverparamCifarConfig, resolved_settings
    from rankbias.experiments.registry import build_config
    from rankbias.fit.fast_classify import FastTrainSettings

    # one default per field, the experiment's (FastTrainSettings had nesterov False, warm-up 1)
    assert OverparamCifarConfig().train == FastTrainSettings()
    assert (FastTrainSettings().nesterov, FastTrainSettings().warmup_epochs) == (True, 2.0)
    fields = {f.name for f in dataclasses.fields(OverparamCifarConfig)}
    assert not fields & {f.name for f in dataclasses.fields(FastTrainSettings)}  # no copied field
    cpu = build_config("overparam-cifar", {}, "cpu")
    s = resolved_settings(cpu)
    assert (
        s.epochs,
        s.batch_size,
        s.lr,
        s.nesterov,
        s.warmup_epochs,
        s.crop_padding,
        s.hflip,
        s.bf16,
    ) == (60, 100, 0.1, True, 1.0, 0, False, False)
    assert (
        resolved_settings(build_config("overparam-cifar", {}, "smoke")).crop_padding == 1
    )  # digits
    for sets in (["train.lr=0.3"], ['train={"lr": 0.3}']):
        cfg = build_config("overparam-cifar", _parse_sets(sets), "cpu")
        assert cfg.train == dataclasses.replace(cpu.train, lr=0.3), sets
    # a sweep axis over a nested key (--grid train.lr=0.1,0.3)
    from rankbias.sweep.grid import expand_grid, parse_grid

    points = expand_grid("overparam-cifar", parse_grid(["train.lr=0.1,0.3"]), preset="cpu")
    assert [(p.config["train"]["lr"], p.config["train"]["epochs"], p.error) for p in points] == [
        (0.1, 60, None),
        (0.3, 60, None),
    ]
    # a run's config.json builds the same config again
    assert OverparamCifarConfig.from_dict(json.loads(json.dumps(cpu.to_dict()))) == cpu
    with pytest.raises(ConfigError, match=r"'train\.nesterovv'"):
        build_config("overparam-cifar", {"train.nesterovv": True}, "cpu")


def test_train_group_refuses_unresolved_augmentation():
    import torch

    from rankbias.errors import InvalidParameterError
    from rankbias.fit.fast_classify import DeviceImages, FastTrainSettings, train_group

    data = DeviceImages(
        torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), "cpu"
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    for settings, key in (
        (FastTrainSettings(hflip=False), "crop_padding"),
        (FastTrainSettings(crop_padding=0), "hflip"),
    ):
        with pytest.raises(InvalidParameterError, match=f"settings.{key}: got None"):
            train_group([model], [0], data, data, settings, progress=False)
