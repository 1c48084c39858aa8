"""A service that listens on a Twisted endpoint string while it runs."""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer


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
