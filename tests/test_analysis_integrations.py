"""rank_report on a Hugging Face model (dict batches, padding left out) and
RankTracker as a Lightning callback. Both packages are dev extras; their
imports alone take several seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankbias.analysis import RankTracker, rank_report
from rankbias.measures import MEASURES, KernelSpectrum


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def test_hf_dict_batches_leave_padding_tokens_out():
    model = tiny_bert()
    seqs = [[2, 7, 9, 11, 13, 3], [2, 5, 3], [2, 21, 22, 3]]
    T = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    batch = {"input_ids": ids, "attention_mask": mask}
    df = rank_report(model, batch, embeddings=["encoder.layer.1", "<root>"], batch_size=2,
                     progress=False)
    rows = df.set_index("name")
    assert "<input>" not in rows.index  # token ids have no rank of their own
    assert (df["error"] == "").all()
    # the reference: each sequence alone, no padding at all
    with torch.no_grad():
        hidden = torch.cat([model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
    assert hidden.shape == (13, 16)
    ref = KernelSpectrum().update(hidden.double()).measures(MEASURES)
    for name in ("encoder.layer.1:output", "<root>:output"):
        assert rows.loc[name, "emb_matrix_shape"] == (13, 16)
        for k in ("stable_rank", "effective_rank", "numerical_rank"):
            assert float(rows.loc[name, f"emb_{k}"]) == pytest.approx(float(ref[k]), rel=1e-4), (name, k)
    assert rows.loc["encoder.layer.0.attention.self.query", "emb_matrix_shape"] == (13, 16)
    # a DataLoader of dict samples (collated into dict batches) gives the same numbers
    samples = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(3)]
    loader = torch.utils.data.DataLoader(samples, batch_size=2)
    again = rank_report(model, loader, layers=[], embeddings=["<root>"], progress=False)
    assert list(again["name"]) == ["<root>:output"]
    assert float(again.loc[0, "emb_stable_rank"]) == pytest.approx(
        float(rows.loc["<root>:output", "emb_stable_rank"]), rel=1e-6)
    # the CLS token of every sequence instead
    cls = rank_report(model, batch, layers=[], embeddings=["<root>"], token_index=0, progress=False)
    with torch.no_grad():
        first = model(**batch).last_hidden_state[:, 0]
    ref = KernelSpectrum().update(first.double()).measures(["stable_rank"])
    assert cls.loc[0, "emb_matrix_shape"] == (3, 16)
    assert float(cls.loc[0, "emb_stable_rank"]) == pytest.approx(float(ref["stable_rank"]), rel=1e-5)


def test_lightning_callback_logs_the_trackers_values(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from rankbias.analysis import RankTrackerCallback

    class Logged(pl.loggers.Logger):
        def __init__(self):
            super().__init__()
            self.rows = []

        name = "memory"
        version = 0

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    tracker = RankTracker(every=2, run=tmp_path / "run")
    logger = Logged()
    module = Module()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RankTrackerCallback(tracker)], default_root_dir=tmp_path,
                         log_every_n_steps=1)
    trainer.fit(module, loader)
    logged = [(s, m) for s, m in logger.rows if any(k.startswith("rank/") for k in m)]
    assert [s for s, _ in logged] == [2, 4, 6] == [r["step"] for r in tracker.history_]
    for (_, m), rec in zip(logged, tracker.history_):
        assert m == {f"rank/{k}": v for k, v in rec.items() if k != "step"}
    assert set(logged[0][1]) == {f"rank/net.{i}/{k}" for i in (0, 2) for k in ("effective_rank", "stable_rank")}
    # the last record is the trained model's: measured again now, the same numbers
    now = tracker.measure(module)
    assert {f"rank/{k}": float(v) for k, v in now.items()} == logged[-1][1]
    assert (tmp_path / "run" / "rank_metrics.csv").exists()  # closed at the end of fit
