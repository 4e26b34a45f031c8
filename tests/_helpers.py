"""Small helpers shared by test files (pytest puts this folder on sys.path)."""

import torch

f64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of ``b``."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def count_svd_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Spy on ``torch.linalg.svdvals``: the returned list gets the shape of every call."""
    calls = []
    real = torch.linalg.svdvals

    def spy(X, *a, **k):
        calls.append(tuple(X.shape))
        return real(X, *a, **k)

    monkeypatch.setattr(torch.linalg, "svdvals", spy)
    return calls
