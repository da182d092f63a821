"""The members table's format: the columns of ``members.csv`` (one row per member and epoch)
and each member's final row read back from it. Pure (no Lightning): the
:class:`~overparam_lit.callbacks.members.MembersTable` callback writes the table and logs its final
rows, and :func:`~overparam_lit.studies.results.member_finals` reads them for the figures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SPLIT_KEYS = {
    "classification": ("loss", "acc", "acc_noisy"),
    "regression": ("loss",),
}

MEMBER_KEYS = ("member", "seed", "width", "num_params", "epoch", "step")
"""The columns that name a member and the epoch and step of a row."""


def member_columns(task: str) -> list[str]:
    """Columns of ``members.csv`` for a task."""
    cols = list(MEMBER_KEYS)
    for split in ("train", "val", "test"):
        for key in SPLIT_KEYS[task]:
            if split == "train" and key == "acc_noisy":
                key = "acc_noisy_memorized"
            cols.append(f"{split}/{key}")
    return cols


def number(text: str | None) -> float | None:
    """A table cell as a float (``None`` when empty or not a number)."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def final_rows(rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """One row per member of a members table's rows: the last value of every column (a test's
    rows keep the fit's ``epoch`` and ``step``) and ``best/val_acc`` (the highest validation
    accuracy of any epoch); the member columns as ints."""
    out: dict[int, dict[str, Any]] = {}
    for raw in rows:
        member = int(raw["member"])
        merged = out.setdefault(member, {})
        values = {k: number(v) for k, v in raw.items() if k and v not in (None, "")}
        testing = any(k.startswith("test/") for k in values)
        for key, value in values.items():
            if value is None or (testing and key in ("epoch", "step")):
                continue
            merged[key] = value
        acc = values.get("val/acc")
        if acc is not None:
            merged["best/val_acc"] = max(acc, merged.get("best/val_acc", acc))
    finals = []
    for member in sorted(out):
        row = out[member]
        for key in MEMBER_KEYS:
            if key in row:
                row[key] = int(row[key])
        finals.append(row)
    return finals
