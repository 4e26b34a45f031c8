"""Markdown reports of runs (and, for `rankbias reproduce`, the combined report)."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankbias.framework.tables import fmt, markdown_table

# the one verdict-to-word function: "not testable" and "inconclusive" are never shown as a failure
from rankbias.verdicts import status_of

__all__ = [
    "NOTICES_KEY",
    "VERDICT_KEYS",
    "OUTCOMES",
    "paper_vs_measured",
    "verdict_line",
    "write_reproduce_report",
    "write_run_report",
]

VERDICT_KEYS = ("status", "holds", "criterion", "reason", "statement", "paper", "measured")
"""The keys of a verdict dict (see :mod:`rankbias.verdicts`) that are not its numbers."""


OUTCOMES = {
    "holds": "the data support the paper's statement at the stated confidence",
    "does not hold": "the data contradict it: an effect of the wrong sign, or an interval that excludes "
                     "the smallest effect the statement means",
    "inconclusive": "the interval holds both \"no effect\" and the claimed effect: more seeds or test images "
                    "would decide",
    "not testable": "the setting cannot show the statement (a model at chance, data whose rank does not "
                    "grow, fewer than two seeds)",
}
"""What each outcome means, as the reproduction report's legend says it."""


def verdict_line(verdict: Mapping[str, Any]) -> str:
    word = status_of(verdict)
    reason = f" {verdict['reason']}" if verdict.get("reason") else ""
    if word in ("holds", "does not hold"):
        return f"**Verdict: the claim {'HOLDS' if word == 'holds' else 'does NOT hold'}.**{reason}"
    return f"**Verdict: {word}.**{reason}"


def _cell_text(v: Any) -> str:
    if isinstance(v, Mapping | list | tuple):
        return json.dumps(v, default=str)
    return fmt(v)


def paper_vs_measured(verdict: Mapping[str, Any] | None, claim: str = "") -> list[dict[str, str]]:
    """The rows of a claim's "paper vs measured" table: ``{"": what, "paper": ..., "measured": ...}``.

    ``paper`` and ``measured`` are the verdict's keys of those names: two mappings
    give a row per quantity (in the paper's order, then ours), anything else one
    row. They follow the paper's own words that the verdict tests (``statement``,
    quoted), and precede the test (``criterion``) and its outcome (the status and
    ``reason``). A verdict without them falls back to the claim text against the verdict.
    """
    verdict = verdict or {}
    paper, measured = verdict.get("paper"), verdict.get("measured")
    rows: list[dict[str, str]] = []
    if verdict.get("statement"):
        rows.append({"": "statement", "paper": str(verdict["statement"]), "measured": ""})
    if isinstance(paper, Mapping) and isinstance(measured, Mapping):
        for k in dict.fromkeys([*paper, *measured]):
            rows.append({"": str(k), "paper": _cell_text(paper.get(k, "")) if k in paper else "",
                         "measured": _cell_text(measured[k]) if k in measured else ""})
    elif paper is not None or measured is not None:
        rows.append({"": "claim", "paper": _cell_text(paper if paper is not None else claim),
                     "measured": _cell_text(measured) if measured is not None else ""})
    else:
        rows.append({"": "claim", "paper": claim or "(no claim registered)", "measured": ""})
    if verdict.get("criterion"):
        rows.append({"": "test", "paper": "", "measured": str(verdict["criterion"])})
    result = status_of(verdict)
    if verdict.get("reason"):
        result += f": {verdict['reason']}"
    rows.append({"": "result", "paper": "", "measured": result})
    return rows


NOTICES_KEY = "notices"
"""A summary's list of what the reader must know before its verdict (e.g. that a stand-in
dataset was used, and the command that fixes it): every report leads with them."""


def _notices(e: Mapping[str, Any]) -> list[str]:
    return list((e.get("summary") or {}).get(NOTICES_KEY) or [])


def _notice_lines(notices: Sequence[str], name: str = "") -> list[str]:
    return [f"> **Notice{f' ({name})' if name else ''}.** {n}\n" for n in notices]


def write_run_report(
    run,
    *,
    title: str,
    claim: str,
    verdict: Mapping[str, Any] | None,
    sections: Sequence[tuple[str, str]],
    figures: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    notices: Sequence[str] = (),
) -> None:
    """report.md of one run: its notices (:data:`NOTICES_KEY`), the claim, the verdict with its
    numbers, tables, figures."""
    lines = [f"# {title}", "", *_notice_lines(notices), f"**Claim.** {claim}", ""]
    if verdict is not None:
        lines += [verdict_line(verdict), "", markdown_table(paper_vs_measured(verdict, claim)), ""]
        details = {k: v for k, v in verdict.items() if k not in VERDICT_KEYS}
        if details:
            lines += [markdown_table([{"quantity": k, "value": _cell_text(v)} for k, v in details.items()]), ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    for fig in figures:
        lines += [f"![{fig}](figures/{fig}.png)", ""]
    if config is not None:
        lines += ["## Config", "", "```json", json.dumps(dict(config), indent=2), "```", ""]
    run.write_text("report.md", "\n".join(lines))


# ------------------------------------------------ the combined report (reproduce)
_VERDICT_STYLE = {  # one colour per outcome; failed and not run are no outcome
    "holds": "#1a7f37",
    "does not hold": "#b42318",
    "inconclusive": "#0969da",
    "not testable": "#9a6700",
    "failed": "#6e1a14",
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


def _entry_word(e: Mapping[str, Any]) -> str:
    """The entry's verdict as the report shows it."""
    if e.get("status") == "done":
        return status_of((e.get("summary") or {}).get("verdict"))
    return e["verdict"]


def _entry_parts(e: Mapping[str, Any]) -> tuple[list[dict], dict[str, Any], list[tuple[str, list[dict]]]]:
    """(the paper vs measured rows, the verdict's other numbers, the per_<key> tables)."""
    summary = e.get("summary") or {}
    verdict = summary.get("verdict")
    claim = e.get("claim") or ""
    if e.get("status") != "done":  # nothing measured: the claim, and why there is no result
        why = e.get("reason") or (e.get("error") or "").strip().split("\n")[0]
        pvm = [{"": "claim", "paper": claim or "(no claim registered)", "measured": ""},
               {"": "result", "paper": "", "measured": _entry_word(e) + (f": {why}" if why else "")}]
        return pvm, {}, []
    numbers = _flat_numbers({k: v for k, v in (verdict or {}).items() if k not in VERDICT_KEYS})
    return paper_vs_measured(verdict, claim), numbers, _measured_tables(summary)


def _claim_not_in(pvm: Sequence[Mapping[str, str]], e: Mapping[str, Any]) -> bool:
    return bool(e.get("claim")) and all(r["paper"] != e["claim"] for r in pvm)


def write_reproduce_report(out_dir, entries: Sequence[Mapping[str, Any]], env: Mapping[str, Any]) -> None:
    """``out_dir/report.md`` and the self-contained ``out_dir/report/index.html`` of a reproduction.

    A legend of the four outcomes, then one section per experiment, led by its
    "paper vs measured" table (the paper's words it tests, the paper's statement or
    figure value beside ours, the test and its outcome: holds, does not hold,
    inconclusive, not testable, or failed / not run), then its figures
    (embedded as base64 PNG in the HTML), then the numbers behind the verdict,
    the ``per_<key>`` tables and the config, collapsed; then the environment with
    the wall time of each experiment and the total.
    """
    from rankbias.framework.runs import atomic_write_text

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", _reproduce_markdown(out_dir, entries, env))
    atomic_write_text(out_dir / "report" / "index.html", _reproduce_html(entries, env))


def _overview_rows(entries) -> list[dict]:
    rows = []
    for e in entries:
        note = (e.get("reason") or (e.get("error") or "").strip().split("\n")[0]).replace("|", "/")
        statement = ((e.get("summary") or {}).get("verdict") or {}).get("statement") or ""
        rows.append({"experiment": e["name"], "verdict": _entry_word(e), "paper's statement": statement,
                     "preset": e.get("preset") or "",
                     "wall time": _seconds(e.get("wall_time_s")) + (" (cached)" if e.get("cached") else ""),
                     "note": note})
    return rows


def _headline(entries, env) -> str:
    words = [_entry_word(e) for e in entries]
    counts = ", ".join(f"{words.count(w)} {w}" for w in _VERDICT_STYLE if words.count(w))
    return (f"Preset `{env.get('preset')}`: {words.count('holds')} of {len(entries)} claims hold ({counts}). "
            f"Total wall time {_seconds(env.get('total_wall_time_s'))}.")


def _legend_rows() -> list[dict[str, str]]:
    return [{"outcome": k, "meaning": v} for k, v in OUTCOMES.items()]


def _reproduce_markdown(out_dir, entries, env) -> str:
    lines = ["# rankbias: reproduction report", "", _headline(entries, env), "",
             *[x for e in entries for x in _notice_lines(_notices(e), e["name"])],
             "The same report with the figures embedded: [report/index.html](report/index.html).", "",
             markdown_table(_overview_rows(entries)), "",
             "Each claim is decided by a test stated before the run, with four outcomes:", "",
             markdown_table(_legend_rows()), ""]
    for e in entries:
        pvm, numbers, tables = _entry_parts(e)
        lines += [f"## {e['name']}: {_entry_word(e)}", "", e.get("description", ""), "",
                  *_notice_lines(_notices(e))]
        if _claim_not_in(pvm, e):
            lines += [f"**Claim.** {e['claim']}", ""]
        lines += [markdown_table(pvm), ""]
        if e.get("error"):
            lines += ["```", e["error"], "```", ""]
            if e.get("run_dir"):
                lines += [f"Traceback: `{os.path.relpath(Path(e['run_dir']) / 'traceback.txt', out_dir)}`", ""]
        for fig in _entry_figures(e):
            lines += [f"![{fig.stem}]({os.path.relpath(fig, out_dir)})", ""]
        if numbers:
            lines += ["<details><summary>numbers behind the verdict</summary>", "",
                      markdown_table([{"quantity": k, "value": _cell_text(v)} for k, v in numbers.items()]),
                      "</details>", ""]
        for title, rows in tables:
            lines += [f"<details><summary>table <code>{title}</code></summary>", "", markdown_table(rows),
                      "</details>", ""]
        if e.get("config") is not None:
            lines += ["<details><summary>config</summary>", "", "```json",
                      _config_json(e["config"]), "```", "", "</details>", ""]
        if e.get("run_dir"):
            lines += [f"Run directory: `{os.path.relpath(e['run_dir'], out_dir)}`", ""]
    lines += ["## Environment", "", markdown_table(_environment_rows(env)), "", markdown_table(_timing_rows(entries))]
    return "\n".join(lines)


def _environment_rows(env) -> list[dict]:
    rows = [{"item": k, "value": v} for k, v in env.items() if k not in ("packages", "wall_time_s")]
    rows += [{"item": k, "value": v} for k, v in (env.get("packages") or {}).items() if k not in env]
    return rows


def _timing_rows(entries) -> list[dict]:
    return [{"experiment": e["name"], "status": e["status"], "compute wall time": _seconds(e.get("wall_time_s")),
             "this invocation": _seconds(e.get("run_wall_time_s")), "cached": e.get("cached", False)}
            for e in entries]


def _config_json(config: Mapping[str, Any]) -> str:
    """One field per line, lists kept on one line."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in config.items())
    return "{\n" + body + "\n}"


# ------------------------------------------------------------------------ HTML
_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45;overflow-wrap:break-word}
.scroll{max-width:100%;overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa}
table.pvm{width:100%;table-layout:fixed}
table.pvm td:first-child,table.pvm th:first-child{width:12em;font-weight:600}
table.pvm tr.result td{background:#f6f8fa}
.badge{color:#fff;border-radius:.8em;padding:.1em .7em;font-weight:600;font-size:.85em;white-space:nowrap}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}
figure{margin:.5em 0}
section{border-top:2px solid #d0d7de;margin-top:2em}
pre{background:#f6f8fa;padding:.6em;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere}
details{margin:.4em 0}summary{cursor:pointer;color:#0969da}
.muted{color:#6b7280}
.claim{background:#f6f8fa;border-left:4px solid #0969da;padding:.5em .8em}
.notice{background:#fff8c5;border:1px solid #d4a72c;border-left:6px solid #9a6700;padding:.5em .8em}
"""


def _html_table(rows: Sequence[Mapping[str, Any]], cls: str = "", row_class=None) -> str:
    """A table in a horizontal scroll box, so that a wide one never widens the page."""
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0].keys())
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        f"<tr{row_class(r) if row_class else ''}>"
        + "".join(f"<td>{html.escape(_cell_text(r.get(c)) if r.get(c) is not None else '')}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    table = f"<table{f' class={cls!r}' if cls else ''}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _badge(word: str) -> str:
    color = _VERDICT_STYLE.get(word, "#6b7280")
    return f'<span class="badge" style="background:{color}">{html.escape(word)}</span>'


def _html_notice(text: str, name: str = "") -> str:
    """A notice box; `code` spans of the text as <code>."""
    import re

    body = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return f"<p class='notice'><b>Notice{f' ({html.escape(name)})' if name else ''}.</b> {body}</p>"


def _reproduce_html(entries, env) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>rankbias: reproduction report</title><style>{_CSS}</style></head><body>",
        "<h1>rankbias: reproduction report</h1>",
        f"<p>{esc(_headline(entries, env)).replace('`', '')}</p>",
        *[_html_notice(n, e["name"]) for e in entries for n in _notices(e)],
        _html_table(_overview_rows(entries)),
        "<p>Each claim is decided by a test stated before the run, with four outcomes:</p><ul class='legend'>"
        + "".join(f"<li>{_badge(k)} {esc(v)}</li>" for k, v in OUTCOMES.items()) + "</ul>",
    ]
    for e in entries:
        name, word = esc(e["name"]), _entry_word(e)
        pvm, numbers, tables = _entry_parts(e)
        parts += [f"<section id='{name}'><h2>{name} {_badge(word)}</h2>",
                  f"<p class='muted'>{esc(e.get('description', ''))}</p>"]
        parts += [_html_notice(n) for n in _notices(e)]
        if _claim_not_in(pvm, e):
            parts.append(f"<p class='claim'><b>Claim.</b> {esc(e['claim'])}</p>")
        parts += [_html_table(pvm, cls="pvm",
                              row_class=lambda r: " class='result'" if r[""] in ("test", "result") else "")]
        if e.get("error"):
            parts.append(f"<pre>{esc(e['error'])}</pre>")
            tb = Path(e["run_dir"]) / "traceback.txt" if e.get("run_dir") else None
            if tb is not None and tb.exists():
                parts.append(f"<details><summary>traceback</summary><pre>{esc(tb.read_text())}</pre></details>")
        for fig in _entry_figures(e):
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(fig.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='muted'>{esc(fig.stem)}</figcaption></figure>")
        if numbers:
            parts.append("<details><summary>numbers behind the verdict</summary>"
                         + _html_table([{"quantity": k, "value": v} for k, v in numbers.items()]) + "</details>")
        for title, rows in tables:
            parts.append(f"<details><summary>table <code>{esc(title)}</code> ({len(rows)} rows)</summary>"
                         + _html_table(rows) + "</details>")
        if e.get("config") is not None:
            parts.append("<details><summary>config</summary><pre>"
                         + esc(_config_json(e["config"])) + "</pre></details>")
        parts.append("</section>")
    parts += ["<section><h2>Environment</h2>", _html_table(_environment_rows(env)),
              "<h3>Wall time per experiment</h3>", _html_table(_timing_rows(entries)), "</section></body></html>"]
    return "\n".join(parts)
