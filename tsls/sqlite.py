"""Opening a tsls SQLite database: durable settings, numbered migrations, and refusing files
that are corrupt, belong to something else, or come from a newer tsls (never touching them)."""
from __future__ import annotations

import errno
import os
import pathlib
import sqlite3
import struct

from tsls import files
from tsls.errors import Code


class StoreError(Exception):
    """The database cannot be used: corrupt, not a tsls database, from a newer tsls, or readable
    by other users. ``code`` says which, stably."""

    def __init__(self, message: str, code: Code = Code.STORAGE_ERROR) -> None:
        super().__init__(message)
        self.code = code


def open_database(path: str, migrations: dict[int, str], what: str, tables: tuple[str, ...] = (),
                  initialise: bool = False) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with synchronous=FULL (a COMMIT that returned survives a crash),
    and bring its schema up to ``max(migrations)``. (The license server's store then switches its
    connection to synchronous=NORMAL and syncs the WAL itself: ``WalFile``, tsls/server/writer.py.) Migration N takes version N-1 to N.

    The database, its directory and its -wal/-shm files must be private to their owner (the
    database holds secrets); a new database is created mode 0600 before SQLite opens it, and
    SQLite gives its -wal and -shm files the database's own mode.

    An existing file is first opened read-only to decide whether it may be used: a file that is
    not a database, another program's database, one of a newer tsls, or one whose ``tables`` (those
    every request needs) are damaged is refused and left exactly as it was. A zero-length file is
    refused unless ``initialise`` (it would silently become a new database, with a new identity)."""
    try:
        files.check_private(os.path.dirname(os.path.abspath(path)), path, f"{path}-wal", f"{path}-shm")
    except files.ExposedError as e:
        raise StoreError(str(e), Code.PERMISSIONS_TOO_OPEN) from None
    try:
        created = files.create_private(path)
        empty = os.path.getsize(path) == 0
    except OSError as e:
        raise _os_error(path, e) from None
    if empty and not created and not initialise:
        raise StoreError(f"{path} is empty (0 bytes): it is not a tsls {what} database, and using it would make a "
                         "new one with a new identity. Check the path; to make a new database in it, start with "
                         "--initialise. It was left untouched", Code.EMPTY_DATABASE)
    if not empty:
        _inspect(path, migrations, what, tables)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db, path, migrations, what)
    except sqlite3.DatabaseError as e:
        db.close()
        if _disk_full(e):
            raise _full(path) from None
        raise StoreError(f"{path} is not a usable tsls database ({e}); it was left untouched",
                         Code.DAMAGED_DATABASE) from None
    except StoreError:
        db.close()
        raise
    return db


class WalFile:
    """The -wal (and -shm) file of a database open in WAL mode, for a writer whose connection runs
    with synchronous=NORMAL and makes its COMMITs durable itself: ``sync()`` fdatasyncs the WAL
    through a descriptor of its own (an fsync makes durable every write made to the file before it
    started, whichever descriptor made it), and ``backlog()`` says how many frames wait for a
    checkpoint. ``sync()`` and ``backlog()`` use no SQLite connection, so any thread may call them.

    ``sync``: the function that syncs a descriptor (os.fdatasync; tests hold or fail it)."""

    def __init__(self, path: str, sync=os.fdatasync) -> None:
        self._sync = sync
        self.fd = os.open(f"{path}-wal", os.O_RDWR | os.O_CLOEXEC)      # SQLite made it: never create it here
        try:
            self._shm = os.open(f"{path}-shm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.fd)
            raise
        # SQLite syncs a new WAL's directory entry on its first sync of the file; tsls syncs the file
        # itself, so it syncs the directory once here (the entry must survive a crash as the frames do).
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def sync(self) -> None:
        """Every frame written to the WAL before this call is on disk when it returns (OSError if not)."""
        self._sync(self.fd)

    def backlog(self) -> int:
        """Frames in the WAL not yet copied to the database by a checkpoint: mxFrame (offset 16 of the
        wal-index header) less nBackfill (offset 96, the checkpoint info), native byte order, as
        https://sqlite.org/walformat.html lays out the -shm file. A torn read only mistimes a
        checkpoint; if the header cannot be read, the WAL file's size stands for it (too often, never
        too rarely)."""
        header = os.pread(self._shm, 100, 0)
        if len(header) < 100:
            return (os.fstat(self.fd).st_size - 32) // 4120
        frames, backfilled = struct.unpack_from("=I", header, 16)[0], struct.unpack_from("=I", header, 96)[0]
        return max(frames - backfilled, 0)

    def close(self) -> None:
        os.close(self._shm)
        os.close(self.fd)


def _inspect(path: str, migrations: dict[int, str], what: str, tables: tuple[str, ...]) -> None:
    """Decide on a read-only connection whether ``path`` may be opened for writing. With no -wal
    file beside it the file is the whole database, and it is read as immutable: SQLite then makes no
    -shm or -wal file either (a WAL left by a crash is read the usual way, its files exist already)."""
    immutable = "" if os.path.exists(f"{path}-wal") else "&immutable=1"
    try:
        db = sqlite3.connect(pathlib.Path(path).absolute().as_uri() + "?mode=ro" + immutable, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path} cannot be opened ({e}); it was left untouched", Code.DAMAGED_DATABASE) from None
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        latest = max(migrations)
        if version > latest:
            raise StoreError(f"{path} has schema version {version}, newer than this tsls knows ({latest}); "
                             "use a newer tsls, it was left untouched", Code.NEWER_SCHEMA)
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and present:
            raise StoreError(f"{path} is not a tsls {what} database; it was left untouched", Code.NOT_A_TSLS_DATABASE)
        for table in tables:
            if table in present:
                try:
                    found = _check_table(db, table)
                except sqlite3.DatabaseError as e:
                    found = [str(e)]
                if found != ["ok"]:
                    raise StoreError(f"{path}: the {table} table is damaged ({'; '.join(found[:3])}); tsls would "
                                     f"fail every request that reads it, so it does not start. Restore the database "
                                     "from a backup (the file was left untouched)", Code.DAMAGED_DATABASE)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a usable tsls database ({e}); it was left untouched",
                         Code.DAMAGED_DATABASE) from None
    finally:
        db.close()


# Up to this many rows a table and its indexes get PRAGMA quick_check at start (milliseconds); past it
# only the table's own b-tree is walked (every page, 0.2 s for a million licenses, where quick_check
# takes over a second): a damaged page there is found, damage inside a cell is left to `tsls check`.
QUICK_CHECK_ROWS = 100_000


def _check_table(db, table: str) -> list[str]:
    rows = db.execute(f"SELECT count(*) FROM {table} NOT INDEXED").fetchone()[0]
    if rows > QUICK_CHECK_ROWS:
        return ["ok"]
    return [r[0] for r in db.execute(f"PRAGMA quick_check({table})")]


def _disk_full(e: Exception) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)


def _full(path: str) -> StoreError:
    return StoreError(f"the disk holding {path} is full: free some space and start again (nothing was changed)",
                      Code.DISK_FULL)


def _os_error(path: str, e: OSError) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full(path)
    return StoreError(f"cannot open {path}: {e.strerror}", Code.STORAGE_ERROR)


def _statements(script: str) -> list[str]:
    """A script's statements, one by one (a trigger's body holds semicolons of its own)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending)
    return statements


def _migrate(db, path, migrations, what) -> None:
    latest = max(migrations)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > latest:
        raise StoreError(f"{path} has schema version {version}, newer than this tsls knows ({latest}); "
                         "use a newer tsls, it was left untouched", Code.NEWER_SCHEMA)
    if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"{path} is not a tsls {what} database; it was left untouched", Code.NOT_A_TSLS_DATABASE)
    for target in range(version + 1, latest + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migrations[target]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
