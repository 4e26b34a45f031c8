"""rankbias ships its annotations (PEP 561): ``py.typed`` is in the package and in the wheel."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_py_typed_is_in_the_package_and_declared_as_package_data():
    assert (importlib.resources.files("rankbias") / "py.typed").is_file()
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    # setuptools copies only the package data it is told of into the wheel
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["rankbias"]


@pytest.mark.slow
def test_the_built_wheel_holds_py_typed(tmp_path):
    # built offline from a copy (no build isolation: setuptools is already installed)
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(tmp_path / "wheel"),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("rankbias-*.whl")
    assert "rankbias/py.typed" in zipfile.ZipFile(wheel).namelist()
