"""TLS from the endpoint strings alone: the license server on ssl:, a client on tls: trusting the lab CA."""
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from clients.connection import connect
from tsls.clearinghouse.testing import FakeClearinghouse
from tsls.certs import make_certs
from tsls.errors import Code, TslsError
from tsls.server.service import LicenseServerService


@pytest_twisted.inlineCallbacks
def test_a_client_trusting_the_lab_ca_talks_tls_and_one_that_does_not_is_refused(tmp_path):
    paths = make_certs(str(tmp_path / "tls"))
    assert oct(os.stat(paths["server"]).st_mode & 0o777) == "0o600"
    service = LicenseServerService(reactor, f"ssl:0:interface=127.0.0.1:privateKey={paths['server']}",
                                   str(tmp_path / "ls.sqlite"), FakeClearinghouse())
    service.startService()
    try:
        port = (yield service.listener.listening).getHost().port
        ca_dir = os.path.dirname(paths["ca"])
        conn = yield connect(reactor, f"tls:127.0.0.1:{port}:trustRoots={ca_dir}").addTimeout(10, reactor)
        yield conn.hello_terminal_server("TS01", "2003", "per_device")
        answer = yield conn.request("logon", hwid="h", machine="m", user="u")
        assert answer["outcome"] == "temporary_issued"
        yield conn.close()

        other = make_certs(str(tmp_path / "other"))          # a different CA
        stranger = yield connect(reactor, f"tls:127.0.0.1:{port}:trustRoots={os.path.dirname(other['ca'])}")
        with pytest.raises(TslsError) as e:
            yield stranger.hello_terminal_server("TS01", "2003", "per_device").addTimeout(10, reactor)
        assert e.value.code is Code.CONNECTION_LOST        # the connection closed: the handshake failed
    finally:
        yield service.stopService()
