"""Markdown reports of runs (and, for `rankbias reproduce`, the combined report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["fmt", "markdown_table", "verdict_line", "write_run_report"]


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
    columns = list(columns or rows[0].keys())
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
