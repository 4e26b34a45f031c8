"""Every registered experiment at its ``smoke`` preset, end to end: the one convention for
test-sized configs (docs/contributing.md). A smoke run takes seconds on one thread, follows
the quick preset's path (same models, same kinds of data, tiny sizes) and leaves a complete
run directory; a new experiment is covered here with no edit to this file."""

import csv
import dataclasses
import json

import pytest

from rankbias import run_experiment
from rankbias.experiments.registry import build_config, get_experiment, list_experiments
from rankbias.verdicts import STATUSES, status_of

NAMES = sorted(list_experiments())

# Where smoke must take another kind than quick, and why. Quick's "auto" reads MNIST when
# $RANKBIAS_DATA holds it and falls back to digits otherwise; smoke names digits so that a
# test never depends on what a machine has on disk.
KIND_EXCEPTIONS = {("noise-robustness-images", "dataset"): ("auto", "digits")}


def _kinds(cfg, prefix: str = "") -> dict:
    """The fields that pick a code path: strings, booleans and lists of strings (nested
    settings too, under dotted names)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_kinds(v, f"{prefix}{f.name}."))
        elif isinstance(v, (str, bool)) or (
            isinstance(v, (tuple, list)) and v and all(isinstance(x, str) for x in v)
        ):
            out[prefix + f.name] = v
    return out


@pytest.mark.parametrize("name", NAMES)
def test_smoke_preset_follows_the_quick_path(name):
    quick, smoke = (
        _kinds(build_config(name, preset="quick")),
        _kinds(build_config(name, preset="smoke")),
    )
    differ = {k: (quick[k], smoke[k]) for k in quick if quick[k] != smoke[k]}
    assert differ == {k[1]: v for k, v in KIND_EXCEPTIONS.items() if k[0] == name}


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_the_run_directory_contract(name, tmp_path, monkeypatch):
    monkeypatch.delenv("RANKBIAS_DATA", raising=False)  # as in CI: no downloaded data sets
    out = tmp_path / name
    summary = run_experiment(name, preset="smoke", out_dir=out, threads=1)

    # config.json: the smoke preset's validated config, under the hash it is stored by
    cfg = build_config(name, preset="smoke")
    stored = json.loads((out / "config.json").read_text())
    assert (stored["experiment"], stored["preset"]) == (name, "smoke")
    assert stored["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert summary["config_hash"] == stored["hash"]

    # summary.json: what run_experiment returned, read back; a claim has a readable verdict
    assert json.loads((out / "summary.json").read_text())["config_hash"] == stored["hash"]
    if get_experiment(name).claim:
        assert status_of(summary["verdict"]) in STATUSES, summary.get("verdict")

    report = (out / "report.md").read_text()
    assert name in report and len(report) > 200

    metrics = sorted(out.glob("*.csv")) + sorted(out.glob("*.jsonl"))
    assert metrics, sorted(p.name for p in out.iterdir())
    for p in metrics:
        if p.suffix == ".csv":
            rows = list(csv.reader(p.open()))
            assert len(rows) >= 2 and len(rows[0]) >= 2, p.name  # a header and data
        else:
            assert [json.loads(line) for line in p.read_text().splitlines()], p.name

    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
