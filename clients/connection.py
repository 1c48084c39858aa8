"""The client library for the license server's socket protocol (docs/protocol.md).

    conn = yield connect(reactor, "tcp:127.0.0.1:4870")
    yield conn.hello_terminal_server("TS01", "2003", "per_device")
    answer = yield conn.request("logon", hwid=..., machine=..., user=..., license=None)

Error replies come back as ``tsls.errors.TslsError`` carrying the server's code.
"""
from __future__ import annotations

import itertools
import json

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from tsls.errors import Code, TslsError
from tsls.server.auth import proof

DEFAULT_SERVER = "tcp:127.0.0.1:4870"


class LicenseConnection(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict = {}
        self.closed = defer.Deferred()
        self.hello: dict | None = None
        self.on_event = None        # called with each event pushed after a follow_events request

    def request(self, op: str, **fields) -> defer.Deferred:
        """Send one request; fires with its result or fails with TslsError. Requests may be pipelined."""
        rid = next(self._ids)
        d = defer.Deferred()
        self._pending[rid] = d
        self.sendLine(json.dumps({"id": rid, "op": op, **fields}, separators=(",", ":")).encode())
        return d

    @defer.inlineCallbacks
    def hello_terminal_server(self, name: str, version: str, mode: str, secret: str | None = None):
        """Introduce a terminal server; with its registered ``secret``, prove who it is."""
        fields = dict(protocol=1, role="terminal_server", name=name, version=version, mode=mode)
        if secret is not None:
            challenge = yield self.request("challenge")
            fields["proof"] = proof(secret, challenge["nonce"], "terminal_server", name)
        self.hello = yield self.request("hello", **fields)
        return self.hello

    @defer.inlineCallbacks
    def hello_admin(self, secret: str):
        """Introduce an administrator, proving it holds the credential (the secret never crosses the wire)."""
        challenge = yield self.request("challenge")
        self.hello = yield self.request("hello", protocol=1, role="admin",
                                        proof=proof(secret, challenge["nonce"], "admin"))
        return self.hello

    def lineReceived(self, line: bytes) -> None:
        reply = json.loads(line)
        if "event" in reply:
            if self.on_event is not None:
                self.on_event(reply["event"])
            return
        d = self._pending.pop(reply.get("id"), None)
        if d is None:
            # An error the server could not tie to a request (bad framing): fail everything waiting.
            error = TslsError.from_json(reply.get("error"))
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
            d.errback(TslsError(Code.SHUTTING_DOWN, "the connection to the license server closed"))
        self.closed.callback(None)

    def close(self) -> defer.Deferred:
        self.transport.loseConnection()
        return self.closed


def connect(reactor, endpoint: str = DEFAULT_SERVER) -> defer.Deferred:
    """Connect to a license server; ``endpoint`` is a Twisted client endpoint string."""
    d = clientFromString(reactor, endpoint).connect(Factory.forProtocol(LicenseConnection))

    def unreachable(failure):
        raise TslsError(Code.SERVER_UNREACHABLE, f"cannot reach the license server at {endpoint}: "
                        f"{failure.getErrorMessage()}")
    return d.addErrback(unreachable)
