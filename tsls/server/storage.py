"""The storage seam: what the license server asks of its database, as one interface.

``LedgerStore`` is everything the operations (tsls/server/app.py and its parts) and the writer
(tsls/server/writer.py) call on storage; tsls/server/store.py implements it on SQLite, and a
second engine (PostgreSQL, say) implements the same methods. No SQL, and no storage layout,
crosses it: the arguments and answers are the core's values and the frozen values below.

Every method runs inside ``transaction()`` (the writer's batch) and a ``savepoint()`` (one
request); reads see the batch's own writes. Nothing here decides anything.
"""
from __future__ import annotations

import contextlib
from typing import Protocol

import attrs

from tsls.core.activation import Activation, Problem
from tsls.core.events import Event
from tsls.core.licensing import Decision, World
from tsls.core.model import CalType, KeyPack, License, LicenseKind, LicenseStatus, ProductVersion, PurchaseRef
from tsls.core.perseat import LicensedBy, Product


@attrs.frozen
class Identity:
    """What the server is: fixed at first start and kept in its database."""

    product_id: str
    seed: str
    secret: bytes = attrs.field(repr=False)
    admin_secret: str = attrs.field(repr=False, default="")
    version: ProductVersion = ProductVersion.newest()    # its own Windows version [§9], docs/versions.md


@attrs.frozen
class Registration:
    """A terminal server registered to prove its name, and whether it is in the Terminal Server
    Computers group."""

    name: str
    secret: str = attrs.field(repr=False)
    registered_at: int
    in_group: bool = False


@attrs.frozen
class SeatAssignment:
    """A device's Per Seat CAL for a product (or the suite), and which pool it came from."""

    product: str
    hwid: str
    via: LicensedBy         # SEAT (the product's own CALs) or SUITE
    assigned_at: int


@attrs.frozen
class LicenseFilter:
    """Which issued licenses to list: every field given must match exactly."""

    hwid: str | None = None
    machine: str | None = None
    user: str | None = None
    terminal_server: str | None = None
    kind: LicenseKind | None = None
    status: LicenseStatus | None = None
    product_version: ProductVersion | None = None
    key_pack: int | None = None             # KeyPack.id
    expires_after: int | None = None        # expires_at > this


@attrs.frozen
class EventFilter:
    """Which events to list: every field given must match."""

    event_ids: tuple[int, ...] | None = None    # any of these
    terminal_server: str | None = None
    hwid: str | None = None
    user: str | None = None
    license_id: int | None = None
    since: int | None = None                    # at >= this


@attrs.frozen
class ClearinghouseCall:
    """A call to the Clearinghouse, recorded (with its idempotency key) before it is made, so that
    whatever happens to the answer the call can be asked again and gets the same answer.
    ``state``: pending (made or about to be, outcome unknown), done (its answer is applied) or
    failed (the Clearinghouse refused it: nothing changed there)."""

    id: int
    key: str = attrs.field(repr=False)          # a secret: it asks for the answer again
    operation: str                              # activate, reactivate, deactivate, install, recover
    request: dict = attrs.field(repr=False)     # the arguments, with the server's certificate
    state: str
    created_at: int
    finished_at: int | None = None
    result: dict | None = attrs.field(repr=False, default=None)


class LedgerStore(Protocol):
    """The license server's storage. One thread uses it at a time."""

    new_events: list        # (row id, Event) written in the open transaction, published after COMMIT

    # transactions
    def transaction(self) -> contextlib.AbstractContextManager: ...
    def savepoint(self) -> contextlib.AbstractContextManager: ...
    def close(self) -> None: ...

    # identity, activation, settings
    def identity(self) -> Identity | None: ...
    def save_identity(self, identity: Identity) -> None: ...
    def activation(self) -> Activation: ...
    def save_activation(self, activation: Activation) -> None: ...
    def activation_problem(self) -> Problem | None: ...
    def set_activation_problem(self, problem: Problem | None) -> None: ...
    def security_group_policy(self) -> bool: ...
    def set_security_group_policy(self, enabled: bool) -> None: ...
    def lab_clock_offset(self) -> float: ...
    def set_lab_clock_offset(self, offset: float) -> None: ...

    # terminal servers
    def registration(self, name: str) -> Registration | None: ...
    def registrations(self) -> tuple[Registration, ...]: ...
    def save_registration(self, registration: Registration) -> None: ...

    # the ledger
    def key_packs(self) -> tuple[KeyPack, ...]: ...
    def add_key_pack(self, key_pack_id: str, purchase: PurchaseRef, version: ProductVersion, cal_type: CalType,
                     total: int, now: int) -> KeyPack: ...
    def key_pack(self, key_pack_id: str) -> KeyPack | None: ...
    def retire_key_packs(self, key_pack_ids, now: int) -> list[KeyPack]: ...

    # calls to the Clearinghouse (idempotency keys)
    def add_clearinghouse_call(self, key: str, operation: str, request: dict, now: int) -> ClearinghouseCall: ...
    def clearinghouse_call(self, key: str) -> ClearinghouseCall | None: ...
    def pending_clearinghouse_calls(self) -> tuple[ClearinghouseCall, ...]: ...
    def finish_clearinghouse_call(self, key: str, state: str, result: dict, now: int) -> None: ...
    def license(self, license_id: int) -> License | None: ...
    def licenses(self, which: LicenseFilter, limit: int = 1000) -> list[License]: ...
    def license_counts(self) -> dict[str, int]: ...
    def world(self, hwid: str, activated: bool, seed: str) -> World: ...
    def apply(self, decision: Decision) -> Decision: ...
    def sweep(self, now: int) -> list[Decision]: ...
    def record_per_user(self, now: int, user: str, hwid: str, machine: str, terminal_server: str) -> None: ...
    def per_user_logons(self, start: int, end: int) -> list[tuple]: ...

    # the event log
    def add_events(self, new) -> None: ...
    def events(self, which: EventFilter, limit: int = 1000) -> list[tuple[int, Event]]: ...

    # Per Server / Per Seat products and Small Business Server (docs/legacy.md)
    def product(self, name: str) -> Product | None: ...
    def products(self) -> tuple[Product, ...]: ...
    def save_product(self, product: Product) -> None: ...
    def seat_of(self, products: tuple[str, ...], hwid: str) -> LicensedBy | None: ...
    def seats_taken(self, product: str) -> dict[LicensedBy, int]: ...
    def seats_assigned(self, product: str) -> int: ...
    def assign_seat(self, seat: SeatAssignment) -> None: ...
    def seat_assignments(self) -> list[SeatAssignment]: ...
    # Per Server connections: they end with the session that opened them or with the daemon, so they
    # are not durable, but they are written inside the transaction like everything else.
    def open_connection(self, connection_id: int, product: str, session: int) -> None: ...
    def close_connection(self, connection_id: int, session: int) -> bool: ...
    def close_session(self, session: int) -> None: ...
    def open_connections(self, product: str) -> int: ...
    def suite_licenses(self) -> int: ...
    def set_suite_licenses(self, total: int) -> None: ...
    def sbs_licenses(self) -> int | None: ...
    def set_sbs_licenses(self, total: int) -> None: ...
