import os

import pytest
import pytest_twisted

from tests.pg import pg, pg_cluster, pg_own_cluster  # noqa: F401  (PostgreSQL fixtures, tests/pg.py)

# As the daemons and clients do at start (tsls.files.private_umask): files the tests make for them
# (another program's database, a garbage file) are private too, or tsls would rightly refuse them.
# tests/test_files.py proves tsls's own files are private under the default umask 022 as well.
os.umask(0o077)


def running(harness):
    """A fixture's body for a test harness with start() and stop() Deferreds: started, yielded, stopped."""
    pytest_twisted.blockon(harness.start())
    yield harness
    pytest_twisted.blockon(harness.stop())


@pytest.fixture
def daemon(tmp_path):
    """A license server on an ephemeral loopback port, real SQLite, a fake Clearinghouse."""
    from tests.server.test_daemon import Daemon

    yield from running(Daemon(tmp_path))
