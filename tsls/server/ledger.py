"""The ledger's operations: a terminal server's logons and reports, and the administrator's
queries and revocations of issued licenses. The rules are in tsls/core/licensing.py."""
from __future__ import annotations

import json

from twisted.internet import defer

from tsls.core import events, licensing, wmi
from tsls.core.licensing import Logon, Outcome, TerminalServer, check_security_group
from tsls.core.model import License, LicenseKind, LicenseStatus, ProductVersion
from tsls.errors import Code, TslsError
from tsls.jsonshapes import license_json
from tsls.server import paging, tokens
from tsls.server.writer import Later, writes_last
from tsls.server.storage import Identity, LicenseFilter


class Ledger:
    referrals: tuple[str, ...] = ()     # license servers this one refers requests to (tsls server --refer-to)

    def __init__(self, writer, identity: Identity) -> None:
        self.writer = writer
        self.identity = identity
        self.reads = None           # tsls.server.reads.Reads, set by the facade

    # --- terminal servers -------------------------------------------------------------------------

    def logon(self, ts: TerminalServer, hwid: str, machine: str, user: str, token: str | None,
              waiter=None) -> defer.Deferred | None:
        """``waiter``: told the answer instead of a Deferred returned (tsls.server.writer.BatchWriter.submit)."""
        def job(store, now):
            try:
                in_group_only, activated, prevent_upgrade = store.logon_settings()
                registered = ts.authenticated and store.registration(ts.name)
                check_security_group(in_group_only, ts, bool(registered and registered.in_group))
                presented = None if token is None else tokens.verify(self.identity.secret, token, hwid)
                world = store.world(hwid, activated, self.identity.seed, prevent_upgrade)
                decision = licensing.device_logon(ts, Logon(hwid, machine, user, presented, store.next_license_id()),
                                                  world, now)
            except TslsError as e:
                store.add_events(events.for_refusal(e.code, e.message, now, ts.name, hwid, user))
                referral = licensing.refer(e.code, self.referrals)
                if referral:
                    e = TslsError(e.code, e.message, **{**e.details, "referral": list(referral)})
                return e        # refused, and the refusal is on record
            decision = store.apply(decision)
            store.add_events(events.for_decision(decision, now, ts.name, hwid, user))
            if decision.outcome is Outcome.PER_USER:
                store.record_per_user(now, user, hwid, machine, ts.name)
            return Later(self._answer, decision, world)     # shaped while the batch's COMMIT runs

        return self.writer.submit(writes_last(job), waiter)

    def licensing_info(self, ts: TerminalServer) -> defer.Deferred:
        """What the RD Licensing Diagnoser asks a license server about one session host: activation, the
        security group, and the CALs of its mode that serve its version (tsls/core/diagnoser.py)."""
        def job(store, now):
            packs = store.key_packs()
            serving = [p for p in packs if p.cal_type is ts.mode and p.product_version.serves(ts.version)]
            registered = ts.authenticated and store.registration(ts.name)
            return {"server_version": self.identity.version.value, "activated": store.activation().activated,
                    "security_group_policy": store.security_group_policy(),
                    "in_group": bool(registered and registered.in_group),
                    "cals_installed": sum(p.total for p in serving),
                    "cals_available": sum(p.available for p in serving),
                    "other_type_installed": sum(p.total for p in packs if p.cal_type is not ts.mode)}
        return self.writer.submit(job)

    def report_logon(self, ts: TerminalServer, hwid: str, token: str) -> defer.Deferred:
        def job(store, now):
            license_id = tokens.verify(self.identity.secret, token, hwid)
            world = store.world(hwid, store.activation().activated, self.identity.seed)
            return self._answer(store.apply(licensing.report_logon(license_id, hwid, world, now)), world)

        return self.writer.submit(writes_last(job))

    def _answer(self, decision, world) -> dict:
        lic = decision.license
        reason = decision.reason
        out = {"outcome": decision.outcome._value_, "reason": reason and reason._value_,
               "message": decision.message, "license": None}
        referral = licensing.refer(reason, self.referrals)
        if referral:
            out["referral"] = list(referral)
        if lic is not None:
            pack = None if lic.key_pack is None else next((p.key_pack_id for p in world.packs if p.id == lic.key_pack), None)
            out["license"] = license_json(lic, pack, tokens.sign(self.identity.secret, lic.id, lic.hwid))
        return out

    # --- administration ----------------------------------------------------------------------------

    def licenses(self, filters: dict, limit: int = 1000) -> defer.Deferred:
        """Issued licenses; ``filters`` maps LICENSE_FILTERS names to exact values (a value that
        names no kind, status, version or key pack matches nothing)."""
        def view(snap, now):     # read off the writer, encoded by the database, as a page is
            which = _license_filter(filters, {p.key_pack_id: p.id for p in snap.key_packs()})
            if which is None:
                return []
            items, _, _, _ = snap.licenses_json_joined(which, None, limit, _WMI)
            return paging.joined_list(items)
        return self.reads.read(view)

    def licenses_page(self, filters: dict, cursor: str, limit: int) -> defer.Deferred:
        """One page of the issued licenses that match, by license ID (tsls.server.paging), read off
        the writer (tsls.server.reads)."""
        after = paging.decode("licenses", cursor)

        def view(snap, now):
            packs = {p.key_pack_id: p.id for p in snap.key_packs()}
            which = _license_filter(filters, packs)
            if which is None:
                return paging.answer("licenses", [], 0, limit, None)
            items, last, _, more = snap.licenses_json_joined(which, after, limit, _WMI)
            return paging.answer_joined("licenses", items, last, more, snap.count_licenses(which))
        return self.reads.read(view)

    def revoke(self, license_id: int) -> defer.Deferred:
        def job(store, now):
            packs = store.key_packs()
            revoked = tuple(store.revoked_holding(now))
            try:
                decision = licensing.revoke(store.license(license_id), packs, revoked, now)
            except TslsError as e:
                if e.code is Code.REVOCATION_LIMIT:      # refused, and the refusal is on record
                    store.add_events(events.for_refusal(e.code, e.message, now, license_id=license_id, logon=False))
                    return e
                raise
            decision = store.apply(decision)
            store.add_events(events.for_decision(decision, now))
            names = {p.id: p.key_pack_id for p in packs}
            return {"message": decision.message, "license": license_json(decision.license, names.get(decision.license.key_pack))}
        return self.writer.submit(job)

    def revoke_user(self, user: str) -> defer.Deferred:
        return defer.maybeDeferred(licensing.revoke_user, user)


# The end of a listed license's JSON: its WMI numbers (tsls.core.wmi, which depend on kind and status only).
_WMI = {(k.value, s.value): ',"wmi":' + json.dumps(wmi.issued_license(
            License(0, k, s, "", "", "", "", ProductVersion.newest(), None, False, 0, 0)), separators=(",", ":")) + "}"
        for k in LicenseKind for s in LicenseStatus}

_ENUMS = {"kind": LicenseKind, "status": LicenseStatus, "product_version": ProductVersion}


def _license_filter(filters: dict, packs: dict[str, int]) -> LicenseFilter | None:
    """The filter for the protocol's exact-match ``filters``; None when one can match nothing."""
    values = {}
    for name, value in filters.items():
        if name == "key_pack_id":
            name, value = "key_pack", packs.get(value)
        elif name in _ENUMS:
            value = next((member for member in _ENUMS[name] if member.value == value), None)
        if value is None:
            return None
        values[name] = value
    return LicenseFilter(**values)
