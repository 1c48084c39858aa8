"""A lab run's journal: one JSON object per line, in the order things happened.

Every record has ``seq`` (1, 2, ...), ``lab`` (the lab date, ISO) and ``kind``; ``wall`` is the only
wall-clock field, so two runs of the same file and seed give the same journal once ``wall`` is
dropped (``comparable``)."""
from __future__ import annotations

import datetime
import json


class Journal:
    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._file = open(path, "w", encoding="utf-8") if path else None
        self.seq = 0

    def write(self, lab_date: str, kind: str, **fields) -> dict:
        self.seq += 1
        record = {"seq": self.seq, "lab": lab_date, "kind": kind, **fields,
                  "wall": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")}
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def comparable(lines) -> list[dict]:
    """A journal's records without their wall-clock field, to compare two runs."""
    out = []
    for line in lines:
        record = json.loads(line)
        record.pop("wall", None)
        out.append(record)
    return out
