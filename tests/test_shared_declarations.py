"""Ideas declared once and shared: docstring sections, a process-wide setting changed for
a block, the framework's config fields, a function's parameters reused by its list form."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankbias.analysis.tensors import iter_measure_tensors, measure_tensors
from rankbias.data import packed
from rankbias.errors import InvalidParameterError, UnsupportedError
from rankbias.experiments import _noise
from rankbias.experiments._noise import ImageSourceFields
from rankbias.experiments.noise_robustness_deep import DeepNoiseConfig
from rankbias.experiments.registry import build_config, list_experiments
from rankbias.framework.config import ConfigError, DeviceField, ThreadsField, field_docs
from rankbias.framework.docs import shared_doc
from rankbias.framework.gpu_declarations import PLAN_DATASETS
from rankbias.framework.process import temporarily
from rankbias.framework.runs import config_hash
from rankbias.models.two_layer_cnn import HuberizedReLU, huberized_relu


def test_shared_doc_fills_a_section_at_the_placeholder_indentation():
    @shared_doc(params="x : int\n    The input.")
    def f(x):
        """Do it.

        Parameters
        ----------
        {params}
        """

    assert inspect.getdoc(f).splitlines()[4:6] == ["x : int", "    The input."]


def test_shared_doc_leaves_an_object_without_a_docstring_as_it_is():
    def f(x):
        return x

    assert shared_doc(params="x : int")(f) is f and f.__doc__ is None  # as under python -OO


def test_the_package_imports_and_lists_its_experiments_under_python_OO():
    """-OO strips every docstring: nothing that reads or fills one may fail at import."""
    code = (
        "import rankbias, rankbias.models.two_layer_cnn, rankbias.plots.noise, "
        "rankbias.plots.overparam, rankbias.measures\n"
        "from rankbias.experiments.registry import list_experiments\n"
        "assert rankbias.models.two_layer_cnn.huberized_relu.__doc__ is None\n"
        "names = list_experiments()\n"
        "print(len(names), 'torch device (\"cuda\" for the paper preset)' in "
        "names['noise-robustness-deep'].config_cls.accepted())"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-OO", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    n, documented = out.stdout.split()
    assert int(n) == len(list_experiments())
    assert documented == "True"  # field docstrings are read from the source, -OO or not


def test_shared_doc_refuses_a_docstring_without_the_placeholder():
    def f(x):
        """Do it, with no Parameters section."""

    with pytest.raises(InvalidParameterError, match=r"\{params\}"):
        shared_doc(params="x : int")(f)


def test_the_function_and_the_module_document_the_same_parameters():
    fn, cls = inspect.getdoc(huberized_relu), inspect.getdoc(HuberizedReLU)
    entry = "q : float, default 3.0\n    The power of the polynomial piece (>= 1; 1 is the ReLU)."
    assert entry in fn and entry in cls
    assert "{" not in fn.split("Examples")[0] and "{" not in cls.split("Examples")[0]


def test_temporarily_restores_the_setting_when_the_block_raises():
    before = socket.getdefaulttimeout()
    with (
        pytest.raises(RuntimeError),
        temporarily(socket.getdefaulttimeout, socket.setdefaulttimeout, 3.0),
    ):
        assert socket.getdefaulttimeout() == 3.0
        raise RuntimeError
    assert socket.getdefaulttimeout() == before


# config_hash(build_config(name, preset=p).to_dict()) of every built-in preset, computed from
# the commit before the shared fields were declared once (issue 19): moving a field into a
# mixin must change no key, default or preset value, which would orphan every saved run.
CONFIG_HASHES = {
    "depth-rank-init": {
        "quick": "43b9dd336d92",
        "smoke": "f85f28a17ce7",
        "paper": "e9742e0a1a64",
    },
    "depth-rank-init-sensitivity": {
        "quick": "555f5d33d81a",
        "smoke": "0412e5e27364",
        "paper": "27ac8c52efde",
    },
    "depth-rank-optimizers": {
        "quick": "d1cdbe5f9943",
        "smoke": "739ced737e21",
        "paper": "fde64787c34d",
    },
    "depth-rank-trained": {
        "quick": "7828c4d30136",
        "smoke": "83f5fd52a356",
        "paper": "8a5dd78dc4cf",
    },
    "noise-robustness": {
        "quick": "dc05708ae8db",
        "smoke": "49587db15416",
        "paper": "7ed35dc17bb9",
    },
    "noise-robustness-deep": {
        "quick": "f615dd8141cb",
        "smoke": "69ae2eb0840e",
        "paper": "6332aab56eb6",
    },
    "noise-robustness-images": {
        "quick": "f8df91895929",
        "smoke": "84dde41fdbc4",
        "mnist": "b6227ed9d21c",
        "mnist-background": "b30ede6fa57e",
        "cifar10": "d3999e327d86",
        "paper": "12912b9bdff0",
    },
    "overparam-cifar": {
        "quick": "59f8555ac129",
        "smoke": "32ad37b9ee14",
        "gpu": "dd982379454d",
        "cpu": "34f2bc12c429",
        "paper": "782433a7d015",
    },
    "overparam-classification": {
        "quick": "1169ab54d8f1",
        "smoke": "7737bacac16d",
        "paper": "7bf53729ce33",
    },
}


def test_every_preset_config_hashes_as_before_the_fields_were_shared():
    got = {
        name: {p: config_hash(build_config(name, preset=p).to_dict()) for p in exp.presets}
        for name, exp in list_experiments().items()
    }
    assert got == CONFIG_HASHES


def test_a_config_on_the_shared_fields_may_declare_a_required_field():
    @dataclasses.dataclass(frozen=True)
    class Sized(ImageSourceFields, DeviceField, ThreadsField):
        width: int
        """Hidden width (no default: required)."""

    with pytest.raises(ConfigError, match=r"Sized: required key\(s\) 'width' not given"):
        Sized.from_dict({"device": "cpu"})
    cfg = Sized.from_dict({"width": 8})
    assert (cfg.width, cfg.device, cfg.num_threads, cfg.data_root) == (8, "cpu", None, None)
    assert [f.name for f in dataclasses.fields(Sized)] == [
        "num_threads",
        "device",
        "data_root",
        "download",
        "width",
    ]
    assert Sized.contract_problems() == []
    assert "width (int, default 'required'): Hidden width" in Sized.accepted()


def test_a_redeclared_shared_field_keeps_its_place_and_shows_its_own_docstring():
    names = [f.name for f in dataclasses.fields(DeepNoiseConfig)]
    assert names[:4] == ["num_threads", "device", "data_root", "download"]
    assert "device (str, default 'cpu'): torch device (\"cuda\" for the paper preset)." in (
        DeepNoiseConfig.accepted()
    )
    assert field_docs(DeviceField)["device"] == 'torch device, e.g. "cpu" or "cuda".'


def test_pack_accepts_the_plan_datasets_and_never_packs_an_unknown_one_as_mnist(
    tmp_path, monkeypatch
):
    with pytest.raises(
        UnsupportedError, match=r"\['svhn'\] not packable; accepted: cifar10, mnist$"
    ):
        packed.pack(tmp_path, tmp_path, datasets=["svhn"])
    # a dataset added to the plans without a packer is refused, not packed as MNIST
    monkeypatch.setattr(packed, "PLAN_DATASETS", (*PLAN_DATASETS, "svhn"))
    with pytest.raises(UnsupportedError, match=r"no packer for 'svhn'; accepted: cifar10, mnist"):
        packed.pack(tmp_path / "out", tmp_path, datasets=["svhn"])
    assert inspect.signature(packed.pack).parameters["datasets"].default == PLAN_DATASETS


def test_every_name_other_modules_read_from_noise_helpers_is_exported():
    used = set()
    for path in Path(_noise.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id == "_noise")
            ):
                used.add(node.attr)
            if isinstance(node, ast.ImportFrom) and node.module == "rankbias.experiments._noise":
                used.update(a.name for a in node.names)
    assert {"GPU_SMOKE_SIZES", "ImageSourceFields"} <= used
    assert sorted(used - set(_noise.__all__)) == []


def test_measure_tensors_takes_exactly_the_parameters_of_its_iterator():
    listed, rows = inspect.signature(measure_tensors), inspect.signature(iter_measure_tensors)
    assert listed.parameters == rows.parameters
    tensors = {"w": torch.eye(3)}
    assert measure_tensors(tensors, measures=["numerical_rank"]) == list(
        iter_measure_tensors(tensors, measures=["numerical_rank"])
    )
    with pytest.raises(TypeError):
        measure_tensors(tensors, measure=["numerical_rank"])  # a misspelt keyword
