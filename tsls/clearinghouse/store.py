"""SQLite storage for the Clearinghouse: servers, sales, issued key packs. Used from the reactor
thread; every method that changes anything commits before it returns."""
from __future__ import annotations

import contextlib
import json

from tsls.core.activation import ActivationMethod
from tsls.core.clearinghouse import IssuedPack, KeyPackRecord, Sale, Server, ServerStatus
from tsls.core.model import CalType, Purchase
from tsls.sqlite import open_database

MIGRATIONS = {
    1: """
    CREATE TABLE servers (
        license_server_id TEXT PRIMARY KEY,
        product_id TEXT NOT NULL,
        status TEXT NOT NULL,
        method TEXT NOT NULL,
        contact TEXT NOT NULL,
        activated_at INTEGER NOT NULL,
        certificate_digest TEXT NOT NULL
    );
    CREATE UNIQUE INDEX one_activation ON servers(product_id) WHERE status = 'activated';
    CREATE TABLE sales (
        key TEXT PRIMARY KEY,
        purchase TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        installed INTEGER NOT NULL DEFAULT 0 CHECK (installed >= 0 AND installed <= quantity),
        bound_to TEXT REFERENCES servers(license_server_id),
        sold_at INTEGER NOT NULL
    );
    CREATE TABLE key_packs (
        key_pack_id TEXT PRIMARY KEY,
        sale TEXT NOT NULL REFERENCES sales(key),
        license_server_id TEXT NOT NULL REFERENCES servers(license_server_id),
        quantity INTEGER NOT NULL,
        issued_at INTEGER NOT NULL
    );
    """,
    # The operator's credential; key packs retired by a recovery, and every move of a purchase on record.
    2: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    ALTER TABLE key_packs ADD COLUMN retired_at INTEGER;
    CREATE TABLE moves (
        id INTEGER PRIMARY KEY,
        sale TEXT NOT NULL REFERENCES sales(key),
        from_server TEXT,
        to_server TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        retired TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX key_packs_sale ON key_packs(sale);
    CREATE INDEX key_packs_server ON key_packs(license_server_id);
    """,
    # The answer to every call that carried an idempotency key, to give again to a repeated call.
    # The key itself is not kept, only its SHA-256: it is the caller's secret.
    3: """
    CREATE TABLE idempotency (
        key_digest TEXT PRIMARY KEY,
        request_digest TEXT NOT NULL,
        answer TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    """,
    # A key pack converted to the other CAL type (ConvertLicenses) carries its own type.
    4: """
    ALTER TABLE key_packs ADD COLUMN cal_type TEXT;
    """,
}


class ClearinghouseStore:
    def __init__(self, path: str, initialise: bool = False) -> None:
        self.db = open_database(path, MIGRATIONS, "Clearinghouse", ("servers", "sales", "key_packs"), initialise)
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        """One transaction; a transaction opened inside another is part of it (an idempotent call
        commits its effect and its answer together)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # answers to idempotent calls

    def answer(self, key_digest: str) -> tuple[str, dict] | None:
        """(request digest, answer) of the call made with this key, if any."""
        row = self.db.execute("SELECT request_digest, answer FROM idempotency WHERE key_digest = ?",
                              (key_digest,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put_answer(self, key_digest: str, request_digest: str, answer: dict, now: int) -> None:
        self.db.execute("INSERT INTO idempotency (key_digest, request_digest, answer, at) VALUES (?,?,?,?)",
                        (key_digest, request_digest, json.dumps(answer), now))

    # servers

    def server(self, license_server_id: str) -> Server | None:
        row = self.db.execute("SELECT * FROM servers WHERE license_server_id = ?", (license_server_id,)).fetchone()
        return None if row is None else _server(row)

    def active_server_for(self, product_id: str) -> Server | None:
        row = self.db.execute("SELECT * FROM servers WHERE product_id = ? AND status = 'activated'",
                              (product_id,)).fetchone()
        return None if row is None else _server(row)

    def put_server(self, s: Server) -> None:
        self.db.execute("INSERT INTO servers VALUES (?,?,?,?,?,?,?) ON CONFLICT (license_server_id) DO UPDATE SET "
                        "status = excluded.status", (s.license_server_id, s.product_id, s.status.value, s.method.value,
                                                     json.dumps(s.contact), s.activated_at, s.certificate_digest))

    def rebind(self, old: str, new: str) -> None:
        """A reactivated server keeps its purchases and the key packs it holds, under its new ID."""
        self.db.execute("UPDATE sales SET bound_to = ? WHERE bound_to = ?", (new, old))
        self.db.execute("UPDATE key_packs SET license_server_id = ? WHERE license_server_id = ?", (new, old))

    def bindings(self, license_server_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT key FROM sales WHERE bound_to = ? ORDER BY key",
                                              (license_server_id,))]

    # sales

    def sale(self, key: str) -> Sale | None:
        row = self.db.execute("SELECT purchase, installed, bound_to FROM sales WHERE key = ?", (key,)).fetchone()
        return None if row is None else Sale(Purchase.from_json(json.loads(row[0])), row[1], row[2])

    def sales(self) -> list[tuple[str, Sale]]:
        rows = self.db.execute("SELECT key, purchase, installed, bound_to FROM sales ORDER BY sold_at, key")
        return [(r[0], Sale(Purchase.from_json(json.loads(r[1])), r[2], r[3])) for r in rows]

    def add_sale(self, key: str, sale: Sale, now: int) -> None:
        self.db.execute("INSERT INTO sales (key, purchase, quantity, sold_at) VALUES (?,?,?,?)",
                        (key, json.dumps(sale.purchase.to_json()), sale.purchase.quantity, now))

    def put_sale(self, key: str, sale: Sale) -> None:
        self.db.execute("UPDATE sales SET installed = ?, bound_to = ? WHERE key = ?", (sale.installed, sale.bound_to, key))

    def add_key_pack(self, key_pack_id: str, key: str, license_server_id: str, quantity: int, now: int,
                     cal_type: CalType | None = None) -> None:
        self.db.execute("INSERT INTO key_packs (key_pack_id, sale, license_server_id, quantity, issued_at, cal_type) "
                        "VALUES (?,?,?,?,?,?)", (key_pack_id, key, license_server_id, quantity, now,
                                                 None if cal_type is None else cal_type.value))

    def key_pack_record(self, key_pack_id: str) -> KeyPackRecord | None:
        row = self.db.execute("SELECT key_pack_id, license_server_id, quantity, cal_type, sale, retired_at "
                              "FROM key_packs WHERE key_pack_id = ?", (key_pack_id,)).fetchone()
        return None if row is None else KeyPackRecord(_pack(row[:4]), row[4], row[5])

    def set_key_pack_quantity(self, key_pack_id: str, quantity: int) -> None:
        self.db.execute("UPDATE key_packs SET quantity = ? WHERE key_pack_id = ?", (quantity, key_pack_id))

    def live_key_packs(self, key: str) -> tuple[IssuedPack, ...]:
        """The key packs issued from sale ``key`` and not retired."""
        rows = self.db.execute("SELECT key_pack_id, license_server_id, quantity, cal_type FROM key_packs "
                               "WHERE sale = ? AND retired_at IS NULL ORDER BY issued_at, key_pack_id", (key,))
        return tuple(_pack(r) for r in rows)

    def retire(self, key: str, packs: tuple[IssuedPack, ...], to_server: str, quantity: int, now: int) -> None:
        """Retire ``packs`` of sale ``key`` and put the move on record."""
        for p in packs:
            self.db.execute("UPDATE key_packs SET retired_at = ? WHERE key_pack_id = ?", (now, p.key_pack_id))
        from_servers = sorted({p.license_server_id for p in packs})
        self.db.execute("INSERT INTO moves (sale, from_server, to_server, quantity, retired, at) VALUES (?,?,?,?,?,?)",
                        (key, ",".join(from_servers) or None, to_server, quantity,
                         json.dumps([p.key_pack_id for p in packs]), now))

    def retired_key_packs(self, license_server_id: str) -> list[str]:
        """Key packs of this server that a recovery elsewhere retired: it must stop issuing from them."""
        return [r[0] for r in self.db.execute("SELECT key_pack_id FROM key_packs WHERE license_server_id = ? AND "
                                              "retired_at IS NOT NULL ORDER BY key_pack_id", (license_server_id,))]

    def moves(self, key: str) -> list[dict]:
        rows = self.db.execute("SELECT from_server, to_server, quantity, retired, at FROM moves WHERE sale = ? "
                               "ORDER BY id", (key,))
        return [{"from": r[0], "to": r[1], "quantity": r[2], "retired_key_packs": json.loads(r[3]), "at": r[4]}
                for r in rows]

    # the operator's credential

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "value = excluded.value", (key, value))


def read_ledger(path: str) -> dict:
    """A read-only snapshot for the lab-wide check (tsls check --clearinghouse): every sale with its
    quantity, installed count and binding, every key pack issued (retired or not), every move."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sales = {r[0]: {"quantity": r[1], "installed": r[2], "bound_to": r[3]}
                 for r in db.execute("SELECT key, quantity, installed, bound_to FROM sales")}
        retired = "retired_at" if _has_column(db, "key_packs", "retired_at") else "NULL"
        cal_type = "cal_type" if _has_column(db, "key_packs", "cal_type") else "NULL"
        packs = {r[0]: {"sale": r[1], "license_server_id": r[2], "quantity": r[3], "retired_at": r[4],
                        "cal_type": r[5]}
                 for r in db.execute(f"SELECT key_pack_id, sale, license_server_id, quantity, {retired}, {cal_type} "
                                     "FROM key_packs")}
        moves = []
        if _has_column(db, "moves", "sale"):
            moves = [{"sale": r[0], "from": r[1], "to": r[2], "retired_key_packs": json.loads(r[3]), "at": r[4]}
                     for r in db.execute("SELECT sale, from_server, to_server, retired, at FROM moves ORDER BY id")]
        return {"sales": sales, "key_packs": packs, "moves": moves}
    finally:
        db.close()


def _has_column(db, table: str, column: str) -> bool:
    return any(r[1] == column for r in db.execute(f"PRAGMA table_info({table})"))


def _pack(row) -> IssuedPack:
    return IssuedPack(row[0], row[1], row[2], None if row[3] is None else CalType(row[3]))


def _server(row) -> Server:
    return Server(row[0], row[1], ServerStatus(row[2]), ActivationMethod(row[3]), json.loads(row[4]), row[5], row[6])
