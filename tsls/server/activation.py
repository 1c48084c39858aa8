"""Activation and key packs: what the license server asks of the Clearinghouse, and what it
keeps of the answers (docs/clearinghouse.md)."""
from __future__ import annotations

import re

from twisted.internet import defer

from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.core.events import Event, EventId
from tsls.core.model import CalType, ProductVersion, PurchaseRef
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json
from tsls.server.storage import Identity

LICENSE_SERVER_ID = re.compile(r"[A-Z0-9]{35}")


class Activations:
    def __init__(self, writer, clearinghouse, identity: Identity) -> None:
        self.writer = writer
        self.clearinghouse = clearinghouse
        self.identity = identity

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
        result = yield self._set_activation(ActivationStatus.ACTIVATED, license_server_id, ActivationMethod(method),
                                            EventId.ACTIVATED, certificate)
        return result

    @defer.inlineCallbacks
    def reactivate(self, reason: str, contact: dict | None):
        server = yield self._require_activation(True)
        answer = yield self.clearinghouse.reactivate(server, reason, contact or {})
        result = yield self._set_activation(ActivationStatus.ACTIVATED, answer["license_server_id"],
                                            ActivationMethod.AUTOMATIC, EventId.REACTIVATED, answer["certificate"])
        return result

    @defer.inlineCallbacks
    def deactivate(self):
        server = yield self._require_activation(True)
        yield self.clearinghouse.deactivate(server)
        result = yield self._set_activation(ActivationStatus.DEACTIVATED, None, None, EventId.DEACTIVATED, None)
        return result

    def _require_activation(self, wanted: bool) -> defer.Deferred:
        """Fires with how this server names itself to the Clearinghouse (ID, product ID, certificate)."""
        def job(store, now):
            current = store.activation()
            if wanted and not current.activated:
                raise TslsError(Code.NOT_ACTIVATED, "the license server is not activated")
            if not wanted and current.activated:
                raise TslsError(Code.ALREADY_ACTIVATED, "the license server is already activated as "
                                f"{current.license_server_id}; deactivate or reactivate it instead")
            return {"license_server_id": current.license_server_id, "product_id": self.identity.product_id,
                    "certificate": current.certificate}
        return self.writer.submit(job)

    def _set_activation(self, status: ActivationStatus, license_server_id: str | None,
                        method: ActivationMethod | None, event_id: EventId, certificate: str | None) -> defer.Deferred:
        def job(store, now):
            store.add_events([Event(now, event_id, f"license server {status.value} "
                                                   f"({method.value if method else 'no method'}) as "
                                                   f"{license_server_id or '-'}")])
            activation = Activation(status, license_server_id, method,
                                    now if status is ActivationStatus.ACTIVATED else None, certificate)
            store.save_activation(activation)
            return activation_json(activation)
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


def activation_json(a: Activation) -> dict:
    return {
        "status": a.status.value,
        "license_server_id": a.license_server_id,
        "method": None if a.method is None else a.method.value,
        "activated_at": iso(a.activated_at),
    }


def _version_and_type(purchase: dict):
    version, cal_type = purchase.get("product_version"), purchase.get("cal_type")
    return (None if version is None else ProductVersion.parse(version),
            None if cal_type is None else CalType.parse(cal_type))
