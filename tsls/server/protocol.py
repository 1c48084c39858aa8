"""The socket protocol: newline-delimited JSON, one request per line, replies echo the ``id``.

Documented in docs/protocol.md. This module only parses, dispatches and formats; the work is in
``LicenseServer`` and the rules are in ``tsls.core``.
"""
from __future__ import annotations

import json
import time
from types import CoroutineType
from collections import deque

import attrs
import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer
from twisted.logger import Logger

from tsls.core.labtime import parse_date
from tsls.core.licensing import TerminalServer, check_terminal_server
from tsls.core.model import CalType, ProductVersion, iso, whole_number
from tsls.core.perseat import ADMINISTRATOR, AddPackUse, Requester
from tsls.errors import Code, TslsError
from tsls.public import PROTOCOL_VERSION
from tsls.server import auth, paging

MAX_LINE = 64 * 1024          # longer lines: LINE_TOO_LONG, in order, then the connection is closed
TRANSPORT_BUFFER = 16 * 1024  # a socket transport's read size, and the unsent answers past which the peer counts as
                              # not reading (Twisted's default: 64 KiB)
MAX_IN_FLIGHT = 256           # answers not yet written on one connection; past it, we stop reading
MAX_DEPTH = 16                # JSON nesting in a request; deeper: BAD_JSON / BAD_REQUEST, the connection lives on
LINES_PER_ROUND = 8           # lines a connection has taken before the others with lines waiting get theirs
TURN_BUDGET = 0.002           # seconds of waiting lines taken per turn of the reactor, round robin, before it
                              # goes back to reading, writing and committing: a flood cannot starve the others
FOLLOW_BACKLOG = 1024 * 1024  # event bytes a paused follower may fall behind before it is dropped (TOO_SLOW)
DRAIN_TIMEOUT = 30.0          # seconds a closing connection's last answers may take to be read before it is cut
IDLE_TIMEOUT = 300.0          # seconds without a complete request before an idle connection is closed
MAX_CONNECTIONS = 10_000      # past it, a new connection gets TOO_MANY_CONNECTIONS and is closed
INT64 = 2 ** 63


LICENSE_FILTERS = ("hwid", "machine", "user", "terminal_server", "kind", "status", "product_version", "key_pack_id")
EVENT_FILTERS = (("event_id", int), ("terminal_server", str), ("hwid", str), ("user", str), ("license_id", int))


def _limit(request: dict) -> int:
    limit = _field(request, "limit", int, required=False)
    if limit is None:
        return 1000
    if not 1 <= limit <= 100_000:
        raise TslsError(Code.BAD_REQUEST, "limit must be from 1 to 100000")
    return limit


def _cursor(request: dict) -> str | None:
    """A list request's cursor: None (the whole list, up to ``limit``, as before paging), "" (the
    first page) or a ``next_cursor`` this server gave (tsls.server.paging)."""
    cursor = request.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or len(cursor) > 512):
        raise TslsError(Code.BAD_REQUEST, "field 'cursor' must be \"\" (the first page) or a next_cursor")
    return cursor


def _paged(which: str, key, cursor: str, limit: int, kind=int, field: str | None = None):
    """A callback paging a short list already read whole (``result[field]``, or the result itself)."""
    paging.decode(which, cursor, kind)      # a bad cursor is refused before anything is read

    def cut(result):
        if field is None:
            return paging.page(which, result, key, cursor, limit, kind)
        rest = dict(result)
        return {**{k: v for k, v in rest.items() if k != field},
                **paging.page(which, rest[field], key, cursor, limit, kind)}
    return cut


def _field(request: dict, name: str, kind=str, required=True, max_len=256):
    value = request.get(name)
    if kind is str and type(value) is str and 0 < len(value) <= max_len:
        return value                # the common case, first
    if value is None:
        if required:
            raise TslsError(Code.BAD_REQUEST, f"missing field {name!r}")
        return None
    if kind is int:
        return whole_number(value, f"field {name!r}")
    if not isinstance(value, kind):
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be a {kind.__name__}")
    if kind is str and not 0 < len(value) <= max_len:
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be 1 to {max_len} characters")
    return value


def _whole(request: dict, name: str, low: int, high: int, what: str):
    value = _field(request, name, int, required=False)
    if value is not None and not low <= value <= high:
        raise TslsError(Code.BAD_REQUEST, f"field {name!r} must be {what}")
    return value


MAX_TIME = 253402300799      # 9999-12-31T23:59:59Z, the last second an ISO date can name


def _time(request: dict, name: str):
    """A moment: an ISO 8601 date (as every time in an answer is), or seconds since the epoch."""
    if isinstance(request.get(name), str):
        return parse_date(_field(request, name, max_len=64))
    return _whole(request, name, 0, MAX_TIME, "an ISO 8601 date, or seconds since the epoch up to 9999")


def _unfit(value) -> str | None:
    """Why a parsed request cannot be taken as it is, or None. Checked once per request, before
    dispatch, so no handler, no SQLite bind and no HMAC ever sees: nesting deeper than MAX_DEPTH,
    a string with a lone surrogate (JSON's \\ud800 escapes are not text and cannot be stored),
    an integer outside 64 bits, or a number that is not finite."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode()
                except UnicodeEncodeError:
                    return "a string holds a lone surrogate (an escape from \\ud800 to \\udfff), which is not text"
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if not -INT64 <= v < INT64:
                return "a number does not fit in 64 bits"
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return "a number is not finite"
        elif depth > MAX_DEPTH:
            return f"a request may nest objects and arrays at most {MAX_DEPTH} deep"
        elif isinstance(v, dict):
            stack.extend((k, depth) for k in v)
            stack.extend((x, depth + 1) for x in v.values())
        else:
            stack.extend((x, depth + 1) for x in v)
    return None


def _parse_std(line: bytes):
    """(id, request, error) for one line, by the standard library's parser: the reference for every
    line, and the path of every line orjson refuses or that is not plainly fit (see ``_parse``)."""
    try:
        request = json.loads(line)
    except RecursionError:
        return None, None, TslsError(Code.BAD_JSON, f"a request may nest objects and arrays at most {MAX_DEPTH} deep")
    except (ValueError, UnicodeDecodeError) as e:
        return None, None, TslsError(Code.BAD_JSON, f"not a JSON object: {e}")
    if not isinstance(request, dict):
        return None, None, TslsError(Code.BAD_REQUEST, "a request is a JSON object")
    rid = request.get("id")
    if not (isinstance(rid, (str, int)) and not isinstance(rid, bool)) or _unfit(rid):
        return None, None, TslsError(Code.BAD_REQUEST, "every request needs an 'id' (a string or a 64-bit number)")
    why = _unfit(request)
    if why is not None:
        return rid, None, TslsError(Code.BAD_REQUEST, why)
    return rid, request, None


def _plain(value, depth: int) -> bool:
    """Whether a value orjson parsed is one the standard library's parser gives alike and ``_unfit``
    takes: no float (orjson turns an integer past 64 bits into one), integers within 64 bits,
    nesting within MAX_DEPTH. orjson's strings are always text (it refuses lone surrogates)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -INT64 <= value < INT64
    if t is float or depth > MAX_DEPTH:
        return False
    if t is dict:
        value = value.values()
    return all(_plain(v, depth + 1) for v in value)


def _parse(line: bytes):
    """(id, request, error) for one line; the error is answered with the id when there is a usable one.

    orjson parses the line; a request it takes whose values are all plain (strings, 64-bit
    integers, true, false, null, the nested ones checked by ``_plain``) is exactly what the
    standard library would have made of it and fit. Anything else (orjson refuses it: a lone
    surrogate, NaN, invalid UTF-8, a BOM...; a float; an id that is not a string or an integer)
    goes the standard library's way, so every refusal has the code and message it always had."""
    try:
        request = _loads(line)
    except Exception:
        return _parse_std(line)
    if type(request) is dict:
        rid = request.get("id")
        if type(rid) is str or type(rid) is int:
            for v in request.values():
                t = type(v)
                if t is str or v is None or t is bool or t is int and -INT64 <= v < INT64:
                    continue
                if not _plain(v, 2):
                    return _parse_std(line)
            return rid, request, None
    return _parse_std(line)


class _Slot:
    """One request's place in the connection's answer queue: answers leave in request order."""
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes | None = None


class _Logon(_Slot):
    """A terminal server's logon's slot, told its answer by the writer as a Deferred would be
    (``callback``, ``errback``; tsls.server.writer.BatchWriter.submit): every grant's answer, so
    without a Deferred of its own (about 2 µs each)."""
    __slots__ = ("protocol", "rid", "started", "observe")

    def __init__(self, protocol, rid, started: float, observe) -> None:
        self.data = None
        self.protocol, self.rid, self.started, self.observe = protocol, rid, started, observe

    def callback(self, result) -> None:
        protocol = self.protocol
        try:
            if self.observe is not None or type(result) is not dict:
                protocol._answered(result, self, self.rid, "logon", self.started, self.observe)
                return
            # Every grant's answer (no metrics to tell): into its slot here, as _fill would put it
            try:
                self.data = _line_of({"id": self.rid, "ok": True, "result": result})
            except Exception:
                protocol._fill(self, self.rid, result=result)      # says why, and answers INTERNAL_ERROR
                return
            protocol._ready(self)
        except BaseException:       # the writer tells a whole batch: nothing here may stop it
            protocol.log.failure("answer to {rid!r} could not be given", rid=self.rid)

    def errback(self, error) -> None:
        try:
            failure = error if isinstance(error, Failure) else Failure(error)
            self.protocol._refused(failure, self, self.rid, "logon", self.started, self.observe)
        except BaseException:
            self.protocol.log.failure("answer to {rid!r} could not be given", rid=self.rid)


_loads = orjson.loads
_dumps = orjson.dumps
_DUMP_LINE = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _line_of(value) -> bytes:
    """``value`` as one line of compact JSON with its newline: the bytes ``json.dumps(value,
    separators=(",", ":"))`` writes, by orjson (6x faster for a grant's answer) when it writes the
    same. The rest goes the standard library's way: what orjson will not write (an integer past 64
    bits, a key that is not a string, a dataclass...) and text with a character past "~" (json.dumps
    escapes them, \\u00e9; orjson writes UTF-8, and DEL as it is). Floats: the same number, though
    orjson may spell a very small one otherwise (0.00001 where json.dumps writes 1e-05)."""
    try:
        data = _dumps(value, option=_DUMP_LINE)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"
    if data.isascii() and b"\x7f" not in data:
        return data
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _reply(rid, result=None, error: TslsError | None = None) -> bytes:
    if error is not None:
        return _line_of({"id": rid, "ok": False, "error": error.to_json()})
    if type(result) is paging.Encoded:
        return b'{"id":' + _line_of(rid)[:-1] + b',"ok":true,"result":' + result + b"}\n"
    return _line_of({"id": rid, "ok": True, "result": result})


@implementer(IPushProducer, IHalfCloseableProtocol)
class LicenseProtocol(Protocol, TimeoutMixin):
    """One connection. Memory per connection is bounded: at most one read chunk and MAX_LINE of
    unread input, at most MAX_IN_FLIGHT answers waiting, and no new line is taken while the peer
    is not reading (the transport's buffer is full) or the answers are at their bound: the rest of
    a chunk waits. Connections with lines waiting take them in round robin (LINES_PER_ROUND each),
    at most TURN_BUDGET seconds per reactor turn, so a flood on some delays the others by little.
    Answers leave in the order their requests came; a connection that must close (half-close,
    LINE_TOO_LONG, idle, TOO_SLOW) closes once its last answer has been flushed, and is cut if the
    peer does not read them within DRAIN_TIMEOUT."""

    log = Logger()

    factory = None

    def __init__(self, server, clock=None, idle_timeout: float | None = IDLE_TIMEOUT) -> None:
        self.server = server
        self.role: str | None = None
        self.terminal_server: TerminalServer | None = None
        self._follower = None
        self._behind = 0                            # event bytes written while the peer was not reading
        self._nonce: str | None = None
        self._hello_pending: list | None = None     # requests that arrived while the hello was being checked
        self._buffer = bytearray()                  # unread input: complete lines waiting for their turn, a partial line
        self._pos = 0                               # where the unread part of _buffer starts
        self._answers: deque[_Slot] = deque()       # requests taken whose answers are not written yet
        self._read_closed = False                   # the peer shut its sending side
        self._closing = False                       # no more requests: close once every answer is written
        self._closed = False
        self._peer_slow = False
        self._reading = True
        self._processing = False
        self._turn = None
        self._drain = None
        self._held_by = None                        # the factory, when it holds logons' answers while the writer tells a batch's
        self._held = False                          # ready answers held until the writer has told its whole batch
        if clock is not None:
            self.callLater = clock.callLater
        self._idle_timeout = idle_timeout

    def connectionMade(self) -> None:
        if isinstance(getattr(self.transport, "bufferSize", None), int):
            self.transport.bufferSize = TRANSPORT_BUFFER
        self.transport.registerProducer(self, True)
        self.setTimeout(self._idle_timeout)

    # IPushProducer, as seen by our transport: the peer's unread answers have filled its buffer.
    def pauseProducing(self) -> None:
        self._peer_slow = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._peer_slow = False
        self._behind = 0
        self._process()

    def stopProducing(self) -> None:
        pass

    def _may_take(self) -> bool:
        return not self._peer_slow and len(self._answers) < MAX_IN_FLIGHT and not self._closing

    def _update_reading(self) -> None:
        """Read from the socket only while nothing complete waits in our buffer and we may take more."""
        want = self._may_take() and self._buffer.find(b"\n", self._pos) < 0 and not self._read_closed
        if want != self._reading and self.transport.connected and not self._closed:
            self._reading = want
            (self.transport.resumeProducing if want else self.transport.pauseProducing)()

    # IHalfCloseableProtocol: a client that sends its requests and then shuts down its side
    # (`nc -q1`, a script) still gets every answer, and the connection closes right after the last.
    def readConnectionLost(self) -> None:
        self._read_closed = True
        self._process()

    def writeConnectionLost(self) -> None:
        self._close_now()

    def timeoutConnection(self) -> None:
        self._take_error(TslsError(Code.IDLE_TIMEOUT, f"no request for {self._idle_timeout:.0f} seconds"))
        self._closing = True
        self._maybe_close()

    # --- framing ----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """Take the complete lines waiting, as far as the bounds allow and LINES_PER_ROUND at a time."""
        if self._processing or self._closed:
            return
        self._processing = True
        try:
            budget, buf = LINES_PER_ROUND, self._buffer
            while self._may_take():
                end = buf.find(b"\n", self._pos)
                if end < 0:
                    break
                if budget == 0:
                    self._later()
                    break
                if end - self._pos > MAX_LINE:
                    self._too_long()
                    break
                budget -= 1
                line, self._pos = bytes(buf[self._pos:end]), end + 1
                self._line(line)
            if budget < LINES_PER_ROUND:
                self.resetTimeout()         # lines taken: once for all of them (at one moment)
            if self._pos and (self._pos >= len(buf) or self._pos > MAX_LINE):
                del buf[:self._pos]
                self._pos = 0
            if not self._closing and buf.find(b"\n", self._pos) < 0:
                if len(buf) - self._pos > MAX_LINE:
                    self._too_long()
                elif self._read_closed and self._may_take():
                    last = bytes(buf[self._pos:])       # the last request may lack its newline
                    buf.clear()
                    self._pos = 0
                    self.resetTimeout()
                    self._line(last)
                    self._closing = True
        finally:
            self._processing = False
        self._update_reading()
        self._maybe_close()

    def _later(self) -> None:
        """Come back to the lines waiting at the next turn, after every other connection had its own."""
        if self._turn is not None:
            return
        if isinstance(self.factory, LicenseFactory):
            self._turn = True
            self.factory.later(self)
        else:
            self._turn = self.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._turn = None
        self._process()

    def _too_long(self) -> None:
        self._take_error(TslsError(Code.LINE_TOO_LONG, f"a request line may be at most {MAX_LINE} bytes"))
        self._closing = True
        self._buffer.clear()
        self._pos = 0

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        rid, request, error = _parse(line)
        if error is not None:
            self._take_error(error, rid)
            return
        observe = self.factory.observe if self.factory is not None else None
        started = time.perf_counter() if observe is not None else 0.0
        op = request.get("op")
        if op == "logon" and self.role == "terminal_server" and self._hello_pending is None:
            # every grant: the writer tells the slot its answer, no Deferred in between
            slot = _Logon(self, rid, started, observe)
            self._answers.append(slot)
            try:
                later = self.op_logon(request, slot)
            except BaseException:
                self._refused(Failure(), slot, rid, op, started, observe)
                return
            if later is not None:       # a server that answers with a Deferred all the same
                later.addCallbacks(slot.callback, slot.errback)
            return
        slot = _Slot()
        self._answers.append(slot)
        try:
            result = self._dispatch(request)
        except BaseException:
            result = Failure()
        if type(result) is CoroutineType:
            result = defer.Deferred.fromCoroutine(result)
        if isinstance(result, defer.Deferred):
            # one callback pair (metrics, then the answer into its slot); the hello's held requests after it
            args = (slot, rid, op, started, observe)
            result.addCallbacks(self._answered, self._refused, args, None, args)
            if op == "hello" and self._hello_pending is not None:
                result.addBoth(self._after_hello)
        else:                           # answered at once: no Deferred at all
            if isinstance(result, Failure):
                self._refused(result, slot, rid, op, started, observe)
            else:
                self._answered(result, slot, rid, op, started, observe)
            if op == "hello" and self._hello_pending is not None:
                self._release_held()

    def _answered(self, result, slot: _Slot, rid, op, started: float, observe) -> None:
        if observe is not None:         # metrics (tsls.console.metrics): counted as the answer leaves
            try:
                observe(op, result, started)
            except BaseException:
                self._failed(slot, rid, Failure())
                return
        self._fill(slot, rid, result=result)

    def _refused(self, failure: Failure, slot: _Slot, rid, op, started: float, observe) -> None:
        if observe is not None:
            try:
                observe(op, failure, started)
            except BaseException:
                failure = Failure()
        self._failed(slot, rid, failure)

    def _after_hello(self, _) -> None:
        self._release_held()

    def _take_error(self, error: TslsError, rid=None) -> None:
        slot = _Slot()
        self._answers.append(slot)
        self._fill(slot, rid, error=error)

    def _failed(self, slot: _Slot, rid, failure) -> None:
        if failure.check(TslsError):
            self._fill(slot, rid, error=failure.value)
            return
        self.log.failure("request {rid!r} failed", failure, rid=rid)
        self._fill(slot, rid, error=TslsError(Code.INTERNAL_ERROR, "the license server failed on this request"))

    def _fill(self, slot: _Slot, rid, result=None, error: TslsError | None = None) -> None:
        try:
            slot.data = _reply(rid, result, error)
        except Exception:
            self.log.failure("answer to {rid!r} could not be written", rid=rid)
            slot.data = _reply(rid, error=TslsError(Code.INTERNAL_ERROR, "the license server failed on this request"))
        self._ready(slot)

    def _ready(self, slot: _Slot) -> None:
        """A slot's answer is in: write the answers now ready, in request order, or, while the writer
        tells a batch's answers (LicenseFactory), hold them to go out with the rest of the batch's."""
        if not (self._answers and self._answers[0] is slot):
            return
        factory = self._held_by
        if factory is not None and factory._telling:
            if not self._held:
                self._held = True
                factory._held_connections.append(self)
        else:
            self._flush()

    def _flush(self, together: bool = False) -> None:
        """Write the answers that are ready, in request order; ``together``: in one writeSequence."""
        answers = self._answers
        if together and len(answers) > 1 and answers[1].data is not None:
            ready = []
            while answers and answers[0].data is not None:
                ready.append(answers.popleft().data)
            if not self._closed:
                self.transport.writeSequence(ready)
        while answers and answers[0].data is not None:
            data = answers.popleft().data
            if not self._closed:
                self.transport.write(data)
        if not self._processing and (self._pos < len(self._buffer) or not self._reading or self._closing
                                     or self._read_closed):
            self._process()     # lines waiting, reading paused, or closing: an answer gone may let them go on

    def _maybe_close(self) -> None:
        if self._closing and not self._answers:
            self._close_now()

    def _close_now(self) -> None:
        """Close once the written answers are flushed (a paused producer would keep the transport
        waiting for it, so it goes first); a peer that does not read them is cut after DRAIN_TIMEOUT."""
        if self._closed:
            return
        self._closed = True
        self.setTimeout(None)
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._drain = self.callLater(DRAIN_TIMEOUT, self.transport.abortConnection)

    # --- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self, request: dict):
        op = request.get("op")
        if type(op) is str and self._hello_pending is None:
            handler = _ROLE_OPS.get(self.role, _NONE).get(op)      # the common case, first
            if handler is not None:
                return handler(self, request)
        if not isinstance(op, str):
            raise TslsError(Code.BAD_REQUEST, "every request needs an 'op' (a string)")
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
        # Every operation this role may use was found above: what is left is refused.
        if any(o == op for _, o in _OPS):
            raise TslsError(Code.NOT_PERMITTED, f"{op!r} is not allowed for a {self.role} connection")
        known = sorted(o for role, o in _OPS if role == self.role)
        raise TslsError(Code.UNKNOWN_OPERATION, f"unknown operation {op!r}; this connection may use: "
                        + ", ".join(["hello", *known]))

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
            check_terminal_server(ts, self.server.identity.version)
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
                    "server_version": self.server.identity.version.value,
                    "now": iso(int(self.server.writer.clock.seconds()))}

        return d.addCallback(welcome)

    def _release_held(self) -> None:
        """After the hello's own answer has gone out, run what arrived behind it, in order."""
        held, self._hello_pending = self._hello_pending or [], None
        for request, waiting in held:
            defer.maybeDeferred(self._dispatch, request).chainDeferred(waiting)

    # terminal servers

    def op_logon(self, request, waiter=None):
        """``waiter``: the request's slot (``_Logon``), told the answer (``_line``); otherwise a Deferred."""
        get = request.get
        hwid, machine, user, token = get("hwid"), get("machine"), get("user"), get("license")
        if not (type(hwid) is str and 0 < len(hwid) <= 128 and type(machine) is str and 0 < len(machine) <= 256
                and type(user) is str and 0 < len(user) <= 256
                and (token is None or type(token) is str and 0 < len(token) <= 512)):
            # not the plain case: the field checks, in order, say what is wrong
            hwid, machine, user = (_field(request, "hwid", max_len=128), _field(request, "machine"),
                                   _field(request, "user"))
            token = _field(request, "license", required=False, max_len=512)
        return self.server.logon(self.terminal_server, hwid, machine, user, token, waiter)

    def op_licensing_info(self, request):
        return self.server.licensing_info(self.terminal_server)

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
        return self.server.set_security_group_policy(_field(request, "security_group", bool, required=False),
                                                     _field(request, "prevent_upgrade", bool, required=False))

    def op_list_terminal_servers(self, request):
        cursor = _cursor(request)
        if cursor is not None:
            cut = _paged("terminal_servers", lambda t: t["name"], cursor, _limit(request), str, "terminal_servers")
            return self.server.terminal_servers().addCallback(cut)
        return self.server.terminal_servers()

    # Per Server / Per Seat products and Small Business Server (docs/legacy.md)

    def op_product_connect(self, request):
        """``administrator: true`` passes a Per Server limit: it is taken only on an administrator's
        connection (a hello with the administrator's proof), never on a terminal server's word."""
        administrator = _field(request, "administrator", bool, required=False) or False
        if administrator and self.role != "admin":
            raise TslsError(Code.NOT_PERMITTED, "an administrator's connection must be made on a connection that "
                            "proved the administrator's credential (hello as admin), not by a terminal server's word")
        return self.server.products.connect(self, _field(request, "product", max_len=128),
                                            _field(request, "hwid", max_len=128), administrator)

    def op_product_disconnect(self, request):
        return self.server.products.disconnect(self, _field(request, "connection_id", int))

    def op_switch_to_per_seat(self, request):
        """An administrator may switch any product; a terminal server only its own products, once it
        has proved its name ("from the server itself")."""
        name = _field(request, "product", max_len=128)
        confirm = _field(request, "confirm", bool, required=False) or False
        ts = self.terminal_server
        requester = (ADMINISTRATOR if self.role == "admin" else
                     Requester(proven_server=ts.name if ts.authenticated else None))
        return self.server.products.switch_to_per_seat(name, confirm, requester)

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
        return self.server.deactivate(_field(request, "local", bool, required=False) or False,
                                      _field(request, "confirm", bool, required=False) or False)

    def op_install_key_pack(self, request):
        if "key_pack_id" in request:       # the telephone / web route: the 35-character ID read out
            if "purchase" in request:
                raise TslsError(Code.BAD_REQUEST, "give either purchase or key_pack_id")
            return self.server.install_key_pack_id(_field(request, "key_pack_id", max_len=64))
        return self.server.install_key_pack(_field(request, "purchase", dict))

    def op_convert_cals(self, request):
        return self.server.convert(_field(request, "key_pack_id", max_len=64), _field(request, "count", int))

    def op_rebuild_database(self, request):
        return self.server.rebuild(_field(request, "confirm", bool, required=False) or False)

    def op_migrate_cals(self, request):
        return self.server.migrate(_field(request, "reason", max_len=32), _field(request, "route", max_len=32),
                                   _field(request, "source", dict, required=False) or {},
                                   _field(request, "purchase", dict, required=False),
                                   _field(request, "key_pack_id", required=False, max_len=64))

    def op_uninstall_key_packs(self, request):
        return self.server.uninstall_key_packs(_field(request, "key_pack_ids", list))

    def op_source_uninstall_failed(self, request):
        return self.server.source_uninstall_failed(_field(request, "source", max_len=64),
                                                   _field(request, "key_pack_ids", list),
                                                   _field(request, "message", max_len=1000))

    def op_recover(self, request):
        return self.server.recover(_field(request, "purchase", dict))

    def op_list_key_packs(self, request):
        cursor = _cursor(request)
        if cursor is not None:
            return self.server.key_packs().addCallback(_paged("key_packs", lambda p: p["id"], cursor, _limit(request)))
        return self.server.key_packs()

    def op_list_licenses(self, request):
        filters = {name: _field(request, name, required=False, max_len=128) for name in LICENSE_FILTERS}
        filters = {k: v for k, v in filters.items() if v is not None}
        cursor = _cursor(request)
        if cursor is not None:
            return self.server.licenses_page(filters, cursor, _limit(request))
        return self.server.licenses(filters, _limit(request))

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
        cursor = _cursor(request)
        if cursor is not None:
            return self.server.events_page({k: v for k, v in filters.items() if v is not None},
                                           None if since is None else parse_date(since), cursor, _limit(request),
                                           _field(request, "newest_first", bool, required=False) or False)
        return self.server.list_events({k: v for k, v in filters.items() if v is not None},
                                       None if since is None else parse_date(since), _limit(request))

    def op_follow_events(self, request):
        """From now on, every committed event is pushed on this connection as {"event": {...}}."""
        if self._follower is None:
            self.setTimeout(None)           # a follower may stay quiet for as long as it likes
            rid = request["id"]
            self._follower = lambda event: self._push(rid, event)
            self.server.followers.add(self._follower)
        return {"following": True}

    def _push(self, rid, event: dict) -> None:
        """An event for a follower. One that stopped reading may fall FOLLOW_BACKLOG bytes behind;
        past that it is told TOO_SLOW and dropped, rather than held in memory without bound."""
        if self._closed:
            return
        data = _line_of({"id": rid, "event": event})
        if self._peer_slow:
            self._behind += len(data)
            if self._behind > FOLLOW_BACKLOG:
                self.server.followers.discard(self._follower)
                self._follower = None
                self.transport.write(_reply(None, error=TslsError(
                    Code.TOO_SLOW, f"this follower fell more than {FOLLOW_BACKLOG} bytes of events behind and was "
                    "dropped; follow again and list_events since the last event you read")))
                self._closing = True
                self._maybe_close()
                return
        self.transport.write(data)

    def connectionLost(self, reason) -> None:
        self._closed = True
        self.setTimeout(None)
        for call in (self._turn, self._drain):
            if call is not None and call is not True and call.active():
                call.cancel()
        if self.role is not None:
            self.server.products.release(self)
        if isinstance(self.factory, LicenseFactory):
            self.factory.connections -= 1
        if self._follower is not None:
            self.server.followers.discard(self._follower)

    def op_console_link(self, request):
        """A one-time link that logs a browser in to the console (docs/console.md)."""
        console = self.server.console
        if console is None:
            raise TslsError(Code.CONSOLE_DISABLED, "this license server runs no console; start it with "
                            "--console-listen ENDPOINT")
        role = _field(request, "role", required=False) or "admin"
        return console.mint_link(role)

    def op_usage_report(self, request):
        cursor = _cursor(request)
        report = self.server.usage_report(_time(request, "start"), _time(request, "end"))
        if cursor is not None:
            return report.addCallback(_paged("usage", lambda u: u["user"], cursor, _limit(request), str, "users"))
        return report

    def op_cal_usage_report(self, request):
        return self.server.cal_usage_report()

    def op_set_role(self, request):
        return self.server.set_role(_field(request, "role", max_len=16))


_OPS = {
    ("terminal_server", "logon"): LicenseProtocol.op_logon,
    ("terminal_server", "logon_succeeded"): LicenseProtocol.op_logon_succeeded,
    ("terminal_server", "licensing_info"): LicenseProtocol.op_licensing_info,
    ("terminal_server", "product_connect"): LicenseProtocol.op_product_connect,
    ("terminal_server", "product_disconnect"): LicenseProtocol.op_product_disconnect,
    ("terminal_server", "switch_to_per_seat"): LicenseProtocol.op_switch_to_per_seat,
    ("admin", "product_connect"): LicenseProtocol.op_product_connect,
    ("admin", "product_disconnect"): LicenseProtocol.op_product_disconnect,
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
    ("admin", "convert_cals"): LicenseProtocol.op_convert_cals,
    ("admin", "rebuild_database"): LicenseProtocol.op_rebuild_database,
    ("admin", "migrate_cals"): LicenseProtocol.op_migrate_cals,
    ("admin", "uninstall_key_packs"): LicenseProtocol.op_uninstall_key_packs,
    ("admin", "source_uninstall_failed"): LicenseProtocol.op_source_uninstall_failed,
    ("admin", "list_key_packs"): LicenseProtocol.op_list_key_packs,
    ("admin", "list_licenses"): LicenseProtocol.op_list_licenses,
    ("admin", "usage_report"): LicenseProtocol.op_usage_report,
    ("admin", "cal_usage_report"): LicenseProtocol.op_cal_usage_report,
    ("admin", "set_role"): LicenseProtocol.op_set_role,
    ("admin", "revoke"): LicenseProtocol.op_revoke,
    ("admin", "set_clock"): LicenseProtocol.op_set_clock,
    ("admin", "list_events"): LicenseProtocol.op_list_events,
    ("admin", "follow_events"): LicenseProtocol.op_follow_events,
    ("admin", "console_link"): LicenseProtocol.op_console_link,
}

_ROLE_OPS = {role: {o: handler for (r, o), handler in _OPS.items() if r == role} for role, _ in _OPS}
_NONE: dict = {}


def _reactor():
    from twisted.internet import reactor
    return reactor


class LicenseFactory(Factory):
    observe = None      # if set, called with (op, result or Failure, perf_counter at arrival) per answer

    def __init__(self, server, clock=None, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float | None = IDLE_TIMEOUT) -> None:
        self.server = server
        self.clock = clock
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections = 0
        self._waiting: deque = deque()       # connections with lines left for the next turn, in turn order
        self._turn = None
        # While the writer tells a batch's answers (this factory is its ``around_answers``), the answers
        # ready to go are held (LicenseProtocol._ready), and once the batch's are all told each
        # connection's go out in one writeSequence instead of a write each (~0.8 µs each in Twisted; at 100 x 16 in
        # flight a batch holds about eight per connection): -1.2 µs per grant on the reactor's thread.
        # Not joined (they would be read again from memory: it cost more than it saved). They leave no
        # later: the reactor sends what was written when it next polls, after this. Order is kept: a
        # connection's answers are all written by _flush, in request order. Counted (``_telling``): a
        # writer that runs a batch at once (threaded=False) may tell one inside another.
        self._telling = 0
        self._held_connections: list[LicenseProtocol] = []
        writer = getattr(server, "writer", None)
        if hasattr(writer, "around_answers"):
            writer.around_answers = self

    def __enter__(self) -> None:
        self._telling += 1

    def __exit__(self, *exc) -> bool:
        self._telling -= 1
        if not self._telling:
            held, self._held_connections = self._held_connections, []
            for protocol in held:
                protocol._held = False
                try:
                    protocol._flush(together=True)
                except BaseException:
                    protocol.log.failure("answers could not be written")
        return False

    def later(self, protocol: LicenseProtocol) -> None:
        """One reactor turn serves, in order, every connection that still had lines waiting: a single
        timed call per turn, however many connections flood."""
        self._waiting.append(protocol)
        if self._turn is None:
            self._turn = (self.clock or _reactor()).callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        """Round robin: one line from each waiting connection in turn, for at most TURN_BUDGET seconds,
        then back to the reactor (reads, writes, commits) before the next turn goes on where this one stopped."""
        self._turn = None
        waiting = self._waiting
        deadline = time.perf_counter() + TURN_BUDGET
        while waiting:
            waiting.popleft()._next_turn()
            if time.perf_counter() > deadline:
                break
        if waiting and self._turn is None:
            self._turn = (self.clock or _reactor()).callLater(0, self._next_turn)

    def buildProtocol(self, addr):
        if self.connections >= self.max_connections:
            return _Refuse(TslsError(Code.TOO_MANY_CONNECTIONS,
                                     f"the license server already has {self.connections} connections"))
        self.connections += 1
        protocol = LicenseProtocol(self.server, self.clock, self.idle_timeout)
        protocol.factory = self
        if getattr(getattr(self.server, "writer", None), "around_answers", None) is self:
            protocol._held_by = self
        return protocol


class _Refuse(Protocol):
    """Says why, then closes: for connections past the limit."""

    def __init__(self, error: TslsError) -> None:
        self.error = error

    def connectionMade(self) -> None:
        reply = {"id": None, "ok": False, "error": self.error.to_json()}
        self.transport.write(json.dumps(reply).encode() + b"\n")
        self.transport.loseConnection()
