"""Wiring: the license server as a Twisted service. Nothing here decides anything."""
from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString

from tsls.listener import Listener
from tsls.server.app import Identity, LicenseServer
from tsls.server.protocol import LicenseFactory
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter


class _WriterService(Service):
    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer

    def startService(self):
        super().startService()
        self.writer.start()

    def stopService(self):
        super().stopService()
        return self.writer.stop()


class LicenseServerService(MultiService):
    """The writer starts first and stops last, so the listener drains into a live ledger."""

    def __init__(self, reactor, endpoint: str, db_path: str, clearinghouse, clock=None, seed: str | None = None):
        super().__init__()
        clock = clock or reactor
        store = LicenseStore.open(db_path)
        identity = Identity.load_or_create(store, seed)
        self.writer = BatchWriter(reactor, clock, store)
        self.server = LicenseServer(self.writer, clearinghouse, identity)
        _WriterService(self.writer).setServiceParent(self)
        self.listener = Listener("license server", serverFromString(reactor, endpoint), LicenseFactory(self.server))
        self.listener.setServiceParent(self)
