"""overparam-cifar's summary over seeds, verdict, report and figure (the experiment:
:mod:`overparam_cifar`)."""

from __future__ import annotations

import numpy as np

from rankbias.experiments._overparam import plot_accuracy_rank
from rankbias.framework.runs import RunDir

__all__ = ["CLAIM", "PAPER", "plot", "summarise"]

CLAIM = (
    "Linearly over-parameterising a CNN (every Linear/Conv2d a product of depth linear maps, "
    "collapsed after training) improves the collapsed model's CIFAR-10 test accuracy over the "
    "baseline trained identically, and lowers the effective rank of its embeddings "
    "(Huh et al. 2023, sec. 6)."
)
PAPER = ("Expanded-then-collapsed CNNs reach higher test accuracy than the baseline on CIFAR-10, "
         "CIFAR-100 and ImageNet, with lower-rank embeddings (Huh et al. 2023, sec. 6)")


def summarise(cfg, run: RunDir, records: dict, chosen: dict, macs: int, wall: float) -> dict:
    """Per-depth table, the paired verdict, runs.csv, the figure and report.md; the summary."""
    from rankbias.report import markdown_table, write_run_report
    from rankbias.verdicts import mean_std, paired_gain_verdict

    runs, per_depth = [], []
    for d in cfg.depths:
        r = records[d]
        for ps in r.get("per_seed", []):
            runs.append({"depth": d, **ps})
        row = {"depth": d, "status": r["status"], "epochs": r.get("epochs_done"),
               "n_ok": len(r.get("per_seed", [])), "note": r.get("reason") or r.get("error", "")}
        for key in ("test_acc", "train_acc", "embed_erank"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([p[key] for p in r.get("per_seed", [])])
        per_depth.append(row)
    base = {p["seed"]: p for p in records[1].get("per_seed", [])}
    diffs = {f"depth={d}": [100 * (p["test_acc"] - base[p["seed"]]["test_acc"])
                            for p in records[d].get("per_seed", []) if p["seed"] in base]
             for d in cfg.depths if d != 1}
    for row in per_depth:
        row["test_acc_diff_pp_mean"], row["test_acc_diff_pp_std"] = (
            mean_std(diffs[f"depth={row['depth']}"]) if row["depth"] != 1 else (0.0, 0.0))
    if diffs:
        verdict = paired_gain_verdict(diffs, unit=" pp")
    else:
        from rankbias.verdicts import verdict as make

        verdict = make("not testable", "paired test over seeds", "only the baseline depth was asked for")
    meas = [f"depth {r['depth']}: test {100 * r['test_acc_mean']:.2f}% "
            f"({r['test_acc_diff_pp_mean']:+.2f} pp), embedding erank {r['embed_erank_mean']:.2f}"
            for r in per_depth if r["n_ok"]]
    verdict["paper"] = PAPER
    verdict["measured"] = "; ".join(meas) if meas else "no depth finished"
    verdict["max_collapse_rel_diff"] = max((p["collapse_max_rel_diff"] for p in runs), default=None)
    figures = []
    if runs:
        plot(cfg, per_depth, records, run.figure_path("accuracy_rank_vs_depth"))
        figures = ["accuracy_rank_vs_depth"]
    cols = ["depth", "status", "epochs", "n_ok", "test_acc_mean", "test_acc_std", "test_acc_diff_pp_mean",
            "test_acc_diff_pp_std", "train_acc_mean", "embed_erank_mean", "embed_erank_std", "note"]
    run.write_csv("runs.csv", runs)
    info = {"epochs": chosen["epochs"], "batched_seeds": chosen["batched"],
            "forward_macs_per_image": macs, "wall_time_s": round(wall, 1)}
    write_run_report(
        run, title=f"overparam-cifar: {cfg.model} on {cfg.dataset}, collapsed after training",
        claim=CLAIM, verdict={k: v for k, v in verdict.items() if k != "intervals"},
        sections=[("Per depth (collapsed model; diff = paired over seeds vs depth 1, pp)",
                   markdown_table(per_depth, cols)), ("Run", markdown_table([info]))],
        figures=figures, config=cfg.to_dict())
    return {"per_depth": per_depth, "verdict": verdict, "runs": runs, "run": info}


def plot(cfg, per_depth, records, path) -> None:
    import rankbias.plots as plots

    fig, (ax1, ax2, ax3) = plots.figure(ncols=3, width=4.0, height=3.2)
    rows = [r for r in per_depth if r["n_ok"]]
    x = [r["depth"] for r in rows]
    plot_accuracy_rank(ax1, ax2, x, rows, cfg.depths)
    for k, d in enumerate(cfg.depths):
        hist = records[d].get("history") or []
        epochs = sorted({h["epoch"] for h in hist})
        if epochs:
            acc = [100 * np.mean([h["test_acc"] for h in hist if h["epoch"] == e]) for e in epochs]
            ax3.plot(epochs, acc, color=f"C{k}", label=f"depth {d}")
    ax1.legend()
    ax1.set_title(f"{cfg.dataset}, {len(cfg.seeds)} seeds")
    ax3.set_xlabel("epoch")
    ax3.set_ylabel("test accuracy (%), mean over seeds")
    ax3.legend()
    plots.save(fig, path)
