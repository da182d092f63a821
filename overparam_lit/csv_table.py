"""A CSV table kept consistent with checkpoints (``metrics.csv``, ``members.csv``); pure (no
Lightning): :mod:`overparam_lit.loggers` wires it into Lightning's loggers and callbacks.

:class:`CheckpointedCSV` is an append-only CSV file. Rows are buffered by
:meth:`~CheckpointedCSV.append`, written by :meth:`~CheckpointedCSV.flush` (appended, or the file
rewritten atomically when new columns appear), and :meth:`~CheckpointedCSV.state_dict` flushes
*and fsyncs* before it reports how many rows are on disk. :meth:`~CheckpointedCSV.load_state_dict`
cuts the file back to that many rows (an atomic rewrite). Put the state in a checkpoint and every
checkpoint refers only to rows on disk; resume from it and the rows written after it (which the
resumed fit writes again) are gone: no lost rows, no duplicates.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from overparam_lit.utils import atomic_write, durable, fsync_path, read_csv_rows

__all__ = ["CheckpointedCSV"]


def _cell(value: Any) -> Any:
    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else value.tolist()
    return "" if value is None else value


class CheckpointedCSV:
    """An append-only CSV file whose rows stay consistent with the checkpoints of a fit.

    Args:
        path: the file (created on the first flush; an existing one is continued).
        columns: fixed column order; ``None`` grows the header as keys appear, sorted (the
            layout of Lightning's ``metrics.csv``). Keys outside fixed columns are dropped.

    Protocol: :meth:`append` rows at any time; :meth:`state_dict` whenever a checkpoint is built
    (it flushes and fsyncs, then returns ``{"rows": n}``); :meth:`load_state_dict` with that
    state when a fit resumes (the file is cut back to ``n`` rows). Only rank zero should own one.
    """

    def __init__(self, path: str | Path, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.fixed = columns is not None
        self.columns: list[str] = list(columns or [])
        self.pending: list[dict[str, Any]] = []
        self._rows_on_disk: int | None = None
        self.checkpointed: int | None = None  # rows of the newest checkpoint made or loaded
        self._unsynced = True  # the file may hold writes not yet on disk (unknown for an old file)
        self._renamed = False  # replaced by a rename whose folder entry is not yet on disk

    # ---- reading -----------------------------------------------------------------------------
    def _scan(self) -> None:
        """Read the header and count the rows of an existing file (once)."""
        if self._rows_on_disk is not None:
            return
        self._rows_on_disk = 0
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header and not self.fixed:
                self.columns = header + [c for c in self.columns if c not in header]
            self._rows_on_disk = sum(1 for _ in reader)

    @property
    def rows_on_disk(self) -> int:
        """Data rows in the file now (buffered rows not counted)."""
        self._scan()
        assert self._rows_on_disk is not None
        return self._rows_on_disk

    def read(self) -> list[dict[str, str]]:
        """The rows on disk as dictionaries of strings."""
        return read_csv_rows(self.path, missing_ok=True)

    # ---- writing -----------------------------------------------------------------------------
    def append(self, row: Mapping[str, Any]) -> None:
        """Buffer one row (written by the next :meth:`flush`)."""
        self.pending.append({str(k): _cell(v) for k, v in row.items()})

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer several rows."""
        for row in rows:
            self.append(row)

    def _rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore", restval="")
                writer.writeheader()
                writer.writerows(rows)

        synced = durable()
        atomic_write(self.path, write, sync=synced)
        self._unsynced = self._renamed = not synced

    def _sync(self) -> None:
        """Wait for the disk: the file, and its folder after a rename that did not."""
        if self._unsynced and self.path.is_file():
            fsync_path(self.path)
        if self._renamed:
            fsync_path(self.path.parent)
        self._unsynced = self._renamed = False

    def flush(self, sync: bool = False) -> int:
        """Write the buffered rows; with ``sync`` they reach the disk before this returns.

        New columns rewrite the whole file atomically (temporary file, fsync unless
        :func:`~overparam_lit.utils.fsync_deferred`, rename), so a kill never leaves it empty or
        with a header that does not match its rows. A file already on disk is not synced again.
        Returns the number of rows on disk.
        """
        self._scan()
        if not self.pending:
            if sync:
                self._sync()
            return self.rows_on_disk
        rows, self.pending = self.pending, []
        new = [] if self.fixed else sorted({k for r in rows for k in r} - set(self.columns))
        if new or not self.path.is_file():
            old = self.read()
            self.columns = sorted(set(self.columns) | set(new)) if not self.fixed else self.columns
            self._rewrite(old + rows)
            self._rows_on_disk = len(old) + len(rows)
            if sync:
                self._sync()
            return self._rows_on_disk
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writerows(rows)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        self._unsynced = not sync
        if sync and self._renamed:
            fsync_path(self.path.parent)
            self._renamed = False
        self._rows_on_disk = self.rows_on_disk + len(rows)
        return self._rows_on_disk

    def truncate(self, rows: int) -> int:
        """Keep the first ``rows`` data rows on disk (an atomic rewrite); buffered rows stay.
        Returns the rows removed."""
        self._scan()
        if not self.path.is_file() or self.rows_on_disk <= rows:
            return 0
        kept = self.read()[: max(0, rows)]
        removed = self.rows_on_disk - len(kept)
        self._rewrite(kept)
        self._rows_on_disk = len(kept)
        return removed

    # ---- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Flush (and fsync unless :func:`~overparam_lit.utils.fsync_deferred`), then
        ``{"rows": n, "file": name}``: what a checkpoint refers to."""
        self.checkpointed = self.flush(sync=durable())
        return {"rows": self.checkpointed, "file": self.path.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> int:
        """Cut the file back to the rows of a checkpoint's state; returns the rows removed."""
        if "rows" not in state:
            return 0
        self.checkpointed = int(state["rows"])
        return self.truncate(self.checkpointed)

    def rewind(self) -> int:
        """Drop the buffered rows and cut the file back to the newest checkpoint's rows (none
        when no checkpoint was made or loaded): the file as a resume from that checkpoint will
        find it. Returns the rows removed from the file."""
        self.pending = []
        removed = self.truncate(self.checkpointed or 0)
        self._unsynced = True
        self._sync()
        return removed
