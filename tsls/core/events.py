"""The event log: every grant, refusal, upgrade, renewal, expiry, revocation, activation, key-pack
install and policy change, with a stable numeric ID.

IDs below 1000 are those of the Windows TermServLicensing source where one exists
[§7]: 4 activated, 18 not activated, 21 no permanent CALs of the type, 22 no CALs
installed, 81 revocation limit, 4141 not in the Terminal Server Computers group. IDs from 1100
are tsls's own, for what Windows records elsewhere or not at all. Never renumber one.
"""
from __future__ import annotations

import enum

import attrs

from tsls.core.licensing import Decision, Outcome
from tsls.errors import Code


class EventId(enum.IntEnum):
    ACTIVATED = 4
    NOT_ACTIVATED = 18
    NO_PERMANENT_CALS = 21
    NO_CALS_INSTALLED = 22
    REVOCATION_LIMIT = 81
    KEY_PACK_UNINSTALLED = 89      # migrated away: the source's key pack removed [§9, MIGR]
    SOURCE_UNINSTALL_FAILED = 90   # the source's key pack could not be removed [§9, MIGR]
    IMPORTED_FROM_STOPPED = 93     # imported from a source that is not running: double circulation on record
    NOT_IN_GROUP = 4141
    TEMPORARY_ISSUED = 1101
    CAL_ISSUED = 1102
    CAL_RENEWED = 1103
    LICENSE_EXPIRED = 1104
    CAL_REVOKED = 1105
    LOGON_REFUSED = 1106
    PER_USER_LOGON = 1107
    KEY_PACK_INSTALLED = 1108
    DEACTIVATED = 1109
    REACTIVATED = 1110
    POLICY_CHANGED = 1111
    CLOCK_CHANGED = 1113
    KEY_PACKS_RECOVERED = 1114
    KEY_PACK_RETIRED = 1115
    KEY_PACK_CONVERTED = 1116      # ConvertLicenses: CALs of a key pack given as a new key pack of the other type
    DATABASE_REBUILT = 1117        # the Manage RDS CALs wizard's Rebuild the database: every CAL deleted
    PRODUCT_ADDED = 1120
    PRODUCT_LICENSES_ADDED = 1121
    SWITCHED_TO_PER_SEAT = 1122
    PRODUCT_CONNECTION_REFUSED = 1123
    ADD_PACK_APPLIED = 1124


@attrs.frozen
class Event:
    at: int
    event_id: EventId
    message: str
    terminal_server: str | None = None
    hwid: str | None = None
    user: str | None = None
    license_id: int | None = None


_BY_OUTCOME = {
    Outcome.TEMPORARY_ISSUED: EventId.TEMPORARY_ISSUED,
    Outcome.UPGRADED: EventId.CAL_ISSUED,
    Outcome.RENEWED: EventId.CAL_RENEWED,
    Outcome.PER_USER: EventId.PER_USER_LOGON,
    Outcome.EXPIRED: EventId.LICENSE_EXPIRED,
    Outcome.REVOKED: EventId.CAL_REVOKED,
}

_BY_REASON = {
    Code.NOT_ACTIVATED: EventId.NOT_ACTIVATED,
    Code.NO_LICENSE_AVAILABLE: EventId.NO_PERMANENT_CALS,
    Code.MODE_MISMATCH: EventId.NO_PERMANENT_CALS,
    Code.UPGRADE_PREVENTED: EventId.NO_PERMANENT_CALS,
    Code.REVOCATION_LIMIT: EventId.REVOCATION_LIMIT,
    Code.NOT_IN_GROUP: EventId.NOT_IN_GROUP,
}

# The same tables keyed by the members' names: a str hashes in C, an Enum member in Python (every
# decision is looked up here).
_BY_OUTCOME_NAME = {outcome.name: event_id for outcome, event_id in _BY_OUTCOME.items()}
_BY_REASON_NAME = {code.name: event_id for code, event_id in _BY_REASON.items()}


def for_decision(decision: Decision, now: int, terminal_server: str | None = None,
                 hwid: str | None = None, user: str | None = None) -> tuple[Event, ...]:
    """Events a decision is worth: a change of state, or a warning why a device got less."""
    lic = decision.license
    if lic is not None:
        terminal_server, hwid, user = terminal_server or lic.terminal_server, hwid or lic.hwid, user or lic.user
        license_id = lic.id
    else:
        terminal_server, hwid, user, license_id = terminal_server or None, hwid or None, user or None, None
    by_outcome = _BY_OUTCOME_NAME.get(decision.outcome._name_)
    by_reason = None if decision.reason is None else _BY_REASON_NAME.get(decision.reason._name_)
    if by_reason is None:       # most decisions: one event, or none
        return () if by_outcome is None else (Event(now, by_outcome, decision.message, terminal_server, hwid, user,
                                                    license_id),)
    out = []
    if by_outcome is not None:
        out.append(Event(now, by_outcome, decision.message, terminal_server, hwid, user, license_id))
    if by_reason is not None:
        out.append(Event(now, by_reason, decision.message, terminal_server, hwid, user, license_id))
    return tuple(out)


def for_refusal(code: Code, message: str, now: int, terminal_server=None, hwid=None, user=None,
                license_id: int | None = None, logon: bool = True) -> tuple[Event, ...]:
    """Events a refusal is worth: a refused logon (``logon``) is recorded as one, and a refusal
    Windows logs under an ID of its own (such as 81, the revocation limit) under that ID too."""
    out = [Event(now, EventId.LOGON_REFUSED, f"{code.value}: {message}", terminal_server, hwid, user, license_id)
           ] if logon else []
    if code in _BY_REASON:
        out.append(Event(now, _BY_REASON[code], message, terminal_server, hwid, user, license_id))
    return tuple(out)
