"""How the report writes numbers (``14,218``, ``54.4%``, ``7.55 × 10⁻⁴``) and tables of them."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from overparam_lit.studies.figures.common import num

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` (booleans too: a flag is not a number on the page)."""
    return None if isinstance(value, bool) else num(value)


def fmt(value: Any) -> str:
    """A number for people: counts with thousands separators (``14,218``), other numbers to 3
    significant digits without trailing zeros (``0.544``, ``2.29``, ``0.01``, ``1,420``), very small
    or large ones as ``7.55 × 10⁻⁴``; text is returned as it is and a missing value as an empty
    string."""
    if value is None:
        return ""
    if isinstance(value, str):
        x = _number(value)
        if x is None:
            return value
        value = int(x) if x.is_integer() and not any(c in value for c in ".eE") else x
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    x = _number(value)
    if x is None:
        return "" if isinstance(value, float) else str(value)
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    if -3 <= exp < 6:
        text = f"{x:,.{max(0, 2 - exp)}f}"
        rounded = float(text.replace(",", ""))
        if rounded != 0 and math.floor(math.log10(abs(rounded))) > exp:  # 9.996 -> 10.0: one digit fewer
            text = f"{x:,.{max(0, 1 - exp)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa = x / 10.0 ** exp
    if round(abs(mantissa), 2) >= 10:
        mantissa, exp = mantissa / 10, exp + 1
    return f"{mantissa:.3g} × 10{str(exp).translate(_SUPERSCRIPT)}"


def pct(value: Any) -> str:
    """A fraction as a percentage to 3 significant digits (``0.544`` -> ``54.4%``; 0 and 1 exactly
    as ``0%`` and ``100%``); empty when missing."""
    x = _number(value)
    if x is None:
        return ""
    if x in (0.0, 1.0):
        return f"{x:.0%}"
    return fmt(100 * x) + "%"


def _width(value: Any) -> str:
    x = _number(value)
    return fmt(int(x)) if x is not None and x.is_integer() else fmt(value)


def _cell(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value)[:200])
    return html.escape(fmt(value))


def table_html(header: list[str], rows: list[list[Any]], marks: set[int] = frozenset(),
               ident: str | None = None, formatted: bool = False) -> str:
    """An HTML table in a horizontally scrolling box (it never widens the page). Cells are
    formatted with :func:`fmt` unless ``formatted`` (then they are escaped text); rows whose
    index is in ``marks`` are highlighted."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{html.escape(str(v)) if formatted else _cell(v)}</td>" for v in row)
        body.append(f"<tr class='mark'>{cells}</tr>" if i in marks else f"<tr>{cells}</tr>")
    attr = f" id='{ident}'" if ident else ""
    return (f"<div class='scroll'><table{attr}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def numbers_html(data: dict[str, Any]) -> str:
    """A figure's numbers: scalars in one table, mappings of mappings and lists of mappings as
    tables of their own (one level of nesting; deeper values are shown as JSON)."""
    parts = []
    flat = [(k, v) for k, v in data.items() if k not in ("figure", "planes_figure") and (
        not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v)))]
    if flat:
        parts.append(table_html(["key", "value"], [[k, v] for k, v in flat]))
    for key, value in data.items():
        rows: list[tuple[str, dict[str, Any]]] = []
        if isinstance(value, dict) and value and all(isinstance(x, dict) for x in value.values()):
            rows = [(str(k), x) for k, x in value.items()]
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            rows = [(str(i), x) for i, x in enumerate(value)]
        if not rows:
            continue
        cols = list(dict.fromkeys(c for _, x in rows for c in x))
        parts.append(f"<h4>{html.escape(key)}</h4>" + table_html([key, *cols], [[k, *[x.get(c) for c in cols]]
                                                                              for k, x in rows]))
    return "".join(parts)
