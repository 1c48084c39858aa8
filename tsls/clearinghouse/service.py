"""Wiring: the Clearinghouse as a Twisted service."""
from __future__ import annotations

import os

from twisted.application.service import MultiService, Service
from twisted.web.server import Site

from tsls.clearinghouse.http import ApiChannel, ApiResource, Clearinghouse
from tsls.clearinghouse.store import ClearinghouseStore
from tsls.listener import Listener, server_endpoint
from tsls.public import write_secret
from tsls.server import auth


class _Store(Service):
    def __init__(self, store) -> None:
        self.store = store

    def stopService(self):
        super().stopService()
        self.store.close()


def operator_credential_path(db_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "operator.secret")


def load_operator_secret(store, credential_path: str) -> str:
    """The lab operator's credential: made at first start, kept in the database, written to
    ``credential_path`` (mode 0600) at every start, as the license server does with admin.secret."""
    with store.transaction():
        secret = store.get_meta("operator_secret")
        if secret is None:
            secret = auth.new_secret()
            store.set_meta("operator_secret", secret)
    write_secret(credential_path, secret)
    return secret


def make_service(reactor, endpoint: str, db_path: str, clock=None, credential_path: str | None = None,
                 initialise: bool = False) -> MultiService:
    """The Clearinghouse on ``endpoint`` (a Twisted server endpoint string), its data in ``db_path``;
    ``clock`` (an IReactorTime, default the reactor) gives the time, so a lab clock ages it too.
    The operator's credential goes to ``credential_path`` (default: operator.secret beside the database)."""
    store = ClearinghouseStore(db_path, initialise)
    top = MultiService()
    top.credential_path = credential_path or operator_credential_path(db_path)
    secret = load_operator_secret(store, top.credential_path)
    _Store(store).setServiceParent(top)
    site = Site(ApiResource(Clearinghouse(store, clock or reactor, secret)))
    site.noisy = False
    site.protocol = ApiChannel
    Listener("clearinghouse", server_endpoint(reactor, endpoint), site).setServiceParent(top)
    return top
