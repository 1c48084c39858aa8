"""The socket protocol: newline-delimited JSON, one request per line, replies echo the ``id``.

Documented in docs/protocol.md. This module only parses, dispatches and formats; the work is in
``LicenseServer`` and the rules are in ``tsls.core``.
"""
from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from tsls.core.labtime import parse_date
from tsls.core.licensing import TerminalServer, check_terminal_server
from tsls.core.model import CalType, ProductVersion, iso
from tsls.errors import Code, TslsError

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024


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


class LicenseProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def __init__(self, server) -> None:
        self.server = server
        self.role: str | None = None
        self.terminal_server: TerminalServer | None = None
        self._follower = None

    # --- framing ----------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
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
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallbacks(lambda result: self._send(rid, result=result), lambda f: self._failed(rid, f))

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
        if role == "terminal_server":
            ts = TerminalServer(_field(request, "name", max_len=64), ProductVersion.parse(request.get("version")),
                                CalType.parse(request.get("mode")))
            check_terminal_server(ts)
            self.terminal_server = ts
        elif role != "admin":
            raise TslsError(Code.BAD_REQUEST, f"unknown role {role!r}; expected terminal_server or admin")
        self.role = role
        return {"protocol": PROTOCOL_VERSION, "server": "tsls", "role": role,
                "product_id": self.server.identity.product_id, "now": iso(int(self.server.writer.clock.seconds()))}

    # terminal servers

    def op_logon(self, request):
        return self.server.logon(self.terminal_server, _field(request, "hwid", max_len=128),
                                 _field(request, "machine"), _field(request, "user"),
                                 _field(request, "license", required=False, max_len=512))

    def op_logon_succeeded(self, request):
        return self.server.report_logon(self.terminal_server, _field(request, "hwid", max_len=128),
                                        _field(request, "license", max_len=512))

    # administrators

    def op_status(self, request):
        return self.server.status()

    def op_activate(self, request):
        return self.server.activate(_field(request, "method"), _field(request, "contact", dict, required=False),
                                    _field(request, "license_server_id", required=False, max_len=64))

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
            self._follower = lambda event: self.transport.write(
                json.dumps({"id": request["id"], "event": event}, separators=(",", ":")).encode() + b"\n")
            self.server.followers.add(self._follower)
        return {"following": True}

    def connectionLost(self, reason) -> None:
        if self._follower is not None:
            self.server.followers.discard(self._follower)

    def op_usage_report(self, request):
        return self.server.usage_report(_field(request, "start", int, required=False),
                                        _field(request, "end", int, required=False))


_OPS = {
    ("terminal_server", "logon"): LicenseProtocol.op_logon,
    ("terminal_server", "logon_succeeded"): LicenseProtocol.op_logon_succeeded,
    ("admin", "status"): LicenseProtocol.op_status,
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
    def __init__(self, server) -> None:
        self.server = server

    def buildProtocol(self, addr):
        return LicenseProtocol(self.server)
