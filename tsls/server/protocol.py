"""The socket protocol: newline-delimited JSON, one request per line, replies echo the ``id``.

Documented in docs/protocol.md. This module only parses, dispatches and formats; the work is in
``LicenseServer`` and the rules are in ``tsls.core``.
"""
from __future__ import annotations

import json

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from tsls.core.labtime import parse_date
from tsls.core.licensing import TerminalServer, check_terminal_server
from tsls.core.model import CalType, ProductVersion, iso
from tsls.core.perseat import AddPackUse
from tsls.errors import Code, TslsError
from tsls.server import auth

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024          # longer lines: LINE_TOO_LONG, then the connection is closed
MAX_IN_FLIGHT = 256           # requests waiting for their answer on one connection; past it, we stop reading
IDLE_TIMEOUT = 300.0          # seconds without a complete request before an idle connection is closed
MAX_CONNECTIONS = 10_000      # past it, a new connection gets TOO_MANY_CONNECTIONS and is closed


LICENSE_FILTERS = ("hwid", "machine", "user", "terminal_server", "kind", "status", "product_version", "key_pack_id")
EVENT_FILTERS = (("event_id", int), ("terminal_server", str), ("hwid", str), ("user", str), ("license_id", int))


def _limit(request: dict) -> int:
    limit = _field(request, "limit", int, required=False)
    if limit is None:
        return 1000
    if not 1 <= limit <= 100_000:
        raise TslsError(Code.BAD_REQUEST, "limit must be from 1 to 100000")
    return limit


def _field(request: dict, name: str, kind=str, required=True, max_len=256):
    value = request.get(name)
    if value is None:
        if required:
            raise TslsError(Code.BAD_REQUEST, f"missing field {name!r}")
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be a whole number")
    if kind is not int and not isinstance(value, kind):
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be a {kind.__name__}")
    if kind is str and not 0 < len(value) <= max_len:
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be 1 to {max_len} characters")
    return value


@implementer(IPushProducer, IHalfCloseableProtocol)
class LicenseProtocol(LineOnlyReceiver, TimeoutMixin):
    """One connection. It stops reading while MAX_IN_FLIGHT requests await answers, or while the
    peer is not reading its answers (the transport's buffer is full), so no client can make the
    server buffer without bound; a partial line is bounded by MAX_LINE and by the idle timeout."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    factory = None

    def __init__(self, server, clock=None, idle_timeout: float | None = IDLE_TIMEOUT) -> None:
        self.server = server
        self.role: str | None = None
        self.terminal_server: TerminalServer | None = None
        self._follower = None
        self._nonce: str | None = None
        self._hello_pending: list | None = None     # requests that arrived while the hello was being checked
        self._in_flight = 0
        self._read_closed = False
        self._peer_slow = False
        self._reading = True
        if clock is not None:
            self.callLater = clock.callLater
        self._idle_timeout = idle_timeout

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.setTimeout(self._idle_timeout)

    # IPushProducer, as seen by our transport: the peer's unread answers have filled its buffer.
    def pauseProducing(self) -> None:
        self._peer_slow = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._peer_slow = False
        self._update_reading()

    def stopProducing(self) -> None:
        pass

    def _update_reading(self) -> None:
        want = not self._peer_slow and self._in_flight < MAX_IN_FLIGHT
        if want != self._reading and self.transport.connected:
            self._reading = want
            (self.transport.resumeProducing if want else self.transport.pauseProducing)()

    # IHalfCloseableProtocol: a client that sends its requests and then shuts down its side
    # (`nc -q1`, a script) still gets every answer before the connection closes.
    def readConnectionLost(self) -> None:
        self._read_closed = True
        if self._in_flight == 0:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self._send(None, error=TslsError(Code.IDLE_TIMEOUT, f"no request for {self._idle_timeout:.0f} seconds"))
        self.transport.loseConnection()

    # --- framing ----------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self._send(None, error=TslsError(Code.BAD_JSON, f"not a JSON object: {e}"))
            return
        if not isinstance(request, dict):
            self._send(None, error=TslsError(Code.BAD_REQUEST, "a request is a JSON object"))
            return
        rid = request.get("id")
        if not (isinstance(rid, (str, int)) and not isinstance(rid, bool)):
            self._send(None, error=TslsError(Code.BAD_REQUEST, "every request needs an 'id' (a string or a number)"))
            return
        self._in_flight += 1
        self._update_reading()
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallbacks(lambda result: self._send(rid, result=result), lambda f: self._failed(rid, f))
        if request.get("op") == "hello" and self._hello_pending is not None:
            d.addBoth(lambda _: self._release_held())
        d.addBoth(self._answered)

    def _answered(self, _) -> None:
        self._in_flight -= 1
        if self._read_closed and self._in_flight == 0:
            self.transport.loseConnection()
        self._update_reading()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send(None, error=TslsError(Code.LINE_TOO_LONG, f"a request line may be at most {MAX_LINE} bytes"))
        self.transport.loseConnection()

    def _failed(self, rid, failure) -> None:
        if failure.check(TslsError):
            self._send(rid, error=failure.value)
            return
        self.log.failure("request {rid!r} failed", failure, rid=rid)
        self._send(rid, error=TslsError(Code.INTERNAL_ERROR, "the license server failed on this request"))

    def _send(self, rid, result=None, error: TslsError | None = None) -> None:
        reply = {"id": rid, "ok": error is None}
        if error is None:
            reply["result"] = result
        else:
            reply["error"] = error.to_json()
        self.transport.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")

    # --- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self, request: dict):
        op = request.get("op")
        if self._hello_pending is not None:
            held = defer.Deferred()
            self._hello_pending.append((request, held))
            return held
        if op == "challenge":
            self._nonce = auth.new_nonce()
            return {"nonce": self._nonce}
        if op == "hello":
            return self.hello(request)
        if self.role is None:
            raise TslsError(Code.HELLO_REQUIRED, "the first request on a connection must be a hello")
        handler = _OPS.get((self.role, op))
        if handler is None:
            known = sorted(o for role, o in _OPS if role == self.role)
            if any(o == op for _, o in _OPS):
                raise TslsError(Code.NOT_PERMITTED, f"{op!r} is not allowed for a {self.role} connection")
            raise TslsError(Code.UNKNOWN_OPERATION, f"unknown operation {op!r}; this connection may use: "
                            + ", ".join(["hello", *known]))
        return handler(self, request)

    def hello(self, request: dict):
        if self.role is not None:
            raise TslsError(Code.ALREADY_HELLO, "this connection already said hello")
        if request.get("protocol") != PROTOCOL_VERSION:
            raise TslsError(Code.UNSUPPORTED_PROTOCOL, f"this server speaks protocol {PROTOCOL_VERSION}",
                            supported=[PROTOCOL_VERSION])
        role = _field(request, "role")
        ts = None
        if role == "terminal_server":
            ts = TerminalServer(_field(request, "name", max_len=64), ProductVersion.parse(request.get("version")),
                                CalType.parse(request.get("mode")))
            check_terminal_server(ts)
        elif role != "admin":
            raise TslsError(Code.BAD_REQUEST, f"unknown role {role!r}; expected terminal_server or admin")
        nonce, self._nonce = self._nonce, None          # a challenge answers one hello only
        self._hello_pending = []
        d = self.server.authenticate(role, ts.name if ts else "", nonce, request.get("proof"))

        def welcome(authenticated):
            self.role = role
            if ts is not None:
                self.terminal_server = attrs.evolve(ts, authenticated=authenticated)
            return {"protocol": PROTOCOL_VERSION, "server": "tsls", "role": role, "authenticated": authenticated,
                    "product_id": self.server.identity.product_id,
                    "now": iso(int(self.server.writer.clock.seconds()))}

        return d.addCallback(welcome)

    def _release_held(self) -> None:
        """After the hello's own answer has gone out, run what arrived behind it, in order."""
        held, self._hello_pending = self._hello_pending or [], None
        for request, waiting in held:
            defer.maybeDeferred(self._dispatch, request).chainDeferred(waiting)

    # terminal servers

    def op_logon(self, request):
        return self.server.logon(self.terminal_server, _field(request, "hwid", max_len=128),
                                 _field(request, "machine"), _field(request, "user"),
                                 _field(request, "license", required=False, max_len=512))

    def op_logon_succeeded(self, request):
        return self.server.report_logon(self.terminal_server, _field(request, "hwid", max_len=128),
                                        _field(request, "license", max_len=512))

    # administrators

    def op_register_terminal_server(self, request):
        return self.server.register_terminal_server(_field(request, "name", max_len=64))

    def op_group_add(self, request):
        return self.server.set_group_membership(_field(request, "name", max_len=64), True)

    def op_group_remove(self, request):
        return self.server.set_group_membership(_field(request, "name", max_len=64), False)

    def op_set_policy(self, request):
        return self.server.set_security_group_policy(_field(request, "security_group", bool))

    def op_list_terminal_servers(self, request):
        return self.server.terminal_servers()

    # Per Server / Per Seat products and Small Business Server (docs/legacy.md)

    def op_product_connect(self, request):
        return self.server.products.connect(self, _field(request, "product", max_len=128),
                                            _field(request, "hwid", max_len=128),
                                            _field(request, "administrator", bool, required=False) or False)

    def op_product_disconnect(self, request):
        return self.server.products.disconnect(self, _field(request, "connection_id", int))

    def op_switch_to_per_seat(self, request):
        """An administrator may switch any product; a terminal server only its own products, once it
        has proved its name ("from the server itself")."""
        name = _field(request, "product", max_len=128)
        confirm = _field(request, "confirm", bool, required=False) or False
        if self.role == "admin":
            return self.server.products.switch_to_per_seat(name, confirm, True)
        ts = self.terminal_server

        def permitted(products):
            server = next((p["server"] for p in products["products"] if p["name"] == name), None)
            return self.server.products.switch_to_per_seat(name, confirm, ts.authenticated and ts.name == server)
        return self.server.products.products().addCallback(permitted)

    def op_switch_to_per_server(self, request):
        return self.server.products.switch_to_per_server(_field(request, "product", max_len=128))

    def op_add_product(self, request):
        return self.server.products.add_product(_field(request, "name", max_len=128), _field(request, "server", max_len=64),
                                                _field(request, "per_server_licenses", int, required=False) or 0)

    def op_add_product_licenses(self, request):
        return self.server.products.add_licenses(_field(request, "product", max_len=128),
                                                 _field(request, "per_server", int, required=False) or 0,
                                                 _field(request, "seats", int, required=False) or 0)

    def op_list_products(self, request):
        return self.server.products.products()

    def op_list_seat_clients(self, request):
        return self.server.products.seat_clients()

    def op_product_history(self, request):
        return self.server.products.history()

    def op_sbs_setup(self, request):
        return self.server.products.sbs_setup()

    def op_sbs_status(self, request):
        return self.server.products.sbs_status()

    def op_sbs_apply_add_pack(self, request):
        used = _field(request, "used", dict, required=False)
        if used is not None:
            if set(used) != {"before", "after"} or not all(type(v) is int for v in used.values()):
                raise TslsError(Code.BAD_ADD_PACK, "the add pack's record of its use is malformed")
            used = AddPackUse(used["before"], used["after"])
        return self.server.products.apply_add_pack(_field(request, "pack", max_len=64), used)

    def op_status(self, request):
        return self.server.status()

    def op_activate(self, request):
        return self.server.activate(_field(request, "method"), _field(request, "contact", dict, required=False),
                                    _field(request, "license_server_id", required=False, max_len=64),
                                    _field(request, "certificate", required=False, max_len=64))

    def op_reactivate(self, request):
        return self.server.reactivate(_field(request, "reason"), _field(request, "contact", dict, required=False))

    def op_deactivate(self, request):
        return self.server.deactivate()

    def op_install_key_pack(self, request):
        return self.server.install_key_pack(_field(request, "purchase", dict))

    def op_recover(self, request):
        return self.server.recover(_field(request, "purchase", dict))

    def op_list_key_packs(self, request):
        return self.server.key_packs()

    def op_list_licenses(self, request):
        filters = {name: _field(request, name, required=False, max_len=128) for name in LICENSE_FILTERS}
        return self.server.licenses({k: v for k, v in filters.items() if v is not None}, _limit(request))

    def op_revoke(self, request):
        user = _field(request, "user", required=False)
        if user is not None:
            return self.server.revoke_user(user)
        return self.server.revoke(_field(request, "license_id", int))

    def op_set_clock(self, request):
        return self.server.set_clock(_field(request, "to", max_len=64))

    def op_list_events(self, request):
        filters = {name: _field(request, name, kind, required=False, max_len=128) for name, kind in EVENT_FILTERS}
        since = _field(request, "since", required=False, max_len=64)
        return self.server.list_events({k: v for k, v in filters.items() if v is not None},
                                       None if since is None else parse_date(since), _limit(request))

    def op_follow_events(self, request):
        """From now on, every committed event is pushed on this connection as {"event": {...}}."""
        if self._follower is None:
            self.setTimeout(None)           # a follower may stay quiet for as long as it likes
            self._follower = lambda event: self.transport.write(
                json.dumps({"id": request["id"], "event": event}, separators=(",", ":")).encode() + b"\n")
            self.server.followers.add(self._follower)
        return {"following": True}

    def connectionLost(self, reason) -> None:
        self.setTimeout(None)
        if self.role is not None:
            self.server.products.release(self)
        if isinstance(self.factory, LicenseFactory):
            self.factory.connections -= 1
        if self._follower is not None:
            self.server.followers.discard(self._follower)

    def op_usage_report(self, request):
        return self.server.usage_report(_field(request, "start", int, required=False),
                                        _field(request, "end", int, required=False))


_OPS = {
    ("terminal_server", "logon"): LicenseProtocol.op_logon,
    ("terminal_server", "logon_succeeded"): LicenseProtocol.op_logon_succeeded,
    ("terminal_server", "product_connect"): LicenseProtocol.op_product_connect,
    ("terminal_server", "product_disconnect"): LicenseProtocol.op_product_disconnect,
    ("terminal_server", "switch_to_per_seat"): LicenseProtocol.op_switch_to_per_seat,
    ("admin", "switch_to_per_seat"): LicenseProtocol.op_switch_to_per_seat,
    ("admin", "switch_to_per_server"): LicenseProtocol.op_switch_to_per_server,
    ("admin", "add_product"): LicenseProtocol.op_add_product,
    ("admin", "add_product_licenses"): LicenseProtocol.op_add_product_licenses,
    ("admin", "list_products"): LicenseProtocol.op_list_products,
    ("admin", "list_seat_clients"): LicenseProtocol.op_list_seat_clients,
    ("admin", "product_history"): LicenseProtocol.op_product_history,
    ("admin", "sbs_setup"): LicenseProtocol.op_sbs_setup,
    ("admin", "sbs_status"): LicenseProtocol.op_sbs_status,
    ("admin", "sbs_apply_add_pack"): LicenseProtocol.op_sbs_apply_add_pack,
    ("admin", "status"): LicenseProtocol.op_status,
    ("admin", "register_terminal_server"): LicenseProtocol.op_register_terminal_server,
    ("admin", "group_add"): LicenseProtocol.op_group_add,
    ("admin", "group_remove"): LicenseProtocol.op_group_remove,
    ("admin", "set_policy"): LicenseProtocol.op_set_policy,
    ("admin", "list_terminal_servers"): LicenseProtocol.op_list_terminal_servers,
    ("admin", "activate"): LicenseProtocol.op_activate,
    ("admin", "reactivate"): LicenseProtocol.op_reactivate,
    ("admin", "deactivate"): LicenseProtocol.op_deactivate,
    ("admin", "install_key_pack"): LicenseProtocol.op_install_key_pack,
    ("admin", "recover"): LicenseProtocol.op_recover,
    ("admin", "list_key_packs"): LicenseProtocol.op_list_key_packs,
    ("admin", "list_licenses"): LicenseProtocol.op_list_licenses,
    ("admin", "usage_report"): LicenseProtocol.op_usage_report,
    ("admin", "revoke"): LicenseProtocol.op_revoke,
    ("admin", "set_clock"): LicenseProtocol.op_set_clock,
    ("admin", "list_events"): LicenseProtocol.op_list_events,
    ("admin", "follow_events"): LicenseProtocol.op_follow_events,
}


class LicenseFactory(Factory):
    def __init__(self, server, clock=None, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float | None = IDLE_TIMEOUT) -> None:
        self.server = server
        self.clock = clock
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections = 0

    def buildProtocol(self, addr):
        if self.connections >= self.max_connections:
            return _Refuse(TslsError(Code.TOO_MANY_CONNECTIONS,
                                     f"the license server already has {self.connections} connections"))
        self.connections += 1
        protocol = LicenseProtocol(self.server, self.clock, self.idle_timeout)
        protocol.factory = self
        return protocol


class _Refuse(Protocol):
    """Says why, then closes: for connections past the limit."""

    def __init__(self, error: TslsError) -> None:
        self.error = error

    def connectionMade(self) -> None:
        reply = {"id": None, "ok": False, "error": self.error.to_json()}
        self.transport.write(json.dumps(reply).encode() + b"\n")
        self.transport.loseConnection()
