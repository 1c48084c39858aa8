"""Secrets at rest (issue 11, item 1): the data directory is 0700 and every file tsls writes is 0600,
whatever the umask; another local user cannot read any of them; tsls refuses to start on a data
directory or database that other users can reach, and says how to fix it."""
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
import pytest_twisted

from tests.harness import Lab
from tsls.files import check_private, ExposedError, private_directory

NOBODY = 65534


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def world_readable_base():
    """A directory any local user may enter, so that only tsls's own modes protect what is inside
    (pytest's tmp_path is 0700 and would hide everything from another user by itself)."""
    base = tempfile.mkdtemp(prefix="tsls-files-")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def modes(directory):
    out = {}
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def can_switch_user():
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def read_as_nobody(path):
    """Exit status and stderr of `cat path` run as the user nobody."""
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", path],
                          capture_output=True, text=True, timeout=10)
    return done.returncode, done.stderr


@pytest_twisted.inlineCallbacks
def test_every_file_a_lab_writes_is_private_even_under_umask_022(world_readable_base, capsys):
    from pathlib import Path

    data = Path(private_directory(os.path.join(world_readable_base, "tsls-data")))
    with umask(0o022):
        lab = Lab(data)
        yield lab.start()
        try:
            yield lab.admin(capsys, "activate")
            sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                                   "--quantity", "5")
            yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
            yield lab.admin(capsys, "terminal-servers", "register", "TS09", "--secret-file", str(data / "ts09.secret"))
            rows = yield lab.ts(capsys, "logon", "pc1", "pc2", "--times", "2")
            assert {r["license"]["kind"] for r in rows if r["round"] == 2} == {"permanent"}, rows
            found = modes(data)
            readable = nobody_reads(data, found)      # while the daemons run and their -wal/-shm exist
        finally:
            yield lab.stop()
    for name in ("license-server.sqlite", "license-server.sqlite-wal", "license-server.sqlite-shm",
                 "clearinghouse.sqlite", "clearinghouse.sqlite-wal", "admin.secret", "devices.json", "ts09.secret"):
        assert name in found, f"{name} was not written: the test proves nothing about it"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert {name: mode for name, mode in found.items() if mode not in (0o600, 0o700)} == {}
    assert readable == []


def nobody_reads(data, names):
    """The files the user nobody can read, even with the data directory opened by mistake."""
    if not can_switch_user():
        return []
    os.chmod(data, 0o755)
    try:
        readable = []
        for name in names:
            status, error = read_as_nobody(str(data / name))
            if status == 0 or "Permission denied" not in error:
                readable.append((name, error))
        return readable
    finally:
        os.chmod(data, 0o700)


@pytest.mark.skipif(not can_switch_user(), reason="needs root and setpriv to act as the user nobody")
def test_another_user_cannot_read_the_database_or_the_secrets(world_readable_base):
    data = os.path.join(world_readable_base, "tsls-data")
    from tsls.server.app import load_identity
    from tsls.server.store import LicenseStore
    with umask(0o022):
        private_directory(data)
        store = LicenseStore.open(os.path.join(data, "license-server.sqlite"))
        load_identity(store, "1")
        store.close()
    for name in os.listdir(data):
        status, error = read_as_nobody(os.path.join(data, name))
        assert status != 0 and "Permission denied" in error, name


def start_refused(*argv):
    done = subprocess.run([sys.executable, "-m", "tsls.cli", *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    return done.stderr


def test_a_data_directory_others_can_read_is_refused_with_the_fix(tmp_path):
    data = tmp_path / "tsls-data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    error = start_refused("server", "--data-dir", str(data), "--listen", "tcp:0:interface=127.0.0.1")
    assert "PERMISSIONS_TOO_OPEN" in error and f"chmod 700 {data}" in error
    assert os.listdir(data) == []           # nothing was created in it


def test_a_database_others_can_read_is_refused_with_the_fix(tmp_path):
    data = private_directory(str(tmp_path / "tsls-data"))
    from tsls.server.store import LicenseStore
    LicenseStore.open(os.path.join(data, "license-server.sqlite")).close()
    db = os.path.join(data, "license-server.sqlite")
    os.chmod(db, 0o644)
    error = start_refused("server", "--data-dir", data, "--listen", "tcp:0:interface=127.0.0.1")
    assert "PERMISSIONS_TOO_OPEN" in error and f"chmod 600 {db}" in error
    os.chmod(db, 0o600)
    os.chmod(data, 0o750)
    error = start_refused("clearinghouse", "--data-dir", data, "--listen", "tcp:0:interface=127.0.0.1")
    assert "PERMISSIONS_TOO_OPEN" in error and f"chmod 700 {data}" in error


def test_a_fresh_data_directory_is_made_private_under_umask_022(tmp_path):
    with umask(0o022):
        path = private_directory(str(tmp_path / "a" / "tsls-data"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    check_private(path)


def test_a_file_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = tmp_path / "x.sqlite"
    path.write_bytes(b"")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ExposedError, match="belongs to uid 65534"):
        check_private(str(path))
