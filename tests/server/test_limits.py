"""Connection limits, in memory: a StringTransport and a task.Clock, no sockets."""
import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tsls.server.protocol import MAX_IN_FLIGHT, LicenseFactory


class Server:
    """Answers nothing: every logon waits forever, so requests pile up in flight."""

    class identity:
        product_id = "00000-000-0000000-00000"

    class writer:
        class clock:
            @staticmethod
            def seconds():
                return 1_800_000_000

    def __init__(self):
        self.waiting = []
        self.followers = set()

    def authenticate(self, role, name, nonce, proof):
        return defer.succeed(False)

    def logon(self, *args):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


def connect(factory):
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def replies(transport):
    return [json.loads(line) for line in transport.value().splitlines()]


HELLO = b'{"id":0,"op":"hello","protocol":1,"role":"terminal_server","name":"T","version":"2003","mode":"per_device"}\n'


def test_an_idle_connection_is_closed_with_a_reason():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock, idle_timeout=300))
    clock.advance(299)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and replies(transport)[-1]["error"]["code"] == "IDLE_TIMEOUT"


def test_a_slow_sender_without_a_newline_is_timed_out_too():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock, idle_timeout=300))
    for _ in range(10):
        protocol.dataReceived(b"x")
        clock.advance(100)
    assert transport.disconnecting


def test_reading_stops_while_too_many_requests_are_in_flight_and_resumes_after():
    server = Server()
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO)
    line = b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n'
    for _ in range(MAX_IN_FLIGHT):
        protocol.dataReceived(line)
    assert transport.producerState == "paused"
    server.waiting[0].callback({"outcome": "existing"})
    assert transport.producerState == "producing"


def test_a_peer_that_does_not_read_its_answers_stops_us_reading():
    protocol, transport = connect(LicenseFactory(Server(), clock=Clock()))
    protocol.pauseProducing()          # what the transport does when its write buffer is full
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_connections_past_the_limit_are_told_why_and_closed():
    factory = LicenseFactory(Server(), clock=Clock(), max_connections=2)
    first, _ = connect(factory)
    connect(factory)
    _, third = connect(factory)
    assert third.disconnecting and replies(third)[0]["error"]["code"] == "TOO_MANY_CONNECTIONS"
    first.connectionLost(None)
    _, fourth = connect(factory)
    assert not fourth.disconnecting
