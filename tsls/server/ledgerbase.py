"""What the two engines of the storage seam (store.py on SQLite, pgstore.py on PostgreSQL) share:
the settings kept as key/value pairs, writing a decision and sweeping expiries over each engine's
own statements, the filters' conditions, and how a row becomes a value. Written once here.

``EngineCommon`` is a mixin: an engine provides ``_get``/``_set`` (one setting), ``_due(now)`` (the
rows of licenses due to expire), ``_write(change)``, ``key_packs``, ``licenses_of`` and
``add_events``; the mixin provides the LedgerStore methods built on them.
"""
from __future__ import annotations

import functools
import itertools
import json
import operator

from tsls.core import events
from tsls.core.activation import Problem
from tsls.core.licensing import Change, Decision, World, expire
from tsls.core.model import KeyPack, License, LicenseKind, LicenseStatus, ProductVersion, PurchaseRef
from tsls.core.perseat import Product, ProductMode
from tsls.core.reports import Scope
from tsls.server.storage import ClearinghouseCall, EventFilter, Identity, LicenseFilter


class EngineCommon:
    # --- settings ---------------------------------------------------------------------------------

    def identity(self) -> Identity | None:
        """None before the first start. A database from before the administrator's credential
        existed gives an empty ``admin_secret``."""
        product_id, seed, secret = self._get("product_id"), self._get("seed"), self._get("token_secret")
        if product_id is None or secret is None:
            return None
        version = self._get("server_version")
        return Identity(product_id, seed or "", bytes.fromhex(secret), self._get("admin_secret") or "",
                        ProductVersion.newest() if version is None else ProductVersion(version))

    def save_identity(self, identity: Identity) -> None:
        self._set("product_id", identity.product_id)
        self._set("token_secret", identity.secret.hex())
        self._set("seed", identity.seed)
        self._set("admin_secret", identity.admin_secret or None)
        self._set("server_version", identity.version.value)

    def activation_problem(self) -> Problem | None:
        """The last activation problem kept for ``status`` (docs/activation.md), or None."""
        return problem_of(self._get("activation_problem"))

    def set_activation_problem(self, problem: Problem | None) -> None:
        self._set("activation_problem", None if problem is None else f"{problem.code}|{problem.at}|{problem.message}")

    def security_group_policy(self) -> bool:
        return self._get("policy:security_group") == "on"

    def prevent_upgrade_policy(self) -> bool:
        """The Prevent License Upgrade policy (IsLSPreventUpgradeGPEnabled) [§3, §9]."""
        return self._get("policy:prevent_upgrade") == "on"

    def set_prevent_upgrade_policy(self, enabled: bool) -> None:
        self._set("policy:prevent_upgrade", "on" if enabled else "off")

    def server_role(self) -> Scope:
        """The license server's scope (Win32_TSLicenseServer.ServerRole): domain unless changed."""
        return scope_of(self._get("server_role"))

    def set_server_role(self, scope: Scope) -> None:
        self._set("server_role", scope.value)

    def set_security_group_policy(self, enabled: bool) -> None:
        self._set("policy:security_group", "on" if enabled else "off")

    def lab_clock_offset(self) -> float:
        return float(self._get("lab_clock_offset") or 0.0)

    def set_lab_clock_offset(self, offset: float) -> None:
        self._set("lab_clock_offset", repr(offset))

    def lab_clock_start(self) -> float | None:
        """The instant the lab clock stood at when the offset was counted from it (``--lab-start``), or
        None when the offset counts from real time (``--lab-clock``)."""
        value = self._get("lab_clock_start")
        return None if value is None else float(value)

    def set_lab_clock_start(self, at: float) -> None:
        self._set("lab_clock_start", repr(at))

    def suite_licenses(self) -> int:
        return int(self._get("suite_licenses") or 0)

    def set_suite_licenses(self, total: int) -> None:
        self._set("suite_licenses", str(total))

    def sbs_licenses(self) -> int | None:
        """None: not the Small Business Server edition."""
        value = self._get("sbs_licenses")
        return None if value is None else int(value)

    def set_sbs_licenses(self, total: int) -> None:
        self._set("sbs_licenses", str(total))

    # --- the ledger -------------------------------------------------------------------------------

    def key_pack(self, key_pack_id: str) -> KeyPack | None:
        return next((p for p in self.key_packs() if p.key_pack_id == key_pack_id), None)

    def _purchase(self, text: str) -> PurchaseRef:
        """A key pack's purchase from its stored JSON, read once (each engine keeps ``_purchases``)."""
        ref = self._purchases.get(text)
        if ref is None:
            ref = self._purchases[text] = PurchaseRef.from_json(json.loads(text))
        return ref

    def logon_settings(self) -> tuple[bool, bool, bool]:
        """What every logon reads besides its device: (the security group policy, activated, the Prevent
        License Upgrade policy)."""
        return self.security_group_policy(), self.activation().activated, self.prevent_upgrade_policy()

    _empty_world: World | None = None       # the last world of a device that holds nothing

    def world(self, hwid: str, activated: bool, seed: str, prevent_upgrade: bool = False) -> World:
        held = self.licenses_of(hwid)
        packs = self.key_packs()
        if held:
            return World(activated, packs, held, seed, prevent_upgrade)
        # Most logons are a device's first: every device that holds nothing sees the same world (a
        # frozen value) until the key packs (the cached tuple) or a setting change.
        world = self._empty_world
        if (world is None or world.packs is not packs or world.activated != activated or world.seed != seed
                or world.prevent_upgrade != prevent_upgrade):
            world = self._empty_world = World(activated, packs, (), seed, prevent_upgrade)
        return world

    def next_license_id(self) -> int:
        """The id the next license inserted gets, when the engine knows it before it writes (a new
        license the core builds with it is written as it is); 0: it gives the id as it writes."""
        return 0

    def apply(self, decision: Decision) -> Decision:
        """Write the decision's changes; return it with the inserted license's id filled in (as it is
        when the core built the license with ``next_license_id``)."""
        result = decision.license
        for change in decision.changes:
            written = self._write(change)
            if change.license is decision.license:
                result = written
        if result is decision.license:
            return decision
        return decision.with_license(result)

    def sweep(self, now: int) -> list[Decision]:
        """Expire every license whose time is up, so what any request reads is current."""
        decisions = [expire(license_row(r), now) for r in self._due(now)]
        applied = [self.apply(d) for d in decisions if d is not None]
        for d in applied:
            self.add_events(events.for_decision(d, now))
        return applied


def problem_of(value: str | None) -> Problem | None:
    """The activation problem as meta keeps it (CODE|at|message)."""
    if value is None:
        return None
    code, at, message = value.split("|", 2)
    return Problem(code, message, int(at))


def scope_of(value: str | None) -> Scope:
    return Scope(value or Scope.DOMAIN.value)


# --- the filters: (conditions, parameters) in the engine's placeholder, columns quoted as it needs ---

# A device's licenses, said as three kinds (a temporary license, a live CAL, a CAL that expired or was
# revoked): the same rows as "hwid = ?". SQLite indexes the last two by hardware ID (one_live_cal, and
# licenses_hwid_rest since store.py's migration 8) but no longer the first (migration 12 dropped
# one_temporary), so there a filter by device reads every license; its writer finds a device's
# temporary licenses by id (store.LicenseStore._devices). PostgreSQL indexes hwid. Three placeholders,
# each the hardware ID.
HWID_CONDITION = ("({hwid} = {place} AND {kind} = 'temporary' OR {hwid} = {place} AND {kind} = 'permanent' AND "
                  "{status} = 'active' OR {hwid} = {place} AND {kind} = 'permanent' AND {status} != 'active')")


def license_conditions(which: LicenseFilter, place: str, quote=lambda c: c) -> tuple[list[str], list]:
    where, params = [], []
    if which.hwid is not None:
        where.append(HWID_CONDITION.format(hwid=quote("hwid"), kind=quote("kind"), status=quote("status"), place=place))
        params.extend((which.hwid,) * 3)
    for column in ("machine", "user", "terminal_server", "kind", "status", "product_version", "key_pack"):
        value = getattr(which, column)
        if value is not None:
            where.append(f"{quote(column)} = {place}")
            params.append(value if isinstance(value, (str, int)) else value.value)
    if which.expires_after is not None:
        where.append(f"expires_at > {place}")
        params.append(which.expires_after)
    return where, params


def event_conditions(which: EventFilter, place: str, quote=lambda c: c) -> tuple[list[str], list]:
    """Every condition but the event IDs, which each engine writes its own way."""
    where, params = [], []
    for column in ("terminal_server", "hwid", "user", "license_id"):
        value = getattr(which, column)
        if value is not None:
            where.append(f"{quote(column)} = {place}")
            params.append(value)
    if which.since is not None:
        where.append(f"at >= {place}")
        params.append(which.since)
    return where, params


# How many licenses of each kind and status, keyed "kind:status", from license_counts (by kind, status
# and product version since SQLite's migration 9, PostgreSQL's 6; kept by the SQLite store as it writes
# since migrations 10 and 11, by triggers on PostgreSQL): both engines.
KIND_STATUS_COUNTS_SQL = ("SELECT kind || ':' || status, CAST(sum(n) AS BIGINT) FROM license_counts "
                          "GROUP BY kind, status HAVING sum(n) > 0")


# --- writing a license ------------------------------------------------------------------------------

# The licenses table's columns after its id, named as License's attributes, in both schemas' order;
# quoted for SQL (``user`` is a keyword in PostgreSQL), as both engines take them.
LICENSE_COLUMNS = ("kind", "status", "hwid", "machine", "user", "terminal_server", "product_version", "key_pack",
                   "validated", "issued_at", "expires_at", "renewals")
LICENSE_COLUMNS_SQL = ", ".join(f'"{c}"' for c in LICENSE_COLUMNS)
LICENSE_ROW_SQL = "id, " + LICENSE_COLUMNS_SQL      # a whole row, as ``license_row`` reads it

# The revoked licenses that still count against the revocation limit (until they would have expired),
# through the index of revoked licenses (SQLite's migration 9, PostgreSQL's 6); ``place``: the engine's
# placeholder.
REVOKED_HOLDING_SQL = f"SELECT {LICENSE_ROW_SQL} FROM licenses WHERE status = 'revoked' AND expires_at > {{place}}"


def changed_columns(change: Change) -> tuple[int, ...] | None:
    """The positions in LICENSE_COLUMNS an update changes, when the core said what the license was
    (``Change.was``), or None: write them all. An upgrade's temporary license changes its status only,
    and an UPDATE that leaves the device's and the version's columns out leaves their indexes alone."""
    was = change.was
    if was is None:
        return None
    return tuple(itertools.compress(_POSITIONS, map(operator.ne, _LICENSE_VALUES(change.license), _LICENSE_VALUES(was))))


_LICENSE_VALUES = operator.attrgetter(*LICENSE_COLUMNS)      # a license's values in LICENSE_COLUMNS' order
_POSITIONS = range(len(LICENSE_COLUMNS))


@functools.lru_cache(maxsize=256)
def update_sql(changed: tuple[int, ...] | None, place: str) -> str:
    """UPDATE licenses SET each changed column (every one when ``changed`` is None; ``place``, the
    engine's placeholder) WHERE id."""
    columns = LICENSE_COLUMNS if changed is None else [LICENSE_COLUMNS[i] for i in changed]
    sets = ", ".join(f'"{c}" = {place}' for c in columns)
    return f"UPDATE licenses SET {sets} WHERE id = {place}"


def license_update(change: Change, values: tuple, place: str) -> tuple[str, tuple] | None:
    """The UPDATE that writes ``change`` (its license's ``values`` in LICENSE_COLUMNS' order) and its
    parameters: only the columns that differ from ``Change.was`` when the core gave it, every one
    when not; None when nothing differs."""
    changed = changed_columns(change)
    if changed == ():
        return None
    lic_id = change.license.id
    if changed is None:
        return update_sql(None, place), (*values, lic_id)
    return update_sql(changed, place), (*[values[i] for i in changed], lic_id)


# --- rows to values ---------------------------------------------------------------------------------

_KINDS = {k.value: k for k in LicenseKind}
_STATUSES = {s.value: s for s in LicenseStatus}
_VERSIONS = {v.value: v for v in ProductVersion}


def license_row(r) -> License:
    """A licenses row (id first, then the columns in the order both schemas list them)."""
    return License(r[0], _KINDS[r[1]], _STATUSES[r[2]], r[3], r[4], r[5], r[6], _VERSIONS[r[7]], r[8], bool(r[9]),
                   r[10], r[11], r[12])


def event_row(r) -> events.Event:
    """(id, at, event_id, message, terminal_server, hwid, user, license_id)."""
    return events.Event(r[1], events.EventId(r[2]), r[3], r[4], r[5], r[6], r[7])


def product_row(r) -> Product:
    return Product(r[0], r[1], ProductMode(r[2]), r[3], r[4], r[5])


def call_row(r) -> ClearinghouseCall:
    """A clearinghouse_calls row, its request and result kept as JSON text."""
    return ClearinghouseCall(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6],
                             None if r[7] is None else json.loads(r[7]))
