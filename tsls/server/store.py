"""SQLite storage for the license server: ``LicenseStore`` implements the storage seam
(``tsls.server.storage.LedgerStore``) on one SQLite file.

Plain synchronous code, used by one thread at a time (the writer runs each batch's requests in the
reactor's thread and its COMMIT in a commit thread, and begins no batch until that COMMIT has
returned; ``sync`` and the checkpoints run in threads of their own, on descriptors and a connection of
their own). It reads the world the core needs, and writes
back the changes a core ``Decision`` lists; it decides nothing itself. All of the license
server's SQL is here (and the read-only invariant checks in tsls/server/check.py).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import urllib.parse

from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.core.licensing import Change
from tsls.core.model import CalType, KeyPack, License, LicenseKind, ProductVersion, PurchaseRef
from tsls.core.perseat import LicensedBy, Product
from tsls.server.ledgerbase import (HWID_CONDITION, KIND_STATUS_COUNTS_SQL, LICENSE_ROW_SQL,
                                    REVOKED_HOLDING_SQL, EngineCommon, call_row, event_conditions, event_row,
                                    license_conditions, license_row, license_update, product_row)
from tsls.server.storage import ClearinghouseCall, EventFilter, LicenseFilter, Registration, SeatAssignment
from tsls.sqlite import WalFile, open_database

# Migration N brings a database from version N-1 to N. Never edit one that has shipped: add one.
MIGRATIONS = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE key_packs (
        id INTEGER PRIMARY KEY,
        key_pack_id TEXT NOT NULL UNIQUE,
        purchase TEXT NOT NULL,
        reference TEXT NOT NULL,
        product_version TEXT NOT NULL,
        cal_type TEXT NOT NULL,
        total INTEGER NOT NULL CHECK (total > 0),
        issued INTEGER NOT NULL DEFAULT 0 CHECK (issued >= 0 AND issued <= total),
        installed_at INTEGER NOT NULL
    );
    CREATE TABLE licenses (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        hwid TEXT NOT NULL,
        machine TEXT NOT NULL,
        user TEXT NOT NULL,
        terminal_server TEXT NOT NULL,
        product_version TEXT NOT NULL,
        key_pack INTEGER REFERENCES key_packs(id),
        validated INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        renewals INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX licenses_hwid ON licenses(hwid);
    CREATE INDEX licenses_due ON licenses(expires_at) WHERE status = 'active';
    -- A device gets one temporary license per version, ever, and holds one live CAL per version.
    CREATE UNIQUE INDEX one_temporary ON licenses(hwid, product_version) WHERE kind = 'temporary';
    CREATE UNIQUE INDEX one_live_cal ON licenses(hwid, product_version) WHERE kind = 'permanent' AND status = 'active';
    CREATE TABLE per_user_logons (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        user TEXT NOT NULL,
        hwid TEXT NOT NULL,
        machine TEXT NOT NULL,
        terminal_server TEXT NOT NULL
    );
    CREATE INDEX per_user_logons_at ON per_user_logons(at);
    """,
    2: """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        message TEXT NOT NULL,
        terminal_server TEXT,
        hwid TEXT,
        user TEXT,
        license_id INTEGER,
        data TEXT
    );
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_event_id ON events(event_id);
    """,
    3: """
    CREATE TABLE products (
        name TEXT PRIMARY KEY,
        server TEXT NOT NULL,
        mode TEXT NOT NULL,
        per_server_licenses INTEGER NOT NULL CHECK (per_server_licenses >= 0),
        seat_licenses INTEGER NOT NULL DEFAULT 0 CHECK (seat_licenses >= 0),
        switched_at INTEGER
    );
    CREATE TABLE seat_assignments (
        product TEXT NOT NULL,
        hwid TEXT NOT NULL,
        via TEXT NOT NULL,
        assigned_at INTEGER NOT NULL,
        PRIMARY KEY (product, hwid)
    );
    """,
    # Activation state and terminal-server registrations were loose meta keys (the registrations
    # JSON blobs); each gets its own table. What stays in meta is read only through typed methods.
    4: """
    CREATE TABLE activation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        status TEXT NOT NULL,
        license_server_id TEXT,
        method TEXT,
        activated_at INTEGER,
        certificate TEXT
    );
    INSERT INTO activation (id, status, license_server_id, method, activated_at, certificate) SELECT 1,
        coalesce((SELECT value FROM meta WHERE key = 'activation_status'), 'not_activated'),
        (SELECT value FROM meta WHERE key = 'license_server_id'),
        (SELECT value FROM meta WHERE key = 'activation_method'),
        (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'activated_at'),
        (SELECT value FROM meta WHERE key = 'clearinghouse_certificate');
    DELETE FROM meta WHERE key IN
        ('activation_status', 'license_server_id', 'activation_method', 'activated_at', 'clearinghouse_certificate');
    CREATE TABLE terminal_servers (
        name TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        in_group INTEGER NOT NULL DEFAULT 0,
        registered_at INTEGER NOT NULL
    );
    INSERT INTO terminal_servers (name, secret, in_group, registered_at)
        SELECT substr(key, 17), json_extract(value, '$.secret'), coalesce(json_extract(value, '$.group'), 0),
               json_extract(value, '$.registered_at')
        FROM meta WHERE key LIKE 'terminal~_server:%' ESCAPE '~';
    DELETE FROM meta WHERE key LIKE 'terminal~_server:%' ESCAPE '~';
    """,
    # A key pack the Clearinghouse retired: its purchase was recovered onto another license server.
    5: """
    ALTER TABLE key_packs ADD COLUMN retired_at INTEGER;
    """,
    # Calls to the Clearinghouse, recorded with their idempotency keys before they are made.
    6: """
    CREATE TABLE clearinghouse_calls (
        id INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        operation TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        result TEXT
    );
    CREATE INDEX clearinghouse_calls_pending ON clearinghouse_calls(state) WHERE state = 'pending';
    """,
    # How many licenses of each kind and status, kept by triggers as licenses are written, so that
    # status reads a few rows instead of counting every license (0.8 s with a million).
    7: """
    CREATE TABLE license_counts (
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL CHECK (n >= 0),
        PRIMARY KEY (kind, status)
    ) WITHOUT ROWID;
    INSERT INTO license_counts SELECT kind, status, count(*) FROM licenses GROUP BY kind, status;
    CREATE TRIGGER license_counts_insert AFTER INSERT ON licenses BEGIN
        INSERT OR IGNORE INTO license_counts VALUES (NEW.kind, NEW.status, 0);
        UPDATE license_counts SET n = n + 1 WHERE kind = NEW.kind AND status = NEW.status;
    END;
    CREATE TRIGGER license_counts_update AFTER UPDATE OF kind, status ON licenses
        WHEN OLD.kind IS NOT NEW.kind OR OLD.status IS NOT NEW.status BEGIN
        UPDATE license_counts SET n = n - 1 WHERE kind = OLD.kind AND status = OLD.status;
        INSERT OR IGNORE INTO license_counts VALUES (NEW.kind, NEW.status, 0);
        UPDATE license_counts SET n = n + 1 WHERE kind = NEW.kind AND status = NEW.status;
    END;
    CREATE TRIGGER license_counts_delete AFTER DELETE ON licenses BEGIN
        UPDATE license_counts SET n = n - 1 WHERE kind = OLD.kind AND status = OLD.status;
    END;
    """,
    # A device's licenses are found through the partial unique indexes that keep one temporary license
    # and one live CAL per device and version, and this one for the rest (its CALs that expired or
    # were revoked): a grant then inserts into one index keyed by the random hardware ID, not two,
    # and the COMMIT writes about one page fewer per grant (docs/performance.md). Queries by device
    # say which of the three they mean (ledgerbase.HWID_CONDITION).
    8: """
    DROP INDEX licenses_hwid;
    CREATE INDEX licenses_hwid_rest ON licenses(hwid) WHERE kind = 'permanent' AND status != 'active';
    """,
    # The counts by product version too, so that the console's dashboard and /metrics read a few rows
    # instead of grouping every license (1.3 s with a million). A grant's trigger counts with one
    # UPSERT where migration 7's ran an INSERT OR IGNORE and an UPDATE: the longer key then costs no
    # more than before (an upgrade's SQL measured 11.1 us at schema 8, 12.3 with two statements on
    # this key, 11.4 with the UPSERT). The revoked licenses that still count against the revocation
    # limit are found through an index of the revoked ones (few) instead of a scan.
    9: """
    DROP TRIGGER license_counts_insert;
    DROP TRIGGER license_counts_update;
    DROP TRIGGER license_counts_delete;
    DROP TABLE license_counts;
    CREATE TABLE license_counts (
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        product_version TEXT NOT NULL,
        n INTEGER NOT NULL CHECK (n >= 0),
        PRIMARY KEY (kind, status, product_version)
    ) WITHOUT ROWID;
    INSERT INTO license_counts SELECT kind, status, product_version, count(*) FROM licenses
        GROUP BY kind, status, product_version;
    CREATE TRIGGER license_counts_insert AFTER INSERT ON licenses BEGIN
        INSERT INTO license_counts VALUES (NEW.kind, NEW.status, NEW.product_version, 1)
            ON CONFLICT (kind, status, product_version) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER license_counts_update AFTER UPDATE OF kind, status, product_version ON licenses
        WHEN OLD.kind IS NOT NEW.kind OR OLD.status IS NOT NEW.status
             OR OLD.product_version IS NOT NEW.product_version BEGIN
        UPDATE license_counts SET n = n - 1
            WHERE kind = OLD.kind AND status = OLD.status AND product_version = OLD.product_version;
        INSERT INTO license_counts VALUES (NEW.kind, NEW.status, NEW.product_version, 1)
            ON CONFLICT (kind, status, product_version) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER license_counts_delete AFTER DELETE ON licenses BEGIN
        UPDATE license_counts SET n = n - 1
            WHERE kind = OLD.kind AND status = OLD.status AND product_version = OLD.product_version;
    END;
    CREATE INDEX licenses_revoked ON licenses(expires_at) WHERE status = 'revoked';
    """,
    # Licenses inserted are counted by the store, which adds a batch's up and writes one row per kind,
    # status and version when its jobs are done (``_counted``), rather than by a trigger running two
    # statements inside every grant's INSERT (docs/performance.md). Updates and deletes keep theirs.
    10: """
    DROP TRIGGER license_counts_insert;
    """,
    # Likewise a license's change of kind, status or version: the store knows the license as it was
    # (``Change.was``, or read), so it moves the count itself, held for the batch; a trigger took three
    # statements inside every upgrade's, expiry's and revocation's UPDATE. Deletes keep theirs.
    11: """
    DROP TRIGGER license_counts_update;
    """,
    # A first logon inserted into one_temporary, keyed by the random hardware ID: one page of it
    # anywhere in the index, written to the WAL at COMMIT and copied again by the checkpoint, about
    # 1.2 of the 1.3 WAL frames a first logon costs (docs/performance.md). The writer finds a device's
    # temporary licenses through the ids it keeps in memory (``LicenseStore._devices``) and the core
    # keeps the rule (one temporary license per device and version, ever); ``tsls check`` verifies it.
    12: """
    DROP INDEX one_temporary;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)

# A grant inserts into two indexes keyed by the device's hardware ID, which is random: with a
# million licenses they hold about 100 MB, and each grant dirties a page of each anywhere in them.
# A page cache that holds them keeps a grant's cost nearly flat as the ledger grows (SQLite's
# default is 2 MB), and checkpointing every 10,000 WAL pages (about 40 MB) instead of every 1,000
# writes each hot page back once per checkpoint rather than at almost every COMMIT. Neither
# touches durability: every COMMIT is still followed by an fsync of the WAL before its answer.
# Under the writer, the checkpoints run from a connection of their own in a thread of their own
# (``checkpoint``), never inside a COMMIT. docs/performance.md has the figures.
CACHE_KIB = 128 * 1024
CHECKPOINT_PAGES = 10_000

# Most logons are a device's first: it holds no license, and looking for its licenses was one SELECT,
# about a tenth of a grant's CPU (docs/performance.md). So the store keeps, for every hash of a hardware
# ID that has a license row (``_devices``), the ids of that device's temporary licenses: 0 for none, an
# id for one, a tuple for several (one per product version). A device whose hash is not there certainly
# has no license, and ``licenses_of`` answers () without SQL; one whose hash is there reads its
# temporary licenses by id and its CALs through the two partial indexes of permanent licenses (SQLite
# indexes no temporary license by device since migration 12: a first logon then writes no page keyed by
# its random hardware ID). Every license this connection writes is entered before its row is written,
# so the entries hold at least every temporary license of the device (and another's with the same
# 64-bit hash, or one undone or deleted: SQL filters them by hardware ID), never fewer. They are built
# from the licenses table at the first BEGIN, and again whenever another connection has committed
# (PRAGMA data_version). About 100 bytes a device (50 MB with bench.scaling's 500,000).
_TEMPORARY = LicenseKind.TEMPORARY
_DEVICES_STEP = 1 << 16             # licenses by id range while ``_devices`` is built (each range: one string)


class LicenseStore(EngineCommon):
    """The SQLite engine of ``tsls.server.storage.LedgerStore``."""

    path: str | None = None
    wal: WalFile | None = None              # the -wal file, synced by ``sync`` (synchronous=NORMAL)
    _checkpointer: sqlite3.Connection | None = None
    checkpoint_pages = CHECKPOINT_PAGES

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection
        self.new_events: list = []      # events written in the open transaction, published after COMMIT
        # While the writer runs a batch's jobs (``held_events``), events are kept here and written
        # with one executemany when its jobs are done; a request undone drops its own.
        self._pending: list | None = None
        # Likewise, while a batch's jobs run, the grants' changes to key packs' Issued are added up here
        # (key pack id -> change) and written with one UPDATE per key pack when its jobs are done; the
        # cached key packs (which every decision reads) are kept in step at once.
        self._issued: dict[int, int] = {}
        self._held = 0                  # how many changes were ever held there (``changes``)
        # The licenses this connection inserts or moves to another kind, status or version are counted
        # in license_counts by the store, not by triggers (migrations 10 and 11): while a batch's jobs
        # run, the changes are added up here ((kind, status, version) -> change) and written with one
        # statement each when its jobs are done; otherwise at once.
        self._counted: dict[tuple[str, str, str], int] = {}
        # Every request reads the key packs, the activation and a few settings; they change rarely,
        # so they are kept here, one entry per table (and "logon", what ``logon_settings`` reads from
        # meta and activation, dropped with either). Temporary triggers (this connection's own, not
        # in the schema) drop a table's entry whenever any statement on this connection writes it; a
        # rollback drops them all, and so does a commit by another connection (PRAGMA data_version,
        # read at each BEGIN).
        self._cache: dict[str, object] = {}
        self._purchases: dict[str, PurchaseRef] = {}
        self._cached = False            # caches are used only once the triggers are in place
        self._data_version = None
        self._devices: dict[int, int | tuple] | None = None     # a device's temporary licenses' ids, once built
        self._next_id: int | None = None            # ``next_license_id``, once read in the open transaction

    @classmethod
    def open(cls, path: str, initialise: bool = False, sync=os.fdatasync) -> "LicenseStore":
        """``initialise``: make a new database in a zero-length file rather than refuse it.

        The connection runs with synchronous=NORMAL: a COMMIT hands its WAL frames to the operating
        system and returns without an fsync; ``transaction()`` then syncs the WAL itself (``sync``:
        os.fdatasync, or a test's stand-in), and the writer syncs it in a thread of its own while the
        next batch runs (tsls/server/writer.py)."""
        db = open_database(path, MIGRATIONS, "license server", ("key_packs", "licenses", "meta"), initialise)
        wal = None
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            # Per Server connections live as long as the daemon: this connection's own table, inside
            # its transactions but never in the file.
            db.execute("CREATE TEMP TABLE product_connections (id INTEGER PRIMARY KEY, product TEXT NOT NULL, "
                       "session INTEGER NOT NULL)")
            wal = WalFile(path, sync)       # the migrations' reads have opened (made) the -wal and -shm files
            store = cls(db)
            store.path = path
            store.wal = wal
            store._watch()
        except BaseException:
            if wal is not None:
                wal.close()
            db.close()
            raise
        return store

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self.wal is not None:
            self.wal.close()
        self.db.close()

    def _watch(self) -> None:
        """Install the triggers that keep the caches honest, then use them."""
        self.db.create_function("tsls_changed", 1, self._changed)
        for table in _CACHED_TABLES:
            for op in ("INSERT", "UPDATE", "DELETE"):
                self.db.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS tsls_{table}_{op.lower()} AFTER {op} ON main.{table} "
                                f"BEGIN SELECT tsls_changed('{table}'); END")
        self._cached = True

    def _changed(self, table: str) -> None:
        self._cache.pop(table, None)
        if table in _SETTINGS_TABLES:
            self._cache.pop("logon", None)

    def _forget(self) -> None:
        self._next_id = None        # what was inserted may be undone
        self._cache.clear()
        self._issued.clear()        # undone with what was written: its key packs are read again
        self._counted.clear()

    def _keyed(self, table: str) -> dict:
        """The cache of one table whose entries are looked up by key (a throwaway dict when uncached)."""
        if not self._cached:
            return {}
        return self._cache.setdefault(table, {})

    def read_snapshot(self):
        """The read store's queries (tsls.server.readstore) on this connection, inside the open batch:
        for a daemon run without a read store (tests of the operations on one connection)."""
        from tsls.server.readstore import Snapshot
        self._write_pending()
        return Snapshot(self.db)

    # --- transactions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self):
        """One durable transaction: when the block ends, its COMMIT has returned and the WAL has been
        synced (unless the connection was set to synchronous=OFF, as a test's throwaway file may be)."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()
        if self.db.execute("PRAGMA synchronous").fetchone()[0]:
            self.sync()

    def begin(self) -> None:
        """BEGIN IMMEDIATE; then ``commit`` (not yet durable: ``sync``) or ``rollback``."""
        self.db.execute("BEGIN IMMEDIATE")
        self.new_events = []
        self._next_id = None
        if self._cached:
            try:
                version = self.db.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:       # another connection committed since we last looked
                    self._forget()
                    # Not current until built: a set that fails to build (its connection refused, say)
                    # is no set (SQL for every device), and the next BEGIN builds it again.
                    self._devices = None
                    self._index_devices()
                    self._data_version = version
            except BaseException:
                self.db.execute("ROLLBACK")     # no BEGIN left open: the next batch's must work
                raise

    def rollback(self) -> None:
        self._forget()
        self.db.execute("ROLLBACK")
        self.new_events = []

    def commit(self) -> None:
        """COMMIT: the transaction's frames, its commit frame last, are written to the WAL (no fsync)
        when this returns. A failed COMMIT is rolled back here, so the next BEGIN works."""
        self._next_id = None
        try:
            self.db.execute("COMMIT")
        except BaseException:
            self._forget()
            if self.db.in_transaction:      # a failed COMMIT may leave it open: the next BEGIN must work
                self.db.execute("ROLLBACK")
            raise

    def sync(self) -> None:
        """Make every transaction committed so far durable (fdatasync of the WAL; OSError if the disk
        fails). Uses no connection: the writer calls it from its own thread while the reactor's
        thread runs the next batch."""
        if self.wal is not None:
            self.wal.sync()

    def checkpoint_in_background(self) -> None:
        """The writer takes over checkpoints: this connection never runs one inside a COMMIT
        (wal_autocheckpoint=0); ``checkpoint`` runs one from a connection of its own when
        ``checkpoint_due``."""
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # NORMAL (as FULL): SQLite syncs the WAL before a checkpoint copies it and the database after.
        checkpointer.execute("PRAGMA synchronous=NORMAL")
        self._checkpointer = checkpointer

    def checkpoint_due(self) -> bool:
        """More than ``checkpoint_pages`` frames wait in the WAL (any thread may ask)."""
        return self.checkpoint_left() >= self.checkpoint_pages

    def checkpoint_left(self) -> int:
        """Frames in the WAL not yet copied by a checkpoint (any thread may ask)."""
        return 0 if self.wal is None else self.wal.backlog()

    def checkpoint(self) -> tuple[int, int]:
        """A PASSIVE checkpoint (waits for no reader or writer): (frames in the WAL, frames copied)."""
        busy, frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied

    def savepoint(self) -> "_Savepoint":
        """One request inside a shared transaction: a refusal undoes only its own writes."""
        return _Savepoint(self)

    # --- settings (the meta table is this module's own: read and written only here) -------------

    def _get(self, key: str) -> str | None:
        cache = self._keyed("meta")
        try:
            return cache[key]
        except KeyError:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            value = cache[key] = None if row is None else row[0]
            return value

    def _set(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def logon_settings(self) -> tuple[bool, bool, bool]:
        """(the security group policy, activated, the Prevent License Upgrade policy), kept as one entry
        (dropped with meta's or activation's: ``_changed``): every logon reads them with one lookup."""
        value = self._cache.get("logon")
        if value is None:
            value = EngineCommon.logon_settings(self)
            if self._cached:
                self._cache["logon"] = value
        return value

    def activation(self) -> Activation:
        value = self._cache.get("activation")
        if value is None:
            row = self.db.execute("SELECT status, license_server_id, method, activated_at, certificate "
                                  "FROM activation").fetchone()
            value = Activation() if row is None else Activation(
                ActivationStatus(row[0]), row[1], None if row[2] is None else ActivationMethod(row[2]), row[3], row[4])
            if self._cached:
                self._cache["activation"] = value
        return value

    def save_activation(self, activation: Activation) -> None:
        self.db.execute(
            "INSERT INTO activation (id, status, license_server_id, method, activated_at, certificate) "
            "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
            "license_server_id = excluded.license_server_id, method = excluded.method, "
            "activated_at = excluded.activated_at, certificate = excluded.certificate",
            (activation.status.value, activation.license_server_id,
             None if activation.method is None else activation.method.value, activation.activated_at,
             activation.certificate))

    # --- terminal servers -------------------------------------------------------------------------

    def registration(self, name: str) -> Registration | None:
        cache = self._keyed("terminal_servers")
        try:
            return cache[name]
        except KeyError:
            row = self.db.execute("SELECT name, secret, registered_at, in_group FROM terminal_servers WHERE name = ?",
                                  (name,)).fetchone()
            value = cache[name] = None if row is None else Registration(row[0], row[1], row[2], bool(row[3]))
            return value

    def registrations(self) -> tuple[Registration, ...]:
        rows = self.db.execute("SELECT name, secret, registered_at, in_group FROM terminal_servers ORDER BY name")
        return tuple(Registration(r[0], r[1], r[2], bool(r[3])) for r in rows)

    def save_registration(self, registration: Registration) -> None:
        self.db.execute("INSERT INTO terminal_servers (name, secret, registered_at, in_group) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET secret = excluded.secret, "
                        "registered_at = excluded.registered_at, in_group = excluded.in_group",
                        (registration.name, registration.secret, registration.registered_at,
                         int(registration.in_group)))

    # --- reading the world ----------------------------------------------------------------------

    def key_packs(self) -> tuple[KeyPack, ...]:
        packs = self._cache.get("key_packs")
        if packs is None:
            self._write_issued()
            rows = self.db.execute("SELECT id, key_pack_id, purchase, product_version, cal_type, total, issued, "
                                   "installed_at, retired_at FROM key_packs ORDER BY id")
            packs = tuple(KeyPack(r[0], r[1], self._purchase(r[2]), ProductVersion(r[3]), CalType(r[4]), r[5], r[6],
                                  r[7], r[8]) for r in rows)
            if self._cached:
                self._cache["key_packs"] = packs
        return packs

    def licenses_of(self, hwid: str) -> tuple[License, ...]:
        devices = self._devices
        if devices is None or not self.db.in_transaction:
            rows = self.db.execute(_LICENSES_OF, (hwid, hwid, hwid))
        else:
            temporary = devices.get(hash(hwid))     # current inside a transaction (``_devices``)
            if temporary is None:
                return ()       # no license row has this device
            ids = (temporary,) if type(temporary) is int else temporary     # 0: none, which no row has as id
            rows = self.db.execute(_by_id(len(ids)), (*ids, hwid, hwid, hwid))
        # sorted here (by id, a row's first column), not by ORDER BY: SQLite's sort of the indexes'
        # rows in a temporary B-tree cost 2 of the 14 us of a returning device's read
        return tuple(map(license_row, sorted(rows)))

    def _index_devices(self) -> None:
        """Build ``_devices`` from the table, just after BEGIN IMMEDIATE: on a read-only connection of
        its own (so the table's pages do not fill this one's page cache), which sees what this one
        sees, as no one else may commit meanwhile and this one has written nothing yet. The hardware
        IDs and the temporary licenses' ids come a range of ids at a time, each joined into one string
        by SQLite (a row each costs twice as much): about 0.7 s with 1,000,000 licenses."""
        devices: dict[int, int | tuple] = {}
        db = self.db if self.path is None else sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=ro", uri=True)
        try:
            top = db.execute("SELECT coalesce(max(id), 0) FROM licenses").fetchone()[0]
            for low in range(0, top, _DEVICES_STEP):
                bounds = (low, low + _DEVICES_STEP)
                # one pass over the range's rows feeds both aggregates, in the same order
                n, joined, ids = db.execute(
                    "SELECT count(*), group_concat(hwid, char(10)), group_concat(CASE kind WHEN 'temporary' "
                    "THEN id ELSE 0 END) FROM licenses WHERE id > ? AND id <= ?", bounds).fetchone()
                if not n:
                    continue
                hwids = joined.split("\n")
                if len(hwids) == n:
                    rows = zip(hwids, map(int, ids.split(",")))
                else:         # a hardware ID with a newline in it: these one by one
                    rows = db.execute("SELECT hwid, CASE kind WHEN 'temporary' THEN id ELSE 0 END FROM licenses "
                                      "WHERE id > ? AND id <= ?", bounds)
                for hwid, license_id in rows:
                    _enter(devices, hash(hwid), license_id)
        finally:
            if db is not self.db:
                db.close()
        self._devices = devices

    def next_license_id(self) -> int:
        """The id SQLite gives the next license inserted: max(id) + 1, as licenses has no AUTOINCREMENT.
        Read once in a transaction (another connection may insert between two) and counted on as this
        connection inserts, so a logon's new license is built by the core with its id, once; ``_write``
        inserts it with that id, the one SQLite would have chosen."""
        next_id = self._next_id
        if next_id is None:
            next_id = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM licenses").fetchone()[0]
            if self.db.in_transaction:
                self._next_id = next_id
        return next_id

    def license(self, license_id: int) -> License | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM licenses WHERE id = ?", (license_id,)).fetchone()
        return None if row is None else license_row(row)

    def revoked_holding(self, now: int) -> list[License]:
        """The revoked licenses that still count against the revocation limit (until they would have
        expired), through the index of revoked licenses (migration 9): ``licenses`` with a status
        filter reads by ID and scanned every license (85-115 ms with a million, inside the batch)."""
        return [license_row(r) for r in self.db.execute(REVOKED_HOLDING_SQL.format(place="?"), (now,))]

    def licenses(self, which: LicenseFilter = LicenseFilter(), limit: int = 1000) -> list[License]:
        where, params = license_conditions(which, "?")
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM licenses WHERE {' AND '.join(['1', *where])} ORDER BY id "
                               "LIMIT ?", (*params, limit))
        return [license_row(r) for r in rows]

    def license_counts(self) -> dict[str, int]:
        """How many licenses of each kind and status, keyed "kind:status"."""
        self._write_counted()
        return dict(self.db.execute(KIND_STATUS_COUNTS_SQL))

    # --- writing decisions ----------------------------------------------------------------------

    def _write(self, change: Change) -> License:
        lic = change.license
        new_id = self._next_id
        if new_id is None:
            new_id = self.next_license_id()
        if self._devices is not None:   # the device has a license row from now on (``_devices``)
            _enter(self._devices, hash(lic.hwid), (lic.id or new_id) if lic.kind is _TEMPORARY else 0)
        if lic.id == 0 or lic.id >= new_id:        # a new license (no row has an id that high)
            if lic.id == 0:
                lic = lic.with_id(new_id)           # the license as written, with its id
            elif lic.id != new_id:
                raise ValueError(f"license {lic.id} was built with an id that is no longer the next ({new_id})")
            # ``_value_``, not ``.value``: the same text, without the enum property's Python-level lookup
            counted = (lic.kind._value_, lic.status._value_, lic.product_version._value_)
            self.db.execute(_INSERT_LICENSE, (new_id, counted[0], counted[1], lic.hwid, lic.machine, lic.user,
                                              lic.terminal_server, counted[2], lic.key_pack, int(lic.validated),
                                              lic.issued_at, lic.expires_at, lic.renewals))
            self._next_id = new_id + 1 if self.db.in_transaction else None
            self._count(counted, 1)
        else:
            values = (lic.kind._value_, lic.status._value_, lic.hwid, lic.machine, lic.user, lic.terminal_server,
                      lic.product_version._value_, lic.key_pack, int(lic.validated), lic.issued_at, lic.expires_at,
                      lic.renewals)
            was = change.was or self.license(lic.id)       # the license as it is (the core says, mostly)
            update = license_update(change, values, "?")
            if update is not None:
                self.db.execute(*update)
            if was is not None:         # counted once the UPDATE is done: one that fails moved nothing
                before = (was.kind._value_, was.status._value_, was.product_version._value_)
                after = (values[0], values[1], values[6])
                if before != after:
                    self._count(before, -1)
                    self._count(after, 1)
        delta = change.pack_delta
        if delta:
            packs = self._cache.get("key_packs")
            if packs is None:
                self._add_issued_now(lic.key_pack, delta)
                return lic
            pack = lic.key_pack
            kept = []
            for p in packs:
                if p.id == pack:
                    issued = p.issued + delta
                    if self._pending is None or not 0 <= issued <= p.total:
                        # not in a batch, or one the table's CHECK refuses: written (and refused) now
                        self._add_issued_now(pack, delta)
                    else:
                        self._issued[pack] = self._issued.get(pack, 0) + delta
                        self._held += 1
                    p = KeyPack(p.id, p.key_pack_id, p.purchase, p.product_version, p.cal_type, p.total, issued,
                                p.installed_at, p.retired_at)
                kept.append(p)
            # What changed is known: the cached key packs are kept in step (an UPDATE's trigger drops
            # them) rather than read them all again at the next logon (every upgrade changes one).
            self._cache["key_packs"] = tuple(kept)
        return lic

    def _add_issued_now(self, pack: int, delta: int) -> None:
        """Change a key pack's Issued at once, after the changes held before it."""
        self._write_issued()
        self.db.execute(_ADD_ISSUED, (delta, pack))

    def _count(self, key: tuple[str, str, str], change: int) -> None:
        """One license more (or fewer) of this kind, status and version: held in a batch, else written."""
        if self._pending is None:
            self._write_counts({key: change})
        else:
            self._counted[key] = self._counted.get(key, 0) + change

    def _write_counted(self) -> None:
        """Write the batch's changes to license_counts held so far."""
        if self._counted:
            held, self._counted = self._counted, {}
            self._write_counts(held)

    def _write_counts(self, changes: dict) -> None:
        """One statement per kind, status and version: an UPSERT that adds, an UPDATE that takes away (the
        row is there: what is taken was counted; an UPSERT's row would be refused by n >= 0 first)."""
        self.db.executemany(_ADD_COUNT, [(*key, n) for key, n in changes.items() if n > 0])
        self.db.executemany(_TAKE_COUNT, [(n, *key) for key, n in changes.items() if n < 0])

    def _write_issued(self) -> None:
        """Write the key packs' Issued changes held for the batch: one UPDATE per key pack."""
        if not self._issued:
            return
        held, self._issued = self._issued, {}
        packs = self._cache.get("key_packs")
        self.db.executemany(_ADD_ISSUED, [(delta, pack) for pack, delta in held.items() if delta])
        if packs is not None:
            self._cache["key_packs"] = packs        # they already count these changes

    def _due(self, now: int):
        return self.db.execute(f"SELECT {_COLUMNS} FROM licenses WHERE status = 'active' AND expires_at <= ?",
                               (now,)).fetchall()

    # --- the event log ----------------------------------------------------------------------------

    def add_events(self, new) -> None:
        if self._pending is not None:
            self._pending.extend(new)
            return
        for e in new:
            cursor = self.db.execute(_INSERT_EVENT_NO_ID, _event_values(e))
            self.new_events.append((cursor.lastrowid, e))

    @contextlib.contextmanager
    def held_events(self):
        """A batch's jobs: the events they add are written together when they are done (one
        executemany, their row ids given explicitly), not one INSERT each."""
        self._pending = []
        try:
            yield
            self._write_pending()
        finally:
            self._pending = None

    def events_mark(self) -> int:
        return 0 if self._pending is None else len(self._pending)

    def drop_events(self, mark: int) -> None:
        """Forget the held events added since ``mark`` (a request that is undone)."""
        if self._pending is not None:
            del self._pending[mark:]

    def _write_pending(self) -> None:
        """Write what the batch's jobs held: the key packs' Issued, the licenses' counts and the events."""
        self._write_issued()
        self._write_counted()
        pending = self._pending
        if not pending:
            return
        self._pending = []
        first = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
        rows = [(i, *_event_values(e)) for i, e in zip(itertools.count(first), pending)]
        # _EVENTS_AT_ONCE rows a statement (one INSERT of many rows costs less a row than executemany's,
        # 1.6 us against 2.2), the rest with executemany: the same rows in the same order.
        whole = len(rows) - len(rows) % _EVENTS_AT_ONCE
        for start in range(0, whole, _EVENTS_AT_ONCE):
            self.db.execute(_INSERT_EVENTS, list(itertools.chain.from_iterable(rows[start:start + _EVENTS_AT_ONCE])))
        if whole < len(rows):
            self.db.executemany(_INSERT_EVENT, rows[whole:])
        self.new_events.extend(zip(range(first, first + len(pending)), pending))

    def changes(self) -> int:
        """Rows this connection has written since it opened, and changes to Issued held for the batch
        (the writer's check that a request run without a savepoint wrote nothing before it failed)."""
        return self.db.total_changes + self._held

    def events(self, which: EventFilter = EventFilter(), limit: int = 1000) -> list[tuple]:
        """(row id, Event) pairs, the newest ``limit`` that match, oldest first."""
        self._write_pending()
        where, params = event_conditions(which, "?")
        if which.event_ids is not None:
            where.append(f"event_id IN ({','.join('?' * len(which.event_ids))})")
            params.extend(which.event_ids)
        rows = self.db.execute(
            "SELECT id, at, event_id, message, terminal_server, hwid, user, license_id FROM "
            f"(SELECT * FROM events WHERE {' AND '.join(['1', *where])} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*params, limit))
        return [(r[0], event_row(r)) for r in rows]

    def add_clearinghouse_call(self, key: str, operation: str, request: dict, now: int) -> ClearinghouseCall:
        cursor = self.db.execute("INSERT INTO clearinghouse_calls (idempotency_key, operation, request, state, "
                                 "created_at) VALUES (?, ?, ?, 'pending', ?)", (key, operation, json.dumps(request), now))
        return ClearinghouseCall(cursor.lastrowid, key, operation, request, "pending", now)

    def clearinghouse_call(self, key: str) -> ClearinghouseCall | None:
        row = self.db.execute(f"SELECT {_CALL_COLUMNS} FROM clearinghouse_calls WHERE idempotency_key = ?",
                              (key,)).fetchone()
        return None if row is None else call_row(row)

    def pending_clearinghouse_calls(self) -> tuple[ClearinghouseCall, ...]:
        rows = self.db.execute(f"SELECT {_CALL_COLUMNS} FROM clearinghouse_calls WHERE state = 'pending' ORDER BY id")
        return tuple(call_row(r) for r in rows)

    def recent_clearinghouse_calls(self, limit: int = 1000) -> tuple[ClearinghouseCall, ...]:
        """The last ``limit`` calls, newest first."""
        rows = self.db.execute(f"SELECT {_CALL_COLUMNS} FROM clearinghouse_calls ORDER BY id DESC LIMIT ?", (limit,))
        return tuple(call_row(r) for r in rows)

    def finish_clearinghouse_call(self, key: str, state: str, result: dict, now: int) -> None:
        self.db.execute("UPDATE clearinghouse_calls SET state = ?, result = ?, finished_at = ? "
                        "WHERE idempotency_key = ?", (state, json.dumps(result), now, key))

    def retire_key_packs(self, key_pack_ids, now: int) -> list[KeyPack]:
        """Mark these key packs retired (those this server holds and has not retired yet); returns them."""
        retired = []
        for key_pack_id in key_pack_ids:
            cursor = self.db.execute("UPDATE key_packs SET retired_at = ? WHERE key_pack_id = ? AND retired_at IS NULL",
                                     (now, key_pack_id))
            if cursor.rowcount:
                retired.append(self.key_pack(key_pack_id))
        return retired

    def set_key_pack_total(self, key_pack_id: str, total: int) -> None:
        """A conversion takes unissued CALs from a key pack (or gives them back when refused)."""
        self.db.execute("UPDATE key_packs SET total = ? WHERE key_pack_id = ?", (total, key_pack_id))

    def delete_all_cals(self) -> tuple[int, int]:
        """Rebuild the database: every key pack, issued license and Per User CAL record deleted."""
        self._write_counted()       # the DELETE's trigger takes each from its count
        self._next_id = None        # SQLite's next id is max(id) + 1: 1 again
        licenses = self.db.execute("DELETE FROM licenses").rowcount
        self.db.execute("DELETE FROM per_user_logons")
        packs = self.db.execute("DELETE FROM key_packs").rowcount
        return packs, licenses

    def add_key_pack(self, key_pack_id: str, purchase: PurchaseRef, version: ProductVersion, cal_type: CalType,
                     total: int, now: int) -> KeyPack:
        """Install a key pack the Clearinghouse issued. Callers skip one they already hold
        (``key_pack``): the Clearinghouse may send the same key pack again (recovery, a repeated call)."""
        cursor = self.db.execute(
            "INSERT INTO key_packs (key_pack_id, purchase, reference, product_version, cal_type, total, installed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_pack_id, json.dumps(purchase.to_json()), purchase.reference, version.value, cal_type.value, total, now))
        return KeyPack(cursor.lastrowid, key_pack_id, purchase, version, cal_type, total, 0, now)

    def record_per_user(self, now: int, user: str, hwid: str, machine: str, terminal_server: str) -> None:
        self.db.execute("INSERT INTO per_user_logons (at, user, hwid, machine, terminal_server) VALUES (?,?,?,?,?)",
                        (now, user, hwid, machine, terminal_server))

    def per_user_logons(self, start: int, end: int) -> list[tuple]:
        return self.db.execute("SELECT at, user, hwid, machine, terminal_server FROM per_user_logons "
                               "WHERE at >= ? AND at < ? ORDER BY id", (start, end)).fetchall()


    # --- Per Server / Per Seat products and Small Business Server (docs/legacy.md) -----------------

    def product(self, name: str) -> Product | None:
        row = self.db.execute("SELECT name, server, mode, per_server_licenses, seat_licenses, switched_at "
                              "FROM products WHERE name = ?", (name,)).fetchone()
        return None if row is None else product_row(row)

    def products(self) -> tuple[Product, ...]:
        rows = self.db.execute("SELECT name, server, mode, per_server_licenses, seat_licenses, switched_at "
                               "FROM products ORDER BY name")
        return tuple(product_row(r) for r in rows)

    def save_product(self, p: Product) -> None:
        self.db.execute("INSERT INTO products VALUES (?,?,?,?,?,?) ON CONFLICT (name) DO UPDATE SET mode = excluded.mode, "
                        "per_server_licenses = excluded.per_server_licenses, seat_licenses = excluded.seat_licenses, "
                        "switched_at = excluded.switched_at",
                        (p.name, p.server, p.mode.value, p.per_server_licenses, p.seat_licenses, p.switched_at))

    def seat_of(self, products: tuple[str, ...], hwid: str) -> LicensedBy | None:
        """How the device holds a Per Seat CAL for any of ``products`` (SEAT or SUITE), if it does."""
        row = self.db.execute(f"SELECT via FROM seat_assignments WHERE product IN ({','.join('?' * len(products))}) "
                              "AND hwid = ?", (*products, hwid)).fetchone()
        return None if row is None else LicensedBy(row[0])

    def seats_taken(self, product: str) -> dict[LicensedBy, int]:
        """The product's own CALs assigned (SEAT) and the suite's CALs assigned anywhere (SUITE)."""
        rows = self.db.execute("SELECT via, count(*) FROM seat_assignments WHERE product = ? OR via = 'suite' "
                               "GROUP BY via", (product,))
        return {LicensedBy(via): n for via, n in rows}

    def seats_assigned(self, product: str) -> int:
        return self.db.execute("SELECT count(*) FROM seat_assignments WHERE product = ?", (product,)).fetchone()[0]

    def assign_seat(self, seat: SeatAssignment) -> None:
        self.db.execute("INSERT INTO seat_assignments VALUES (?,?,?,?)",
                        (seat.product, seat.hwid, seat.via.value, seat.assigned_at))

    def seat_assignments(self) -> list[SeatAssignment]:
        rows = self.db.execute("SELECT product, hwid, via, assigned_at FROM seat_assignments ORDER BY product, hwid")
        return [SeatAssignment(r[0], r[1], LicensedBy(r[2]), r[3]) for r in rows]

    def open_connection(self, connection_id: int, product: str, session: int) -> None:
        self.db.execute("INSERT INTO temp.product_connections VALUES (?, ?, ?)", (connection_id, product, session))

    def close_connection(self, connection_id: int, session: int) -> bool:
        """False when no such connection is open on that session."""
        return self.db.execute("DELETE FROM temp.product_connections WHERE id = ? AND session = ?",
                               (connection_id, session)).rowcount == 1

    def close_session(self, session: int) -> None:
        self.db.execute("DELETE FROM temp.product_connections WHERE session = ?", (session,))

    def open_connections(self, product: str) -> int:
        return self.db.execute("SELECT count(*) FROM temp.product_connections WHERE product = ?",
                               (product,)).fetchone()[0]

_COLUMNS = LICENSE_ROW_SQL
_INSERT_LICENSE = f"INSERT INTO licenses ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
_LICENSES_OF = (f"SELECT {_COLUMNS} FROM licenses WHERE "
                f"{HWID_CONDITION.format(hwid='hwid', kind='kind', status='status', place='?')}")

# A device's licenses inside a transaction: its temporary ones by id (``_devices``), its CALs through the
# partial indexes of permanent licenses; SQLite's OR reads each row once.
_PERMANENT_OF = "hwid = ? AND kind = 'permanent' AND status = 'active' OR hwid = ? AND kind = 'permanent' AND status != 'active'"
_LICENSES_BY_ID: dict[int, str] = {}       # the statement, by how many ids it names


def _by_id(n: int) -> str:
    sql = _LICENSES_BY_ID.get(n)
    if sql is None:
        sql = _LICENSES_BY_ID[n] = (f"SELECT {_COLUMNS} FROM licenses WHERE id IN ({','.join('?' * n)}) AND hwid = ? "
                                    f"OR {_PERMANENT_OF}")
    return sql


def _enter(devices: dict, device: int, temporary: int) -> None:
    """Enter a license of the device (by its hardware ID's hash) in ``_devices``: ``temporary``, its id
    if it is a temporary license, else 0."""
    held = devices.get(device)
    if held is None or held == 0:
        devices[device] = temporary
    elif temporary and temporary != held:
        if type(held) is int:
            devices[device] = (held, temporary)
        elif temporary not in held:
            devices[device] = (*held, temporary)


_ADD_ISSUED = "UPDATE key_packs SET issued = issued + ? WHERE id = ?"
_ADD_COUNT = ("INSERT INTO license_counts (kind, status, product_version, n) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (kind, status, product_version) DO UPDATE SET n = n + excluded.n")
_TAKE_COUNT = "UPDATE license_counts SET n = n + ? WHERE kind = ? AND status = ? AND product_version = ?"
_INSERT_EVENT = ("INSERT INTO events (id, at, event_id, name, message, terminal_server, hwid, user, license_id) "
                 "VALUES (?,?,?,?,?,?,?,?,?)")
_EVENTS_AT_ONCE = 50
_INSERT_EVENTS = _INSERT_EVENT.replace("(?,?,?,?,?,?,?,?,?)", ",".join(["(?,?,?,?,?,?,?,?,?)"] * _EVENTS_AT_ONCE))
_INSERT_EVENT_NO_ID = ("INSERT INTO events (at, event_id, name, message, terminal_server, hwid, user, license_id) "
                       "VALUES (?,?,?,?,?,?,?,?)")


def _event_values(e) -> tuple:
    # ``_value_`` and ``_name_``: int(event_id) and its name, without the enum property's Python-level lookup
    return (e.at, e.event_id._value_, e.event_id._name_, e.message, e.terminal_server, e.hwid, e.user, e.license_id)


_CACHED_TABLES = ("key_packs", "meta", "activation", "terminal_servers")
_SETTINGS_TABLES = frozenset(("meta", "activation"))       # what ``logon_settings`` reads


_CALL_COLUMNS = "id, idempotency_key, operation, request, state, created_at, finished_at, result"


class _Savepoint:
    """``LicenseStore.savepoint()``: a plain context manager, as it wraps every request."""

    __slots__ = ("store", "mark")

    def __init__(self, store: LicenseStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        if self.store._pending or self.store._issued or self.store._counted:
            self.store._write_pending()     # earlier requests' events and Issued are not this one's to undo
        self.store.db.execute("SAVEPOINT request")
        self.mark = len(self.store.new_events)

    def __exit__(self, kind, value, tb) -> bool:
        store = self.store
        if kind is None:
            store.db.execute("RELEASE request")
            if not store.db.in_transaction:     # it was the transaction (no BEGIN): it is committed
                store._next_id = None
            return False
        del store.new_events[self.mark:]
        store.drop_events(0)            # every event held now is this request's (``__enter__`` wrote the rest)
        store._forget()
        store.db.execute("ROLLBACK TO request")
        store.db.execute("RELEASE request")
        return False
