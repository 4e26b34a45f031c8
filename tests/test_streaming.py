"""`rankbias measure` on safetensors checkpoints, streamed: sharded LLaMA-shaped files,
rows and values as rank_measures gives them tensor by tensor, bounded peak memory."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rankbias import MEASURES, rank_measures
from rankbias.analysis import measure_tensors
from rankbias.cli import main
from rankbias.errors import InvalidParameterError, LoadError
from rankbias.io import load_tensors, safetensors_index

_spec = importlib.util.spec_from_file_location(
    "bench_stream", Path(__file__).resolve().parents[1] / "bench" / "bench_stream.py"
)
bench_stream = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_stream)

SMALL = {"hidden": 64, "intermediate": 172, "vocab": 128}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A 2-layer LLaMA-shaped bf16 checkpoint in 3 shards with its index, and its tensors."""
    directory = tmp_path_factory.mktemp("llama")
    shapes = bench_stream.llama_shapes(**SMALL, layers=2)
    index = bench_stream.write_checkpoint(directory, shapes, shards=3, dtype=torch.bfloat16)
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(f)))  # each shard read on its own, as a reference
    return index, tensors


def _cli_rows(capsys, *args) -> list[dict]:
    rc = main(["measure", *map(str, args), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.err == ""  # --json: no progress bar
    return json.loads(out.out)


def test_sharded_llama_checkpoint_rows_and_values(llama, capsys):
    index, tensors = llama
    assert len(list(index.parent.glob("*.safetensors"))) == 3
    rows = _cli_rows(capsys, index)
    two_d = [k for k, t in tensors.items() if t.ndim == 2]
    assert len(two_d) == 2 + 2 * 7  # embed, lm_head, 7 projections per layer; norms are 1-D
    assert sorted(r["name"] for r in rows) == sorted(two_d)
    assert "model.layers.1.mlp.down_proj.weight" in two_d and "lm_head.weight" in two_d
    for r in rows:
        t = tensors[r["name"]]
        assert t.dtype == torch.bfloat16
        assert r["shape"] == r["matrix"] == "x".join(map(str, t.shape))
        ref = rank_measures(t)  # bf16 is computed in float64, as before streaming
        for k in MEASURES:
            assert r[k] == pytest.approx(float(ref[k]), rel=1e-12), (r["name"], k)
        assert r["numerical_rank"] == int(ref["numerical_rank"]) == min(t.shape)
    # the directory reads as its index; one shard alone is its own tensors
    assert _cli_rows(capsys, index.parent) == rows
    shard = index.parent / "model-00002-of-00003.safetensors"
    names = {r["name"] for r in _cli_rows(capsys, shard)}
    assert names == {k for k, t in load_file(str(shard)).items() if t.ndim == 2}
    # the library reads the checkpoint whole the same way
    assert set(load_tensors(index)) == set(tensors)


def test_single_file_rows_unchanged_by_streaming(tmp_path, capsys):
    """A .safetensors file is streamed now: the same rows, in the order of load_file."""
    g = torch.Generator().manual_seed(1)
    sd = {
        "b.weight": torch.randn(40, 30, generator=g),
        "a.weight": torch.randn(8, 3, 3, 3, generator=g),
        "a.bias": torch.randn(8, generator=g),
        "c": torch.randn(300, 400, generator=g).half(),
    }
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    rows = _cli_rows(capsys, path)
    in_memory = measure_tensors(load_file(str(path)))  # the mapping path: loaded whole
    assert (
        [r["name"] for r in rows] == [r["name"] for r in in_memory] == ["a.weight", "b.weight", "c"]
    )
    for r, m in zip(rows, in_memory):
        assert r.keys() == m.keys()
        for k in MEASURES:
            assert r[k] == pytest.approx(m[k], rel=1e-12)
    assert rows[0]["matrix"] == "8x27"


def test_stream_device_and_progress(llama, capsys):
    index, tensors = llama
    rows = measure_tensors(index, device="cpu", measures=["stable_rank"], progress=True)
    err = capsys.readouterr().err
    assert "rankbias measure" in err and "16/16" in err and "<" in err  # count and ETA
    ref = {
        k: float(rank_measures(t, ["stable_rank"])["stable_rank"])
        for k, t in tensors.items()
        if t.ndim == 2
    }
    assert {r["name"]: r["stable_rank"] for r in rows} == pytest.approx(ref, rel=1e-12)
    if not torch.cuda.is_available():
        assert main(["measure", str(index), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(["measure", str(index), "--device", "gpu0"]) == 2
    assert "accepted: a torch device string" in capsys.readouterr().err


def test_pooled_reading_refuses_another_method(llama):
    with pytest.raises(InvalidParameterError, match="pooled reading computes its own"):
        measure_tensors(llama[0], conv_reading="pooled", method="svd")


def _write_index(directory: Path, weight_map: dict) -> Path:
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_broken_checkpoints_are_clear_errors(tmp_path, capsys):
    save_file({"a": torch.ones(3, 2), "b": torch.ones(2, 2)}, str(tmp_path / "s1.safetensors"))
    save_file({"a": torch.ones(3, 2)}, str(tmp_path / "s2.safetensors"))
    cases = [
        (
            {"a": "s1.safetensors", "z": "s1.safetensors"},
            "lacks 1 tensor(s) its index assigns to it",
        ),
        (
            {"a": "s1.safetensors", "c": "s3.safetensors"},
            "s3.safetensors: no such file (a shard named by",
        ),
        ({"a": "s1.safetensors", "b": "../s1.safetensors"}, "is not a file beside the index"),
        ({"b": "s1.safetensors", "a": "s2.safetensors"}, "tensor 'a' is stored twice"),
    ]
    for weight_map, message in cases:
        index = _write_index(tmp_path, weight_map)
        assert main(["measure", str(index)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rankbias: error:") and message in err, (weight_map, err)
    index.write_text("{}")
    with pytest.raises(LoadError, match="not a safetensors index"):
        safetensors_index(index)
    index.unlink()  # a directory of 2 files and no index: which one is not guessed
    with pytest.raises(LoadError, match="is a directory holding 2 .safetensors files and no index"):
        safetensors_index(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="is a directory holding no .safetensors file"):
        safetensors_index(tmp_path / "empty")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    assert main(["measure", str(tmp_path / "bad.safetensors")]) == 2
    assert "could not read as a .safetensors file" in capsys.readouterr().err


def _status_bytes(field: str) -> int:
    return (
        int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    )


def test_peak_memory_is_a_small_multiple_of_the_largest_tensor(tmp_path):
    """32 tensors of 4 MiB (128 MiB): streamed, the resident peak (anonymous and mapped file
    pages: VmHWM, reset before the run) grows by a few tensors' worth (2.4 to 4 measured);
    loading the file whole grows by all of it (36 measured)."""
    g = torch.Generator().manual_seed(0)
    n, shape = 32, (32, 1 << 15)
    path = tmp_path / "big.safetensors"
    save_file({f"w{i:02d}": torch.randn(shape, generator=g) for i in range(n)}, str(path))
    tensor_bytes = 4 * shape[0] * shape[1]
    measure_tensors({"warm": torch.randn(shape, generator=g)})  # load the code the run uses
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    except OSError:
        pytest.skip("the peak-RSS counter cannot be reset here (needs Linux /proc/self/clear_refs)")
    before = _status_bytes("VmRSS")
    rows = measure_tensors(path)
    growth = _status_bytes("VmHWM") - before
    assert len(rows) == n
    # the mapped tensor, its float64 copy (2 tensors' worth), allocator slack: well under 12
    assert growth < 12 * tensor_bytes, growth / tensor_bytes
    assert 12 * tensor_bytes < n * tensor_bytes / 2  # so a whole-file load would fail it


def test_fast_route_rows_carry_error_bars_around_the_exact_values(llama, capsys):
    index, _ = llama
    fast = _cli_rows(capsys, index, "--fast")
    exact = {r["name"]: r for r in _cli_rows(capsys, index)}
    four = ["stable_rank", "effective_rank", "entropy_rank", "rankme"]
    assert len(fast) == len(exact) == 16
    for r in fast:
        assert set(r) == {"name", "shape", "matrix", *four, *(f"{k}_error" for k in four)}
        for k in four:
            assert abs(r[k] - exact[r["name"]][k]) <= r[f"{k}_error"], (r["name"], k)
    with pytest.raises(InvalidParameterError, match="fast route does not estimate"):
        measure_tensors(index, measures=["numerical_rank"], method="fast")
