"""Every client call has a timeout (issue 11 item 6): a license server that is frozen (SIGSTOP), that
accepts and never answers, or that never completes the connection, is passed over by the terminal-server
simulator as a terminal server goes down its discovery list; the library says SERVER_TIMEOUT or
SERVER_UNREACHABLE instead of waiting for ever. Short timeouts; nothing sleeps."""
import json
import os
import signal
import socket
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, utils
from twisted.internet.endpoints import serverFromString

from clients.connection import connect
from clients.tssim import DeviceStore, TerminalServer, TerminalServerState
from tests.harness import start_server_process
from tsls.errors import Code, TslsError

TIMEOUT = 30


class Silent(protocol.Protocol):
    """Accepts, reads, never answers: a license server stalled inside a request."""


@pytest.fixture
def silent():
    port = pytest_twisted.blockon(serverFromString(reactor, "tcp:0:interface=127.0.0.1")
                                  .listen(protocol.Factory.forProtocol(Silent)))
    yield f"tcp:127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def never_accepts():
    """A listening socket whose accept queue is full: a new connection is never completed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    yield f"tcp:127.0.0.1:{server.getsockname()[1]}"
    for s in [server, *fillers]:
        s.close()


def simulator(tmp_path, servers, **timeouts):
    return TerminalServer(reactor, "TS01", "2003", "per_device", servers, DeviceStore(str(tmp_path / "devices.json")),
                          TerminalServerState(str(tmp_path / "ts.json")), **timeouts)


@pytest_twisted.inlineCallbacks
def test_a_request_unanswered_in_time_fails_with_server_timeout_and_drops_the_connection(silent):
    conn = yield connect(reactor, silent, answer_timeout=0.2)
    first, second = conn.request("challenge"), conn.request("challenge")
    for d in (first, second):
        with pytest.raises(TslsError) as e:
            yield d.addTimeout(TIMEOUT, reactor)
        assert e.value.code is Code.SERVER_TIMEOUT and silent in e.value.message
    yield conn.closed.addTimeout(TIMEOUT, reactor)


@pytest_twisted.inlineCallbacks
def test_a_connection_never_completed_fails_with_server_unreachable_in_time(never_accepts):
    with pytest.raises(TslsError) as e:
        yield connect(reactor, never_accepts, connect_timeout=0.3).addTimeout(TIMEOUT, reactor)
    assert e.value.code is Code.SERVER_UNREACHABLE and "0.3 s" in e.value.message


@pytest_twisted.inlineCallbacks
def test_the_simulator_passes_over_a_silent_and_an_unreachable_server_to_the_next(tmp_path, daemon, silent, never_accepts):
    ts = simulator(tmp_path, [silent, never_accepts, daemon.endpoint], connect_timeout=0.3, answer_timeout=0.3)
    try:
        row = yield defer.ensureDeferred(ts.logon("pc1", "alice")).addTimeout(TIMEOUT, reactor)
    finally:
        yield defer.ensureDeferred(ts.close())
    assert row["served_by"] == daemon.endpoint and row["outcome"] == "temporary_issued"


@pytest_twisted.inlineCallbacks
def test_with_no_server_answering_the_grace_period_admits_the_client(tmp_path, silent):
    ts = simulator(tmp_path, [silent], answer_timeout=0.2)
    try:
        row = yield defer.ensureDeferred(ts.logon("pc1", "alice")).addTimeout(TIMEOUT, reactor)
    finally:
        yield defer.ensureDeferred(ts.close())
    assert row["outcome"].startswith("admitted_") and row["served_by"] is None


@pytest_twisted.inlineCallbacks
def test_tsls_ts_passes_over_a_sigstopped_license_server_at_the_head_of_its_list(tmp_path, daemon):
    frozen_dir, sock = tmp_path / "frozen", tmp_path / "frozen.sock"
    frozen = start_server_process(str(frozen_dir), str(sock))
    yield frozen.listening.addTimeout(TIMEOUT, reactor)
    pid = frozen.transport.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "clients.tssim", "--server", f"unix:{sock}", "--server", daemon.endpoint,
                             "--timeout", "1", "--state-dir", str(tmp_path / "ts"), "--json", "logon", "pc1"],
            env=os.environ, path=os.getcwd()).addTimeout(TIMEOUT, reactor)
    finally:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        yield frozen.ended.addTimeout(TIMEOUT, reactor)
    assert code == 0, err.decode()
    (row,) = json.loads(out)
    assert row["served_by"] == daemon.endpoint and row["outcome"] == "temporary_issued"


def test_an_error_the_server_sends_with_no_id_fails_what_waits_and_is_kept_for_the_follower():
    from twisted.internet.testing import StringTransport

    from clients.connection import LicenseConnection

    conn = LicenseConnection()
    conn.makeConnection(StringTransport())
    waiting = conn.request("status")
    failed = []
    waiting.addErrback(failed.append)
    conn.dataReceived(b'{"id":null,"ok":false,"error":{"code":"TOO_SLOW","message":"dropped"}}\n')
    assert failed[0].value.code is Code.TOO_SLOW and conn.server_error.code is Code.TOO_SLOW
