"""Opening a tsls SQLite database: durable settings, numbered migrations, and refusing files
that are corrupt, belong to something else, or come from a newer tsls (never touching them)."""
from __future__ import annotations

import os
import sqlite3

from tsls import files
from tsls.errors import Code


class StoreError(Exception):
    """The database cannot be used: corrupt, not a tsls database, from a newer tsls, or readable
    by other users. ``code`` says which, stably."""

    def __init__(self, message: str, code: Code = Code.STORAGE_ERROR) -> None:
        super().__init__(message)
        self.code = code


def open_database(path: str, migrations: dict[int, str], what: str) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with synchronous=FULL (a COMMIT that returned survives a crash),
    and bring its schema up to ``max(migrations)``. Migration N takes version N-1 to N.

    The database, its directory and its -wal/-shm files must be private to their owner (the
    database holds secrets); a new database is created mode 0600 before SQLite opens it, and
    SQLite gives its -wal and -shm files the database's own mode."""
    try:
        files.check_private(os.path.dirname(os.path.abspath(path)), path, f"{path}-wal", f"{path}-shm")
    except files.ExposedError as e:
        raise StoreError(str(e), Code.PERMISSIONS_TOO_OPEN) from None
    files.create_private(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, path, migrations, what)
    except sqlite3.DatabaseError as e:
        db.close()
        raise StoreError(f"{path} is not a usable tsls database ({e}); it was left untouched") from None
    except StoreError:
        db.close()
        raise
    return db


def _migrate(db, path, migrations, what) -> None:
    latest = max(migrations)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > latest:
        raise StoreError(f"{path} has schema version {version}, newer than this tsls knows ({latest}); "
                         "use a newer tsls, it was left untouched")
    if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"{path} is not a tsls {what} database; it was left untouched")
    for target in range(version + 1, latest + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[target].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
