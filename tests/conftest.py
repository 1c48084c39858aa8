import pytest
import pytest_twisted


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
