"""The Clearinghouse daemon against hostile HTTP (issue 11, item 8, Clearinghouse part), on a real
socket: every request gets a status and a JSON error, never a 500 and never a silent close."""
import json

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.harness import clearinghouse_port, running
from tsls.clearinghouse.service import make_service

TIMEOUT = 10


class Raw(protocol.Protocol):
    """Sends bytes as they are and collects the whole answer until the server closes."""

    def __init__(self, data):
        self.data, self.received, self.done = data, b"", defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data
        if b"\r\n\r\n" in self.received:
            head, _, body = self.received.partition(b"\r\n\r\n")
            length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            if length and len(body) >= length[0]:
                self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(self.received)


class Harness:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    @defer.inlineCallbacks
    def start(self):
        self.service = make_service(reactor, "tcp:0:interface=127.0.0.1", str(self.tmp_path / "ch.sqlite"))
        self.service.startService()
        self.port = yield clearinghouse_port(self.service)

    def stop(self):
        return self.service.stopService()

    @defer.inlineCallbacks
    def send(self, data: bytes):
        """(status, error code) of the answer to ``data``."""
        p = Raw(data)
        yield protocol.ClientCreator(reactor, lambda: p).connectTCP("127.0.0.1", self.port)
        raw = yield p.done.addTimeout(TIMEOUT, reactor)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head, "the connection closed with no answer"
        status = int(head.split(b" ")[1])
        return status, json.loads(body)["error"]["code"]

    def post(self, path: str, body: bytes):
        return self.send(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (path.encode(), len(body), body))


@pytest.fixture
def ch(tmp_path):
    yield from running(Harness(tmp_path))


SERVER = b'"license_server_id": "%s", "product_id": "12345-123-1234567-12345", "certificate": "C"'


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/activations", b"[" * 5000 + b"]" * 5000, (400, "BAD_JSON")),
    ("/v1/activations", b'{"a":' * 5000 + b"1" + b"}" * 5000, (400, "BAD_JSON")),
    ("/v1/installations", b"{" + SERVER % b"\\ud800" + b', "purchase": {"program": "retail"}}', (400, "BAD_REQUEST")),
    ("/v1/check-ins", b"{" + SERVER % b"AB\\udfffCD" + b"}", (400, "BAD_REQUEST")),
    ("/v1/activations", '{"product_id": "12345-123-1234567-1234²", "contact": {}}'.encode(), (400, "BAD_REQUEST")),
    ("/v1/activations", '{"product_id": "١٢٣٤٥-١٢٣-١٢٣٤٥٦٧-١٢٣٤٥", "contact": {"first_name": "A", "last_name": "B", '
                        '"company": "C", "country_region": "D"}}'.encode(), (400, "BAD_REQUEST")),
])
@pytest_twisted.inlineCallbacks
def test_hostile_bodies_get_a_4xx(ch, path, body, expected):
    """Before: 500 for deep nesting and lone surrogates; non-ASCII digits taken as a product ID."""
    answer = yield ch.post(path, body)
    assert answer == expected
    health = yield ch.send(b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert health == (404, "NOT_FOUND")        # still serving


@pytest_twisted.inlineCallbacks
def test_a_huge_path_or_header_gets_a_status_not_a_silent_close(ch):
    """Before: the connection closed with no status at all."""
    path = yield ch.send(b"GET /v1/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert path == (414, "TOO_LARGE")
    header = yield ch.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n")
    assert header == (431, "TOO_LARGE")
    many = yield ch.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-A: 12345678901234567890\r\n" * 1000 + b"\r\n")
    assert many == (431, "TOO_LARGE")
    garbage = yield ch.send(b"\x00\x01 nonsense\r\n\r\n")
    assert garbage[0] == 400
