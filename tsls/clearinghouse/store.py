"""SQLite storage for the Clearinghouse: servers, sales, issued key packs. Used from the reactor
thread; every method that changes anything commits before it returns."""
from __future__ import annotations

import contextlib
import json

from tsls.core.clearinghouse import Method, Sale, Server, ServerStatus
from tsls.core.model import Purchase
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
}


class ClearinghouseStore:
    def __init__(self, path: str) -> None:
        self.db = open_database(path, MIGRATIONS, "Clearinghouse")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

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
        self.db.execute("UPDATE sales SET bound_to = ? WHERE bound_to = ?", (new, old))

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

    def add_key_pack(self, key_pack_id: str, key: str, license_server_id: str, quantity: int, now: int) -> None:
        self.db.execute("INSERT INTO key_packs VALUES (?,?,?,?,?)", (key_pack_id, key, license_server_id, quantity, now))


def _server(row) -> Server:
    return Server(row[0], row[1], ServerStatus(row[2]), Method(row[3]), json.loads(row[4]), row[5], row[6])
