"""Printing answers: aligned tables for people, JSON for scripts."""
from __future__ import annotations

import csv
import json
import operator
import sys


def table(rows: list[dict], columns: list[tuple[str, str]], out=None) -> None:
    """``columns`` are (key, heading) pairs; missing values print as '-'."""
    out = out or sys.stdout
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading)] + [len(r[i]) for r in cells]) for i, (_, heading) in enumerate(columns)]
    line = "  ".join(heading.ljust(w) for (_, heading), w in zip(columns, widths))
    print(line.rstrip(), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def emit(value, as_json: bool, human) -> None:
    if as_json:
        print(json.dumps(value, indent=2, sort_keys=True))
    else:
        human(value)


def write_csv(rows: list[dict], columns: list[tuple[str, str]], out=None) -> None:
    stream = RowStream(columns, "csv", out)
    stream.write(rows)
    stream.close()


def _cells(columns: list[tuple[str, str]]):
    """A row's values in the columns' order, fast when every column is there (a missing one is empty;
    the csv module writes None as an empty field)."""
    keys = [key for key, _ in columns]
    every = operator.itemgetter(*keys) if len(keys) > 1 else (lambda row: (row[keys[0]],))

    def cells(row: dict):
        try:
            return every(row)
        except KeyError:
            return [row.get(key) for key in keys]
    return cells


def rows_out(rows: list[dict], columns: list[tuple[str, str]], fmt: str) -> None:
    """A list of records as a table, CSV or JSON."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif fmt == "csv":
        write_csv(rows, columns)
    else:
        table(rows, columns)


_SORTED = json.JSONEncoder(sort_keys=True)      # made once: json.dumps with an option makes one per call


class RowStream:
    """Rows printed as they come, a page at a time: CSV and JSON are written at once (an export of a
    million rows never sits in memory); a table is aligned, so it is printed at ``close``."""

    def __init__(self, columns: list[tuple[str, str]], fmt: str, out=None) -> None:
        self.columns, self.fmt, self.out = columns, fmt, out or sys.stdout
        self.count = 0
        self._held: list[dict] = []
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(self.out)
            self._csv.writerow([key for key, _ in columns])
            self._cells = _cells(columns)
        elif fmt == "json":
            self.out.write("[")

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "csv":
            self._csv.writerows(map(self._cells, rows))
        elif self.fmt == "json":
            if rows:        # a page in one write; the same text as json.dumps(row, sort_keys=True) each
                self.out.write(("\n" if self.count == 0 else ",\n") + ",\n".join(map(_SORTED.encode, rows)))
                self.count += len(rows)
            self.out.flush()
            return
        else:
            self._held.extend(rows)
        self.count += len(rows)

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "table":
            table(self._held, self.columns, self.out)
        self.out.flush()
