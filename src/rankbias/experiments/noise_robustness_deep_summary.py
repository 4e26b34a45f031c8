"""noise-robustness-deep, part 2: aggregation over seeds, the per-layer verdicts, figures, report.

For a layer and a measure, the rank growth at noise level sigma is
rank(sigma) / rank(0) of the network trained (and, for embeddings, tested) at
sigma over the one trained at 0, per seed; the data's growth is that of the
training images' pixel-matrix stable rank. The table entry is
log(layer growth) / log(data growth), the mean over seeds: 0 when the layer's
rank does not move, 1 when it grows as much as the data's. The verdict per
layer is :func:`rankbias.verdicts.relative_rank_verdict` (paper 1's relative
claim: robust where the ratio is <= max_ratio at the noisiest level that keeps
the test accuracy within accuracy_drop of the clean accuracy, testable where the
data's rank grows >= data_factor there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rankbias.experiments._statements import PAPER1_NOISE
from rankbias.framework.runs import RunDir
from rankbias.verdicts import STATUSES, mean_std, relative_rank_verdict, verdict

CLAIM = (
    "Background noise inflates the rank of the data by an order of magnitude, but the rank "
    "learned by gradient descent stays near the clean data's (Zhang, Gao, Zou & Cao 2025, proved "
    "for two-layer CNNs); open: does it hold layer by layer, for the weights and the embeddings "
    "of deep CNNs, ResNets, vision transformers and MLPs?"
)
PENULTIMATE = "<penultimate>"
"""The row of the penultimate embeddings (the input of ``fc``; no weight of its own)."""
MEASURES = {
    "weight_stable_rank": "weight stable rank",
    "weight_effective_rank": "weight effective rank",
    "emb_effective_rank_clean": "embeddings, clean test images",
    "emb_effective_rank_noisy": "embeddings, noisy test images",
}
"""Labels of the measures (the embeddings' measure is the kernel effective rank)."""
PAPER = ("two-layer CNN: the filters' stable rank stays near the clean data's while the data's "
         "stable rank grows >= 10x (log ratio ~ 0); deeper layers not covered")
DATA_KEY = "pixel_stable_rank"


def _array(rows_by: dict, sigmas: Sequence[float], seeds: Sequence[int], get) -> np.ndarray:
    """(seeds, S) of ``get(row)`` (NaN where a run is missing or diverged)."""
    out = np.full((len(seeds), len(sigmas)), np.nan)
    for i, sd in enumerate(seeds):
        for j, s in enumerate(sigmas):
            r = rows_by.get((float(s), int(sd)))
            if r is not None:
                v = get(r)
                out[i, j] = float("nan") if v is None else float(v)
    return out


def _layer_value(res: dict, layer: str, key: str):
    for r in res.get("layers", []):
        if r["layer"] == layer:
            return r.get(key)
    return None


def log_ratio(model_rank: np.ndarray, data_rank: np.ndarray, clean: int) -> np.ndarray:
    """(seeds, S) of log(model growth) / log(data growth) relative to column ``clean`` (NaN there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(model_rank / model_rank[:, [clean]]) / np.log(data_rank / data_rank[:, [clean]])
    r[:, clean] = np.nan
    return r


def _ms(a: np.ndarray) -> tuple[list[float], list[float]]:
    pairs = [mean_std(list(col)) for col in a.T]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def summarize(cfg, run: RunDir, data_rows: list[dict], results: list[dict], info: dict) -> dict:
    import rankbias.intrinsic as idmod

    sig = [float(s) for s in cfg.sigmas]
    seeds = [int(s) for s in cfg.seeds]
    clean = sig.index(0.0)
    history = [h for r in results for h in r.get("history", [])]
    run.write_csv("metrics.csv", history)
    per_run = [{k: v for k, v in r.items() if k not in ("layers", "history")} for r in results]
    run.write_csv("runs.csv", per_run)
    per_data, data_rank = _per_data(cfg, data_rows, sig, seeds, clean)

    per_sigma, layer_tables, layer_verdicts, figures = [], [], [], []
    for noise in cfg.noise_models:
        for name in cfg.models:
            by = {(r["sigma"], r["seed"]): r for r in results if r["noise"] == noise and r["model"] == name}
            acc = _array(by, sig, seeds, lambda r: r.get("test_acc"))
            per_sigma += _per_sigma_rows(name, noise, by, sig, seeds)
            table, verdicts_ = _layer_table(cfg, info, name, noise, by, acc, data_rank[noise], sig, seeds, clean)
            layer_verdicts += verdicts_
            layer_tables.append(table)
            figures += _model_figures(cfg, run, table, acc, data_rank[noise], clean)
        figures.append(_accuracy_figure(cfg, run, noise, per_sigma))
    figures.append(_data_figure(cfg, run, per_data))

    top = overall_verdict(layer_verdicts)
    notes = []
    if cfg.intrinsic_dimension and not idmod.available():
        notes.append(f"intrinsic dimensions skipped: scikit-dimension is not installed ({idmod.INSTALL_HINT})")
    summary = {"verdict": top, "per_data": per_data, "per_sigma": per_sigma,
               "layer_tables": layer_tables, "layer_verdicts": layer_verdicts, "data": info,
               "notes": notes, "figures": figures}
    _write_report(cfg, run, summary)
    return summary


def _per_data(cfg, data_rows: list[dict], sig: list[float], seeds: list[int],
              clean: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per (noise model, sigma): the data's measures, means over seeds; and the data's
    stable rank per noise model, (seeds, sigmas)."""
    per_data, data_rank = [], {}
    for noise in cfg.noise_models:
        by = {(r["sigma"], r["seed"]): r for r in data_rows if r["noise"] == noise}
        data_rank[noise] = _array(by, sig, seeds, lambda r: r[DATA_KEY])
        keys = [k for k, v in data_rows[0].items() if isinstance(v, float) and k != "sigma"]
        for j, s in enumerate(sig):
            row: dict[str, Any] = {"noise": noise, "sigma": s}
            for k in keys:
                row[k] = mean_std([by[(s, sd)].get(k) for sd in seeds if (s, sd) in by])[0]
            row["pixel_stable_rank_growth"] = float(np.nanmean(data_rank[noise][:, j] / data_rank[noise][:, clean]))
            per_data.append(row)
    return per_data, data_rank


def _per_sigma_rows(name: str, noise: str, by: dict, sig: list[float], seeds: list[int]) -> list[dict]:
    """Per sigma: one model's accuracies and penultimate-layer measures, means over seeds."""
    rows = []
    for s in sig:
        rs = [by.get((s, sd)) for sd in seeds]
        rs = [r for r in rs if r is not None]
        row = {"model": name, "noise": noise, "sigma": s}
        for k in ("test_acc", "test_acc_clean", "train_acc"):
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std([r.get(k) for r in rs])
        for k in ("emb_effective_rank_noisy", "emb_effective_rank_clean"):
            row[f"penultimate_{k}"] = mean_std([_layer_value(r, PENULTIMATE, k) for r in rs])[0]
        for k in [k for k in (rs[0] if rs else {}) if k.startswith("penultimate_id_")]:
            row[k] = mean_std([r.get(k) for r in rs])[0]
        row["n_diverged"] = sum(r["status"] != "ok" for r in rs)
        rows.append(row)
    return rows


def _layer_table(cfg, info: dict, name: str, noise: str, by: dict, acc: np.ndarray, dr: np.ndarray,
                 sig: list[float], seeds: list[int], clean: int) -> tuple[dict, list[dict]]:
    """One model's per-layer measures and log ratios over sigma, and a verdict per (layer, measure)."""
    ok = [r for r in by.values() if r.get("layers")]
    layers = [r["layer"] for r in ok[0]["layers"]] if ok else []
    table: dict[str, Any] = {"model": name, "noise": noise, "layers": layers, "sigmas": sig, "measures": {}}
    layer_verdicts = []
    for mkey in MEASURES:
        vals, ratios, vstd, rstd = [], [], [], []
        for layer in layers:
            a = _array(by, sig, seeds, lambda r, layer=layer, mkey=mkey: _layer_value(r, layer, mkey))
            m, sd = _ms(a)
            rm, rsd = _ms(log_ratio(a, dr, clean))
            vals.append(m), vstd.append(sd), ratios.append(rm), rstd.append(rsd)
            if np.isnan(a).all():  # the penultimate row has no weight
                continue
            v = relative_rank_verdict(sig, acc, dr, a, n_test=info["n_test"],
                                      n_classes=len(info["classes"]), clean_index=clean,
                                      accuracy_drop=cfg.accuracy_drop,
                                      data_factor=cfg.data_factor, max_ratio=cfg.max_ratio)
            v["statement"], v["paper"] = PAPER1_NOISE, PAPER
            v["measured"] = (f"log ratio {v['ratio_mean']:.3f} [{v['ratio_lo']:.3f}, {v['ratio_hi']:.3f}] "
                             f"at σ={v['sigma']:g}"
                             if "ratio_mean" in v else v["reason"])
            layer_verdicts.append({"model": name, "noise": noise, "layer": layer, "measure": mkey,
                                   "status": v["status"], "verdict": v})
        table["measures"][mkey] = {"mean": vals, "std": vstd, "log_ratio_mean": ratios,
                                   "log_ratio_std": rstd}
    return table, layer_verdicts


def overall_verdict(layer_verdicts: list[dict]) -> dict:
    """Over every (model, noise model, layer): the weight-stable-rank verdicts (the paper's
    measure) decide, the embeddings' are counted beside them. Does not hold when a layer's
    does not; holds when every decided layer's holds and none is inconclusive;
    inconclusive when some are; not testable when no layer is testable."""
    def count(measure: str) -> dict[str, int]:
        c = dict.fromkeys(STATUSES, 0)
        for v in layer_verdicts:
            if v["measure"] == measure:
                c[v["status"]] += 1
        return c

    w, e = count("weight_stable_rank"), count("emb_effective_rank_noisy")
    criterion = ("every layer whose verdict is testable (a model above chance; the data's stable rank grows "
                 ">= data_factor at the noise levels shown within the accuracy margin) has the t-interval "
                 "of log(weight stable rank growth) / log(data growth) ending <= max_ratio")
    tested = w["holds"] + w["does not hold"] + w["inconclusive"]
    measured = (f"weight stable rank robust in {w['holds']} of {tested} testable layers"
                f" ({w['inconclusive']} inconclusive); embedding kernel effective rank (noisy test images) in "
                f"{e['holds']} of {e['holds'] + e['does not hold'] + e['inconclusive']}")
    nums = {"weights": w, "embeddings_noisy": e, "statement": PAPER1_NOISE, "paper": PAPER,
            "measured": measured}
    if tested == 0:
        return verdict("not testable", criterion, "no layer is testable: " + measured, **nums)
    status = ("does not hold" if w["does not hold"] else "inconclusive" if w["inconclusive"] else "holds")
    return verdict(status, criterion, measured, **nums)


# ------------------------------------------------------------------ figures


def _mid_layers(layers: list[str]) -> list[str]:
    """The first weight layer, a middle one and the penultimate embeddings."""
    weights = [n for n in layers if n != PENULTIMATE]
    main = [n for n in weights if "shortcut" not in n]  # a ResNet's projections are side branches
    picks = [weights[0], main[len(main) // 2]] if main else weights[:1]
    return list(dict.fromkeys(picks + ([PENULTIMATE] if PENULTIMATE in layers else [])))


def _model_figures(cfg, run: RunDir, table: dict, acc, dr, clean: int) -> list[str]:
    import rankbias.plots as plots

    name, noise, layers, sig = table["model"], table["noise"], table["layers"], table["sigmas"]
    if not layers:
        return []
    cols = [j for j in range(len(sig)) if j != clean]
    panels = {MEASURES[k]: np.asarray(m["log_ratio_mean"], float)[:, cols]
              for k, m in table["measures"].items()}
    heat = f"heatmap_{name}_{noise}"
    plots.layer_sigma_heatmaps(
        panels, layers, [f"{sig[j]:g}" for j in cols], run.figure_path(heat),
        xlabel="background noise σ", cbar_label="log(layer rank growth) / log(data rank growth)",
        title=f"{name}, {noise} noise: rank growth relative to the data's (0: robust, 1: as the data)")
    growth_panels = {}
    for layer in _mid_layers(layers):
        i = layers.index(layer)
        lines = {}
        for k in ("weight_stable_rank", "emb_effective_rank_noisy", "emb_effective_rank_clean"):
            m = np.asarray(table["measures"][k]["mean"][i], float)
            if np.isfinite(m).any():
                lines[MEASURES[k]] = (m, np.asarray(table["measures"][k]["std"][i], float))
        growth_panels[layer] = lines
    d_m, d_s = _ms(dr)
    ranks = f"ranks_vs_sigma_{name}_{noise}"
    plots.ranks_against_sigma(
        growth_panels, sig, run.figure_path(ranks), reference={"data: pixel-matrix stable rank": (d_m, d_s)},
        xlabel="background noise σ", ylabel="rank (log scale); embeddings: kernel eff. rank",
        title=f"{name}, {noise} noise: first layer, a middle layer, penultimate embeddings "
              f"(mean ± std over {len(cfg.seeds)} seeds)")
    return [heat, ranks]


def _accuracy_figure(cfg, run: RunDir, noise: str, per_sigma: list[dict]) -> str:
    import rankbias.plots as plots

    series = {}
    for name in cfg.models:
        rows = [r for r in per_sigma if r["model"] == name and r["noise"] == noise]
        series[name] = (np.array([r["test_acc_mean"] for r in rows], float),
                        np.array([r["test_acc_std"] for r in rows], float))
    fig = f"accuracy_vs_sigma_{noise}"
    plots.ranks_against_sigma({"test accuracy (noisy test images)": series}, list(cfg.sigmas),
                              run.figure_path(fig), xlabel="background noise σ",
                              ylabel="test accuracy", logy=False,
                              title=f"{noise} noise: test accuracy (mean ± std over seeds)")
    return fig


def _data_figure(cfg, run: RunDir, per_data: list[dict]) -> str:
    import rankbias.plots as plots

    sig = list(cfg.sigmas)
    panels: dict[str, dict] = {}
    for noise in cfg.noise_models:
        rows = [r for r in per_data if r["noise"] == noise]
        lines = {}
        for key, label in (("pixel_stable_rank", "pixel-matrix stable rank"),
                           ("patch_stable_rank", f"{cfg.patch_size}x{cfg.patch_size} patch-matrix stable rank"),
                           ("id_twonn", "intrinsic dim. (TwoNN)"), ("id_mle", "intrinsic dim. (MLE)")):
            if rows and key in rows[0]:
                lines[label] = (np.array([r[key] for r in rows], float), None)
                lines[f"{label}, clean"] = (np.array([r[f"clean_{key}"] for r in rows], float), None)
        panels[f"{noise} noise"] = lines
    fig = "data_rank_vs_sigma"
    plots.ranks_against_sigma(panels, sig, run.figure_path(fig), xlabel="background noise σ",
                              ylabel="rank / dimension (log scale)",
                              title="the training images: rank and intrinsic dimension (mean over seeds)")
    return fig


# ------------------------------------------------------------------- report


def _fmt(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.3g}"


def layer_sigma_rows(table: dict, measure: str) -> list[dict]:
    """Rows layer x sigma (> 0) of the mean log ratio, with the value's spread over seeds."""
    sig, m = table["sigmas"], table["measures"][measure]
    rows = []
    for i, layer in enumerate(table["layers"]):
        row = {"layer": layer}
        for j, s in enumerate(sig):
            if s != 0.0:
                row[f"σ={s:g}"] = f"{_fmt(m['log_ratio_mean'][i][j])} ± {_fmt(m['log_ratio_std'][i][j])}"
        rows.append(row)
    return rows


def _write_report(cfg, run: RunDir, summary: dict) -> None:
    from rankbias.framework.tables import markdown_table
    from rankbias.run_reports import write_run_report

    sections = [("Data", markdown_table([summary["data"]]))]
    if summary["notes"]:
        sections.append(("Notes", "\n".join(f"- {n}" for n in summary["notes"])))
    sections.append(("The training images per noise level (means over seeds)", markdown_table(summary["per_data"])))
    cols = ["sigma", "test_acc_mean", "test_acc_std", "test_acc_clean_mean", "train_acc_mean",
            "penultimate_emb_effective_rank_noisy", "penultimate_emb_effective_rank_clean",
            "penultimate_id_noisy_twonn", "penultimate_id_noisy_mle", "n_diverged"]
    for t in summary["layer_tables"]:
        name, noise = t["model"], t["noise"]
        rows = [r for r in summary["per_sigma"] if r["model"] == name and r["noise"] == noise]
        sections.append((f"{name}, {noise} noise: accuracy and penultimate embeddings",
                         markdown_table(rows, [c for c in cols if rows and c in rows[0]])))
        for mkey in ("weight_stable_rank", "emb_effective_rank_noisy"):
            sections.append((f"{name}, {noise} noise: log(growth) / log(data growth), {MEASURES[mkey]}",
                             markdown_table(layer_sigma_rows(t, mkey))))
        vrows = [{"layer": v["layer"], "measure": v["measure"], "status": v["status"],
                  "measured": v["verdict"]["measured"]}
                 for v in summary["layer_verdicts"] if v["model"] == name and v["noise"] == noise
                 and v["measure"] in ("weight_stable_rank", "emb_effective_rank_noisy")]
        sections.append((f"{name}, {noise} noise: verdict per layer", markdown_table(vrows)))
    write_run_report(run, title="noise-robustness-deep", claim=CLAIM, verdict=summary["verdict"],
                     sections=sections, figures=summary["figures"], config=cfg.to_dict())
