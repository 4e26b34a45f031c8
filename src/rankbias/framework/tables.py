"""Plain-text tables: how a value reads in a report cell, and a Markdown table of rows.

Below every writer of reports (run reports, ``rankbias analyze``, the CLI's tables),
so each can use it without importing another's layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["fmt", "markdown_table"]


def fmt(v: Any, digits: int = 4) -> str:
    """``v`` as a table cell: floats to ``digits`` significant digits, the rest by ``str``.

    Parameters
    ----------
    v : Any
        The value.
    digits : int
        Significant digits of a finite float.

    Returns
    -------
    str
        The text.

    Examples
    --------
    >>> fmt(2 / 3), fmt(True), fmt(float("nan")), fmt(12)
    ('0.6667', 'True', 'nan', '12')
    """
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows``, one line per row, each cell through :func:`fmt`.

    Parameters
    ----------
    rows : sequence of mappings
        The rows; a key a row lacks is an empty (``None``) cell.
    columns : sequence of str, optional
        The columns, in order (default: the union of the rows' keys, in first-seen order).

    Returns
    -------
    str
        The table with a trailing newline, or ``"(no rows)\\n"``.

    Examples
    --------
    >>> print(markdown_table([{"a": 1, "b": 0.5}, {"a": "x|y"}]), end="")
    | a | b |
    |---|---|
    | 1 | 0.5 |
    | x\\|y | None |
    """
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = list(columns)

    def cell(v: Any) -> str:  # a | or a newline would break the row
        return fmt(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(out) + "\n"
