import os

import pytest

from tests.pg import pg, pg_cluster, pg_own_cluster  # noqa: F401  (PostgreSQL fixtures, tests/pg.py)

# As the daemons and clients do at start (tsls.files.private_umask): files the tests make for them
# (another program's database, a garbage file) are private too, or tsls would rightly refuse them.
# tests/test_files.py proves tsls's own files are private under the default umask 022 as well.
os.umask(0o077)


@pytest.fixture(autouse=True)
def exports_backgrounded(monkeypatch):
    """tsls-admin lowers its CPU priority for an export (clients.admin.background): run in the tests'
    own process it would lower pytest's, and that of every daemon started after; the calls are
    counted here instead (tests/server/test_paging.py)."""
    import clients.admin

    calls: list = []
    monkeypatch.setattr(clients.admin, "background", lambda: calls.append(1))
    return calls


@pytest.fixture
def daemon(tmp_path):
    """A license server on an ephemeral loopback port, real SQLite, a fake Clearinghouse."""
    from tests.harness import Daemon, running

    yield from running(Daemon(tmp_path))
