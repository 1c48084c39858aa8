"""The client library for the license server's socket protocol (docs/protocol.md).

    conn = yield connect(reactor, "tcp:127.0.0.1:4870")
    yield conn.hello_terminal_server("TS01", "2003", "per_device")
    answer = yield conn.request("logon", hwid=..., machine=..., user=..., license=None)

Error replies come back as ``tsls.errors.TslsError`` carrying the server's code.

Every call has a timeout. ``connect`` gives up after ``connect_timeout`` seconds (CONNECT_TIMEOUT) with
SERVER_UNREACHABLE; each request waits ``answer_timeout`` seconds (ANSWER_TIMEOUT) for its answer, then
fails with SERVER_TIMEOUT, as do all others waiting on that connection, and the connection is dropped: a
server that answers that late (frozen, stalled) is not trusted with the next request. Events pushed to a
follower are not answers and never time out. ``None`` waits for ever.
"""
from __future__ import annotations

import itertools
import json

import orjson
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol

from tsls.errors import Code, TslsError
from tsls.public import PROTOCOL_VERSION, proof

DEFAULT_SERVER = "tcp:127.0.0.1:4870"
CONNECT_TIMEOUT = 5.0       # seconds to connect (TCP, and TLS for ssl: endpoints)
PAGE_SIZE = 10_000          # rows per page when following a list's cursor (the server allows up to 100,000)
ANSWER_TIMEOUT = 60.0       # seconds to wait for an answer: longer than the license server's own 30 s for the
                            # Clearinghouse, so an install or activation that waits on it is not cut short


class LicenseConnection(Protocol):
    MAX_LENGTH = 16 * 1024 * 1024   # the longest answer taken (a page of 10,000 licenses is about 4 MB)

    def __init__(self, clock=None, answer_timeout: float | None = None, endpoint: str = "") -> None:
        self._unfinished: list[bytes] = []      # the chunks of a line not ended yet
        self._unfinished_length = 0
        self._ids = itertools.count(1)
        self._pending: dict = {}
        self.closed = defer.Deferred()
        self.hello: dict | None = None
        self.on_event = None        # called with each event pushed after a follow_events request
        self.server_error: TslsError | None = None     # the last error the server sent with no request's id
        self.clock = clock
        self.answer_timeout = answer_timeout
        self.endpoint = endpoint

    async def pages(self, op: str, page_size: int | None = None, **fields):
        """Every row of a list (list_licenses, list_events, list_key_packs, list_terminal_servers,
        usage_report), a page at a time, by following its cursor: yields each answer
        ({"items": [...], "total": N, "next_cursor": ...}) as it comes. Ends when the list does."""
        cursor = ""
        page_size = page_size or PAGE_SIZE
        while cursor is not None:
            answer = await self.request(op, cursor=cursor, limit=page_size, **fields)
            yield answer
            cursor = answer["next_cursor"]

    def request(self, op: str, **fields) -> defer.Deferred:
        """Send one request; fires with its result or fails with TslsError (SERVER_TIMEOUT when no answer
        comes within ``answer_timeout``). Requests may be pipelined."""
        rid = next(self._ids)
        d = defer.Deferred()
        self._pending[rid] = d
        if self.answer_timeout is not None and self.clock is not None:
            timer = self.clock.callLater(self.answer_timeout, self._timed_out, op)

            def settled(result):
                if timer.active():
                    timer.cancel()
                return result
            d.addBoth(settled)
        self.sendLine(json.dumps({"id": rid, "op": op, **fields}, separators=(",", ":")).encode())
        return d

    def _timed_out(self, op: str) -> None:
        """No answer in time: everything waiting fails with SERVER_TIMEOUT and the connection is dropped."""
        error = TslsError(Code.SERVER_TIMEOUT, f"the license server{' at ' + self.endpoint if self.endpoint else ''} "
                          f"did not answer {op!r} within {self.answer_timeout:g} s")
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error)
        if self.transport is not None:
            self.transport.abortConnection()

    @defer.inlineCallbacks
    def hello_terminal_server(self, name: str, version: str, mode: str, secret: str | None = None):
        """Introduce a terminal server; with its registered ``secret``, prove who it is."""
        fields = dict(protocol=PROTOCOL_VERSION, role="terminal_server", name=name, version=version, mode=mode)
        if secret is not None:
            challenge = yield self.request("challenge")
            fields["proof"] = proof(secret, challenge["nonce"], "terminal_server", name)
        self.hello = yield self.request("hello", **fields)
        return self.hello

    @defer.inlineCallbacks
    def hello_admin(self, secret: str):
        """Introduce an administrator, proving it holds the credential (the secret never crosses the wire)."""
        challenge = yield self.request("challenge")
        self.hello = yield self.request("hello", protocol=PROTOCOL_VERSION, role="admin",
                                        proof=proof(secret, challenge["nonce"], "admin"))
        return self.hello

    def sendLine(self, line: bytes) -> None:
        self.transport.write(line + b"\n")

    def dataReceived(self, data: bytes) -> None:
        """Split the stream into lines. A long line (a page of a list, megabytes) comes in many chunks:
        each chunk is searched once and kept aside until its line ends, so taking it costs time in
        proportion to its length (Twisted's LineOnlyReceiver searches all it holds again at each
        chunk, which for a 4 MB page took longer than parsing it). A line longer than MAX_LENGTH
        closes the connection."""
        lines = data.split(b"\n")
        if self._unfinished:
            self._unfinished.append(lines[0])
            self._unfinished_length += len(lines[0])
            if len(lines) > 1:
                lines[0] = b"".join(self._unfinished)
                self._unfinished, self._unfinished_length = [], 0
        rest = lines.pop()
        for line in lines:
            if self.transport.disconnecting:
                return
            if len(line) > self.MAX_LENGTH:
                self.transport.loseConnection()
                return
            self.lineReceived(line)
        if rest and not self._unfinished:
            self._unfinished.append(rest)
            self._unfinished_length = len(rest)
        if self._unfinished_length > self.MAX_LENGTH:
            self._unfinished, self._unfinished_length = [], 0
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        reply = orjson.loads(line)      # a page of 10,000 licenses: about 20 ms against 30 with json
        if "event" in reply:
            if self.on_event is not None:
                self.on_event(reply["event"])
            return
        d = self._pending.pop(reply.get("id"), None)
        if d is None:
            # An error the server could not tie to a request (bad framing, or TOO_SLOW for a follower it
            # drops): fail everything waiting, and keep it for whoever waits on ``closed``.
            error = self.server_error = TslsError.from_json(reply.get("error"))
            for pending in self._pending.values():
                pending.errback(error)
            self._pending.clear()
            return
        if reply.get("ok"):
            d.callback(reply.get("result"))
        else:
            d.errback(TslsError.from_json(reply.get("error")))

    def connectionLost(self, reason) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(TslsError(Code.CONNECTION_LOST, "the connection to the license server closed before it "
                                f"answered ({reason.getErrorMessage()}); if the server listens with TLS, "
                                "connect with an ssl: or tls: endpoint, and without one if it does not"))
        self.closed.callback(None)

    def close(self) -> defer.Deferred:
        self.transport.loseConnection()
        return self.closed


def connect(reactor, endpoint: str = DEFAULT_SERVER, connect_timeout: float | None = CONNECT_TIMEOUT,
            answer_timeout: float | None = ANSWER_TIMEOUT, protocol=LicenseConnection) -> defer.Deferred:
    """Connect to a license server; ``endpoint`` is a Twisted client endpoint string. Fails with
    SERVER_UNREACHABLE when it cannot connect within ``connect_timeout`` seconds."""
    factory = Factory()
    factory.protocol = lambda: protocol(reactor, answer_timeout, endpoint)
    d = clientFromString(reactor, endpoint).connect(factory)

    def unreachable(failure):
        if failure.check(TslsError):
            return failure
        raise TslsError(Code.SERVER_UNREACHABLE, f"cannot reach the license server at {endpoint}: "
                        f"{failure.getErrorMessage()}")

    def too_late(result, timeout):
        raise TslsError(Code.SERVER_UNREACHABLE, f"cannot reach the license server at {endpoint}: "
                        f"no connection within {timeout:g} s")
    if connect_timeout is not None:
        d.addTimeout(connect_timeout, reactor, onTimeoutCancel=too_late)
    return d.addErrback(unreachable)


def add_timeout_options(parser, answer_default: float = ANSWER_TIMEOUT) -> None:
    """--connect-timeout and --timeout, the same on every command-line client."""
    parser.add_argument("--connect-timeout", type=_seconds, default=CONNECT_TIMEOUT, metavar="SECONDS",
                        help="give up connecting to a license server after this long (default: %(default)g; 0: never)")
    parser.add_argument("--timeout", type=_seconds, default=answer_default, metavar="SECONDS",
                        help="give up waiting for an answer after this long (default: %(default)g; 0: never)")


def _seconds(text: str) -> float | None:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more: {text!r}")
    return value or None
