"""The ledger's invariants, checked on a database file. Labs run it as ``tsls check``; the crash
tests run it after every kill.

- every key pack: 0 <= issued <= total, and issued equals the number of its live permanent CALs;
- a device holds at most one live CAL per product version, and one temporary license per version, ever;
- SQLite's own integrity check passes.
"""
from __future__ import annotations

import sqlite3


def check_ledger(path: str) -> list[str]:
    """The invariants broken in the database at ``path``; an empty list means all hold.
    Opens the file read-only, so it can run beside a live server."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _check(db)
    except sqlite3.DatabaseError as e:
        return [f"not a usable tsls license server database: {e}"]
    finally:
        db.close()


def _check(db) -> list[str]:
    problems = []
    integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if integrity != ["ok"]:
        problems.extend(f"integrity: {line}" for line in integrity)
    for pack_id, key_pack_id, total, issued, live in db.execute(
            "SELECT p.id, p.key_pack_id, p.total, p.issued, "
            "(SELECT count(*) FROM licenses l WHERE l.key_pack = p.id AND l.kind = 'permanent' "
            "AND l.status = 'active') FROM key_packs p"):
        if not 0 <= issued <= total:
            problems.append(f"key pack {key_pack_id}: issued {issued} outside 0..{total}")
        if issued != live:
            problems.append(f"key pack {key_pack_id}: issued {issued} but {live} live CALs")
    for hwid, version, kind, n in db.execute(
            "SELECT hwid, product_version, kind, count(*) FROM licenses "
            "WHERE (kind = 'permanent' AND status = 'active') OR kind = 'temporary' "
            "GROUP BY hwid, product_version, kind HAVING count(*) > 1"):
        problems.append(f"device {hwid}: {n} {kind} licenses for version {version}")
    return problems
