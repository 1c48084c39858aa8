"""Each class of hostile input found against the license server (issue 11, items 4, 5, 7 and 8), replayed on
the real daemon over real loopback sockets: every request gets its own coded answer, in order, none is
INTERNAL_ERROR, and a client that half-closes gets every answer and then the close at once.

Raw sockets run in a thread (deferToThread) with a socket timeout, so a server that hangs fails the test
instead of hanging it; nothing sleeps."""
import json
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from tests.harness import activate_and_install, logon, with_timeout
from tsls.errors import Code, TslsError
from tsls.public import proof

WAIT = 20       # seconds a raw socket waits for data; the old half-close hang was 300 s
HELLO = {"op": "hello", "protocol": 1, "role": "terminal_server", "name": "TS01", "version": "2003",
         "mode": "per_device"}
HELLO_FIELDS = {k: v for k, v in HELLO.items() if k != "op"}


def line(**request) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def port_of(daemon) -> int:
    return int(daemon.endpoint.rsplit(":", 1)[1])


def talk(port: int, data: bytes, half_close: bool = True, admin_secret: str | None = None) -> list[dict]:
    """Blocking: send ``data`` (after an admin challenge/hello when a secret is given), shut our sending side
    (SHUT_WR, as `nc -q1` does) and read until the server closes. Returns the answers, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        f = s.makefile("rb")
        if admin_secret is not None:
            s.sendall(line(id="c", op="challenge"))
            nonce = json.loads(f.readline())["result"]["nonce"]
            s.sendall(line(id="a", op="hello", protocol=1, role="admin", proof=proof(admin_secret, nonce, "admin")))
            assert json.loads(f.readline())["ok"]
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return [json.loads(raw) for raw in f.read().splitlines()]   # read() ends only when the server closes


def in_thread(*args, **kwargs):
    return with_timeout(threads.deferToThread(talk, *args, **kwargs))


def codes(answers):
    return [a["result"]["outcome"] if a["ok"] and "outcome" in (a["result"] or {}) else
            "ok" if a["ok"] else a["error"]["code"] for a in answers]


def logons(n, first_id=1, prefix="pc"):
    return b"".join(line(id=first_id + i, op="logon", hwid=f"hw-{prefix}{i}", machine=f"{prefix}{i}", user="u")
                    for i in range(n))


# --- item 5: half-close -------------------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_half_close_after_150_pipelined_logons_gets_every_answer_and_then_the_close(daemon):
    answers = yield in_thread(port_of(daemon), line(id=0, **HELLO) + logons(150))
    assert [a["id"] for a in answers] == list(range(151))
    assert codes(answers) == ["ok"] + ["temporary_issued"] * 150


@pytest_twisted.inlineCallbacks
def test_half_closed_list_events_over_64_kib_gets_it_all_and_then_the_close(daemon):
    ts = yield daemon.terminal_server()
    yield defer.gatherResults([logon(ts, f"pc{i}", report=False) for i in range(300)])
    secret = daemon.service.server.identity.admin_secret
    answers = yield in_thread(port_of(daemon), line(id=1, op="list_events", limit=100_000), admin_secret=secret)
    assert [a["id"] for a in answers] == [1] and len(answers[0]["result"]) >= 300
    assert len(json.dumps(answers[0])) > 64 * 1024


# --- item 7: hostile lines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [900, 5000])
@pytest_twisted.inlineCallbacks
def test_deeply_nested_json_gets_its_own_answer_in_order_and_the_connection_lives_on(daemon, depth):
    nested = b'{"id":2,"op":"logon","hwid":' + b"[" * depth + b"]" * depth + b',"machine":"m","user":"u"}\n'
    answers = yield in_thread(port_of(daemon), line(id=0, **HELLO) + logons(1) + nested + logons(1, first_id=3, prefix="x"))
    assert [a["id"] for a in answers][:2] == [0, 1] and answers[3]["id"] == 3
    assert codes(answers) == ["ok", "temporary_issued", answers[2]["error"]["code"], "temporary_issued"]
    assert answers[2]["error"]["code"] in ("BAD_JSON", "BAD_REQUEST") and "nest" in answers[2]["error"]["message"]


@pytest_twisted.inlineCallbacks
def test_a_line_over_64_kib_is_answered_after_the_logons_before_it_then_the_connection_closes(daemon):
    data = line(id=0, **HELLO) + logons(20) + b'{"id":99,"op":"logon","hwid":"' + b"x" * (70 * 1024) + b'"}\n' + logons(5, 100)
    answers = yield in_thread(port_of(daemon), data, half_close=False)       # the server closes, we do not
    assert [a["id"] for a in answers] == list(range(21)) + [None]
    assert codes(answers) == ["ok"] + ["temporary_issued"] * 20 + ["LINE_TOO_LONG"]
    admin = yield daemon.admin()
    licenses = yield admin.request("list_licenses")
    assert len(licenses) == 20          # the 20 answered logons were committed; nothing after the long line ran


# --- item 8: the inputs that made INTERNAL_ERROR ------------------------------------------------------------

SURROGATE = "a\udc80b"
BIG = 2 ** 63


@pytest_twisted.inlineCallbacks
def refused(conn, code, op, **fields):
    with pytest.raises(TslsError) as e:
        yield conn.request(op, **fields)
    assert e.value.code is code, (op, fields, e.value)


@pytest_twisted.inlineCallbacks
def test_an_op_that_is_a_list_or_an_object_is_a_bad_request(daemon):
    ts = yield daemon.terminal_server()
    for op in (["logon"], {"a": 1}, 7, None):
        yield refused(ts, Code.BAD_REQUEST, op, hwid="h", machine="m", user="u")
    assert (yield logon(ts, "pc1"))["outcome"] == "temporary_issued"


@pytest_twisted.inlineCallbacks
def test_a_lone_surrogate_anywhere_is_a_bad_request_and_nothing_is_stored(daemon):
    ts = yield daemon.terminal_server()
    yield refused(ts, Code.BAD_REQUEST, "logon", hwid=SURROGATE, machine="m", user="u")
    yield refused(ts, Code.BAD_REQUEST, "logon", hwid="h", machine=SURROGATE, user="u")
    yield refused(ts, Code.BAD_REQUEST, "logon", hwid="h", machine="m", user=SURROGATE)
    yield refused(ts, Code.BAD_REQUEST, "logon", hwid="h", machine="m", user="u", **{SURROGATE: 1})
    conn = yield daemon.connect()
    yield refused(conn, Code.BAD_REQUEST, "hello", **{**HELLO_FIELDS, "name": SURROGATE})
    admin = yield daemon.admin()
    yield refused(admin, Code.BAD_REQUEST, "register_terminal_server", name=SURROGATE)
    yield refused(admin, Code.BAD_REQUEST, "activate", method="automatic", contact={"first_name": SURROGATE})
    yield refused(admin, Code.BAD_REQUEST, "add_product", name=SURROGATE, server="S")
    assert (yield admin.request("list_licenses")) == []


@pytest_twisted.inlineCallbacks
def test_non_ascii_proofs_macs_and_token_ids_are_refused_with_their_codes(daemon):
    conn = yield daemon.connect()
    yield conn.request("challenge")
    yield refused(conn, Code.BAD_CREDENTIALS, "hello", protocol=1, role="admin", proof="é" * 64)
    ts = yield daemon.terminal_server()
    token = (yield logon(ts, "pc1"))["license"]["token"]
    prefix, license_id, mac = token.split(".")
    for forged in (f"{prefix}.{license_id}.{'é' * len(mac)}", f"{prefix}.².{mac}", f"{prefix}.١.{mac}",
                   f"{prefix}.{license_id}.{mac[:-1]}\u00ff"):
        yield refused(ts, Code.INVALID_LICENSE, "logon", hwid="hw-pc1", machine="pc1", user="u", license=forged)
        yield refused(ts, Code.INVALID_LICENSE, "logon_succeeded", hwid="hw-pc1", license=forged)
    assert (yield logon(ts, "pc1", token))["outcome"] == "temporary"


@pytest_twisted.inlineCallbacks
def test_integers_past_64_bits_are_bad_requests(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    for big in (BIG, -BIG - 1, 10 ** 30):
        yield refused(admin, Code.BAD_REQUEST, "revoke", license_id=big)
        yield refused(admin, Code.BAD_REQUEST, "list_events", event_id=big)
        yield refused(admin, Code.BAD_REQUEST, "list_events", license_id=big)
        yield refused(admin, Code.BAD_REQUEST, "usage_report", start=big)
        yield refused(admin, Code.BAD_REQUEST, "usage_report", end=big)
    yield refused(admin, Code.BAD_REQUEST, "usage_report", start=2 ** 62)      # fits in 64 bits, not in a date
    yield refused(admin, Code.UNKNOWN_LICENSE, "revoke", license_id=BIG - 1)
    assert (yield admin.request("list_events", event_id=BIG - 1)) == []


@pytest_twisted.inlineCallbacks
def test_an_id_that_cannot_be_echoed_is_answered_with_a_null_id_in_order(daemon):
    answers = yield in_thread(port_of(daemon), line(id=0, **HELLO) + line(id=BIG, op="logon") +
                              line(id=SURROGATE, op="logon") + logons(1, first_id=3))
    assert [a["id"] for a in answers] == [0, None, None, 3]
    assert codes(answers) == ["ok", "BAD_REQUEST", "BAD_REQUEST", "temporary_issued"]


@pytest_twisted.inlineCallbacks
def test_dates_and_clock_moves_past_what_a_date_can_say_are_bad_requests(tmp_path):
    from tests.harness import Daemon
    from tsls.labclock import LabClock

    daemon = Daemon(tmp_path, lab_clock=LabClock(reactor))
    yield daemon.start()
    try:
        admin = yield daemon.admin()
        for to in ("+999999w", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "+²d"):
            yield refused(admin, Code.BAD_REQUEST, "set_clock", to=to)
        yield refused(admin, Code.BAD_REQUEST, "list_events", since="9999-12-31T23:59:59-01:00")
        ts = yield daemon.terminal_server()
        assert (yield logon(ts, "pc1"))["outcome"] == "temporary_issued"
    finally:
        yield daemon.stop()


# --- item 4: clients that never read ------------------------------------------------------------------------

def flood(port: int, n: int) -> list[socket.socket]:
    """Blocking: n connections with a small receive buffer, each sending `1\\n` until the server stops
    taking it; none reads. Returns the sockets (still open)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    block = b"1\n" * 32 * 1024
    for s in socks:
        for _ in range(64):             # up to 4 MiB each: far more than the server will take
            try:
                s.send(block)
            except BlockingIOError:
                break
    return socks


@pytest_twisted.inlineCallbacks
def test_connections_that_never_read_hold_bounded_answers_and_others_are_served(daemon):
    from tsls.server.protocol import MAX_IN_FLIGHT, MAX_LINE, TRANSPORT_BUFFER

    factory = daemon.service.listener.factory
    built = []
    build = factory.buildProtocol
    factory.buildProtocol = lambda addr: built.append(build(addr)) or built[-1]
    socks = yield with_timeout(threads.deferToThread(flood, port_of(daemon), 10))
    try:
        stalled = defer.Deferred()

        def all_stalled():              # each flood has filled its transport's buffer: the server stopped taking
            if len(built) == 10 and all(p._peer_slow for p in built) and not stalled.called:
                stalled.callback(None)
            elif not stalled.called:
                reactor.callLater(0.01, all_stalled)
        all_stalled()
        yield with_timeout(stalled)
        for p in built:
            t = p.transport
            unsent = len(t.dataBuffer) - t.offset + t._tempDataLen
            assert unsent <= TRANSPORT_BUFFER + 200                   # the transport's bound and one answer
            assert len(p._buffer) - p._pos <= TRANSPORT_BUFFER + MAX_LINE    # one read and a partial line, no more
            assert len(p._answers) <= MAX_IN_FLIGHT
        ts = yield daemon.terminal_server()
        assert (yield logon(ts, "polite"))["outcome"] == "temporary_issued"
    finally:
        for s in socks:
            s.close()


def follow(port: int, secret: str) -> socket.socket:
    """Blocking: an administrator connection with a small receive buffer that follows events."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(WAIT)
    s.connect(("127.0.0.1", port))
    f = s.makefile("rb")
    s.sendall(line(id="c", op="challenge"))
    nonce = json.loads(f.readline())["result"]["nonce"]
    s.sendall(line(id="a", op="hello", protocol=1, role="admin", proof=proof(secret, nonce, "admin")))
    s.sendall(line(id="f", op="follow_events"))
    assert json.loads(f.readline())["ok"] and json.loads(f.readline())["result"] == {"following": True}
    return s


def read_to_end(s: socket.socket) -> list[dict]:
    with s, s.makefile("rb") as f:
        return [json.loads(raw) for raw in f.read().splitlines()]


@pytest_twisted.inlineCallbacks
def test_a_follower_that_stops_reading_is_dropped_with_too_slow(daemon):
    from tsls.server.protocol import FOLLOW_BACKLOG

    s = yield with_timeout(threads.deferToThread(follow, port_of(daemon), daemon.service.server.identity.admin_secret))
    followers = daemon.service.server.followers
    ts = yield daemon.terminal_server()
    batches = 0
    while len(followers) and batches < 40:       # each batch: 1,000 events of ~250 bytes the follower does not read
        yield defer.gatherResults([logon(ts, f"b{batches}-{i}", report=False) for i in range(500)])
        batches += 1
    assert not followers, "the follower was never dropped"
    received = yield with_timeout(threads.deferToThread(read_to_end, s))
    *events, last = received
    assert last["id"] is None and last["error"]["code"] == "TOO_SLOW"
    assert all(e["id"] == "f" and "event" in e for e in events)
    assert len(events) < batches * 500 * 2          # each logon here is two events: some were never sent
    assert sum(len(json.dumps(e)) for e in events) > FOLLOW_BACKLOG // 2       # it was sent what it could take
    assert (yield logon(ts, "after"))["outcome"] == "temporary_issued"
