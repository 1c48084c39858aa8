"""What a daemon refuses at start, and leaves untouched (issue 11, item 9): damaged tables it needs,
another program's SQLite file (decided on a read-only connection: no WAL switch, no -wal/-shm), a
zero-length file (unless asked to initialise), and a full disk (said so)."""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from tsls.clearinghouse.store import ClearinghouseStore
from tsls.core.licensing import Change, Decision, Outcome
from tsls.core.model import CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.errors import Code
from tsls.server.app import load_identity
from tsls.server.store import LicenseStore
from tsls.sqlite import StoreError

NOW = 1_800_000_000


def ledger(path, licenses=400):
    """A license server database with a key pack and ``licenses`` CALs (the licenses table spans pages)."""
    store = LicenseStore.open(str(path))
    load_identity(store, "1")
    with store.transaction():
        pack = store.add_key_pack("K" * 35, PurchaseRef(Program.RETAIL, retail_code="R" * 25), ProductVersion.W2003,
                                  CalType.PER_DEVICE, licenses, NOW)
        for i in range(licenses):
            cal = License(0, LicenseKind.PERMANENT, LicenseStatus.ACTIVE, f"{i:040x}", f"m{i}", "u", "TS",
                          ProductVersion.W2003, pack.id, True, NOW, NOW + 86400 * 60)
            store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal, pack_delta=1),)))
    store.close()
    return str(path)


def damage(path, table):
    """Overwrite the page header of ``table``'s root page with garbage, as a bad disk would."""
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size + (100 if root == 1 else 0))
        f.write(b"\x07\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")


def snapshot(path):
    with open(path, "rb") as f:
        return f.read(), sorted(os.listdir(os.path.dirname(path)))


def start(*argv):
    return subprocess.run([sys.executable, "-m", "tsls.cli", *argv, "--listen", "tcp:0:interface=127.0.0.1"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("table", ["key_packs", "licenses"])
def test_a_damaged_table_every_logon_needs_is_refused_at_start_and_left_untouched(tmp_path, table):
    """Before, the server started and answered every logon STORAGE_ERROR."""
    data = tmp_path / "tsls-data"
    data.mkdir()
    path = ledger(data / "license-server.sqlite")
    damage(path, table)
    before = snapshot(path)
    with pytest.raises(StoreError) as e:
        LicenseStore.open(path)
    assert e.value.code is Code.DAMAGED_DATABASE and f"the {table} table is damaged" in str(e.value)
    assert snapshot(path) == before
    done = start("server", "--data-dir", str(data))
    assert done.returncode == 1 and "DAMAGED_DATABASE" in done.stderr and "backup" in done.stderr
    assert snapshot(path)[0] == before[0]


def test_a_damaged_clearinghouse_table_is_refused(tmp_path):
    path = str(tmp_path / "ch.sqlite")
    store = ClearinghouseStore(path)
    store.close()
    damage(path, "sales")
    with pytest.raises(StoreError) as e:
        ClearinghouseStore(path)
    assert e.value.code is Code.DAMAGED_DATABASE


def test_another_programs_database_is_decided_read_only_and_truly_untouched(tmp_path):
    """Before, it was switched to WAL mode (and got -wal/-shm files) before being refused."""
    path = str(tmp_path / "other.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (x)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    before = snapshot(path)
    for opener in (LicenseStore.open, ClearinghouseStore):
        with pytest.raises(StoreError) as e:
            opener(path)
        assert e.value.code is Code.NOT_A_TSLS_DATABASE
    assert snapshot(path) == before                     # same bytes, no -wal or -shm beside it
    assert before[0][18:20] == b"\x01\x01"              # still a rollback-journal database, not WAL


def test_a_zero_length_file_is_refused_unless_asked_to_initialise(tmp_path):
    """Before, it silently became a new database with a new product ID."""
    data = tmp_path / "tsls-data"
    data.mkdir()
    path = data / "license-server.sqlite"
    path.write_bytes(b"")
    with pytest.raises(StoreError) as e:
        LicenseStore.open(str(path))
    assert e.value.code is Code.EMPTY_DATABASE and "--initialise" in str(e.value)
    assert path.read_bytes() == b"" and sorted(os.listdir(data)) == ["license-server.sqlite"]
    done = start("server", "--data-dir", str(data))
    assert done.returncode == 1 and "EMPTY_DATABASE" in done.stderr
    store = LicenseStore.open(str(path), initialise=True)
    assert load_identity(store, "1").product_id
    store.close()
    (data / "clearinghouse.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        ClearinghouseStore(str(data / "clearinghouse.sqlite"))


@pytest.fixture
def full_disk():
    """A 256 KiB tmpfs, filled up (needs root and mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mount = tempfile.mkdtemp(prefix="tsls-full-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mount], capture_output=True)
    if done.returncode != 0:
        os.rmdir(mount)
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        os.mkdir(os.path.join(mount, "tsls-data"), 0o700)
        fd = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", mount], check=False)
        os.rmdir(mount)


def test_a_full_disk_at_start_says_the_disk_is_full(full_disk):
    """Before: 'not a usable tsls database'."""
    for command in ("server", "clearinghouse"):
        done = start(command, "--data-dir", os.path.join(full_disk, "tsls-data"))
        assert done.returncode == 1 and "DISK_FULL" in done.stderr and "is full" in done.stderr, done.stderr
        assert "not a usable" not in done.stderr


def test_a_large_tables_pages_are_walked_instead(tmp_path, monkeypatch):
    """Past QUICK_CHECK_ROWS rows only the table's b-tree is walked (a million licenses: 0.1 s)."""
    import tsls.sqlite
    monkeypatch.setattr(tsls.sqlite, "QUICK_CHECK_ROWS", 10)
    path = ledger(tmp_path / "ls.sqlite")
    LicenseStore.open(path).close()
    damage(path, "licenses")
    with pytest.raises(StoreError, match="the licenses table is damaged"):
        LicenseStore.open(path)
