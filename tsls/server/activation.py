"""Activation and key packs: what the license server asks of the Clearinghouse, and what it
keeps of the answers (docs/clearinghouse.md)."""
from __future__ import annotations

import os
import secrets
import signal

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from tsls.core import activation, phonecodes, wizard
from tsls.core.activation import Activation, ActivationMethod
from tsls.core.clearinghouse import IssuedKeyPack, MigrationReason, purchase_request
from tsls.core.model import parse_enum
from tsls.core.events import Event, EventId
from tsls.core.model import CalType, ProductVersion, PurchaseRef, check_server_hosts
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json
from tsls.server.storage import ClearinghouseCall, Identity


# The Clearinghouse gave no usable answer: it may or may not have carried the call out, so the call
# stays pending and is asked again, with the same idempotency key, until it has an answer.
OUTCOME_UNKNOWN = (Code.CLEARINGHOUSE_UNREACHABLE, Code.CLEARINGHOUSE_ERROR, Code.INTERNAL_ERROR)
FAILPOINTS = "TSLS_FAILPOINTS"      # tests only: kill -9 the daemon at a named step (docs/reliability.md)


def _failpoint(name: str, operation: str) -> None:
    """``TSLS_FAILPOINTS=clearinghouse_after_answer:install,...``: SIGKILL this process there."""
    wanted = os.environ.get(FAILPOINTS)
    if wanted and {name, f"{name}:{operation}"} & set(wanted.split(",")):
        Activations.log.warn("failpoint {name}: killing the license server", name=name)
        os.kill(os.getpid(), signal.SIGKILL)


class Activations:
    """Every call that changes anything at the Clearinghouse (activate, reactivate, deactivate,
    install, recover) is first recorded with a new idempotency key (one commit), then made, and its
    answer applied in a second commit. A call whose answer never came stays pending: the
    administrator's retry of the same command, or the next start, asks again with the same key and
    the Clearinghouse answers what it answered the first time. Nothing is lost, nothing done twice."""

    log = Logger()

    def __init__(self, writer, clearinghouse, identity: Identity) -> None:
        self.writer = writer
        self.clearinghouse = clearinghouse
        self.identity = identity
        self._in_flight: dict[str, list] = {}       # idempotency key -> Deferreds waiting for its outcome

    @defer.inlineCallbacks
    def activate(self, method: str, contact: dict | None, license_server_id: str | None, certificate: str | None):
        """Automatic: ask the Clearinghouse. Telephone: the administrator types in the license server ID
        and certificate code the Clearinghouse gave on the phone."""
        how = activation.parse_method(method)
        if how is ActivationMethod.AUTOMATIC:
            done = yield self._unreported("activate", {})
            if done is not None:
                return done
        yield self._require_activation(False)
        if how is ActivationMethod.AUTOMATIC:
            result = yield self._call("activate", {"product_id": self.identity.product_id, "contact": contact or {}})
            return result
        try:
            license_server_id, certificate = activation.check_telephone_codes(
                license_server_id, certificate, self.identity.product_id)
        except TslsError as e:
            yield self._note_problem(e)
            raise
        result = yield self.writer.submit(lambda store, now: _save_activation(
            store, now, EventId.ACTIVATED, activation.activated(how, license_server_id, certificate, now)))
        return result

    @defer.inlineCallbacks
    def reactivate(self, reason: str, contact: dict | None):
        done = yield self._unreported("reactivate", {})
        if done is not None:
            return done
        server = yield self._require_activation(True)
        result = yield self._call("reactivate", {"server": server, "reason": reason, "contact": contact or {}})
        return result

    @defer.inlineCallbacks
    def deactivate(self, local: bool = False, confirm: bool = False):
        """Deactivate through the Clearinghouse; or, ``local`` (confirmed), forget this server's
        activation without it: the way out when the Clearinghouse does not know the activation
        (docs/activation.md). Key packs and issued CALs stay; only permanent CALs stop until the
        server is activated again."""
        if not local:
            done = yield self._unreported("deactivate", {})
            if done is not None:
                return done
        server = yield self._require_activation(True)
        if not local:
            result = yield self._call("deactivate", {"server": server})
            return result
        if not confirm:
            raise TslsError(Code.CONFIRMATION_REQUIRED, "deactivating locally forgets this server's activation "
                            "without telling the Clearinghouse; it issues only temporary licenses until activated "
                            "again. Confirm with --yes (confirm: true)")
        result = yield self.writer.submit(lambda store, now: _save_activation(
            store, now, EventId.DEACTIVATED, activation.deactivated(), "locally, without the Clearinghouse"))
        return result

    def _note_problem(self, refusal: TslsError) -> defer.Deferred:
        """Keep what went wrong for ``status`` and its way out; nothing else changes."""
        if refusal.code.value not in activation.KEPT:
            return defer.succeed(None)

        def job(store, now):
            store.set_activation_problem(activation.Problem(refusal.code.value, refusal.message[:500], now))
        return self.writer.submit(job)

    def _require_activation(self, wanted: bool) -> defer.Deferred:
        """Fires with how this server names itself to the Clearinghouse (ID, product ID, certificate)."""
        def job(store, now):
            current = store.activation()
            activation.require(current, wanted)
            return self._identity_for_ch(current)
        return self.writer.submit(job)

    def _identity_for_ch(self, current: Activation) -> dict:
        return {"license_server_id": current.license_server_id, "product_id": self.identity.product_id,
                "certificate": current.certificate}

    @defer.inlineCallbacks
    def install_key_pack(self, purchase: dict):
        """Install CALs: the Clearinghouse binds the purchase to this server and issues the key pack."""
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        if version is not None:        # CALs newer than this server: refused before the Clearinghouse is asked
            check_server_hosts(self.identity.version, version)
        wanted = purchase_request(ref, version, cal_type, purchase.get("quantity"))
        done = yield self._unreported("install", {"purchase": wanted})
        if done is not None:
            return done
        server = yield self._require_activation(True)
        result = yield self._call("install", {"server": server, "purchase": wanted})
        return result

    @defer.inlineCallbacks
    def install_key_pack_id(self, typed: object):
        """Install the key pack whose 35-character ID the Clearinghouse read out on the telephone or web
        route. The ID is checked here first (its check characters, and that it was issued to this
        server: MISTYPED_CODE / CODE_FOR_ANOTHER_SERVER, nothing asked); then the Clearinghouse hands
        over the key pack it issued under that ID (UNKNOWN_KEY_PACK otherwise)."""
        def job(store, now):
            current = store.activation()
            activation.require(current, True)
            code = phonecodes.check(phonecodes.Kind.KEY_PACK, current.license_server_id, typed)
            held = store.key_pack(code)
            return code, self._identity_for_ch(current), None if held is None else key_pack_json(held)
        code, server, held = yield self.writer.submit(job)
        if held is not None:            # installed already: nothing installed twice
            return held
        done = yield self._unreported("install_by_id", {"key_pack_id": code})
        if done is not None:
            return done
        result = yield self._call("install_by_id", {"server": server, "key_pack_id": code})
        return result

    @defer.inlineCallbacks
    def recover(self, purchase: dict):
        """A rebuilt server gets back the CALs of a purchase from the Clearinghouse [§4]."""
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        if version is not None:
            check_server_hosts(self.identity.version, version)
        wanted = purchase_request(ref, version, cal_type, None)
        done = yield self._unreported("recover", {"purchase": wanted})
        if done is not None:
            return done
        server = yield self._require_activation(True)
        result = yield self._call("recover", {"server": server, "purchase": wanted})
        return result

    # --- the Manage RDS CALs wizard (docs/wizard.md) --------------------------------------------------

    @defer.inlineCallbacks
    def convert(self, key_pack_id: object, count: object):
        """ConvertLicenses: ``count`` unissued CALs of a key pack become a new key pack of the other type
        (2012 and later license servers). The CALs are taken from the old key pack in the commit that
        records the Clearinghouse call, so none can be issued meanwhile; a refusal gives them back."""
        if not isinstance(key_pack_id, str):
            raise TslsError(Code.BAD_REQUEST, "key_pack_id must be a string")
        typed = key_pack_id.replace("-", "").replace(" ", "").upper()
        done = yield self._unreported("convert", {"key_pack_id": typed, "count": count})
        if done is not None:
            return done

        def job(store, now):
            current = store.activation()
            activation.require(current, True)
            conversion = wizard.convert(self.identity.version, store.key_pack(typed), count)
            return self._identity_for_ch(current), conversion

        server, conversion = yield self.writer.submit(job)

        def take(store, now):          # checked again in the commit that takes them
            pack = store.key_pack(typed)
            wizard.convert(self.identity.version, pack, count)
            store.set_key_pack_total(typed, pack.total - count)

        result = yield self._call("convert", {"server": server, "key_pack_id": typed, "count": count,
                                              "to": conversion.to.value}, prepare=take)
        return result

    @defer.inlineCallbacks
    def rebuild(self, confirm: bool):
        """Rebuild the database: every key pack, issued license and Per User CAL record deleted (one
        commit, event 1117), then the CALs reinstalled by recovery, one purchase at a time (the
        Clearinghouse hands back the key packs it issued to this server; it never adds CALs)."""
        wizard.rebuild(confirm)

        def job(store, now):
            packs = store.key_packs()
            deleted, licenses = store.delete_all_cals()
            store.add_events([Event(now, EventId.DATABASE_REBUILT, f"license server database rebuilt: {deleted} "
                                    f"key pack(s) and {licenses} issued license(s) deleted")])
            purchases: list[tuple[dict, set]] = []      # each purchase to recover, with the key packs it had
            for p in packs:
                if p.retired_at is None:
                    wanted = purchase_request(p.purchase, p.product_version, p.cal_type, None)
                    same = next((ids for w, ids in purchases if w == wanted), None)
                    if same is None:
                        purchases.append((wanted, {p.key_pack_id}))
                    else:
                        same.add(p.key_pack_id)
            return deleted, licenses, purchases
        deleted, licenses, purchases = yield self.writer.submit(job)
        recovered, failed = [], []
        for purchase, ids in purchases:
            if ids <= {p["key_pack_id"] for p in recovered}:
                continue            # its key packs came back with another recovery of the same purchase
            try:
                answer = yield self.recover(purchase)
                seen = {p["key_pack_id"] for p in recovered}
                recovered.extend(p for p in answer["key_packs"] if p["key_pack_id"] not in seen)
            except TslsError as e:
                failed.append({"purchase": purchase, "error": e.to_json()})
        return {"deleted_key_packs": deleted, "deleted_licenses": licenses, "key_packs": recovered,
                "not_recovered": failed}

    @defer.inlineCallbacks
    def migrate(self, reason: object, route: object, source: dict, purchase: dict | None, key_pack_id: object):
        """Migrate CALs from another license server onto this one (docs/wizard.md): automatic, the purchase
        through the Clearinghouse (POST /v1/migrations); web or telephone, the key pack ID it read out. A
        source that is not running leaves the double circulation on record: event 93 here."""
        why = parse_enum(MigrationReason, reason, "reason", loose=True)
        plan = wizard.migration(why, parse_enum(wizard.Route, route, "route", loose=True), source,
                                purchase is not None, key_pack_id is not None)
        if plan.by_id:
            pack = yield self.install_key_pack_id(key_pack_id)
            result = {"key_pack": pack, "source_key_packs": []}
        else:
            ref = PurchaseRef.from_json(purchase)
            version, cal_type = _version_and_type(purchase)
            if version is not None:
                check_server_hosts(self.identity.version, version)
            wanted = purchase_request(ref, version, cal_type, None)
            request = {"purchase": wanted, "reason": why.value, "source_license_server_id": plan.source_id}
            done = yield self._unreported("migrate", request)
            if done is not None:
                result = done
            else:
                server = yield self._require_activation(True)
                result = yield self._call("migrate", {"server": server, **request})
        if not plan.source_running:
            yield self.writer.submit(lambda store, now: store.add_events([Event(
                now, EventId.IMPORTED_FROM_STOPPED, f"key pack {result['key_pack']['key_pack_id']} imported from "
                f"license server {plan.source_id or '(unknown)'}, which is not running ({why.value}): its CALs "
                "could not be removed there; the move is on record at the Clearinghouse")]))
        return {**result, "source_running": plan.source_running}

    def uninstall_key_packs(self, key_pack_ids: object) -> defer.Deferred:
        """On the source of a migration: its key packs migrated away are uninstalled (retired: the CALs
        issued stay, none is issued from them), event 89 each."""
        if not isinstance(key_pack_ids, list) or not all(isinstance(i, str) for i in key_pack_ids) \
                or len(key_pack_ids) > 1000:
            raise TslsError(Code.BAD_REQUEST, "key_pack_ids must be a list of key pack IDs")

        def job(store, now):
            missing = [i for i in key_pack_ids if store.key_pack(i) is None]
            if missing:
                raise TslsError(Code.NOT_FOUND, f"no key pack {missing[0]} on this license server")
            gone = store.retire_key_packs(key_pack_ids, now)
            store.add_events([Event(now, EventId.KEY_PACK_UNINSTALLED, f"key pack {p.key_pack_id} uninstalled: its "
                                    f"{p.total} CALs were migrated to another license server") for p in gone])
            return [key_pack_json(p) for p in gone]
        return self.writer.submit(job)

    def source_uninstall_failed(self, source: object, key_pack_ids: object, message: object) -> defer.Deferred:
        """On the target: removing the migrated key packs from the source failed (event 90)."""
        text = f"removing key pack(s) {', '.join(map(str, key_pack_ids or []))[:600]} from source license server " \
               f"{str(source)[:64]} failed: {str(message)[:300]}; remove them there by hand (op uninstall_key_packs)"

        def job(store, now):
            store.add_events([Event(now, EventId.SOURCE_UNINSTALL_FAILED, text)])
            return {"recorded": True}
        return self.writer.submit(job)

    # --- calls to the Clearinghouse, each once ---------------------------------------------------------

    @defer.inlineCallbacks
    def _call(self, operation: str, request: dict, prepare=None):
        """Make a call: the one of this kind still pending if there is one (the administrator is asking
        again: it completes as first asked), else a new one. Other pending calls are finished first.
        ``prepare(store, now)``: what a new call does to the ledger in the commit that records it (a
        conversion takes its CALs from the old key pack there; UNDO gives them back if refused)."""
        def job(store, now):
            pending = store.pending_clearinghouse_calls()
            same = next((c for c in pending if c.operation == operation and _same(c.request, request)), None)
            if same is None:
                if prepare is not None:
                    prepare(store, now)
                same = store.add_clearinghouse_call(secrets.token_urlsafe(24), operation, request, now)
            return same, [c for c in pending if c.id != same.id]
        call, others = yield self.writer.submit(job)
        self.log.info("Clearinghouse call {call_id} ({operation}) recorded", call_id=call.id, operation=operation)
        yield self._finish_all(others)
        result = yield self._finish(call)
        yield self.writer.submit(lambda store, now: _finished(store, now, call, "done", result))    # told
        return result

    def _unreported(self, operation: str, request: dict) -> defer.Deferred:
        """The result of a call like this one that was completed without anyone being told (at a
        start, after the request that made it was cut off): the administrator asking again gets it,
        not a refusal (ALREADY_ACTIVATED, QUANTITY_EXCEEDED) that would look like CALs lost."""
        def job(store, now):
            for call in store.recent_clearinghouse_calls():
                if (call.state == "done" and call.operation == operation and _same(call.request, request)
                        and (call.result or {}).get(UNREPORTED)):
                    result = _told(call.result)
                    _finished(store, now, call, "done", result)
                    return result
            return None
        return self.writer.submit(job)

    @defer.inlineCallbacks
    def finish_pending(self):
        """Ask again every call still pending (at start-up); fires with how many were finished."""
        calls = yield self.writer.submit(lambda store, now: store.pending_clearinghouse_calls())
        finished = yield self._finish_all(calls)
        self.log.info("{finished} of {total} pending Clearinghouse calls finished", finished=finished,
                      total=len(calls))
        return finished

    @defer.inlineCallbacks
    def _finish_all(self, calls):
        finished = 0
        for call in calls:
            try:
                yield self._finish(call)
                finished += 1
            except TslsError as e:
                if e.code in OUTCOME_UNKNOWN:
                    break           # the Clearinghouse is not answering: the rest waits too
        return finished

    def _finish(self, call: ClearinghouseCall) -> defer.Deferred:
        """Ask the Clearinghouse for ``call`` and apply its answer; one request at a time per call."""
        waiter = defer.Deferred()
        if call.key in self._in_flight:
            self._in_flight[call.key].append(waiter)
            return waiter
        waiters = self._in_flight[call.key] = [waiter]

        def settle(result):
            del self._in_flight[call.key]
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
        self._ask(call).addBoth(settle)
        return waiter

    @defer.inlineCallbacks
    def _ask(self, call: ClearinghouseCall):
        _failpoint("clearinghouse_before_call", call.operation)
        try:
            answer = yield self._send(call)
        except TslsError as e:
            yield self._note_problem(e)
            if e.code in OUTCOME_UNKNOWN:
                self.log.warn("Clearinghouse call {call_id} ({operation}) pending: {error}", call_id=call.id,
                              operation=call.operation, error=e.message)
                raise TslsError(Code.CLEARINGHOUSE_UNREACHABLE, f"{e.message}. The {call.operation} is recorded and "
                                "pending: run the same command again, or restart the license server, to complete it "
                                "(nothing is lost, nothing is done twice)", pending_call=call.id) from None
            def failed(store, now):
                if call.operation in UNDO:
                    UNDO[call.operation](store, now, call.request)
                _finished(store, now, call, "failed", {"error": e.to_json()})
            yield self.writer.submit(failed)
            self.log.info("Clearinghouse call {call_id} ({operation}) refused: {code}", call_id=call.id,
                          operation=call.operation, code=e.code.value)
            if "server" in call.request:
                yield self._check_in_after(e, call.request["server"])
            raise
        _failpoint("clearinghouse_after_answer", call.operation)

        def job(store, now):
            current = store.clearinghouse_call(call.key)
            if current is not None and current.state == "done":
                return _told(current.result)    # finished meanwhile (another request asked too)
            result = APPLY[call.operation](store, now, answer, self.identity.version)
            _finished(store, now, call, "done", {**result, UNREPORTED: True})      # until someone is told
            return result
        result = yield self.writer.submit(job)
        self.log.info("Clearinghouse call {call_id} ({operation}) done", call_id=call.id, operation=call.operation)
        return result

    def _send(self, call: ClearinghouseCall) -> defer.Deferred:
        r, key, ch = call.request, call.key, self.clearinghouse
        if call.operation == "activate":
            return ch.activate(r["product_id"], r["contact"], "automatic", idempotency_key=key)
        if call.operation == "reactivate":
            return ch.reactivate(r["server"], r["reason"], r["contact"], idempotency_key=key)
        if call.operation == "deactivate":
            return ch.deactivate(r["server"], idempotency_key=key)
        if call.operation == "migrate":
            return ch.migrate(r["server"], r["purchase"], r["reason"], r.get("source_license_server_id"),
                              server_version=self.identity.version, idempotency_key=key)
        if call.operation == "convert":
            return ch.convert(r["server"], r["key_pack_id"], r["count"], idempotency_key=key)
        if call.operation == "install_by_id":
            return ch.install_key_pack(r["server"], r["key_pack_id"], server_version=self.identity.version,
                                       idempotency_key=key)
        purchase = r["purchase"]
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        if call.operation == "install":
            return ch.install(r["server"], ref, version, cal_type, purchase.get("quantity"),
                              server_version=self.identity.version, idempotency_key=key)
        return ch.recover(r["server"], ref, version, cal_type, server_version=self.identity.version,
                          idempotency_key=key)

    # --- retired key packs ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def check_in(self):
        """Contact the Clearinghouse (at start-up): retire the key packs a recovery elsewhere retired.
        Fires with the key packs retired now; nothing to do when the server is not activated."""
        def job(store, now):
            current = store.activation()
            return self._identity_for_ch(current) if current.activated else None
        server = yield self.writer.submit(job)
        if server is None:
            return []
        try:
            answer = yield self.clearinghouse.check_in(server)
        except TslsError as e:
            yield self._note_problem(e)
            raise
        retired = yield self.writer.submit(lambda store, now: _store_key_packs(
            store, now, self.identity.version, [], _retired(answer)))
        return retired

    def _check_in_after(self, refusal: TslsError, server: dict) -> defer.Deferred:
        """A refused call is a contact too: learn the retirements (a best effort; the refusal stands)."""
        if refusal.code in (Code.CLEARINGHOUSE_UNREACHABLE, Code.NOT_ACTIVATED, Code.BAD_CREDENTIALS,
                            Code.UNKNOWN_LICENSE_SERVER, Code.BAD_REQUEST, Code.IDEMPOTENCY_KEY_REUSED):
            return defer.succeed(None)
        d = self.clearinghouse.check_in(server)
        d.addCallback(lambda answer: self.writer.submit(lambda store, now: _store_key_packs(
            store, now, self.identity.version, [], _retired(answer))))
        d.addErrback(lambda f: self.log.warn("check-in after a refusal failed: {error}", error=f.getErrorMessage()))
        return d

    def key_packs(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: [key_pack_json(p) for p in store.key_packs()])


def _same(pending: dict, request: dict) -> bool:
    """Is ``request`` the administrator asking again for the pending call? One activation change at a
    time; an install or recovery of the same purchase."""
    return all(pending.get(k) == request.get(k) for k in ("purchase", "key_pack_id", "count", "reason",
                                                            "source_license_server_id"))


UNREPORTED = "_unreported"      # in a done call's result: its answer has not reached anyone yet


def _told(result: dict | None) -> dict:
    return {k: v for k, v in (result or {}).items() if k != UNREPORTED}


def _finished(store, now: int, call: ClearinghouseCall, state: str, result: dict) -> None:
    store.finish_clearinghouse_call(call.key, state, result, now)


def _save_activation(store, now: int, event_id: EventId, after: Activation, how: str | None = None) -> dict:
    store.add_events([Event(now, event_id, f"license server {after.status.value} "
                                           f"({how or (after.method.value if after.method else 'no method')}) as "
                                           f"{after.license_server_id or '-'}")])
    store.save_activation(after)
    if after.activated:
        store.set_activation_problem(None)         # the way out was taken
    return activation_json(after, store.activation_problem(), store.identity().product_id)


def _store_key_packs(store, now: int, host_version, issued: list[IssuedKeyPack], retired_ids=()) -> list:
    """Install the key packs the Clearinghouse issued (one already held is not installed twice)
    and retire those it retired; the installed packs, or the retired ones when none."""
    out = []
    for kp in issued:      # the Clearinghouse checked this too: a key pack this server cannot host never lands
        check_server_hosts(host_version, kp.product_version)
        held = store.key_pack(kp.key_pack_id)
        if held is not None:
            out.append(key_pack_json(held))
            continue
        pack = store.add_key_pack(kp.key_pack_id, kp.purchase, kp.product_version, kp.cal_type, kp.quantity, now)
        out.append(key_pack_json(pack))
        store.add_events([Event(now, EventId.KEY_PACK_INSTALLED,
                                f"key pack {pack.key_pack_id} installed: {pack.total} "
                                f"{pack.cal_type.value} CALs for Windows Server {pack.product_version.value}")])
    gone = store.retire_key_packs(retired_ids, now)
    for pack in gone:
        store.add_events([Event(now, EventId.KEY_PACK_RETIRED,
                                f"key pack {pack.key_pack_id} retired: its purchase was recovered onto another "
                                f"license server; its {pack.issued} issued CALs stay, no new one is issued")])
    return out if issued else [key_pack_json(p) for p in gone]


def _apply_activate(store, now, answer, host_version) -> dict:
    current = store.activation()
    if current.activated:       # activated meanwhile (by telephone): a late answer does not replace it
        return activation_json(current, store.activation_problem(), store.identity().product_id)
    return _save_activation(store, now, EventId.ACTIVATED, activation.activated(
        ActivationMethod.AUTOMATIC, _answered(answer, "license_server_id"), _answered(answer, "certificate"), now))


def _apply_reactivate(store, now, answer, host_version) -> dict:
    result = _save_activation(store, now, EventId.REACTIVATED, activation.activated(
        ActivationMethod.AUTOMATIC, _answered(answer, "license_server_id"), _answered(answer, "certificate"), now))
    _store_key_packs(store, now, host_version, [], _retired(answer))
    return result


def _apply_deactivate(store, now, answer, host_version) -> dict:
    return _save_activation(store, now, EventId.DEACTIVATED, activation.deactivated())


def _apply_install(store, now, answer, host_version) -> dict:
    issued = IssuedKeyPack.from_json(_answered(answer, "key_pack", dict))
    return _store_key_packs(store, now, host_version, [issued], _retired(answer))[0]


def _apply_recover(store, now, answer, host_version) -> dict:
    issued = [IssuedKeyPack.from_json(kp) for kp in _answered(answer, "key_packs", list)]
    new = [kp for kp in issued if store.key_pack(kp.key_pack_id) is None]     # held already: nothing recovered
    packs = _store_key_packs(store, now, host_version, issued, _retired(answer))
    if new:
        references = sorted({kp.purchase.reference for kp in new})
        store.add_events([Event(now, EventId.KEY_PACKS_RECOVERED,
                                f"recovered from the Clearinghouse: {len(new)} key pack(s), "
                                f"{sum(kp.quantity for kp in new)} CALs of purchase {', '.join(references)}")])
    return {"key_packs": packs}


def _apply_convert(store, now, answer, host_version) -> dict:
    issued = IssuedKeyPack.from_json(_answered(answer, "key_pack", dict))
    converted = _answered(answer, "converted", dict)
    new = _store_key_packs(store, now, host_version, [issued], _retired(answer))[0]
    store.add_events([Event(now, EventId.KEY_PACK_CONVERTED,
                            f"{issued.quantity} CALs of key pack {converted.get('key_pack_id')} converted to "
                            f"{issued.cal_type.value} as key pack {issued.key_pack_id}")])
    return {"key_pack": new, "from": key_pack_json(store.key_pack(converted.get("key_pack_id")))
            if store.key_pack(converted.get("key_pack_id")) is not None else None}


def _apply_migrate(store, now, answer, host_version) -> dict:
    issued = IssuedKeyPack.from_json(_answered(answer, "key_pack", dict))
    pack = _store_key_packs(store, now, host_version, [issued], _retired(answer))[0]
    source = [i for i in answer.get("source_key_packs", []) if isinstance(i, str)]
    return {"key_pack": pack, "source_key_packs": source}


def _retired(answer: dict) -> list:
    ids = answer.get("retired_key_packs", []) if isinstance(answer, dict) else []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


# What each call's answer does to the ledger, applied in the commit that marks the call done.
APPLY = {"activate": _apply_activate, "reactivate": _apply_reactivate, "deactivate": _apply_deactivate,
         "install": _apply_install, "install_by_id": _apply_install, "recover": _apply_recover,
         "convert": _apply_convert, "migrate": _apply_migrate}


def _undo_convert(store, now, request) -> None:
    """The Clearinghouse refused the conversion: the CALs go back to the old key pack."""
    pack = store.key_pack(request["key_pack_id"])
    if pack is not None:
        store.set_key_pack_total(pack.key_pack_id, pack.total + request["count"])


# What a refused call gives back, in the commit that marks it failed.
UNDO = {"convert": _undo_convert}


def activation_json(a: Activation, problem: activation.Problem | None = None, product_id: str | None = None) -> dict:
    """With ``product_id``: also the last problem kept and the way out of where the server stands."""
    out = {
        "status": a.status.value,
        "license_server_id": a.license_server_id,
        "method": None if a.method is None else a.method.value,
        "activated_at": iso(a.activated_at),
    }
    if product_id is not None:
        out["problem"] = None if problem is None else {"code": problem.code, "message": problem.message,
                                                       "at": iso(problem.at)}
        out["way_out"] = list(activation.way_out(a, problem, product_id))
    return out


def _answered(answer: object, name: str, kind: type = str):
    """A field of the Clearinghouse's answer; a missing or mistyped one is CLEARINGHOUSE_ERROR."""
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, kind):
        raise TslsError(Code.CLEARINGHOUSE_ERROR, f"the Clearinghouse's answer has no {name!r}")
    return value


def _version_and_type(purchase: dict):
    version, cal_type = purchase.get("product_version"), purchase.get("cal_type")
    return (None if version is None else ProductVersion.parse(version),
            None if cal_type is None else CalType.parse(cal_type))
