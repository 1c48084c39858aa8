"""The ledger's invariants, checked on a database file. Labs run it as ``tsls check``; the crash
tests run it after every kill.

- every key pack: 0 <= issued <= total, and issued equals the number of its live permanent CALs;
- a device holds at most one live CAL per product version, and one temporary license per version, ever;
- the counts status reads (license_counts, kept by the store and a trigger) equal the licenses counted;
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
    counted = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'license_counts'").fetchone() is not None
    by_version = db.execute("PRAGMA user_version").fetchone()[0] >= 9
    problems.extend(ledger_problems(db.execute, counted, by_version))
    return problems


def ledger_problems(execute, counted: bool = True, by_version: bool = True) -> list[str]:
    """The ledger's invariants, through ``execute(sql)`` of any engine (the SQL is portable): the
    SQLite file here, PostgreSQL in tsls/server/pgstore.py. ``counted``: the schema keeps
    license_counts (a file from before that migration, opened read-only, does not); ``by_version``:
    by kind, status and product version (SQLite's migration 9, PostgreSQL's 6), else by kind and status."""
    problems = []
    if counted:
        columns = "kind, status, product_version" if by_version else "kind, status"
        kept = {tuple(row[:-1]): row[-1] for row in execute(f"SELECT {columns}, n FROM license_counts") if row[-1]}
        actual = {tuple(row[:-1]): row[-1]
                  for row in execute(f"SELECT {columns}, count(*) FROM licenses GROUP BY {columns}")}
        for key in sorted(set(kept) | set(actual)):
            if kept.get(key, 0) != actual.get(key, 0):
                problems.append(f"license counts: {kept.get(key, 0)} {' '.join(key)} kept for status, "
                                f"{actual.get(key, 0)} in the ledger")
    for key_pack_id, total, issued, live in execute(
            "SELECT p.key_pack_id, p.total, p.issued, (SELECT count(*) FROM licenses l WHERE l.key_pack = p.id "
            "AND l.kind = 'permanent' AND l.status = 'active') FROM key_packs p ORDER BY p.id"):
        if not 0 <= issued <= total:
            problems.append(f"key pack {key_pack_id}: issued {issued} outside 0..{total}")
        if issued != live:
            problems.append(f"key pack {key_pack_id}: issued {issued} but {live} live CALs")
    for hwid, version, kind, n in execute(
            "SELECT hwid, product_version, kind, count(*) FROM licenses "
            "WHERE (kind = 'permanent' AND status = 'active') OR kind = 'temporary' "
            "GROUP BY hwid, product_version, kind HAVING count(*) > 1 ORDER BY hwid"):
        problems.append(f"device {hwid}: {n} {kind} licenses for version {version}")
    return problems


def check_lab(clearinghouse_path: str, server_paths: list[str]) -> list[str]:
    """The lab-wide check: the Clearinghouse's own books, and, across it and every license server
    database given, that no purchase has more CALs installed than were bought, unless the double
    circulation is on record at the Clearinghouse (a recovery retired the key packs, and the old
    server has not contacted it since). Every file is opened read-only."""
    from tsls.clearinghouse.store import read_ledger

    try:
        ch = read_ledger(clearinghouse_path)
    except sqlite3.DatabaseError as e:
        return [f"{clearinghouse_path}: not a usable tsls Clearinghouse database: {e}"]
    problems = []
    for key, sale in ch["sales"].items():
        live = [(kp_id, p) for kp_id, p in ch["key_packs"].items() if p["sale"] == key and p["retired_at"] is None]
        if not 0 <= sale["installed"] <= sale["quantity"]:
            problems.append(f"Clearinghouse: purchase {key}: installed {sale['installed']} outside 0..{sale['quantity']}")
        if sum(p["quantity"] for _, p in live) != sale["installed"]:
            problems.append(f"Clearinghouse: purchase {key}: installed {sale['installed']} but its live key packs "
                            f"hold {sum(p['quantity'] for _, p in live)}")
        elsewhere = sorted(kp_id for kp_id, p in live if p["license_server_id"] != sale["bound_to"])
        if elsewhere:
            problems.append(f"Clearinghouse: purchase {key}: live key packs {', '.join(elsewhere)} are not on the "
                            f"server it is bound to")
    circulating: dict[str, list] = {}
    for path in server_paths:
        try:
            packs = _server_packs(path)
        except sqlite3.DatabaseError as e:
            problems.append(f"{path}: not a usable tsls license server database: {e}")
            continue
        for kp_id, sale_key, total, retired_at in packs:
            issued = ch["key_packs"].get(kp_id)
            if issued is None:
                problems.append(f"{path}: key pack {kp_id} was not issued by this Clearinghouse")
                continue
            # a converted key pack (its own CAL type) names its sale with the other type: the quantity is compared
            if (issued["sale"] != sale_key and not issued.get("cal_type")) or issued["quantity"] != total:
                problems.append(f"{path}: key pack {kp_id} holds {total} CALs of {sale_key}; the Clearinghouse "
                                f"issued {issued['quantity']} of {issued['sale']}")
            if retired_at is None:
                circulating.setdefault(issued["sale"], []).append((path, kp_id, total, issued))
    for key, packs in sorted(circulating.items()):
        quantity = ch["sales"].get(key, {}).get("quantity", 0)
        total = sum(t for _, _, t, _ in packs)
        if total <= quantity:
            continue
        where = ", ".join(f"{path}: {t} (key pack {kp_id})" for path, kp_id, t, _ in packs)
        pending = [(path, kp_id) for path, kp_id, _, issued in packs if issued["retired_at"] is not None]
        if pending:
            record = "; on record at the Clearinghouse: " + ", ".join(
                f"key pack {kp_id} on {path} was retired by a recovery and is retired there at its next "
                f"Clearinghouse contact" for path, kp_id in pending)
        else:
            record = "; NOT on record at the Clearinghouse"
        problems.append(f"double circulation: purchase {key} has {quantity} CALs but {total} are installed "
                        f"across license servers ({where}){record}")
    return problems


def _server_packs(path: str) -> list[tuple]:
    """(key_pack_id, purchase key at the Clearinghouse, total, retired_at) of every key pack in a
    license server database, read-only."""
    import json

    from tsls.core.clearinghouse import purchase_key
    from tsls.core.model import CalType, ProductVersion, PurchaseRef

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(key_packs)")}
        retired = "retired_at" if "retired_at" in columns else "NULL"
        rows = db.execute(f"SELECT key_pack_id, purchase, product_version, cal_type, total, {retired} FROM key_packs")
        return [(r[0], purchase_key(PurchaseRef.from_json(json.loads(r[1])), ProductVersion(r[2]), CalType(r[3])),
                 r[4], r[5]) for r in rows]
    finally:
        db.close()
