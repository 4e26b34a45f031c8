"""RankTracker where people already train and log: the Hugging Face Trainer, MLflow,
Weights & Biases (each the real library, run locally, its output read back), the
logger protocol, embeddings on data, and the rank-over-steps figure."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rankbias.analysis import (
    MlflowLogger,
    RankTracker,
    TensorBoardLogger,
    WandbLogger,
    rank_report,
    weight_entries,
)
from rankbias.errors import UnsupportedError
from rankbias.framework.config import ConfigError

MEASURES = ["stable_rank", "effective_rank"]


def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train_steps(model, tracker, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        tracker.step(model)


def _report_metrics(model, data=None, **kw) -> dict[str, float]:
    """rank_report's measure columns as tracker keys: the reference of every test."""
    df = rank_report(model, data, measures=MEASURES, include_data=False, progress=False, **kw)
    out = {}
    for row in df.to_dict("records"):
        for col in [*MEASURES, *(f"emb_{m}" for m in MEASURES)]:
            if col in row and not (isinstance(row[col], float) and np.isnan(row[col])):
                out[f"{row['name']}/{col}"] = float(row[col])
    return out


# ---------------------------------------------------------------- Hugging Face


def _tiny_trainer(tmp_path, report_to="none", save=False):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(1, 64, (24, 8), generator=torch.Generator().manual_seed(0))
    ds = [
        {"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": i % 2}
        for i in range(24)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=report_to,
        use_cpu=True,
        logging_steps=3,
        save_strategy="steps" if save else "no",
        save_steps=2,
        save_only_model=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=ds)


def _logged(trainer) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {k.removeprefix("rank/"): v for k, v in r.items() if k.startswith("rank/")}
        for r in trainer.state.log_history
        if any(k.startswith("rank/") for k in r)
    }


def test_hf_trainer_logs_rank_report_of_each_checkpoint(tmp_path):
    """Weights and embeddings, every 2 of 6 steps, through trainer.log to
    log_history and to report_to's TensorBoard; each equals rank_report on the
    checkpoint saved at that step, reloaded from disk."""
    import transformers
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rankbias.analysis import HFRankTrackerCallback

    trainer = _tiny_trainer(tmp_path, report_to=["tensorboard"], save=True)
    ids = torch.randint(1, 64, (6, 8), generator=torch.Generator().manual_seed(5))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    sel = {"layers": ["*.attention.self.query", "classifier"], "embeddings": ["bert.pooler"]}
    forwards = []
    trainer.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    cb = HFRankTrackerCallback(
        trainer, every=2, measures=MEASURES, data=data, run=tmp_path / "run", **sel
    )
    trainer.add_callback(cb)
    trainer.train()

    logged = _logged(trainer)
    assert sorted(logged) == [2, 4, 6]
    assert forwards.count(1) == 6 + 3  # 6 training steps, one forward of `data` per record
    for step, values in logged.items():
        saved = transformers.BertForSequenceClassification.from_pretrained(
            tmp_path / "out" / f"checkpoint-{step}"
        )
        ref = _report_metrics(saved, data, **sel)
        assert set(values) == set(ref)
        assert values == ref, step  # exactly: the same weights, the same forward pass
    assert {
        "bert.pooler:output/emb_stable_rank",
        "classifier/stable_rank",
        "classifier/emb_effective_rank",
        "bert.encoder.layer.1.attention.self.query/stable_rank",
    } <= set(logged[2])
    assert logged[2]["classifier/stable_rank"] != logged[6]["classifier/stable_rank"]  # it trained
    # report_to=["tensorboard"]: transformers' own TensorBoard callback received them
    (events_file,) = (tmp_path / "out").rglob("events.out.tfevents*")  # under output_dir/runs/
    acc = EventAccumulator(str(events_file.parent))
    acc.Reload()
    events = acc.Scalars("train/rank/classifier/stable_rank")
    assert [e.step for e in events] == [2, 4, 6]
    assert [e.value for e in events] == pytest.approx(
        [logged[s]["classifier/stable_rank"] for s in (2, 4, 6)]
    )
    assert (tmp_path / "run" / "rank_metrics.csv").exists()  # closed at the end of training
    assert (tmp_path / "run" / "figures" / "rank_metrics.png").exists()


def test_hf_trainer_without_data_adds_no_forward_pass_and_no_hook(tmp_path):
    from rankbias.analysis import HFRankTrackerCallback

    trainer = _tiny_trainer(tmp_path)
    model = trainer.model
    forwards, hooks_seen = [], []
    model.register_forward_pre_hook(lambda m, a: forwards.append(1))

    class Probe(RankTracker):  # what the hooks are while the tracker measures
        def measure(self, source):
            hooks_seen.append(
                sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in source.modules())
            )
            return super().measure(source)

    trainer.add_callback(HFRankTrackerCallback(trainer, Probe(every=3, measures=MEASURES)))
    trainer.train()
    assert forwards.count(1) == 6  # the training steps alone
    assert hooks_seen == [1, 1]  # only the test's own counter, at steps 3 and 6
    logged = _logged(trainer)
    assert sorted(logged) == [3, 6]
    assert logged[6] == _report_metrics(model)  # the weights of the final model, exactly
    # every weight row of the 2-layer BERT, two measures
    assert len(logged[6]) == 2 * len(weight_entries(model)) == 2 * 17


def test_hf_callback_refuses_what_it_cannot_measure(tmp_path):
    from rankbias.analysis import HFRankTrackerCallback

    trainer = _tiny_trainer(tmp_path)
    with pytest.raises(ConfigError, match="did you mean"):
        HFRankTrackerCallback(trainer, layers=["classifer"])
    with pytest.raises(ConfigError, match="match no module"):
        HFRankTrackerCallback(
            trainer, data=torch.zeros(2, 8, dtype=torch.long), embeddings=["nope"]
        )
    with pytest.raises(ConfigError, match="needs data"):
        HFRankTrackerCallback(trainer, embeddings=["bert.pooler"])
    with pytest.raises(UnsupportedError, match="batched"):
        HFRankTrackerCallback(trainer, batched=True)
    with pytest.raises(TypeError, match="transformers.Trainer"):
        HFRankTrackerCallback(trainer.model)
    trainer.is_fsdp_enabled = True
    with pytest.raises(UnsupportedError, match="fsdp may shard"):
        HFRankTrackerCallback(trainer)


# ---------------------------------------------------------------- loggers


def test_mlflow_metrics_read_back_from_a_local_file_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    # MLflow 3.x keeps the file store behind this opt-in (no server, no database needed)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}/mlruns"
    model = _mlp()
    with RankTracker(
        every=2,
        measures=MEASURES,
        loggers=MlflowLogger(tracking_uri=uri, experiment_name="rankbias"),
    ) as tracker:
        _train_steps(model, tracker, 4)
    run_id = tracker.loggers[0].run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # the logger opened the run, so close() ended it
    assert set(run.data.metrics) == {f"rank/{k}" for k in tracker.history_[0] if k != "step"}
    for key in ("0/stable_rank", "2/effective_rank"):
        hist = sorted(client.get_metric_history(run_id, f"rank/{key}"), key=lambda m: m.step)
        assert [m.step for m in hist] == [2, 4]
        assert [m.value for m in hist] == [r[key] for r in tracker.history_]
    # a bare layer is the row "<root>", a name MLflow refuses: it arrives as "_root_"
    bare = RankTracker(measures=["stable_rank"], loggers=MlflowLogger(tracking_uri=uri))
    bare.step(nn.Linear(4, 3))
    bare.close()
    got = client.get_metric_history(bare.loggers[0].run_id, "rank/_root_/stable_rank")
    assert [m.value for m in got] == [bare.history_[0]["<root>/stable_rank"]]


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file (LevelDB log format: 32 KiB blocks of chunks
    crc32 | length | type; each record a wandb_internal Record protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, part, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero trailer
            pos += block - pos % block
            continue
        crc, n, kind = (
            int.from_bytes(data[pos : pos + 4], "little"),
            int.from_bytes(data[pos + 4 : pos + 6], "little"),
            data[pos + 6],
        )
        chunk = data[pos + 7 : pos + 7 + n]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc  # read right
        pos, part = pos + 7 + n, part + chunk
        if kind in (1, 4):  # a FULL record or the LAST chunk of one
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
            part = b""
    return out


def test_wandb_offline_run_read_back_from_its_file(tmp_path, monkeypatch):
    import wandb

    for k, v in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path),
        "WANDB_CACHE_DIR": str(tmp_path),
        "WANDB_DATA_DIR": str(tmp_path),
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
    }.items():
        monkeypatch.setenv(k, v)
    model = _mlp()
    logger = WandbLogger(project="rankbias-test", dir=str(tmp_path), mode="offline")
    with RankTracker(every=2, measures=MEASURES, loggers=[logger]) as tracker:
        _train_steps(model, tracker, 4)
    # finish() returns before W&B's service process has written everything: wait for it
    wandb.teardown()
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    rows = [
        {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [r["rank/step"] for r in rows] == [2, 4]
    for row, rec in zip(rows, tracker.history_):
        assert {k: row[f"rank/{k}"] for k in rec if k != "step"} == {
            k: v for k, v in rec.items() if k != "step"
        }
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished by close()


def test_logger_protocol_tensorboard_and_a_users_own(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Mine:  # any object with the three methods
        def __init__(self):
            self.rows, self.closed = [], False

        def log_metrics(self, metrics, step):
            self.rows.append((step, dict(metrics)))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    mine = Mine()
    model = _mlp()
    with RankTracker(
        every=2, measures=MEASURES, loggers=[mine, TensorBoardLogger(tmp_path / "tb")]
    ) as tracker:
        _train_steps(model, tracker, 4)
    assert mine.closed
    assert [s for s, _ in mine.rows] == [2, 4]
    for (_, m), rec in zip(mine.rows, tracker.history_):
        assert m == {f"rank/{k}": v for k, v in rec.items() if k != "step"}
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("rank/2/stable_rank")] == pytest.approx(
        [r["2/stable_rank"] for r in tracker.history_]
    )
    # batched: one name per model
    W = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    batched = RankTracker(measures=["stable_rank"], batched=True, loggers=Mine())
    batched.record([W], step=7)
    assert batched.loggers[0].rows == [
        (
            7,
            {
                f"rank/param0/stable_rank/model{i}": batched.history_[i]["param0/stable_rank"]
                for i in range(3)
            },
        )
    ]
    with pytest.raises(TypeError, match="log_metrics"):
        RankTracker(loggers=[object()])
    with pytest.raises(TypeError, match="log_metrics"):
        RankTracker(loggers=object())


@pytest.mark.parametrize(
    "module, cls, extra", [("mlflow", MlflowLogger, "mlflow"), ("wandb", WandbLogger, "wandb")]
)
def test_missing_logger_package_is_a_clear_error(monkeypatch, module, cls, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"rankbias\[{extra}\]"):
        cls()


def test_import_rankbias_imports_no_integration():
    code = (
        "import sys, rankbias, rankbias.analysis; rankbias.RankTracker; "
        "bad = [m for m in ('transformers', 'mlflow', 'wandb', 'lightning') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- embeddings, figure


def test_tracker_with_data_records_rank_report(tmp_path):
    model = _mlp()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    tracker = RankTracker(layers=["2"], measures=MEASURES, every=2, data=x, embeddings=["1"])
    _train_steps(model, tracker, 4)
    assert tracker.history_[-1] == {
        "step": 4,
        **_report_metrics(model, x, layers=["2"], embeddings=["1"]),
    }
    assert set(tracker.history_[0]) == {
        "step",
        "2/stable_rank",
        "2/effective_rank",
        "2/emb_stable_rank",
        "2/emb_effective_rank",
        "1:output/emb_stable_rank",
        "1:output/emb_effective_rank",
    }
    with pytest.raises(ConfigError, match="embedding_options: unknown"):
        RankTracker(data=x, embedding_options={"token_idx": 0})
    with pytest.raises(ConfigError, match="need data"):
        RankTracker(embedding_options={"token_index": 0})
    with pytest.raises(UnsupportedError, match="batched"):
        RankTracker(data=x, batched=True)
    with pytest.raises(UnsupportedError, match="nn.Module"):
        RankTracker(data=x).record(list(model.parameters()), 1)


def test_tracker_writes_a_rank_over_steps_figure(tmp_path, monkeypatch):
    import matplotlib.image

    import rankbias.plots.ranks as ranks

    seen = {}
    real_save = ranks.save

    def save(fig, path):  # read the figure's axes before it is written
        seen.update({ax.get_ylabel(): (ax.get_xlabel(), len(ax.get_lines())) for ax in fig.axes})
        return real_save(fig, path)

    monkeypatch.setattr(ranks, "save", save)
    model = _mlp()
    with RankTracker(every=1, measures=MEASURES, run=tmp_path / "run") as tracker:
        _train_steps(model, tracker, 6)
    png = tmp_path / "run" / "figures" / "rank_metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05
    assert seen == {"stable rank": ("training step", 2), "effective rank": ("training step", 2)}
    with pytest.raises(ConfigError, match="nothing recorded"):
        RankTracker().plot(tmp_path / "x.png")
