"""Per Server / Per Seat products and the Small Business Server edition, on the license server
(the rules are in tsls/core/perseat.py; docs/legacy.md).

Per Server connections are concurrent connections: they end with the session that opened them, or
with the daemon, so the store keeps them outside the durable ledger (SQLite: a TEMP table) but inside
its transactions, so a refused request or a failed COMMIT takes its connections back with it.
Everything else is in the ledger. All of it runs as writer jobs, so the counts change in order.
"""
from __future__ import annotations

import itertools
import weakref

import attrs

from tsls.core import perseat
from tsls.core.events import Event, EventId
from tsls.core.model import iso, whole_number
from tsls.core.perseat import SBS_START, SUITE, AddPackUse, LicensedBy, Product, ProductMode, Requester
from tsls.errors import Code, TslsError
from tsls.server.storage import EventFilter, SeatAssignment

HISTORY = (EventId.PRODUCT_ADDED, EventId.PRODUCT_LICENSES_ADDED, EventId.SWITCHED_TO_PER_SEAT,
           EventId.ADD_PACK_APPLIED)


def _count(value, what) -> int:
    return whole_number(value, what, 0, 1_000_000)


class ProductLicensing:
    def __init__(self, writer) -> None:
        self.writer = writer
        self._ids = itertools.count(1)
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # owner -> its session number
        self._session_numbers = itertools.count(1)

    def _session(self, owner) -> int:
        number = self._sessions.get(owner)
        if number is None:
            number = self._sessions[owner] = next(self._session_numbers)
        return number

    # --- connections ----------------------------------------------------------------------------

    def connect(self, owner, product_name: str, hwid: str, administrator: bool):
        def job(store, now):
            product = store.product(product_name)
            seat = store.seat_of((product_name, SUITE), hwid)
            open_now = store.open_connections(product_name)
            try:
                how = perseat.connect(product, open_now, administrator, seat, store.seats_taken(product_name),
                                      store.suite_licenses())
            except TslsError as e:
                store.add_events([Event(now, EventId.PRODUCT_CONNECTION_REFUSED, f"{product_name}: {e.message}",
                                        hwid=hwid)])
                return e
            if how in (LicensedBy.SEAT, LicensedBy.SUITE) and seat is None:
                store.assign_seat(SeatAssignment(SUITE if how is LicensedBy.SUITE else product_name, hwid, how, now))
            connection_id = next(self._ids)
            if product.mode is ProductMode.PER_SERVER:
                store.open_connection(connection_id, product_name, self._session(owner))
            return {"connection_id": connection_id, "product": product_name, "licensed_by": how.value}
        return self.writer.submit(job)

    def disconnect(self, owner, connection_id: int):
        def job(store, now):
            if not store.close_connection(connection_id, self._session(owner)):
                raise TslsError(Code.NOT_CONNECTED, f"no connection {connection_id} is open on this session")
            return {"closed": connection_id}
        return self.writer.submit(job)

    def release(self, owner) -> None:
        """The session that opened Per Server connections is gone: so are they."""
        session = self._session(owner)

        def job(store, now):
            store.close_session(session)
        self.writer.submit(job).addErrback(lambda f: None)     # a daemon shutting down drops them all anyway

    # --- administration -------------------------------------------------------------------------

    def add_product(self, name: str, server: str, per_server_licenses: int):
        licenses = _count(per_server_licenses, "per_server_licenses")

        def job(store, now):
            if store.product(name) is not None:
                raise TslsError(Code.PRODUCT_EXISTS, f"{name} is already managed")
            store.save_product(Product(name, server, ProductMode.PER_SERVER, licenses))
            store.add_events([Event(now, EventId.PRODUCT_ADDED, f"{name} on {server} installed Per Server with "
                                                                f"{licenses} licenses")])
            return self._products(store)
        return self.writer.submit(job)

    def add_licenses(self, name: str, per_server: int, seats: int):
        per_server, seats = _count(per_server, "per_server"), _count(seats, "seats")

        def job(store, now):
            if name == SUITE:
                total = store.suite_licenses() + seats
                store.set_suite_licenses(total)
                store.add_events([Event(now, EventId.PRODUCT_LICENSES_ADDED,
                                        f"{seats} {SUITE} CALs added ({total} in all)")])
                return self._products(store)
            product = store.product(name)
            if product is None:
                raise TslsError(Code.UNKNOWN_PRODUCT, f"no product {name!r}")
            if per_server and product.mode is ProductMode.PER_SEAT:
                raise TslsError(Code.ALREADY_PER_SEAT, f"{name} is licensed Per Seat: it takes Per Seat CALs only")
            store.save_product(attrs.evolve(product, per_server_licenses=product.per_server_licenses + per_server,
                                     seat_licenses=product.seat_licenses + seats))
            store.add_events([Event(now, EventId.PRODUCT_LICENSES_ADDED, f"{name}: {per_server} Per Server licenses "
                                                                         f"and {seats} Per Seat CALs added")])
            return self._products(store)
        return self.writer.submit(job)

    def switch_to_per_seat(self, name: str, confirmed: bool, requester: Requester):
        """One job: who may switch is decided on the product as this batch reads it."""
        def job(store, now):
            product = perseat.switch_to_per_seat(store.product(name), confirmed, requester, now)
            store.save_product(product)
            store.add_events([Event(now, EventId.SWITCHED_TO_PER_SEAT, f"{name} switched from Per Server to Per "
                                                                       "Seat; its Per Server licenses are gone")])
            return self._products(store)
        return self.writer.submit(job)

    def switch_to_per_server(self, name: str):
        def job(store, now):
            perseat.switch_to_per_server(store.product(name))
        return self.writer.submit(job)

    def products(self):
        return self.writer.submit(lambda store, now: self._products(store))

    def _products(self, store) -> dict:
        out = [{"name": p.name, "server": p.server, "mode": p.mode.value,
                "per_server_licenses": p.per_server_licenses, "seat_licenses": p.seat_licenses,
                "seats_assigned": store.seats_assigned(p.name), "switched_at": iso(p.switched_at),
                "connections": store.open_connections(p.name)} for p in store.products()]
        return {"products": out, "suite": {"name": SUITE, "licenses": store.suite_licenses(),
                                           "assigned": store.seats_assigned(SUITE)}}

    def seat_clients(self):
        def job(store, now):
            return [{"product": s.product, "hwid": s.hwid, "licensed_by": s.via.value, "assigned_at": iso(s.assigned_at)}
                    for s in store.seat_assignments()]
        return self.writer.submit(job)

    def history(self):
        which = EventFilter(event_ids=tuple(int(e) for e in HISTORY))
        return self.writer.submit(lambda store, now: [
            {"at": iso(e.at), "event_id": int(e.event_id), "message": e.message}
            for _, e in store.events(which, 10_000)])

    # --- Small Business Server ------------------------------------------------------------------

    def sbs_setup(self):
        def job(store, now):
            if store.sbs_licenses() is None:
                store.set_sbs_licenses(SBS_START)
            return self._sbs(store)
        return self.writer.submit(job)

    def sbs_status(self):
        return self.writer.submit(lambda store, now: self._sbs(store))

    def apply_add_pack(self, pack_id: str, used: AddPackUse | None):
        def job(store, now):
            current = store.sbs_licenses()
            after, record = perseat.apply_add_pack(current, pack_id, used)
            store.set_sbs_licenses(after)
            store.add_events([Event(now, EventId.ADD_PACK_APPLIED, f"Client Add Pack {pack_id}: client licenses "
                                                                  f"{current} to {after}")])
            return {**self._sbs(store), "add_pack": {"id": pack_id, "used": attrs.asdict(record)}}
        return self.writer.submit(job)

    def _sbs(self, store) -> dict:
        licenses = store.sbs_licenses()
        return {"edition": "standard" if licenses is None else "small_business_server",
                "client_licenses": licenses, "maximum": perseat.SBS_MAX}
