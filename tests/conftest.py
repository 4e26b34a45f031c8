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
