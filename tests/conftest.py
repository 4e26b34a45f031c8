import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (CI never flakes on a new draw), and
# no wall-clock check (deadline, too_slow) can fail them on a loaded machine.
settings.register_profile(
    "rankbias", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("rankbias")

# Tests run on the CPU, deterministically, and write runs under a temp dir.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKBIAS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def pytest_configure(config):
    config.addinivalue_line("markers", "ci_required: must run in CI: a skip fails it when $CI is set")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A skip is easy to miss among hundreds of passes: in CI, a test marked ci_required
    # that skips (its tool missing on the runner) fails instead, with the skip's reason.
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and _in_ci() and item.get_closest_marker("ci_required"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI={os.environ['CI']}, but this test must run in CI: {reason}"
