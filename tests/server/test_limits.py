"""Connection limits, in memory: a StringTransport and a task.Clock, no sockets."""
import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tsls.core.model import ProductVersion
from tsls.server.protocol import DRAIN_TIMEOUT, FOLLOW_BACKLOG, LINES_PER_ROUND, MAX_IN_FLIGHT, LicenseFactory


class Server:
    """Answers nothing: every logon waits forever, so requests pile up in flight."""

    class identity:
        product_id = "00000-000-0000000-00000"
        version = ProductVersion.W2025

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


class BufferedTransport(StringTransport):
    """As a socket transport does: past 64 KiB of unsent data it pauses its producer; the peer reading
    its data (``read``) empties the buffer and resumes it."""

    BUFFER = 64 * 1024

    def write(self, data):
        super().write(data)
        if self.producer is not None and len(self.value()) > self.BUFFER and not getattr(self, "full", False):
            self.full = True
            self.producer.pauseProducing()

    def read(self):
        data = self.value()
        self.clear()
        if getattr(self, "full", False):
            self.full = False
            self.producer.resumeProducing()
        return data


def connect(factory, transport=None):
    protocol = factory.buildProtocol(None)
    transport = transport or StringTransport()
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


def due(clock):
    return [c for c in clock.calls if c.getTime() <= clock.seconds()]


def turns(clock):
    """Run the reactor's turns until nothing more is due now."""
    while due(clock):
        clock.advance(0)


def test_a_flood_of_tiny_bad_lines_is_taken_a_few_lines_a_turn_and_stops_while_the_peer_does_not_read():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock), BufferedTransport())
    protocol.dataReceived(b"1\n" * 32 * 1024)          # one read's worth: 32,768 requests of 2 bytes
    assert len(replies(transport)) == LINES_PER_ROUND    # the rest waits for later turns of the reactor
    assert transport.producerState == "paused"          # and nothing more is read meanwhile
    turns(clock)
    unsent = len(transport.value())
    assert 64 * 1024 < unsent < 64 * 1024 + 200         # the answers stopped at the transport's bound
    assert not due(clock) and transport.producerState == "paused"
    answered = unsent // len(transport.value().splitlines()[0])
    read = transport.read()                             # the peer reads: the protocol goes on where it stopped
    turns(clock)
    assert read and len(transport.value()) > 64 * 1024
    assert all(r["error"]["code"] == "BAD_REQUEST" for r in replies(transport)) and answered > 500


def test_a_connection_flooding_does_not_keep_another_from_being_answered_at_once():
    clock = Clock()
    factory = LicenseFactory(Server(), clock=clock)
    flood, flooded = connect(factory)
    polite, answers = connect(factory)
    flood.dataReceived(b"1\n" * 32 * 1024)
    polite.dataReceived(HELLO)
    assert [r["id"] for r in replies(answers)] == [0] and len(replies(flooded)) == LINES_PER_ROUND
    turns(clock)                                        # the flood is taken at later turns, TURN_BUDGET at a time
    assert len(replies(flooded)) == 32 * 1024 and not factory._waiting


def test_lines_waiting_in_the_buffer_are_taken_after_a_half_close_and_then_the_connection_closes():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock))
    protocol.dataReceived(HELLO + b"1\n" * 100 + b'{"id":"last","op":"hello"}')      # no newline at the end
    protocol.readConnectionLost()
    turns(clock)
    answers = replies(transport)
    assert len(answers) == 102 and answers[-1]["id"] == "last" and answers[-1]["error"]["code"] == "ALREADY_HELLO"
    assert transport.disconnecting and transport.producer is None      # closed once the last answer was written


def test_a_closing_connection_whose_peer_never_reads_is_cut_after_the_drain_timeout():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock, idle_timeout=300))
    clock.advance(300)
    assert transport.disconnecting and not transport.disconnected
    clock.advance(DRAIN_TIMEOUT)
    assert transport.disconnected


def follower(clock):
    server = Server()
    protocol, transport = connect(LicenseFactory(server, clock=clock), BufferedTransport())
    protocol.dataReceived(b'{"id":0,"op":"hello","protocol":1,"role":"admin"}\n{"id":"f","op":"follow_events"}\n')
    turns(clock)
    assert [r["ok"] for r in replies(transport)] == [True, True]
    transport.clear()
    (push,) = server.followers
    return server, protocol, transport, push


EVENT = {"event_id": 1101, "message": "x" * 1000}


def test_a_follower_that_stops_reading_is_dropped_with_too_slow_once_too_far_behind():
    server, protocol, transport, push = follower(Clock())
    for _ in range(FOLLOW_BACKLOG // 1000 + 100):
        push(EVENT)
    *events, last = replies(transport)
    assert {e["id"] for e in events} == {"f"} and len(events) * 1000 < FOLLOW_BACKLOG + 64 * 1024 + 2000
    assert last["id"] is None and last["error"]["code"] == "TOO_SLOW"
    assert transport.disconnecting and not server.followers
    push(EVENT)                                          # a late event is not written to a closing follower
    assert replies(transport)[-1] == last


def test_a_follower_that_falls_behind_less_than_the_backlog_and_reads_again_gets_every_event():
    server, protocol, transport, push = follower(Clock())
    for _ in range(FOLLOW_BACKLOG // 1000 // 2):
        push(EVENT)
    transport.read()
    for _ in range(FOLLOW_BACKLOG // 1000 // 2):
        push(EVENT)
    assert not transport.disconnecting and server.followers
