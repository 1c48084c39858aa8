import pytest
import pytest_twisted


@pytest.fixture
def daemon(tmp_path):
    """A license server on an ephemeral loopback port, real SQLite, a fake Clearinghouse."""
    from tests.server.test_daemon import Daemon

    d = Daemon(tmp_path)
    pytest_twisted.blockon(d.start())
    yield d
    pytest_twisted.blockon(d.stop())
