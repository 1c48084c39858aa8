"""The Clearinghouse's client library, used by the license server daemon and tsls-admin.
API errors come back as TslsError with the API's code; no answer at all (within ``timeout``
seconds) is CLEARINGHOUSE_UNREACHABLE. The lab operator's calls (sell, list purchases, look at a
license server) prove the operator's credential with a one-use challenge (docs/clearinghouse.md)."""
from __future__ import annotations

import json

from twisted.internet import defer

from tsls.core.clearinghouse import purchase_request
from tsls.errors import Code, TslsError
from tsls.public import proof as make_proof

TIMEOUT = 30


class ClearinghouseClient:
    def __init__(self, base_url: str, treq_module=None, operator_secret: str | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._treq = treq_module
        self.operator_secret = operator_secret
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ClearinghouseClient({self.base_url!r})"      # never the operator's secret

    @property
    def treq(self):
        if self._treq is None:
            import treq
            self._treq = treq
        return self._treq

    @defer.inlineCallbacks
    def _operator_call(self, method: str, path: str, body: dict | None = None):
        if self.operator_secret is None:
            raise TslsError(Code.OPERATOR_REQUIRED, "the lab operator's credential is needed "
                            "(tsls-admin --operator-credential FILE; default tsls-data/operator.secret)")
        challenge = yield self._call("GET", "challenge")
        nonce = challenge.get("nonce") if isinstance(challenge, dict) else None
        if not isinstance(nonce, str):
            raise TslsError(Code.CLEARINGHOUSE_ERROR, "the Clearinghouse gave no challenge")
        proof = make_proof(self.operator_secret, nonce, "operator", f"{method} /v1/{path}")
        answer = yield self._call(method, path, body, {b"Authorization": [f"TSLS-Operator nonce={nonce}, "
                                                                          f"proof={proof}".encode()]})
        return answer

    @defer.inlineCallbacks
    def _call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
              idempotency_key: str | None = None):
        url = f"{self.base_url}/v1/{path}"
        headers = dict(headers or {})
        if idempotency_key is not None:
            headers[b"Idempotency-Key"] = [idempotency_key.encode()]
        try:
            if method == "GET":
                response = yield self.treq.get(url, headers=headers, timeout=self.timeout)
            else:
                headers[b"Content-Type"] = [b"application/json"]
                response = yield self.treq.post(url, data=json.dumps(body).encode(), headers=headers,
                                                timeout=self.timeout)
            raw = yield self.treq.content(response)
        except Exception as e:
            raise TslsError(Code.CLEARINGHOUSE_UNREACHABLE, f"cannot reach the Clearinghouse at {self.base_url}: "
                            f"{e.__class__.__name__} {e}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise TslsError(Code.CLEARINGHOUSE_ERROR, f"the Clearinghouse answered {response.code} without JSON") from None
        if response.code >= 400:
            raise TslsError.from_json(answer.get("error") if isinstance(answer, dict) else answer)
        return answer

    def sell(self, purchase) -> defer.Deferred:
        """``purchase``: a tsls.core.model.Purchase, or a dict of its JSON (a retail sale may omit the code)."""
        return self._operator_call("POST", "purchases", purchase if isinstance(purchase, dict) else purchase.to_json())

    def list_purchases(self) -> defer.Deferred:
        return self._operator_call("GET", "purchases")

    # A license server's calls that change anything take ``idempotency_key``: the Clearinghouse carries
    # out a key's call once and answers a repeated key with the original answer (docs/clearinghouse.md).

    def activate(self, product_id: str, contact: dict, method: str = "automatic",
                 idempotency_key: str | None = None, again: bool = False) -> defer.Deferred:
        """``again`` (the operator, by telephone): retire the product ID's current activation and read
        out new codes; the way out for a license server whose codes were lost (docs/activation.md)."""
        body = {"product_id": product_id, "method": method, "contact": contact}
        if again:
            return self._operator_call("POST", "activations", {**body, "again": True})
        return self._call("POST", "activations", body, idempotency_key=idempotency_key)

    # A license server names itself with ``server``: {"license_server_id", "product_id", "certificate"},
    # the certificate being what its activation returned.

    def reactivate(self, server: dict, reason: str, contact: dict, idempotency_key: str | None = None) -> defer.Deferred:
        return self._call("POST", "reactivations", {**server, "reason": reason, "contact": contact},
                          idempotency_key=idempotency_key)

    def deactivate(self, server: dict, idempotency_key: str | None = None) -> defer.Deferred:
        return self._call("POST", "deactivations", dict(server), idempotency_key=idempotency_key)

    def install(self, server: dict, ref, product_version=None, cal_type=None, quantity=None,
                server_version=None, idempotency_key: str | None = None) -> defer.Deferred:
        """``server_version``: the license server's Windows version; CALs newer than it are refused."""
        return self._call("POST", "installations",
                          {**server, "purchase": purchase_request(ref, product_version, cal_type, quantity),
                           **_version(server_version)}, idempotency_key=idempotency_key)

    def recover(self, server: dict, ref, product_version=None, cal_type=None, server_version=None,
                idempotency_key: str | None = None) -> defer.Deferred:
        return self._call("POST", "recoveries", {**server, "purchase": purchase_request(ref, product_version, cal_type, None),
                                                 **_version(server_version)}, idempotency_key=idempotency_key)

    def install_key_pack(self, server: dict, key_pack_id: str, server_version=None,
                         idempotency_key: str | None = None) -> defer.Deferred:
        """The key pack the Clearinghouse issued to this server under ``key_pack_id`` (read out on the
        telephone or web route; UNKNOWN_KEY_PACK when it issued none such to this server)."""
        return self._call("POST", "key-pack-installations", {**server, "key_pack_id": key_pack_id,
                                                             **_version(server_version)},
                          idempotency_key=idempotency_key)

    def convert(self, server: dict, key_pack_id: str, count: int, idempotency_key: str | None = None) -> defer.Deferred:
        """ConvertLicenses: ``count`` CALs of that key pack into a new key pack of the other type."""
        return self._call("POST", "conversions", {**server, "key_pack_id": key_pack_id, "count": count},
                          idempotency_key=idempotency_key)

    def migrate(self, server: dict, purchase: dict, reason: str, source_license_server_id: str | None = None,
                server_version=None, idempotency_key: str | None = None) -> defer.Deferred:
        """Migrate a purchase's CALs onto this license server (automatic route)."""
        body = {**server, "purchase": purchase, "reason": reason, **_version(server_version)}
        if source_license_server_id:
            body["source_license_server_id"] = source_license_server_id
        return self._call("POST", "migrations", body, idempotency_key=idempotency_key)

    def migrate_for(self, target_license_server_id: str, purchase: dict, reason: str,
                    source_license_server_id: str | None = None) -> defer.Deferred:
        """The operator on the telephone / web route: migrate onto the license server named, read out the
        new key pack's ID (installed there with install --key-pack-id or migrate --key-pack-id)."""
        body = {"target_license_server_id": target_license_server_id, "purchase": purchase, "reason": reason}
        if source_license_server_id:
            body["source_license_server_id"] = source_license_server_id
        return self._operator_call("POST", "operator-migrations", body)

    def issue_key_pack(self, license_server_id: str, purchase: dict) -> defer.Deferred:
        """The operator, as the Clearinghouse's agent on the telephone: bind ``purchase`` (its JSON, with
        an optional quantity) to that license server and read out the new key pack's ID."""
        return self._operator_call("POST", "key-packs", {"license_server_id": license_server_id,
                                                         "purchase": purchase})

    def check_in(self, server: dict) -> defer.Deferred:
        """The server's record, with ``retired_key_packs``: its key packs a recovery elsewhere retired."""
        return self._call("POST", "check-ins", dict(server))

    def license_server(self, license_server_id: str) -> defer.Deferred:
        return self._operator_call("GET", f"license-servers/{license_server_id}")


def _version(server_version) -> dict:
    return {} if server_version is None else {"server_version": server_version.value}
