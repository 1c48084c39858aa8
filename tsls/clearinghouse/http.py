"""The Clearinghouse's operations and its HTTP JSON API (docs/clearinghouse.md).

``Clearinghouse`` reads and writes the store around the rules in tsls.core.clearinghouse;
``ApiResource`` is only routing, JSON and status codes.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string

import attrs
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from tsls.core import clearinghouse as rules
from tsls.core import phonecodes
from tsls.core.activation import ActivationMethod
from tsls.core.clearinghouse import IssuedKeyPack, Reason, Sale, Server, ServerStatus
from tsls.core.model import CalType, ProductVersion, Purchase, PurchaseRef, iso, parse_enum
from tsls.errors import Code, TslsError
from tsls.server import auth

MAX_BODY = 64 * 1024
NONCE_TTL = 60                  # seconds an operator's challenge may be answered in
MAX_NONCES = 1000               # outstanding challenges; the oldest are forgotten past this
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
AUTHORIZATION = re.compile(r"TSLS-Operator nonce=([0-9a-f]{32}), proof=([0-9a-f]{64})")
ALPHANUMERIC = string.ascii_uppercase + string.digits

STATUS = {
    Code.BAD_REQUEST: 400, Code.BAD_JSON: 400, Code.INVALID_PURCHASE: 400, Code.NO_SUCH_CAL_VERSION: 400,
    Code.OPERATOR_REQUIRED: 401,
    Code.UNKNOWN_LICENSE_SERVER: 403, Code.NOT_ACTIVATED: 403, Code.BAD_CREDENTIALS: 403,
    Code.UNKNOWN_PURCHASE: 404, Code.NOT_FOUND: 404, Code.UNKNOWN_KEY_PACK: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.PURCHASE_EXISTS: 409, Code.PURCHASE_BOUND: 409, Code.QUANTITY_EXCEEDED: 409,
    Code.ALREADY_ACTIVATED: 409, Code.ALREADY_RECOVERED: 409, Code.CAL_NEWER_THAN_SERVER: 409,
    Code.IDEMPOTENCY_KEY_REUSED: 409, Code.NOT_ENOUGH_CALS: 409, Code.ALREADY_MIGRATED: 409,
    Code.TOO_LARGE: 413,
}


def _random_id(length: int) -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def _certificate(idempotency_key: str | None, license_server_id: str) -> str:
    """A new certificate code, bound to its license server ID (tsls/core/phonecodes.py): its random
    part random, or, for a call with an idempotency key, derived from that key (the caller's
    secret), so a repeated call gets the same certificate though only its digest is kept."""
    if idempotency_key is None:
        return phonecodes.make(phonecodes.Kind.CERTIFICATE, license_server_id)
    n = int.from_bytes(hmac.new(idempotency_key.encode(), b"tsls certificate", hashlib.sha256).digest(), "big")
    out = []
    for _ in range(phonecodes.RANDOM):
        n, digit = divmod(n, len(phonecodes.ALPHABET))
        out.append(phonecodes.ALPHABET[digit])
    return phonecodes.make(phonecodes.Kind.CERTIFICATE, license_server_id, "".join(out))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _text(body: dict, name: str, max_len: int = 128) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise TslsError(Code.BAD_REQUEST, f"{name} must be a string of 1 to {max_len} characters")
    return value


class Clearinghouse:
    log = Logger()

    def __init__(self, store, clock, operator_secret: str | None = None) -> None:
        """``operator_secret``: the lab operator's credential (tsls-data/operator.secret); the
        operator's endpoints refuse everyone when it is None."""
        self.store = store
        self.clock = clock
        self.operator_secret = operator_secret
        self.nonces: dict[str, float] = {}
        self.operations = {"purchases": self.sell, "activations": self.activate, "reactivations": self.reactivate,
                           "deactivations": self.deactivate, "installations": self.install, "recoveries": self.recover,
                           "check-ins": self.check_in, "key-packs": self.issue_key_pack,
                           "key-pack-installations": self.install_key_pack, "conversions": self.convert,
                           "migrations": self.migrate,
                           "operator-migrations": self.migrate_for}

    def now(self) -> int:
        return int(self.clock.seconds())

    # idempotent calls

    def once(self, name: str, body: dict, idempotency_key: str | None) -> dict:
        """Carry out POST /v1/``name`` once per idempotency key: the effect and the answer commit
        together, and a repeated key gets the original answer (whatever happened since). A key
        reused for another request is refused (IDEMPOTENCY_KEY_REUSED)."""
        operation = self.operations[name]
        if idempotency_key is None:
            return operation(body)
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise TslsError(Code.BAD_REQUEST, "Idempotency-Key must be 16 to 128 letters, digits, '-' or '_'")
        key_digest = _digest(idempotency_key)
        request_digest = _digest(name + " " + json.dumps(body, sort_keys=True))
        with self.store.transaction():
            prior = self.store.answer(key_digest)
            if prior is not None:
                if prior[0] != request_digest:
                    raise TslsError(Code.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was used for another request")
                answer = dict(prior[1])
                if answer.pop("_certificate", False):
                    answer["certificate"] = _certificate(idempotency_key, answer["license_server_id"])
                return answer
            answer = operation(body, idempotency_key)
            kept = {k: v for k, v in answer.items() if k != "certificate"}
            if "certificate" in answer:
                kept["_certificate"] = True         # derived again from the key; never stored
            self.store.put_answer(key_digest, request_digest, kept, self.now())
        return answer

    # the lab operator proves it holds the operator's credential, as an administrator does (tsls.server.auth)

    def challenge(self) -> dict:
        now = self.clock.seconds()
        if len(self.nonces) >= MAX_NONCES:
            self.nonces = {n: t for n, t in self.nonces.items() if t > now}
            while len(self.nonces) >= MAX_NONCES:
                del self.nonces[next(iter(self.nonces))]
        nonce = auth.new_nonce()
        self.nonces[nonce] = now + NONCE_TTL
        return {"nonce": nonce, "expires_in": NONCE_TTL}

    def check_operator(self, method: str, path: str, authorization: str | None) -> None:
        """``Authorization: TSLS-Operator nonce=<a challenge>, proof=<HMAC-SHA256(credential,
        "nonce|operator|METHOD PATH") in hex>``; each challenge answers one request."""
        if authorization is None:
            raise TslsError(Code.OPERATOR_REQUIRED, "this is the lab operator's endpoint: prove the operator's "
                            "credential (tsls-admin clearinghouse uses tsls-data/operator.secret)")
        match = AUTHORIZATION.fullmatch(authorization)
        if match is None:
            raise TslsError(Code.BAD_CREDENTIALS, "Authorization must be: TSLS-Operator nonce=<32 hex>, proof=<64 hex>")
        nonce, given = match.groups()
        expires = self.nonces.pop(nonce, None)
        if expires is None or expires <= self.clock.seconds():
            raise TslsError(Code.BAD_CREDENTIALS, "unknown, used or expired challenge: ask GET /v1/challenge again")
        if self.operator_secret is None:
            raise TslsError(Code.BAD_CREDENTIALS, "this Clearinghouse has no operator credential")
        auth.check_proof(self.operator_secret, nonce, "operator", f"{method} {path}", given)

    # purchases

    def sell(self, body: dict, idempotency_key: str | None = None) -> dict:
        if body.get("program") == "retail" and body.get("retail_code") is None:
            body = {**body, "retail_code": _random_id(25)}
        purchase = Purchase.from_json(body)
        key = rules.purchase_key(purchase.ref, purchase.product_version, purchase.cal_type)
        with self.store.transaction():
            if self.store.sale(key) is not None:
                raise TslsError(Code.PURCHASE_EXISTS, f"purchase {purchase.ref.reference} was already sold")
            self.store.add_sale(key, Sale(purchase), self.now())
        self.log.info("sold {quantity} {cal_type} CALs for {version} as {reference}", quantity=purchase.quantity,
                      cal_type=purchase.cal_type.value, version=purchase.product_version.value,
                      reference=purchase.ref.reference)
        return _sale_json(Sale(purchase))

    def purchases(self) -> list:
        return [{**_sale_json(sale), "moves": self.store.moves(key)} for key, sale in self.store.sales()]

    # activation

    def activate(self, body: dict, idempotency_key: str | None = None) -> dict:
        """``again`` (operator only, checked by the resource): retire the product ID's current
        activation, move its purchases to the new license server ID (docs/activation.md)."""
        product_id = rules.check_product_id(body.get("product_id"))
        method = parse_enum(ActivationMethod, body.get("method", "automatic"), "method")
        contact = rules.check_contact(body.get("contact"))
        again = body.get("again", False) is True
        with self.store.transaction():
            old = rules.activate(self.store.active_server_for(product_id), again)
            server_id = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, product_id)
            certificate = _certificate(idempotency_key, server_id)
            server = Server(server_id, product_id, ServerStatus.ACTIVATED, method, contact, self.now(),
                            rules.certificate_digest(certificate))
            if old is not None:
                self.store.put_server(attrs.evolve(old, status=ServerStatus.RETIRED))
            self.store.put_server(server)
            if old is not None:
                self.store.rebind(old.license_server_id, server.license_server_id)
        self.log.info("activated product {product_id} as {license_server_id} ({method})", product_id=product_id,
                      license_server_id=server.license_server_id, method=method.value)
        return {**_server_json(server, []), "certificate": certificate}

    def reactivate(self, body: dict, idempotency_key: str | None = None) -> dict:
        reason = parse_enum(Reason, body.get("reason"), "reason")
        rules.check_contact(body.get("contact"), required=("first_name", "last_name"))
        with self.store.transaction():
            old = self._caller(body)
            server_id = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, old.product_id)
            certificate = _certificate(idempotency_key, server_id)
            new = Server(server_id, old.product_id, ServerStatus.ACTIVATED, ActivationMethod.AUTOMATIC, old.contact,
                         self.now(), rules.certificate_digest(certificate))
            self.store.put_server(attrs.evolve(old, status=ServerStatus.RETIRED))
            self.store.put_server(new)
            self.store.rebind(old.license_server_id, new.license_server_id)
        self.log.info("reactivated {old} as {new} ({reason})", old=old.license_server_id,
                      new=new.license_server_id, reason=reason.value)
        return {**_server_json(new, self.store.bindings(new.license_server_id)), "certificate": certificate,
                "retired_key_packs": self.store.retired_key_packs(new.license_server_id)}

    def check_in(self, body: dict, idempotency_key: str | None = None) -> dict:
        """A license server's contact: it learns which of its key packs a recovery elsewhere retired."""
        server = self._caller(body)
        return {**_server_json(server, self.store.bindings(server.license_server_id)),
                "retired_key_packs": self.store.retired_key_packs(server.license_server_id)}

    def deactivate(self, body: dict, idempotency_key: str | None = None) -> dict:
        with self.store.transaction():
            server = self._caller(body)
            gone = attrs.evolve(server, status=ServerStatus.DEACTIVATED)
            self.store.put_server(gone)
        return _server_json(gone, self.store.bindings(gone.license_server_id))

    def server(self, license_server_id: str) -> dict:
        server = self.store.server(license_server_id)
        if server is None:
            raise TslsError(Code.UNKNOWN_LICENSE_SERVER, f"no license server {license_server_id}")
        return _server_json(server, self.store.bindings(license_server_id))

    def _caller(self, body: dict) -> Server:
        license_server_id = _text(body, "license_server_id", 64)
        product_id = rules.check_product_id(body.get("product_id"))
        return rules.check_server(self.store.server(license_server_id), license_server_id, product_id,
                                  body.get("certificate"))

    # installing and recovering CALs

    def install(self, body: dict, idempotency_key: str | None = None) -> dict:
        ref, key, purchase = self._purchase(body)
        with self.store.transaction():
            server = self._caller(body)
            sale, quantity = rules.install(self.store.sale(key), server, purchase.get("quantity"),
                                           _server_version(body))
            self.store.put_sale(key, sale)
            pack = self._issue(key, sale, server, quantity)
            retired = self.store.retired_key_packs(server.license_server_id)
        self.log.info("installed {quantity} CALs of {reference} onto {license_server_id}", quantity=quantity,
                      reference=ref.reference, license_server_id=server.license_server_id)
        return {"key_pack": pack, "retired_key_packs": retired}

    def recover(self, body: dict, idempotency_key: str | None = None) -> dict:
        """Moves the purchase here and never adds CALs (tsls.core.clearinghouse.recover); every move
        is on record, and the server it left has its key packs retired at its next contact."""
        ref, key, _ = self._purchase(body)
        with self.store.transaction():
            server = self._caller(body)
            sale = self.store.sale(key)
            recovery = rules.recover(sale, server, self.store.live_key_packs(key), _server_version(body))
            packs = [self._pack_json(p.key_pack_id, sale, p.quantity, p.cal_type) for p in recovery.kept]
            if recovery.issue:
                self.store.put_sale(key, recovery.sale)
                self.store.retire(key, recovery.retired, server.license_server_id, recovery.issue, self.now())
                packs.append(self._issue(key, recovery.sale, server, recovery.issue))
            retired = self.store.retired_key_packs(server.license_server_id)
        if recovery.issue:
            self.log.info("recovered {reference} onto {license_server_id}; {count} key packs retired",
                          reference=ref.reference, license_server_id=server.license_server_id,
                          count=len(recovery.retired))
        return {"key_packs": packs, "retired_key_packs": retired}

    # the telephone and web routes: a key pack ID read out, typed in at the license server

    def issue_key_pack(self, body: dict, idempotency_key: str | None = None) -> dict:
        """The operator (the Clearinghouse's agent on the telephone, or its web page): bind the purchase
        to the license server named by its ID and issue a key pack whose 35-character ID is read out.
        The license server then installs it by that ID (``install_key_pack``)."""
        ref, key, purchase = self._purchase(body)
        license_server_id = _text(body, "license_server_id", 64).replace("-", "").replace(" ", "").upper()
        with self.store.transaction():
            server = rules.named_server(self.store.server(license_server_id), license_server_id)
            sale, quantity = rules.install(self.store.sale(key), server, purchase.get("quantity"))
            self.store.put_sale(key, sale)
            pack = self._issue(key, sale, server, quantity)
        self.log.info("key pack of {quantity} CALs of {reference} issued for {license_server_id} (telephone/web)",
                      quantity=quantity, reference=ref.reference, license_server_id=license_server_id)
        return {"key_pack": pack}

    def install_key_pack(self, body: dict, idempotency_key: str | None = None) -> dict:
        """A license server installs a key pack by the ID it was read out (tsls.core.clearinghouse.claim_key_pack)."""
        key_pack_id = _text(body, "key_pack_id", 64)
        with self.store.transaction():
            server = self._caller(body)
            record = self.store.key_pack_record(key_pack_id)
            sale = None if record is None else self.store.sale(record.sale_key)
            pack = rules.claim_key_pack(record, server, sale, _server_version(body))
            retired = self.store.retired_key_packs(server.license_server_id)
        return {"key_pack": self._pack_json(pack.key_pack_id, sale, pack.quantity, pack.cal_type),
                "retired_key_packs": retired}

    def migrate_for(self, body: dict, idempotency_key: str | None = None) -> dict:
        """The operator's route (POST /v1/operator-migrations, the resource checked the proof)."""
        return self.migrate(body, idempotency_key, operator=True)

    def migrate(self, body: dict, idempotency_key: str | None = None, operator: bool = False) -> dict:
        """Migrate a purchase's CALs onto the calling license server (automatic route), or, by the operator
        (``target_license_server_id``: the telephone / web route), onto the server named, its key pack ID
        read out. The source's key packs are retired and the move is on record (tsls.core.clearinghouse.migrate)."""
        ref, key, _ = self._purchase(body)
        reason = parse_enum(rules.MigrationReason, body.get("reason"), "reason")
        source = body.get("source_license_server_id")
        if source is not None:
            source = _text(body, "source_license_server_id", 64).replace("-", "").replace(" ", "").upper()
        with self.store.transaction():
            if operator:
                target_id = _text(body, "target_license_server_id", 64).replace("-", "").replace(" ", "").upper()
                target = rules.named_server(self.store.server(target_id), target_id)
            else:
                target = self._caller(body)
            sale = self.store.sale(key)
            move = rules.migrate(sale, target, self.store.live_key_packs(key), reason, source, _server_version(body))
            self.store.put_sale(key, move.sale)
            self.store.retire(key, move.retired, target.license_server_id, move.issue, self.now())
            pack = self._issue(key, move.sale, target, move.issue)
            retired = self.store.retired_key_packs(target.license_server_id)
        self.log.info("migrated {reference} onto {target} ({reason}); {count} key packs retired",
                      reference=ref.reference, target=target.license_server_id, reason=reason.value,
                      count=len(move.retired))
        return {"key_pack": pack, "source_key_packs": [p.key_pack_id for p in move.retired],
                "retired_key_packs": retired}

    def convert(self, body: dict, idempotency_key: str | None = None) -> dict:
        """ConvertLicenses: ``count`` CALs of a key pack of this server into a new key pack of the other
        type (tsls.core.clearinghouse.convert_key_pack). Answer: the new key pack, and the old one's ID
        and the CALs left in it."""
        key_pack_id = _text(body, "key_pack_id", 64)
        with self.store.transaction():
            server = self._caller(body)
            record = self.store.key_pack_record(key_pack_id)
            old, left = rules.convert_key_pack(record, server, body.get("count"))
            sale = self.store.sale(record.sale_key)
            to = CalType.PER_USER if (old.cal_type or sale.purchase.cal_type) is CalType.PER_DEVICE else CalType.PER_DEVICE
            self.store.set_key_pack_quantity(old.key_pack_id, left)
            new_id = phonecodes.make(phonecodes.Kind.KEY_PACK, server.license_server_id)
            self.store.add_key_pack(new_id, record.sale_key, server.license_server_id, old.quantity - left,
                                    self.now(), to)
            retired = self.store.retired_key_packs(server.license_server_id)
        self.log.info("converted {count} CALs of key pack {old} to {to} as {new}", count=old.quantity - left,
                      old=old.key_pack_id, to=to.value, new=new_id)
        return {"key_pack": self._pack_json(new_id, sale, old.quantity - left, to),
                "converted": {"key_pack_id": old.key_pack_id, "quantity": left}, "retired_key_packs": retired}

    def _purchase(self, body: dict):
        purchase = body.get("purchase")
        if not isinstance(purchase, dict):
            raise TslsError(Code.BAD_REQUEST, "purchase must be an object")
        ref = PurchaseRef.from_json(purchase)
        version = purchase.get("product_version")
        cal_type = purchase.get("cal_type")
        key = rules.purchase_key(ref, None if version is None else ProductVersion.parse(version),
                                 None if cal_type is None else CalType.parse(cal_type))
        return ref, key, purchase

    def _issue(self, key: str, sale: Sale, server: Server, quantity: int) -> dict:
        # a key pack ID read out on the telephone or web route is checked where it is typed in (phonecodes)
        key_pack_id = phonecodes.make(phonecodes.Kind.KEY_PACK, server.license_server_id)
        self.store.add_key_pack(key_pack_id, key, server.license_server_id, quantity, self.now())
        return self._pack_json(key_pack_id, sale, quantity)

    def _pack_json(self, key_pack_id: str, sale: Sale, quantity: int, cal_type: CalType | None = None) -> dict:
        p = sale.purchase
        return IssuedKeyPack(key_pack_id, p.ref, p.product_version, cal_type or p.cal_type, quantity).to_json()


def _server_version(body: dict) -> ProductVersion | None:
    value = body.get("server_version")
    return None if value is None else ProductVersion.parse(value)


def _sale_json(sale: Sale) -> dict:
    return {**sale.purchase.to_json(), "installed": sale.installed, "remaining": sale.remaining,
            "bound_to": sale.bound_to}


def _server_json(s: Server, bindings: list) -> dict:
    return {"license_server_id": s.license_server_id, "product_id": s.product_id, "status": s.status.value,
            "method": s.method.value, "activated_at": iso(s.activated_at), "contact": s.contact, "bindings": bindings}


# What only the lab operator may do: sell CALs (POST), see every purchase with its codes and any
# license server (GET /v1/purchases, /v1/license-servers/ID), read out a key pack ID (POST /v1/key-packs).
OPERATOR_POSTS = ("purchases", "key-packs", "operator-migrations")


class ApiResource(Resource):
    """/v1/... routes to Clearinghouse methods; every failure is a JSON error with a 4xx status."""

    isLeaf = True
    log = Logger()

    def __init__(self, clearinghouse: Clearinghouse) -> None:
        super().__init__()
        self.posts = clearinghouse.operations
        self.ch = clearinghouse

    def render(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        try:
            status, body = 200, self._route(request)
            if request.method == b"POST":
                status = 201 if request.postpath[1:2] not in ([b"deactivations"], [b"check-ins"]) else 200
        except TslsError as e:
            status, body = STATUS.get(e.code, 500), {"error": e.to_json()}
        except Exception:
            self.log.failure("Clearinghouse request {path} failed", path=request.path)
            status, body = 500, {"error": TslsError(Code.INTERNAL_ERROR, "the Clearinghouse failed").to_json()}
        request.setResponseCode(status)
        return json.dumps(body).encode()

    def _route(self, request):
        path = [p.decode("utf-8", "replace") for p in request.postpath]
        if len(path) < 2 or path[0] != "v1":
            raise TslsError(Code.NOT_FOUND, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        name, rest = path[1], path[2:]
        if request.method == b"GET":
            if name == "purchases" and not rest:
                self._operator(request, path)
                return self.ch.purchases()
            if name == "license-servers" and len(rest) == 1:
                self._operator(request, path)
                return self.ch.server(rest[0])
            if name == "health" and not rest:
                return {"ok": True}
            if name == "challenge" and not rest:
                return self.ch.challenge()
        elif request.method == b"POST" and name in self.posts and not rest:
            if name in OPERATOR_POSTS:
                self._operator(request, path)
            body = self._body(request)
            if name == "activations" and body.get("again") is not None:     # the operator's telephone route
                self._operator(request, path)
            key = request.getHeader(b"idempotency-key")
            return self.ch.once(name, body, None if key is None else key.decode("latin-1"))
        if name in self.posts or name in ("license-servers", "health", "challenge"):
            raise TslsError(Code.METHOD_NOT_ALLOWED, f"{request.method.decode()} is not allowed on {request.path.decode()}")
        raise TslsError(Code.NOT_FOUND, f"no such resource: {request.path.decode('utf-8', 'replace')}")

    def _operator(self, request, path: list) -> None:
        header = request.getHeader(b"authorization")
        self.ch.check_operator(request.method.decode("ascii"), "/" + "/".join(path),
                               None if header is None else header.decode("latin-1"))

    def _body(self, request) -> dict:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise TslsError(Code.TOO_LARGE, f"a request body may be at most {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise TslsError(Code.BAD_JSON, f"the body is not JSON: {e}") from None
        except RecursionError:
            raise TslsError(Code.BAD_JSON, "the body is nested too deeply") from None
        if not isinstance(body, dict):
            raise TslsError(Code.BAD_REQUEST, "the body must be a JSON object")
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise TslsError(Code.BAD_REQUEST, "the body holds a lone surrogate (\\ud800-\\udfff): not text") from None
        except RecursionError:
            raise TslsError(Code.BAD_JSON, "the body is nested too deeply") from None
        return body


class ApiChannel(HTTPChannel):
    """HTTP for the API, with an answer for requests too large to read: a request line over 16 KiB
    (a 70 KB path) gets 414, headers over 16 KiB get 431, each with a JSON error, where Twisted would
    close the connection with no status. The rest of such a request is read and dropped (for at
    most DISCARD_FOR seconds) so that closing does not reset the connection before the client has
    read the answer."""

    DISCARD_FOR = 10
    _refused = False

    def lineLengthExceeded(self, line):
        if getattr(self, "_HTTPChannel__first_line", 0):
            self._refuse(414, b"URI Too Long", "the request line (method and path) is over 16 KiB")
        else:
            self._refuse(431, b"Request Header Fields Too Large", "a request header is over 16 KiB")

    def _respondToBadRequestAndDisconnect(self):
        if getattr(self, "_receivedHeaderSize", 0) > self.totalHeadersSize or \
                getattr(self, "_receivedHeaderCount", 0) > self.maxHeaders:
            self._refuse(431, b"Request Header Fields Too Large",
                         f"the headers are over {self.totalHeadersSize} bytes or {self.maxHeaders} lines")
        else:
            self._refuse(400, b"Bad Request", "the request is not valid HTTP")

    def _refuse(self, status: int, reason: bytes, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self.paused = True          # LineReceiver: no further line of this data is parsed
        self._buffer = b""
        body = json.dumps({"error": TslsError(Code.TOO_LARGE if status != 400 else Code.BAD_REQUEST,
                                              message).to_json()}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.setTimeout(None)
        loser = getattr(self.transport, "loseWriteConnection", None)
        if loser is not None:
            loser()
        self._discard_deadline = self.callLater(self.DISCARD_FOR, self.transport.abortConnection)

    def dataReceived(self, data):
        if self._refused:
            return
        super().dataReceived(data)

    def connectionLost(self, reason):
        deadline = getattr(self, "_discard_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        super().connectionLost(reason)
