"""Printing answers: aligned tables for people, JSON for scripts."""
from __future__ import annotations

import csv
import json
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
    writer = csv.writer(out or sys.stdout)
    writer.writerow([key for key, _ in columns])
    for row in rows:
        writer.writerow(["" if row.get(key) is None else row.get(key) for key, _ in columns])


def rows_out(rows: list[dict], columns: list[tuple[str, str]], fmt: str) -> None:
    """A list of records as a table, CSV or JSON."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif fmt == "csv":
        write_csv(rows, columns)
    else:
        table(rows, columns)
