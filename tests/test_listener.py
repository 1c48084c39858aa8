"""The daemons listen with a backlog for a lab whose terminal servers all connect at once."""
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory

from tsls.listener import BACKLOG, server_endpoint


@pytest_twisted.inlineCallbacks
def test_a_tcp_listener_gets_tsls_backlog_and_a_named_one_is_kept():
    ours = yield server_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
    named = yield server_endpoint(reactor, "tcp:0:interface=127.0.0.1:backlog=7").listen(Factory())
    try:
        # Twisted's default is 50: 1,000 simulated terminal servers connecting together overflowed it, and the
        # kernel's dropped handshakes left clients retransmitting their hello past the answer timeout.
        assert ours.backlog == BACKLOG > 50
        assert named.backlog == 7
    finally:
        yield ours.stopListening()
        yield named.stopListening()


@pytest_twisted.inlineCallbacks
def test_the_license_server_listens_with_the_backlog(tmp_path):
    from tests.harness import Daemon
    daemon = Daemon(tmp_path)
    yield daemon.start()
    try:
        assert daemon.service.listener._port.backlog == BACKLOG
    finally:
        yield daemon.stop()
