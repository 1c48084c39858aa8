"""Wiring: the Clearinghouse as a Twisted service."""
from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from tsls.clearinghouse.http import ApiResource, Clearinghouse
from tsls.clearinghouse.store import ClearinghouseStore
from tsls.listener import Listener


class _Store(Service):
    def __init__(self, store) -> None:
        self.store = store

    def stopService(self):
        super().stopService()
        self.store.close()


def make_service(reactor, endpoint: str, db_path: str, clock=None) -> MultiService:
    """The Clearinghouse on ``endpoint`` (a Twisted server endpoint string), its data in ``db_path``;
    ``clock`` (an IReactorTime, default the reactor) gives the time, so a lab clock ages it too."""
    store = ClearinghouseStore(db_path)
    top = MultiService()
    _Store(store).setServiceParent(top)
    site = Site(ApiResource(Clearinghouse(store, clock or reactor)))
    site.noisy = False
    Listener("clearinghouse", serverFromString(reactor, endpoint), site).setServiceParent(top)
    return top
