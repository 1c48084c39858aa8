"""An in-memory stand-in for the Clearinghouse client, for tests of the layers above it.
The real Clearinghouse is tested on its own and end to end in tests/test_lab.py."""
import itertools

from twisted.internet import defer

from tsls.core.clearinghouse import IssuedKeyPack
from tsls.core.model import CalType, ProductVersion
from tsls.errors import Code, TslsError


class FakeClearinghouse:
    def __init__(self):
        self.calls = []
        self._ids = itertools.count(1)
        self.reachable = True

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if not self.reachable:
            raise TslsError(Code.CLEARINGHOUSE_UNREACHABLE, "cannot reach the Clearinghouse at http://fake")

    @defer.inlineCallbacks
    def activate(self, product_id, contact, method, idempotency_key=None):
        yield self._call("activate", product_id, method)
        return {"license_server_id": f"LS{next(self._ids)}".ljust(35, "X"), "product_id": product_id,
                "certificate": "C" * 35}

    @defer.inlineCallbacks
    def reactivate(self, server, reason, contact, idempotency_key=None):
        yield self._call("reactivate", server["license_server_id"], reason)
        return {"license_server_id": f"LS{next(self._ids)}".ljust(35, "Y"), "certificate": "D" * 35}

    @defer.inlineCallbacks
    def deactivate(self, server, idempotency_key=None):
        yield self._call("deactivate", server["license_server_id"])
        return {}

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

    def _pack(self, ref, product_version, cal_type, quantity):
        return IssuedKeyPack(f"KP{next(self._ids)}".ljust(35, "0"), ref, product_version or ProductVersion.W2003,
                             cal_type or CalType.PER_DEVICE, quantity or 5).to_json()
