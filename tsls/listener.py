"""A service that listens on a Twisted endpoint string while it runs."""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString

# Connections the kernel holds for us before we accept them. Twisted's default, 50, is too few for a lab whose
# terminal servers all connect at once: past it Linux drops the handshake's last packet, the client believes it
# is connected and retransmits its first request for up to a minute (1,000 simulated terminal servers starting
# together timed out their hello). Linux caps it at net.core.somaxconn (4096 on current kernels).
BACKLOG = 1024


def server_endpoint(reactor, description: str):
    """``serverFromString`` with tsls's listen backlog for tcp, ssl and unix endpoints that name none."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        description += f":backlog={BACKLOG}"
    return serverFromString(reactor, description)


class Listener(Service):
    """``listening`` fires with the port once bound (tests listen on ``tcp:0`` and read the port);
    a failure to listen fails that Deferred, so the caller can report it and exit."""

    def __init__(self, name: str, endpoint, factory) -> None:
        self.setName(name)
        self.endpoint = endpoint
        self.factory = factory
        self.listening: defer.Deferred | None = None
        self._port = None

    def startService(self):
        super().startService()
        self.listening = self.endpoint.listen(self.factory)
        self.listening.addCallback(self._listened)

    listening_hook = None       # called with the port once bound (the console learns its own URL)

    def _listened(self, port):
        self._port = port
        if self.listening_hook is not None:
            self.listening_hook(port)
        return port

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()
