"""A link between a session host and a license server: a real TCP relay on loopback that the session
host connects through, so a lab's cuts, delays and resets are socket events the client library sees.

- cut: open connections are reset (RST) and new ones reset as soon as they arrive, as a firewall
  rule that rejects does; heal undoes it;
- slow: every chunk, both ways, is held for a delay (real time: the lab clock does not move);
- reset: open connections are reset once; the link stays up.

A link no step of the lab touches is direct (``relay=False``): the session host connects to the license
server's own port, and the lab saves relaying every byte of a long run through its own process.
"""
from __future__ import annotations

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

CONNECT_TIMEOUT = 5


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: "_Downstream") -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.link.later(self.downstream.transport.write, data)

    def connectionLost(self, reason) -> None:
        self.downstream.link.later(self.downstream.transport.loseConnection)


class _Downstream(protocol.Protocol):
    def __init__(self, link: "Link") -> None:
        self.link = link
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        if self.link.state == "cut" or self.link.upstream_port is None:
            self.transport.abortConnection()
            return
        self.link.open.add(self)
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(self.link.reactor, "127.0.0.1", self.link.upstream_port, timeout=CONNECT_TIMEOUT)
        endpoint.connect(protocol.Factory.forProtocol(lambda: _Upstream(self))).addErrback(
            lambda _: self.transport.abortConnection())

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if not self.transport.connected:
            upstream.transport.abortConnection()
            return
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is not None:
            self.link.later(self.upstream.transport.write, data)

    def connectionLost(self, reason) -> None:
        self.link.open.discard(self)
        if self.upstream is not None:
            self.link.later(self.upstream.transport.loseConnection)

    def reset(self) -> None:
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()


class Link:
    def __init__(self, reactor, session_host: str, license_server: str, relay: bool = True) -> None:
        self.reactor, self.relay = reactor, relay
        self.session_host, self.license_server = session_host, license_server
        self.upstream_port: int | None = None
        self.state = "up"            # up, cut
        self.delay = 0.0
        self.open: set[_Downstream] = set()
        self.port = None

    @property
    def name(self) -> str:
        return f"{self.session_host}->{self.license_server}"

    @property
    def endpoint(self) -> str:
        """Where the session host connects: the relay, or for a direct link the license server (which
        restarts on the same port)."""
        return f"tcp:127.0.0.1:{self.port.getHost().port if self.relay else self.upstream_port}"

    @defer.inlineCallbacks
    def start(self):
        if not self.relay:
            return self.upstream_port
        self.port = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(lambda: _Downstream(self)))
        return self.port.getHost().port

    def later(self, f, *args) -> None:
        if self.delay:
            self.reactor.callLater(self.delay, f, *args)
        else:
            f(*args)

    def cut(self) -> None:
        self.state = "cut"
        self.reset()

    def slow(self, delay: float) -> None:
        self.delay = delay

    def reset(self) -> None:
        for conn in list(self.open):
            conn.reset()

    def heal(self) -> None:
        self.state, self.delay = "up", 0.0

    def stop(self) -> defer.Deferred:
        self.reset()
        return defer.maybeDeferred(self.port.stopListening) if self.port is not None else defer.succeed(None)
