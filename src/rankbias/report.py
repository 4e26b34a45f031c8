"""Markdown reports of runs (and, for `rankbias reproduce`, the combined report)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["fmt", "markdown_table", "verdict_line", "write_reproduce_report", "write_run_report"]


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    if columns is None:  # the union of the rows' keys, in first-seen order
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = list(columns)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out) + "\n"


def verdict_line(verdict: Mapping[str, Any]) -> str:
    holds = verdict.get("holds")
    word = "HOLDS" if holds else ("does NOT hold" if holds is False else "not evaluated")
    return f"**Verdict: the claim {word}.**"


def write_run_report(
    run,
    *,
    title: str,
    claim: str,
    verdict: Mapping[str, Any] | None,
    sections: Sequence[tuple[str, str]],
    figures: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
) -> None:
    """report.md of one run: the claim, the verdict with its numbers, tables, figures."""
    lines = [f"# {title}", "", f"**Claim.** {claim}", ""]
    if verdict is not None:
        lines += [verdict_line(verdict), ""]
        details = {k: v for k, v in verdict.items() if k != "holds"}
        if details:
            lines += [markdown_table([{"criterion": k, "value": fmt(v)} for k, v in details.items()]), ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    for fig in figures:
        lines += [f"![{fig}](figures/{fig}.png)", ""]
    if config is not None:
        lines += ["## Config", "", "```json"]
        import json

        lines += [json.dumps(dict(config), indent=2), "```", ""]
    run.write_text("report.md", "\n".join(lines))


# ------------------------------------------------ the combined report (reproduce)
_VERDICT_STYLE = {
    "holds": "#1a7f37",
    "does not hold": "#b42318",
    "failed": "#b42318",
    "not run": "#6b7280",
    "no verdict": "#6b7280",
}


def _flat_numbers(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A verdict's numbers, nested mappings joined with '.' (the claim's evidence)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_flat_numbers(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _measured_tables(summary: Mapping[str, Any], prefix: str = "") -> list[tuple[str, list[dict]]]:
    """The ``per_<key>`` lists of a summary (what was swept), as tables.

    Scalars stay columns; a nested mapping (e.g. a per-row verdict) is
    flattened into dotted columns; a nested list of rows (e.g. ``per_depth``
    inside ``per_target``) becomes a table of its own, titled by its parent row.
    """
    tables: list[tuple[str, list[dict]]] = []
    for k, v in summary.items():
        if not (k.startswith("per_") and isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v)):
            continue
        rows, nested = [], []
        for r in v:
            row: dict[str, Any] = {}
            for c, x in r.items():
                if isinstance(x, Mapping):
                    # one level only: deeper maps (numbers by depth) repeat the nested tables
                    row.update({f"{c}.{kk}": vv for kk, vv in x.items()
                                if not isinstance(vv, list | Mapping)})
                elif isinstance(x, list) and x and all(isinstance(e, Mapping) for e in x):
                    nested.append((r, c, x))
                elif isinstance(x, list):
                    row[c] = json.dumps(x)
                else:
                    row[c] = x
            rows.append(row)
        tables.append((f"{prefix}{k}", rows))
        for r, c, x in nested:
            label = next((f"{ck}={cv}" for ck, cv in r.items() if not isinstance(cv, list | Mapping)), "")
            tables.extend(_measured_tables({c: x}, prefix=f"{prefix}{k}[{label}]."))
    return tables


def _entry_figures(entry: Mapping[str, Any]) -> list[Path]:
    if not entry.get("run_dir"):
        return []
    return sorted((Path(entry["run_dir"]) / "figures").glob("*.png"))


def _seconds(v: Any) -> str:
    return "" if v is None else f"{float(v):.1f} s"


def write_reproduce_report(out_dir, entries: Sequence[Mapping[str, Any]], env: Mapping[str, Any]) -> None:
    """``out_dir/report.md`` and the self-contained ``out_dir/report/index.html`` of a reproduction.

    One section per experiment: the claim, the verdict (holds / does not hold /
    not run / failed), the measured numbers behind it, the ``per_<key>`` tables,
    every figure (embedded as base64 PNG in the HTML) and the config; then the
    environment with the wall time of each experiment and the total.
    """
    from rankbias.framework.runs import atomic_write_text

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", _reproduce_markdown(out_dir, entries, env))
    atomic_write_text(out_dir / "report" / "index.html", _reproduce_html(entries, env))


def _overview_rows(entries) -> list[dict]:
    rows = []
    for e in entries:
        note = (e.get("reason") or (e.get("error") or "").strip().split("\n")[0]).replace("|", "/")
        rows.append({"experiment": e["name"], "verdict": e["verdict"],
                     "wall time": _seconds(e.get("wall_time_s")) + (" (cached)" if e.get("cached") else ""),
                     "note": note})
    return rows


def _reproduce_markdown(out_dir, entries, env) -> str:
    import os

    lines = ["# rankbias: reproduction report", "",
             f"Preset `{env.get('preset')}`; {sum(e['verdict'] == 'holds' for e in entries)} of "
             f"{len(entries)} claims hold. Total wall time {_seconds(env.get('total_wall_time_s'))}.", "",
             "The same report with the figures embedded: [report/index.html](report/index.html).", "",
             markdown_table(_overview_rows(entries)), ""]
    for e in entries:
        lines += [f"## {e['name']}", "", e.get("description", ""), "",
                  f"**Claim.** {e.get('claim') or '(no claim registered)'}", "",
                  f"**Verdict: {e['verdict']}.**" + (f" ({e['reason']})" if e.get("reason") else ""), ""]
        if e.get("error"):
            lines += ["```", e["error"], "```", ""]
            if e.get("run_dir"):
                lines += [f"Traceback: `{os.path.relpath(Path(e['run_dir']) / 'traceback.txt', out_dir)}`", ""]
        summary = e.get("summary") or {}
        details = _flat_numbers({k: v for k, v in (summary.get("verdict") or {}).items() if k != "holds"})
        if details:
            lines += ["**Measured.**", "", markdown_table([{"quantity": k, "value": fmt(v)} for k, v in details.items()]), ""]
        for title, rows in _measured_tables(summary):
            lines += [f"`{title}`:", "", markdown_table(rows), ""]
        for fig in _entry_figures(e):
            rel = os.path.relpath(fig, out_dir)
            lines += [f"![{fig.stem}]({rel})", ""]
        if e.get("config") is not None:
            lines += ["<details><summary>config</summary>", "", "```json",
                      _config_json(e["config"]), "```", "", "</details>", ""]
        if e.get("run_dir"):
            lines += [f"Run directory: `{os.path.relpath(e['run_dir'], out_dir)}`", ""]
    lines += ["## Environment", "", _environment_markdown(entries, env)]
    return "\n".join(lines)


def _environment_rows(env) -> list[dict]:
    rows = [{"item": k, "value": v} for k, v in env.items() if k not in ("packages", "wall_time_s")]
    rows += [{"item": k, "value": v} for k, v in (env.get("packages") or {}).items() if k not in env]
    return rows


def _config_json(config: Mapping[str, Any]) -> str:
    """One field per line, lists kept on one line."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in config.items())
    return "{\n" + body + "\n}"


def _environment_markdown(entries, env) -> str:
    timing = [{"experiment": e["name"], "status": e["status"],
               "compute wall time": _seconds(e.get("wall_time_s")),
               "this invocation": _seconds(e.get("run_wall_time_s")),
               "cached": e.get("cached", False)} for e in entries]
    return markdown_table(_environment_rows(env)) + "\n" + markdown_table(timing)


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    import html

    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0].keys())
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)) if r.get(c) is not None else '')}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(verdict: str) -> str:
    import html

    color = _VERDICT_STYLE.get(verdict, "#6b7280")
    return f'<span class="badge" style="background:{color}">{html.escape(verdict)}</span>'


def _reproduce_html(entries, env) -> str:
    import base64
    import html

    esc = html.escape
    n_hold = sum(e["verdict"] == "holds" for e in entries)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>rankbias: reproduction report</title><style>",
        "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#1f2328;line-height:1.45}",
        "table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d0d7de;"
        "padding:.25em .6em;text-align:left}th{background:#f6f8fa}",
        ".badge{color:#fff;border-radius:.8em;padding:.1em .7em;font-weight:600;font-size:.9em}",
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}section{border-top:2px solid #d0d7de;"
        "margin-top:2em}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}",
        ".claim{background:#f6f8fa;border-left:4px solid #0969da;padding:.5em .8em}",
        "</style></head><body>",
        "<h1>rankbias: reproduction report</h1>",
        f"<p>Preset <code>{esc(str(env.get('preset')))}</code>: <b>{n_hold} of {len(entries)}</b> claims hold. "
        f"Total wall time {esc(_seconds(env.get('total_wall_time_s')))}.</p>",
        _html_table(_overview_rows(entries)),
    ]
    for e in entries:
        name = esc(e["name"])
        parts += [f"<section id='{name}'><h2>{name} {_badge(e['verdict'])}</h2>",
                  f"<p>{esc(e.get('description', ''))}</p>",
                  f"<p class='claim'><b>Claim.</b> {esc(e.get('claim') or '(no claim registered)')}</p>",
                  f"<p><b>Verdict: {esc(e['verdict'])}.</b>"
                  + (f" ({esc(e['reason'])})" if e.get("reason") else "") + "</p>"]
        if e.get("error"):
            parts.append(f"<pre>{esc(e['error'])}</pre>")
            tb = Path(e["run_dir"]) / "traceback.txt" if e.get("run_dir") else None
            if tb is not None and tb.exists():
                parts.append(f"<details><summary>traceback</summary><pre>{esc(tb.read_text())}</pre></details>")
        summary = e.get("summary") or {}
        details = _flat_numbers({k: v for k, v in (summary.get("verdict") or {}).items() if k != "holds"})
        if details:
            parts += ["<h3>Measured</h3>", _html_table([{"quantity": k, "value": v} for k, v in details.items()])]
        for title, rows in _measured_tables(summary):
            parts += [f"<h4><code>{esc(title)}</code></h4>", _html_table(rows)]
        for fig in _entry_figures(e):
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(fig.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(fig.stem)}</figcaption></figure>")
        if e.get("config") is not None:
            parts.append("<details><summary>config</summary><pre>"
                         + esc(_config_json(e["config"])) + "</pre></details>")
        parts.append("</section>")
    timing = [{"experiment": e["name"], "status": e["status"], "compute wall time": _seconds(e.get("wall_time_s")),
               "this invocation": _seconds(e.get("run_wall_time_s")), "cached": e.get("cached", False)}
              for e in entries]
    parts += ["<section><h2>Environment</h2>", _html_table(_environment_rows(env)),
              "<h3>Wall time per experiment</h3>", _html_table(timing), "</section></body></html>"]
    return "\n".join(parts)
