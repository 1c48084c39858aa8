"""Activation and key packs: what the license server asks of the Clearinghouse, and what it
keeps of the answers (docs/clearinghouse.md)."""
from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from tsls.core import activation
from tsls.core.activation import Activation, ActivationMethod
from tsls.core.clearinghouse import IssuedKeyPack
from tsls.core.events import Event, EventId
from tsls.core.model import CalType, ProductVersion, PurchaseRef, check_server_hosts
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json
from tsls.server.storage import Identity


class Activations:
    log = Logger()

    def __init__(self, writer, clearinghouse, identity: Identity) -> None:
        self.writer = writer
        self.clearinghouse = clearinghouse
        self.identity = identity

    @defer.inlineCallbacks
    def activate(self, method: str, contact: dict | None, license_server_id: str | None, certificate: str | None):
        """Automatic: ask the Clearinghouse. Telephone: the administrator types in the license server ID
        and certificate code the Clearinghouse gave on the phone."""
        yield self._require_activation(False)
        how = activation.parse_method(method)
        if how is ActivationMethod.AUTOMATIC:
            answer = yield self.clearinghouse.activate(self.identity.product_id, contact or {}, how.value)
            license_server_id, certificate = _answered(answer, "license_server_id"), _answered(answer, "certificate")
        else:
            license_server_id, certificate = activation.check_telephone_codes(license_server_id, certificate)
        result = yield self._set_activation(EventId.ACTIVATED, lambda now: activation.activated(
            how, license_server_id, certificate, now))
        return result

    @defer.inlineCallbacks
    def reactivate(self, reason: str, contact: dict | None):
        server = yield self._require_activation(True)
        answer = yield self.clearinghouse.reactivate(server, reason, contact or {})
        license_server_id, certificate = _answered(answer, "license_server_id"), _answered(answer, "certificate")
        result = yield self._set_activation(EventId.REACTIVATED, lambda now: activation.activated(
            ActivationMethod.AUTOMATIC, license_server_id, certificate, now))
        yield self._store_key_packs([], answer.get("retired_key_packs", ()))
        return result

    @defer.inlineCallbacks
    def deactivate(self):
        server = yield self._require_activation(True)
        yield self.clearinghouse.deactivate(server)
        result = yield self._set_activation(EventId.DEACTIVATED, lambda now: activation.deactivated())
        return result

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

    def _set_activation(self, event_id: EventId, new: Callable[[int], Activation]) -> defer.Deferred:
        def job(store, now):
            after = new(now)
            store.add_events([Event(now, event_id, f"license server {after.status.value} "
                                                   f"({after.method.value if after.method else 'no method'}) as "
                                                   f"{after.license_server_id or '-'}")])
            store.save_activation(after)
            return activation_json(after)
        return self.writer.submit(job)

    @defer.inlineCallbacks
    def install_key_pack(self, purchase: dict):
        """Install CALs: the Clearinghouse binds the purchase to this server and issues the key pack."""
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        if version is not None:        # CALs newer than this server: refused before the Clearinghouse is asked
            check_server_hosts(self.identity.version, version)
        server = yield self._require_activation(True)
        try:
            answer = yield self.clearinghouse.install(server, ref, version, cal_type, purchase.get("quantity"),
                                                      server_version=self.identity.version)
        except TslsError as e:
            yield self._check_in_after(e, server)
            raise
        issued = IssuedKeyPack.from_json(_answered(answer, "key_pack", dict))
        packs = yield self._store_key_packs([issued], answer.get("retired_key_packs", ()))
        return packs[0]

    @defer.inlineCallbacks
    def recover(self, purchase: dict):
        """A rebuilt server gets back the CALs of a purchase from the Clearinghouse [§4]."""
        ref = PurchaseRef.from_json(purchase)
        version, cal_type = _version_and_type(purchase)
        if version is not None:
            check_server_hosts(self.identity.version, version)
        server = yield self._require_activation(True)
        try:
            answer = yield self.clearinghouse.recover(server, ref, version, cal_type,
                                                      server_version=self.identity.version)
        except TslsError as e:
            yield self._check_in_after(e, server)
            raise
        issued = [IssuedKeyPack.from_json(kp) for kp in _answered(answer, "key_packs", list)]
        packs = yield self._store_key_packs(issued, answer.get("retired_key_packs", ()))
        return {"key_packs": packs}

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
        answer = yield self.clearinghouse.check_in(server)
        retired = yield self._store_key_packs([], answer.get("retired_key_packs", ()))
        return retired

    def _check_in_after(self, refusal: TslsError, server: dict) -> defer.Deferred:
        """A refused call is a contact too: learn the retirements (a best effort; the refusal stands)."""
        if refusal.code in (Code.CLEARINGHOUSE_UNREACHABLE, Code.NOT_ACTIVATED, Code.BAD_CREDENTIALS,
                            Code.UNKNOWN_LICENSE_SERVER):
            return defer.succeed(None)
        d = self.clearinghouse.check_in(server)
        d.addCallback(lambda answer: self._store_key_packs([], answer.get("retired_key_packs", ())))
        d.addErrback(lambda f: self.log.warn("check-in after a refusal failed: {error}", error=f.getErrorMessage()))
        return d

    def _store_key_packs(self, issued: list[IssuedKeyPack], retired_ids=()) -> defer.Deferred:
        """Install the key packs the Clearinghouse issued (one already held is not installed twice)
        and retire those it retired; fires with the installed packs, or the retired ones when none."""
        def job(store, now):
            out = []
            for kp in issued:      # the Clearinghouse checked this too: a key pack this server cannot host never lands
                check_server_hosts(self.identity.version, kp.product_version)
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

        return self.writer.submit(job)

    def key_packs(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: [key_pack_json(p) for p in store.key_packs()])


def activation_json(a: Activation) -> dict:
    return {
        "status": a.status.value,
        "license_server_id": a.license_server_id,
        "method": None if a.method is None else a.method.value,
        "activated_at": iso(a.activated_at),
    }


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
