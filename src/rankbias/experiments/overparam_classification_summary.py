"""overparam-classification's aggregation over seeds, verdict and figure (the experiment:
:mod:`overparam_classification`)."""

from __future__ import annotations

import math

from rankbias.experiments._statements import CLAIMED_GAIN_PP, PAPER2_OVERPARAM
from rankbias.verdicts import mean_std, paired_gain_verdict, verdict

__all__ = ["BASELINE_KEY", "PAPER", "aggregate", "make_verdict", "plot"]

BASELINE_KEY = {"default": "d1", "same as factors": "d1f"}


def _ms(vals) -> tuple[float | None, float | None]:
    """:func:`rankbias.verdicts.mean_std`, with None (not NaN) for no value, for the JSON summary."""
    m, sd = mean_std(list(vals))
    return (None, None) if math.isnan(m) else (m, sd)


def _baselines(cfg) -> list[str]:
    """The baseline inits trained: the verdict's first, then the other if asked."""
    other = [b for b in BASELINE_KEY if b != cfg.baseline_init]
    return [cfg.baseline_init, *(other if cfg.compare_both_baselines else [])]


def aggregate(cfg, runs: list[dict]) -> tuple[list[dict], dict[str, dict[str, list[float]]]]:
    """Per (model, depth, baseline init) rows, and per baseline init the paired per-seed
    differences of test accuracy in pp, {"model/depth=d": [diff per seed]}."""
    per_depth: list[dict] = []
    diffs: dict[str, dict[str, list[float]]] = {b: {} for b in _baselines(cfg)}
    ok_runs = [r for r in runs if r["status"] == "ok"]
    for model_name in cfg.models:
        base = {b: {r["seed"]: r for r in ok_runs if r["model"] == model_name and r["depth"] == 1
                    and r.get("baseline_init", "default") == b} for b in diffs}
        rows = [(1, b) for b in diffs] + [(d, None) for d in cfg.depths if d != 1]
        for d, b in rows:
            sel = [r for r in runs if r["model"] == model_name and r["depth"] == d
                   and (b is None or r.get("baseline_init", "default") == b)]
            ok = [r for r in sel if r["status"] == "ok"]
            row = {"model": model_name, "depth": d, "init": b or "factors", "n_ok": len(ok),
                   "n_failed": len(sel) - len(ok)}
            for key in ("test_acc", "train_acc", "embed_erank", "init_fc_norm"):
                row[f"{key}_mean"], row[f"{key}_std"] = _ms(r[key] for r in ok)
            for bi in diffs:  # depth d minus each baseline, same seed, in pp
                tag = "" if bi == cfg.baseline_init else "_vs_other_baseline"
                for key in ("test_acc", "train_acc"):
                    paired = [100 * (r[key] - base[bi][r["seed"]][key]) for r in ok
                              if r["seed"] in base[bi]]
                    if d != 1:
                        row[f"{key}_diff{tag}_mean"], row[f"{key}_diff{tag}_std"] = _ms(paired)
                        if key == "test_acc":
                            diffs[bi][f"{model_name}/depth={d}"] = paired
            row["collapse_max_rel_diff"] = max((r["collapse_max_rel_diff"] for r in ok), default=None)
            row["train_time_s_mean"], _ = _ms(r["train_time_s"] for r in ok)
            per_depth.append(row)
    return per_depth, diffs


PAPER = ("collapsed expanded models reach higher test accuracy than the baseline trained "
         "identically, with lower train accuracy and lower-rank embeddings (Huh et al. 2023, sec. 6)")


def make_verdict(cfg, per_depth: list[dict], diffs: dict[str, dict[str, list[float]]]) -> dict:
    """:func:`paired_gain_verdict` on the test-accuracy differences against the
    ``baseline_init`` baseline, against the paper's claimed gain
    (:data:`~rankbias.experiments._statements.CLAIMED_GAIN_PP`); the other baseline's
    verdict beside it."""
    by_baseline = {b: paired_gain_verdict(d, unit=" pp", effect=CLAIMED_GAIN_PP) for b, d in diffs.items() if d}
    if cfg.baseline_init not in by_baseline:
        v = verdict("not testable", "paired test-accuracy difference per depth",
                    "no expanded depth in the config")
    else:
        v = dict(by_baseline[cfg.baseline_init])
    rows = {(r["model"], r["depth"], r["init"]): r for r in per_depth}
    measured = []
    for key, iv in v.get("intervals", {}).items():
        model_name, d = key.split("/depth=")
        r = rows.get((model_name, int(d), "factors"), {})
        tr = r.get("train_acc_diff_mean")
        measured.append(f"{key}: test {iv['mean']:+.2f} pp [{iv['lo']:+.2f}, {iv['hi']:+.2f}]"
                        + (f", train {tr:+.2f} pp" if tr is not None else ""))
    expanded = [r for r in per_depth if r["depth"] != 1]
    detectable = v.get("smallest_detectable_effect")
    if measured and detectable is not None:
        measured.append(f"smallest gain these seeds could detect {detectable:.2f} pp (claimed {CLAIMED_GAIN_PP:g} pp)")
    return {
        **v,
        "statement": PAPER2_OVERPARAM,
        "paper": PAPER,
        "measured": f"vs the {cfg.baseline_init!r}-init baseline: " + ("; ".join(measured) or "none"),
        "baseline_init": cfg.baseline_init,
        "other_baseline": {b: {k: x[k] for k in ("status", "reason")}
                           for b, x in by_baseline.items() if b != cfg.baseline_init},
        "max_collapse_rel_diff": max((r["collapse_max_rel_diff"] or 0.0) for r in expanded)
        if expanded else 0.0,
    }


def plot(cfg, per_depth: list[dict], path) -> None:
    """The accuracy / rank figure (:func:`rankbias.plots.accuracy_rank_against_depth`) of the
    factors rows and the ``baseline_init`` baseline of each of ``cfg.models``."""
    from rankbias.plots.overparam import accuracy_rank_against_depth

    per_model = {m: sorted((r for r in per_depth if r["model"] == m and r["n_ok"] > 0
                            and r["init"] in ("factors", cfg.baseline_init)), key=lambda r: r["depth"])
                 for m in cfg.models}
    accuracy_rank_against_depth(per_model, path, depths=cfg.depths,
                                title=f"{cfg.dataset}: accuracy (mean ± std, {len(cfg.seeds)} seeds)")
