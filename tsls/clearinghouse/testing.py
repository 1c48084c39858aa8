"""An in-memory Clearinghouse with the client's interface (tsls.clearinghouse.client), for tests of
the layers above it: the license server's operations, its protocol, the daemon.

It checks what a request carries as the real one does (product ID, contact, reason: the same core
rules) and answers in the same shapes (``IssuedKeyPack``), but keeps no sales: every installation
and recovery succeeds. tests/clearinghouse/test_contract.py runs one suite against this fake and the
real API, so the two cannot drift apart on what the fake claims.
"""
from __future__ import annotations

import itertools

from twisted.internet import defer

from tsls.core import clearinghouse as rules
from tsls.core.clearinghouse import IssuedKeyPack, Reason
from tsls.core.model import CalType, ProductVersion, PurchaseRef, parse_enum
from tsls.errors import Code, TslsError

# A contact the real Clearinghouse accepts for an activation.
CONTACT = {"first_name": "Ada", "last_name": "Lovelace", "company": "Lab", "country_region": "UK"}


class FakeClearinghouse:
    def __init__(self):
        self.calls = []
        self._ids = itertools.count(1)
        self.reachable = True
        self.issued: dict[str, IssuedKeyPack] = {}      # every key pack handed out, by ID

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if not self.reachable:
            raise TslsError(Code.CLEARINGHOUSE_UNREACHABLE, "cannot reach the Clearinghouse at http://fake")

    @defer.inlineCallbacks
    def activate(self, product_id, contact, method="automatic", idempotency_key=None):
        yield self._call("activate", product_id, method)
        rules.check_product_id(product_id)
        rules.check_contact(contact)
        return {"license_server_id": f"LS{next(self._ids)}".ljust(35, "X"), "product_id": product_id,
                "certificate": "C" * 35}

    @defer.inlineCallbacks
    def reactivate(self, server, reason, contact, idempotency_key=None):
        yield self._call("reactivate", server["license_server_id"], reason)
        parse_enum(Reason, reason, "reason")
        rules.check_contact(contact, required=("first_name", "last_name"))
        return {"license_server_id": f"LS{next(self._ids)}".ljust(35, "Y"), "product_id": server["product_id"],
                "certificate": "D" * 35, "retired_key_packs": []}

    @defer.inlineCallbacks
    def deactivate(self, server, idempotency_key=None):
        yield self._call("deactivate", server["license_server_id"])
        return {"license_server_id": server["license_server_id"], "product_id": server["product_id"]}

    @defer.inlineCallbacks
    def check_in(self, server):
        yield self._call("check_in", server["license_server_id"])
        return {"license_server_id": server["license_server_id"], "retired_key_packs": []}

    @defer.inlineCallbacks
    def install(self, server, ref, product_version=None, cal_type=None, quantity=None, server_version=None,
                idempotency_key=None):
        yield self._call("install", server["license_server_id"], ref.reference)
        return {"key_pack": self._pack(ref, product_version, cal_type, quantity)}

    @defer.inlineCallbacks
    def recover(self, server, ref, product_version=None, cal_type=None, server_version=None,
                idempotency_key=None):
        yield self._call("recover", server["license_server_id"], ref.reference)
        return {"key_packs": [self._pack(ref, None, None, None)]}

    @defer.inlineCallbacks
    def convert(self, server, key_pack_id, count, idempotency_key=None):
        """Converts a key pack this fake issued (the real one: any key pack of the caller)."""
        yield self._call("convert", server["license_server_id"], key_pack_id, count)
        old = self.issued.get(key_pack_id)
        if old is None:
            raise TslsError(Code.UNKNOWN_KEY_PACK, "the Clearinghouse has no live key pack with that ID on this server")
        if not 1 <= count <= old.quantity:
            raise TslsError(Code.NOT_ENOUGH_CALS, f"key pack {key_pack_id} holds {old.quantity} CALs")
        other = CalType.PER_USER if old.cal_type is CalType.PER_DEVICE else CalType.PER_DEVICE
        self.issued[key_pack_id] = IssuedKeyPack(old.key_pack_id, old.purchase, old.product_version, old.cal_type,
                                                 old.quantity - count)
        return {"key_pack": self._pack(old.purchase, old.product_version, other, count),
                "converted": {"key_pack_id": key_pack_id, "quantity": old.quantity - count}, "retired_key_packs": []}

    @defer.inlineCallbacks
    def migrate(self, server, purchase, reason, source_license_server_id=None, server_version=None,
                idempotency_key=None):
        yield self._call("migrate", server["license_server_id"], reason)
        parse_enum(rules.MigrationReason, reason, "reason")
        ref = PurchaseRef.from_json(purchase)
        return {"key_pack": self._pack(ref, None, None, None), "source_key_packs": [], "retired_key_packs": []}

    @defer.inlineCallbacks
    def install_key_pack(self, server, key_pack_id, server_version=None, idempotency_key=None):
        """Hands over a key pack this fake issued (``issue_key_pack``)."""
        yield self._call("install_key_pack", server["license_server_id"], key_pack_id)
        pack = self.issued.get(key_pack_id)
        if pack is None:
            raise TslsError(Code.UNKNOWN_KEY_PACK, "the Clearinghouse issued no key pack with that ID to this server")
        return {"key_pack": pack.to_json(), "retired_key_packs": []}

    def _pack(self, ref, product_version, cal_type, quantity):
        pack = IssuedKeyPack(f"KP{next(self._ids)}".ljust(35, "0"), ref, product_version or ProductVersion.W2003,
                             cal_type or CalType.PER_DEVICE, quantity or 5)
        self.issued[pack.key_pack_id] = pack
        return pack.to_json()
