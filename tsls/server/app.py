"""The license server's operations: what each request does, between the wire and the ledger.

Each method parses nothing (the protocol did) and decides nothing (the core does): it reads the
world in the writer's transaction, asks the core, writes the decision, and shapes the answer.
"""
from __future__ import annotations

import re
import secrets

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from tsls.core import licensing
from tsls.core.licensing import Logon, Outcome, TerminalServer
from tsls.core.model import CalType, ProductVersion, PurchaseRef
from tsls.core.reports import per_user_usage
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json, license_json
from tsls.server import tokens

LICENSE_SERVER_ID = re.compile(r"[A-Z0-9]{35}")


def new_product_id() -> str:
    digits = "".join(secrets.choice("0123456789") for _ in range(20))
    return f"{digits[:5]}-{digits[5:8]}-{digits[8:15]}-{digits[15:]}"


class LicenseServer:
    log = Logger()

    def __init__(self, writer, clearinghouse, identity: "Identity") -> None:
        self.writer = writer
        self.clearinghouse = clearinghouse
        self.identity = identity

    # --- terminal servers -------------------------------------------------------------------------

    def logon(self, ts: TerminalServer, hwid: str, machine: str, user: str, token: str | None) -> defer.Deferred:
        def job(store, now):
            presented = None if token is None else tokens.verify(self.identity.secret, token, hwid)
            world = store.world(hwid, _activated(store), self.identity.seed)
            decision = store.apply(licensing.device_logon(ts, Logon(hwid, machine, user, presented), world, now))
            if decision.outcome is Outcome.PER_USER:
                store.record_per_user(now, user, hwid, machine, ts.name)
            return self._answer(decision, world)

        d = self.writer.submit(job)
        d.addCallback(self._logged, ts, hwid, user)
        d.addErrback(self._refused, ts, hwid, user)
        return d

    def report_logon(self, ts: TerminalServer, hwid: str, token: str) -> defer.Deferred:
        def job(store, now):
            license_id = tokens.verify(self.identity.secret, token, hwid)
            world = store.world(hwid, _activated(store), self.identity.seed)
            return self._answer(store.apply(licensing.report_logon(license_id, hwid, world, now)), world)

        return self.writer.submit(job)

    def _answer(self, decision, world) -> dict:
        lic = decision.license
        out = {"outcome": decision.outcome.value, "reason": decision.reason and decision.reason.value,
               "message": decision.message, "license": None}
        if lic is not None:
            packs = {p.id: p.key_pack_id for p in world.packs}
            out["license"] = license_json(lic, packs.get(lic.key_pack), tokens.sign(self.identity.secret, lic.id, lic.hwid))
        return out

    def _logged(self, answer, ts, hwid, user):
        self.log.info("{terminal_server}: {outcome} for device {hwid} (user {user}){reason}",
                      terminal_server=ts.name, outcome=answer["outcome"], hwid=hwid, user=user,
                      reason=f", reason {answer['reason']}" if answer["reason"] else "")
        return answer

    def _refused(self, failure, ts, hwid, user):
        failure.trap(TslsError)
        self.log.info("{terminal_server}: refused device {hwid} (user {user}): {code}",
                      terminal_server=ts.name, hwid=hwid, user=user, code=failure.value.code.value)
        return failure

    # --- administration ----------------------------------------------------------------------------

    def status(self) -> defer.Deferred:
        def job(store, now):
            packs = store.key_packs()
            counts = dict(store.db.execute(
                "SELECT kind || ':' || status, count(*) FROM licenses GROUP BY kind, status").fetchall())
            return {
                "product_id": self.identity.product_id,
                "now": iso(now),
                "activation": _activation(store),
                "key_packs": [key_pack_json(p) for p in packs],
                "licenses": counts,
            }
        return self.writer.submit(job)

    @defer.inlineCallbacks
    def activate(self, method: str, contact: dict | None, license_server_id: str | None):
        yield self._require_activation(False)
        if method == "automatic":
            answer = yield self.clearinghouse.activate(self.identity.product_id, contact or {}, "automatic")
            license_server_id = answer["license_server_id"]
        elif method == "telephone":
            if not isinstance(license_server_id, str) or not LICENSE_SERVER_ID.fullmatch(license_server_id):
                raise TslsError(Code.BAD_REQUEST, "a license server ID is 35 upper-case letters and digits, no hyphens")
        else:
            raise TslsError(Code.BAD_REQUEST, f"unknown activation method {method!r}; expected automatic or telephone")
        result = yield self._set_activation("activated", license_server_id, method)
        self.log.info("license server activated ({method}) as {license_server_id}", method=method,
                      license_server_id=license_server_id)
        return result

    @defer.inlineCallbacks
    def reactivate(self, reason: str, contact: dict | None):
        current = yield self._require_activation(True)
        answer = yield self.clearinghouse.reactivate(current["license_server_id"], self.identity.product_id, reason,
                                                     contact or {})
        result = yield self._set_activation("activated", answer["license_server_id"], "automatic")
        return result

    @defer.inlineCallbacks
    def deactivate(self):
        current = yield self._require_activation(True)
        yield self.clearinghouse.deactivate(current["license_server_id"], self.identity.product_id)
        result = yield self._set_activation("deactivated", None, None)
        return result

    def _require_activation(self, wanted: bool) -> defer.Deferred:
        def job(store, now):
            current = _activation(store)
            if wanted and current["status"] != "activated":
                raise TslsError(Code.NOT_ACTIVATED, "the license server is not activated")
            if not wanted and current["status"] == "activated":
                raise TslsError(Code.ALREADY_ACTIVATED, "the license server is already activated as "
                                f"{current['license_server_id']}; deactivate or reactivate it instead")
            return current
        return self.writer.submit(job)

    def _set_activation(self, status, license_server_id, method) -> defer.Deferred:
        def job(store, now):
            store.set_meta("activation_status", status)
            store.set_meta("license_server_id", license_server_id)
            store.set_meta("activation_method", method)
            store.set_meta("activated_at", str(now) if status == "activated" else None)
            return _activation(store)
        return self.writer.submit(job)

    @defer.inlineCallbacks
    def install_key_pack(self, purchase: dict):
        """Install CALs: the Clearinghouse binds the purchase to this server and issues the key pack."""
        ref = PurchaseRef.from_json(purchase)
        version = purchase.get("product_version")
        cal_type = purchase.get("cal_type")
        version = None if version is None else ProductVersion.parse(version)
        cal_type = None if cal_type is None else CalType.parse(cal_type)
        current = yield self._require_activation(True)
        answer = yield self.clearinghouse.install(current["license_server_id"], self.identity.product_id, ref,
                                                  version, cal_type, purchase.get("quantity"))
        packs = yield self._store_key_packs([answer["key_pack"]])
        return packs[0]

    @defer.inlineCallbacks
    def recover(self, purchase: dict):
        """A rebuilt server gets back the CALs of a purchase from the Clearinghouse [§4]."""
        ref = PurchaseRef.from_json(purchase)
        current = yield self._require_activation(True)
        answer = yield self.clearinghouse.recover(current["license_server_id"], self.identity.product_id, ref)
        packs = yield self._store_key_packs(answer["key_packs"])
        return {"key_packs": packs}

    def _store_key_packs(self, issued: list) -> defer.Deferred:
        def job(store, now):
            out = []
            for kp in issued:
                pack = store.add_key_pack(kp["key_pack_id"], PurchaseRef.from_json(kp["purchase"]),
                                          ProductVersion(kp["product_version"]), CalType(kp["cal_type"]),
                                          kp["quantity"], now)
                out.append(key_pack_json(pack))
            return out

        d = self.writer.submit(job)

        def logged(packs):
            for p in packs:
                self.log.info("key pack {key_pack_id} installed: {total} {cal_type} CALs for {product_version}",
                              key_pack_id=p["key_pack_id"], total=p["total"], cal_type=p["cal_type"],
                              product_version=p["product_version"])
            return packs
        return d.addCallback(logged)

    def key_packs(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: [key_pack_json(p) for p in store.key_packs()])

    def licenses(self, hwid=None, kind=None, status=None, limit=1000) -> defer.Deferred:
        def job(store, now):
            where, params = ["1"], []
            for column, value in (("hwid", hwid), ("kind", kind), ("status", status)):
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            packs = {p.id: p.key_pack_id for p in store.key_packs()}
            return [license_json(lic, packs.get(lic.key_pack))
                    for lic in store.licenses(" AND ".join(where), tuple(params), limit)]
        return self.writer.submit(job)

    def usage_report(self, start: int | None, end: int | None) -> defer.Deferred:
        def job(store, now):
            lo = 0 if start is None else start
            hi = now + 1 if end is None else end
            if hi < lo:
                raise TslsError(Code.BAD_REQUEST, "the report's end is before its start")
            report = per_user_usage(store.per_user_logons(lo, hi), store.key_packs(), lo, hi)
            return {
                "start": iso(report.start), "end": iso(report.end),
                "per_user_cals_installed": report.installed,
                "users_seen": len(report.users),
                "peak_users_per_day": report.peak,
                "users_over_installed": report.over,
                "users": [{"user": u, "logons": c, "last_seen": iso(last)} for u, c, last in report.users],
                "per_day": [{"day": iso(day)[:10], "users": n} for day, n in report.per_day],
            }
        return self.writer.submit(job)


@attrs.frozen
class Identity:
    """What the server is: fixed at first start and kept in its database."""

    product_id: str
    seed: str
    secret: bytes = attrs.field(repr=False)

    @classmethod
    def load_or_create(cls, store, seed: str | None) -> "Identity":
        with store.transaction():
            if store.get_meta("product_id") is None:
                store.set_meta("product_id", new_product_id())
                store.set_meta("token_secret", secrets.token_hex(32))
                store.set_meta("activation_status", "not_activated")
            if seed is not None:
                store.set_meta("seed", seed)
            elif store.get_meta("seed") is None:
                store.set_meta("seed", str(secrets.randbelow(2**32)))
            return cls(store.get_meta("product_id"), store.get_meta("seed"), bytes.fromhex(store.get_meta("token_secret")))


def _activated(store) -> bool:
    return store.get_meta("activation_status") == "activated"


def _activation(store) -> dict:
    at = store.get_meta("activated_at")
    return {
        "status": store.get_meta("activation_status", "not_activated"),
        "license_server_id": store.get_meta("license_server_id"),
        "method": store.get_meta("activation_method"),
        "activated_at": iso(int(at)) if at else None,
    }
