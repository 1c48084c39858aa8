"""The license server's operations: what each request does, between the wire and the ledger.

Each method parses nothing (the protocol did) and decides nothing (the core does): it reads the
world in the writer's transaction, asks the core, writes the decision, and shapes the answer.
"""
from __future__ import annotations

import json
import re
import secrets

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from tsls.core import events, licensing
from tsls.core.events import Event, EventId
from tsls.core.labtime import clock_target
from tsls.core.licensing import Logon, Outcome, TerminalServer, check_security_group
from tsls.core.model import CalType, ProductVersion, PurchaseRef
from tsls.core.reports import per_user_usage
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json, license_json
from tsls.server import auth, tokens
from tsls.server.products import ProductLicensing

LICENSE_SERVER_ID = re.compile(r"[A-Z0-9]{35}")
SECURITY_GROUP_POLICY = "policy:security_group"


def new_product_id() -> str:
    digits = "".join(secrets.choice("0123456789") for _ in range(20))
    return f"{digits[:5]}-{digits[5:8]}-{digits[8:15]}-{digits[15:]}"


class LicenseServer:
    log = Logger()

    def __init__(self, writer, clearinghouse, identity: "Identity", lab_clock=None) -> None:
        self.writer = writer
        self.clearinghouse = clearinghouse
        self.identity = identity
        self.lab_clock = lab_clock
        self.followers: set = set()         # callables that get each committed event
        self.products = ProductLicensing(writer)   # Per Server / Per Seat products, SBS (docs/legacy.md)
        writer.on_events = self.publish

    def publish(self, committed) -> None:
        """Events reach the log and live followers only once committed."""
        for row_id, event in committed:
            self.log.info("event {event_id} {event_name}: {message}", event_id=int(event.event_id),
                          event_name=event.event_id.name, message=event.message, terminal_server=event.terminal_server,
                          hwid=event.hwid, license_id=event.license_id)
            if self.followers:
                shaped = event_json(row_id, event)
                for follower in list(self.followers):
                    follower(shaped)

    # --- terminal servers -------------------------------------------------------------------------

    def logon(self, ts: TerminalServer, hwid: str, machine: str, user: str, token: str | None) -> defer.Deferred:
        def job(store, now):
            try:
                check_security_group(store.get_meta(SECURITY_GROUP_POLICY) == "on", ts,
                                     ts.authenticated and _registration(store, ts.name).get("group", False))
                presented = None if token is None else tokens.verify(self.identity.secret, token, hwid)
                world = store.world(hwid, _activated(store), self.identity.seed)
                decision = licensing.device_logon(ts, Logon(hwid, machine, user, presented), world, now)
            except TslsError as e:
                store.add_events(events.for_refusal(e.code, e.message, now, ts.name, hwid, user))
                return e        # refused, and the refusal is on record
            decision = store.apply(decision)
            store.add_events(events.for_decision(decision, now, ts.name, hwid, user))
            if decision.outcome is Outcome.PER_USER:
                store.record_per_user(now, user, hwid, machine, ts.name)
            return self._answer(decision, world)

        return self.writer.submit(job)

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
            pack = None if lic.key_pack is None else next((p.key_pack_id for p in world.packs if p.id == lic.key_pack), None)
            out["license"] = license_json(lic, pack, tokens.sign(self.identity.secret, lic.id, lic.hwid))
        return out

    # --- who may ask ------------------------------------------------------------------------------------

    def authenticate(self, role: str, name: str, nonce: str | None, proof: object) -> defer.Deferred:
        """Check a hello: an administrator always proves itself; a terminal server must when its name
        is registered. Fires with whether the terminal server proved its identity."""
        if role == "admin":
            auth.check_proof(self.identity.admin_secret, nonce, "admin", "", proof)
            return defer.succeed(True)

        def job(store, now):
            registered = _registration(store, name)
            if not registered:
                if proof is not None:
                    raise TslsError(Code.UNKNOWN_TERMINAL_SERVER, f"no terminal server {name!r} is registered")
                return False
            auth.check_proof(registered["secret"], nonce, "terminal_server", name, proof)
            return True
        return self.writer.submit(job)

    def register_terminal_server(self, name: str) -> defer.Deferred:
        def job(store, now):
            secret = auth.new_secret()
            previous = _registration(store, name)
            store.set_meta(_ts_key(name), json.dumps({"secret": secret, "group": previous.get("group", False),
                                                      "registered_at": now}))
            return {"name": name, "secret": secret,
                    "note": "give this secret to the terminal server; it is not shown again"}
        return self.writer.submit(job)

    def set_group_membership(self, name: str, member: bool) -> defer.Deferred:
        def job(store, now):
            registered = _registration(store, name)
            if not registered:
                raise TslsError(Code.UNKNOWN_TERMINAL_SERVER, f"register {name!r} first: only terminal servers that "
                                "prove who they are can be in the Terminal Server Computers group")
            store.set_meta(_ts_key(name), json.dumps({**registered, "group": member}))
            what = "added to" if member else "removed from"
            store.add_events([Event(now, EventId.POLICY_CHANGED, f"{name} {what} the Terminal Server Computers group",
                                    terminal_server=name)])
            return self._terminal_servers(store)
        return self.writer.submit(job)

    def set_security_group_policy(self, enabled: bool) -> defer.Deferred:
        def job(store, now):
            store.set_meta(SECURITY_GROUP_POLICY, "on" if enabled else "off")
            store.add_events([Event(now, EventId.POLICY_CHANGED, "license server security group policy "
                                    + ("enabled" if enabled else "disabled"))])
            return self._terminal_servers(store)
        return self.writer.submit(job)

    def terminal_servers(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: self._terminal_servers(store))

    def _terminal_servers(self, store) -> dict:
        rows = store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'terminal_server:%' ORDER BY key")
        return {
            "security_group_policy": store.get_meta(SECURITY_GROUP_POLICY) == "on",
            "terminal_servers": [{"name": key.split(":", 1)[1], "group": json.loads(value).get("group", False),
                                  "registered_at": iso(json.loads(value)["registered_at"])} for key, value in rows],
        }

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
    def activate(self, method: str, contact: dict | None, license_server_id: str | None, certificate: str | None):
        """Automatic: ask the Clearinghouse. Telephone: the administrator types in the license server ID
        and certificate code the Clearinghouse gave on the phone."""
        yield self._require_activation(False)
        if method == "automatic":
            answer = yield self.clearinghouse.activate(self.identity.product_id, contact or {}, "automatic")
            license_server_id, certificate = answer["license_server_id"], answer["certificate"]
        elif method == "telephone":
            for what, value in (("license server ID", license_server_id), ("certificate code", certificate)):
                if not isinstance(value, str) or not LICENSE_SERVER_ID.fullmatch(value):
                    raise TslsError(Code.BAD_REQUEST, f"a {what} is 35 upper-case letters and digits, no hyphens")
        else:
            raise TslsError(Code.BAD_REQUEST, f"unknown activation method {method!r}; expected automatic or telephone")
        result = yield self._set_activation("activated", license_server_id, method, EventId.ACTIVATED, certificate)
        return result

    @defer.inlineCallbacks
    def reactivate(self, reason: str, contact: dict | None):
        server = yield self._require_activation(True)
        answer = yield self.clearinghouse.reactivate(server, reason, contact or {})
        result = yield self._set_activation("activated", answer["license_server_id"], "automatic",
                                             EventId.REACTIVATED, answer["certificate"])
        return result

    @defer.inlineCallbacks
    def deactivate(self):
        server = yield self._require_activation(True)
        yield self.clearinghouse.deactivate(server)
        result = yield self._set_activation("deactivated", None, None, EventId.DEACTIVATED, None)
        return result

    def _require_activation(self, wanted: bool) -> defer.Deferred:
        """Fires with how this server names itself to the Clearinghouse (ID, product ID, certificate)."""
        def job(store, now):
            current = _activation(store)
            if wanted and current["status"] != "activated":
                raise TslsError(Code.NOT_ACTIVATED, "the license server is not activated")
            if not wanted and current["status"] == "activated":
                raise TslsError(Code.ALREADY_ACTIVATED, "the license server is already activated as "
                                f"{current['license_server_id']}; deactivate or reactivate it instead")
            return {"license_server_id": current["license_server_id"], "product_id": self.identity.product_id,
                    "certificate": store.get_meta("clearinghouse_certificate")}
        return self.writer.submit(job)

    def _set_activation(self, status, license_server_id, method, event_id, certificate) -> defer.Deferred:
        def job(store, now):
            store.set_meta("clearinghouse_certificate", certificate)
            store.add_events([Event(now, event_id, f"license server {status} ({method or 'no method'}) as "
                                                   f"{license_server_id or '-'}")])
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
        version, cal_type = _version_and_type(purchase)
        server = yield self._require_activation(True)
        answer = yield self.clearinghouse.install(server, ref, version, cal_type, purchase.get("quantity"))
        packs = yield self._store_key_packs([answer["key_pack"]])
        return packs[0]

    @defer.inlineCallbacks
    def recover(self, purchase: dict):
        """A rebuilt server gets back the CALs of a purchase from the Clearinghouse [§4]."""
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        server = yield self._require_activation(True)
        answer = yield self.clearinghouse.recover(server, ref, version, cal_type)
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
                store.add_events([Event(now, EventId.KEY_PACK_INSTALLED,
                                        f"key pack {pack.key_pack_id} installed: {pack.total} "
                                        f"{pack.cal_type.value} CALs for Windows Server {pack.product_version.value}")])
            return out

        return self.writer.submit(job)

    def key_packs(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: [key_pack_json(p) for p in store.key_packs()])

    def licenses(self, filters: dict, limit: int = 1000) -> defer.Deferred:
        """Issued licenses; ``filters`` maps LICENSE_FILTERS names to exact values."""
        def job(store, now):
            packs = {p.key_pack_id: p.id for p in store.key_packs()}
            where, params = ["1"], []
            for name, value in filters.items():
                if name == "key_pack_id":
                    name, value = "key_pack", packs.get(value, -1)
                where.append(f"{name} = ?")
                params.append(value)
            names = {v: k for k, v in packs.items()}
            return [license_json(lic, names.get(lic.key_pack))
                    for lic in store.licenses(" AND ".join(where), tuple(params), limit)]
        return self.writer.submit(job)

    def revoke(self, license_id: int) -> defer.Deferred:
        def job(store, now):
            packs = store.key_packs()
            revoked = tuple(store.licenses("status = 'revoked' AND expires_at > ?", (now,), limit=10**9))
            try:
                decision = licensing.revoke(store.license(license_id), packs, revoked, now)
            except TslsError as e:
                if e.code is Code.REVOCATION_LIMIT:
                    store.add_events([Event(now, EventId.REVOCATION_LIMIT, e.message, license_id=license_id)])
                    return e
                raise
            decision = store.apply(decision)
            store.add_events(events.for_decision(decision, now))
            names = {p.id: p.key_pack_id for p in packs}
            return {"message": decision.message, "license": license_json(decision.license, names.get(decision.license.key_pack))}
        return self.writer.submit(job)

    def revoke_user(self, user: str) -> defer.Deferred:
        return defer.fail(TslsError(Code.NOT_REVOCABLE, f"Per User CALs cannot be revoked (user {user!r}); "
                                    "only Per Device CALs can"))

    @defer.inlineCallbacks
    def set_clock(self, to: str):
        """Move the lab clock forward; expiries due by then happen before the answer."""
        if self.lab_clock is None:
            raise TslsError(Code.LAB_CLOCK_DISABLED, "this license server runs on real time; start it with "
                            "--lab-clock to set or move its clock")
        clock = self.lab_clock

        def job(store, now):
            target = clock_target(to, now)
            offset = clock.offset + (target - now)
            store.set_meta("lab_clock_offset", repr(offset))
            store.add_events([Event(now, EventId.CLOCK_CHANGED, f"lab clock moved from {iso(now)} to {iso(target)}")])
            return offset

        offset = yield self.writer.submit(job)
        clock.offset = offset
        result = yield self.writer.submit(lambda store, now: {"now": iso(now)})   # this batch sweeps at the new time
        return result

    def list_events(self, filters: dict, since: int | None, limit: int) -> defer.Deferred:
        def job(store, now):
            where, params = ["1"], []
            for name, value in filters.items():
                where.append(f"{name} = ?")
                params.append(value)
            if since is not None:
                where.append("at >= ?")
                params.append(since)
            return [event_json(row_id, e) for row_id, e in store.events(" AND ".join(where), tuple(params), limit)]
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
    admin_secret: str = attrs.field(repr=False, default="")

    @classmethod
    def load_or_create(cls, store, seed: str | None) -> "Identity":
        with store.transaction():
            if store.get_meta("product_id") is None:
                store.set_meta("product_id", new_product_id())
                store.set_meta("token_secret", secrets.token_hex(32))

                store.set_meta("activation_status", "not_activated")
            if store.get_meta("admin_secret") is None:
                store.set_meta("admin_secret", auth.new_secret())
            if seed is not None:
                store.set_meta("seed", seed)
            elif store.get_meta("seed") is None:
                store.set_meta("seed", str(secrets.randbelow(2**32)))
            return cls(store.get_meta("product_id"), store.get_meta("seed"), bytes.fromhex(store.get_meta("token_secret")),
                       store.get_meta("admin_secret"))


def event_json(row_id: int, e: Event) -> dict:
    return {"id": row_id, "at": iso(e.at), "event_id": int(e.event_id), "name": e.event_id.name,
            "message": e.message, "terminal_server": e.terminal_server, "hwid": e.hwid, "user": e.user,
            "license_id": e.license_id}


def _version_and_type(purchase: dict):
    version, cal_type = purchase.get("product_version"), purchase.get("cal_type")
    return (None if version is None else ProductVersion.parse(version),
            None if cal_type is None else CalType.parse(cal_type))


def _ts_key(name: str) -> str:
    return f"terminal_server:{name}"


def _registration(store, name: str) -> dict:
    value = store.get_meta(_ts_key(name))
    return {} if value is None else json.loads(value)


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
